/* store.h - the on-disk store: current files at their names, old versions as hard links
 * under .versions/<dir>/<name>.~N~, staging as O_TMPFILE files. No FUSE types here. */
#ifndef BINVFS_STORE_H
#define BINVFS_STORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "names.h" /* STORE_DIR and the other names on disk */

struct store {
	int rootfd;  /* SOURCE, O_PATH, opened before the mount */
	int vfd;     /* SOURCE/.versions, O_PATH */
	int lockfd;  /* SOURCE/.versions/.binvfs-staging: flock()ed by store_lock, so that two
		      * daemons on one store (a restart under load) change it in turn */
	int stagefd; /* .binvfs-staging/<instance>: this daemon's own, flock()ed while it
		      * lives (a directory nobody holds is a dead daemon's, removed at mount) */
	char stagename[32];
	unsigned keep; /* old versions kept per path, 0 = no limit */
	bool nosync;
	bool batch; /* a release's commit: no sync per directory, one syncfs after (store lock);
		     * and store_versions_dir remembers its last answer (batch_*) */
	struct {
		dev_t dev;
		ino_t ino; /* the tree directory; 0: nothing remembered */
		int vfd;   /* its mirror */
		char *rel;
	} batch_dir;
	pthread_mutex_t lock;	  /* serialises every change to names that keeps a version; taken
				   * through store_lock(). Lock order: a handle's lock, then this,
				   * then the node table's and the links lock (docs/design.md §9) */
	unsigned waiting;	  /* threads in store_lock() waiting for the mutex (atomic) */
	unsigned long long taken; /* times store_lock() took it (atomic): the prune's hand-over */
	uint64_t seq;		  /* staging link names; protected by lock */
	uint64_t reserve; /* bytes kept free by pruning unused versions (space.c), 0 = none */
	/* What the store asks of the node table, through pointers set by main.c's store_setup:
	 * node.c calls the store (retention_remove_deferred), so the store's calls back into it
	 * stay out of the modules' call graph, which has no cycle (tests/test_structure.py). */
	/* node_busy (node.c): does the kernel still hold a node of this inode? (its space cannot
	 * be freed by removing a name, and a process may use it); space.c asks */
	bool (*busy)(dev_t dev, ino_t ino);
	/* node_dir_path (node.c): the path below SOURCE of a directory the kernel knows,
	 * malloc'd; for a directory deeper than /proc/self/fd can say (PATH_MAX); store.c asks */
	char *(*dir_path)(dev_t dev, ino_t ino);
	/* node_defer_prune (node.c): asked by retention for each version beyond `keep` (st: the
	 * version; vdirfd/vname: where it is): true if it is in use; its user's node then removes
	 * it once unused (retention_remove_deferred) */
	bool (*in_use)(const struct stat *st, const char *vrel, int vdirfd, const char *vname);
};

struct store_change {
	bool kept;	 /* a version was added */
	struct stat old; /* the replaced file (when kept) */
	char vname[256]; /* its name in the versions dir */
	char *vrel;	 /* its path below .versions/ (store_change_done frees it) */
	bool orphaned;	 /* publish found the name gone: the new content became a version */
	bool dropped; /* no space to keep the replaced or removed file: it went without a version */
};

int store_open(struct store *s, const char *source, unsigned keep, bool nosync);
/* The store lock: this daemon's mutex, then the store's flock against other daemons. */
void store_lock(struct store *s);
void store_unlock(struct store *s);
void store_close(struct store *s);
/* The nodeid table (docs/format.md, "The nodeid table"; its content is nodeid.c's).
 * store_nodeids_read, at mount: the table the last clean stop left (malloc'd, *len bytes,
 * at most max), removed from the store at once (read once: a crash leaves none); NULL with
 * *why NULL if there is none, or with *why saying what is wrong with it (it is removed too,
 * unless a directory). store_nodeids_write, after the session: written in this daemon's
 * staging directory, synced (unless nosync), renamed into place; 0 or -errno. */
void *store_nodeids_read(struct store *s, size_t max, size_t *len, const char **why);
int store_nodeids_write(struct store *s, const void *table, size_t len);
void store_index_start(struct store *s);
bool store_reserved_root_name(const char *name);
char *store_join(const char *rel, const char *name);
int store_versions_dir(struct store *s, int dirfd, bool create, int *vdirfd, char **rel);
/* The end of a batch (s->batch): store_versions_dir forgets the mirror it remembered. */
void store_batch_end(struct store *s);
int store_stage_create(struct store *s, int srcfd, const struct stat *base, off_t len, int *out);

int store_sync_dir(struct store *s, int dirfd);

/* History is never more open than the file was when kept, nor than it is now
 * (docs/security.md, "History permissions"). The callers hold s->lock.
 * After the name changed (a publish, or mv over a file): if the file now at dirfd/name grants
 * less than the one ch kept (a read bit gone, another owner or group), every version of the
 * name loses the classes that cannot read the new one. */
void store_kept_settle(struct store *s, int dirfd, const char *name, const struct store_change *ch);
/* The mode or owner of the file at dirfd/name changed in place (chmod, chown, a writer's
 * fchmod that published no content): every version of the name loses the classes that
 * cannot read that file now. */
int store_history_follow(struct store *s, int dirfd, const char *name);
/* The same for the current file open as fd (an O_PATH fd will do), found through its name. */
int store_history_follow_fd(struct store *s, int fd);
/* The access ACL of the tree file fd changed: its versions keep only their owner's read
 * (entries are not compared: an ACL change counts as opening). Store lock held. */
int store_history_acl_changed(struct store *s, int fd);
/* The tree directory at dirfd/name was removed (gone) or renamed away, or another directory
 * took the name: its mirror, if it no longer matches what is at the name, is closed (0700,
 * and marked gone if removed) where it is, or moved aside if another directory is there. */
void store_mirror_settle(struct store *s, int dirfd, const char *name, bool gone);

/* Within the store (store.c, keep.c, retention.c): */
int store_open_dir(int dirfd, const char *name, int flags); /* O_DIRECTORY | O_NOFOLLOW */

#endif
