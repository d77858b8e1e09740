/* ops_entry.c - FUSE operations on names and attributes: lookup (where writers are routed),
 * forget, getattr/setattr, and the namespace changes that keep replaced files as versions. */
#define _GNU_SOURCE
#include "ops_entry.h"
#include "attr.h"
#include "export.h"
#include "fs.h"
#include "handle.h"
#include "inval.h"
#include "links.h"
#include "log.h"
#include "release.h"
#include "route.h"
#include "space.h"
#include "keep.h"
#include "retention.h"
#include "versions.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

static void reply_attr(fuse_req_t req, struct stat *st, const struct node *n)
{
	attr_set_io_size(st);
	fuse_reply_attr(req, st, attr_timeout(n));
}

/* A name that is a regular file, found as node n (one lookup): the node this thread gets
 * (route_lookup decides: a writer's thread is routed to a staging node of its own) and *cache,
 * may the kernel keep the answer; `links`: the links the name had when it was read. */
static struct node *file_for(fuse_req_t req, struct node *parent, const char *name, struct node *n,
			     const struct stat *st, nlink_t links, bool *cache)
{
	if (parent->in_versions && links == 0) { /* no name in the tree */
		node_set_old(n, true);
		__atomic_store_n(&n->replaced, false, __ATOMIC_RELEASE);
	} else if (!parent->in_versions && node_old(n)) {
		node_set_old(n, false); /* reachable by name again (a hard link) */
	}
	return route_lookup(fuse_req_ctx(req)->pid, fuse_req_ctx(req)->uid, parent, name, n,
			    st->st_mode, cache);
}

/* LOOKUP of parent/name for this request's thread: *np (one kernel lookup) and its stat, or
 * NULL for a negative answer; *cache: may the kernel keep the answer. */
static int lookup_name(fuse_req_t req, struct node *parent, const char *name, struct node **np,
		       struct stat *st, bool *cache, bool nocache)
{
	struct node *n;
	int dirfd = node_fd(parent);
	bool view_root = versions_is_view_root(parent, name);
	unsigned long gen = __atomic_load_n(&fs.gen, __ATOMIC_ACQUIRE);
	nlink_t links;
	ino_t ino;
	int err;

	*np = NULL;
	*cache = false; /* names appear in .versions/ behind our back */
	if (!parent->in_versions && !view_root)
		route_saw_lookup(fuse_req_ctx(req)->pid); /* (a walk into .versions/ is not) */
	if (!view_root && versions_hidden(parent, name))
		return 0;
	/* the links the file had when the name was read: natively, stat() of a name that a rename
	 * replaces sees the old or the new file, each with its one link */
	err = dirfd < 0 ? -errno : links_fstatat(dirfd, name, st, parent->in_versions);
	if (err == -ENOENT)
		*cache = !parent->in_versions && !nocache;
	if (err)
		return err == -ENOENT ? 0 : err;
	links = st->st_nlink;
	ino = st->st_ino;
	n = node_lookup(parent, name, st, parent->in_versions || view_root);
	if (!n)
		return -errno;
	bool file_cache = false;
	if (n->kind == NODE_FILE)
		n = file_for(req, parent, name, n, st, links, &file_cache);
	if (view_root || st->st_ino != ino)
		node_stat(node_version(n), st); /* the node's own (the name changed meanwhile) */
	else
		st->st_nlink = links; /* (node_lookup stats again when it makes a node) */
	/* only if no publish overlapped this LOOKUP: every publish invalidates its name
	 * (handle_publish), and a LOOKUP that raced one answers uncached */
	*cache = !nocache && file_cache && __atomic_load_n(&fs.gen, __ATOMIC_ACQUIRE) == gen;
	if (*cache)
		node_set_cached_name(n, node_id(parent), name);
	*np = n;
	return 0;
}

