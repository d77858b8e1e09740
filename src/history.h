/* history.h - the version numbers of every path, read from a .versions/ directory once (at
 * its first use after the mount) and kept current by every change the daemon makes, so a
 * publish costs the same with ten versions or a million. Callers hold the store lock. */
#ifndef BINVFS_HISTORY_H
#define BINVFS_HISTORY_H

#include <stddef.h>
#include <stdint.h>

/* The sorted version numbers of name in the versions dir vdirfd; valid until the next
 * history_* call. Returns 0 or -errno. */
int history_get(int vdirfd, const char *name, const uint32_t **ns, size_t *count);
void history_add(int vdirfd, const char *name, uint32_t n);
void history_del(int vdirfd, const char *name, uint32_t n);
/* "<name>.~N~" -> N (0 if entry is not a version name); *namelen gets the name's length. */
uint32_t history_parse(const char *entry, size_t *namelen);
void history_free(void);

#endif
