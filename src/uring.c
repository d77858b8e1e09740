/* uring.c - FUSE over io_uring from libfuse 3.14 (kernel-notes §11; docs/design.md §14).
 *
 * The kernel (fs/fuse/dev_uring.c, Linux >= 6.14) keeps one queue per possible CPU and sends a
 * request to the queue of the CPU its caller runs on, into a ring entry the daemon registered:
 * an IORING_OP_URING_CMD on /dev/fuse whose completion says "a request is in your buffers".
 * The daemon answers it and re-arms the entry in one step (COMMIT_AND_FETCH). Until every
 * queue has an entry, and for FORGET, INTERRUPT and notifications always, /dev/fuse is used.
 *
 * Here every ring thread owns one io_uring and one entry: it waits for a request, rebuilds it
 * as /dev/fuse would have delivered it (fuse_in_header, op header, payload: the payload stays
 * where the kernel wrote it, the headers are copied in front of it), hands it to libfuse, and
 * commits the reply libfuse wrote (passthrough.c's writev hook calls uring_reply). A thread
 * serves one request at a time, like a worker of libfuse's loop, so a slow one (a publish at
 * FLUSH, a bounded /proc read) holds that thread only: when a queue has no idle thread left,
 * the thread taking a request first starts another one for that queue (up to THREADS_MAX).
 * A reply that comes later from another thread (a parked F_SETLKW, locks.c) is found by its
 * unique among the threads' requests, copied into the entry under `lock`, and the owner, which
 * waits for it, commits it: only the owner ever submits to its ring, because the kernel
 * delivers the entry's next request in the submitting task's context (task work). */
#define _GNU_SOURCE
#include "uring.h"
#include "log.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

/* The kernel's ABI for the ring, from include/uapi/linux/fuse.h (protocol 7.42: struct
 * fuse_uring_ent_in_out, struct fuse_uring_req_header, enum fuse_uring_cmd, struct
 * fuse_uring_cmd_req, FUSE_OVER_IO_URING), which Debian 12's <linux/fuse.h> (7.38) lacks. */
#define INIT2_OVER_IO_URING (1u << (41 - 32)) /* FUSE_OVER_IO_URING, in flags2 */
#define URING_IN_OUT_SZ	    128		      /* FUSE_URING_IN_OUT_HEADER_SZ */
#define URING_OP_SZ	    128		      /* FUSE_URING_OP_IN_OUT_SZ */
struct uring_ent_in_out {		      /* struct fuse_uring_ent_in_out */
	uint64_t flags;
	uint64_t commit_id;  /* the request's unique: what COMMIT_AND_FETCH names */
	uint32_t payload_sz; /* request: payload bytes the kernel wrote; reply: ours */
	uint32_t padding;
	uint64_t reserved;
};
struct uring_req_header {	      /* struct fuse_uring_req_header: iov[0] of an entry */
	char in_out[URING_IN_OUT_SZ]; /* fuse_in_header in, fuse_out_header out */
	char op_in[URING_OP_SZ];      /* the request's first argument (its op header) */
	struct uring_ent_in_out ent;
};
enum { URING_CMD_REGISTER = 1, URING_CMD_COMMIT_AND_FETCH = 2 }; /* enum fuse_uring_cmd */
struct uring_cmd_req { /* struct fuse_uring_cmd_req, in the SQE's command area */
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};
_Static_assert(sizeof(struct uring_ent_in_out) == 32, "fuse_uring_ent_in_out");
_Static_assert(sizeof(struct uring_req_header) == 288, "fuse_uring_req_header");
_Static_assert(sizeof(struct uring_cmd_req) == 24, "fuse_uring_cmd_req");
_Static_assert(sizeof(struct fuse_in_header) == 40 && sizeof(struct fuse_out_header) == 16,
	       "fuse_in_header, fuse_out_header");

#define THREADS_START 2	 /* per queue, at start */
#define THREADS_MAX   32 /* per queue: parked lock waiters beyond it stall that CPU's queue */
#define UD_ENTRY      1	 /* user_data of the entry's command */
#define UD_STOP	      2	 /* ... of the poll on stop_fd */

struct queue {
	unsigned qid;
	int threads, idle; /* under lock / atomic */
};

