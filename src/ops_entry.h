/* ops_entry.h - LOOKUP, FORGET, attributes and the namespace operations (ops_entry.c). */
#ifndef BINVFS_OPS_ENTRY_H
#define BINVFS_OPS_ENTRY_H

#include <fuse_lowlevel.h>

void bv_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void bv_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void bv_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets);
void bv_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
		struct fuse_file_info *fi);
void bv_readlink(fuse_req_t req, fuse_ino_t ino);
void bv_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void bv_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void bv_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void bv_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void bv_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void bv_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void bv_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
	       const char *newname, unsigned int flags);
void bv_statfs(fuse_req_t req, fuse_ino_t ino);

#endif
