/* nodeid.h - nodeids: the numbers the kernel knows nodes by, which file handles carry
 * (name_to_handle_at inside the mount: nodeid + generation, docs/design.md §3). */
#ifndef BINVFS_NODEID_H
#define BINVFS_NODEID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct node;
struct file_handle;

#define NODEID_ROOT 1

void nodeid_init(struct node *root);
void nodeid_destroy(void);
/* Give n (dev, ino, in_versions, kind set) its nodeid in n->id: the one a forgotten node of the
 * same backing object had (fh: its handle on the backing filesystem, compared), else a new
 * one. fh NULL: the node cannot be found again once freed (a writer's node, or a filesystem
 * without handles). Called with the node table's lock held; false: out of memory. */
bool nodeid_attach(struct node *n, const struct file_handle *fh);
/* n is freed (table lock held, or n is unreachable): its nodeid keeps its backing handle, so
 * a file handle that names it can find the object again (nodeid_forgotten); without one, or
 * when too many are kept, the nodeid is free for another object, with another generation. */
void nodeid_detach(struct node *n);
/* The live node of a nodeid, or NULL. The kernel's requests name live nodes; an id from a file
 * handle (LOOKUP ".") is checked with the table lock held (node_lookup_id). */
struct node *nodeid_node(uint64_t id);
/* A copy of the backing handle a forgotten nodeid keeps (malloc'd; *in_versions: a directory of
 * the .versions/ view; *kind: its node's enum node_kind), NULL if it keeps none. */
struct file_handle *nodeid_forgotten(uint64_t id, bool *in_versions, int *kind);
/* The object of a forgotten nodeid is gone: the nodeid is free. */
void nodeid_drop(uint64_t id);
/* The nodeid table a clean stop leaves for the next mount, so that file handles made inside
 * the mount survive it (docs/format.md, "The nodeid table"; main.c reads and writes it through
 * store.c). nodeid_table_build, after the session ended: every nodeid that keeps a backing
 * handle of an object on SOURCE's filesystem (rootfd), live or forgotten, the newest MAX_KEPT,
 * as the table's bytes (malloc'd, *len of them); NULL if none or out of memory. */
void *nodeid_table_build(int rootfd, size_t *len, uint32_t *count);
/* At mount, after nodeid_init and before the first request: table (len bytes) checked whole
 * (never trusted: size, checksum, this SOURCE, every field) and its nodeids taken as forgotten
 * ones, which find their objects again by handle; new nodeids go to other indexes or later
 * generations. NULL, or why the table was not taken (nothing of it is). */
const char *nodeid_table_take(const void *table, size_t len, int rootfd, uint32_t *count);
/* The largest table nodeid_table_build makes. */
size_t nodeid_table_max(void);
/* The generation an entry reply gives the kernel (the kernel checks it against a handle's). */
static inline uint32_t nodeid_gen(uint64_t id)
{
	return (uint32_t)(id >> 32);
}

#endif