/* LOOKUP (nodeid, ".") and (nodeid, ".."): only the kernel's file handle code asks them
 * (FUSE_CAP_EXPORT_SUPPORT): open_by_handle_at of a nodeid it no longer caches, and a directory
 * found so reconnected to the root. The nodeid of "." comes from user space: export.c and nodeid.c
 * check it. A regular file that has no name in the tree any more (removed, or replaced by a publish
 * and kept only in .versions/) is stale, as an unlinked file is natively (design.md §3). */
static void lookup_by_handle(fuse_req_t req, fuse_ino_t ino, bool dotdot)
{
	struct fuse_entry_param e;
	struct node *n, *child;
	struct stat st;
	int err;

	if (dotdot) {
		child = node_get(ino); /* the kernel's own inode: live */
		n = child ? export_parent(child) : (errno = ESTALE, NULL);
	} else {
		n = export_resolve(ino);
	}
	if (!n) {
		fuse_reply_err(req, errno ? errno : ESTALE);
		return;
	}
	err = node_stat(node_version(n), &st); /* (an alias: its version's) */
	if (!err && node_version(n)->kind == NODE_FILE && st.st_nlink == 0)
		err = -ESTALE;
	if (err) {
		node_forget(n, 1);
		fuse_reply_err(req, -err);
		return;
	}
	fill_entry(&e, n, &st, false);
	e.entry_timeout = 0;
	if (fuse_reply_entry(req, &e) == -ENOENT)
		node_forget(n, 1);
}

void bv_lookup(fuse_req_t req, fuse_ino_t pino, const char *name)
{
	struct fuse_entry_param e;
	struct node *n;
	struct stat st;
	bool cache;

	if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))) {
		lookup_by_handle(req, pino, name[1]);
		return;
	}
	/* a program of a release just committed over, still loading: its old files */
	if (release_old_lookup(inode_of(pino), name, fuse_req_ctx(req)->pid, &n, &st) == 0) {
		memset(&e, 0, sizeof(e));
		if (n)
			fill_entry(&e, n, &st, false);
		if (fuse_reply_entry(req, &e) == -ENOENT && n)
			node_forget(n, 1);
		return;
	}
	/* under a release's directory: waits while it commits, and is not cached (release.c) */
	bool held = release_walk_begin(inode_of(pino));
	pid_t sid;
	if (held && release_created_sid(inode_of(pino), name, &sid) &&
	    (sid < 0 || sid != release_sid(fuse_req_ctx(req)->pid))) {
		/* a file made within the release, by another session: held, no such name yet
		 * (not cached: the creator's walks and the commit answer otherwise) */
		memset(&e, 0, sizeof(e));
		fuse_reply_entry(req, &e);
		release_walk_end();
		return;
	}
	int err = lookup_name(req, inode_of(pino), name, &n, &st, &cache, held);

	if (err) {
		fuse_reply_err(req, -err);
		if (held)
			release_walk_end();
		return;
	}
	if (n) {
		fill_entry(&e, n, &st, cache);
	} else { /* a negative entry */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = cache ? TIMEOUT_LONG : 0;
	}
	if (fuse_reply_entry(req, &e) == -ENOENT && n)
		node_forget(n, 1); /* the requester was interrupted: the kernel took no ref */
	if (held)
		release_walk_end();
}

void bv_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(node_get(ino), nlookup); /* (an alias's own lookups) */
	fuse_reply_none(req);
}

