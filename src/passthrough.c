/* passthrough.c - kernel FUSE passthrough from libfuse 3.14 (kernel-notes §10).
 *
 * libfuse 3.14 knows neither the INIT flag nor the open reply's backing id, but it lets a
 * program own the session's reads and writes (fuse_session_custom_io). The read hook notes
 * whether the kernel's INIT offers passthrough; the write hook edits two replies on their way
 * to the kernel: INIT (ask for passthrough, max_stack_depth 1) and an OPEN or CREATE that the
 * calling thread marked (FOPEN_PASSTHROUGH and the backing id). The kernel's structures are
 * spelled out here: Debian 12's headers predate them. */
#define _GNU_SOURCE
#include "passthrough.h"
#include "fs.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#define OP_INIT		  26
#define OP_CREATE	  35
#define OP_TMPFILE	  51		    /* FUSE_TMPFILE, unknown to libfuse 3.14 */
#define INIT_EXT	  (1u << 30)	    /* fuse_init_in/out: flags2 is meaningful */
#define INIT2_PASSTHROUGH (1u << (37 - 32)) /* FUSE_PASSTHROUGH, in flags2 */
#define FOPEN_KEEP_CACHE_ (1u << 1)
#define FOPEN_PASSTHROUGH (1u << 7)

struct in_header { /* struct fuse_in_header */
	uint32_t len, opcode;
	uint64_t unique, nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};
struct init_in { /* struct fuse_init_in, 7.36+ */
	uint32_t major, minor, max_readahead, flags, flags2;
};
struct out_header { /* struct fuse_out_header */
	uint32_t len;
	int32_t error;
	uint64_t unique;
};
struct init_out_tail { /* struct fuse_init_out from offset 32 (7.40+) */
	uint32_t flags2, max_stack_depth;
};
#define INIT_OUT_TAIL  32
#define INIT_OUT_FLAGS 12
struct open_out { /* struct fuse_open_out, 7.40+ */
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};
struct backing_map { /* struct fuse_backing_map */
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define DEV_IOC_BACKING_OPEN  _IOW(229, 1, struct backing_map)
#define DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

static enum pt_want want;
static int devfd = -1;	     /* the session's /dev/fuse fd */
static uint64_t init_unique; /* the INIT request, 0 once answered */
static bool offered;	     /* the kernel's INIT offered passthrough */
static bool negotiated;	     /* our INIT reply asked for it */
static bool active;	     /* negotiated and the ioctl works: set before the request loop */
static char status[160] = "off (not negotiated yet)";
static __thread int reply_id; /* the OPEN/CREATE reply this thread sends next: its backing id */

/* The last user of a detached mount (umount -l) gone, the kernel aborts the connection and
 * reads fail with ECONNABORTED, which libfuse 3.14 takes for an error (exit 1, and a
 * "reading device" message): it is the normal end of such a mount, like ENODEV. */
static ssize_t ended(ssize_t n)
{
	if (n < 0 && errno == ECONNABORTED)
		errno = ENODEV;
	return n;
}

/* O_TMPFILE: the kernel sends FUSE_TMPFILE with CREATE's request and expects CREATE's reply;
 * the request is a fuse_create_in and the name "/", which no real CREATE carries (a name has
 * no slash). libfuse 3.14 answers an opcode it does not know with ENOSYS, after which the
 * kernel says EOPNOTSUPP for good: relabel it CREATE, and bv_create tells it by its name.
 * Seen: with this custom io libfuse 3.14 reads every request through hook_read (its splice
 * receive was never called, a 1 MiB WRITE included); one that spliced requests past it would
 * leave O_TMPFILE at EOPNOTSUPP (tests/test_tmpfile.py would say so). */
#define TMPFILE_LEN (sizeof(struct in_header) + 16 + 2) /* + fuse_create_in + "/" */

static void relabel_tmpfile(void *buf, size_t n)
{
	struct in_header *in = buf;

	if (n == TMPFILE_LEN && in->opcode == OP_TMPFILE && !memcmp((char *)buf + n - 2, "/", 2))
		in->opcode = OP_CREATE;
}

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = ended(read(fd, buf, len));
	const struct in_header *in = buf;

	(void)userdata;
	if (n == (ssize_t)TMPFILE_LEN)
		relabel_tmpfile(buf, (size_t)n);
	if (n >= (ssize_t)(sizeof(*in) + sizeof(struct init_in)) && in->opcode == OP_INIT &&
	    !negotiated) {
		const struct init_in *arg = (const void *)(in + 1);
		init_unique = in->unique;
		offered = (arg->flags & INIT_EXT) && (arg->flags2 & INIT2_PASSTHROUGH);
	}
	return n;
}

