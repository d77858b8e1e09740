/* history.h - the version numbers of every path, read from each .versions/ directory once
 * after the mount (by the indexer thread, or by the first change there if that comes first)
 * and kept current by every change the daemon makes, so a publish costs the same with ten
 * versions or a million. Callers hold the store lock. */
#ifndef BINVFS_HISTORY_H
#define BINVFS_HISTORY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The sorted version numbers of name in the versions dir vdirfd; valid until the next
 * history_* call. Returns 0 or -errno. */
int history_get(int vdirfd, const char *name, const uint32_t **ns, size_t *count);
void history_add(int vdirfd, const char *name, uint32_t n);
/* Removing the oldest number of a name costs O(1), any other O(log count + what follows). */
void history_del(int vdirfd, const char *name, uint32_t n);
/* Is n a version of name in vdirfd? O(log count). */
bool history_has(int vdirfd, const char *name, uint32_t n);
/* fn(arg, name, its sorted numbers, count) for each name of vdirfd with more than keep
 * versions, in no order; the numbers are valid during the call only, which must not call
 * history_*. Stops at fn's first non-zero return and returns it; or -errno. */
int history_each(int vdirfd, unsigned keep,
		 int (*fn)(void *arg, const char *name, const uint32_t *ns, size_t count),
		 void *arg);
void history_free(void);
/* Start reading every versions dir below vfd in a thread of its own, which takes lock (the
 * store lock) to add each; logs a line when done. Returns 0 or -errno. */
int history_index_start(int vfd, pthread_mutex_t *lock);
/* Stop the indexer early if it still runs, and wait for it. */
void history_index_stop(void);

#endif
