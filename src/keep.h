/* keep.h - a replaced or removed file kept as the next version of its path, and the publish's
 * rename (keep.c). */
#ifndef BINVFS_KEEP_H
#define BINVFS_KEEP_H

#include <sys/types.h>

struct store;
struct store_change;

/* The callers below hold s->lock. Keep the file that rm or mv is about to remove at
 * dirfd/name as its next version; below the reserve, the removal frees what
 * it removes, as natively (older unused versions yield first, then its own version).
 * uid: the user the change is made for; space it lacks is yielded only by that user's
 * versions (root's: anyone's; space_yield). */
int store_keep_removed(struct store *s, int dirfd, const char *name, struct store_change *ch,
		       uid_t uid);
int store_publish(struct store *s, int dirfd, const char *name, int stfd, struct store_change *ch,
		  uid_t uid);
void store_change_done(struct store_change *ch);

#endif
