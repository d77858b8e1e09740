/* release.h - releases: every change under a directory held until one commit makes them all
 * current at one instant (docs/design.md §13, docs/format.md "Releases"). */
#ifndef BINVFS_RELEASE_H
#define BINVFS_RELEASE_H

#include <stdbool.h>
#include <sys/types.h>

#include "node.h"
#include "store.h"

#define RELEASE_NOT_HELD 1 /* a hold function's answer: no release covers it, go on as usual */

/* LOOKUP: under an open release's directory the answer waits while a commit runs and is not
 * cached by the kernel. true: the caller calls release_walk_end after its reply. */
bool release_walk_begin(struct node *dir);
void release_walk_end(void);

/* Hold a change if an open release covers dir (0 or -errno), else RELEASE_NOT_HELD. The publish
 * and unlink holds are called without the store lock. */
int release_hold_publish(struct node *dir, const char *name, int fd);
int release_hold_unlink(struct node *dir, const char *name);
int release_hold_rename(struct node *dir, const char *name, struct node *ndir, const char *newname,
			unsigned flags);
/* LOOKUP by a program of the release just committed over (for a while after the commit):
 * 0 with *np the old file (a kernel lookup) or NULL (no file), else 1: look up as usual. */
int release_old_lookup(struct node *parent, const char *name, pid_t tid, struct node **np,
		       struct stat *st);
/* CREATE made dir/name (inode ino) in place, for thread tid: an abort removes it again; until
 * the commit only the creator's session sees it (release_created_sid). */
void release_note_created(struct node *dir, const char *name, ino_t ino, pid_t tid);
/* Is dir/name (inode ino) a file made in place within an open release (CREATE)? */
bool release_is_created(struct node *dir, const char *name, ino_t ino);
/* Is a release open at all (a hint, read without a lock)? */
bool release_active(void);
/* The session of thread tid (from /proc; 0 is a session too), -1 if unknown. */
pid_t release_sid(pid_t tid);
/* Is dir/name made in place within an open release? Then *sid is its creator's session (-1 if
 * unknown: no one's). Anyone else is answered no such name: a new file is held as a publish is. */
bool release_created_sid(struct node *dir, const char *name, pid_t *sid);

/* The xattr requests on DIR: "begin[:NAME]", "commit", "abort"; getxattr: the state. */
int release_request(struct node *dir, const char *value, size_t size, uid_t uid);
int release_status(struct node *dir, char *buf, size_t size);

/* Before the mount: roll a commit that a crash interrupted forward, drop releases left open. */
void release_recover(struct store *s);
/* At unmount: an open release is dropped (its held files do not survive the daemon). */
void release_shutdown(void);

#endif
