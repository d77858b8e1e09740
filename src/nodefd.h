/* nodefd.h - how a node reaches its backing object (nodefd.c): a pinned O_PATH fd or a file
 * handle reopened into a per-thread ring, the fd budget, and the atime policy of reads. */
#ifndef BINVFS_NODEFD_H
#define BINVFS_NODEFD_H

#include <stdbool.h>

struct file_handle;
struct node;

void nodefd_init(int rootfd);
void nodefd_destroy(void);
bool nodefd_may_pin(void);
bool nodefd_may_cache(void);
void nodefd_count(long delta);
void nodefd_note_handles(void);
struct file_handle *nodefd_handle(int fd);
bool nodefd_same(const struct file_handle *a, const struct file_handle *b);
int nodefd_open(const struct file_handle *fh, int flags);
int nodefd_ring_get(struct node *n);
void nodefd_forget(struct node *n);
/* Atime: the policy of reads now (our mount's flags), and an open of a node's object for a
 * read under it: an fd, -1 (errno) if that open failed, -2: open as usual, -3: open as usual
 * with O_NOATIME (not permitted: without). */
enum { ATIME_STRICT, ATIME_RELATIME, ATIME_NEVER };
void nodefd_atime_init(const char *mountpoint, unsigned long ms_flags);
int nodefd_atime(bool dir);
int nodefd_open_atime(int pol, bool dir, int fd, const struct file_handle *fh, int flags);
int nodefd_atime_source(bool dir); /* the policy of SOURCE's own mount */

#endif
