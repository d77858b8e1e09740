/* route.c - writer routing (kernel-notes §1-3, §8-9).
 *
 * The VFS refuses a write open of an executed inode before asking us (ETXTBSY), and an O_TRUNC
 * open truncates the page cache of whatever inode it lands on. So writers must land on their
 * own nodeid. Two ways get them there:
 *  - at LOOKUP of a name with an execute bit, the requesting thread's pending syscall tells a
 *    writer (open/openat/openat2/creat/truncate with write flags, decoded for the ABI the
 *    requester entered by: syscall_abi.c);
 *  - elsewhere, a write open or truncate that reaches a version nodeid is answered ESTALE, and
 *    the kernel walks the path again: its LOOKUP(s) then find the route armed here.
 * Routes are keyed by thread id, hold their staging node until the open arrives (a retry can
 * send two LOOKUPs with a FORGET between), and expire after ROUTE_TTL_NS. Who is closing a
 * writer's file, at FLUSH, is closer.c. */
#define _GNU_SOURCE
#include "route.h"
#include "fs.h"
#include "inval.h"
#include "log.h"
#include "names.h"
#include "node.h"
#include "release.h"
#include "syscall_abi.h"
#include "versions.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ROUTE_MAX    1024
#define ROUTE_TTL_NS 10000000000ull /* a retry under heavy load can take seconds */

struct route {
	pid_t tid;
	uid_t uid; /* who asked: a full table evicts its own routes first */
	unsigned long long expires;
	struct node *stale;    /* the version nodeid the thread was sent back from (ref) */
	struct node *staging;  /* the staging node it was given (ref) */
	struct node *in_place; /* or the file it writes in place, being written (ref) */
	bool walked;	       /* a LOOKUP came from the thread since it was sent back */
	bool exec;	       /* sent back from an exec of a cached alias (`stale`): its walk's
				* LOOKUPs of executable names answer the version's own node */
};

/* The route lock. Lock order (docs/design.md §9): route -> table: a route's node references
 * are taken and dropped under it (node_ref, node_unref, node_new_staging, node_add_lookup).
 * A node_unref here may drop a node's last reference; node.c then drops the table lock and
 * runs the node's deferred prune (the store lock) and its end (locks.c's mutex): route ->
 * store, route -> locks. A LOOKUP under an open release's DIR holds release.c's walk (read):
 * walk -> route. It is never taken under the store, table or a handle's lock (the ops call
 * route_* holding none); route_thread_writes reads /proc without it. */
static pthread_mutex_t route_lock = PTHREAD_MUTEX_INITIALIZER;
static struct route routes[ROUTE_MAX]; /* [0, nroutes) in use; protected by route_lock */
static int nroutes;		       /* written under route_lock, read without it as a hint */

static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Drop routes[i], moving the last one into its place. route_lock held. */
static void clear(int i)
{
	struct route *r = &routes[i];

	if (r->stale)
		node_unref(r->stale);
	if (r->staging)
		node_unref(r->staging);
	if (r->in_place)
		node_unref(r->in_place);
	*r = routes[nroutes - 1];
	memset(&routes[nroutes - 1], 0, sizeof(*r));
	__atomic_sub_fetch(&nroutes, 1, __ATOMIC_RELEASE);
}

/* Find the route of tid (expiring old ones); with `make`, a new one for it. A full table
 * evicts the oldest route of the same user, or if it has none, the oldest of all: a user
 * flooding the table with writers only pushes out its own. route_lock held. */
static struct route *find(pid_t tid, uid_t uid, bool make)
{
	unsigned long long now = now_ns();
	int own = -1, oldest = -1;

	for (int i = 0; i < nroutes;) {
		struct route *r = &routes[i];
		if (r->expires < now) {
			clear(i);
			continue;
		}
		if (r->tid == tid)
			return r;
		if (r->uid == uid && (own < 0 || r->expires < routes[own].expires))
			own = i;
		if (oldest < 0 || r->expires < routes[oldest].expires)
			oldest = i;
		i++;
	}
	if (!make)
		return NULL;
	if (nroutes == ROUTE_MAX)
		clear(own >= 0 ? own : oldest);
	struct route *r = &routes[nroutes];
	r->tid = tid;
	r->uid = uid;
	r->expires = now + ROUTE_TTL_NS;
	__atomic_add_fetch(&nroutes, 1, __ATOMIC_RELEASE);
	return r;
}

