/* node.c - the node table and the nodes' lifetimes.
 *
 * A nodeid is an index into nodeid.c's table (the root is FUSE_ROOT_ID). Nodes of backing
 * objects are shared by every name that reaches the same inode (its tree name and its
 * .versions/ name), so a version has one nodeid, one kernel inode and one page cache. A node
 * lives while the kernel or we hold a reference, or it has opens (node_open.c: the open state,
 * under the same lock), and is never reused before its FORGET. */
#define _GNU_SOURCE
#include "node.h"
#include "log.h"
#include "nodeid.h"
#include "nodefd.h"
#include "retention.h"
#include "locks.h"
#include "passthrough.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The table lock (node_table_lock: node_open.c takes it too). Lock order: a handle's lock,
 * then the store lock, then this one; a route's lock, then this one (docs/design.md §9).
 * Nothing is taken under it but the backing-open ioctl and nodefd.c's clones_lock (a node's
 * first open, node_open.c): it is dropped before a prune (the store lock) or an unref of
 * another node. */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node **buckets; /* protected by table_lock */
static size_t nbuckets, ncount;
static struct node root;
static struct list all = LIST_HEAD_INIT(all); /* every node but the root, table_lock */

void node_table_lock(void)
{
	pthread_mutex_lock(&table_lock);
}

void node_table_unlock(void)
{
	pthread_mutex_unlock(&table_lock);
}

void (*node_inval_hook)(struct node *dir, const char *name);
static struct store *prune_store; /* where a deferred prune removes its version */

/* Files an exec has opened (node_set_hot), remembered beyond their nodes: direct-mapped, a
 * collision forgets the older one (then merely answered as idle again: design.md §2).
 * table_lock. */
#define HOT_SLOTS 4096
static struct {
	dev_t dev;
	ino_t ino;
} hot_files[HOT_SLOTS];

static size_t hot_slot(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev;
	return (size_t)(h ^ (h >> 31)) & (HOT_SLOTS - 1);
}

static size_t hash(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev;
	return (size_t)(h ^ (h >> 29)) & (nbuckets - 1);
}

static void hash_insert(struct node *n)
{
	if (ncount + 1 > nbuckets) {
		size_t old = nbuckets;
		struct node **ob = buckets;
		struct node **nb = calloc(old * 2, sizeof(*nb));
		if (nb) {
			buckets = nb;
			nbuckets = old * 2;
			for (size_t i = 0; i < old; i++) {
				for (struct node *c = ob[i], *next; c; c = next) {
					next = c->hnext;
					size_t h = hash(c->dev, c->ino);
					c->hnext = buckets[h];
					buckets[h] = c;
				}
			}
			free(ob);
		}
	}
	size_t h = hash(n->dev, n->ino);
	n->hnext = buckets[h];
	buckets[h] = n;
	ncount++;
}

static void hash_remove(struct node *n)
{
	for (struct node **p = &buckets[hash(n->dev, n->ino)]; *p; p = &(*p)->hnext) {
		if (*p == n) {
			*p = n->hnext;
			ncount--;
			return;
		}
	}
}

static struct node *hash_find(dev_t dev, ino_t ino)
{
	for (struct node *n = buckets[hash(dev, ino)]; n; n = n->hnext)
		if (n->ino == ino && n->dev == dev)
			return n;
	return NULL;
}

/* The directory node of a pending prune's .versions/ entry, with a ref; table_lock held. */
struct node *node_view_entry_locked(struct node *n)
{
	struct node *dir = hash_find(n->prune_vdev, n->prune_vino);

	if (dir && dir->kind == NODE_DIR) {
		dir->refs++;
		return dir;
	}
	return NULL;
}

/* Its .versions/ entry in the kernel's cache may be all that still holds a version whose
 * prune waits: ask the kernel to drop it (inval.c), then FORGET comes if nobody uses it. */
void node_inval_view_entry(struct node *dir, const char *vrel)
{
	const char *vname = strrchr(vrel, '/');

	if (!dir)
		return;
	if (node_inval_hook)
		node_inval_hook(dir, vname ? vname + 1 : vrel);
	node_unref(dir);
}

