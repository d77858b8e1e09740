/* procscan.h - who uses which file of a mount, exactly: the device and inode numbers in
 * /proc/PID/maps, /proc/PID/exe and /proc/PID/fd against the mount's st_dev and a version's
 * st_ino. */
#ifndef BINVFSCTL_PROCSCAN_H
#define BINVFSCTL_PROCSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum {
	USE_EXE = 1, /* runs it: /proc/PID/exe */
	USE_MAP = 2, /* maps it: /proc/PID/maps (a library, or the mapped executable) */
	USE_FD = 4,  /* holds it open (a script its interpreter reads, ...) */
};

struct use {
	pid_t pid;
	ino_t ino;
	unsigned how; /* USE_* */
};

struct uses {
	struct use *u; /* sorted by pid, then ino; one entry per (pid, ino) */
	size_t n;
};

/* Every process's use of files on device dev mounted at point (but binvfsctl's own). */
void uses_scan(dev_t dev, const char *point, struct uses *out);
void uses_free(struct uses *u);
/* "exe,map,open" for a USE_* set */
const char *use_how(unsigned how, char *buf, size_t len);

struct procinfo {
	pid_t pid;
	char comm[64];
	char user[64]; /* real uid's name, or the number */
	char *cmdline; /* arguments joined by spaces, owned */
};
void procinfo_get(pid_t pid, struct procinfo *p);
void procinfo_free(struct procinfo *p);

/* The systemd unit a process belongs to, from /proc/PID/cgroup: the path in the cgroup v1
 * "name=systemd" hierarchy, or else the cgroup v2 one ("0::"), read the way systemd names
 * units (slices skipped, the first other component is the unit). */
struct punit {
	char *cgroup;  /* the cgroup path the unit came from; NULL if none could be read */
	char *unit;    /* "app.service", "session-3.scope"; NULL: in no unit (the root cgroup) */
	char *manager; /* NULL: the system's manager; "user@1000.service": a user unit */
};
void proc_unit(pid_t pid, struct punit *u);
void punit_free(struct punit *u);
/* The unit that owns cgroup path, as above; false (and NULLs) if the path names none. */
bool cgroup_unit(const char *path, char **unit, char **manager);
/* A unit that `systemctl try-restart` may restart: a service of the system's manager, other
 * than a user's manager (user@UID.service). Otherwise NULL and *why says why not. */
bool punit_restartable(const struct punit *u, const char **why);

/* /proc/PID/cmdline: NUL-separated arguments (owned), their total length in *len. */
char *proc_cmdline(pid_t pid, size_t *len);
/* Call fn for every numeric /proc entry (every process); stops when fn returns true. */
void proc_each(bool (*fn)(pid_t pid, void *arg), void *arg);

/* how, as a JSON array: "exe", "map", "open" (log and outdated --json) */
void json_how(unsigned how);

#endif
