/* fs.h - the mount context, and the FUSE operations (ops_entry.c, ops_file.c, ops_dir.c) with
 * the modules they call down to that know of nodes (versions.c, inval.c). */
#ifndef BINVFS_FS_H
#define BINVFS_FS_H

/* 312: fuse_session_loop_mt() takes the fuse_loop_cfg_*() object; with an older API level it
 * reads that object as the old struct and runs one new thread per request. */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>

#include "node.h"
#include "store.h"

#define FMODE_EXEC 0x20 /* the kernel's __FMODE_EXEC in OPEN flags (kernel-notes §2) */

/* Timeouts (kernel-notes §4): a name -> nodeid answer may change at any publish, so regular
 * files are looked up every time; a nodeid's content never changes, so its attributes and
 * page cache are kept. */
#define TIMEOUT_LONG 86400.0

struct binvfs {
	struct store store;
	struct fuse_session *se;
	unsigned long gen;     /* bumped by every publish (atomic): a LOOKUP that overlapped one is
				* not cached */
	int mnt_id;	       /* our mount as /proc/PID/fdinfo shows it, -1 if unknown */
	char bdi[32];	       /* our mount's "major:minor", its name in /sys/class/bdi/ */
	unsigned readahead_kb; /* set on the bdi at INIT; 0: the kernel's */
	bool readahead_asked;  /* readahead= was given (else a failure is not warned about) */
	bool acl_ok;	       /* default_permissions, and SOURCE's filesystem has POSIX ACLs */
	bool posix_acl;	       /* FUSE_POSIX_ACL negotiated: the kernel checks ACLs, invalidates
				* a node's attributes and ACLs at a setfacl (docs/design.md §3, ACLs) */
	dev_t view_dev;	       /* the store's .versions/ directory, root of the view */
	ino_t view_ino;
};

extern struct binvfs fs;

static inline struct node *inode_of(fuse_ino_t ino)
{
	return node_get(ino);
}

/* ops_entry.c */
void bv_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void bv_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void bv_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets);
void bv_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
		struct fuse_file_info *fi);
void bv_readlink(fuse_req_t req, fuse_ino_t ino);
void bv_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void bv_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void bv_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void bv_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void bv_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void bv_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void bv_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
	       const char *newname, unsigned int flags);
void bv_statfs(fuse_req_t req, fuse_ino_t ino);

/* ops_file.c */
void bv_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi);
void bv_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void bv_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
		  struct fuse_file_info *fi);
void bv_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void bv_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
		  struct fuse_file_info *fi);
void bv_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);
void bv_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock);
void bv_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock,
	      int sleep);
void bv_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op);
void bv_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			struct fuse_file_info *fi_out, size_t len, int flags);

/* ops_dir.c */
void dirs_shutdown(void);
void bv_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void bv_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void bv_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void bv_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void bv_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
		 int flags);
void bv_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

/* versions.c: the read-only .versions/ view */
bool versions_is_view_root(struct node *parent, const char *name);
bool versions_hidden(struct node *dir, const char *name);
bool versions_readonly(struct node *n);
int versions_refuse(const char *op, const char *name);
void versions_after_change(const struct store_change *ch);

/* inval.c: every kernel entry invalidation. Those asked where a path walk may wait for the
 * caller (a directory lock held) are queued for a thread of their own (inval_entry_queue); a
 * publish sends its own inline (inval_entry_now, from the FLUSH). The attribute invalidations
 * of versions.c and ops_dir.c are sent inline too (the kernel takes no lock for them). */
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
