/* node.h - the node table (node.c): nodeid <-> backing inode (a version, a directory, ...) or
 * a writer's staging node; kernel lookup counts, internal references, forget. A node's open
 * state is node_open.h's, how it reaches its object nodefd.h's. */
#ifndef BINVFS_NODE_H
#define BINVFS_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "list.h"

struct store;

enum node_kind {
	NODE_DIR,
	NODE_FILE,    /* one immutable published version of a regular file */
	NODE_OTHER,   /* symlink, fifo, device, socket */
	NODE_STAGING, /* a writer's private nodeid; opens for writing get a staging copy */
	NODE_ALIAS,   /* the cached nodeid of a version of an executable name nobody has run
		       * yet (`base`): every request but LOOKUP, FORGET and OPEN is the
		       * version's (inode_of); design.md §2, "Caching executable names" */
};

/* The fields by role, each group with what guards it. "Table lock": node.c's mutex
 * (node_table_lock); "atomic": read and written with __atomic_*, no lock. */
struct node {
	/* identity, fixed at creation (no lock) */
	uint64_t id; /* its nodeid (nodeid.c), fixed while it lives */
	enum node_kind kind;
	bool in_versions; /* directory inside the read-only .versions/ view */
	dev_t dev;
	ino_t ino;
	/* How the node reaches its backing object (nodefd.c): a pinned node keeps an O_PATH fd;
	 * beyond the fd budget a node keeps only a file handle, reopened when needed. Both are
	 * fixed at creation; use node_fd(). Staging nodes have neither. */
	int fd;
	struct file_handle *fh;
	/* staging and alias nodes, fixed at creation (no lock): */
	struct node *base;   /* the version the writer copies, or the alias stands for (ref) */
	struct node *parent; /* the directory it publishes into (holds a ref) */
	char *name;

	/* flags and counts of other modules, atomic */
	bool old;		   /* file: no longer current at any tree name; node_old() */
	bool replaced;		   /* file: replaced at its one name by a publish, and not looked
				    * up in .versions/ since: still counts that link (node_stat) */
	bool locked;		   /* file: a lock was asked through an open of it; its reader
				    * opens get FLUSH from now on (locks.h) */
	bool hot;		   /* file: an exec opened this version: its executable names
				    * are answered with this node, uncached (route_lookup) */
	unsigned writers_in_place; /* open handles writing the file itself (a new file's
				    * creator, those who join it): handle.c */
	unsigned inrings;	   /* handle-only: slots of per-thread fd rings holding it
				    * (nodefd.c) */

	/* lifetime (node.c), table lock */
	uint64_t nlookup;   /* the kernel's references (LOOKUP replies minus FORGET) */
	unsigned refs;	    /* ours: a staging node's base and parent, a directory's dparent, a
			     * route, a queued invalidation (not opens: those are `opens`) */
	bool pinned;	    /* a reference or open count was dropped below zero (a bug): never
			     * freed, a leak rather than a use after free */
	struct node *hnext; /* hash chain */
	struct list all;    /* every node but the root */
	/* a version whose removal waits for its last user (node_defer_prune), table lock */
	char *prune_vrel;
	dev_t prune_vdev; /* the .versions/ directory holding it */
	ino_t prune_vino;
	/* directories: where the kernel last found it (holds a ref on dparent), table lock; gives
	 * the path of a directory deeper than /proc/self/fd can say (node_dir_path) */
	struct node *dparent;
	char *dname;
	/* the name the kernel may cache for it (tree LOOKUP), table lock */
	uint64_t cached_dir;
	char *cached_name;
	/* directory: the kernel's cache of its listing (FOPEN_CACHE_DIR), inval.c's rdc_lock:
	 * changes made behind the kernel's back, open handles that may fill the cache, and how
	 * many of those were opened before the last change (inval_dir_open) */
	unsigned rdc_gen;
	unsigned rdc_open;
	unsigned rdc_stale;
	/* file: its NODE_ALIAS node, if any (no ref: the alias holds one on this node, and
	 * clears this when freed); table lock, read atomically as a hint */
	struct node *alias;