void bv_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		node_forget(node_get(forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

void bv_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = inode_of(ino);
	struct handle *h = handle_of(fi);
	struct stat st;
	int err;

	err = h ? handle_stat(h, &st) : node_stat(n, &st);
	if (err)
		fuse_reply_err(req, -err);
	else
		reply_attr(req, &st, n);
}

/* A SETATTR without these comes from a chown() to -1, -1 (the kernel sends ctime changes only
 * with the writeback cache, which binvfs does not use). */
#define CHANGES_SOMETHING                                                                          \
	(FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID | FUSE_SET_ATTR_SIZE |         \
	 FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |                     \
	 FUSE_SET_ATTR_MTIME_NOW)

/* SETATTR of a writer's staging nodeid without an open file: truncate(2) by a routed thread
 * copies, truncates and publishes at once; chmod/chown/utimes go to its copy. */
static int setattr_staging(pid_t tid, uid_t uid, struct node *n, const struct stat *attr, int valid,
			   struct stat *st)
{
	int err = 0;

	if (valid & FUSE_SET_ATTR_SIZE) {
		route_done(tid);
		err = staging_truncate(n, attr, valid, uid); /* with the rest of the change */
	} else {
		err = staging_setattr(n, node_cur_fd(n), attr, valid);
	}
	if (!err)
		err = node_stat(n, st);
	if (!err && (valid & FUSE_SET_ATTR_SIZE))
		st->st_size = attr->st_size; /* what was published */
	return err;
}

/* A file's metadata changed through one of its nodeids: the kernel's attributes of its others
 * (the version's own and its alias, design.md §2) go. (No directory lock is taken.) */
static void inval_other_attrs(struct node *n)
{
	uint64_t ids[2];

	if (!__atomic_load_n(&n->alias, __ATOMIC_RELAXED))
		return; /* (the usual case: one nodeid, whose attributes the reply sets) */
	for (int i = node_known(n->dev, n->ino, ids); i-- > 0;)
		inval_attrs(ids[i]);
}

/* SETATTR by name of a directory, symlink or current file: metadata in place (no version). A
 * directory's mirror in .versions/ follows, and a file's versions lose what the file no
 * longer grants, before the reply: old versions are at once as closed as the tree. */
static int setattr_in_place(struct node *n, const struct stat *attr, int valid)
{
	int err = 0, vdirfd;

	if (!(valid & CHANGES_SOMETHING)) {
		/* chown(path, -1, -1): nothing but its ctime changes, as ext4 and tmpfs do */
		int flags = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW;
		if (fchownat(node_fd(n), "", (uid_t)-1, (gid_t)-1, flags) < 0)
			err = -errno;
	} else {
		err = meta_apply(n, -1, attr, valid);
	}
	if (!err && (n->kind == NODE_DIR || n->kind == NODE_FILE) &&
	    (valid & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		store_lock(&fs.store);
		if (n->kind == NODE_FILE)
			store_history_follow_fd(&fs.store, node_fd(n));
		else if (store_versions_dir(&fs.store, node_fd(n), false, &vdirfd, NULL) == 0)
			close(vdirfd);
		store_unlock(&fs.store);
	}
	return err;
}

/* A truncate by a caller without CAP_FSETID drops setuid and setgid as a write does
 * (privs_dropped); the kernel's SETATTR carries the drop only for setuid and for setgid with a
 * group x bit. The mode joins the SETATTR, so it lands with the size. */
static int truncate_drops_privs(fuse_req_t req, struct node *n, struct handle *h, struct stat *attr,
				int valid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat st;
	mode_t kill;

	if ((h ? handle_stat(h, &st) : node_stat(n, &st)) != 0)
		return valid;
	kill = privs_dropped(ctx->pid, ctx->gid, &st);
	if (!kill)
		return valid;
	if (!(valid & FUSE_SET_ATTR_MODE))
		attr->st_mode = st.st_mode & 07777;
	attr->st_mode &= ~kill;
	return valid | FUSE_SET_ATTR_MODE;
}

void bv_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
		struct fuse_file_info *fi)
{
	struct node *n = inode_of(ino);
	struct handle *h = handle_of(fi);
	pid_t tid = fuse_req_ctx(req)->pid;
	struct stat st;
	int err;

	if (valid & FUSE_SET_ATTR_SIZE)
		valid = truncate_drops_privs(req, n, h, attr, valid);
	if (h) {
		err = handle_setattr(h, attr, valid);
		if (!err)
			err = handle_stat(h, &st);
	} else if (n->kind == NODE_STAGING) {
		err = setattr_staging(tid, fuse_req_ctx(req)->uid, n, attr, valid, &st);
	} else if (n->in_versions) {
		err = versions_refuse("setattr of", "a directory");
	} else if (n->kind == NODE_FILE && (valid & FUSE_SET_ATTR_SIZE) && !node_old(n) &&
		   node_written_in_place(n)) {
		/* truncate(2) of a file its writer writes in place: in place too, as natively */
		err = truncate_in_place(n, attr->st_size);
		if (!err && (valid & CHANGES_SOMETHING & ~FUSE_SET_ATTR_SIZE))
			err = setattr_in_place(n, attr, valid & ~FUSE_SET_ATTR_SIZE);
		if (!err)
			err = node_stat(n, &st);
	} else if (n->kind == NODE_FILE && ((valid & FUSE_SET_ATTR_SIZE) || node_old(n))) {
		/* A truncate reached a published version, or a change reached a version that was
		 * replaced since its LOOKUP: send the thread back to walk again (bv_open). */
		err = route_arm(tid, fuse_req_ctx(req)->uid, n)
			  ? -ESTALE
			  : versions_refuse("change of", "an old version");
	} else if (valid & FUSE_SET_ATTR_SIZE) {
		err = n->kind == NODE_DIR ? -EISDIR : -EINVAL;
	} else {
		err = setattr_in_place(n, attr, valid);
		if (!err)
			err = node_stat(n, &st);
		if (!err && n->kind == NODE_FILE)
			inval_other_attrs(n); /* the kernel's other inode of it (its alias) */
	}
	if (err)
		fuse_reply_err(req, -err);
	else
		reply_attr(req, &st, n);
}

void bv_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct node *n = inode_of(ino);
	char buf[PATH_MAX + 1];
	ssize_t len = readlinkat(node_fd(n), "", buf, sizeof(buf));

	if (len < 0)
		fuse_reply_err(req, errno);
	else if (len == sizeof(buf))
		fuse_reply_err(req, ENAMETOOLONG);
	else {
		buf[len] = 0;
		fuse_reply_readlink(req, buf);
	}
}