struct ring_thread {
	struct io_uring ring;
	struct queue *q;
	pthread_t tid;
	bool ring_made, registered, ended;
	struct uring_req_header hdr;
	struct iovec iov[2];
	char *map;	/* one page of room for the headers, then the payload */
	size_t map_len; /* ... */
	char *payload;
	uint64_t unique; /* the request in hand (atomic), 0 when none */
	bool replied;	 /* its reply is in the entry (atomic) */
};

static bool want, offered, negotiated;
static size_t payload_max;
static char status[160] = "off";
static struct fuse_session *se;
static int devfd = -1, stop_fd = -1;
static unsigned nqueues;
static struct queue *queues;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER; /* a deferred reply came; a thread ended */
static struct ring_thread **threads;		       /* under lock: every thread started */
static size_t nthreads, cap;
static bool stopping; /* under lock */
static bool active;   /* every queue had an entry registered (atomic) */
static uint64_t served;
static __thread struct ring_thread *cur; /* the ring thread this is, while it serves */

void uring_want(bool w)
{
	want = w;
	if (w)
		snprintf(status, sizeof(status), "off (not negotiated yet)");
}

void uring_init_offered(uint32_t flags, uint32_t flags2)
{
	offered = (flags & FUSE_INIT_EXT) && (flags2 & INIT2_OVER_IO_URING);
}

/* The kernel blocks every new request from INIT's reply until the rings are up (or a REGISTER
 * failed), so ask only when this process can make one: io_uring may be disabled
 * (kernel.io_uring_disabled) or refused by a seccomp filter. */
static bool can_make_ring(void)
{
	struct io_uring r;
	struct io_uring_params p = {.flags = IORING_SETUP_SQE128};
	int e = io_uring_queue_init_params(2, &r, &p);

	if (e < 0) {
		snprintf(status, sizeof(status), "off (io_uring_setup: %s)", strerror(-e));
		return false;
	}
	io_uring_queue_exit(&r);
	return true;
}

bool uring_negotiate(uint32_t *flags2, uint32_t max_write, uint32_t max_pages)
{
	long page = sysconf(_SC_PAGESIZE);

	if (!want)
		return false;
	if (!offered) {
		snprintf(status, sizeof(status),
			 "off (the kernel does not offer FUSE over io_uring: Linux >= 6.14 with "
			 "CONFIG_FUSE_IO_URING and /sys/module/fuse/parameters/enable_uring Y)");
		return false;
	}
	if (!can_make_ring())
		return false;
	/* the kernel's max_payload_sz: max(FUSE_MIN_READ_BUFFER, max_write, max_pages pages),
	 * with its default of 32 pages when the reply does not set max_pages */
	payload_max = 8192;
	if (max_write > payload_max)
		payload_max = max_write;
	if ((size_t)(max_pages ? max_pages : 32) * (size_t)page > payload_max)
		payload_max = (size_t)(max_pages ? max_pages : 32) * (size_t)page;
	*flags2 |= INIT2_OVER_IO_URING;
	negotiated = true;
	snprintf(status, sizeof(status), "off (no queue registered yet)");
	return true;
}

/* The possible CPUs (the kernel's num_possible_cpus(): one queue each). */
static unsigned possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	unsigned a = 0, b = 0, n = 0;
	int c;

	if (!f)
		return (unsigned)sysconf(_SC_NPROCESSORS_CONF);
	while (fscanf(f, "%u", &a) == 1) {
		b = a;
		c = fgetc(f);
		if (c == '-' && fscanf(f, "%u", &b) == 1)
			c = fgetc(f);
		if (b + 1 > n)
			n = b + 1;
		if (c != ',')
			break;
	}
	fclose(f);
	return n ? n : 1;
}

static int submit_cmd(struct ring_thread *t, uint32_t op, uint64_t commit_id)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
	struct uring_cmd_req *req;

	if (!sqe)
		return -EBUSY;
	memset(sqe, 0, 2 * sizeof(*sqe)); /* SQE128: the command area runs into the next 64 */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = devfd;
	sqe->cmd_op = op;
	sqe->addr = (uintptr_t)t->iov;
	sqe->len = 2;
	sqe->user_data = UD_ENTRY;
	req = (struct uring_cmd_req *)sqe->cmd;
	req->commit_id = commit_id;
	req->qid = (uint16_t)t->q->qid;
	return io_uring_submit(&t->ring) < 0 ? -EIO : 0;
}

