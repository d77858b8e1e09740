/* passthrough.c - kernel FUSE passthrough from libfuse 3.14 (kernel-notes §10).
 *
 * libfuse 3.14 knows neither the INIT flag nor the open reply's backing id, but it lets a
 * program own the session's reads and writes (fuse_session_custom_io). The read hook notes
 * whether the kernel's INIT offers passthrough; the write hook edits two replies on their way
 * to the kernel: INIT (ask for passthrough, max_stack_depth 1) and an OPEN or CREATE that the
 * calling thread marked (FOPEN_PASSTHROUGH and the backing id). The kernel's structures are
 * spelled out here: Debian 12's <linux/fuse.h> (7.38) predates their passthrough fields; each
 * is checked against the header's size and offsets where it has the structure.
 *
 * The bridge knows libfuse 3.14's replies (meson accepts 3.14.x only): an INIT reply is the
 * header and a whole fuse_init_out with the words it fills zero; an OPEN reply the header and a
 * fuse_open_out; a CREATE reply the header, a fuse_entry_out and a fuse_open_out; each with
 * the fh (and nodeid) the caller gave. A reply laid out otherwise is never edited: at INIT,
 * passthrough stays off and pt_status() says why; at an OPEN or CREATE, passthrough goes off
 * for the opens to come, one log line says so, and that open fails with EIO (its backing id
 * cannot be handed over). */
#define _GNU_SOURCE
#include "passthrough.h"
#include "fs.h"
#include "log.h"
#include "uring.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#define INIT2_PASSTHROUGH (1u << (37 - 32)) /* FUSE_PASSTHROUGH, in flags2 */
#define INIT2_DIO_MMAP	  (1u << (36 - 32)) /* FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6), in flags2 */
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

/* the copies above against <linux/fuse.h> where it has the structure */
#define SAME(ours, f, theirs, g)                                                                   \
	_Static_assert(offsetof(struct ours, f) == offsetof(struct theirs, g) &&                   \
			   sizeof(((struct ours *)0)->f) == sizeof(((struct theirs *)0)->g),       \
		       #ours "." #f)
_Static_assert(sizeof(struct in_header) == sizeof(struct fuse_in_header), "in_header");
SAME(in_header, len, fuse_in_header, len);
SAME(in_header, opcode, fuse_in_header, opcode);
SAME(in_header, unique, fuse_in_header, unique);
SAME(init_in, flags, fuse_init_in, flags);
SAME(init_in, flags2, fuse_init_in, flags2);
_Static_assert(sizeof(struct out_header) == sizeof(struct fuse_out_header), "out_header");
SAME(out_header, len, fuse_out_header, len);
SAME(out_header, error, fuse_out_header, error);
SAME(out_header, unique, fuse_out_header, unique);
_Static_assert(INIT_OUT_FLAGS == offsetof(struct fuse_init_out, flags), "init_out flags");
_Static_assert(INIT_OUT_TAIL == offsetof(struct fuse_init_out, flags2), "init_out flags2");
_Static_assert(INIT_OUT_TAIL + offsetof(struct init_out_tail, max_stack_depth) ==
		   offsetof(struct fuse_init_out, unused),
	       "init_out max_stack_depth: the first unused word of 7.38");
_Static_assert(sizeof(struct fuse_init_out) == 64, "init_out");
_Static_assert(sizeof(struct open_out) == sizeof(struct fuse_open_out), "open_out");
SAME(open_out, fh, fuse_open_out, fh);
SAME(open_out, open_flags, fuse_open_out, open_flags);
SAME(open_out, backing_id, fuse_open_out, padding);
_Static_assert(sizeof(struct backing_map) == 16, "backing_map (not in 7.38)");
_Static_assert(FUSE_INIT_EXT == 1u << 30, "FUSE_INIT_EXT");

static enum pt_want want;
static int devfd = -1;	      /* the session's /dev/fuse fd, -1 once detached (pt_detach) */
static uint64_t init_unique;  /* the INIT request, 0 once answered */
static bool offered;	      /* the kernel's INIT offered passthrough */
static bool negotiated;	      /* our INIT reply asked for it */
static bool offered_dio_mmap; /* the kernel's INIT offered shared mmaps of direct_io files */
static bool dio_mmap;	      /* our INIT reply asked for them */
static bool active;	      /* negotiated and the ioctl works: set before the request loop */
static char status[224] = "off (not negotiated yet)";
static const char *turned_off; /* set once if an OPEN/CREATE reply turned passthrough off */
static char init_layout[96];   /* how libfuse's INIT reply was not as expected; "" if it was */
/* The OPEN or CREATE reply this thread sends next: its backing id, its opcode, and what the
 * reply must carry (the fh given, and for CREATE the new entry's nodeid). */
static __thread struct {
	int id;
	uint32_t opcode;
	uint64_t fh, nodeid;
} reply;

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

	if (n == TMPFILE_LEN && in->opcode == FUSE_TMPFILE && !memcmp((char *)buf + n - 2, "/", 2))
		in->opcode = FUSE_CREATE;
}

