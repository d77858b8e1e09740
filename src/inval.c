/* inval.c - every notification the daemon sends the kernel, as the kernel keeps them in its
 * notify.c: entry invalidations (FUSE_NOTIFY_INVAL_ENTRY), attribute invalidations
 * (FUSE_NOTIFY_INVAL_INODE), and with them the bump of fs.gen, by which a LOOKUP that overlapped
 * a change of names is answered uncached (ops_entry.c).
 *
 * A version pruned while "in use" waits for its FORGET, but a dentry left in the kernel's
 * cache by a mere `ls -l .versions` or `cat` keeps the inode referenced (FUSE keeps expired
 * dentries until memory pressure). Invalidating that entry lets the kernel forget the inode
 * when nobody really uses it. The invalidation takes the directory's inode lock in the
 * kernel, so it is never sent from a request handler that a path walk could wait for: those
 * are queued for the thread here (inval_entry_queue). A publish sends its own at once
 * (inval_entry_now, from the closer's FLUSH, which holds no directory lock).
 *
 * Stopping (kernel-notes §12): the kernel waits for that lock uninterruptibly, and a path walk
 * holding it waits for a LOOKUP reply. If the daemon stops answering while one of its threads
 * waits there, that thread never returns, the process never exits, /dev/fuse is never closed:
 * the mount wedges. So once the daemon stops (inval_quiesce, before the loop stops serving)
 * no new invalidation starts, and the stop waits for those in flight, which the still running
 * workers let finish. The watchdog (watchdog.c) covers what no code of ours can: SIGKILL. */
#define _GNU_SOURCE
#include "inval.h"
#include "fs.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct inval {
	struct inval *next;
	struct node *dir; /* holds a ref; or NULL, and the nodeid is `id` */
	uint64_t id;
	char name[];
};

/* Lock order (docs/design.md §9): inval_lock is a leaf. inval_entry_queue takes its reference
 * on the directory (the table lock) before it, and runs under the store lock (a deferred
 * prune: store -> inval) or none; the thread drops it before it sends an invalidation and
 * before it drops that reference (which may free a node: the table lock, then the store lock
 * for its deferred prune). No notification is sent under a lock of this file. An entry
 * invalidation waits in the kernel for the directory's inode lock, which a LOOKUP holds while
 * it waits for us: inval_entry_now's caller holds no lock a LOOKUP may wait for (the publish:
 * at most its handle's lock). An attribute invalidation (inval_attrs) takes no inode lock: any
 * caller may send it (a release's commit, under the store lock and old_mu). */
static pthread_mutex_t inval_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t inval_cond = PTHREAD_COND_INITIALIZER;
static struct inval *queue; /* protected by inval_lock */
static bool stopping;	    /* protected by inval_lock */
static bool running;
static pthread_t inval_thread;
static struct fuse_session *session;
static bool quiet;	   /* no new invalidation: the daemon stops (atomic) */
static unsigned in_flight; /* invalidations inside the kernel now (atomic) */

bool inval_entry_now(uint64_t dir, const char *name)
{
	bool sent = false;

	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&quiet, __ATOMIC_SEQ_CST) && session)
		sent = fuse_lowlevel_notify_inval_entry(session, dir, name, strlen(name)) == 0;
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	return sent;
}

bool inval_quiesce(unsigned max_ms)
{
	struct timespec tick = {0, 2 * 1000 * 1000};

	__atomic_store_n(&quiet, true, __ATOMIC_SEQ_CST);
	for (unsigned waited = 0; __atomic_load_n(&in_flight, __ATOMIC_SEQ_CST); waited += 2) {
		if (waited >= max_ms)
			return false;
		nanosleep(&tick, NULL);
	}
	return true;
}

static void *inval_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&inval_lock);
	for (;;) {
		while (!queue && !stopping)
			pthread_cond_wait(&inval_cond, &inval_lock);
		if (!queue)
			break;
		struct inval *iv = queue;
		queue = iv->next;
		pthread_mutex_unlock(&inval_lock);
		if (!stopping)
			inval_entry_now(iv->dir ? node_id(iv->dir) : iv->id, iv->name);
		if (iv->dir)
			node_unref(iv->dir);
		free(iv);
		pthread_mutex_lock(&inval_lock);
	}
	pthread_mutex_unlock(&inval_lock);
	return NULL;
}

void inval_init(struct fuse_session *se)
{
	session = se;
}