/* Refuse to create in the view, or a directory whose name the store reserves. */
static int check_new_name(struct node *parent, const char *name, const char *op)
{
	if (parent->in_versions)
		return versions_refuse(op, name);
	if (parent == node_root() && store_reserved_root_name(name))
		return -EPERM;
	return 0;
}

/* The daemon runs as root: give what it creates to the caller, as the kernel would (the group
 * of a setgid directory; the mode it was made with, give_to). */
static void own_new(fuse_req_t req, struct node *parent, const char *name)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat pst;
	gid_t gid = ctx->gid;
	int fd;

	if (fstat(node_fd(parent), &pst) == 0 && (pst.st_mode & S_ISGID))
		gid = pst.st_gid;
	fd = openat(node_fd(parent), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0) {
		give_to(fd, ctx->uid, gid);
		close(fd);
	}
}

static void reply_new_entry(fuse_req_t req, struct node *parent, const char *name)
{
	struct fuse_entry_param e;
	struct stat st;
	struct node *n = NULL;

	if (fstatat(node_fd(parent), name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !(n = node_lookup(parent, name, &st, false))) {
		fuse_reply_err(req, errno);
		return;
	}
	if (n->kind == NODE_FILE)
		node_stat(n, &st); /* a link: its links in the tree */
	fill_entry(&e, n, &st, false);
	if (fuse_reply_entry(req, &e) == -ENOENT)
		node_forget(n, 1);
}

/* MKNOD, MKDIR and SYMLINK (mode's type says which; link: a symlink's target). */
static void make_new(fuse_req_t req, fuse_ino_t pino, const char *name, mode_t mode, dev_t rdev,
		     const char *link)
{
	struct node *parent = inode_of(pino);
	const char *op = S_ISDIR(mode) ? "mkdir of" : S_ISLNK(mode) ? "symlink" : "mknod of";
	int err = check_new_name(parent, name, op), dirfd = node_fd(parent), r;

	if (!err) {
		if (!S_ISLNK(mode)) /* (a symlink is 0777 whatever the umask) */
			mode = (mode & S_IFMT) |
			       create_mode(parent, mode & ~S_IFMT, fuse_req_ctx(req)->umask);
		r = S_ISDIR(mode)   ? mkdirat(dirfd, name, mode & ~S_IFMT)
		    : S_ISLNK(mode) ? symlinkat(link, dirfd, name)
				    : mknodat(dirfd, name, mode, rdev);
		err = r < 0 ? -errno : 0;
	}
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	own_new(req, parent, name);
	reply_new_entry(req, parent, name);
}

void bv_mknod(fuse_req_t req, fuse_ino_t pino, const char *name, mode_t mode, dev_t rdev)
{
	make_new(req, pino, name, mode, rdev, NULL);
}

void bv_mkdir(fuse_req_t req, fuse_ino_t pino, const char *name, mode_t mode)
{
	make_new(req, pino, name, S_IFDIR | mode, 0, NULL);
}

void bv_symlink(fuse_req_t req, const char *link, fuse_ino_t pino, const char *name)
{
	make_new(req, pino, name, S_IFLNK, 0, link);
}

void bv_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t pino, const char *name)
{
	struct node *n = inode_of(ino), *parent = inode_of(pino);
	int err = check_new_name(parent, name, "link to");
	struct stat st;

	if (!err && (n->kind == NODE_STAGING || node_old(n) || n->kind == NODE_DIR))
		err = -EXDEV; /* old versions leave .versions/ by copy, not by link */
	/* an O_TMPFILE's first name (bv_create; the kernel links one only if it was opened
	 * without O_EXCL): it appears whole, a new file like any other */
	bool first = !err && n->kind == NODE_FILE && fstat(node_fd(n), &st) == 0 && !st.st_nlink;
	if (!err && linkat(node_fd(n), "", node_fd(parent), name, AT_EMPTY_PATH) < 0)
		err = -errno;
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	if (first)
		release_note_created(parent, name, st.st_ino,
				     fuse_req_ctx(req)->pid); /* as at CREATE */
	reply_new_entry(req, parent, name);
}

