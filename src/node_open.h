/* node_open.h - the open state of a node (node_open.c): its opens and their passthrough
 * backing id, the read fd its cached opens share, a directory opened for a listing. */
#ifndef BINVFS_NODE_OPEN_H
#define BINVFS_NODE_OPEN_H

#include <stdbool.h>

struct node;

/* An open of n. With pt, the open is answered through a passthrough backing id (returned,
 * > 0) when the node's other opens are (or it has none and the kernel takes its file);
 * otherwise 0: a cached open, served by READs. While a node has opens they are all of one
 * kind, as the kernel requires. node_close of its last open keeps the id registered for the
 * next open (up to PT_KEPT_MAX), or frees it; node_free frees a kept one. */
int node_open(struct node *n, bool pt);
void node_close(struct node *n);
void node_close_read(struct node *n);
/* The node's read fd while held: hold it for an open or a copy, release it after. */
int node_rdfd_hold(struct node *n);
void node_rdfd_release(struct node *n);
int node_rdfd(struct node *n); /* the read fd of a node that is held (READ of an open file) */
/* A directory opened O_RDONLY for a listing, under the atime policy of the mount. */
int node_open_dir(struct node *n);

#endif