	/* the open state (node_open.c), table lock */
	unsigned opens;	  /* open files on this nodeid (read, exec, write): node_open/close */
	int backing_id;	  /* passthrough id shared by all its opens (kernel-notes §10), 0 none */
	int kept_id;	  /* with no opens: the last one's id, still registered for the next
			   * open (node_open), 0 none; closed when the node goes (node_free) */
	int kept_atime;	  /* the atime policy its backing fd was opened under */
	int rdfd;	  /* files: O_RDONLY while held (node_rdfd_hold), or cached if pinned;
			   * set under the table lock, read atomically (node_rdfd) */
	unsigned rdholds; /* opens and copies using rdfd */
	int rdfd_atime;	  /* the atime policy rdfd was opened under (nodefd_open_atime) */

	/* staging: the writer's state, table lock */
	int cur_fd;	   /* fd of the newest staging copy, -1 if none */
	int meta_valid;	   /* FUSE_SET_ATTR_* set by the writer, kept in meta */
	struct stat *meta; /* applied in place if the content turns out unchanged (allocated at
			    * the first: most nodes never need one) */
};

/* The table of the store s (its root, SOURCE; deferred prunes remove versions from it). */
void node_table_init(struct store *s);
void node_table_destroy(void);
struct node *node_root(void);
struct node *node_get(uint64_t nodeid);
uint64_t node_id(const struct node *n);

/* Find or create the node for an object just looked up (st from fstatat(parent->fd, name),
 * updated if the name changed meanwhile); adds one kernel lookup. Returns NULL with errno set. */
struct node *node_lookup(struct node *parent, const char *name, struct stat *st, bool in_versions);
/* The same for an object found elsewhere (dirfd/at: a release's old file in .versions/),
 * answered as parent/name. at NULL: the file of the fd dirfd itself, which has no name (an
 * O_TMPFILE): always pinned, its fd keeping it alive until the node goes. */
struct node *node_lookup_at(struct node *parent, const char *name, struct stat *st,
			    bool in_versions, int dirfd, const char *at);
/* The same for an object opened already (fd, O_PATH: taken over), with parent/name unknown
 * if NULL: an object found again by a file handle (nodeid.c). unnamed: it has no name to be
 * reopened by (an O_TMPFILE), so it is pinned. */
struct node *node_lookup_fd(struct node *parent, const char *name, int fd, struct stat *st,
			    bool in_versions, bool unnamed);
/* LOOKUP "." of a nodeid from a file handle, never trusted: its live node other than a
 * writer's, with one more kernel lookup, or NULL. */
struct node *node_lookup_id(uint64_t id);
/* LOOKUP "..": the directory where the kernel last found directory n, with one more kernel
 * lookup, or NULL if unknown. */
struct node *node_dparent_lookup(struct node *n);
/* A directory was renamed through the mount: it is now newparent/newname. */
void node_dir_moved(dev_t dev, ino_t ino, struct node *newparent, const char *newname);
/* The path below SOURCE of a directory node ("" for the root), malloc'd; NULL if unknown. */
char *node_dir_path(dev_t dev, ino_t ino);
struct node *node_new_staging(struct node *base, struct node *parent, const char *name);
/* The cached alias of version v, found or made, with one kernel lookup added; NULL (ENOMEM). */
struct node *node_alias(struct node *v);
void node_add_lookup(struct node *n);

/* Drop references; the last one frees the node. Either may then remove a version whose
 * prune waited for it (retention_remove_deferred: takes the store lock, deletes the file),
 * and a file's end is told to locks.c (locks_node_gone): so a FORGET,
 * the end of a LOOKUP or a route, or a RELEASE (node_close) can delete a file. Call them
 * holding neither the store lock nor the table lock. */
void node_forget(struct node *n, uint64_t nlookup);
void node_ref(struct node *n);
void node_unref(struct node *n);

/* An fd of the backing object (O_PATH), valid until the end of the current request: the pin,
 * or a handle-only node's fd from this thread's ring. -1 with errno set if it is gone. */
