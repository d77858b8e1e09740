/* export.h - file handles made inside the mount, opened again (LOOKUP "." and ".."). */
#ifndef BINVFS_EXPORT_H
#define BINVFS_EXPORT_H

#include <stdint.h>

struct node;

/* The node of a nodeid from a file handle (LOOKUP "."), with one more kernel lookup: its
 * live node, or its object found again by its backing handle; NULL with errno ESTALE if the
 * nodeid names nothing (unknown, stale, forged, a writer's, its object gone). */
struct node *export_resolve(uint64_t id);
/* LOOKUP ".." of directory n (the kernel reconnecting a directory found by handle): its
 * parent with one more kernel lookup, or NULL (errno). Never above the root. */
struct node *export_parent(struct node *n);

#endif
