/* inval.h - every notification sent to the kernel (inval.c): entry invalidations (those asked
 * where a path walk may wait for the caller, a directory lock held, are queued for a thread of
 * their own: inval_entry_queue; a publish sends its own inline from the FLUSH:
 * inval_entry_now), attribute invalidations (inline: the kernel takes no lock for them), and
 * the fs.gen bump that goes with a change of names. */
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
/* The same for a directory known by its nodeid only: the kernel ignores a nodeid it forgot. */
void inval_entry_queue_id(uint64_t dir, const char *name);
/* Drop the kernel's entry dir/name now (the caller holds no directory lock a walk may wait
 * on); false if it was not sent (the daemon stops, or the kernel refused). */
bool inval_entry_now(uint64_t dir, const char *name);
/* The daemon stops: no invalidation starts from now on; wait up to max_ms for those in
 * flight. false if one is still inside the kernel. */
bool inval_quiesce(unsigned max_ms);
/* From now on, a LOOKUP that began before is not cached (fs.gen): a name may answer another
 * nodeid. */
void inval_gen_bump(void);
/* The name dir/name answers another nodeid now: inval_gen_bump, and the kernel's entry dropped
 * now (inval_entry_now: the caller holds no directory lock a walk may wait on) or queued
 * (inval_entry_queue: it may). */
void inval_name_changed(struct node *dir, const char *name);
void inval_name_changed_queued(struct node *dir, const char *name);
/* Drop the kernel's attributes (and ACLs) of a nodeid, not its pages; the kernel takes no lock
 * of the inode for it. */
void inval_attrs(uint64_t nodeid);

/* The kernel's cache of a directory's listing (FOPEN_CACHE_DIR; inval.c says how it is kept
 * right). OPENDIR: may this open use and fill it? If so *gen is the directory's change count,
 * for inval_dir_read at each READDIR and inval_dir_closed at the RELEASEDIR. */
bool inval_dir_open(struct node *dir, unsigned *gen);
void inval_dir_read(struct node *dir, unsigned gen);
void inval_dir_closed(struct node *dir, unsigned gen);
/* dir's listing changed behind the kernel's back (a publish, a release's commit or abort):
 * drop the kernel's cache of it now (no inode lock is taken: any caller may). */
void inval_dir_changed(struct node *dir);

#endif
