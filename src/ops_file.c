/* ops_file.c - FUSE operations on open files: OPEN/CREATE, READ/WRITE, FLUSH/RELEASE.
 *
 * Opens of a version, and of a file its creator writes in place, are passthrough opens
 * (passthrough.c): the kernel reads, maps and writes their backing file itself. Without
 * passthrough, reads of a version are spliced from the version's own fd, with keep_cache: its
 * content never changes. A writer's open gets a private copy (handle.c), published at its close.
 * Each operation replies exactly once: at its end, or at an early error return (bv_create);
 * after the reply, bv_open and bv_create only undo an open the kernel did not take (an
 * interrupted one). */
#define _GNU_SOURCE
#include "ops_file.h"
#include "attr.h"
#include "closer.h"
#include "fs.h"
#include "handle.h"
#include "locks.h"
#include "log.h"
#include "release.h"
#include "passthrough.h"
#include "route.h"
#include "versions.h"
#include "node_open.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

/* Must this open walk its path again (ESTALE, kernel-notes §3), or fail? 0 if it may go on
 * (route_open decides). */
static int open_refused(fuse_req_t req, struct node *n, int flags)
{
	switch (route_open(fuse_req_ctx(req)->pid, fuse_req_ctx(req)->uid, n, flags)) {
	case ROUTE_SERVE:
		return 0;
	case ROUTE_REWALK:
		return -ESTALE;
	case ROUTE_REFUSE_VIEW:
		return versions_refuse("write open of", "an old version");
	case ROUTE_REFUSE_NO_WALK:
		break;
	}
	log_warnx("write open of a published version without a path walk (by /proc/PID/fd "
		  "or a file handle) refused: open it by its name");
	return -EROFS;
}

/* The file whose locks an open of nodeid ino reaches (locks.h): the version a reader opened, or
 * the one a writer's staging node copies. */
static struct node *lock_node(fuse_ino_t ino)
{
	struct node *n = inode_of(ino);

	return n->kind == NODE_STAGING ? n->base : n;
}

/* A read, exec or map of a version, or a read by a writer's thread of the version it copies:
 * a passthrough open (*id > 0) when the node's opens can be (none of them writes), else one
 * served by READs from the version's read fd, held until RELEASE (node_close_read). */
static int open_version(struct node *n, struct fuse_file_info *fi, int *id)
{
	static uint64_t opens;
	struct node *v = n->kind == NODE_STAGING ? n->base : n;
	int fd;

	*id = node_open(n, n->kind == NODE_FILE && pt_active());
	if (!*id && (fd = node_rdfd_hold(v)) < 0) {
		node_close(n);
		return fd;
	}
	/* no handle (handle_of: odd), but a number of its own: the locks taken through this
	 * open go at its RELEASE (OFD locks, flock) */
	fi->fh = (__atomic_add_fetch(&opens, 1, __ATOMIC_RELAXED) << 1) | 1;
	fi->keep_cache = 1; /* a version's content never changes (not with passthrough: EIO) */
	/* nothing to publish at a reader's close: spare it the FLUSH, unless the file is locked
	 * (now, or ever through this node): then the close must drop its process's locks */
	fi->noflush = !__atomic_load_n(&v->locked, __ATOMIC_RELAXED) && !locks_held(v->dev, v->ino);
	return 0;
}

/* Natively a write, fallocate or open with O_TRUNC by a caller without CAP_FSETID drops setuid,
 * and setgid when the group may execute the file or the caller is not in its group
 * (privs_dropped), as a change of mode that makes no version. The kernel asks for it with a
 * SETATTR before a write, but judges setgid by S_IXGRP alone (fuse_setattr): a setgid file
 * without it kept its bit (generic/683-685); an O_TRUNC it does not ask for at all (with
 * FUSE_ATOMIC_O_TRUNC the OPEN truncates and the kernel's SETATTR stops short). */
