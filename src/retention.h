/* retention.h - how many old versions a path keeps, and removing versions (retention.c). */
#ifndef BINVFS_RETENTION_H
#define BINVFS_RETENTION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct store;

/* A prune request (retention_prune, called without the store lock) removes at most
 * PRUNE_BATCH versions, and works at most PRUNE_BATCH_NS, in one hold of the store lock; it
 * takes the lock by polling it every PRUNE_PAUSE_NS, and after a batch that another thread
 * waited for, waits up to PRUNE_HANDOFF_NS for that thread to take it. Retention after a new
 * version removes at most PRUNE_BATCH (docs/design.md §6, §9). */
#define PRUNE_BATCH	 512
#define PRUNE_BATCH_NS	 (5 * 1000 * 1000)
#define PRUNE_PAUSE_NS	 (50 * 1000)
#define PRUNE_HANDOFF_NS (50 * 1000 * 1000)
int retention_prune(struct store *s, int dirfd, const char *name, unsigned keep);
int retention_remove_version(struct store *s, const char *vrel, dev_t dev, ino_t ino);
/* The same for a version whose removal waited for its last user (node_defer_prune), called
 * by the node table when that user is gone; takes the store lock. */
void retention_remove_deferred(struct store *s, const char *vrel, dev_t dev, ino_t ino);
/* unlinkat(vdirfd, vname) of a version of inode ino, counted (links.h). */
int retention_unlink_version(int vdirfd, const char *vname, ino_t ino);
int retention_list_versions(int vdirfd, const char *name, uint32_t **ns, size_t *count);
/* Within the store (keep.c): the oldest versions beyond keep go. */
int retention_apply(struct store *s, int vdirfd, const char *rel, const char *name, uint32_t *ns,
		    size_t cnt, unsigned keep);

#endif