void node_table_init(struct store *s)
{
	int rootfd = s->rootfd;
	struct stat st;

	nbuckets = 1024;
	buckets = calloc(nbuckets, sizeof(*buckets));
	if (!buckets || fstat(rootfd, &st) < 0)
		fatal("node table");
	nodefd_init(rootfd);
	root.kind = NODE_DIR;
	root.fd = rootfd;
	root.rdfd = -1;
	root.cur_fd = -1;
	root.dev = st.st_dev;
	root.ino = st.st_ino;
	root.nlookup = 2;
	root.id = NODEID_ROOT;
	nodeid_init(&root);
	prune_store = s;
}

static void node_free(struct node *n)
{
	nodeid_detach(n); /* (done already if it was in the table) */
	if (n->fd >= 0 && n != &root) {
		close(n->fd);
		nodefd_count(-1);
	}
	if (n->rdfd >= 0) {
		close(n->rdfd);
		nodefd_count(-1);
	}
	if (n->kept_id > 0) /* its backing id kept for a next open (node_open.c) */
		pt_backing_unkeep(n->kept_id);
	if (n->fh)
		nodefd_forget(n);
	free(n->fh);
	free(n->meta);
	free(n->prune_vrel);
	free(n->name);
	free(n->dname);
	free(n->cached_name);
	free(n);
}

/* At exit: the kernel does not FORGET what it still knows at unmount. */
void node_table_destroy(void)
{
	for (struct list *l; (l = list_first(&all));) {
		struct node *n = list_entry(l, struct node, all);
		list_remove(l);
		/* the session is over: every user of a version whose prune waited is gone */
		if (n->prune_vrel)
			retention_remove_deferred(prune_store, n->prune_vrel, n->dev, n->ino);
		node_free(n);
	}
	free(buckets);
	buckets = NULL;
	nodeid_destroy();
	nodefd_destroy();
}

struct node *node_root(void)
{
	return &root;
}

struct node *node_get(uint64_t nodeid)
{
	return nodeid_node(nodeid);
}

uint64_t node_id(const struct node *n)
{
	return n->id;
}

static enum node_kind kind_of(mode_t mode)
{
	return S_ISDIR(mode) ? NODE_DIR : S_ISREG(mode) ? NODE_FILE : NODE_OTHER;
}

/* Record where the kernel found directory n; table_lock held. Returns the old parent, whose
 * ref the caller drops after unlocking, or NULL. A name that cannot be copied leaves the old
 * record (node_dir_path then checks it: the store verifies the path it gets). */
static struct node *set_dir_parent_locked(struct node *n, struct node *parent, const char *name)
{
	struct node *old = n->dparent;
	char *copy;

	if (n->kind != NODE_DIR || n == &root || n == parent || !parent)
		return NULL;
	if (old == parent && n->dname && !strcmp(n->dname, name))
		return NULL;
	for (struct node *c = parent; c; c = c->dparent)
		if (c == n)
			return NULL; /* moved behind the mount into its own subtree: no cycles */
	if (!(copy = strdup(name)))
		return NULL;
	free(n->dname);
	n->dname = copy;
	n->dparent = parent;
	parent->refs++;
	return old;
}

/* Does n, found in the hash for the object just opened (its handle fh), stand for that
 * object? A pinned node does: its fd keeps its inode from being freed and its number reused.
 * A handle-only node does if the handles (inode number and generation) match. */
static bool same_object(const struct node *n, const struct file_handle *fh)
{
	return n->fd >= 0 || nodefd_same(n->fh, fh);
}

/* A field of a node that the table lock protects, read under it. */
int node_read_locked(const int *field)
{
	int v;

	pthread_mutex_lock(&table_lock);
	v = *field;
	pthread_mutex_unlock(&table_lock);
	return v;
}

/* A node of no object yet: the caller sets its kind, object and references. */
static struct node *node_alloc(void)
{
	struct node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->fd = -1;
	n->rdfd = -1;
	n->cur_fd = -1;
	return n;
}

/* LOOKUP found n: one more kernel reference. Called with table_lock held; unlocks it. */
static struct node *found_locked(struct node *n, struct node *parent, const char *name)
{
	struct node *oldp;

