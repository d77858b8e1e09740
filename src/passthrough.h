/* passthrough.h - kernel FUSE passthrough (Linux >= 6.9) driven from libfuse 3.14, which has no
 * API for it (kernel-notes §10): the kernel then serves READ, WRITE, splice and mmap of an open
 * file straight from a backing file the daemon names at OPEN. */
#ifndef BINVFS_PASSTHROUGH_H
#define BINVFS_PASSTHROUGH_H

#include <stdbool.h>

struct fuse_session;
struct fuse_file_info;
struct fuse_entry_param;
typedef struct fuse_req *fuse_req_t;

enum pt_want {
	PT_AUTO, /* use it when the kernel offers it and the backing-open ioctl works */
	PT_ON,	 /* refuse to mount without it */
	PT_OFF,	 /* every read goes through the daemon */
};

/* Between fuse_session_mount() and the first request: hooks the session's reads and writes
 * so that the INIT reply asks for passthrough when the kernel offers it (unless PT_OFF). */
int pt_install(struct fuse_session *se, enum pt_want want);
/* After INIT was answered: is passthrough usable? Tries the ioctl once on probe_fd (a regular
 * file of the store). Sets the reason pt_status() gives. */
bool pt_probe(int probe_fd);
bool pt_active(void);
const char *pt_status(void); /* "on", "off (...)", for the log and binvfsctl status */

/* The session's /dev/fuse fd is about to be closed or replaced (main.c: the unmount, or a pipe
 * dup2'd over it when the mount is not ours any more): from now on no backing id is opened and
 * none is closed by ioctl (the connection's end frees them all). */
void pt_detach(void);

/* The kernel's id for the backing file (an O_PATH fd is enough: the kernel opens the file
 * again, with each FUSE file's own flags), > 0, or -errno. */
int pt_backing_open(int fd);
void pt_backing_close(int id);
/* A backing id kept registered after its node's last RELEASE, for that node's next open
 * (node_open.c): at most PT_KEPT_MAX at a time. pt_backing_keep counts one in (false: the cap
 * is reached, close it instead); pt_backing_unkept counts one out that an open took again,
 * pt_backing_unkeep one that goes, and closes it. */
#define PT_KEPT_MAX 4096
bool pt_backing_keep(void);
void pt_backing_unkept(void);
void pt_backing_unkeep(int id);

/* fuse_reply_open / fuse_reply_create, answering through backing `id` when id > 0 (libfuse's
 * reply is patched on its way out: FOPEN_PASSTHROUGH and the id; never FOPEN_KEEP_CACHE). */
int pt_reply_open(fuse_req_t req, struct fuse_file_info *fi, int id);
int pt_reply_create(fuse_req_t req, const struct fuse_entry_param *e, struct fuse_file_info *fi,
		    int id);

/* May a writer's copy be a direct_io open (the kernel keeps its shared mmaps working)? */
bool pt_writer_direct(void);

#endif
