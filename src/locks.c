/* locks.c - the daemon's lock table: POSIX record locks and flock() of every open of a file,
 * whatever nodeid the open has (docs/design.md, Locks).
 *
 * The kernel keeps locks on its inode, and an inode is a nodeid: a writer's staging nodeid has
 * locks of its own that no other open sees (xfstests generic/478). With the getlk, setlk and
 * flock ops the kernel asks the daemon instead, with the lock owner: a process's fd table for
 * fcntl/lockf locks, the open file description for OFD locks and flock. Here a lock belongs to
 * the file (struct lfile), named by the (dev, ino) of a version.
 *
 * A waiting request (SETLKW, blocking flock) is not a waiting worker: it is queued on its file
 * and answered by the thread that frees the range (wake), or EINTR when the kernel interrupts
 * it (FUSE_INTERRUPT: interrupted). One mutex, a leaf apart from libfuse's reply path (answers
 * are sent after it is dropped; the interrupt callback takes it under libfuse's request lock,
 * and nothing here takes that lock). */
#define _GNU_SOURCE
#include "locks.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>

#define NBUCKETS 256

struct lk {
	struct lock_range r;
	struct lk *next;
};

struct lfile {
	dev_t dev;
	ino_t ino;
	struct lk *locks;
	unsigned waiting; /* waiters queued on it: kept while > 0 */
	struct lfile *hnext;
};

struct waiter {
	fuse_req_t req;
	struct lfile *f;
	struct lock_range r;
	struct waiter *next;
};

/* An older version whose opens reach the locks of the file that replaced it: (dev, ino) ->
 * (tdev, tino), one hop (published() points older entries at the newest). Kept while the old
 * version has a node (locks_node_gone). */
struct fwd {
	dev_t dev, tdev;
	ino_t ino, tino;
	struct fwd *hnext;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct lfile *files[NBUCKETS];
static struct fwd *fwds[NBUCKETS];
static struct waiter *waiters, **wtail = &waiters; /* FIFO: first come, first granted */
static unsigned nfiles, nfwds;			   /* atomic reads as a hint, else under mu */

static unsigned bucket(dev_t dev, ino_t ino)
{
	uint64_t h = ((uint64_t)ino * 0x9e3779b97f4a7c15ull) ^ (uint64_t)dev;
	return (unsigned)(h >> 56) % NBUCKETS;
}

/* The file (dev, ino) names: itself, or the version that replaced it. mu held. */
static void resolve(dev_t *dev, ino_t *ino)
{
	for (struct fwd *w = fwds[bucket(*dev, *ino)]; w; w = w->hnext)
		if (w->dev == *dev && w->ino == *ino) {
			*dev = w->tdev;
			*ino = w->tino;
			return;
		}
}

static struct lfile *file_find(dev_t dev, ino_t ino)
{
	for (struct lfile *f = files[bucket(dev, ino)]; f; f = f->hnext)
		if (f->dev == dev && f->ino == ino)
			return f;
	return NULL;
}

static void file_link(struct lfile *f)
{
	unsigned b = bucket(f->dev, f->ino);
	f->hnext = files[b];
	files[b] = f;
}

static void file_unlink(struct lfile *f)
{
	for (struct lfile **p = &files[bucket(f->dev, f->ino)]; *p; p = &(*p)->hnext)
		if (*p == f) {
			*p = f->hnext;
			return;
		}
}

/* The file of (dev, ino), resolved; created if create. mu held. */
static struct lfile *file_get(dev_t dev, ino_t ino, bool create)
{
	struct lfile *f;

