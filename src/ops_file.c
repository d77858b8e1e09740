/* ops_file.c - FUSE operations on open files: copy-on-write for writers, publish at close.
 *
 * A write open lands on a staging nodeid (route.c) and gets a private O_TMPFILE copy. It is
 * published at the FLUSH that the opener's close() waits for (kernel-notes §8), unless the
 * closer is another process (a child that inherited the fd) or the opener dying of a signal
 * (§8b); RELEASE publishes what is still dirty after that. Opens of a version, and of a file
 * its creator writes in place, are passthrough opens (passthrough.c): the kernel reads, maps and
 * writes their backing file itself. Without passthrough, reads of a version are spliced from
 * the version's own fd, with keep_cache: its content never changes. */
#define _GNU_SOURCE
#include "fs.h"
#include "log.h"
#include "passthrough.h"
#include "closer.h"
#include "route.h"
#include "space.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Open handles (the node's open count is taken by the caller). On unmount the kernel drops
 * RELEASEs it has not sent yet, so the end of the session publishes and frees what is left
 * (handles_shutdown). */
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list handles = LIST_HEAD_INIT(handles); /* handles_lock */

static struct handle *handle_new(enum handle_kind kind, struct node *n, int fd)
{
	struct handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->kind = kind;
	h->node = n;
	h->fd = fd;
	pthread_mutex_init(&h->lock, NULL);
	if (kind == H_STAGE)
		node_set_cur_fd(n, fd);
	pthread_mutex_lock(&handles_lock);
	list_insert(&handles, &h->open);
	pthread_mutex_unlock(&handles_lock);
	return h;
}

