/* node_open.c - the open state of a node: its opens, their passthrough backing id ("the first
 * open decides": while a node has opens they are all of one kind, passthrough or cached, as
 * the kernel requires; kept registered after the last RELEASE for the next open, until the node
 * goes), the read fd its cached opens share, and opens of its object for a read
 * under the mount's atime policy (nodefd.c). The node table and the nodes' lifetimes are
 * node.c's; an open is one of the counts that keep a node alive, so all this runs under the
 * table lock (node_table_lock).
 *
 * Lock order (docs/design.md §9): handle -> store -> table, route -> table. Under the table
 * lock only the backing-open ioctl (pt_backing_open) and, through nodefd_open_atime,
 * nodefd.c's clones_lock are taken; a read fd is reopened without it. node_close drops it
 * (node_release_locked) before it closes a backing id or queues the invalidation of a
 * .versions/ entry (inval.c).
 */
#define _GNU_SOURCE
#include "node_open.h"
#include "log.h"
#include "node.h"
#include "nodefd.h"
#include "passthrough.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A backing open that fails (ELOOP on a stacked filesystem, ENOMEM, ...) leaves the node's
 * opens cached until they are all closed: said once per kind of failure. */
static void backing_failed(const struct node *n, int err)
{
	static int said[8]; /* errnos already logged, each slot set once */

	for (size_t i = 0; i < sizeof(said) / sizeof(*said); i++) {
		int none = 0;
		if (__atomic_compare_exchange_n(&said[i], &none, err, false, __ATOMIC_RELAXED,
						__ATOMIC_RELAXED))
			break; /* first time for err */
		if (none == err)
			return;
	}
	log_warnx("passthrough: backing open of inode %llu: %s; its opens are served by the daemon "
		  "(said once per error)",
		  (unsigned long long)n->ino, strerror(err));
}

int node_open(struct node *n, bool pt)
{
	int id, err = 0, pol = pt && n->kind == NODE_FILE ? nodefd_atime(false) : 0, drop = 0;
	bool reused = false;

	node_table_lock();
	if (!n->opens && n->kept_id > 0 && (!pt || n->kind != NODE_FILE || n->kept_atime != pol)) {
		/* kept for a passthrough open under this atime policy: not for this one (a cached
		 * open must not find it as its backing id; the kernel reads the backing file with
		 * the policy of the mount it was opened through) */
		drop = n->kept_id;
		n->kept_id = 0;
	}
	if (!n->opens && n->kept_id > 0) {
		/* the node's own file, registered at an earlier open (node_close kept it): the
		 * same id as then, no ioctl */
		n->backing_id = n->kept_id;
		n->kept_id = 0;
		pt_backing_unkept();
		reused = true;
	} else if (!n->opens && pt && n->kind == NODE_FILE) {
		/* the first open decides for all that overlap it; the ioctl is a few µs. A
		 * handle-only node's fd for it is its own, not the thread's ring's: the kernel
		 * takes its own reference, and a ring fd would pin the inode for a while. The
		 * kernel reads the backing file through its fd's mount: one with our atime policy
		 */
		int bfd = nodefd_open_atime(pol, false, n->fd, n->fh, O_PATH);
		if (bfd < -1)
			bfd = n->fd >= 0 ? n->fd : n->fh ? nodefd_open(n->fh, O_PATH) : -1;
		id = bfd >= 0 ? pt_backing_open(bfd) : -(n->fh ? errno : EBADF);
		if (bfd >= 0 && bfd != n->fd)
			close(bfd);
		if (id > 0) {
			n->backing_id = id;
			n->kept_atime = pol;
		} else
			err = -id;
	}
	n->opens++;
	id = n->backing_id;
	node_table_unlock();
	if (drop)
		pt_backing_unkeep(drop);
	if (reused)
		log_debug("open of inode %llu: backing id %d kept", (unsigned long long)n->ino, id);
	if (err)
		backing_failed(n, err);
	return id;
}

/* The RELEASE of an open without a handle (a read or exec open): the read fd it held goes
 * too, unless it was a passthrough open, which never held one (node_open decided). */
void node_close_read(struct node *n)
{
	if (!node_read_locked(&n->backing_id))
		node_rdfd_release(n->kind == NODE_STAGING ? n->base : n);
	node_close(n);
}