	resolve(&dev, &ino);
	f = file_find(dev, ino);
	if (f || !create)
		return f;
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->dev = dev;
	f->ino = ino;
	file_link(f);
	__atomic_add_fetch(&nfiles, 1, __ATOMIC_RELAXED);
	return f;
}

/* Free f if nothing is left in it. mu held. */
static void file_put(struct lfile *f)
{
	if (f->locks || f->waiting)
		return;
	file_unlink(f);
	free(f);
	__atomic_sub_fetch(&nfiles, 1, __ATOMIC_RELAXED);
}

static bool overlap(const struct lock_range *a, const struct lock_range *b)
{
	return a->start <= b->end && b->start <= a->end;
}

/* Overlapping or touching: two ranges of one owner and type that make one. */
static bool touch(const struct lock_range *a, const struct lock_range *b)
{
	return overlap(a, b) || (a->end != LOCK_END && a->end + 1 == b->start) ||
	       (b->end != LOCK_END && b->end + 1 == a->start);
}

static bool conflicts(const struct lock_range *held, const struct lock_range *want)
{
	return held->cls == want->cls && held->owner != want->owner && overlap(held, want) &&
	       (held->type == F_WRLCK || want->type == F_WRLCK);
}

static struct lk *first_conflict(struct lfile *f, const struct lock_range *want)
{
	for (struct lk *l = f ? f->locks : NULL; l; l = l->next)
		if (conflicts(&l->r, want))
			return l;
	return NULL;
}

static struct lk *lk_new(const struct lock_range *r, struct lk *next)
{
	struct lk *l = malloc(sizeof(*l));

