/* vlist.h - the versions of a file, as the mount shows them: MOUNT/.versions/<dir>/<name>.~N~
 * (old, N from 1) and MOUNT/<dir>/<name> (current, numbered one past the newest old one). */
#ifndef BINVFSCTL_VLIST_H
#define BINVFSCTL_VLIST_H

#include <openssl/sha.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "buildid.h"
#include "mounts.h"

#define SHA256_HEX (2 * SHA256_DIGEST_LENGTH + 1)

struct version {
	unsigned n;
	bool current;
	char *path; /* through the mount, for output only */
	char *rel;  /* below the mount's root: what version_open opens */
	struct stat st;
};

struct vlist {
	int root;		   /* the mount's root (the target's, not owned) */
	char *file;		   /* MOUNT/<dir>/<name>, for output */
	char *vdir;		   /* MOUNT/.versions/<dir>, for output */
	char *file_rel, *vdir_rel; /* the same below the mount's root */
	char *name;
	struct version *v; /* ascending N; the current one (if the name exists) last */
	size_t n;
	unsigned current;    /* N of the current file, 0 if the name was removed */
	unsigned newest_old; /* 0 if there is no old version */
};

/* The versions of the regular file t names (or named, if removed and kept); 0, or 1 after
 * printing the error. Stats every version (a LOOKUP each, forgotten right after). */
int vlist_load(const struct target *t, struct vlist *l);
void vlist_free(struct vlist *l);
/* The path below .versions/ of tree directory dir's mirror, as the daemon names it
 * (names.h): "" for the top, else "/a/b". */
char *vlist_mirror(const char *dir);
struct version *vlist_get(struct vlist *l, unsigned n);
/* Get version n, or print "no such version" and return NULL. */
struct version *vlist_need(struct vlist *l, unsigned n, const char *arg);
/* Open version v for reading, once (open_beneath: a regular file, no symlink on the way) and
 * refresh v->st from that fd; the fd, or -1 after printing why not. */
int version_open(const struct vlist *l, struct version *v, const char *arg);

/* The versions in a .versions directory (readdir only: no LOOKUP, nothing pinned): total,
 * how many stay if each name keeps its newest `keep`, and the inode numbers of the others;
 * only of `name` unless NULL. Adds to c. */
struct vcount {
	size_t total, kept;
	unsigned long long *excess; /* inodes of the versions beyond keep (owned) */
	size_t nexcess;
};
int versions_tally(int root, const char *vdir_rel, const char *name, unsigned keep,
		   struct vcount *c);
void vcount_free(struct vcount *c);

/* Every old version in a mount, by inode number (readdir's d_ino is the backing inode, as
 * st_ino and /proc/PID/maps are): for `outdated`. Only below `under` (a tree path) if set. */
struct ventry {
	unsigned long long ino;
	char *rel;  /* the file's path below the mount point */
	char *vrel; /* the version's path below MOUNT/.versions/ */
	unsigned n;
	long long size; /* with vindex_build's sizes, else -1 */
};
struct vindex {
	struct ventry *e; /* sorted by ino */
	size_t n;
};
/* root: the mount's root fd; sizes: also fstatat each version (a LOOKUP each). */
void vindex_build(int root, const char *under, bool sizes, struct vindex *ix);
const struct ventry *vindex_find(const struct vindex *ix, unsigned long long ino);
/* the newest old version of rel */
unsigned vindex_newest(const struct vindex *ix, const char *rel);
void vindex_free(struct vindex *ix);

/* Content facts of one version, read through the mount. */
struct vinfo {
	char sha256[SHA256_HEX];
	char build_id[BUILD_ID_HEX]; /* "" if none */
	bool elf;
};
int vinfo_fd(int fd, struct vinfo *i); /* 0 or -errno; reads with pread from 0 */

#endif
