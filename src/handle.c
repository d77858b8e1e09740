/* handle.c - the open files the daemon serves itself.
 *
 * A write open lands on a staging nodeid (route.c) and gets a private O_TMPFILE copy of the
 * version it replaces. The copy is published - renamed over the name, the replaced file kept
 * as a version (store_publish) - at the FLUSH that the opener's close() waits for
 * (kernel-notes §8), unless the closer is another process (a child that inherited the fd) or
 * the opener dying of a signal (§8b: drop_killed_writer); RELEASE publishes what is still
 * dirty after that. A file its creator made is written in place, as natively. */
#define _GNU_SOURCE
#include "handle.h"
#include "locks.h"
#include "attr.h"
#include "closer.h"
#include "log.h"
#include "release.h"
#include "space.h"
#include "copy.h"
#include "keep.h"
#include "inval.h"
#include "versions.h"
#include "node_open.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/xattr.h>
#include <unistd.h>

#define CAPS_XATTR "security.capability" /* file capabilities (capabilities(7)) */

/* Open handles (the node's open count is taken by the caller). On unmount the kernel drops
 * RELEASEs it has not sent yet, so the end of the session publishes and frees what is left
 * (handles_shutdown). */
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER; /* a leaf: nothing under it */
static struct list handles = LIST_HEAD_INIT(handles);		 /* handles_lock */

/* Handles held per unprivileged user (handle_share_take); handles_lock. Few users write at
 * once: a short array searched in order. */
static struct share {
	uid_t uid;
	unsigned held;
} * shares;
static size_t nshares;

static unsigned share_cap(void)
{
	struct rlimit rl;
	rlim_t lim = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;

	if (lim == RLIM_INFINITY || lim > (1u << 30))
		lim = 1u << 30;
	return lim / 8 > 64 ? (unsigned)(lim / 8) : 64;
}

int handle_share_take(uid_t uid)
{
	size_t i;
	int err = 0;

	if (uid == 0)
		return 0;
	pthread_mutex_lock(&handles_lock);
	for (i = 0; i < nshares && shares[i].uid != uid; i++)
		;
	if (i == nshares) {
		struct share *g = realloc(shares, (nshares + 1) * sizeof(*g));
		if (g) {
			shares = g;
			shares[nshares++] = (struct share){.uid = uid};
		} else {
			err = -ENOMEM;
		}
	}
	if (!err && shares[i].held >= share_cap())
		err = -EMFILE;
	if (!err)
		shares[i].held++;
	pthread_mutex_unlock(&handles_lock);
	if (err == -EMFILE)
		log_warnx("uid %u holds %u open files of the daemon's, its share: EMFILE",
			  (unsigned)uid, share_cap());
	return err;
}

void handle_share_put(uid_t uid)
{
	if (uid == 0)
		return;
	pthread_mutex_lock(&handles_lock);
	for (size_t i = 0; i < nshares; i++) {
		if (shares[i].uid == uid) {
			if (!--shares[i].held)
				shares[i] = shares[--nshares];
			break;
		}
	}
	pthread_mutex_unlock(&handles_lock);
}