/* ThreadSanitizer sees no order through /dev/fuse, but the kernel gives one: a request naming
 * an object (a nodeid, an fh) comes only after the reply that made it, and a RELEASE or FORGET
 * only after the replies to the requests that used it. The hooks model it for TSan builds:
 * every reply happens before every request read after it. Races between handlers that overlap
 * in time are still seen. */
#ifdef __SANITIZE_THREAD__
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char kernel_order;
#define KERNEL_REPLIED()  __tsan_release(&kernel_order)
#define KERNEL_RECEIVED() __tsan_acquire(&kernel_order)
#else
#define KERNEL_REPLIED()  ((void)0)
#define KERNEL_RECEIVED() ((void)0)
#endif

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = ended(read(fd, buf, len));
	const struct in_header *in = buf;

	(void)userdata;
	KERNEL_RECEIVED();
	if (n == (ssize_t)TMPFILE_LEN)
		relabel_tmpfile(buf, (size_t)n);
	if (n >= (ssize_t)(sizeof(*in) + sizeof(struct init_in)) && in->opcode == FUSE_INIT &&
	    !negotiated) {
		const struct init_in *arg = (const void *)(in + 1);
		init_unique = in->unique;
		offered = (arg->flags & FUSE_INIT_EXT) && (arg->flags2 & INIT2_PASSTHROUGH);
		offered_dio_mmap = (arg->flags & FUSE_INIT_EXT) && (arg->flags2 & INIT2_DIO_MMAP);
		uring_init_offered(arg->flags, arg->flags2);
	}
	return n;
}

static void patch_init(struct iovec *iov, int count)
{
	const struct out_header *out = iov[0].iov_base;
	const struct fuse_init_out *arg;

	if (iov[0].iov_len != sizeof(*out) || out->unique != init_unique)
		return;
	init_unique = 0;
	bool pt = offered && want != PT_OFF;
	if (out->error)
		return;
	arg = count == 2 ? iov[1].iov_base : NULL;
	if (!arg || iov[1].iov_len != sizeof(*arg) || out->len != sizeof(*out) + sizeof(*arg)) {
		if (pt)
			snprintf(init_layout, sizeof(init_layout), "%d parts, %zu bytes", count,
				 count == 2 ? iov[1].iov_len : 0);
		return;
	}
	if (arg->major != FUSE_KERNEL_VERSION || !(arg->flags & FUSE_INIT_EXT) ||
	    (arg->flags2 & (INIT2_PASSTHROUGH | INIT2_DIO_MMAP)) || arg->unused[0]) {
		if (pt)
			snprintf(init_layout, sizeof(init_layout),
				 "protocol %u.%u, flags %#x, flags2 %#x, max_stack_depth %u",
				 arg->major, arg->minor, arg->flags, arg->flags2, arg->unused[0]);
		return;
	}
	uint32_t *flags = (uint32_t *)((char *)iov[1].iov_base + INIT_OUT_FLAGS);
	struct init_out_tail *tail = (void *)((char *)iov[1].iov_base + INIT_OUT_TAIL);
	if (offered_dio_mmap) {
		/* a writer's copy is a direct_io open (pt_writer_direct): its shared mmaps must
		 * keep working */
		*flags |= FUSE_INIT_EXT;
		tail->flags2 |= INIT2_DIO_MMAP;
		dio_mmap = true;
	}
	if (uring_negotiate(&tail->flags2, arg->max_write,
			    (arg->flags & FUSE_MAX_PAGES) ? arg->max_pages : 0))
		*flags |= FUSE_INIT_EXT;
	if (!pt)
		return;
	*flags |= FUSE_INIT_EXT;
	tail->flags2 |= INIT2_PASSTHROUGH;
	tail->max_stack_depth = 1; /* 0 makes the kernel ignore the flag */
	negotiated = true;
}

