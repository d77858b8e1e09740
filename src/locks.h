/* locks.h - POSIX record locks (fcntl, lockf, OFD) and flock() kept by the daemon, so that
 * every open of a file shares them whatever nodeid it has: a reader on the version's nodeid, a
 * writer on a staging nodeid of its own (docs/design.md, Locks).
 *
 * A lock belongs to a file, named by the (dev, ino) of a version: a staging node's base, or
 * the version a reader opened. A publish hands the locks of the file it replaces to the new
 * version (locks_published), and the opens of the old one keep reaching them. A SETLKW that
 * must wait is answered later, from whichever thread frees the range, or EINTR when the
 * kernel interrupts it: no worker waits. */
#ifndef BINVFS_LOCKS_H
#define BINVFS_LOCKS_H

#include "fs.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define LOCK_END INT64_MAX /* a range "to the end of the file" ends here (the kernel's) */

enum lock_class {
	LK_POSIX, /* fcntl/lockf and OFD locks: byte ranges, an owner per process or per OFD */
	LK_FLOCK, /* flock(): the whole file, an owner per open file description */
};

struct lock_range {
	uint64_t owner;	    /* the kernel's lock owner id */
	uint64_t open;	    /* the open (fi->fh) it was taken through: gone at its RELEASE */
	int64_t start, end; /* inclusive */
	short type;	    /* F_RDLCK, F_WRLCK, F_UNLCK */
	enum lock_class cls;
	pid_t pid; /* who took it (POSIX): F_GETLK reports it */
};

/* F_GETLK: the first lock that conflicts with *l (another owner's, overlapping, one of them a
 * write lock) is copied into *l; l->type is F_UNLCK if there is none. */
void locks_get(dev_t dev, ino_t ino, struct lock_range *l);
/* F_SETLK, F_SETLKW, flock(): set, change or remove (F_UNLCK) l's range for its owner.
 * 0: done; -EAGAIN: another owner holds a conflicting lock and wait is NULL. With wait (a
 * SETLKW or a blocking flock) a conflict queues it and 1 is returned: the request is answered
 * later (0 once granted, EINTR if the kernel interrupts it), never by the caller. */
int locks_set(dev_t dev, ino_t ino, const struct lock_range *l, fuse_req_t wait);
/* FLUSH (a close() of the file by owner's process): its POSIX locks on the file go. */
void locks_flush(dev_t dev, ino_t ino, uint64_t owner);
/* RELEASE (the last close of an open file description): the locks taken through it (OFD
 * locks, flock) go, and with flock_owner != 0 that owner's flock. */
void locks_release(dev_t dev, ino_t ino, uint64_t open, uint64_t flock_owner);
/* Does the file have locks now? Then a reader's open is not spared its FLUSH: its close must
 * release its process's locks. */
bool locks_held(dev_t dev, ino_t ino);
/* A publish replaced version (odev, oino) at its name with (ndev, nino): the locks go with the
 * file, as natively an in-place write keeps the inode. held: a node of the old version exists
 * (its opens may still lock). */
void locks_published(dev_t odev, ino_t oino, dev_t ndev, ino_t nino, bool held);
/* Undo locks_published (the publish failed). */
void locks_unpublished(dev_t odev, ino_t oino, dev_t ndev, ino_t nino);
/* The node of (dev, ino) is gone: nothing can reach the file through that inode any more. */
void locks_node_gone(dev_t dev, ino_t ino);
/* The end of the session: waiting requests are answered EINTR, everything freed. */
void locks_shutdown(void);

#endif
