/* attr.c - what the kernel is told of a node: its stat (link counts of tree names only, a
 * writer's file as it opened it), how long it may keep its attributes and its name, and
 * chmod/chown/utimens applied in place (they make no version). */
#define _GNU_SOURCE
#include "attr.h"
#include "links.h"
#include "nodeid.h"
#include "procfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

double attr_timeout(const struct node *n)
{
	switch (n->kind) {
	case NODE_STAGING:
		return 0;
	case NODE_DIR:
		/* a mirror in .versions/ follows its tree directory's chmod and chown, and is
		 * closed or moved aside when that directory goes or opens: the kernel checks
		 * access with what we said last, so it must ask every time (docs/security.md,
		 * History permissions) */
		return n->in_versions ? 0 : 1.0;
	default:
		return TIMEOUT_LONG; /* a version's attributes change only through us */
	}
}

/* st_blksize is what cp and stdio size their I/O by. The backing file's 4 KiB makes cp write
 * 128 KiB at a time, one WRITE round trip each; 512 KiB writes made `cp` of 100 MB into the
 * mount 1.35-1.4 x faster (docs/performance.md) and still fit libfuse's splice pipe. */
#define IO_BLKSIZE (512 << 10)

void attr_set_io_size(struct stat *st)
{
	if (S_ISREG(st->st_mode))
		st->st_blksize = IO_BLKSIZE;
}

void fill_entry(struct fuse_entry_param *e, struct node *n, const struct stat *st, bool cache)
{
	memset(e, 0, sizeof(*e));
	e->ino = node_id(n);
	e->generation = nodeid_gen(e->ino); /* what the kernel checks a file handle against */
	e->attr = *st;
	attr_set_io_size(&e->attr);
	e->attr_timeout = attr_timeout(n);
	/* Directories and symlinks change only through operations the kernel sees, but for a
	 * mirror in .versions/, which another directory's may replace at its name. A regular
	 * file's name is answered another nodeid at a publish or for a writer: it is cached only
	 * when `cache` says so (route_lookup(), route.c), else looked up every time (kernel-notes
	 * §4). */
	e->entry_timeout =
	    ((n->kind == NODE_DIR && !n->in_versions) || n->kind == NODE_OTHER || cache)
		? TIMEOUT_LONG
		: 0;
}

/* A writer's file as natively: its copy's size and times, but the inode number the name had
 * when it was opened (vim compares it with its stat from before the open, E949; the name takes
 * the copy's number only at the publish), and the tree links of whatever file holds the name
 * now: 0 once the name is gone. fd: its copy, or -1. */