/* The open_out of the reply iov[0..count) if it is the OPEN or CREATE reply this thread was
 * about to send (reply), laid out as libfuse 3.14 lays it out; NULL if it is not. */
static struct open_out *open_reply(struct iovec *iov, int count)
{
	const struct out_header *out = iov[0].iov_base;
	size_t entry = reply.opcode == FUSE_CREATE ? sizeof(struct fuse_entry_out) : 0;
	struct open_out *o;

	if (count != 2 || iov[0].iov_len != sizeof(*out) || out->error || !out->unique ||
	    iov[1].iov_len != entry + sizeof(*o) || out->len != sizeof(*out) + iov[1].iov_len)
		return NULL;
	if (entry && ((const struct fuse_entry_out *)iov[1].iov_base)->nodeid != reply.nodeid)
		return NULL;
	o = (void *)((char *)iov[1].iov_base + entry);
	return o->fh == reply.fh ? o : NULL;
}

/* A reply on its way: into the ring entry its request came on (uring.c), else to /dev/fuse. */
static ssize_t send_reply(int fd, struct iovec *iov, int count)
{
	ssize_t n;

	if (uring_reply(iov, count, &n))
		return n;
	return writev(fd, iov, count);
}

/* An OPEN or CREATE reply that does not look like one: passthrough goes off for the opens to
 * come; this one fails with EIO in place of the reply (the kernel gets an answer, the caller
 * -ENOENT as for an interrupted open, and undoes it). */
static ssize_t open_refused(int fd, struct iovec *iov, int count)
{
	static bool said;
	const struct out_header *out = iov[0].iov_base;
	struct out_header err = {.len = sizeof(err), .error = -EIO};

	__atomic_store_n(&active, false, __ATOMIC_RELAXED);
	if (!__atomic_exchange_n(&said, true, __ATOMIC_RELAXED)) {
		__atomic_store_n(
		    &turned_off,
		    reply.opcode == FUSE_CREATE
			? "off (libfuse's CREATE reply is not laid out as the bridge "
			  "expects)"
			: "off (libfuse's OPEN reply is not laid out as the bridge expects)",
		    __ATOMIC_RELEASE);
		log_warnx("passthrough: %s reply of %d parts, %zu bytes, not laid out as libfuse "
			  "3.14's: passthrough off for the opens to come, this one fails (EIO)",
			  reply.opcode == FUSE_CREATE ? "a CREATE" : "an OPEN", count,
			  count >= 1 ? iov[0].iov_len + (count >= 2 ? iov[1].iov_len : 0) : 0);
	}
	if (count < 1 || iov[0].iov_len != sizeof(*out))
		return writev(fd, iov, count); /* not even the header: as it is, unedited */
	err.unique = out->unique;
	if (send_reply(fd, &(struct iovec){&err, sizeof(err)}, 1) < 0)
		return -1;
	errno = ENOENT;
	return -1;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
	KERNEL_REPLIED();
	if (__builtin_expect(init_unique != 0, 0) && count >= 1)
		patch_init(iov, count);
	if (reply.id > 0) {
		struct open_out *o = open_reply(iov, count);
		if (!o)
			return open_refused(fd, iov, count);
		o->open_flags = (o->open_flags & ~FOPEN_KEEP_CACHE) | FOPEN_PASSTHROUGH;
		o->backing_id = reply.id;
	}
	return send_reply(fd, iov, count);
}

/* With custom io, libfuse splices only through these. */
static ssize_t hook_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			   unsigned int flags, void *userdata)
{
	ssize_t n;

	(void)userdata;
	if (fdout == devfd)
		KERNEL_REPLIED();
	n = ended(splice(fdin, offin, fdout, offout, len, flags));
	if (fdin == devfd)
		KERNEL_RECEIVED();
	return n;
}

/* libfuse splices a READ reply (FUSE_CAP_SPLICE_WRITE) from a pipe holding its header and data:
 * one for a ring request is read out of the pipe into its entry. */
static ssize_t hook_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
				unsigned int flags, void *userdata)
{
	ssize_t n;

	if (uring_splice_reply(fdin, fdout, len, &n))
		return n;
	return hook_splice(fdin, offin, fdout, offout, len, flags, userdata);
}