	n->nlookup++;
	oldp = set_dir_parent_locked(n, parent, name);
	pthread_mutex_unlock(&table_lock);
	if (oldp)
		node_unref(oldp);
	return n;
}

struct node *node_lookup(struct node *parent, const char *name, struct stat *st, bool in_versions)
{
	return node_lookup_at(parent, name, st, in_versions, node_fd(parent), name);
}

struct node *node_lookup_at(struct node *parent, const char *name, struct stat *st,
			    bool in_versions, int dirfd, const char *at)
{
	struct node *n;
	int fd;

	pthread_mutex_lock(&table_lock);
	n = hash_find(st->st_dev, st->st_ino);
	if (n && n->kind == kind_of(st->st_mode) && n->fd >= 0)
		return found_locked(n, parent, name);
	pthread_mutex_unlock(&table_lock);

	if (at) {
		fd = openat(dirfd, at, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	} else { /* an unnamed file (O_TMPFILE): its own fd, reopened */
		char proc[32];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dirfd);
		fd = open(proc, O_PATH | O_CLOEXEC);
	}
	if (fd < 0)
		return NULL;
	return node_lookup_fd(parent, name, fd, st, in_versions, !at);
}

struct node *node_lookup_fd(struct node *parent, const char *name, int fd, struct stat *st,
			    bool in_versions, bool unnamed)
{
	struct node *n;
	struct file_handle *fh = NULL;
	struct stat fst;
	bool pin;

	if (fstat(fd, &fst) < 0) {
		close(fd);
		return NULL;
	}
	/* The object opened is what the name holds now (it may have been replaced since the
	 * caller's fstatat): answer for it. */
	*st = fst;
	pin = nodefd_may_pin() || unnamed;
	fh = nodefd_handle(fd); /* NULL if the filesystem has none: then it is pinned */
	pthread_mutex_lock(&table_lock);
	n = hash_find(st->st_dev, st->st_ino);
	if (n && n->kind == kind_of(st->st_mode) && !same_object(n, fh)) {
		/* its inode was freed behind it and the number reused: a new object */
		hash_remove(n);
		n = NULL;
	}
	if (n && n->kind == kind_of(st->st_mode)) {
		close(fd);
		free(fh);
		return found_locked(n, parent, name);
	}
	/* the node is whole before nodeid_attach publishes it (a thread that finds it by its
	 * nodeid reads its fields unlocked) */
	n = node_alloc();
	if (n) {
		n->kind = kind_of(st->st_mode);
		n->in_versions = in_versions && n->kind == NODE_DIR;
		n->dev = st->st_dev;
		n->ino = st->st_ino;
		if (n->kind == NODE_FILE) {
			size_t i = hot_slot(n->dev, n->ino);
			n->hot = hot_files[i].dev == n->dev && hot_files[i].ino == n->ino;
		}
		if (pin || !fh)
			n->fd = fd;
		else
			n->fh = fh;
		n->nlookup = 1;
	}
	if (!n || !nodeid_attach(n, fh)) {
		pthread_mutex_unlock(&table_lock);
		free(n);
		close(fd);
		free(fh);
		errno = ENOMEM;
		return NULL;
	}
	if (pin || !fh) {
		nodefd_count(1);
		free(fh);
	} else {
		close(fd);
		nodefd_note_handles();
	}
	set_dir_parent_locked(n, parent, name);
	hash_insert(n);
	list_insert(&all, &n->all);
	pthread_mutex_unlock(&table_lock);
	return n;
}

void node_dir_moved(dev_t dev, ino_t ino, struct node *newparent, const char *newname)
{
	struct node *n, *oldp = NULL;

	pthread_mutex_lock(&table_lock);
	n = hash_find(dev, ino);
	if (n)
		oldp = set_dir_parent_locked(n, newparent, newname);
	pthread_mutex_unlock(&table_lock);
	if (oldp)
		node_unref(oldp);
}

