/* nodefd.c - how a node reaches its backing object without one fd per node.
 *
 * A node made while the daemon holds few fds keeps an O_PATH fd for its lifetime ("pinned"):
 * it is its identity, since an inode cannot be freed, nor its number reused, while an fd holds
 * it. Beyond a quarter of RLIMIT_NOFILE (read at each decision: it can be lowered while we
 * run), a node keeps a file handle instead (name_to_handle_at: inode number and generation),
 * so the fd limit no longer bounds how many names the kernel may know. A handle-only node is
 * reopened by handle (open_by_handle_at, relative to SOURCE's mount) when a request needs an
 * fd, and LOOKUP compares handles before it answers such a node (node.c): an inode number
 * reused behind a node has another generation, so it is never taken for the old node.
 *
 * The fds opened by handle live in a small ring per thread: each request uses the fds of at
 * most a few nodes (a rename: two directories), and never keeps them past its end, so a slot
 * is reused only long after its fd's request is over. A node that is freed has its fds closed
 * in every ring (nodefd_forget), thread exit closes the thread's ring. */
#define _GNU_SOURCE
#include "nodefd.h"
#include "node.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "list.h"

#define RING 8 /* > the distinct handle-only nodes one request uses an fd of */

static int mount_fd = -1; /* SOURCE (O_RDONLY): open_by_handle_at resolves handles there */
static bool handles_ok;	  /* the filesystem gives file handles */
static long node_fds;	  /* fds held by nodes: pins and cached read fds (atomic) */

/* One per thread that asked for an fd by handle; on the list `rings` so that a node that is
 * freed can have its fds closed in every ring (its inode's space is then freed at once). */
struct ring {
	pthread_mutex_t lock; /* the owner, and nodefd_forget from the thread freeing a node */
	struct {
		struct node *n; /* NULL: empty; alive while here (nodefd_forget clears it) */
		int fd;
	} slot[RING];
	unsigned next;
	struct list all; /* rings_lock */
};

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
/* Lock order (docs/design.md §9): rings_lock -> a ring's lock (ring_free, nodefd_forget);
 * nodefd_ring_get takes them one at a time. Nothing is taken under either (closes and opens by
 * handle), so node_fd may run under any lock of its caller (a handle's, the store's);
 * nodefd_forget runs when a node is freed, with no lock held. */
static pthread_mutex_t rings_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list rings = LIST_HEAD_INIT(rings);

static void clear_slot(struct ring *r, int i)
{
	close(r->slot[i].fd);
	__atomic_sub_fetch(&r->slot[i].n->inrings, 1, __ATOMIC_ACQ_REL);
	r->slot[i].n = NULL;
}