static void patch_init(struct iovec *iov, int count)
{
	const struct out_header *out = iov[0].iov_base;

	if (out->unique != init_unique || out->error || count != 2 ||
	    iov[1].iov_len < INIT_OUT_TAIL + sizeof(struct init_out_tail))
		return;
	init_unique = 0;
	if (!offered || want == PT_OFF)
		return;
	uint32_t *flags = (uint32_t *)((char *)iov[1].iov_base + INIT_OUT_FLAGS);
	struct init_out_tail *tail = (void *)((char *)iov[1].iov_base + INIT_OUT_TAIL);
	*flags |= INIT_EXT;
	tail->flags2 |= INIT2_PASSTHROUGH;
	tail->max_stack_depth = 1; /* 0 makes the kernel ignore the flag */
	negotiated = true;
}

static void patch_open(struct iovec *iov, int count)
{
	const struct out_header *out = iov[0].iov_base;
	struct iovec *last = &iov[count - 1];
	struct open_out *o;

	if (out->error || count < 2 || last->iov_len < sizeof(*o))
		return;
	o = (void *)((char *)last->iov_base + last->iov_len - sizeof(*o));
	o->open_flags = (o->open_flags & ~FOPEN_KEEP_CACHE_) | FOPEN_PASSTHROUGH;
	o->backing_id = reply_id;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
	if (__builtin_expect(init_unique != 0, 0) && count >= 1)
		patch_init(iov, count);
	if (reply_id > 0)
		patch_open(iov, count);
	return writev(fd, iov, count);
}

/* With custom io, libfuse splices only through these. */
static ssize_t hook_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			   unsigned int flags, void *userdata)
{
	(void)userdata;
	return ended(splice(fdin, offin, fdout, offout, len, flags));
}

int pt_install(struct fuse_session *se, enum pt_want w)
{
	static const struct fuse_custom_io io = {
	    .read = hook_read,
	    .writev = hook_writev,
	    .splice_receive = hook_splice,
	    .splice_send = hook_splice,
	};

	want = w;
	devfd = fuse_session_fd(se);
	if (w == PT_OFF)
		snprintf(status, sizeof(status), "off (passthrough=off)");
	return fuse_session_custom_io(se, &io, devfd);
}

bool pt_probe(int probe_fd)
{
	int id;

	if (want == PT_OFF)
		return false;
	if (!offered) {
		snprintf(status, sizeof(status),
			 "off (the kernel does not offer FUSE passthrough: "
			 "Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)");
		return false;
	}
	if (!negotiated) {
		snprintf(status, sizeof(status), "off (INIT reply could not ask for it)");
		return false;
	}
	id = pt_backing_open(probe_fd);
	if (id < 0) {
		snprintf(status, sizeof(status), "off (backing open: %s%s)", strerror(-id),
			 id == -EPERM	? "; the daemon lacks CAP_SYS_ADMIN"
			 : id == -ELOOP ? "; SOURCE is on a stacked filesystem such as overlayfs"
					: "");
		return false;
	}
	pt_backing_close(id);
	active = true;
	snprintf(status, sizeof(status), "on");
	return true;
}

bool pt_active(void)
{
	return active;
}

const char *pt_status(void)
{
	return status;
}

int pt_backing_open(int fd)
{
	struct backing_map map = {.fd = fd};
	int id = ioctl(devfd, DEV_IOC_BACKING_OPEN, &map);

	return id < 0 ? -errno : id;
}

void pt_backing_close(int id)
{
	uint32_t bid = (uint32_t)id;

	if (ioctl(devfd, DEV_IOC_BACKING_CLOSE, &bid) < 0)
		log_warn("passthrough: closing backing id %d", id);
}

int pt_reply_open(fuse_req_t req, struct fuse_file_info *fi, int id)
{
	int ret;

	if (id > 0)
		fi->keep_cache = 0;
	reply_id = id;
	ret = fuse_reply_open(req, fi);
	reply_id = 0;
	return ret;
}

int pt_reply_create(fuse_req_t req, const struct fuse_entry_param *e, struct fuse_file_info *fi,
		    int id)
{
	int ret;

	if (id > 0)
		fi->keep_cache = 0;
	reply_id = id;
	ret = fuse_reply_create(req, e, fi);
	reply_id = 0;
	return ret;
}
