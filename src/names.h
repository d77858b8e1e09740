/* names.h - the store's names on disk and the constants both binaries agree on: built into
 * binvfs and binvfsctl, so the daemon and the tool that reads its store through the mount
 * never disagree on what a name means. No FUSE types, no I/O. See docs/format.md. */
#ifndef BINVFS_NAMES_H
#define BINVFS_NAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <inttypes.h>

#define STORE_DIR     ".versions"
#define STORE_MARKER  ".binvfs-format"
#define STORE_STAGING ".binvfs-staging"
#define STORE_FORMAT  "binvfs store format 1\n"

/* the mount table's type of a binvfs mount (the daemon mounts with subtype=binvfs) */
#define BINVFS_FSTYPE "fuse.binvfs"

/* binvfsctl prune's request to the daemon: setxattr(DIR, PRUNE_XATTR, "KEEP" or
 * "KEEP/NAME"), handled in ops_dir.c */
#define PRUNE_XATTR "user.binvfs.prune"
/* Read on the mount root, answered by the daemon serving it (not stored): "pid=N", "keep=N",
 * "nosync=0|1" and "passthrough=on|off (why)" lines, for binvfsctl status. */
#define STATUS_XATTR "user.binvfs.status"

/* An old version of <name> is "<name>.~N~", N from 1 to UINT32_MAX in decimal without
 * leading zeros. */
#define NAMES_VERSION_FMT "%s.~%" PRIu32 "~"
/* "<name>.~N~" -> N; 0 if entry is not a version name. *namelen gets the name's length. */
uint32_t names_version_parse(const char *entry, size_t *namelen);
/* N if entry is a version of exactly name, else 0 */
uint32_t names_version_of(const char *entry, const char *name);
/* Is name short enough that "<name>.~N~" fits in a directory entry for every N? */
bool names_can_version(const char *name);

/* A tree directory's mirror in .versions/ has the directory's name, plus NAMES_MIRROR_SUFFIX
 * when the name itself could be taken for a version ("x.~3~"), for the store's own entries,
 * or for an escaped name (one already ending in the suffix). Injective, and never a version
 * name. */
#define NAMES_MIRROR_SUFFIX ".~~"
bool names_mirror_escaped(const char *name);
/* The length of the tree directory name that the mirror name c (len bytes, not
 * necessarily terminated) stands for. */
size_t names_mirror_unescaped_len(const char *c, size_t len);
/* Is name one of the store's own entries in the top of .versions/? */
bool names_store_entry(const char *name);

/* Do open(2) flags ask for writing, or truncate? (O_PATH opens neither.) */
bool names_write_flags(unsigned long flags);

#endif