static void ring_free(void *p)
{
	struct ring *r = p;

	/* under rings_lock: a node whose slot is here is not freed meanwhile (nodefd_forget) */
	pthread_mutex_lock(&rings_lock);
	pthread_mutex_lock(&r->lock);
	for (int i = 0; i < RING; i++)
		if (r->slot[i].n)
			clear_slot(r, i);
	pthread_mutex_unlock(&r->lock);
	list_remove(&r->all);
	pthread_mutex_unlock(&rings_lock);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static void ring_init(void)
{
	if (pthread_key_create(&ring_key, ring_free) != 0)
		fatal("pthread_key_create");
}

/* n is being freed: no request uses it any more (the kernel forgot it and we hold no ref),
 * so its fds in other threads' rings are idle: close them. */
void nodefd_forget(struct node *n)
{
	if (!__atomic_load_n(&n->inrings, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&rings_lock);
	for (struct list *l = rings.next; l != &rings; l = l->next) {
		struct ring *r = list_entry(l, struct ring, all);
		pthread_mutex_lock(&r->lock);
		for (int i = 0; i < RING; i++)
			if (r->slot[i].n == n)
				clear_slot(r, i);
		pthread_mutex_unlock(&r->lock);
	}
	pthread_mutex_unlock(&rings_lock);
}

void nodefd_init(int rootfd)
{
	struct file_handle *fh;

	/* open_by_handle_at refuses an O_PATH fd as its mount fd */
	mount_fd = openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fh = mount_fd >= 0 ? nodefd_handle(rootfd) : NULL;
	handles_ok = fh != NULL;
	free(fh);
	pthread_once(&ring_once, ring_init);
}

/* The calling thread's ring (at exit of the request loop, the main thread's). */
static void nodefd_thread_done(void)
{
	struct ring *r = pthread_getspecific(ring_key);

	if (r) {
		pthread_setspecific(ring_key, NULL);
		ring_free(r);
	}
}

static void atime_destroy(void);

void nodefd_destroy(void)
{
	nodefd_thread_done();
	atime_destroy();
	if (mount_fd >= 0)
		close(mount_fd);
	mount_fd = -1;
}

static long fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 1L << 20;
	return (long)rl.rlim_cur;
}

static long nodefd_held(void)
{
	return __atomic_load_n(&node_fds, __ATOMIC_RELAXED);
}

bool nodefd_may_pin(void)
{
	static bool said;

	if (__atomic_load_n(&node_fds, __ATOMIC_RELAXED) < fd_limit() / 4)
		return true;
	if (!handles_ok && !__atomic_exchange_n(&said, true, __ATOMIC_RELAXED))
		log_info("%ld fds held for nodes, limit %ld, and SOURCE's filesystem gives no file "
			 "handles: every node keeps an fd (the fd limit bounds the names known)",
			 nodefd_held(), fd_limit());
	return !handles_ok;
}

bool nodefd_may_cache(void)
{
	return __atomic_load_n(&node_fds, __ATOMIC_RELAXED) < fd_limit() / 2;
}

/* Once per run: say that nodes keep handles from now on. */
void nodefd_note_handles(void)
{
	static bool said;

	if (!__atomic_exchange_n(&said, true, __ATOMIC_RELAXED))
		log_info("%ld fds held for nodes, limit %ld: new nodes keep file handles",
			 nodefd_held(), fd_limit());
}

void nodefd_count(long delta)
{
	__atomic_add_fetch(&node_fds, delta, __ATOMIC_RELAXED);
}

struct file_handle *nodefd_handle(int fd)
{
	union {
		struct file_handle fh;
		char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
	} u;
	struct file_handle *out;
	int mnt;

	u.fh.handle_bytes = MAX_HANDLE_SZ;
	if (name_to_handle_at(fd, "", &u.fh, &mnt, AT_EMPTY_PATH) < 0)
		return NULL;
	out = malloc(sizeof(*out) + u.fh.handle_bytes);
	if (out)
		memcpy(out, &u.fh, sizeof(*out) + u.fh.handle_bytes);
	return out;
}

bool nodefd_same(const struct file_handle *a, const struct file_handle *b)
{
	return a && b && a->handle_type == b->handle_type && a->handle_bytes == b->handle_bytes &&
	       !memcmp(a->f_handle, b->f_handle, a->handle_bytes);
}

int nodefd_open(const struct file_handle *fh, int flags)
{
	return open_by_handle_at(mount_fd, (struct file_handle *)fh, flags | O_CLOEXEC);
}

/* An fd of a handle-only node for the current request (see the top of this file). */
int nodefd_ring_get(struct node *n)
{
	struct ring *r = pthread_getspecific(ring_key);
	int fd = -1, i;

	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r || pthread_setspecific(ring_key, r) != 0) {
			free(r);
			errno = ENOMEM;
			return -1;
		}
		pthread_mutex_init(&r->lock, NULL);
		pthread_mutex_lock(&rings_lock);
		list_insert(&rings, &r->all);
		pthread_mutex_unlock(&rings_lock);
	}
	pthread_mutex_lock(&r->lock);
	for (i = 0; i < RING; i++) {
		if (r->slot[i].n == n) {
			fd = r->slot[i].fd;
			goto out;
		}
	}
	fd = nodefd_open(n->fh, O_PATH);
	if (fd < 0)
		goto out;
	i = (int)(r->next++ % RING);
	if (r->slot[i].n)
		clear_slot(r, i);
	r->slot[i].n = n;
	r->slot[i].fd = fd;
	__atomic_add_fetch(&n->inrings, 1, __ATOMIC_ACQ_REL);
