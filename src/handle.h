/* handle.h - the open files the daemon serves itself: a writer's private staging copy,
 * published when its writer closes it, and a new file its creator writes in place.
 * No FUSE requests here: the ops files call these and reply. */
#ifndef BINVFS_HANDLE_H
#define BINVFS_HANDLE_H

#include "fs.h"

enum handle_kind {
	H_DIRECT, /* a file this open created: written in place, like natively */
	H_STAGE,  /* a writer's private staging copy, published at close */
};

struct handle {
	enum handle_kind kind;
	struct node *node;    /* the nodeid opened (holds an open count: node_open) */
	int fd;		      /* owned */
	pthread_mutex_t lock; /* protects fd and everything below. Lock order: this, then the
			       * store lock, then the node table's (docs/design.md §9) */
	bool dirty;	      /* changed since the last publish */
	bool published;	      /* fd is now a published version: copy before writing again */
	bool abandoned;	      /* its writer was killed: never publish */
	bool closed;	      /* its opener's last close was seen (FLUSH): what is written after
			       * it (a shared mmap) is published at RELEASE or at the end; a file
			       * written in place is no longer (node_written_in_place) */
	struct list open;     /* every open handle, for the end of the session */
	int failed;	      /* a write into the staging copy failed (ENOSPC, EIO): never publish,
			       * report it at every FLUSH */
	pid_t opener_tgid;
	uid_t uid;     /* the opener: its share of the daemon's fds (handle_share_take), and whose
			* versions may yield space to it (space_yield) */
	dev_t own_dev; /* the file the writer's metadata belongs to: the version it opened, */
	ino_t own_ino; /* then the copy it last published (see current_if_own) */
};

/* The handle of an open file; NULL for a reader's open, whose fh is an odd number (a handle's
 * address is even): the open's name for the locks taken through it (locks.h). */
static inline struct handle *handle_of(struct fuse_file_info *fi)
{
	return fi && !(fi->fh & 1) ? (struct handle *)(uintptr_t)fi->fh : NULL;
}

/* Fair shares: every open handle holds an fd of the daemon's (and a staging copy's space).
 * An unprivileged user may hold at most an eighth of the daemon's fd limit in handles, so one
 * user at her limit gets EMFILE and leaves everyone else working; root is not limited. Take a
 * share before the open that needs it (0 or -EMFILE); a handle gives its share back when it
 * is freed, and handle_share_put gives back one no handle took. */
int handle_share_take(uid_t uid);
void handle_share_put(uid_t uid);

/* A write open of a writer's staging nodeid by user uid, whose share is taken here: a private
 * copy of its base version (empty with `trunc`), opened by process opener_tgid. Takes the
 * node's open (node_open). */
int handle_open_staging(struct node *stg, bool trunc, pid_t opener_tgid, uid_t uid,
			struct handle **out);
/* The file a CREATE by uid made (its share taken by the caller), fd open on it; the caller
 * takes the node's open. */
struct handle *handle_new_direct(struct node *n, int fd, uid_t uid, pid_t opener_tgid);
/* A file being written in place (node_written_in_place): a write open by uid joins it, on the
 * file itself (its share taken here; flags: access mode, O_TRUNC); the caller takes the node's
 * open. truncate(2) of it truncates it in place. */
int handle_join_in_place(struct node *n, int flags, uid_t uid, pid_t opener_tgid,
			 struct handle **out);
int truncate_in_place(struct node *n, off_t size);
/* Undo an open the kernel never saw (its requester was interrupted): nothing is published. */
void handle_free(struct handle *h);

/* Write the buffer at off; the count written, or -errno. */
ssize_t handle_write(struct handle *h, struct fuse_bufvec *in, off_t off);
int handle_fallocate(struct handle *h, int mode, off_t offset, off_t length);
int handle_fsync(struct handle *h, bool datasync);
/* SETATTR through an open file: truncate the copy, chmod/chown/utimes. */
int handle_setattr(struct handle *h, struct stat *attr, int valid);
int handle_stat(struct handle *h, struct stat *st);

/* FLUSH by thread `pid`: the opener's last close publishes the copy; a child's close does not,
 * and a writer killed by a signal publishes nothing. Returns a failed write's error. */
int handle_flush(struct handle *h, pid_t pid);
/* RELEASE: publish what is still dirty, then free the handle and its node's open. */
void handle_close(struct handle *h);
/* After the request loop: the handles whose RELEASE the unmount dropped. A writer whose
 * close was never seen (the daemon was stopped under it) publishes nothing. */
void handles_shutdown(void);

/* truncate(2) of a name by a routed thread of user uid: copy, truncate to attr->st_size, apply
 * the rest of valid (mode, owner, times) to the copy, and publish at once. */
int staging_truncate(struct node *stg, const struct stat *attr, int valid, uid_t uid);
/* chmod/chown/utimes by a writer: to its copy (fd), or in place if it has none (-1). */
int staging_setattr(struct node *stg, int fd, const struct stat *attr, int valid);

#endif
