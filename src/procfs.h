/* procfs.h - a task's small files under /proc (stat, status), read whole (procfs.c). */
#ifndef BINVFS_PROCFS_H
#define BINVFS_PROCFS_H

#include <sys/types.h>

/* Reads /proc/TID/FILE into buf (at most size - 1 bytes, NUL-terminated) in one read: its
 * length, or -1 with errno (ENOENT: no such task). A task's stat and status are generated
 * whole at the read, so one read gives a consistent line. */
ssize_t procfs_read(pid_t tid, const char *file, char *buf, size_t size);
/* The value of KEY ("\nTgid:") in a status text read by procfs_read, NULL if absent. */
const char *procfs_field(const char *status, const char *key);

#endif
