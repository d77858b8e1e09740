/* ops_dir.c - directory listing (the root hides .versions/) and extended attributes. */
#define _GNU_SOURCE
#include "ops_dir.h"
#include "fs.h"
#include "inval.h"
#include "log.h"
#include "names.h"
#include "attr.h"
#include "release.h"
#include "passthrough.h"
#include "retention.h"
#include "versions.h"
#include "node_open.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

struct dirh {
	DIR *dp;
	struct dirent *entry; /* read but not yet returned */
	off_t offset;
	struct list open; /* dirs_lock */
	struct node *dir;
	bool cached;  /* answered FOPEN_CACHE_DIR: the kernel fills its cache from our replies */
	unsigned gen; /* dir's change count at the open (inval_dir_open) */
};

/* Open directories, freed at the end of the session if the unmount dropped their RELEASEDIR.
 * Lock order (docs/design.md §9): dirs_lock is a leaf (a directory is closed after it is
 * dropped). The operations here hold no lock when they call down: acl_history_follows takes
 * the store lock (store.c takes the table and links locks under it), the prune request lets
 * retention_prune take it one batch at a time, release_request and release_status take
 * release.c's own (walk -> store -> mu), and inval_attrs is sent with no lock held. */
static pthread_mutex_t dirs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list dirs = LIST_HEAD_INIT(dirs);

static void dirh_link(struct dirh *d)
{
	pthread_mutex_lock(&dirs_lock);
	list_insert(&dirs, &d->open);
	pthread_mutex_unlock(&dirs_lock);
}

static void dirh_free(struct dirh *d)
{
	pthread_mutex_lock(&dirs_lock);
	list_remove(&d->open);
	pthread_mutex_unlock(&dirs_lock);
	if (d->cached)
		inval_dir_closed(d->dir, d->gen);
	closedir(d->dp);
	free(d);
}

void dirs_shutdown(void)
{
	for (struct list *l; (l = list_first(&dirs));) {
		struct dirh *d = list_entry(l, struct dirh, open);
		d->cached = false; /* the session is over: nothing to tell the kernel */
		dirh_free(d);
	}
}

void bv_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = inode_of(ino);
	struct dirh *d = calloc(1, sizeof(*d));
	int fd;

	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fd = node_open_dir(n);
	if (fd < 0 || !(d->dp = fdopendir(fd))) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		free(d);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uintptr_t)d;
	d->dir = n;
	/* The kernel may keep this listing and serve the next opens from it (design.md §3,
	 * "Directory listings"): not in .versions/ (computed, changed by every publish and
	 * prune), not while a release is open (its new files are listed for their creator's
	 * session only), not while an open from before a change behind the kernel's back may
	 * still fill it (inval_dir_open). */
	d->cached = !n->in_versions && !release_active() && inval_dir_open(n, &d->gen);
	fi->cache_readdir = d->cached;
	fi->keep_cache = d->cached;
	dirh_link(d);
	if (fuse_reply_open(req, fi) == -ENOENT)
		dirh_free(d);
}

void bv_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct node *dir = inode_of(ino);
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;
	char *buf = calloc(1, size), *p = buf;
	size_t rem = size;
	pid_t mysid = -2; /* not read yet */

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (d->cached)
		/* changed behind the kernel since the open: what it parsed of our earlier replies
		 * may be in its cache, dropped again */
		inval_dir_read(dir, d->gen);
	if (off != d->offset) {
		seekdir(d->dp, off);
		d->entry = NULL;
		d->offset = off;
	}
	for (;;) {
		struct stat st = {0};
		size_t len;

		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry)
				break;
		}
		pid_t csid;
		bool held = release_active() && d->entry->d_type != DT_DIR &&
			    release_created_sid(dir, d->entry->d_name, &csid);
		if (held && mysid == -2)
			mysid = release_sid(fuse_req_ctx(req)->pid);
		/* hidden: old versions' names, the store, a file made in a release by another
		 * session */
		if (versions_hidden(dir, d->entry->d_name) ||
		    (dir == node_root() && !strcmp(d->entry->d_name, STORE_DIR)) ||
		    (held && (csid < 0 || csid != mysid))) {
			d->offset = d->entry->d_off;
			d->entry = NULL;
			continue;
		}
		st.st_ino = d->entry->d_ino;
		st.st_mode = (mode_t)d->entry->d_type << 12;
		len = fuse_add_direntry(req, p, rem, d->entry->d_name, &st, d->entry->d_off);
		if (len > rem)
			break;
		p += len;
		rem -= len;
		d->offset = d->entry->d_off;
		d->entry = NULL;
	}
	fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