	if (l) {
		l->r = *r;
		l->next = next;
	}
	return l;
}

/* Insert l into the list at *p, sorted by start among what follows. */
static void insert_sorted(struct lk **p, struct lk *l)
{
	while (*p && (*p)->r.start < l->r.start)
		p = &(*p)->next;
	l->next = *p;
	*p = l;
}

/* Set want (its owner's range, of its type or F_UNLCK) on f, replacing what the owner had
 * there: its other ranges are cut around it, ranges of the same type that touch it are merged
 * into it. Needs no conflict check (done before). -ENOLCK without memory, f unchanged.
 * The list keeps the kernel's order, which F_GETLK shows (the first conflict): the owners in
 * the order of their first lock, each owner's ranges by start. */
static int apply(struct lfile *f, const struct lock_range *want)
{
	struct lock_range m = *want;
	struct lk *others = NULL, **otail = &others, *mine = NULL, *l, *next;
	struct lk *cut[2] = {NULL, NULL};
	unsigned ncut = 0, pos = 0, nothers = 0;
	bool seen = false;

	/* Memory first: at most one lock is split in two (a range inside another's), and the
	 * new range: allocate before changing anything. */
	for (l = f->locks; l; l = l->next)
		if (l->r.cls == want->cls && l->r.owner == want->owner && l->r.type != want->type &&
		    l->r.start < want->start && want->end != LOCK_END && l->r.end > want->end)
			ncut = 1;
	if (want->type != F_UNLCK || ncut) {
		cut[0] = lk_new(want, NULL);
		cut[1] = ncut ? lk_new(want, NULL) : NULL;
		if (!cut[0] || (ncut && !cut[1])) {
			free(cut[0]);
			free(cut[1]);
			return -ENOLCK;
		}
	}
	for (l = f->locks; l; l = next) {
		next = l->next;
		l->next = NULL;
		if (l->r.cls != want->cls || l->r.owner != want->owner) {
			*otail = l;
			otail = &l->next;
			nothers++;
			continue;
		}
		if (!seen) {
			seen = true;
			pos = nothers;
		}
		if (!(want->type == l->r.type ? touch(&l->r, want) : overlap(&l->r, want))) {
			insert_sorted(&mine, l);
		} else if (want->type == l->r.type) { /* merged: the new range covers it */
			m.start = l->r.start < m.start ? l->r.start : m.start;
			m.end = l->r.end > m.end ? l->r.end : m.end;
			free(l);
		} else if (l->r.start < want->start && l->r.end > want->end) {
			/* another type (or an unlock) inside it: what lies outside want stays */
			struct lk *right = cut[1];
			cut[1] = NULL;
			right->r = l->r;
			right->r.start = want->end + 1;
			insert_sorted(&mine, right);
			l->r.end = want->start - 1;
			insert_sorted(&mine, l);
		} else if (l->r.start < want->start) {
			l->r.end = want->start - 1;
			insert_sorted(&mine, l);
		} else if (l->r.end > want->end) {
			l->r.start = want->end + 1;
			insert_sorted(&mine, l);
		} else {
			free(l);
		}
	}
	if (want->type != F_UNLCK) {
		cut[0]->r = m;
		insert_sorted(&mine, cut[0]);
	} else {
		free(cut[0]);
	}
	free(cut[1]);
	if (!seen)
		pos = nothers;
	/* others[0, pos), mine, others[pos, ...) */
	struct lk **at = &others;
	for (unsigned i = 0; i < pos; i++)
		at = &(*at)->next;
	if (mine) {
		struct lk *last = mine;
		while (last->next)
			last = last->next;
		last->next = *at;
		*at = mine;
	}
	f->locks = others;
	return 0;
}

/* flock() converts by dropping the old lock first, as natively (flock(2): not atomic). */
static void drop_flock(struct lfile *f, uint64_t owner)
{
	struct lk **p = &f->locks, *l;

	while ((l = *p))
		if (l->r.cls == LK_FLOCK && l->r.owner == owner) {
			*p = l->next;
			free(l);
		} else {
			p = &l->next;
		}
}

struct granted {
	fuse_req_t req;
	int err;
	struct granted *next;
};

/* After f lost locks: every waiter on it that no longer conflicts gets its lock, in the order
 * they came. Their answers go into *out, sent by answer() once mu is dropped. mu held. */
static void wake(struct lfile *f, struct granted **out)
{
	struct waiter **p = &waiters, *w;

	while ((w = *p)) {
		if (w->f != f || first_conflict(f, &w->r)) {
			p = &w->next;
			continue;
		}
		if (w->r.cls == LK_FLOCK)
			drop_flock(f, w->r.owner);
		int err = apply(f, &w->r);
		struct granted *g = malloc(sizeof(*g));
		*p = w->next;
		if (!*p)
			wtail = p;
		f->waiting--;
		if (g) {
			g->req = w->req;
			g->err = -err;
			g->next = *out;
			*out = g;
		} else {
			fuse_reply_err(w->req, -err); /* rather than never */
		}
		free(w);
	}
}

static void answer(struct granted *g)
{
	while (g) {
		struct granted *next = g->next;
		fuse_reply_err(g->req, g->err);
		free(g);
		g = next;
	}
}

void locks_get(dev_t dev, ino_t ino, struct lock_range *l)
{
	struct lk *c;

	pthread_mutex_lock(&mu);
	c = first_conflict(file_get(dev, ino, false), l);
	if (c)
		*l = c->r;
	else
		l->type = F_UNLCK;
	pthread_mutex_unlock(&mu);
}

/* FUSE_INTERRUPT of a waiting request: called by libfuse with the request's lock held, and the
 * request is valid until we return; data is not used (the waiter may be granted and gone). */
static void interrupted(fuse_req_t req, void *data)
{
	struct waiter **p, *w = NULL;

	(void)data;
	pthread_mutex_lock(&mu);
	for (p = &waiters; *p; p = &(*p)->next)
		if ((*p)->req == req) {
			w = *p;
			*p = w->next;
			if (!*p)
				wtail = p;
			w->f->waiting--;
			file_put(w->f);
			break;
		}
	pthread_mutex_unlock(&mu);
	if (w) {
		fuse_reply_err(req, EINTR); /* the kernel restarts it if the signal says so */
		free(w);
	}
}

int locks_set(dev_t dev, ino_t ino, const struct lock_range *l, fuse_req_t wait)
{
	struct granted *g = NULL;
	struct lfile *f;
	struct waiter *w = NULL;
	int err = 0;

	/* Registered before the waiter can be seen by others: once it is queued, another thread
	 * may answer and free the request at any moment. An interrupt that came already is
	 * seen below (fuse_req_interrupted, under mu). */
	if (wait) {
		w = malloc(sizeof(*w));
		if (!w)
			return -ENOLCK;
		fuse_req_interrupt_func(wait, interrupted, NULL);
	}
	pthread_mutex_lock(&mu);
	f = file_get(dev, ino, l->type != F_UNLCK);
	if (!f) {
		err = l->type == F_UNLCK ? 0 : -ENOLCK;
		goto out;
	}
	if (l->cls == LK_FLOCK && l->type != F_UNLCK && f->locks) {
		drop_flock(f, l->owner);
		wake(f, &g);
	}
	if (l->type != F_UNLCK && first_conflict(f, l)) {
		if (!w) {
			err = -EAGAIN;
		} else if (fuse_req_interrupted(wait)) {
			err = -EINTR;
		} else {
			w->req = wait;
			w->f = f;
			w->r = *l;
			w->next = NULL;
			*wtail = w;
			wtail = &w->next;
			f->waiting++;
			w = NULL;
			err = 1;
		}
	} else {
		err = apply(f, l);
		if (!err)
			wake(f, &g);
	}
	file_put(f);
out:
	pthread_mutex_unlock(&mu);
	free(w);
	answer(g);
	return err;
}

/* Remove the locks of f that match; wake who waited for them. mu held. */
static void remove_if(struct lfile *f, bool (*match)(const struct lock_range *, const void *),
		      const void *arg, struct granted **g)
{
	struct lk **p = &f->locks, *l;
	bool gone = false;

	while ((l = *p))
		if (match(&l->r, arg)) {
			*p = l->next;
			free(l);
			gone = true;
		} else {
			p = &l->next;
		}
	if (gone)
		wake(f, g);
	file_put(f);
}

static bool posix_of(const struct lock_range *r, const void *owner)
{
	return r->cls == LK_POSIX && r->owner == *(const uint64_t *)owner;
}

void locks_flush(dev_t dev, ino_t ino, uint64_t owner)
{
	struct granted *g = NULL;
	struct lfile *f;

	if (!__atomic_load_n(&nfiles, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&mu);
	f = file_get(dev, ino, false);
	if (f)
		remove_if(f, posix_of, &owner, &g);
	pthread_mutex_unlock(&mu);
	answer(g);
}

struct rel {
	uint64_t open, flock_owner;
};

static bool released(const struct lock_range *r, const void *arg)
{
	const struct rel *rel = arg;
	return r->open == rel->open ||
	       (rel->flock_owner && r->cls == LK_FLOCK && r->owner == rel->flock_owner);
}

void locks_release(dev_t dev, ino_t ino, uint64_t open, uint64_t flock_owner)
{
	struct rel rel = {open, flock_owner};
	struct granted *g = NULL;
	struct lfile *f;

	if (!__atomic_load_n(&nfiles, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&mu);
	f = file_get(dev, ino, false);
	if (f)
		remove_if(f, released, &rel, &g);
	pthread_mutex_unlock(&mu);
	answer(g);
}

bool locks_held(dev_t dev, ino_t ino)
{
	bool held;

	if (!__atomic_load_n(&nfiles, __ATOMIC_RELAXED))
		return false;
	pthread_mutex_lock(&mu);
	struct lfile *f = file_get(dev, ino, false);
	held = f && f->locks;
	pthread_mutex_unlock(&mu);
	return held;
}

/* The locks of file (dev, ino) become those of (tdev, tino), with any it has. mu held. */
static void file_move(dev_t dev, ino_t ino, dev_t tdev, ino_t tino)
{
	struct lfile *f = file_find(dev, ino), *t;
	struct lk **end;

	if (!f)
		return;
	file_unlink(f);
	t = file_find(tdev, tino);
	if (!t) {
		f->dev = tdev;
		f->ino = tino;
		file_link(f);
		return;
	}
	for (end = &t->locks; *end; end = &(*end)->next)
		;
	*end = f->locks;
	for (struct waiter *w = waiters; w; w = w->next)
		if (w->f == f) {
			w->f = t;
			t->waiting++;
		}
	free(f);
	__atomic_sub_fetch(&nfiles, 1, __ATOMIC_RELAXED);
}

static void fwd_remove(dev_t dev, ino_t ino)
{
	for (struct fwd **p = &fwds[bucket(dev, ino)]; *p; p = &(*p)->hnext)
		if ((*p)->dev == dev && (*p)->ino == ino) {
			struct fwd *w = *p;
			*p = w->hnext;
			free(w);
			__atomic_sub_fetch(&nfwds, 1, __ATOMIC_RELAXED);
			return;
		}
}

/* Every entry that leads to (dev, ino) leads to (tdev, tino) instead. mu held. */
static void fwd_retarget(dev_t dev, ino_t ino, dev_t tdev, ino_t tino)
{
	for (unsigned b = 0; b < NBUCKETS && __atomic_load_n(&nfwds, __ATOMIC_RELAXED); b++)
		for (struct fwd *w = fwds[b]; w; w = w->hnext)
			if (w->tdev == dev && w->tino == ino) {
				w->tdev = tdev;
				w->tino = tino;
			}
}

void locks_published(dev_t odev, ino_t oino, dev_t ndev, ino_t nino, bool held)
{
	pthread_mutex_lock(&mu);
	fwd_remove(ndev, nino); /* a reused inode number: nothing leads from the new file */
	fwd_retarget(odev, oino, ndev, nino);
	if (held) {
		struct fwd *w = calloc(1, sizeof(*w));
		if (w) {
			unsigned b = bucket(odev, oino);
			w->dev = odev;
			w->ino = oino;
			w->tdev = ndev;
			w->tino = nino;
			w->hnext = fwds[b];
			fwds[b] = w;
			__atomic_add_fetch(&nfwds, 1, __ATOMIC_RELAXED);
		} else {
			log_warnx(
			    "out of memory: locks taken through the replaced version of a file "
			    "no longer meet those of its new version");
		}
	}
	file_move(odev, oino, ndev, nino);
	pthread_mutex_unlock(&mu);
}

void locks_unpublished(dev_t odev, ino_t oino, dev_t ndev, ino_t nino)
{
	pthread_mutex_lock(&mu);
	fwd_remove(odev, oino);
	fwd_retarget(ndev, nino, odev, oino); /* only this publish's led there: it is new */
	file_move(ndev, nino, odev, oino);
	pthread_mutex_unlock(&mu);
}

void locks_node_gone(dev_t dev, ino_t ino)
{
	if (!__atomic_load_n(&nfwds, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&mu);
	fwd_remove(dev, ino);
	pthread_mutex_unlock(&mu);
}

void locks_shutdown(void)
{
	struct waiter *w;

	pthread_mutex_lock(&mu);
	w = waiters;
	waiters = NULL;
	wtail = &waiters;
	for (unsigned b = 0; b < NBUCKETS; b++) {
		while (files[b]) {
			struct lfile *f = files[b];
			files[b] = f->hnext;
			while (f->locks) {
				struct lk *l = f->locks;
				f->locks = l->next;
				free(l);
			}
			free(f);
		}
		while (fwds[b]) {
			struct fwd *x = fwds[b];
			fwds[b] = x->hnext;
			free(x);
		}
	}
	__atomic_store_n(&nfiles, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&nfwds, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&mu);
	while (w) {
		struct waiter *next = w->next;
		fuse_reply_err(w->req, EINTR);
		free(w);
		w = next;
	}
}