static void drop_privs(fuse_req_t req, struct handle *h)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat st, attr;
	mode_t kill = 0;

	if (ctx->pid <= 0) /* a write through a shared mapping: nobody's */
		return;
	pthread_mutex_lock(&h->lock);
	if (fstat(h->fd, &st) == 0)
		kill = privs_dropped(ctx->pid, ctx->gid, &st);
	if (kill) {
		attr.st_mode = st.st_mode & 07777 & ~kill;
		if (h->kind == H_STAGE) /* kept too if the content turns out unchanged */
			staging_setattr(h->node, h->fd, &attr, FUSE_SET_ATTR_MODE);
		else
			meta_apply(NULL, h->fd, &attr, FUSE_SET_ATTR_MODE);
	}
	pthread_mutex_unlock(&h->lock);
}

void bv_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_get(ino); /* (an alias, which route_open tells apart) */
	struct handle *h = NULL;
	int id = 0, err = open_refused(req, n, fi->flags);

	n = node_version(n);
	if (!err && n->kind == NODE_STAGING && names_write_flags(fi->flags)) {
		pid_t opener = closer_tgid(fuse_req_ctx(req)->pid);
		err =
		    handle_open_staging(n, fi->flags & O_TRUNC, opener, fuse_req_ctx(req)->uid, &h);
		fi->fh = (uintptr_t)h;
		/* its WRITEs carry the caller's pages, not the FUSE page cache's (passthrough.c) */
		fi->direct_io = pt_writer_direct();
	} else if (!err && n->kind == NODE_FILE && names_write_flags(fi->flags)) {
		err = handle_join_in_place(n, fi->flags, fuse_req_ctx(req)->uid,
					   closer_tgid(fuse_req_ctx(req)->pid), &h);
		if (!err) {
			id = node_open(n, pt_active()); /* as its creator's open (bv_create) */
			fi->fh = (uintptr_t)h;
		}
	} else if (!err) {
		err = open_version(n, fi, &id);
	}
	if (!err && h && (fi->flags & O_TRUNC))
		drop_privs(req, h);
	if (err)
		fuse_reply_err(req, -err);
	else if (pt_reply_open(req, fi, id) == -ENOENT) { /* interrupted: the kernel has no file */
		if (h)
			handle_free(h);
		else
			node_close_read(n);
	}
}

/* O_TMPFILE: the kernel's FUSE_TMPFILE, relabelled CREATE by passthrough.c, arrives with the
 * name "/", which no CREATE can have. */
static bool tmpfile_name(const char *name)
{
	return name[0] == '/' && !name[1];
}

/* The new file of a CREATE, as natively: the caller's (the daemon is root), with the group of a
 * setgid directory, its umask or its parent's default ACL applied; its node (one lookup) and
 * its handle. For O_TMPFILE a file with no name (st_nlink 0), made in the parent's own backing
 * directory: the backing filesystem applies the parent's default ACL as for a named file, and
 * a LINK of it (bv_link) stays on that filesystem. Written in place like any new file; never
 * linked, it goes with its node (the kernel's FORGET after the last close), leaving nothing. */
static int create_file(fuse_req_t req, struct node *parent, const char *name, mode_t mode,
		       int oflags, struct stat *st, struct handle **hp)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat pst;
	struct node *n;
	int fd, err;

	if (parent->in_versions)
		return versions_refuse("creating", name);
	/* O_DIRECT is the kernel's business (it sends the caller's I/O as it comes); on our fd it
	 * would make our own unaligned copies fail with EINVAL */
	oflags = (oflags & ~(O_ACCMODE | FMODE_EXEC | O_DIRECT)) | O_RDWR | O_CREAT | O_NOFOLLOW |
		 O_CLOEXEC;
	err = handle_share_take(ctx->uid); /* before the file exists, as natively */
	if (err)
		return err;
	/* O_EXCL: the file given to the caller below is one this CREATE made. A name already on
	 * disk means the kernel's negative entry was stale (another daemon on the store made it):
	 * never open or chown that file as root for the caller; walk again (kernel-notes §3). */
	if (tmpfile_name(name))
		fd = openat(node_fd(parent), ".",
			    O_TMPFILE | O_RDWR | O_CLOEXEC | (oflags & (O_SYNC | O_DSYNC)),
			    create_mode(parent, mode, ctx->umask));
	else
		fd = openat(node_fd(parent), name, oflags | O_EXCL,
			    create_mode(parent, mode, ctx->umask));
	if (fd < 0) {
		err = errno == EEXIST && !(oflags & O_EXCL) ? -ESTALE : -errno;
		handle_share_put(ctx->uid);
		return err;
	}
	gid_t gid =
	    fstat(node_fd(parent), &pst) == 0 && (pst.st_mode & S_ISGID) ? pst.st_gid : ctx->gid;
	give_to(fd, ctx->uid, gid);
	if (fstat(fd, st) < 0 ||
	    !(n = tmpfile_name(name) ? node_lookup_at(parent, name, st, false, fd, NULL)
				     : node_lookup(parent, name, st, false))) {
		err = -errno;
		close(fd);
		handle_share_put(ctx->uid);
		return err;
	}
	*hp = handle_new_direct(n, fd, ctx->uid, closer_tgid(ctx->pid));
	if (!*hp) {
		close(fd);
		node_forget(n, 1);
		handle_share_put(ctx->uid);
		return -ENOMEM;
	}
	return 0;
}