char *node_dir_path(dev_t dev, ino_t ino)
{
	struct node *n;
	size_t len = 0;
	char *out = NULL;

	pthread_mutex_lock(&table_lock);
	n = dev == root.dev && ino == root.ino ? &root : hash_find(dev, ino);
	for (struct node *c = n; c && c != &root; c = c->dparent) {
		if (!c->dparent || !c->dname) {
			n = NULL; /* not reached from the root through lookups */
			break;
		}
		len += strlen(c->dname) + (len ? 1 : 0);
	}
	if (n && (out = malloc(len + 1))) {
		/* "a/b/c", filled from its end */
		size_t pos = len;
		out[len] = 0;
		for (struct node *c = n; c != &root; c = c->dparent) {
			size_t l = strlen(c->dname);
			pos -= l;
			memcpy(out + pos, c->dname, l);
			if (pos)
				out[--pos] = '/';
		}
	}
	pthread_mutex_unlock(&table_lock);
	return out;
}

struct node *node_new_staging(struct node *base, struct node *parent, const char *name)
{
	struct node *n = node_alloc();

	if (n && !(n->name = strdup(name))) {
		node_free(n);
		n = NULL;
	}
	if (!n)
		return NULL;
	n->kind = NODE_STAGING;
	n->dev = base->dev;
	n->ino = base->ino;
	n->base = base;
	n->parent = parent;
	pthread_mutex_lock(&table_lock);
	if (!nodeid_attach(n, NULL)) {
		pthread_mutex_unlock(&table_lock);
		n->base = n->parent = NULL;
		node_free(n);
		errno = ENOMEM;
		return NULL;
	}
	list_insert(&all, &n->all);
	pthread_mutex_unlock(&table_lock);
	node_ref(base);
	node_ref(parent);
	return n; /* no references yet: the caller adds its lookup or ref */
}

void node_set_hot(struct node *n)
{
	if (node_hot(n))
		return;
	pthread_mutex_lock(&table_lock);
	size_t i = hot_slot(n->dev, n->ino);
	hot_files[i].dev = n->dev;
	hot_files[i].ino = n->ino;
	__atomic_store_n(&n->hot, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&table_lock);
}

struct node *node_alias(struct node *v)
{
	struct node *a;

	pthread_mutex_lock(&table_lock);
	a = v->alias;
	if (a) {
		a->nlookup++;
		pthread_mutex_unlock(&table_lock);
		return a;
	}
	pthread_mutex_unlock(&table_lock);
	struct node *made = node_alloc();
	if (!made)
		return NULL;
	made->kind = NODE_ALIAS;
	made->dev = v->dev;
	made->ino = v->ino;
	made->base = v;
	made->nlookup = 1; /* whole before nodeid_attach publishes it */
	pthread_mutex_lock(&table_lock);
	a = v->alias;
	if (a || !nodeid_attach(made, NULL)) { /* another LOOKUP made it meanwhile */
		if (a)
			a->nlookup++;
		pthread_mutex_unlock(&table_lock);
		free(made); /* (nothing of its own yet) */
		return a;
	}
	v->refs++;
	__atomic_store_n(&v->alias, made, __ATOMIC_RELAXED); /* (read unlocked as a hint) */
	list_insert(&all, &made->all);
	pthread_mutex_unlock(&table_lock);
	return made;
}

struct node *node_lookup_id(uint64_t id)
{
	struct node *n;

	/* a node leaves nodeid.c's table under this lock (release_locked): one found is alive */
	pthread_mutex_lock(&table_lock);
	n = nodeid_node(id);
	if (n && n->kind != NODE_STAGING)
		n->nlookup++;
	else
		n = NULL;
	pthread_mutex_unlock(&table_lock);
	return n;
}

struct node *node_dparent_lookup(struct node *n)
{
	struct node *p;

	pthread_mutex_lock(&table_lock);
	p = n == &root ? &root : n->dparent;
	if (p)
		p->nlookup++;
	pthread_mutex_unlock(&table_lock);
	return p;
}

void node_add_lookup(struct node *n)
{
	pthread_mutex_lock(&table_lock);
	n->nlookup++;
	pthread_mutex_unlock(&table_lock);
}

/* Does the kernel hold n's alias (it then uses the version)? table_lock held. */
static bool kernel_alias(const struct node *n)
{
	return n->alias && n->alias->nlookup;
}