void bv_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;

	(void)ino;
	dirh_free(d);
	fuse_reply_err(req, 0);
}

void bv_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;
	int fd = dirfd(d->dp);

	(void)ino;
	fuse_reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? errno : 0);
}

/* xattrs go through /proc/self/fd of the node (an O_PATH fd cannot f*xattr); a staging node
 * answers for its current copy, or its base version. For a symlink or device that path names
 * the node itself, as l*xattr would (the magic link is not followed further): trusted.* and
 * security.* work there as natively, and the kernel refuses user.* (generic/062). */
static int xattr_path(struct node *n, char *buf, size_t len, bool write)
{
	if (n->kind == NODE_STAGING) {
		int fd = node_cur_fd(n);
		if (fd >= 0) {
			snprintf(buf, len, "/proc/self/fd/%d", fd);
			return 0;
		}
		n = n->base;
	}
	if (write && versions_readonly(n))
		return versions_refuse("changing xattrs of", "a version");
	return node_proc_path(n, buf, len);
}

static void reply_xattr(fuse_req_t req, ssize_t ret, char *value, size_t size)
{
	if (ret < 0)
		fuse_reply_err(req, errno);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)ret);
	else
		fuse_reply_buf(req, value, (size_t)ret);
}

/* binvfsctl status: which daemon serves this mount (after `umount -l; binvfs DIR`, the old
 * one may still serve a detached copy), and how. "key=value" lines; not listed. */
static void reply_status(fuse_req_t req, size_t size)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf),
			 STATUS_PID "%d\n" STATUS_KEEP "%u\n" STATUS_NOSYNC
				    "%d\n" STATUS_PASSTHROUGH "%s\n",
			 (int)getpid(), fs.store.keep, fs.store.nosync, pt_status());

	if (size && size < (size_t)n)
		fuse_reply_err(req, ERANGE);
	else
		reply_xattr(req, n, buf, size);
}

void bv_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char path[64], *value;
	int err;

	if (inode_of(ino) == node_root() && !strcmp(name, STATUS_XATTR)) {
		reply_status(req, size);
		return;
	}
	if (!strcmp(name, RELEASE_XATTR)) {
		char st[512];
		int n = release_status(inode_of(ino), st, sizeof(st));
		if (n < 0)
			fuse_reply_err(req, -n);
		else if (!size)
			fuse_reply_xattr(req, (size_t)n);
		else if (size < (size_t)n)
			fuse_reply_err(req, ERANGE);
		else
			fuse_reply_buf(req, st, (size_t)n);
		return;
	}
	value = size ? malloc(size) : NULL;
	err = xattr_path(inode_of(ino), path, sizeof(path), false);
	if (err)
		fuse_reply_err(req, -err);
	else
		reply_xattr(req, getxattr(path, name, value, size), value, size);
	free(value);
}

void bv_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char path[64], *value = size ? malloc(size) : NULL;
	int err = xattr_path(inode_of(ino), path, sizeof(path), false);

	if (err)
		fuse_reply_err(req, -err);
	else
		reply_xattr(req, listxattr(path, value, size), value, size);
	free(value);
}

/* binvfsctl prune: setxattr(DIR, "user.binvfs.prune", "KEEP" or "KEEP/NAME") applies
 * retention now to every name in DIR, or to NAME; versions in use stay. Nothing is stored. */