int pt_install(struct fuse_session *se, enum pt_want w)
{
	static const struct fuse_custom_io io = {
	    .read = hook_read,
	    .writev = hook_writev,
	    .splice_receive = hook_splice,
	    .splice_send = hook_splice_send,
	};

	want = w;
	devfd = fuse_session_fd(se);
	if (w == PT_OFF)
		snprintf(status, sizeof(status), "off (passthrough=off)");
	else if (fuse_version() != 314) { /* the library loaded, not the one built against */
		snprintf(status, sizeof(status),
			 "off (libfuse %d.%d at run time; the bridge knows 3.14's replies)",
			 fuse_version() / 100, fuse_version() % 100);
		want = PT_OFF;
	}
	return fuse_session_custom_io(se, &io, devfd);
}

bool pt_probe(int probe_fd)
{
	int id;

	if (want == PT_OFF)
		return false; /* status says why */
	if (!offered) {
		snprintf(status, sizeof(status),
			 "off (the kernel does not offer FUSE passthrough: "
			 "Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)");
		return false;
	}
	if (!negotiated && init_layout[0]) {
		snprintf(status, sizeof(status),
			 "off (libfuse's INIT reply is not laid out as the bridge expects: %s)",
			 init_layout);
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
	return __atomic_load_n(&active, __ATOMIC_RELAXED);
}

void pt_detach(void)
{
	__atomic_store_n(&devfd, -1, __ATOMIC_RELEASE);
}

const char *pt_status(void)
{
	const char *off = __atomic_load_n(&turned_off, __ATOMIC_ACQUIRE);

	return off ? off : status;
}

/* A writer's copy (kernel-notes §7): its WRITEs reach the daemon, which copies them into the
 * staging file. Through the page cache that is three copies of every byte (the caller's buffer
 * into the FUSE page cache, that into our buffer, that into the staging file), FUSE page cache
 * that nobody reads again, and a GETXATTR (security.capability) before each WRITE. As a
 * direct_io open the kernel sends the caller's own pages and asks nothing else: two copies. A
 * shared mmap of a direct_io file needs FUSE_DIRECT_IO_ALLOW_MMAP (else ENODEV), hence only
 * where the kernel grants it. (libfuse's splice of WRITEs off /dev/fuse would save one more
 * copy, but it costs every other request a second syscall, and libfuse 3.14 cannot be switched
 * to it and back safely: docs/performance.md.) */
bool pt_writer_direct(void)
{
	return dio_mmap;
}

int pt_backing_open(int fd)
{
	struct backing_map map = {.fd = fd};
	int dev = __atomic_load_n(&devfd, __ATOMIC_ACQUIRE), id;

	if (dev < 0)
		return -ENOTCONN;
	id = ioctl(dev, DEV_IOC_BACKING_OPEN, &map);
	return id < 0 ? -errno : id;
}

void pt_backing_close(int id)
{
	uint32_t bid = (uint32_t)id;
	int dev = __atomic_load_n(&devfd, __ATOMIC_ACQUIRE);

	if (dev < 0)
		return; /* the connection is gone, and every backing id with it */
	if (ioctl(dev, DEV_IOC_BACKING_CLOSE, &bid) < 0)
		log_warn("passthrough: closing backing id %d", id);
}

static long kept; /* backing ids kept for a next open (pt_backing_keep), atomic */

bool pt_backing_keep(void)
{
	if (__atomic_add_fetch(&kept, 1, __ATOMIC_RELAXED) <= PT_KEPT_MAX)
		return true;
	__atomic_sub_fetch(&kept, 1, __ATOMIC_RELAXED);
	return false;
}

void pt_backing_unkept(void)
{
	__atomic_sub_fetch(&kept, 1, __ATOMIC_RELAXED);
}

void pt_backing_unkeep(int id)
{
	pt_backing_unkept();
	pt_backing_close(id);
}

/* The reply this thread sends next answers an OPEN or CREATE through backing id (if > 0). */
static void expect_reply(int id, uint32_t opcode, struct fuse_file_info *fi, uint64_t nodeid)
{
	if (id > 0)
		fi->keep_cache = 0;
	reply.id = id;
	reply.opcode = opcode;
	reply.fh = fi->fh;
	reply.nodeid = nodeid;
}

int pt_reply_open(fuse_req_t req, struct fuse_file_info *fi, int id)
{
	int ret;

	expect_reply(id, FUSE_OPEN, fi, 0);
	ret = fuse_reply_open(req, fi);
	reply.id = 0;
	return ret;
}

int pt_reply_create(fuse_req_t req, const struct fuse_entry_param *e, struct fuse_file_info *fi,
		    int id)
{
	int ret;

	expect_reply(id, FUSE_CREATE, fi, e->ino);
	ret = fuse_reply_create(req, e, fi);
	reply.id = 0;
	return ret;
}