/* One ring per thread, which only that thread submits to: with DEFER_TASKRUN the kernel's
 * work for it runs while the thread waits for completions, not by interrupting it. */
static int ring_setup(struct ring_thread *t)
{
	static const unsigned tries[] = {
	    IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	    IORING_SETUP_SQE128 | IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SQE128};
	int e = -EINVAL;

	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p = {.flags = tries[i]};
		e = io_uring_queue_init_params(4, &t->ring, &p);
		if (e == 0)
			return 0;
	}
	return e;
}

/* Near the queue's CPU, as libfuse 3.18 does: the caller waits there. */
static void pin(unsigned cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set); /* offline: stays unpinned */
}

static void spawn(struct queue *q);

/* The reply, as libfuse wrote it, into t's entry. */
static ssize_t fill(struct ring_thread *t, const struct iovec *iov, int count)
{
	struct fuse_out_header *out = (struct fuse_out_header *)t->hdr.in_out;
	size_t n = 0;

	for (int i = 1; i < count; i++)
		n += iov[i].iov_len;
	memcpy(out, iov[0].iov_base, sizeof(*out));
	if (n > payload_max) { /* cannot be: the kernel sized its requests by it */
		out->error = -EIO;
		t->hdr.ent.payload_sz = 0;
		return (ssize_t)(sizeof(*out) + n);
	}
	n = 0;
	for (int i = 1; i < count; i++) {
		memmove(t->payload + n, iov[i].iov_base, iov[i].iov_len);
		n += iov[i].iov_len;
	}
	t->hdr.ent.payload_sz = (uint32_t)n;
	return (ssize_t)(sizeof(*out) + n);
}

bool uring_reply(const struct iovec *iov, int count, ssize_t *sent)
{
	const struct fuse_out_header *out = iov[0].iov_base;
	struct ring_thread *t = cur;
	bool found = false;

	if (!__atomic_load_n(&negotiated, __ATOMIC_RELAXED) || count < 1 ||
	    iov[0].iov_len < sizeof(*out) || !out->unique)
		return false; /* a notification (unique 0) goes to /dev/fuse */
	if (t && __atomic_load_n(&t->unique, __ATOMIC_RELAXED) == out->unique) {
		*sent = fill(t, iov, count); /* the common case: this thread's own request */
		__atomic_store_n(&t->replied, true, __ATOMIC_RELEASE);
		return true;
	}
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < nthreads && !found; i++) {
		t = threads[i];
		if (__atomic_load_n(&t->unique, __ATOMIC_ACQUIRE) == out->unique &&
		    !__atomic_load_n(&t->replied, __ATOMIC_ACQUIRE)) {
			*sent = fill(t, iov, count);
			__atomic_store_n(&t->replied, true, __ATOMIC_RELEASE);
			pthread_cond_broadcast(&cond);
			found = true;
		}
	}
	pthread_mutex_unlock(&lock);
	return found; /* not a ring request (an INTERRUPT's EAGAIN, a /dev/fuse request) */
}

static bool read_all(int fd, void *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			return false;
		}
		p = (char *)p + r;
		n -= (size_t)r;
	}
	return true;
}

bool uring_splice_reply(int pipe, int fd, size_t len, ssize_t *sent)
{
	struct fuse_out_header out;
	struct ring_thread *t = cur;
	struct iovec iov[2] = {{&out, sizeof(out)}, {NULL, 0}};

	if (!__atomic_load_n(&negotiated, __ATOMIC_RELAXED) || len < sizeof(out))
		return false;
	*sent = -1;
	if (!read_all(pipe, &out, sizeof(out)))
		return true;
	iov[1].iov_len = len - sizeof(out);
	if (t && __atomic_load_n(&t->unique, __ATOMIC_RELAXED) == out.unique &&
	    iov[1].iov_len <= payload_max) {
		/* this thread's own request: straight into its entry */
		if (!read_all(pipe, t->payload, iov[1].iov_len))
			return true;
		memcpy(t->hdr.in_out, &out, sizeof(out));
		t->hdr.ent.payload_sz = (uint32_t)iov[1].iov_len;
		__atomic_store_n(&t->replied, true, __ATOMIC_RELEASE);
		*sent = (ssize_t)len;
		return true;
	}
	iov[1].iov_base = malloc(iov[1].iov_len ? iov[1].iov_len : 1);
	if (!iov[1].iov_base) {
		errno = ENOMEM;
		return true;
	}
	if (read_all(pipe, iov[1].iov_base, iov[1].iov_len) && !uring_reply(iov, 2, sent))
		*sent = writev(fd, iov, 2);
	free(iov[1].iov_base);
	return true;
}