/* rm and mv over a file keep it: under the store lock, before the name changes, the file there
 * becomes the next version of its path (store_keep_removed, keep.c). Without `keep` (a rename
 * that replaces nothing) only the lock is taken. */
static int keep_removed_begin(struct node *dir, const char *name, bool keep,
			      struct store_change *ch, uid_t uid)
{
	memset(ch, 0, sizeof(*ch));
	store_lock(&fs.store);
	return keep ? store_keep_removed(&fs.store, node_fd(dir), name, ch, uid) : 0;
}

/* The name changed (`changed`), or the change failed (`undo`: the version kept for it goes
 * again); the store lock is dropped and what was kept is said. */
static void keep_removed_end(struct store_change *ch, bool undo, bool changed, const char *what,
			     const char *name, uid_t uid)
{
	if (undo && ch->kept)
		retention_remove_version(&fs.store, ch->vrel, ch->old.st_dev, ch->old.st_ino);
	if (undo)
		ch->kept = false;
	if (changed)
		space_keep_reserve(&fs.store, uid);
	store_unlock(&fs.store);
	if (ch->kept) {
		log_info("%s %s: kept as %s/%s", what, name, STORE_DIR, ch->vrel);
		versions_after_change(ch);
	}
	store_change_done(ch);
}

/* uid: the user who asks, for whom versions yield space (space_yield: only her own) */
static int unlink_keeping(struct node *parent, const char *name, uid_t uid)
{
	struct store_change ch;
	bool undo;
	int err;

	if (parent->in_versions)
		return versions_refuse("unlink of", name);
	err = release_hold_unlink(parent, name);
	if (err != RELEASE_NOT_HELD)
		return err;
	err = keep_removed_begin(parent, name, true, &ch, uid);
	undo = !err && unlinkat(node_fd(parent), name, 0) < 0;
	if (undo)
		err = -errno;
	if (!err)
		store_sync_dir(&fs.store, node_fd(parent));
	keep_removed_end(&ch, undo, !err, "rm", name, uid);
	if (err == -ENAMETOOLONG)
		log_warnx("rm %s: name too long to keep a version; refused", name);
	return err;
}

