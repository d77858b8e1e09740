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
	char *abs; /* absolute; the last component is not followed */
	char *rel; /* below the mount point, "" for the mount point itself */
	bool exists;
	struct stat st; /* lstat, when it exists */
};

/* Resolve arg; 0, or 1 after printing why it is no path in a binvfs mount. */
int target_resolve(const char *arg, struct target *t);
void target_free(struct target *t);
/* A copy of m that target_free / bmount_free release. */
void bmount_copy(struct bmount *dst, const struct bmount *src);
void bmount_free(struct bmount *m);

/* The daemon serving a mount, from /proc: a process with /dev/fuse open that holds the
 * store's staging directory open (or whose command line names binvfs and SOURCE). */
struct daemon {
	pid_t pid;     /* 0 if not found (e.g. another pid namespace) */
	unsigned keep; /* keep=N from its command line, default 10 */
	bool nosync, debug;
	char *opts;  /* its -o options, as given; NULL if none */
	int staging; /* staging copies in progress (its O_TMPFILE fds) */
	char *passthrough; /* "on" or "off (why)", as the daemon says; NULL if it does not */
};
void daemon_find(const struct bmount *m, struct daemon *d);
void daemon_free(struct daemon *d);

#endif