/* The request in t's entry, to libfuse as /dev/fuse would have delivered it; then its reply. */
static void serve(struct ring_thread *t)
{
	struct fuse_in_header in;
	uint32_t psz = t->hdr.ent.payload_sz;
	struct fuse_out_header *out = (struct fuse_out_header *)t->hdr.in_out;

	memcpy(&in, t->hdr.in_out, sizeof(in));
	__atomic_add_fetch(&served, 1, __ATOMIC_RELAXED);
	if (in.len < sizeof(in) + psz || in.len - sizeof(in) - psz > URING_OP_SZ ||
	    psz > payload_max) {
		log_warnx("uring: a request of %u bytes with %u of payload: answered EIO", in.len,
			  psz);
		*out = (struct fuse_out_header){
		    .len = sizeof(*out), .error = -EIO, .unique = in.unique};
		t->hdr.ent.payload_sz = 0;
		return;
	}
	size_t op = in.len - sizeof(in) - psz;
	char *start = t->payload - sizeof(in) - op;
	memcpy(start, &in, sizeof(in));
	memcpy(start + sizeof(in), t->hdr.op_in, op);
	struct fuse_buf buf = {.size = in.len, .mem = start};

	__atomic_store_n(&t->replied, false, __ATOMIC_RELAXED);
	__atomic_store_n(&t->unique, in.unique, __ATOMIC_RELEASE);
	cur = t;
	fuse_session_process_buf(se, &buf);
	cur = NULL;
	if (!__atomic_load_n(&t->replied, __ATOMIC_ACQUIRE)) {
		/* deferred: another thread answers it (uring_reply), or the session ends */
		pthread_mutex_lock(&lock);
		while (!__atomic_load_n(&t->replied, __ATOMIC_ACQUIRE) && !stopping)
			pthread_cond_wait(&cond, &lock);
		pthread_mutex_unlock(&lock);
	}
	pthread_mutex_lock(&lock);
	__atomic_store_n(&t->unique, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&lock);
}

static void *ring_main(void *arg)
{
	struct ring_thread *t = arg;
	bool ok = true;
	int e;

	e = ring_setup(t);
	if (e < 0) {
		log_warnx("uring: queue %u: io_uring_setup: %s", t->q->qid, strerror(-e));
		goto out;
	}
	t->ring_made = true;
	pin(t->q->qid);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
	io_uring_prep_poll_add(sqe, stop_fd, POLLIN);
	sqe->user_data = UD_STOP;
	if (submit_cmd(t, URING_CMD_REGISTER, 0) < 0)
		ok = false;
	while (ok) {
		struct io_uring_cqe *cqe;
		__atomic_add_fetch(&t->q->idle, 1, __ATOMIC_RELAXED);
		e = io_uring_wait_cqe(&t->ring, &cqe);
		int idle = __atomic_sub_fetch(&t->q->idle, 1, __ATOMIC_RELAXED);
		if (e == -EINTR)
			continue;
		if (e < 0) {
			log_warnx("uring: queue %u: waiting: %s", t->q->qid, strerror(-e));
			break;
		}
		uint64_t ud = cqe->user_data;
		int res = cqe->res;
		io_uring_cqe_seen(&t->ring, cqe);
		if (ud == UD_STOP)
			break;
		if (res == -EAGAIN && !t->registered) { /* INIT's reply not taken in yet */
			usleep(1000);
			ok = submit_cmd(t, URING_CMD_REGISTER, 0) == 0;
			continue;
		}
		if (res < 0) {
			/* ENOTCONN, ECONNABORTED, ECANCELED: the connection ends */
			if (res != -ENOTCONN && res != -ECONNABORTED && res != -ECANCELED)
				log_warnx("uring: queue %u: %s: %s", t->q->qid,
					  t->registered ? "commit and fetch" : "register",
					  strerror(-res));
			break;
		}
		t->registered = true;
		if (idle <= 0)
			spawn(t->q); /* keep a thread of this queue waiting */
		serve(t);
		uint64_t unique = t->hdr.ent.commit_id;
		pthread_mutex_lock(&lock);
		ok = !stopping;
		pthread_mutex_unlock(&lock);
		if (ok)
			ok = submit_cmd(t, URING_CMD_COMMIT_AND_FETCH, unique) == 0;
	}
out:
	pthread_mutex_lock(&lock);
	t->ended = true;
	t->q->threads--; /* a thread whose ring failed may be replaced (spawn) */
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	return NULL;
}