void bv_create(fuse_req_t req, fuse_ino_t pino, const char *name, mode_t mode,
	       struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	struct handle *h = NULL;
	struct stat st;
	int err = create_file(req, inode_of(pino), name, mode, fi->flags, &st, &h);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	if (!tmpfile_name(name)) /* a tmpfile: at its LINK (bv_link); an abort removes it, and
				  * other sessions do not see it until the commit */
		release_note_created(inode_of(pino), name, st.st_ino, fuse_req_ctx(req)->pid);
	/* a new file is written in place as natively: the kernel may write it itself */
	int id = node_open(h->node, pt_active());
	fill_entry(&e, h->node, &st, false);
	fi->fh = (uintptr_t)h;
	if (pt_reply_create(req, &e, fi, id) == -ENOENT) {
		struct node *n = h->node;
		handle_free(h); /* closes the node's open */
		node_forget(n, 1);
	}
}

/* The fd to read: the handle's own, else the version's. */
static int read_fd(struct node *n, struct handle *h)
{
	if (h)
		return h->fd;
	return node_rdfd(n->kind == NODE_STAGING ? n->base : n);
}

void bv_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

	if (h) /* a writer's copy is replaced by the next write after a publish */
		pthread_mutex_lock(&h->lock);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = read_fd(inode_of(ino), h);
	buf.buf[0].pos = off;
	if (buf.buf[0].fd < 0)
		fuse_reply_err(req, -buf.buf[0].fd);
	else
		fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
	if (h)
		pthread_mutex_unlock(&h->lock);
}

void bv_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
		  struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	ssize_t res;

	if (h)
		drop_privs(req, h);
	res = h ? handle_write(h, in, off) : -EBADF;

	(void)ino;
	if (res < 0)
		fuse_reply_err(req, (int)-res);
	else
		fuse_reply_write(req, (size_t)res);
}

/* A close(): the opener's last one publishes, and the closing process's POSIX locks on the file
 * go, after the publish (whoever waited for them then finds the new content at the name). */
void bv_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	struct node *v = lock_node(ino);
	int err = h ? -handle_flush(h, fuse_req_ctx(req)->pid) : 0;

	locks_flush(v->dev, v->ino, fi->lock_owner);
	fuse_reply_err(req, err);
}

void bv_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	struct node *v = lock_node(ino);

	locks_release(v->dev, v->ino, fi->fh, fi->flock_release ? fi->lock_owner : 0);
	if (h)
		handle_close(h);
	else
		node_close_read(inode_of(ino));
	fuse_reply_err(req, 0);
}

/* A lock request through an open of ino: its range, for the file the open reaches. */
static struct node *lock_of(fuse_ino_t ino, struct fuse_file_info *fi, struct lock_range *r)
{
	struct node *v = lock_node(ino);

	r->owner = fi->lock_owner;
	r->open = fi->fh;
	r->cls = LK_POSIX;
	r->pid = 0;
	r->start = 0;
	r->end = LOCK_END;
	return v;
}