/* Called with table_lock held; unlocks it. */
void node_release_locked(struct node *n)
{
	char *vrel = NULL;
	struct node *base = NULL, *parent = NULL;
	dev_t dev = n->dev;
	ino_t ino = n->ino;
	bool file = false;

	if (n == &root || n->nlookup || n->refs || n->opens || n->pinned) {
		if (n != &root && n->prune_vrel && !n->opens && !n->nlookup && !kernel_alias(n)) {
			/* only internal references left: nobody uses the version any more */
			vrel = n->prune_vrel;
			n->prune_vrel = NULL;
		}
		pthread_mutex_unlock(&table_lock);
		goto prune;
	}
	if (n->kind == NODE_ALIAS && n->base->alias == n)
		__atomic_store_n(&n->base->alias, NULL, __ATOMIC_RELAXED);
	else if (n->kind != NODE_STAGING && n->kind != NODE_ALIAS)
		hash_remove(n); /* (not found if LOOKUP took it out as stale) */
	list_remove(&n->all);
	nodeid_detach(n); /* its nodeid names no live node from now on (node_lookup_id) */
	pthread_mutex_unlock(&table_lock);
	vrel = n->prune_vrel;
	n->prune_vrel = NULL;
	base = n->base;
	parent = n->kind == NODE_STAGING ? n->parent : n->dparent;
	file = n->kind == NODE_FILE;
	node_free(n);
	if (file)
		locks_node_gone(dev, ino);
	if (base)
		node_unref(base);
	if (parent)
		node_unref(parent);
prune:
	if (vrel) {
		retention_remove_deferred(prune_store, vrel, dev, ino);
		free(vrel);
	}
}

/* A count would go below zero: a reference was dropped twice, a bug. Said, the count kept at
 * zero (a reference or open count also pins the node: whoever still points to it keeps a valid
 * node); a debug build (the sanitizer builds the tests run) stops here. */
void node_count_broken(const struct node *n, const char *what, uint64_t have, uint64_t drop)
{
	log_warnx("bug: %s of node %llu (inode %llu) dropped by %llu, it had %llu", what,
		  (unsigned long long)node_id(n), (unsigned long long)n->ino,
		  (unsigned long long)drop, (unsigned long long)have);
#ifdef BINVFS_DEBUG
	abort();
#endif
}

void node_forget(struct node *n, uint64_t nlookup)
{
	pthread_mutex_lock(&table_lock);
	if (nlookup > n->nlookup) {
		node_count_broken(n, "lookup count", n->nlookup, nlookup);
		nlookup = n->nlookup;
	}
	n->nlookup -= nlookup;
	node_release_locked(n);
}

void node_ref(struct node *n)
{
	pthread_mutex_lock(&table_lock);
	n->refs++;
	pthread_mutex_unlock(&table_lock);
}

void node_unref(struct node *n)
{
	pthread_mutex_lock(&table_lock);
	if (n->refs)
		n->refs--;
	else {
		node_count_broken(n, "reference count", 0, 1);
		n->pinned = true;
	}
	node_release_locked(n);
}

int node_fd(struct node *n)
{
	if (n->fd >= 0)
		return n->fd;
	if (!n->fh) {
		errno = EBADF;
		return -1;
	}
	return nodefd_ring_get(n);
}

int node_proc_path(struct node *n, char *buf, size_t len)
{
	int fd = node_fd(n);

	if (fd < 0)
		return -errno;
	return snprintf(buf, len, "/proc/self/fd/%d", fd) < (int)len ? 0 : -ENAMETOOLONG;
}

bool node_busy(dev_t dev, ino_t ino)
{
	bool busy;

	pthread_mutex_lock(&table_lock);
	busy = hash_find(dev, ino) != NULL;
	pthread_mutex_unlock(&table_lock);
	return busy;
}

void node_mark_old(dev_t dev, ino_t ino, bool old)
{
	struct node *n;

	pthread_mutex_lock(&table_lock);
	n = hash_find(dev, ino);
	if (n && n->kind == NODE_FILE)
		node_set_old(n, old);
	pthread_mutex_unlock(&table_lock);
}