static int prune_request(struct node *dir, const char *value, size_t size)
{
	char buf[300], *end;
	unsigned long keep;
	struct timespec t0, t1;
	int n;

	if (dir->kind != NODE_DIR)
		return -ENOTDIR;
	if (dir->in_versions)
		return versions_refuse("pruning in", "a .versions/ directory");
	if (size == 0 || size >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, value, size);
	buf[size] = 0;
	errno = 0;
	keep = strtoul(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '/') || (*end == '/' && !end[1]) ||
	    keep > NAMES_KEEP_MAX)
		return -EINVAL;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* takes the store lock itself, one batch at a time */
	n = retention_prune(&fs.store, node_fd(dir), *end ? end + 1 : NULL, (unsigned)keep);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (n >= 0)
		log_info("prune request (keep %lu%s%s): %d versions removed in %.0f ms", keep,
			 *end ? ", " : "", *end ? end + 1 : "", n,
			 (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
			     (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
	return n < 0 ? n : 0;
}

#define ACL_ACCESS "system.posix_acl_access"

/* After a caller set an access ACL on path (of group gid): as natively (posix_acl_update_mode),
 * the setgid bit goes unless the caller is in the file's group or has CAP_FSETID. The backing
 * filesystem judged the daemon, which may; the kernel's FUSE_SETXATTR_ACL_KILL_SGID does not
 * reach a libfuse 3.14 daemon (generic/375). */
static void acl_kill_sgid(fuse_req_t req, const char *path)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat st;

	if (stat(path, &st) == 0 && (st.st_mode & S_ISGID) &&
	    !caller_keeps(ctx->pid, ctx->gid, st.st_gid, true))
		chmod(path, st.st_mode & 07777 & ~S_ISGID);
}

/* History is never more open than the file (docs/security.md): after an access ACL change of
 * a file its versions keep only their owner's read; of a directory, its mirror is checked at
 * once (an ACL that changed moves it aside, store.c opens()). */
static void acl_history_follows(struct node *n)
{
	int vdirfd;

	store_lock(&fs.store);
	if (n->kind == NODE_FILE)
		store_history_acl_changed(&fs.store, node_fd(n));
	else if (n->kind == NODE_DIR &&
		 store_versions_dir(&fs.store, node_fd(n), false, &vdirfd, NULL) == 0)
		close(vdirfd);
	store_unlock(&fs.store);
}

/* A writer's xattr change (on its staging nodeid) applies in place to the current version, as
 * metadata makes no version, and to its staging copy, which may still be published. The
 * kernel's copy of that version (another nodeid) is told: its ctime, and with an ACL its mode
 * and cached ACL, changed. An ACL set on any node changes its mode: without FUSE_POSIX_ACL the
 * kernel would keep the old one (its attributes are cached for a day). */
static int xattr_change(fuse_req_t req, struct node *n, const char *name, const char *value,
			size_t size, int flags, bool remove)
{
	char path[64];
	bool acl = !strncmp(name, "system.posix_acl_", 17);
	struct node *target = n->kind == NODE_STAGING ? n->base : n;
	int err, fd = n->kind == NODE_STAGING ? node_cur_fd(n) : -1;

	err = xattr_path(target, path, sizeof(path), true);
	if (!err &&
	    (remove ? removexattr(path, name) : setxattr(path, name, value, size, flags)) < 0)
		err = -errno;
	if (!err && !remove && !strcmp(name, ACL_ACCESS))
		acl_kill_sgid(req, path);
	if (!err && fd >= 0) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (remove)
			removexattr(path, name);
		else
			setxattr(path, name, value, size, 0);
		if (!remove && !strcmp(name, ACL_ACCESS))
			acl_kill_sgid(req, path);
	}
	if (!err && (target != n || (acl && !fs.posix_acl)))
		/* attributes and ACLs only; the kernel takes no lock of the inode for it */
		inval_attrs(node_id(target));
	if (!err && !strcmp(name, ACL_ACCESS) && !target->in_versions)
		acl_history_follows(target);
	return err;
}

void bv_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
		 int flags)
{
	if (!strcmp(name, RELEASE_XATTR))
		/* the kernel has checked that the caller may set user.* xattrs on DIR: write
		 * access, so who may begin or commit follows DIR's permissions */
		fuse_reply_err(
		    req, -release_request(inode_of(ino), value, size, fuse_req_ctx(req)->uid));
	else if (!strcmp(name, PRUNE_XATTR))
		/* removing history is the administrator's: root only */
		fuse_reply_err(req, fuse_req_ctx(req)->uid != 0
					? EPERM
					: -prune_request(inode_of(ino), value, size));
	else
		fuse_reply_err(req,
			       -xattr_change(req, inode_of(ino), name, value, size, flags, false));
}

void bv_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, -xattr_change(req, inode_of(ino), name, NULL, 0, 0, true));
}
