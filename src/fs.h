/* fs.h - the mount context: the store, the session and what INIT learnt, shared by every
 * module that answers the kernel. The FUSE operations are declared in ops_entry.h, ops_file.h
 * and ops_dir.h. */
#ifndef BINVFS_FS_H
#define BINVFS_FS_H

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>

#include "node.h"
#include "store.h"

#define FMODE_EXEC 0x20 /* the kernel's __FMODE_EXEC in OPEN flags (kernel-notes §2) */

/* Timeouts (kernel-notes §4): a name -> nodeid answer may change at any publish, so regular
 * files are looked up every time; a nodeid's content never changes, so its attributes and
 * page cache are kept. */
#define TIMEOUT_LONG 86400.0

struct binvfs {
	struct store store;
	struct fuse_session *se;
	unsigned long gen;     /* bumped by every publish (atomic, inval_gen_bump): a LOOKUP that
				* overlapped one is not cached */
	int mnt_id;	       /* our mount as /proc/PID/fdinfo shows it, -1 if unknown */
	char bdi[32];	       /* our mount's "major:minor", its name in /sys/class/bdi/ */
	unsigned readahead_kb; /* set on the bdi at INIT; 0: the kernel's */
	bool readahead_asked;  /* readahead= was given (else a failure is not warned about) */
	bool acl_ok;	       /* default_permissions, and SOURCE's filesystem has POSIX ACLs */
	bool posix_acl;	       /* FUSE_POSIX_ACL negotiated: the kernel checks ACLs, invalidates
				* a node's attributes and ACLs at a setfacl (docs/design.md §3, ACLs) */
	dev_t view_dev;	       /* the store's .versions/ directory, root of the view */
	ino_t view_ino;
};

extern struct binvfs fs;

static inline struct node *inode_of(fuse_ino_t ino)
{
	return node_get(ino);
}

#endif
