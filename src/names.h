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
/* The nodeid table a daemon leaves at a clean stop, read and removed by the next mount, so
 * file handles made inside the mount survive a remount (nodeid.c, docs/format.md). It is
 * written as NODEIDS_TMP in the daemon's own staging directory, then renamed into place. */
#define STORE_NODEIDS ".binvfs-nodeids"
#define NODEIDS_TMP   "nodeids"
#define NODEIDS_MAGIC "binvfs nodeids 1\n"
/* the history of releases: one record per committed release (docs/format.md, Releases) */
#define STORE_RELEASES ".binvfs-releases"

/* the mount table's type of a binvfs mount (the daemon mounts with subtype=binvfs) */
#define BINVFS_FSTYPE "fuse.binvfs"

/* binvfsctl prune's request to the daemon: setxattr(DIR, PRUNE_XATTR, "KEEP" or
 * "KEEP/NAME"), handled in ops_dir.c */
#define PRUNE_XATTR "user.binvfs.prune"
/* A release on DIR (src/release.c): setxattr(DIR, RELEASE_XATTR, "begin[:NAME]", "commit" or
 * "abort"); getxattr: its state. Write access to DIR is what it takes. */
#define RELEASE_XATTR "user.binvfs.release"
/* Read on the mount root, answered by the daemon serving it (not stored): "pid=N", "keep=N",
 * "nosync=0|1", "passthrough=on|off (why)" and "uring=on (N requests...)|off (why)" lines, for
 * binvfsctl status. The keys, written by ops_dir.c and read by ctl/mounts.c: */
#define STATUS_XATTR	   "user.binvfs.status"
#define STATUS_PID	   "pid="
#define STATUS_KEEP	   "keep="
#define STATUS_NOSYNC	   "nosync="
#define STATUS_PASSTHROUGH "passthrough="
#define STATUS_URING	   "uring="

/* Old versions kept per path (-o keep=N) unless told otherwise; 0 means no limit. The most
 * that -o keep=, binvfsctl prune --keep and a prune request (PRUNE_XATTR) accept. */
#define NAMES_KEEP_DEFAULT 10
#define NAMES_KEEP_MAX	   1000000

/* An old version of a file is "<stored>.~N~", N from 1 to UINT32_MAX in decimal without
 * leading zeros, where <stored> is the file's name (names_stored). */
#define NAMES_VERSION_FMT "%s.~%" PRIu32 "~"
/* "<stored>.~N~" -> N; 0 if entry is not a version name. *namelen gets the stored name's
 * length. */
uint32_t names_version_parse(const char *entry, size_t *namelen);
/* N if entry is a version of exactly the stored name, else 0 */
uint32_t names_version_of(const char *entry, const char *stored);

/* The stored name of a file: its name, unless "<name>.~N~" could exceed NAME_MAX (a name of
 * more than NAMES_STORED_MAX bytes) or the name looks like a shortened one: then its first
 * bytes (at most 222, not ending inside a UTF-8 character), ".~~" and 16 hex digits of the
 * SHA-256 of the whole name. The whole name of a shortened one is recorded in the versions
 * directory as "<stored>.~~" (names_record_of; keep.c's keep_record writes it), whose
 * content is exactly the name. out gets at
 * most NAMES_STORED_MAX bytes and a NUL; returns true if the name was shortened. */
#define NAMES_STORED_MAX 241
bool names_stored(const char *name, char out[NAMES_STORED_MAX + 1]);
/* Is s (len bytes) a shortened stored name? */
bool names_is_shortened(const char *s, size_t len);
/* Is entry the record of a shortened name ("<stored>.~~")? Then *stored_len gets the length of
 * its stored name. */
bool names_is_record(const char *entry, size_t *stored_len);
/* The record's name, "<stored>.~~", for the stored name (len bytes, not necessarily
 * terminated, at most NAMES_STORED_MAX) */
#define NAMES_RECORD_MAX (NAMES_STORED_MAX + 3)
void names_record_of(const char *stored, size_t len, char out[NAMES_RECORD_MAX + 1]);

/* A tree directory's mirror in .versions/ has the directory's name, plus NAMES_MIRROR_SUFFIX
 * when the name itself could be taken for a version ("x.~3~"), for the store's own entries,
 * or for an escaped name (one already ending in the suffix). Injective, and never a version
 * name. */
#define NAMES_MIRROR_SUFFIX ".~~"
bool names_mirror_escaped(const char *name);
/* The mirror name of the tree directory name: name itself, or escaped into buf (len bytes).
 * NULL if it does not fit in buf: with NAME_MAX + 1 bytes, when it would be too long. */
const char *names_mirror(const char *name, char *buf, size_t len);
/* The length of the tree directory name that the mirror name c (len bytes, not
 * necessarily terminated) stands for. */
size_t names_mirror_unescaped_len(const char *c, size_t len);
/* A mirror whose tree directory was replaced by another one at its path is moved aside, out
 * of the way of the new directory's mirror, to "<mirror cut to 200 bytes>.~gone-<T>-<N>.~~"
 * (T: seconds since the epoch, N from 1). Such a name ends in the suffix, yet its prefix is
 * none that gets escaped: it is never a mirror, a version, a record or a store entry.
 * names_aside writes it to out (len bytes, NAME_MAX + 1 will do); false if it does not fit. */
#define NAMES_ASIDE_TAG ".~gone-"
bool names_aside(const char *mirror, long long t, unsigned n, char *out, size_t len);
bool names_is_aside(const char *entry);
/* The trusted.* attribute on each mirror directory naming the tree directory it mirrors
 * (store.c, docs/format.md): its file handle, or its inode and birth time, or "gone". */
#define NAMES_MIRROR_XATTR "trusted.binvfs.dir"
/* Is name one of the store's own entries in the top of .versions/? */
bool names_store_entry(const char *name);

/* Do open(2) flags ask for writing, or truncate? (O_PATH opens neither.) */
bool names_write_flags(unsigned long flags);

/* Length of the well-formed UTF-8 sequence at p (Unicode's table 3-7: no overlong form, no
 * surrogate, nothing above U+10FFFF), 0 if there is none: how the log, binvfsctl's escaping
 * and its JSON tell a name's characters from bytes of no character. */
int names_utf8_len(const unsigned char *p);
/* s as one line of printable text (malloc'd, NULL if out of memory): a byte of `named` becomes
 * a backslash and the letter at the same place in `letter` (the log: \\ \t \n \r; binvfsctl
 * also \a \b \v \f), every other control byte (C0, DEL, each byte of a C1 control) and every
 * byte of no UTF-8 character \xNN, well-formed UTF-8 as it is. The log and binvfsctl(8). */
char *names_escape(const char *s, const char *named, const char *letter);

#endif