static void handle_free(struct handle *h)
{
	pthread_mutex_lock(&handles_lock);
	list_remove(&h->open);
	pthread_mutex_unlock(&handles_lock);
	if (h->kind == H_STAGE && node_cur_fd(h->node) == h->fd)
		node_set_cur_fd(h->node, -1);
	close(h->fd);
	node_close(h->node);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* A writer's copy lacked space: old versions that nobody uses yield at least `need` bytes
 * (space.c) before the write is tried once more. */
static void yield_for(const char *name, uint64_t need)
{
	store_lock(&fs.store);
	space_yield(&fs.store, space_avail(&fs.store) + need, name);
	store_unlock(&fs.store);
}

static const char *handle_name(struct handle *h)
{
	return h->kind == H_STAGE ? h->node->name : "a new file";
}

/* What a writer that lacked space probably still needs: the rest of its base's size (a deploy
 * replaces a file by one of about its size), at least `len`. */
static uint64_t writer_need(struct handle *h, size_t len)
{
	struct stat bst, cst;
	uint64_t need = len;

	if (h->kind == H_STAGE && node_stat(h->node->base, &bst) == 0 && fstat(h->fd, &cst) == 0 &&
	    (uint64_t)bst.st_blocks > (uint64_t)cst.st_blocks &&
	    (uint64_t)(bst.st_blocks - cst.st_blocks) * 512 > need)
		need = (uint64_t)(bst.st_blocks - cst.st_blocks) * 512;
	return need;
}

/* A staging copy of the node's base version: empty, or its first len bytes. */
static int stage_from_base(struct node *stg, bool empty, off_t *len, int *fd)
{
	struct stat bst;
	int err, rdfd = node_rdfd_hold(stg->base);

	if (rdfd < 0)
		return rdfd;
	if (fstat(rdfd, &bst) < 0) {
		err = -errno;
		goto out;
	}
	if (!empty && (*len < 0 || *len > bst.st_size))
		*len = bst.st_size;
	if (empty)
		*len = 0;
	err = store_stage_create(&fs.store, rdfd, &bst, *len, fd);
	if (err == -ENOSPC) {
		yield_for(stg->name, (uint64_t)bst.st_blocks * 512);
		err = store_stage_create(&fs.store, rdfd, &bst, *len, fd);
	}
out:
	node_rdfd_release(stg->base);
	return err;
}

/* Writes after a publish start a new copy-on-write from what was published. h->lock held. */
static int handle_unpublish(struct handle *h)
{
	struct stat st;
	int fd, err;

	if (!h->published)
		return 0;
	if (fstat(h->fd, &st) < 0)
		return -errno;
	err = store_stage_create(&fs.store, h->fd, &st, st.st_size, &fd);
	if (err)
		return err;
	close(h->fd);
	h->fd = fd;
	h->published = false;
	node_set_cur_fd(h->node, fd);
	return 0;
}

/* The staging copy can no longer become a complete version: drop its space now, publish
 * nothing, and tell the writer at close. h->lock held. */
static void handle_fail(struct handle *h, int err)
{
	if (h->kind != H_STAGE || h->failed)
		return;
	h->failed = err;
	if (ftruncate(h->fd, 0) < 0)
		log_warn("truncate staging of %s", h->node->name);
	errno = err;
	log_warn("write to %s failed: nothing will be published", h->node->name);
}

/* Publish the staging copy at the staging node's name; h->lock held. */
static int handle_publish(struct handle *h)
{
	struct node *stg = h->node, *parent = stg->parent;
	struct store_change ch;
	struct stat sst, cst = {.st_mode = 0};
	int err, cfd;

	if (!fs.store.nosync && fdatasync(h->fd) < 0)
		return -errno;
	if (fstat(h->fd, &sst) < 0)
		return -errno;
	store_lock(&fs.store);
	cfd = openat(node_fd(parent), stg->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (cfd >= 0 && fstat(cfd, &cst) == 0 && S_ISREG(cst.st_mode) &&
	    cst.st_size == sst.st_size && store_same_content(cfd, h->fd, sst.st_size)) {
		/* nothing changed: no version, but metadata the writer set applies in place */
		struct stat meta;
		int valid = node_meta_take(stg, &meta);
		store_unlock(&fs.store);
		if (valid && meta_apply(NULL, cfd, &meta, valid) < 0)
			log_warn("apply metadata to %s", stg->name);
		close(cfd);
		h->dirty = false;
		log_debug("close %s: content unchanged, nothing published", stg->name);
		return 0;
	}
	if (cfd >= 0)
		close(cfd);
	/* a reader, or a stat() in flight, that found the name before the rename holds the file
	 * it replaces: that file keeps its one link for them (node_stat) */
	bool held = S_ISREG(cst.st_mode) && cst.st_nlink == 1;
	if (held)
		node_mark_replaced(cst.st_dev, cst.st_ino, true);
	err = store_publish(&fs.store, node_fd(parent), stg->name, h->fd, &ch, node_defer_prune,
			    NULL);
	if (err && held)
		node_mark_replaced(cst.st_dev, cst.st_ino, false);
	store_unlock(&fs.store);
	if (err) {
		store_change_done(&ch);
		errno = -err;
		log_warn("publish %s failed, current version unchanged", stg->name);
		return err;
	}
	struct stat meta;
	node_meta_take(stg, &meta); /* it is in the published copy */
	if (!ch.orphaned) {
		/* The name now answers another version: drop what the kernel caches for it before
		 * close() returns (cacheable() in ops_entry.c). The closer holds no directory lock,
		 * and any request that does is served by another worker. */
		__atomic_add_fetch(&fs.gen, 1, __ATOMIC_ACQ_REL);
		fuse_lowlevel_notify_inval_entry(fs.se, node_id(parent), stg->name,
						 strlen(stg->name));
	}
	h->published = true;
	h->dirty = false;
	if (ch.orphaned)
		log_info("publish %s: the name was removed meanwhile; kept as %s/%s", stg->name,
			 STORE_DIR, ch.vrel);
	else if (ch.kept)
		log_info("publish %s (%lld bytes): previous kept as %s/%s", stg->name,
			 (long long)sst.st_size, STORE_DIR, ch.vrel);
	else
		log_info("publish %s (%lld bytes)", stg->name, (long long)sst.st_size);
	versions_after_change(&ch);
	store_change_done(&ch);
	return 0;
}

/* The writer changed only metadata (touch, chmod through its fd): apply it in place to the
 * current version, which makes no version. */
static void handle_apply_meta(struct handle *h)
{
	struct node *stg = h->node;
	struct stat meta;
	int valid = node_meta_take(stg, &meta), fd;

	if (!valid)
		return;
	fd =
	    openat(node_fd(stg->parent), stg->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 || meta_apply(NULL, fd, &meta, valid) < 0)
		log_warn("apply metadata to %s", stg->name);
	if (fd >= 0)
		close(fd);
}

int staging_truncate(struct node *stg, off_t size)
{
	struct handle h = {.kind = H_STAGE, .node = stg, .dirty = true};
	off_t len = size;
	int err;

	err = stage_from_base(stg, false, &len, &h.fd);
	if (err)
		return err;
	if (ftruncate(h.fd, size) < 0)
		err = -errno;
	if (!err)
		err = handle_publish(&h);
	close(h.fd);
	return err;
}

static void open_staging(fuse_req_t req, struct node *stg, struct fuse_file_info *fi)
{
	bool trunc = fi->flags & O_TRUNC;
	struct handle *h;
	off_t len = -1;
	int fd, err;

	err = stage_from_base(stg, trunc, &len, &fd);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	h = handle_new(H_STAGE, stg, fd);
	if (!h) {
		close(fd);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	node_open(stg, false); /* the writer's copy stays on the daemon's write path */
	struct stat bst;
	h->dirty = trunc && node_stat(stg->base, &bst) == 0 && bst.st_size > 0;
	h->opener_tgid = closer_tgid(fuse_req_ctx(req)->pid);
	fi->fh = (uintptr_t)h;
	if (fuse_reply_open(req, fi) == -ENOENT)
		handle_free(h);
}

void bv_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = inode_of(ino), *target = n;
	pid_t tid = fuse_req_ctx(req)->pid;
	int fd;

	if (n->kind == NODE_STAGING) {
		route_done(tid);
		if (fi->flags & FMODE_EXEC) {
			/* an exec must run a published version: walk again */
			fuse_reply_err(req, ESTALE);
			return;
		}
		if (names_write_flags(fi->flags)) {
			open_staging(req, n, fi);
			return;
		}
		target = n->base; /* a read by the writer's thread: the version it copies */
	} else if (names_write_flags(fi->flags)) {
		if (route_arm(tid, fuse_req_ctx(req)->uid, n)) {
			/* never write or truncate a published version: send the writer back to walk
			 * the path again; its LOOKUP answers a staging nodeid for a current name,
			 * and EROFS inside .versions/ (the version may have been replaced
			 * meanwhile, so "old" alone cannot tell which) */
			fuse_reply_err(req, ESTALE);
		} else if (versions_readonly(n)) {
			fuse_reply_err(req, -versions_refuse("write open of", "an old version"));
		} else {
			log_warnx("write open of a published version without a path walk (by "
				  "/proc/PID/fd or a file handle) refused: open it by its name");
			fuse_reply_err(req, EROFS);
		}
		return;
	}
	if ((fi->flags & FMODE_EXEC) && n->kind == NODE_FILE) {
		uint64_t dir;
		char *cached = node_take_cached_name(n, &dir);
		if (cached) {
			/* It was looked up without an x bit, so the kernel may hold its name for
			 * long; running, it must be looked up every time (cacheable()). Send the
			 * exec back once: its re-walk renews the entry, same nodeid, now uncached.
			 */
			free(cached);
			fuse_reply_err(req, ESTALE);
			return;
		}
	}
	/* the opens of a version can all be passthrough: none of them writes (a staging nodeid's
	 * read opens read its base through the daemon) */
	int id = node_open(n, n->kind == NODE_FILE && pt_active());
	if (!id && (fd = node_rdfd_hold(target)) < 0) { /* released at RELEASE */
		node_close(n);
		fuse_reply_err(req, -fd);
		return;
	}
	fi->fh = 0;
	fi->keep_cache = 1; /* a version's content never changes (not with passthrough: EIO) */
	fi->noflush = 1;    /* nothing to publish at a reader's close: spare it the FLUSH */
	if (pt_reply_open(req, fi, id) == -ENOENT) {
		if (!id)
			node_rdfd_release(target);
		node_close(n);
	}
}

void bv_create(fuse_req_t req, fuse_ino_t pino, const char *name, mode_t mode,
	       struct fuse_file_info *fi)
{
	struct node *parent = inode_of(pino), *n;
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct fuse_entry_param e;
	struct handle *h;
	struct stat st, pst;
	int fd, flags;

	if (parent->in_versions) {
		fuse_reply_err(req, -versions_refuse("creating", name));
		return;
	}
	/* O_DIRECT is the kernel's business (it sends the caller's I/O as it comes); on our fd it
	 * would make our own unaligned copies fail with EINVAL */
	flags = (fi->flags & ~(O_ACCMODE | FMODE_EXEC | O_DIRECT)) | O_RDWR | O_CREAT | O_NOFOLLOW |
		O_CLOEXEC;
	fd = openat(node_fd(parent), name, flags, mode);
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	/* the daemon is root: the file belongs to the caller, as natively */
	gid_t gid =
	    fstat(node_fd(parent), &pst) == 0 && (pst.st_mode & S_ISGID) ? pst.st_gid : ctx->gid;
	if (fchown(fd, ctx->uid, gid) == 0 && (mode & (S_ISUID | S_ISGID)))
		fchmod(fd, mode & 07777);
	if (fstat(fd, &st) < 0 || !(n = node_lookup(parent, name, &st, false))) {
		int err = errno;
		close(fd);
		fuse_reply_err(req, err);
		return;
	}
	h = handle_new(H_DIRECT, n, fd);
	if (!h) {
		close(fd);
		node_forget(n, 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* a new file is written in place as natively: the kernel may write it itself */
	int id = node_open(n, pt_active());
	fill_entry(&e, n, &st, false);
	fi->fh = (uintptr_t)h;
	if (pt_reply_create(req, &e, fi, id) == -ENOENT) {
		handle_free(h);
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

	if (h)
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
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t res;
	int err;

	(void)ino;
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	pthread_mutex_lock(&h->lock);
	err = handle_unpublish(h);
	if (err) {
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, -err);
		return;
	}
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = h->fd;
	out.buf[0].pos = off;
	res = fuse_buf_copy(&out, in, 0);
	if (res == -ENOSPC) {
		/* nothing of the buffer was consumed (a partial write returns its count) */
		yield_for(handle_name(h), writer_need(h, fuse_buf_size(in)));
		res = fuse_buf_copy(&out, in, 0);
	}
	if (res > 0)
		h->dirty = true;
	else if (res < 0)
		handle_fail(h, (int)-res);
	pthread_mutex_unlock(&h->lock);
	if (res < 0)
		fuse_reply_err(req, (int)-res);
	else
		fuse_reply_write(req, (size_t)res);
}

/* chmod/chown/utimes by a writer (through its fd, or its staging nodeid): apply them to the
 * staging copy fd, and remember them for the case the content turns out unchanged. */
int staging_setattr(struct node *stg, int fd, const struct stat *attr, int valid)
{
	const int meta = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
			 FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
			 FUSE_SET_ATTR_MTIME_NOW;
	struct stat st;
	int err;

	if (fd < 0) /* no copy open: the change applies in place to the current version */
		return meta_apply(stg->base, -1, attr, valid);
	err = meta_apply(NULL, fd, attr, valid);
	if (err || !(valid & meta))
		return err;
	if (fstat(fd, &st) < 0)
		return -errno;
	valid &= meta;
	if (valid & FUSE_SET_ATTR_ATIME_NOW)
		valid = (valid & ~FUSE_SET_ATTR_ATIME_NOW) | FUSE_SET_ATTR_ATIME;
	if (valid & FUSE_SET_ATTR_MTIME_NOW)
		valid = (valid & ~FUSE_SET_ATTR_MTIME_NOW) | FUSE_SET_ATTR_MTIME;
	node_meta_add(stg, valid, &st); /* the resolved values */
	return 0;
}

int handle_setattr(struct handle *h, struct stat *attr, int valid)
{
	int err = 0;

	pthread_mutex_lock(&h->lock);
	if (valid & FUSE_SET_ATTR_SIZE) {
		err = handle_unpublish(h);
		if (!err && ftruncate(h->fd, attr->st_size) < 0) {
			err = -errno;
			handle_fail(h, -err);
		}
		if (!err)
			h->dirty = true;
	}
	if (!err && h->kind == H_STAGE)
		err = staging_setattr(h->node, h->fd, attr, valid & ~FUSE_SET_ATTR_SIZE);
	else if (!err)
		err = meta_apply(NULL, h->fd, attr, valid & ~FUSE_SET_ATTR_SIZE);
	pthread_mutex_unlock(&h->lock);
	return err;
}

/* Open staging handles of the same file (base) that process tgid opened, other than h. */
static unsigned other_writers(struct handle *h, pid_t tgid)
{
	unsigned n = 0;

	pthread_mutex_lock(&handles_lock);
	for (struct list *l = handles.next; l != &handles; l = l->next) {
		struct handle *o = list_entry(l, struct handle, open);
		n += o != h && o->kind == H_STAGE && o->node->base == h->node->base &&
		     o->opener_tgid == tgid;
	}
	pthread_mutex_unlock(&handles_lock);
	return n;
}

/* A FLUSH is not the end of the writer when the closing process still holds another write
 * fd on the file: a shell's `cmd > f` closes its first fd after dup2, before any write. Every
 * staging node shows its base's inode number (ops_entry.c: what the writer opened), so the
 * process's own other write opens of the file show it too: they are discounted, and only an
 * fd beyond them (a dup of this one) means this close is not the last. */
static bool still_writing(struct handle *h, pid_t pid)
{
	struct stat st;
	ino_t cur = fstat(h->fd, &st) == 0 ? st.st_ino : 0;
	unsigned fds = closer_write_fds(pid, fs.mnt_id, h->node->base->ino, cur);

	return fds && fds > other_writers(h, closer_tgid(pid));
}

void bv_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	pid_t pid = fuse_req_ctx(req)->pid;
	int err = 0;

	(void)ino;
	if (!h || h->kind != H_STAGE) {
		fuse_reply_err(req, 0);
		return;
	}
	pthread_mutex_lock(&h->lock);
	if (h->failed) {
		err = -h->failed;
	} else if (!h->dirty && !h->abandoned) {
		handle_apply_meta(h);
	} else if (h->dirty && !h->abandoned && !still_writing(h, pid)) {
		switch (closer_of(pid, h->opener_tgid)) {
		case CLOSER_OTHER:
			break; /* a child that inherited the fd: the opener is not done */
		case CLOSER_KILLED:
			h->abandoned = true;
			if (ftruncate(h->fd, 0) < 0) /* free the staging space now */
				log_warn("truncate staging of %s", h->node->name);
			log_info("writer of %s killed by a signal: nothing published",
				 h->node->name);
			break;
		case CLOSER_OPENER:
			err = handle_publish(h);
			if (err)
				handle_fail(h, -err);
			break;
		}
	}
	pthread_mutex_unlock(&h->lock);
	fuse_reply_err(req, -err);
}

/* The end of a handle: publish what is still dirty (writes through a shared mmap, a child
 * that outlived the opener), else apply metadata the writer set. */
static void handle_close(struct handle *h)
{
	if (h->kind == H_STAGE) {
		pthread_mutex_lock(&h->lock);
		if (h->dirty && !h->abandoned && !h->failed)
			handle_publish(h);
		else if (!h->abandoned && !h->failed)
			handle_apply_meta(h);
		pthread_mutex_unlock(&h->lock);
	}
	handle_free(h);
}

/* After the request loop: the handles whose RELEASE the unmount dropped. */
void handles_shutdown(void)
{
	for (;;) {
		pthread_mutex_lock(&handles_lock);
		struct list *l = list_first(&handles);
		pthread_mutex_unlock(&handles_lock);
		if (!l)
			break;
		handle_close(list_entry(l, struct handle, open));
	}
}

void bv_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	if (!h) {
		node_close_read(inode_of(ino));
		fuse_reply_err(req, 0);
		return;
	}
	handle_close(h);
	fuse_reply_err(req, 0);
}

void bv_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	int err = 0;

	(void)ino;
	if (h) {
		pthread_mutex_lock(&h->lock);
		if ((datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0)
			err = errno;
		pthread_mutex_unlock(&h->lock);
	}
	fuse_reply_err(req, err);
}

void bv_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
		  struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	int err;

	(void)ino;
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	pthread_mutex_lock(&h->lock);
	err = -handle_unpublish(h);
	if (!err && fallocate(h->fd, mode, offset, length) < 0) {
		err = errno;
		if (err == ENOSPC) {
			yield_for(handle_name(h), (uint64_t)length);
			err = fallocate(h->fd, mode, offset, length) < 0 ? errno : 0;
		}
		if (err == ENOSPC || err == EDQUOT || err == EIO)
			handle_fail(h, err);
	}
	if (!err)
		h->dirty = true;
	pthread_mutex_unlock(&h->lock);
	fuse_reply_err(req, err);
}

void bv_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);
	off_t res;

	if (h)
		pthread_mutex_lock(&h->lock);
	res = lseek(read_fd(inode_of(ino), h), off, whence);
	if (h)
		pthread_mutex_unlock(&h->lock);
	if (res < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, res);
}
