/* links.h - how many links of an inode are versions, so that a file reports the names it has
 * in the tree only (st_nlink). A kept version is a hard link of the replaced inode: the backing
 * link count counts the tree's names and the .versions/ entries together. */
#ifndef BINVFS_LINKS_H
#define BINVFS_LINKS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

void links_init(dev_t store_dev);
void links_free(void);

/* The store makes or removes a version link between links_begin() and links_end(), which
 * counts delta (+1, -1, or 0 if the call failed) for inode ino: no reader sees the link
 * without its count. Callers hold the store lock. */
void links_begin(void);
void links_end(ino_t ino, int delta);

/* The history index read a versions directory whose version entries have these inode numbers
 * (d_ino); counted once, when the directory joins the index. */
void links_add_read(const ino_t *inos, size_t n);
/* Every versions directory has been read once (or never will be): counts are complete. */
void links_index_done(void);

/* fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW) ("": dirfd itself, O_PATH will do) with
 * st_nlink = the names the file has in the tree: its links minus its .versions/ entries.
 * version_only: it is known to be a version and nothing else (its one link is in .versions/),
 * which holds before the index has read its directory. Returns 0 or -errno. */
int links_fstatat(int dirfd, const char *name, struct stat *st, bool version_only);

#endif