/* The ABI tid's blocked syscall entered by: the build's own, or on x86-64 the one its entry
 * instruction tells (syscall_abi.h). Reads two bytes of the caller's code, only when the
 * number is one that some x86 table decodes as a writer. */
static enum sysabi thread_abi(pid_t tid, const struct sysabi_call *c)
{
#if defined(__x86_64__)
	unsigned char insn[2];
	struct iovec local = {insn, sizeof(insn)}, remote = {(void *)(uintptr_t)(c->pc - 2), 2};

	if (!sysabi_decode(SYSABI_X86_64, c, NULL) && !sysabi_decode(SYSABI_I386, c, NULL) &&
	    !sysabi_decode(SYSABI_X32, c, NULL))
		return SYSABI_UNKNOWN; /* a writer in no table: skip the read */
	if (c->pc < 2 || process_vm_readv(tid, &local, 1, &remote, 1, 0) != sizeof(insn))
		return sysabi_x86_entry(c, NULL);
	return sysabi_x86_entry(c, insn);
#else
	(void)tid;
	(void)c;
	return sysabi_native();
#endif
}

bool route_thread_writes(pid_t tid)
{
	char path[64], buf[256];
	struct sysabi_call c;
	uint64_t how = 0;
	int fd;
	ssize_t n;

	if (tid <= 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/syscall", tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	/* The kernel queues the LOOKUP and wakes us before the requester goes to sleep: read
	 * while it is still on a CPU, the file says "running" (it can tell only a task that
	 * sleeps). It sleeps within microseconds; ask again, for up to ~2 ms. */
	for (int i = 0;; i++) {
		n = pread(fd, buf, sizeof(buf) - 1, 0);
		if (n <= 0 || strncmp(buf, "running", 7) != 0 || i == 40)
			break;
		if (i < 8)
			sched_yield();
		else
			usleep(50);
	}
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	if (!sysabi_parse(buf, &c))
		return false;
	switch (sysabi_decode(thread_abi(tid, &c), &c, &how)) {
	case SYSABI_WRITES:
		return true;
	case SYSABI_HOW: { /* openat2: flags, the first u64 of the caller's struct open_how */
		uint64_t flags = 0;
		struct iovec local = {&flags, sizeof(flags)},
			     remote = {(void *)(uintptr_t)how, sizeof(flags)};
		if (process_vm_readv(tid, &local, 1, &remote, 1, 0) != sizeof(flags))
			return false;
		return sysabi_flags_write(flags);
	}
	case SYSABI_NO:
		break;
	}
	return false;
}

/* What arming a route found: a fresh send-back, or a thread sent back already that walked its
 * path again since, or that came back without a walk (by an fd, or a file handle). */
enum arm { ARM_FRESH, ARM_WALKED, ARM_NO_WALK };

static enum arm arm(pid_t tid, uid_t uid, struct node *stale, bool exec)
{
	struct route *r;
	enum arm res = ARM_FRESH;

	pthread_mutex_lock(&route_lock);
	r = find(tid, uid, true);
	if (exec && r->exec && (r->walked || r->stale == stale)) {
		/* an exec sent back once already: a second ESTALE would fail it */
		res = r->walked ? ARM_WALKED : ARM_NO_WALK;
		clear((int)(r - routes));
	} else if (r->stale == stale && !r->staging && !r->walked) {
		res = ARM_NO_WALK; /* sent back already, and no LOOKUP came: no name walk */
		clear((int)(r - routes));
	} else {
		r->walked = false;
		r->exec = exec;
		if (r->stale)
			node_unref(r->stale);
		r->stale = stale;
		node_ref(stale);
		r->expires = now_ns() + ROUTE_TTL_NS;
	}
	pthread_mutex_unlock(&route_lock);
	return res;
}

bool route_arm(pid_t tid, uid_t uid, struct node *stale)
{
	return arm(tid, uid, stale, false) == ARM_FRESH;
}

/* Is tid an exec sent back from a cached alias, walking its path again? */
static bool exec_walk(pid_t tid)
{
	struct route *r;
	bool exec = false;

	if (!__atomic_load_n(&nroutes, __ATOMIC_ACQUIRE))
		return false;
	pthread_mutex_lock(&route_lock);
	r = find(tid, 0, false);
	exec = r && r->exec;
	pthread_mutex_unlock(&route_lock);
	return exec;
}

struct node *route_staging(pid_t tid, uid_t uid, struct node *base, struct node *parent,
			   const char *name, bool detected)
{
	struct route *r;
	struct node *st = NULL;

	/* the LOOKUP hot path: no routed thread, no writer seen */
	if (!detected && !__atomic_load_n(&nroutes, __ATOMIC_ACQUIRE))
		return NULL;
	pthread_mutex_lock(&route_lock);
	r = find(tid, uid, detected);
	if (!r || (r->exec && !detected))
		goto out; /* an exec's walk: no writer */
	r->exec = false;
	if (r->staging && r->staging->base == base && r->staging->parent == parent &&
	    !strcmp(r->staging->name, name)) {
		st = r->staging; /* the second LOOKUP of a retry: same answer */
	} else {
		st = node_new_staging(base, parent, name);
		if (!st)
			goto out;
		node_ref(st);
		if (r->staging)
			node_unref(r->staging);
		r->staging = st;
	}
	node_add_lookup(st);
out:
	pthread_mutex_unlock(&route_lock);
	return st;
}

void route_in_place(pid_t tid, uid_t uid, struct node *file)
{
	struct route *r;

	pthread_mutex_lock(&route_lock);
	r = find(tid, uid, true);
	if (r->staging)
		node_unref(r->staging);
	if (r->stale)
		node_unref(r->stale);
	if (r->in_place)
		node_unref(r->in_place);
	r->staging = r->stale = NULL;
	r->in_place = file;
	node_ref(file);
	r->expires = now_ns() + ROUTE_TTL_NS;
	pthread_mutex_unlock(&route_lock);
}

bool route_joins_in_place(pid_t tid, struct node *file)
{
	struct route *r;
	bool joins = false;

	if (!__atomic_load_n(&nroutes, __ATOMIC_ACQUIRE))
		return false;
	pthread_mutex_lock(&route_lock);
	r = find(tid, 0, false);
	if (r && r->in_place == file) {
		joins = true;
		clear((int)(r - routes));
	}
	pthread_mutex_unlock(&route_lock);
	return joins;
}

void route_saw_lookup(pid_t tid)
{
	struct route *r;

	if (!__atomic_load_n(&nroutes, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&route_lock);
	r = find(tid, 0, false);
	if (r)
		r->walked = true;
	pthread_mutex_unlock(&route_lock);
}

void route_done(pid_t tid)
{
	struct route *r;

	pthread_mutex_lock(&route_lock);
	r = find(tid, 0, false);
	if (r)
		clear((int)(r - routes));
	pthread_mutex_unlock(&route_lock);
}

void route_clear_all(void)
{
	pthread_mutex_lock(&route_lock);
	while (nroutes)
		clear(nroutes - 1);
	pthread_mutex_unlock(&route_lock);
}

/* The routing rule (kernel-notes §1-3, §9; design.md §2).
 *
 * LOOKUP: only a name with an execute bit can be running (execve needs one, root included).
 * A version of such a name that no exec has opened yet ("idle") is answered with its cached
 * alias, a nodeid of its own that no exec ever runs (route_open), so the kernel may keep that
 * answer as it keeps a name without an x bit: a writer that lands on a cached entry meets no
 * ETXTBSY and reaches OPEN, where route_open sends it back to walk again (§3). Once an exec
 * opens a version ("hot"), its names are answered with the version's own node, looked up
 * every time, and the syscall read tells a writer before it reaches the inode (§1, §9). A
 * writer's thread, so told or armed by an earlier ESTALE, gets a staging node of its own. */
struct node *route_lookup(pid_t tid, uid_t uid, struct node *parent, const char *name,
			  struct node *n, mode_t mode, bool *cache)
{
	bool x = mode & 0111, idle = false, writer = false;
	struct node *stg;

	*cache = false;
	if (parent->in_versions)
		return n; /* a writer sent back here walks to the same node again, and its second
			   * open is refused (route_arm) */
	if (x && exec_walk(tid))
		node_set_hot(n); /* an exec sent back from the alias runs the version's own node */
	/* (a file written in place changes under its nodeid: one nodeid for it, as before; so
	 * does a file made within a release until it commits) */
	idle = x && !node_hot(n) && !node_written_in_place(n) &&
	       !release_is_created(parent, name, n->ino);
again:
	writer = x && !idle && route_thread_writes(tid);
	stg = route_staging(tid, uid, n, parent, name, writer);
	if (stg && (node_written_in_place(n) || release_is_created(parent, name, n->ino))) {
		/* its writer writes the file itself: so does this one (node_written_in_place); a
		 * file made within a release is written in place until the release takes it (an
		 * mv) or commits, as at its CREATE: nobody else sees it */
		node_forget(stg, 1);
		route_in_place(tid, uid, n);
		stg = NULL;
	}
	if (stg) {
		log_debug("lookup %s: thread %d routed to staging", name, tid);
		node_forget(n, 1);
		return stg;
	}
	if (idle) {
		struct node *a = node_alias(n);
		if (!a) { /* (no memory) answered as a running version */
			idle = false;
			goto again;
		}
		node_forget(n, 1);
		*cache = true;
		return a;
	}
	*cache = !x;
	return n;
}

/* An exec runs a node whose name the kernel may cache for long (an alias, or a version looked
 * up without an x bit): forget that name, and with `inval` ask the kernel to drop its entry
 * (queued: a path walk may hold the directory's lock, inval.c), so that later walks ask again
 * and take the version's own node. Only for an exec that ran without a re-walk: a re-walk
 * replaces the entry itself, and an invalidation queued before it could drop the new entry
 * (a running program's /proc/PID/exe would read "(deleted)"). */
static void forget_cached_name(struct node *n, bool inval)
{
	uint64_t dir;
	char *name = node_take_cached_name(n, &dir);

	if (name && inval)
		inval_entry_queue_id(dir, name);
	free(name);
}

/* OPEN: a write open or truncate never reaches a published version; an exec never runs a
 * staging node, nor an alias or a version whose name the kernel may still cache. */
enum route_open route_open(pid_t tid, uid_t uid, struct node *n, int flags)
{
	bool write = names_write_flags((unsigned long)flags);

	if ((flags & FMODE_EXEC) && n->kind == NODE_ALIAS) {
		/* Never run the alias: a writer may reach it through the kernel's cache without
		 * asking us, and would meet ETXTBSY. The version is hot from now on; the exec's
		 * re-walk's LOOKUP answers the version's own node (exec_walk). An exec that comes
		 * back without a walk opens by its fd (fexecve, execveat(AT_EMPTY_PATH),
		 * /proc/self/fd): a second ESTALE would fail it, so it runs the alias
		 * (docs/semantics.md), whose entries go. */
		node_set_hot(n->base);
		if (arm(tid, uid, n, true) == ARM_FRESH)
			return ROUTE_REWALK;
		forget_cached_name(n, true);
		return ROUTE_SERVE;
	}
	n = node_version(n);
	if (n->kind == NODE_STAGING) {
		route_done(tid);
		/* an exec must run a published version: walk again */
		return (flags & FMODE_EXEC) ? ROUTE_REWALK : ROUTE_SERVE;
	}
	/* a file its writer writes in place: join it (handle_join_in_place), also when that
	 * writer closed, or the name went, since this thread's LOOKUP found it so: the walk had
	 * resolved it, as natively (a second ESTALE would reach the caller) */
	if (write && n->kind == NODE_FILE && !(flags & FMODE_EXEC) &&
	    (route_joins_in_place(tid, n) || (!node_old(n) && node_written_in_place(n))))
		return ROUTE_SERVE;
	if (write) {
		/* never write or truncate a published version: send the writer back to walk the
		 * path again; its LOOKUP answers a staging nodeid for a current name, and EROFS
		 * inside .versions/ (the version may have been replaced meanwhile, so "old" alone
		 * cannot tell which) */
		if (route_arm(tid, uid, n))
			return ROUTE_REWALK;
		return versions_readonly(n) ? ROUTE_REFUSE_VIEW : ROUTE_REFUSE_NO_WALK;
	}
	if ((flags & FMODE_EXEC) && n->kind == NODE_FILE) {
		bool rewalked = exec_walk(tid); /* sent back once: it never is again */

		node_set_hot(n); /* its executable names are answered with it, uncached */
		if (node_has_cached_name(n)) {
			/* It was looked up without an x bit, so the kernel may hold its name for
			 * long; running, it must be looked up every time (route_lookup). Send the
			 * exec back once: its re-walk renews the entry, same nodeid, now uncached.
			 * An exec by its fd comes back without a walk and runs it. */
			enum arm a = arm(tid, uid, n, true);
			if (a == ARM_FRESH)
				return ROUTE_REWALK;
			forget_cached_name(n, a == ARM_NO_WALK);
		} else if (rewalked) {
			route_done(tid); /* the exec sent back arrived */
		}
	}
	return ROUTE_SERVE;
}