void node_close(struct node *n)
{
	struct node *dir = NULL;
	char *vrel = NULL;
	int id = 0;

	node_table_lock();
	if (n->opens)
		n->opens--;
	else {
		node_count_broken(n, "open count", 0, 1);
		n->pinned = true;
	}
	if (!n->opens && n->backing_id > 0) {
		/* The kernel has released every file of it: none uses the id now. A node with an
		 * fd of its own keeps it for its next open (design.md §11, "Backing ids kept"): its
		 * file is the node's for the node's whole life (a publish makes another node), and
		 * the node's own fd holds the inode anyway, so keeping it holds no space a prune
		 * would free. It goes with the node (node_free), or here past PT_KEPT_MAX. */
		if (n->fd >= 0 && !n->pinned && n->kept_id <= 0 && pt_backing_keep())
			n->kept_id = n->backing_id;
		else
			id = n->backing_id;
		n->backing_id = 0;
	}
	if (!n->opens && n->nlookup && n->prune_vrel) {
		/* the last open is gone; a cached .versions/ entry may still hold it */
		dir = node_view_entry_locked(n);
		vrel = dir ? strdup(n->prune_vrel) : NULL;
	}
	node_release_locked(n);
	if (id > 0)
		pt_backing_close(id);
	if (vrel)
		node_inval_view_entry(dir, vrel);
	else if (dir)
		node_unref(dir);
	free(vrel);
}

/* n's object opened for a read (flags: O_RDONLY, maybe O_DIRECTORY) under atime policy pol
 * (nodefd.c). */
static int reopen(struct node *n, int flags, int pol)
{
	bool dir = n->kind == NODE_DIR;
	int fd = nodefd_open_atime(pol, dir, n->fd, n->fh, flags), pfd;
	char proc[64];

	if (fd >= 0 || fd == -1)
		return fd;
	if (fd == -3) { /* noatime without a clone: O_NOATIME, if we own the file or are root */
		fd = reopen(n, flags | O_NOATIME, nodefd_atime_source(dir));
		if (fd >= 0 || errno != EPERM)
			return fd;
	}
	if (dir)
		return (pfd = node_fd(n)) < 0 ? -1 : openat(pfd, ".", flags | O_CLOEXEC);
	if (n->fd < 0)
		return n->fh ? nodefd_open(n->fh, flags) : (errno = EBADF, -1);
	fd = node_proc_path(n, proc, sizeof(proc));
	if (fd) {
		errno = -fd;
		return -1;
	}
	return open(proc, flags | O_CLOEXEC);
}

int node_open_dir(struct node *n)
{
	return reopen(n, O_RDONLY | O_DIRECTORY, nodefd_atime(true));
}

/* A read fd per node, shared by its opens. It is held by every open and copy that reads it,
 * and when the last lets go it is closed unless the node is pinned and the daemon is well
 * below its fd limit (nodefd.c), so read fds do not bound the names known either. */
int node_rdfd_hold(struct node *n)
{
	int fd, old = -1, pol = nodefd_atime(false);

	node_table_lock();
	if (n->rdfd >= 0 && !n->rdholds && n->rdfd_atime != pol) {
		/* cached under another atime policy (a remount since): not for this open */
		old = n->rdfd;
		__atomic_store_n(&n->rdfd, -1, __ATOMIC_RELEASE);
	}
	if (n->rdfd >= 0) {
		n->rdholds++;
		fd = n->rdfd;
		node_table_unlock();
		return fd;
	}
	node_table_unlock();
	if (old >= 0) {
		close(old);
		nodefd_count(-1);
	}
	fd = reopen(n, O_RDONLY, pol);
	if (fd < 0)
		return -errno;
	node_table_lock();
	if (n->rdfd >= 0) {
		close(fd); /* another open was first */
	} else {
		__atomic_store_n(&n->rdfd, fd, __ATOMIC_RELEASE);
		n->rdfd_atime = pol;
		nodefd_count(1);
	}
	n->rdholds++;
	fd = n->rdfd;
	node_table_unlock();
	return fd;
}

void node_rdfd_release(struct node *n)
{
	int fd = -1;

	node_table_lock();
	if (n->rdholds && !--n->rdholds && n->rdfd >= 0 && !(n->fd >= 0 && nodefd_may_cache())) {
		fd = n->rdfd;
		__atomic_store_n(&n->rdfd, -1, __ATOMIC_RELEASE);
	}
	node_table_unlock();
	if (fd >= 0) {
		close(fd);
		nodefd_count(-1);
	}
}

int node_rdfd(struct node *n)
{
	int fd = __atomic_load_n(&n->rdfd, __ATOMIC_ACQUIRE);

	return fd >= 0 ? fd : -EBADF;
}