out:
	pthread_mutex_unlock(&r->lock);
	return fd;
}

/* Atime. The kernel never updates the atime of a FUSE inode (S_NOATIME): what stat shows is
 * the backing inode's, which the reads of the daemon (and, with passthrough, the kernel's
 * reads of the backing file) update under the atime policy of SOURCE's mount, not of ours.
 * So a read (a read fd, a passthrough backing file, a directory listing) opens its object
 * through a private clone of SOURCE's mount that has our mount's policy (open_tree,
 * mount_setattr; as root), when the two differ; else, for noatime, with O_NOATIME. Our
 * policy is read from the kernel (statmount, Linux 6.8) again whenever the mount table has
 * changed since the last read, so that a remount counts at once: poll() on
 * /proc/self/mountinfo tells such a change (a remount, mount_setattr or any mount in our
 * namespace), at under half the cost of a statmount, which a passthrough OPEN paid before.
 * Without statmount, the flags the mount was made with. */
#ifndef SYS_statmount
#define SYS_statmount 457
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U
#endif

struct mnt_req { /* the kernel's struct mnt_id_req, version 0 */
	uint32_t size, spare;
	uint64_t mnt_id, param;
};

struct mnt_stat { /* the start of the kernel's struct statmount */
	uint32_t size, spare1;
	uint64_t mask;
	uint32_t sb_dev_major, sb_dev_minor;
	uint64_t sb_magic;
	uint32_t sb_flags, fs_type;
	uint64_t mnt_id, mnt_parent_id;
	uint32_t mnt_id_old, mnt_parent_id_old;
	uint64_t mnt_attr;
};

static uint64_t our_mnt;  /* unique id of the binvfs mount, 0 if unknown */
static int table_fd = -1; /* /proc/self/mountinfo, to poll for changes */
static pthread_mutex_t our_lock = PTHREAD_MUTEX_INITIALIZER;
static bool our_known;		     /* our_lock: our_attr and our_sb hold the last statmount */
static uint64_t our_attr;	     /* our_lock: its mnt_attr */
static uint32_t our_sb;		     /* our_lock: its sb_flags */
static unsigned long made_flags;     /* its MS_* flags at mount */
static int source_pol[2];	     /* SOURCE's mount: policy of files [0], directories [1] */
static int clones[3] = {-1, -1, -1}; /* per policy, a clone of SOURCE's mount (O_RDONLY) */
static bool clones_failed[3];
/* Taken under the table lock (a node's first open: its backing file, node_open.c) and alone;
 * nothing is taken under it. */
static pthread_mutex_t clones_lock = PTHREAD_MUTEX_INITIALIZER;

static int policy_of(bool ro, bool noatime, bool nodiratime, bool strict, bool dir)
{
	if (ro || noatime || (dir && nodiratime))
		return ATIME_NEVER;
	return strict ? ATIME_STRICT : ATIME_RELATIME;
}

void nodefd_atime_init(const char *mountpoint, unsigned long flags)
{
	struct statx stx;
	struct statvfs sf;

	made_flags = flags;
	/* before the first statmount: a change from then on shows */
	table_fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	/* DONT_SYNC: the mount's root is not asked for (the request loop may not run yet) */
	if (statx(AT_FDCWD, mountpoint, AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT, STATX_MNT_ID_UNIQUE,
		  &stx) == 0 &&
	    (stx.stx_mask & STATX_MNT_ID_UNIQUE))
		our_mnt = stx.stx_mnt_id;
	if (mount_fd >= 0 && fstatvfs(mount_fd, &sf) == 0) {
		bool ro = sf.f_flag & ST_RDONLY, no = sf.f_flag & ST_NOATIME;
		bool nodir = sf.f_flag & ST_NODIRATIME, strict = !(sf.f_flag & ST_RELATIME);
		source_pol[0] = policy_of(ro, no, nodir, strict, false);
		source_pol[1] = policy_of(ro, no, nodir, strict, true);
	}
}

/* Our mount's attributes and superblock flags as statmount gives them now: false if it
 * cannot. our_lock held. */
