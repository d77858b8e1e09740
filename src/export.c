/* export.c - file handles made inside the mount, opened again (the kernel's export
 * operations, fs/fuse/inode.c): LOOKUP "." of a nodeid the kernel no longer caches, and LOOKUP
 * ".." of a directory it reconnects. A nodeid from a handle is never trusted: nodeid.c tells a
 * live, a forgotten and an unknown one apart; a forgotten one is reopened by the backing
 * handle its slot keeps. docs/design.md §3, File handles. */
#define _GNU_SOURCE
#include "export.h"
#include "log.h"
#include "node.h"
#include "nodefd.h"
#include "nodeid.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct node *export_resolve(uint64_t id)
{
	struct node *n = node_lookup_id(id);
	struct file_handle *fh;
	struct stat st;
	bool in_versions = false;
	int fd, kind = -1;

	if (n)
		return n;
	fh = nodeid_forgotten(id, &in_versions, &kind);
	if (!fh) {
		errno = ESTALE;
		return NULL;
	}
	fd = nodefd_open(fh, O_PATH);
	free(fh);
	if (fd < 0) {
		if (errno == ESTALE || errno == ENOENT)
			nodeid_drop(id); /* the object is gone: the nodeid is free */
		errno = ESTALE;
		return NULL;
	}
	n = node_lookup_fd(NULL, NULL, fd, &st, in_versions, false);
	if (n)
		log_debug("nodeid %llu found again by handle: inode %llu", (unsigned long long)id,
			  (unsigned long long)n->ino);
	if (n && (node_id(n) != id || (int)n->kind != kind)) {
		/* given up meanwhile, and the object got another nodeid: not the handle's (or,
		 * from the table of an earlier mount, the handle now names another kind of object)
		 */
		node_forget(n, 1);
		n = NULL;
		errno = ESTALE;
	}
	return n;
}

#define MAX_DEPTH 4096

/* The parent of directory fd (O_PATH) on the backing filesystem, without crossing a mount:
 * SOURCE's own directory is usually covered by our mount, and ".." from one of its children
 * would land in the mount (a request to ourselves) or above it. Then EXDEV. */
static int up(int fd)
{
	struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
			       .resolve = RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS};

	return (int)syscall(SYS_openat2, fd, "..", &how, sizeof(how));
}

/* Is st an entry of the root directory? (Its ".." gave EXDEV: the root is covered.) */
static bool child_of_root(const struct stat *st)
{
	struct node *r = node_root();
	int rfd = node_fd(r), dfd;
	struct dirent *d;
	struct stat cst;
	bool found = false;
	DIR *dir;

	if (rfd < 0 || (dfd = openat(rfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return false;
	if (!(dir = fdopendir(dfd))) {
		close(dfd);
		return false;
	}
	while (!found && (d = readdir(dir)))
		found = d->d_ino == st->st_ino &&
			fstatat(rfd, d->d_name, &cst, AT_SYMLINK_NOFOLLOW) == 0 &&
			cst.st_dev == st->st_dev && cst.st_ino == st->st_ino;
	closedir(dir);
	return found;
}

/* Is directory fd (O_PATH, its stat st) the root or below it, at most MAX_DEPTH levels? */
static bool below_root(int fd, struct stat st)
{
	const struct node *r = node_root();
	struct stat pst;
	int cur = fd, next;
	bool below = false;

	for (int i = 0; i < MAX_DEPTH; i++) {
		if (st.st_dev == r->dev && st.st_ino == r->ino) {
			below = true;
			break;
		}
		next = up(cur);
		if (next < 0 && errno == EXDEV)
			below = child_of_root(&st);
		if (cur != fd)
			close(cur);
		cur = next;
		if (cur < 0 || fstat(cur, &pst) < 0 ||
		    (pst.st_dev == st.st_dev && pst.st_ino == st.st_ino))
			break; /* (the filesystem's root: outside the tree) */
		st = pst;
	}
	if (cur >= 0 && cur != fd)
		close(cur);
	return below;
}

struct node *export_parent(struct node *n)
{
	const struct node *r = node_root();
	struct node *p;
	struct stat st;
	int fd, pfd;

	if (n->kind != NODE_DIR) {
		errno = ENOTDIR;
		return NULL;
	}
	if ((p = node_dparent_lookup(n)))
		return p;
	/* found by handle, not yet by name: its parent on the backing filesystem, if that is in
	 * the tree (a directory moved out of SOURCE behind the mount is not) */
	if ((fd = node_fd(n)) < 0)
		return NULL;
	pfd = up(fd);
	if (pfd < 0 && errno == EXDEV && fstat(fd, &st) == 0 && child_of_root(&st))
		return node_dparent_lookup(node_root());
	if (pfd < 0 || fstat(pfd, &st) < 0 || !below_root(pfd, st)) {
		if (pfd >= 0)
			close(pfd);
		errno = ESTALE;
		return NULL;
	}
	if (st.st_dev == r->dev && st.st_ino == r->ino) {
		close(pfd);
		return node_dparent_lookup(node_root());
	}
	/* below the view's root, its directories are the view's */
	return node_lookup_fd(NULL, NULL, pfd, &st, n->in_versions, false);
}
