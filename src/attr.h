/* attr.h - what the kernel is told of a node (its stat, how long it may keep its attributes
 * and its name) and metadata changes applied in place. No FUSE requests here. */
#ifndef BINVFS_ATTR_H
#define BINVFS_ATTR_H

#include "fs.h"

/* Seconds the kernel may keep the attributes of n. */
double attr_timeout(const struct node *n);
/* The I/O size cp and stdio size their requests by (st_blksize of a regular file). */
void attr_set_io_size(struct stat *st);
/* The entry of a LOOKUP-like reply; `cache`: the kernel may keep the name (route_lookup()). */
void fill_entry(struct fuse_entry_param *e, struct node *n, const struct stat *st, bool cache);
/* The stat of a node as the tree shows it (links count tree names only). */
int node_stat(struct node *n, struct stat *st);
/* The stat of a writer's file: its copy (fd, or -1 for none yet) with the inode it opened. */
int staging_stat(struct node *stg, int fd, struct stat *st);
/* chmod/chown/utimens in place, through fd if >= 0, else through the node. */
int meta_apply(struct node *n, int fd, const struct stat *attr, int valid);
/* The mode a node made for a caller with umask `umask` gets (a default ACL replaces it). */
mode_t create_mode(struct node *parent, mode_t mode, mode_t umask);
/* Give the node fd, just made by the daemon, to uid:gid, keeping the mode it was made with. */
void give_to(int fd, uid_t uid, gid_t gid);
/* May the caller (thread tid, fs gid fsgid) keep the setuid/setgid bits of a file of group gid
 * that it changes? With CAP_FSETID; by_group: also when it is in that group. */
bool caller_keeps(pid_t tid, gid_t fsgid, gid_t gid, bool by_group);
/* The setuid/setgid bits of a file of stat st that a change of its content by the caller
 * (write, fallocate, truncate, O_TRUNC) drops, as the kernel's setattr_should_drop_suidgid. */
mode_t privs_dropped(pid_t tid, gid_t fsgid, const struct stat *st);

#endif
