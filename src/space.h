/* space.h - versions yield space to current files: when a change lacks space, or the
 * filesystem has less than the reserve free, old versions that nobody uses are removed, oldest
 * first across the whole store. No FUSE types here; callers hold the store lock. */
#ifndef BINVFS_SPACE_H
#define BINVFS_SPACE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct store;

/* Bytes the daemon's users can still allocate on SOURCE's filesystem (statvfs f_bavail). */
uint64_t space_avail(struct store *s);
/* Is the filesystem below the reserve (reserve=SIZE|PCT)? */
bool space_short(struct store *s);
/* Remove unused old versions, oldest first across the store, until `want` bytes are available;
 * `why` goes in the log. Fair shares: a change made for user `uid` removes only versions that
 * uid owns (0, root: anyone's), and nothing at all if those cannot cover the shortfall.
 * Returns true if `want` is available at the end. */
bool space_yield(struct store *s, uint64_t want, uid_t uid, const char *why);
/* After a change made for `uid` that kept a version: while below the reserve, yield (as
 * space_yield) until it is free again. */
void space_keep_reserve(struct store *s, uid_t uid);

#endif
