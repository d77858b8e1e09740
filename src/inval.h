/* inval.h - every kernel entry invalidation (inval.c); those asked by request handlers are
 * queued for a thread of their own (inval_entry_queue). */
#ifndef BINVFS_INVAL_H
#define BINVFS_INVAL_H

#include <stdbool.h>
#include <stdint.h>

struct fuse_session;
struct node;

void inval_init(struct fuse_session *se);
int inval_start(void);
void inval_stop(void);
void inval_entry_queue(struct node *dir, const char *name);
/* Drop the kernel's entry dir/name now (the caller holds no directory lock a walk may wait
 * on); false if it was not sent (the daemon stops, or the kernel refused). */
bool inval_entry_now(uint64_t dir, const char *name);
/* The daemon stops: no invalidation starts from now on; wait up to max_ms for those in
 * flight. false if one is still inside the kernel. */
bool inval_quiesce(unsigned max_ms);

#endif
