/* closer.h - who is closing a writer's file, at FLUSH (closer.c). */
#ifndef BINVFS_CLOSER_H
#define BINVFS_CLOSER_H

#include <stdbool.h>
#include <sys/types.h>

enum closer {
	CLOSER_OPENER, /* the process that opened it: a normal close or exit */
	CLOSER_OTHER,  /* another process (a child that inherited the fd) */
	CLOSER_KILLED, /* the opener, dying of a signal */
};
/* The process (thread group) of thread tid, 0 if unknown. */
pid_t closer_tgid(pid_t tid);
/* How many write fds does the process of tid still hold on inode number a or b of the mount
 * mnt_id (-1: unknown) (a dup, or an fd shared by a shell's redirection)? Reads
 * /proc/<tid>/fdinfo, which never blocks. */
unsigned closer_write_fds(pid_t tid, int mnt_id, ino_t a, ino_t b);
/* Who, of the opener (opener_tgid) and everyone else, is closing at tid's FLUSH. */
enum closer closer_of(pid_t tid, pid_t opener_tgid);

#endif