int inval_start(void)
{
	running = pthread_create(&inval_thread, NULL, inval_main, NULL) == 0;
	return running ? 0 : -1;
}

void inval_stop(void)
{
	if (!running)
		return;
	pthread_mutex_lock(&inval_lock);
	stopping = true;
	pthread_cond_signal(&inval_cond);
	pthread_mutex_unlock(&inval_lock);
	pthread_join(inval_thread, NULL);
	running = false;
}

static void queue_one(struct node *dir, uint64_t id, const char *name)
{
	struct inval *iv = malloc(sizeof(*iv) + strlen(name) + 1);

	if (!iv)
		return;
	strcpy(iv->name, name);
	iv->dir = dir;
	iv->id = id;
	if (dir)
		node_ref(dir);
	pthread_mutex_lock(&inval_lock);
	iv->next = queue;
	queue = iv;
	pthread_cond_signal(&inval_cond);
	pthread_mutex_unlock(&inval_lock);
}

void inval_entry_queue(struct node *dir, const char *name)
{
	queue_one(dir, 0, name);
}

void inval_entry_queue_id(uint64_t dir, const char *name)
{
	queue_one(NULL, dir, name);
}

void inval_gen_bump(void)
{
	__atomic_add_fetch(&fs.gen, 1, __ATOMIC_ACQ_REL);
}

void inval_name_changed(struct node *dir, const char *name)
{
	inval_gen_bump();
	inval_entry_now(node_id(dir), name);
}

void inval_name_changed_queued(struct node *dir, const char *name)
{
	inval_gen_bump();
	inval_entry_queue(dir, name);
}

void inval_attrs(uint64_t nodeid)
{
	fuse_lowlevel_notify_inval_inode(fs.se, nodeid, -1, 0);
}

/* The kernel's cache of directory listings (FOPEN_CACHE_DIR, docs/design.md §3, "Directory
 * listings"). The kernel fills it from the READDIR replies of opens that were answered with
 * FOPEN_CACHE_DIR and serves later such opens from it; it drops it itself when a change goes
 * through the mount (it bumps the directory's version), but not when the daemon changes a
 * directory by itself (a publish's rename, a release's commit or abort). For those,
 * inval_dir_changed drops the cached pages (FUSE_NOTIFY_INVAL_INODE from offset 0: no inode
 * lock is taken, so any caller may send it). A READDIR answered before the change can still
 * be parsed into the cache after that notification: so every cached open that was already
 * open at the change drops the pages again at each of its later READDIRs and at its
 * RELEASEDIR (after which the kernel has parsed every reply it had), and until the last of
 * those is closed no new open is answered FOPEN_CACHE_DIR (nothing else then completes a
 * cache such an open began). rdc_lock is a leaf; nothing is sent under it. */
static pthread_mutex_t rdc_lock = PTHREAD_MUTEX_INITIALIZER;

static void inval_dir_pages(struct node *dir)
{
	__atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&quiet, __ATOMIC_SEQ_CST) && session)
		fuse_lowlevel_notify_inval_inode(session, node_id(dir), 0, 0);
	__atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
}

bool inval_dir_open(struct node *dir, unsigned *gen)
{
	bool cache;

	pthread_mutex_lock(&rdc_lock);
	cache = dir->rdc_stale == 0;
	if (cache) {
		dir->rdc_open++;
		*gen = dir->rdc_gen;
	}
	pthread_mutex_unlock(&rdc_lock);
	return cache;
}

void inval_dir_read(struct node *dir, unsigned gen)
{
	if (__atomic_load_n(&dir->rdc_gen, __ATOMIC_ACQUIRE) != gen)
		inval_dir_pages(dir);
}

void inval_dir_closed(struct node *dir, unsigned gen)
{
	bool stale;

	pthread_mutex_lock(&rdc_lock);
	stale = dir->rdc_gen != gen;
	dir->rdc_open--;
	if (stale)
		dir->rdc_stale--;
	pthread_mutex_unlock(&rdc_lock);
	if (stale)
		inval_dir_pages(dir);
}

void inval_dir_changed(struct node *dir)
{
	if (!dir || dir->kind != NODE_DIR)
		return;
	pthread_mutex_lock(&rdc_lock);
	__atomic_add_fetch(&dir->rdc_gen, 1, __ATOMIC_RELEASE);
	dir->rdc_stale = dir->rdc_open; /* every open from before is stale now */
	pthread_mutex_unlock(&rdc_lock);
	inval_dir_pages(dir);
}
