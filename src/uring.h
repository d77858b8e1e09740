/* uring.h - FUSE over io_uring (Linux >= 6.14, kernel-notes §11) driven from libfuse 3.14, which
 * has no ring of its own: after INIT, per-CPU rings of threads take the kernel's requests and
 * hand them to libfuse as if read from /dev/fuse; their replies, which libfuse writes through
 * the session's writev hook (passthrough.c), go back through the ring entry they came on.
 * FORGET, INTERRUPT and notifications stay on /dev/fuse, whose loop keeps running. */
#ifndef BINVFS_URING_H
#define BINVFS_URING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct fuse_session;

/* -o uring: ask for it at INIT when the kernel offers it. Before the session's first request. */
void uring_want(bool want);
/* The kernel's INIT request (its flags and flags2 words): notes whether it offers the ring. */
void uring_init_offered(uint32_t flags, uint32_t flags2);
/* libfuse's INIT reply is going out: if it is to ask for the ring, sets FUSE_OVER_IO_URING in
 * its *flags2 and returns true (the caller sets FUSE_INIT_EXT); max_write and max_pages (0 without
 * FUSE_MAX_PAGES) as the reply says, for the size of the payload buffers. */
bool uring_negotiate(uint32_t *flags2, uint32_t max_write, uint32_t max_pages);
/* After INIT was answered, in the process that serves (after fuse_daemonize and the watchdog's
 * fork): registers the rings' entries. If it cannot, the kernel goes back to /dev/fuse. */
void uring_start(struct fuse_session *se);
/* At the end of the session, after the unmount: the ring threads end. */
void uring_stop(void);

/* A reply libfuse is writing (iov[0] a fuse_out_header): if it answers a request that came
 * through a ring, it is copied into that ring entry, *sent its length, and true. */
bool uring_reply(const struct iovec *iov, int count, ssize_t *sent);

/* libfuse splices a reply (header and data, len bytes) from pipe: when the ring is in use it is
 * read out of the pipe and sent as uring_reply does, or written to fd (/dev/fuse). */
bool uring_splice_reply(int pipe, int fd, size_t len, ssize_t *sent);

/* "on (N requests through the rings)", "off (...)": the log and binvfsctl status */
const char *uring_status(void);

#endif