int staging_stat(struct node *stg, int fd, struct stat *st)
{
	struct stat cur;
	int err = 0, nfd;

	if (fd < 0 || fstat(fd, st) < 0) {
		int bfd = node_fd(stg->base);
		err = bfd < 0 ? -errno : links_fstatat(bfd, "", st, false);
	}
	if (err)
		return err;
	st->st_ino = stg->base->ino;
	st->st_nlink = 0;
	nfd = node_fd(stg->parent);
	if (nfd >= 0)
		nfd = openat(nfd, stg->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (nfd >= 0) {
		if (links_fstatat(nfd, "", &cur, false) == 0 && S_ISREG(cur.st_mode))
			st->st_nlink = cur.st_nlink;
		close(nfd);
	}
	return 0;
}

/* st_nlink counts the names in the tree only, not the versions that are hard links of the
 * same inode (links.c); the root does not count the hidden .versions/ among its subdirectories,
 * nor the view's root its .binvfs-staging/. */
int node_stat(struct node *n, struct stat *st)
{
	int fd, err;

	if (n->kind == NODE_STAGING)
		return staging_stat(n, node_cur_fd(n), st);
	fd = node_fd(n);
	if (fd < 0)
		return -errno;
	err = links_fstatat(fd, "", st, n->kind == NODE_FILE && node_old(n));
	if (!err && n->kind == NODE_FILE && st->st_nlink == 0 && node_replaced(n))
		st->st_nlink = 1; /* as after an in-place write, for whoever holds it from before */
	if (!err && st->st_nlink > 2 &&
	    (n == node_root() || (n->ino == fs.view_ino && n->dev == fs.view_dev)))
		st->st_nlink--;
	return err;
}

/* chmod/chown/utimens in place (through fd if >= 0, else through the node): metadata
 * changes make no version. */
int meta_apply(struct node *n, int fd, const struct stat *attr, int valid)
{
	char proc[64] = "";

	if (n)
		node_proc_path(n, proc, sizeof(proc));
	if (valid & FUSE_SET_ATTR_MODE) {
		if ((fd >= 0 ? fchmod(fd, attr->st_mode) : chmod(proc, attr->st_mode)) < 0)
			return -errno;
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if ((fd >= 0 ? fchown(fd, uid, gid)
			     : fchownat(node_fd(n), "", uid, gid,
					AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)) < 0)
			return -errno;
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		int r = fd >= 0 ? futimens(fd, tv)
			: n->kind == NODE_OTHER
			    ? utimensat(node_fd(n), "", tv, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
			    : utimensat(AT_FDCWD, proc, tv, 0);
		if (r < 0)
			return -errno;
	}
	return 0;
}

/* The mode to create a node with for a caller whose umask is umask (the daemon's own is 0). As
 * natively, a parent's default ACL replaces the umask, and the backing filesystem derives the
 * new node's mode and ACL from it; else the umask applies. The kernel leaves the umask to us
 * (FUSE_CAP_DONT_MASK); without that it applied it already, and again is the same. */
mode_t create_mode(struct node *parent, mode_t mode, mode_t umask)
{
	char proc[64];

	if (node_proc_path(parent, proc, sizeof(proc)) == 0 &&
	    getxattr(proc, "system.posix_acl_default", NULL, 0) > 0)
		return mode;
	return mode & ~(umask & 0777);
}

/* Give a node the daemon (root) just made to its caller, as if the caller had made it: the
 * mode it was made with stays, ACL-derived bits and setuid/setgid included (a chown drops
 * those bits, and a chmod to the mode asked for would undo what a default ACL masked). fd:
 * the node, O_PATH or not. */
void give_to(int fd, uid_t uid, gid_t gid)
{
	struct stat made, now;
	char proc[64];

	if (fstat(fd, &made) < 0 ||
	    fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 ||
	    S_ISLNK(made.st_mode) || fstat(fd, &now) < 0 ||
	    (now.st_mode & 07777) == (made.st_mode & 07777))
		return;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	chmod(proc, made.st_mode & 07777);
}

/* May the caller (thread tid, fs gid fsgid) keep the setuid/setgid bits of a file of group gid
 * that it changes? With CAP_FSETID; by_group (setgid alone, without a group x bit): also when it
 * is in that group. From /proc/TID/status; unreadable (the task gone): it keeps them. */
bool caller_keeps(pid_t tid, gid_t fsgid, gid_t gid, bool by_group)
{
	char buf[4096];
	const char *p;
	bool keep = true;

	if (procfs_read(tid, "status", buf, sizeof(buf)) <= 0)
		return true;
	p = procfs_field(buf, "\nCapEff:");
	if (!p || !(strtoull(p, NULL, 16) & (1ull << 4))) { /* CAP_FSETID */
		keep = by_group && fsgid == gid;
		for (p = procfs_field(buf, "\nGroups:"); !keep && p && *p && *p != '\n';) {
			char *end;
			unsigned long g = strtoul(p, &end, 10);
			if (end == p)
				break;
			keep = by_group && g == gid;
			p = end;
		}
	}
	return keep;
}

mode_t privs_dropped(pid_t tid, gid_t fsgid, const struct stat *st)
{
	mode_t kill = 0;

	if (tid <= 0 || !S_ISREG(st->st_mode)) /* tid 0: a write through a shared mapping */
		return 0;
	kill = st->st_mode & S_ISUID;
	if ((st->st_mode & S_ISGID) && (st->st_mode & S_IXGRP || st->st_gid != fsgid))
		kill |= S_ISGID;
	if (kill &&
	    caller_keeps(tid, fsgid, st->st_gid, kill == S_ISGID && !(st->st_mode & S_IXGRP)))
		kill = 0;
	return kill;
}