static struct handle *handle_new(enum handle_kind kind, struct node *n, int fd, uid_t uid)
{
	struct handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->kind = kind;
	h->node = n;
	h->fd = fd;
	h->uid = uid;
	pthread_mutex_init(&h->lock, NULL);
	if (kind == H_STAGE)
		node_set_cur_fd(n, fd);
	else
		__atomic_add_fetch(&n->writers_in_place, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_lock(&handles_lock);
	list_insert(&handles, &h->open);
	pthread_mutex_unlock(&handles_lock);
	return h;
}

void handle_free(struct handle *h)
{
	pthread_mutex_lock(&handles_lock);
	list_remove(&h->open);
	pthread_mutex_unlock(&handles_lock);
	if (h->kind == H_STAGE && node_cur_fd(h->node) == h->fd)
		node_set_cur_fd(h->node, -1);
	if (h->kind == H_DIRECT && !h->closed)
		__atomic_sub_fetch(&h->node->writers_in_place, 1, __ATOMIC_ACQ_REL);
	close(h->fd);
	node_close(h->node);
	handle_share_put(h->uid);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

struct handle *handle_new_direct(struct node *n, int fd, uid_t uid, pid_t opener_tgid)
{
	struct handle *h = handle_new(H_DIRECT, n, fd, uid);

	if (h)
		h->opener_tgid = opener_tgid;
	return h;
}

/* The backing file of n itself, opened for writing (flags: the caller's access mode and
 * O_TRUNC); through the node's own fd, never by name. */
static int open_in_place(struct node *n, int flags)
{
	char proc[32];
	int pfd = node_fd(n);

	if (pfd < 0)
		return -errno;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
	/* O_APPEND is the kernel's: it sends each write at the end; pwrite on an O_APPEND fd
	 * would ignore the offset */
	int fd = open(proc, (flags & (O_ACCMODE | O_TRUNC)) | O_NONBLOCK | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int handle_join_in_place(struct node *n, int flags, uid_t uid, pid_t opener_tgid,
			 struct handle **out)
{
	int fd, err = handle_share_take(uid);

	if (err)
		return err;
	fd = open_in_place(n, flags);
	if (fd < 0) {
		handle_share_put(uid);
		return fd;
	}
	*out = handle_new_direct(n, fd, uid, opener_tgid);
	if (!*out) {
		close(fd);
		handle_share_put(uid);
		return -ENOMEM;
	}
	return 0;
}

int truncate_in_place(struct node *n, off_t size)
{
	int fd = open_in_place(n, O_WRONLY), err = 0;

	if (fd < 0)
		return fd;
	if (ftruncate(fd, size) < 0)
		err = -errno;
	close(fd);
	return err;
}

/* A writer's copy lacked space: old versions of the writer's own that nobody uses yield until
 * `want` bytes are free (space.c) before the write is tried once more. */
static void yield_for(const char *name, uint64_t want, uid_t uid)
{
	store_lock(&fs.store);
	space_yield(&fs.store, want, uid, name);
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

/* A staging copy of the node's base version for user uid: empty, or its first len bytes. */
static int stage_from_base(struct node *stg, bool empty, off_t *len, uid_t uid, int *fd)
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
		yield_for(stg->name, space_avail(&fs.store) + (uint64_t)bst.st_blocks * 512, uid);
		err = store_stage_create(&fs.store, rdfd, &bst, *len, fd);
	}
out:
	node_rdfd_release(stg->base);
	return err;
}

int handle_open_staging(struct node *stg, bool trunc, pid_t opener_tgid, uid_t uid,
			struct handle **out)
{
	struct handle *h;
	struct stat bst;
	off_t len = -1;
	int fd, err;

	err = handle_share_take(uid);
	if (err)
		return err;
	err = stage_from_base(stg, trunc, &len, uid, &fd);
	if (err) {
		handle_share_put(uid);
		return err;
	}
	h = handle_new(H_STAGE, stg, fd, uid);
	if (!h) {
		close(fd);
		handle_share_put(uid);
		return -ENOMEM;
	}
	node_open(stg, false); /* the writer's copy stays on the daemon's write path */
	h->dirty = trunc && node_stat(stg->base, &bst) == 0 && bst.st_size > 0;
	h->opener_tgid = opener_tgid;
	h->own_dev = stg->base->dev;
	h->own_ino = stg->base->ino;
	*out = h;
	return 0;
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

/* The regular file now at stg's name, opened O_RDONLY, if it is the inode (dev, ino): else
 * -1 (-ESTALE in *err). The name is opened O_PATH first, so a FIFO or device renamed onto it
 * is never opened; the check and every later change go through the fd, never the name again,
 * so a rename after the check cannot redirect them. */
static int current_if_own(struct node *stg, dev_t dev, ino_t ino, int *err)
{
	char proc[32];
	struct stat st;
	int pfd, fd = -1;

	*err = -ESTALE;
	pfd = openat(node_fd(stg->parent), stg->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0)
		return -1;
	if (fstat(pfd, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == dev && st.st_ino == ino) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
		fd = open(proc, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		*err = fd < 0 ? -errno : 0;
	}
	close(pfd);
	return fd;
}

/* A chmod or chown applied in place to stg's name: its old versions lose at once what the
 * file no longer grants (docs/security.md, History permissions). */
static void history_follows(struct node *stg, int valid)
{
	if (!(valid & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)))
		return;
	store_lock(&fs.store);
	store_history_follow(&fs.store, node_fd(stg->parent), stg->name);
	store_unlock(&fs.store);
}

/* Metadata a writer set (fchmod, fchown, futimens on its fd) with no new content to carry it:
 * it applies in place to the file the writer opened, as natively, if that file still holds
 * the name. If the name now holds another file (renamed there meanwhile), the change is
 * dropped: natively it went to the writer's own inode, never to whatever took its name.
 * cfd: the current file if the caller has it open (closed here), else -1. */
static void apply_own_meta(struct handle *h, int cfd, bool wrote)
{
	struct node *stg = h->node;
	struct stat meta, cst;
	int valid = node_meta_take(stg, &meta), err;
	/* a write drops file capabilities natively, even one that rewrites the same bytes: the
	 * copy has none (store_stage_create) unless the writer set them */
	bool uncap = wrote && fgetxattr(h->fd, CAPS_XATTR, NULL, 0) < 0 && errno == ENODATA;

	if (cfd >= 0 &&
	    (fstat(cfd, &cst) < 0 || cst.st_dev != h->own_dev || cst.st_ino != h->own_ino)) {
		close(cfd);
		cfd = -1;
	} else if (cfd < 0 && (valid || uncap)) {
		cfd = current_if_own(stg, h->own_dev, h->own_ino, &err);
	}
	if (uncap && cfd >= 0 && fremovexattr(cfd, CAPS_XATTR) < 0 && errno != ENODATA)
		log_warn("close %s: drop its file capabilities", stg->name);
	if (valid && cfd < 0)
		log_info(
		    "close %s: another file holds the name now; the writer's chmod/chown/utimes "
		    "dropped",
		    stg->name);
	else if (valid && meta_apply(NULL, cfd, &meta, valid) < 0)
		log_warn("apply metadata to %s", stg->name);
	else if (valid)
		history_follows(stg, valid);
	if (cfd >= 0)
		close(cfd);
}

/* The copy equals the current file (cfd, closed here): no version, but metadata the writer set
 * applies in place. h->lock held. */
static void publish_unchanged(struct handle *h, int cfd)
{
	apply_own_meta(h, cfd, true);
	h->dirty = false;
	log_debug("close %s: content unchanged, nothing published", h->node->name);
}

/* The copy (size bytes) is now the current version (or, its name gone, an old one). */
static void published(struct handle *h, const struct store_change *ch, off_t size)
{
	struct node *stg = h->node;
	struct stat meta;

	node_meta_take(stg, &meta); /* it is in the published copy */
	if (!ch->orphaned) {
		/* The name now answers another version: drop what the kernel caches for it before
		 * close() returns (route_lookup() in route.c, lookup_name() in ops_entry.c). The
		 * closer holds no directory lock, and any request that does is served by another
		 * worker. */
		inval_name_changed(stg->parent, stg->name);
		/* and its listing: the name's inode number (d_ino) is the new version's */
		inval_dir_changed(stg->parent);
	}
	h->published = true;
	h->dirty = false;
	if (ch->orphaned)
		log_info("publish %s: the name was removed meanwhile; kept as %s/%s", stg->name,
			 STORE_DIR, ch->vrel);
	else if (ch->kept)
		log_info("publish %s (%lld bytes): previous kept as %s/%s", stg->name,
			 (long long)size, STORE_DIR, ch->vrel);
	else
		log_info("publish %s (%lld bytes)", stg->name, (long long)size);
	versions_after_change(ch);
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
	err = release_hold_publish(parent, stg->name, h->fd);
	if (err != RELEASE_NOT_HELD) {
		/* held by a release (release.c): the name keeps its file until the commit */
		if (!err) {
			struct stat meta;
			node_meta_take(stg, &meta); /* it is in the held copy */
			h->published = true;	    /* a later write copies it again */
			h->dirty = false;
		}
		return err;
	}
	store_lock(&fs.store);
	cfd = openat(node_fd(parent), stg->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (cfd >= 0 && fstat(cfd, &cst) == 0 && S_ISREG(cst.st_mode) &&
	    cst.st_size == sst.st_size && store_same_content(cfd, h->fd, sst.st_size)) {
		store_unlock(&fs.store);
		publish_unchanged(h, cfd);
		return 0;
	}
	if (cfd >= 0)
		close(cfd);
	/* a reader, or a stat() in flight, that found the name before the rename holds the file
	 * it replaces: that file keeps its one link for them (node_stat) */
	bool held = S_ISREG(cst.st_mode) && cst.st_nlink == 1;
	if (held)
		node_mark_replaced(cst.st_dev, cst.st_ino, true);
	/* The file's locks go with its name to the new version, as natively with an in-place
	 * write, before anyone can open that version; the opens of the old one still reach
	 * them (locks.h) */
	if (S_ISREG(cst.st_mode))
		locks_published(cst.st_dev, cst.st_ino, sst.st_dev, sst.st_ino,
				node_held(cst.st_dev, cst.st_ino));
	err = store_publish(&fs.store, node_fd(parent), stg->name, h->fd, &ch, h->uid);
	if (err && held)
		node_mark_replaced(cst.st_dev, cst.st_ino, false);
	if ((err || ch.orphaned) && S_ISREG(cst.st_mode))
		locks_unpublished(cst.st_dev, cst.st_ino, sst.st_dev, sst.st_ino);
	store_unlock(&fs.store);
	if (err) {
		store_change_done(&ch);
		errno = -err;
		log_warn("publish %s failed, current version unchanged", stg->name);
		return err;
	}
	published(h, &ch, sst.st_size);
	if (!ch.orphaned) {
		h->own_dev = sst.st_dev;
		h->own_ino = sst.st_ino;
	}
	store_change_done(&ch);
	return 0;
}

/* The writer changed only metadata (touch, chmod through its fd): apply it in place to the
 * current version, which makes no version. */
static void handle_apply_meta(struct handle *h)
{
	apply_own_meta(h, -1, false);
}

int staging_truncate(struct node *stg, const struct stat *attr, int valid, uid_t uid)
{
	struct handle h = {.kind = H_STAGE, .node = stg, .dirty = true, .uid = uid};
	off_t len = attr->st_size;
	int err;

	err = stage_from_base(stg, false, &len, uid, &h.fd);
	if (err)
		return err;
	if (ftruncate(h.fd, attr->st_size) < 0)
		err = -errno;
	/* the rest of the SETATTR (the kernel's own drop of setuid, a mode, times) goes into
	 * the copy before it is published: after it, the base is no longer at the name */
	if (!err && (valid & ~FUSE_SET_ATTR_SIZE))
		err = meta_apply(NULL, h.fd, attr, valid & ~FUSE_SET_ATTR_SIZE);
	if (!err)
		err = handle_publish(&h);
	close(h.fd);
	return err;
}

/* Metadata a writer sets is also remembered for the case its content turns out unchanged
 * (then it applies in place, handle_apply_meta). */
int staging_setattr(struct node *stg, int fd, const struct stat *attr, int valid)
{
	const int meta = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
			 FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
			 FUSE_SET_ATTR_MTIME_NOW;
	struct stat st;
	int err;

	if (!(valid & meta))
		return 0;
	if (fd < 0) { /* no copy open: in place, to the version it opened if still current */
		int cfd = current_if_own(stg, stg->base->dev, stg->base->ino, &err);
		if (cfd < 0)
			return err; /* ESTALE: the kernel walks the name again (kernel-notes §3) */
		err = meta_apply(NULL, cfd, attr, valid);
		close(cfd);
		if (!err)
			history_follows(stg, valid);
		return err;
	}
	err = meta_apply(NULL, fd, attr, valid);
	if (err)
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

int handle_stat(struct handle *h, struct stat *st)
{
	return h->kind == H_STAGE ? staging_stat(h->node, h->fd, st) : node_stat(h->node, st);
}

ssize_t handle_write(struct handle *h, struct fuse_bufvec *in, off_t off)
{
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t res;

	pthread_mutex_lock(&h->lock);
	res = handle_unpublish(h);
	if (res) {
		pthread_mutex_unlock(&h->lock);
		return res;
	}
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = h->fd;
	out.buf[0].pos = off;
	res = fuse_buf_copy(&out, in, 0);
	if (res == -ENOSPC) {
		/* nothing of the buffer was consumed (a partial write returns its count) */
		yield_for(handle_name(h),
			  space_avail(&fs.store) + writer_need(h, fuse_buf_size(in)), h->uid);
		res = fuse_buf_copy(&out, in, 0);
	}
	if (res > 0)
		h->dirty = true;
	else if (res < 0)
		handle_fail(h, (int)-res);
	pthread_mutex_unlock(&h->lock);
	return res;
}

int handle_fallocate(struct handle *h, int mode, off_t offset, off_t length)
{
	int err;

	pthread_mutex_lock(&h->lock);
	err = -handle_unpublish(h);
	if (!err && fallocate(h->fd, mode, offset, length) < 0) {
		err = errno;
		if (err == ENOSPC) {
			/* the space it lacks, not what it asks for: free space counts */
			yield_for(handle_name(h), (uint64_t)length, h->uid);
			err = fallocate(h->fd, mode, offset, length) < 0 ? errno : 0;
		}
		if (err == ENOSPC || err == EDQUOT || err == EIO)
			handle_fail(h, err);
	}
	if (!err)
		h->dirty = true;
	pthread_mutex_unlock(&h->lock);
	return -err;
}

int handle_fsync(struct handle *h, bool datasync)
{
	int err = 0;

	pthread_mutex_lock(&h->lock);
	if ((datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0)
		err = -errno;
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
 * staging node shows its base's inode number (staging_stat: what the writer opened), so the
 * process's own other write opens of the file show it too: they are discounted, and only an
 * fd beyond them (a dup of this one) means this close is not the last. */
static bool still_writing(struct handle *h, pid_t pid)
{
	struct stat st;
	ino_t cur = fstat(h->fd, &st) == 0 ? st.st_ino : 0;
	unsigned fds = closer_write_fds(pid, fs.mnt_id, h->node->base->ino, cur);

	return fds && fds > other_writers(h, closer_tgid(pid));
}

/* A writer killed by a signal (kernel-notes §8b) publishes nothing: its copy may be half
 * written. Its space is freed now; the handle goes at RELEASE. h->lock held. */
static void drop_killed_writer(struct handle *h)
{
	h->abandoned = true;
	if (ftruncate(h->fd, 0) < 0)
		log_warn("truncate staging of %s", h->node->name);
	log_info("writer of %s killed by a signal: nothing published", h->node->name);
}

/* The last close of a file written in place by its opener (no write fd of it left in the
 * closing process): from now on it is a published file like any other, and a write to it
 * copies. Its RELEASE comes later, on its own (kernel-notes §8): until then the handle
 * stays, but no longer makes others write in place. */
static void direct_flush(struct handle *h, pid_t pid)
{
	pthread_mutex_lock(&h->lock);
	if (!h->closed && closer_tgid(pid) == h->opener_tgid &&
	    !closer_write_fds(pid, fs.mnt_id, h->node->ino, 0)) {
		h->closed = true;
		__atomic_sub_fetch(&h->node->writers_in_place, 1, __ATOMIC_ACQ_REL);
	}
	pthread_mutex_unlock(&h->lock);
}

int handle_flush(struct handle *h, pid_t pid)
{
	int err = 0;

	if (h->kind == H_DIRECT)
		direct_flush(h, pid);
	if (h->kind != H_STAGE)
		return 0;
	pthread_mutex_lock(&h->lock);
	if (h->failed) {
		err = -h->failed;
	} else if (!h->dirty && !h->abandoned) {
		handle_apply_meta(h);
		/* its writes may come later, through a shared mmap (kernel-notes §8) */
		if (closer_tgid(pid) == h->opener_tgid)
			h->closed = true;
	} else if (h->dirty && !h->abandoned && !still_writing(h, pid)) {
		switch (closer_of(pid, h->opener_tgid)) {
		case CLOSER_OTHER:
			break; /* a child that inherited the fd: the opener is not done */
		case CLOSER_KILLED:
			drop_killed_writer(h);
			break;
		case CLOSER_OPENER:
			h->closed = true;
			err = handle_publish(h);
			if (err)
				handle_fail(h, -err);
			break;
		}
	}
	pthread_mutex_unlock(&h->lock);
	return err;
}

/* The end of a handle: publish what is still dirty (writes through a shared mmap, a child
 * that outlived the opener), else apply metadata the writer set. */
void handle_close(struct handle *h)
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

void handles_shutdown(void)
{
	for (;;) {
		pthread_mutex_lock(&handles_lock);
		struct list *l = list_first(&handles);
		pthread_mutex_unlock(&handles_lock);
		if (!l)
			break;
		struct handle *h = list_entry(l, struct handle, open);
		pthread_mutex_lock(&h->lock);
		if (h->kind == H_STAGE && h->dirty && !h->closed && !h->abandoned && !h->failed) {
			/* stopped in the middle of a write: the copy may be half written */
			h->abandoned = true;
			log_info("stop: %s was still being written; nothing published",
				 h->node->name);
		}
		pthread_mutex_unlock(&h->lock);
		handle_close(h);
	}
}
