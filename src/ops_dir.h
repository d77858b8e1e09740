/* ops_dir.h - directory listings, xattrs, the prune request and the status xattr (ops_dir.c). */
#ifndef BINVFS_OPS_DIR_H
#define BINVFS_OPS_DIR_H

#include <fuse_lowlevel.h>

void dirs_shutdown(void);
void bv_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void bv_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void bv_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void bv_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void bv_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
		 int flags);
void bv_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

#endif
