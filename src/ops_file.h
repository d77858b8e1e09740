/* ops_file.h - the operations on open files: OPEN/CREATE, READ/WRITE, FLUSH/RELEASE, locks
 * (ops_file.c). */
#ifndef BINVFS_OPS_FILE_H
#define BINVFS_OPS_FILE_H

#include <fuse_lowlevel.h>

void bv_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi);
void bv_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void bv_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
		  struct fuse_file_info *fi);
void bv_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void bv_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void bv_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
		  struct fuse_file_info *fi);
void bv_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);
void bv_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock);
void bv_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock,
	      int sleep);
void bv_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op);
void bv_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			struct fuse_file_info *fi_out, size_t len, int flags);

#endif