void node_mark_replaced(dev_t dev, ino_t ino, bool replaced)
{
	struct node *n;

	pthread_mutex_lock(&table_lock);
	n = hash_find(dev, ino);
	if (n && n->kind == NODE_FILE)
		__atomic_store_n(&n->replaced, replaced, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&table_lock);
}

int node_known(dev_t dev, ino_t ino, uint64_t ids[2])
{
	struct node *n;
	int k = 0;

	pthread_mutex_lock(&table_lock);
	n = hash_find(dev, ino);
	if (n && n->kind == NODE_FILE && n->nlookup)
		ids[k++] = node_id(n);
	if (n && n->kind == NODE_FILE && n->alias && n->alias->nlookup)
		ids[k++] = node_id(n->alias);
	pthread_mutex_unlock(&table_lock);
	return k;
}

bool node_held(dev_t dev, ino_t ino)
{
	struct node *n;
	bool held;

	pthread_mutex_lock(&table_lock);
	n = hash_find(dev, ino);
	held = n && n->kind == NODE_FILE;
	pthread_mutex_unlock(&table_lock);
	return held;
}

bool node_defer_prune(const struct stat *st, const char *vrel, int vdirfd, const char *vname)
{
	struct node *n, *dir = NULL;
	struct stat dst;
	bool used = false;

	pthread_mutex_lock(&table_lock);
	n = hash_find(st->st_dev, st->st_ino);
	if (n && n->kind == NODE_FILE && (n->nlookup || n->opens || kernel_alias(n))) {
		free(n->prune_vrel);
		n->prune_vrel = strdup(vrel);
		used = n->prune_vrel != NULL;
		if (used && fstat(vdirfd, &dst) == 0) {
			n->prune_vdev = dst.st_dev;
			n->prune_vino = dst.st_ino;
			dir = node_view_entry_locked(n);
		}
	}
	pthread_mutex_unlock(&table_lock);
	node_inval_view_entry(dir, vname);
	return used;
}

void node_set_cur_fd(struct node *n, int fd)
{
	pthread_mutex_lock(&table_lock);
	n->cur_fd = fd;
	pthread_mutex_unlock(&table_lock);
}

void node_set_cached_name(struct node *n, uint64_t dir, const char *name)
{
	char *copy = NULL;

	pthread_mutex_lock(&table_lock);
	if (n->cached_name && n->cached_dir == dir && !strcmp(n->cached_name, name)) {
		pthread_mutex_unlock(&table_lock); /* the usual case: nothing to copy */
		return;
	}
	pthread_mutex_unlock(&table_lock);
	copy = strdup(name);
	if (!copy)
		return;
	pthread_mutex_lock(&table_lock);
	free(n->cached_name);
	n->cached_name = copy;
	n->cached_dir = dir;
	pthread_mutex_unlock(&table_lock);
}

bool node_has_cached_name(struct node *n)
{
	bool has;

	pthread_mutex_lock(&table_lock);
	has = n->cached_name != NULL;
	pthread_mutex_unlock(&table_lock);
	return has;
}

char *node_take_cached_name(struct node *n, uint64_t *dir)
{
	char *name;

	pthread_mutex_lock(&table_lock);
	name = n->cached_name;
	*dir = n->cached_dir;
	n->cached_name = NULL;
	pthread_mutex_unlock(&table_lock);
	return name;
}

void node_meta_add(struct node *n, int valid, const struct stat *resolved)
{
	struct stat *spare = malloc(sizeof(*spare));

	pthread_mutex_lock(&table_lock);
	if (!n->meta) {
		n->meta = spare;
		spare = NULL;
	}
	if (n->meta) {
		n->meta_valid |= valid;
		*n->meta = *resolved;
	}
	pthread_mutex_unlock(&table_lock);
	free(spare);
}

int node_meta_take(struct node *n, struct stat *meta)
{
	int valid;

	pthread_mutex_lock(&table_lock);
	valid = n->meta ? n->meta_valid : 0;
	if (valid)
		*meta = *n->meta;
	n->meta_valid = 0;
	pthread_mutex_unlock(&table_lock);
	return valid;
}

int node_cur_fd(struct node *n)
{
	return node_read_locked(&n->cur_fd);
}