int node_fd(struct node *n);
int node_proc_path(struct node *n, char *buf, size_t len);

/* For the store: a replaced or removed inode becomes an old version. */
void node_mark_old(dev_t dev, ino_t ino, bool old);
/* Does the kernel (or a route, a writer) still hold a node of that inode? */
bool node_busy(dev_t dev, ino_t ino);
void node_mark_replaced(dev_t dev, ino_t ino, bool replaced);
/* The nodeids of that inode's file node and its alias that the kernel holds: their count. */
int node_known(dev_t dev, ino_t ino, uint64_t ids[2]);
/* For retention: true if a node of that inode is in use; it then removes vrel when unused. */
bool node_defer_prune(const struct stat *st, const char *vrel, int vdirfd, const char *vname);
/* Asks the kernel to drop a cached entry: inval_entry_queue (inval.c), set by main.c's
 * open_store. A pointer, not a call: inval.c calls node.c (node_id, node_ref, node_unref),
 * and the modules' calls form no cycle (tests/test_structure.py). */
extern void (*node_inval_hook)(struct node *dir, const char *name);
void node_set_cur_fd(struct node *n, int fd);
void node_set_cached_name(struct node *n, uint64_t dir, const char *name);
char *node_take_cached_name(struct node *n, uint64_t *dir);
bool node_has_cached_name(struct node *n);
void node_meta_add(struct node *n, int valid, const struct stat *resolved);
int node_meta_take(struct node *n, struct stat *meta);
int node_cur_fd(struct node *n);

/* Is there a node of that file, held by anyone (the kernel, an open, a writer's base)? */
bool node_held(dev_t dev, ino_t ino);

/* The node whose file a request reaches: an alias stands for its version. */
static inline struct node *node_version(struct node *n)
{
	return n->kind == NODE_ALIAS ? n->base : n;
}

static inline bool node_hot(const struct node *n)
{
	return __atomic_load_n(&n->hot, __ATOMIC_ACQUIRE);
}

/* An exec opened version n: hot from now on, also for a node made later for the same file
 * while it is remembered (a bounded table: the kernel forgets a program's node when its last
 * run ends, and the next run would find it idle again). */
void node_set_hot(struct node *n);
/* For node_open.c, whose open counts keep nodes alive as the table's references do: the
 * table lock (lock order: handle -> store -> table, route -> table; docs/design.md §9), a
 * field read under it, a count dropped below zero (a bug), and the end of a change of counts:
 * node_release_locked frees the node if nothing holds it any more, or runs its deferred
 * prune once only internal references are left; it drops the table lock. */
void node_table_lock(void);
void node_table_unlock(void);
int node_read_locked(const int *field);
void node_count_broken(const struct node *n, const char *what, uint64_t have, uint64_t drop);
void node_release_locked(struct node *n);
/* A version whose prune waits may be held by its .versions/ entry in the kernel's cache
 * alone: that directory's node (with a ref; table lock held), and the invalidation of its
 * entry (no lock held; drops the ref). */
struct node *node_view_entry_locked(struct node *n);
void node_inval_view_entry(struct node *dir, const char *vrel);

static inline bool node_old(const struct node *n)
{
	return __atomic_load_n(&n->old, __ATOMIC_RELAXED);
}

static inline void node_set_old(struct node *n, bool old)
{
	__atomic_store_n(&n->old, old, __ATOMIC_RELAXED);
}

/* Is the file being written in place (its creator, or writers who joined it, still have it
 * open)? Then every write, truncate and write open of it goes in place too, as natively:
 * nothing of theirs may end up only in a version (xfstests generic/313). */
static inline bool node_written_in_place(const struct node *n)
{
	return __atomic_load_n(&n->writers_in_place, __ATOMIC_ACQUIRE) > 0;
}

static inline bool node_replaced(const struct node *n)
{
	return __atomic_load_n(&n->replaced, __ATOMIC_ACQUIRE);
}

#endif