static void spawn(struct queue *q)
{
	struct ring_thread *t;
	long page = sysconf(_SC_PAGESIZE);

	pthread_mutex_lock(&lock);
	if (stopping || q->threads >= THREADS_MAX) {
		pthread_mutex_unlock(&lock);
		return;
	}
	if (nthreads == cap) {
		size_t n = cap ? 2 * cap : 16;
		struct ring_thread **a = realloc(threads, n * sizeof(*a));
		if (!a) {
			pthread_mutex_unlock(&lock);
			return;
		}
		threads = a;
		cap = n;
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		pthread_mutex_unlock(&lock);
		return;
	}
	t->q = q;
	t->map_len = (size_t)page + ((payload_max + (size_t)page - 1) & ~((size_t)page - 1));
	t->map = mmap(NULL, t->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t->map == MAP_FAILED) {
		free(t);
		pthread_mutex_unlock(&lock);
		return;
	}
	t->payload = t->map + page; /* the headers go in front of it (serve) */
	t->iov[0] = (struct iovec){&t->hdr, sizeof(t->hdr)};
	t->iov[1] = (struct iovec){t->payload, payload_max};
	if (pthread_create(&t->tid, NULL, ring_main, t) != 0) {
		munmap(t->map, t->map_len);
		free(t);
		pthread_mutex_unlock(&lock);
		return;
	}
	threads[nthreads++] = t;
	q->threads++;
	pthread_mutex_unlock(&lock);
}

void uring_start(struct fuse_session *s)
{
	if (!negotiated)
		return;
	se = s;
	devfd = fuse_session_fd(s);
	stop_fd = eventfd(0, EFD_CLOEXEC);
	nqueues = possible_cpus();
	queues = calloc(nqueues, sizeof(*queues));
	if (stop_fd < 0 || !queues) {
		/* the kernel waits for the rings: it must not wait forever */
		log_warnx("uring: cannot start the rings: out of resources");
		abort();
	}
	/* "on" before the first thread: it may answer a status read at once */
	snprintf(status, sizeof(status), "on");
	__atomic_store_n(&active, true, __ATOMIC_RELEASE);
	for (unsigned i = 0; i < nqueues; i++)
		queues[i].qid = i;
	for (unsigned i = 0; i < nqueues; i++)
		for (int k = 0; k < THREADS_START; k++)
			spawn(&queues[i]);
	log_info("uring: %u queues, %d threads each to start with", nqueues, THREADS_START);
}

void uring_stop(void)
{
	if (!queues)
		return;
	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	if (write(stop_fd, &(uint64_t){1}, 8) < 0)
		log_warn("uring: waking the ring threads");
	for (size_t i = 0; i < nthreads; i++) {
		struct ring_thread *t = threads[i];
		pthread_join(t->tid, NULL);
		if (t->ring_made)
			io_uring_queue_exit(&t->ring);
	}
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < nthreads; i++) {
		munmap(threads[i]->map, threads[i]->map_len);
		free(threads[i]);
	}
	free(threads);
	threads = NULL;
	nthreads = cap = 0;
	pthread_mutex_unlock(&lock);
	free(queues);
	queues = NULL;
	close(stop_fd);
	__atomic_store_n(&active, false, __ATOMIC_RELAXED);
	log_info("uring: %llu requests came through the rings",
		 (unsigned long long)__atomic_load_n(&served, __ATOMIC_RELAXED));
}

const char *uring_status(void)
{
	static __thread char buf[sizeof(status) + 48];

	if (!__atomic_load_n(&active, __ATOMIC_ACQUIRE))
		return status;
	snprintf(buf, sizeof(buf), "on (%llu requests through the rings)",
		 (unsigned long long)__atomic_load_n(&served, __ATOMIC_RELAXED));
	return buf;
}
