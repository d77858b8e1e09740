/* mounts.h - binvfs mounts from /proc/self/mountinfo, the mount a path is in, and the daemon
 * that serves a mount. */
#ifndef BINVFSCTL_MOUNTS_H
#define BINVFSCTL_MOUNTS_H

#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>

struct bmount {
	char *point;	 /* mount point */
	char *source;	 /* SOURCE, as the daemon named the mount */
	char *mntopts;	 /* per-mount options (rw,nosuid,...) */
	char *superopts; /* the FUSE connection's options */
	dev_t dev;	 /* st_dev of every file in the mount */
};

struct mtab {
	struct bmount *m;
	size_t n;
};

/* Every binvfs mount; 0, or 1 after printing the error. */
int mtab_read(struct mtab *t);
void mtab_free(struct mtab *t);

/* A path given on the command line, inside a binvfs mount. */
struct target {
	const char *arg; /* as given, for messages */
	struct bmount mnt;
	int root;  /* the mount's root directory (O_PATH), for open_beneath; -1 if none */
	char *abs; /* absolute; the last component is not followed */
	char *rel; /* below the mount point, "" for the mount point itself; no "." or ".." */
	bool exists;
	struct stat st; /* of the object itself (a symlink is not followed), when it exists */
};

/* Resolve arg; 0, or 1 after printing why it is no path in a binvfs mount. Outside binvfs
 * mounts the path resolves as the kernel would (symlinks followed); from where it enters a
 * mount on, no symlink is followed (a symlink on the way is refused, one as the last
 * component is the target itself) and ".." is taken lexically, never above the mount. */
int target_resolve(const char *arg, struct target *t);
void target_free(struct target *t);
/* A copy of m that target_free / bmount_free release. */
void bmount_copy(struct bmount *dst, const struct bmount *src);
void bmount_free(struct bmount *m);
/* An O_PATH fd of m's root, checked to be that mount (st_dev); -errno if not. */
int mount_root(const struct bmount *m);

/* The daemon serving a mount, from /proc: a process with /dev/fuse open that holds the
 * store's staging directory open (or whose command line names binvfs and SOURCE). */
struct daemon {
	pid_t pid;	   /* 0 if not found (e.g. another pid namespace) */
	unsigned keep;	   /* keep=N, as the daemon says (STATUS_XATTR) */
	bool keep_known;   /* the daemon said it */
	bool nosync;	   /* as the daemon says */
	bool debug;	   /* -d or -o debug on its command line */
	char *opts;	   /* its -o options, as given; NULL if none */
	int staging;	   /* staging copies in progress (its O_TMPFILE fds) */
	char *passthrough; /* "on" or "off (why)", as the daemon says; NULL if it does not */
};
void daemon_find(const struct bmount *m, struct daemon *d);
void daemon_free(struct daemon *d);

#endif