void bv_unlink(fuse_req_t req, fuse_ino_t pino, const char *name)
{
	fuse_reply_err(req, -unlink_keeping(inode_of(pino), name, fuse_req_ctx(req)->uid));
}

void bv_rmdir(fuse_req_t req, fuse_ino_t pino, const char *name)
{
	struct node *parent = inode_of(pino);
	int err = check_new_name(parent, name, "rmdir of");

	if (!err && unlinkat(node_fd(parent), name, AT_REMOVEDIR) < 0)
		err = -errno;
	if (!err) {
		/* its history is closed, and no later directory of that name gets it */
		store_lock(&fs.store);
		store_mirror_settle(&fs.store, node_fd(parent), name, true);
		store_unlock(&fs.store);
	}
	fuse_reply_err(req, -err);
}

/* After a rename: the whiteout is the caller's, a moved directory's node knows its place,
 * both directories are synced. Store lock held. */
static void renamed(fuse_req_t req, struct node *parent, const char *name, struct node *nparent,
		    const char *newname, unsigned int flags)
{
	struct stat st;
	bool dirs = false;

	if (flags & RENAME_WHITEOUT) /* as natively */
		own_new(req, parent, name);
	/* a directory's node remembers where it is (node_dir_path) */
	if (fstatat(node_fd(nparent), newname, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISDIR(st.st_mode)) {
		node_dir_moved(st.st_dev, st.st_ino, nparent, newname);
		dirs = true;
	}
	if ((flags & RENAME_EXCHANGE) &&
	    fstatat(node_fd(parent), name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
		node_dir_moved(st.st_dev, st.st_ino, parent, name);
		dirs = true;
	}
	if (dirs) {
		/* history stays with the path it was kept at: the mirror of the name left is
		 * closed, the one of the name taken (an empty directory replaced) moved aside */
		store_mirror_settle(&fs.store, node_fd(parent), name, false);
		store_mirror_settle(&fs.store, node_fd(nparent), newname, false);
	}
	store_sync_dir(&fs.store, node_fd(nparent));
	if (nparent != parent)
		store_sync_dir(&fs.store, node_fd(parent));
}

static int rename_keeping(fuse_req_t req, struct node *parent, const char *name,
			  struct node *nparent, const char *newname, unsigned int flags)
{
	struct store_change ch;
	bool undo;
	int err;

	err = check_new_name(parent, name, "rename of");
	if (!err)
		err = check_new_name(nparent, newname, "rename to");
	if (!err && (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)))
		err = -EINVAL; /* the kernel checks CAP_MKNOD for a whiteout before we are asked */
	if (err)
		return err;
	err = release_hold_rename(parent, name, nparent, newname, flags);
	if (err != RELEASE_NOT_HELD)
		return err;
	err = keep_removed_begin(nparent, newname, !(flags & (RENAME_NOREPLACE | RENAME_EXCHANGE)),
				 &ch, fuse_req_ctx(req)->uid);
	if (err == -ENOENT)
		err = 0; /* nothing to replace */
	undo = !err && renameat2(node_fd(parent), name, node_fd(nparent), newname, flags) < 0;
	if (undo)
		err = -errno;
	if (!err) {
		renamed(req, parent, name, nparent, newname, flags);
		store_kept_settle(&fs.store, node_fd(nparent), newname, &ch);
	}
	keep_removed_end(&ch, undo, !err, "mv over", newname, fuse_req_ctx(req)->uid);
	return err;
}

void bv_rename(fuse_req_t req, fuse_ino_t pino, const char *name, fuse_ino_t npino,
	       const char *newname, unsigned int flags)
{
	fuse_reply_err(req,
		       -rename_keeping(req, inode_of(pino), name, inode_of(npino), newname, flags));
}

void bv_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	if (fstatvfs(fs.store.rootfd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}