static bool read_our_mount(void)
{
	union {
		struct mnt_stat st;
		char buf[4096];
	} u;
	struct mnt_req req = {.size = 24, .mnt_id = our_mnt, .param = 3}; /* SB_, MNT_BASIC */

	if (!our_mnt || syscall(SYS_statmount, &req, &u, sizeof(u), 0) != 0 || (u.st.mask & 3) != 3)
		return false;
	our_attr = u.st.mnt_attr;
	our_sb = u.st.sb_flags;
	return true;
}

int nodefd_atime(bool dir)
{
	struct pollfd p = {.fd = table_fd, .events = POLLPRI};
	unsigned long f = made_flags;
	bool known, sb_ro;
	uint64_t a;

	pthread_mutex_lock(&our_lock);
	/* a poll that sees a change also acknowledges it: the read that follows is done under
	 * the same lock, so no other thread takes the old value for current meanwhile */
	if (!our_known || poll(&p, 1, 0) != 0) {
		known = read_our_mount();
		our_known = known && table_fd >= 0;
	} else {
		known = true;
	}
	a = our_attr;
	sb_ro = our_sb & MS_RDONLY;
	pthread_mutex_unlock(&our_lock);
	if (known)
		return policy_of((a & MOUNT_ATTR_RDONLY) || sb_ro,
				 (a & MOUNT_ATTR__ATIME) == MOUNT_ATTR_NOATIME,
				 a & MOUNT_ATTR_NODIRATIME,
				 (a & MOUNT_ATTR__ATIME) == MOUNT_ATTR_STRICTATIME, dir);
	return policy_of(f & MS_RDONLY, f & MS_NOATIME, f & MS_NODIRATIME, f & MS_STRICTATIME, dir);
}

/* SOURCE's mount cloned with atime policy pol, -1 if it cannot be (not root: then reads
 * fall back to O_NOATIME where that is the policy). */
static int clone_for(int pol)
{
	static const uint64_t attr[] = {MOUNT_ATTR_STRICTATIME, MOUNT_ATTR_RELATIME,
					MOUNT_ATTR_NOATIME};
	struct mount_attr ma = {.attr_set = attr[pol], .attr_clr = MOUNT_ATTR__ATIME};
	int fd;

	pthread_mutex_lock(&clones_lock);
	fd = clones[pol];
	if (fd < 0 && !clones_failed[pol] && handles_ok) {
		int t =
		    open_tree(mount_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
		if (t >= 0 && mount_setattr(t, "", AT_EMPTY_PATH, &ma, sizeof(ma)) == 0)
			/* open_by_handle_at refuses an O_PATH fd as its mount fd */
			fd = openat(t, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (t >= 0)
			close(t);
		if (fd < 0) {
			clones_failed[pol] = true;
			log_info("atime: no clone of SOURCE's mount (%s): reads %s",
				 strerror(errno),
				 pol == ATIME_NEVER ? "use O_NOATIME"
						    : "update atime as SOURCE's mount does");
		}
		clones[pol] = fd;
	}
	pthread_mutex_unlock(&clones_lock);
	return fd;
}

int nodefd_open_atime(int pol, bool dir, int fd, const struct file_handle *fh, int flags)
{
	struct file_handle *own = NULL;
	int m, r;

	if (pol == source_pol[dir])
		return -2;
	m = clone_for(pol);
	if (m < 0)
		return pol == ATIME_NEVER && !(flags & O_PATH) ? -3 : -2;
	if (!fh)
		fh = own = fd >= 0 ? nodefd_handle(fd) : NULL;
	r = fh ? open_by_handle_at(m, (struct file_handle *)fh, flags | O_CLOEXEC) : -2;
	free(own);
	return r;
}

int nodefd_atime_source(bool dir)
{
	return source_pol[dir];
}

static void atime_destroy(void)
{
	if (table_fd >= 0)
		close(table_fd);
	table_fd = -1;
	pthread_mutex_lock(&clones_lock);
	for (int i = 0; i < 3; i++) {
		if (clones[i] >= 0)
			close(clones[i]);
		clones[i] = -1;
	}
	pthread_mutex_unlock(&clones_lock);
}