/* libfuse's struct flock (l_len 0: to the end) as an inclusive range, and back. */
static void range_in(struct lock_range *r, const struct flock *l)
{
	r->type = l->l_type;
	r->start = l->l_start;
	r->end = l->l_len > 0 && l->l_start <= LOCK_END - l->l_len ? l->l_start + l->l_len - 1
								   : LOCK_END;
	r->pid = l->l_pid;
}

void bv_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock)
{
	struct lock_range r;
	struct node *v = lock_of(ino, fi, &r);

	range_in(&r, lock);
	locks_get(v->dev, v->ino, &r);
	lock->l_type = r.type;
	if (r.type != F_UNLCK) {
		lock->l_whence = SEEK_SET;
		lock->l_start = r.start;
		lock->l_len = r.end == LOCK_END ? 0 : r.end - r.start + 1;
		lock->l_pid = r.pid;
	}
	fuse_reply_lock(req, lock);
}

void bv_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock,
	      int sleep)
{
	struct lock_range r;
	struct node *v = lock_of(ino, fi, &r);
	int err;

	range_in(&r, lock);
	__atomic_store_n(&v->locked, true, __ATOMIC_RELAXED);
	err = locks_set(v->dev, v->ino, &r, sleep ? req : NULL);
	if (err != 1) /* 1: queued, answered when granted or interrupted */
		fuse_reply_err(req, -err);
}

void bv_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op)
{
	struct lock_range r;
	struct node *v = lock_of(ino, fi, &r);
	int err;

	r.cls = LK_FLOCK;
	r.type = (op & LOCK_UN) ? F_UNLCK : (op & LOCK_EX) ? F_WRLCK : F_RDLCK;
	__atomic_store_n(&v->locked, true, __ATOMIC_RELAXED);
	err = locks_set(v->dev, v->ino, &r, (op & LOCK_NB) ? NULL : req);
	if (err != 1)
		fuse_reply_err(req, -err);
}

void bv_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	(void)ino;
	fuse_reply_err(req, h ? -handle_fsync(h, datasync) : 0);
}

void bv_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
		  struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	(void)ino;
	if (h)
		drop_privs(req, h);
	fuse_reply_err(req, h ? -handle_fallocate(h, mode, offset, length) : EBADF);
}

/* SEEK_DATA/SEEK_HOLE (the kernel answers the others itself): in the writer's copy, else in the
 * version. A reader's passthrough open holds no read fd of ours (open_version): one is held for
 * the call (generic/286: EBADF on O_RDONLY fds before). */
void bv_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	struct node *n = inode_of(ino), *v = n->kind == NODE_STAGING ? n->base : n;
	off_t res;
	int fd;

	if (h) {
		pthread_mutex_lock(&h->lock);
		res = lseek(h->fd, off, whence);
		pthread_mutex_unlock(&h->lock);
	} else if ((fd = node_rdfd_hold(v)) < 0) {
		errno = -fd;
		res = -1;
	} else {
		res = lseek(fd, off, whence);
		node_rdfd_release(v);
	}
	if (res < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, res);
}

/* The file a request reaches: a writer's copy stands for the version it replaces. */
static struct node *file_of(fuse_ino_t ino, struct handle *h)
{
	struct node *n = h ? h->node : inode_of(ino);

	return n->kind == NODE_STAGING ? n->base : n;
}

/* copy_file_range: the kernel refuses a copy within one file whose ranges overlap (EINVAL),
 * but it compares nodeids, and a reader's fd and a writer's fd of one file have two here: the
 * same file is told by what they copy (generic/564). Any other copy is answered EOPNOTSUPP,
 * which makes the kernel copy it itself through READ and WRITE, as it did before this op
 * existed (ENOSYS would stop it from asking again). */
void bv_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			struct fuse_file_info *fi_out, size_t len, int flags)
{
	(void)flags;
	if (file_of(ino_in, handle_of(fi_in)) == file_of(ino_out, handle_of(fi_out)) &&
	    off_out < off_in + (off_t)len && off_in < off_out + (off_t)len)
		fuse_reply_err(req, EINVAL);
	else
		fuse_reply_err(req, EOPNOTSUPP);
}
