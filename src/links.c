/* links.c - the number of .versions/ entries of each inode (see links.h).
 *
 * Two parts, for the store's filesystem:
 * - the entries the history index read, as one sorted array of inode numbers (one per entry,
 *   duplicates for an inode with several versions: 8 bytes per version, no slack). The index
 *   adds each versions directory's d_ino (no stat) when it reads it; the array is sorted once,
 *   when the indexer is done, off every lock;
 * - the changes this daemon made since, in a small hash table inode number -> difference (+1
 *   per version link made, -1 per one removed), dropped from it when they cancel out.
 * A version link and its count change together under the write lock; a reader's fstat and its
 * look-up run under the read lock, so the difference it reports is never off by a link in
 * flight.
 *
 * Until the indexer is done, an inode's versions may lie in a directory not read yet. A file
 * with one link does not need them (the node knows whether that link is a version, and this
 * session's changes are in the table), so only a file with several links waits for the index,
 * at most LINKS_WAIT_S, in the first moments after a mount. */
#define _GNU_SOURCE
#include "links.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define LINKS_WAIT_S 2

/* The links lock (rwlock, writers preferred). Lock order (docs/design.md §9): a leaf. Nothing
 * is taken under it but done_lock (links_index_done: lock -> done_lock; a reader waiting for
 * the index drops it first), so callers hold it under their own: the writers (links_begin/end
 * around each version linkat/unlinkat/rename: keep.c, retention.c, release.c's commit) under
 * the store lock, the indexer (links_add_read, links_index_done) under none, the readers
 * (links_fstatat: LOOKUP, GETATTR) under what their request holds. */
static pthread_rwlock_t lock;
static dev_t sdev;
static uint64_t *base; /* what the index read, sorted once done; lock */
static size_t nbase;
static uint64_t *pending; /* what the index read, before it is done; lock */
static size_t npending, cappending;
static uint64_t *keys; /* changes since: open addressing, 0 = empty (no inode 0); lock */
static int32_t *deltas;
static size_t nslots, used;

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static bool done; /* written under both done_lock and the write lock */

void links_init(dev_t store_dev)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
	/* GETATTRs come in floods; a publish must not wait behind all of them */
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&lock, &a);
	pthread_rwlockattr_destroy(&a);
	sdev = store_dev;
	done = false;
}

void links_free(void)
{
	free(base);
	free(pending);
	free(keys);
	free(deltas);
	base = pending = keys = NULL;
	deltas = NULL;
	nbase = npending = cappending = nslots = used = 0;
	pthread_rwlock_destroy(&lock);
}

static size_t hash(uint64_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull;
	return (size_t)(h ^ (h >> 31)) & (nslots - 1);
}

static size_t find(uint64_t ino)
{
	size_t i = hash(ino);

	while (keys[i] && keys[i] != ino)
		i = (i + 1) & (nslots - 1);
	return i;
}

static bool grow(void)
{
	size_t on = nslots, nn = on ? on * 2 : 256;
	uint64_t *ok = keys, *nk = calloc(nn, sizeof(*nk));
	int32_t *od = deltas, *nd = calloc(nn, sizeof(*nd));

	if (!nk || !nd) {
		free(nk);
		free(nd);
		return false;
	}
	keys = nk;
	deltas = nd;
	nslots = nn;
	for (size_t i = 0; i < on; i++) {
		if (ok[i]) {
			size_t j = find(ok[i]);
			keys[j] = ok[i];
			deltas[j] = od[i];
		}
	}
	free(ok);
	free(od);
	return true;
}

/* Remove slot i, moving later entries of its cluster back (no tombstones). */
static void erase(size_t i)
{
	size_t j = i;

	keys[i] = 0;
	used--;
	for (;;) {
		j = (j + 1) & (nslots - 1);
		if (!keys[j])
			return;
		size_t home = hash(keys[j]);
		/* move j into the hole i unless its home lies cyclically in (i, j] */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			keys[i] = keys[j];
			deltas[i] = deltas[j];
			keys[j] = 0;
			i = j;
		}
	}
}

/* write lock held */
static void change(uint64_t ino, int delta)
{
	size_t i;

	if (!ino || !delta)
		return;
	if ((used + 1) * 4 > nslots * 3 && !grow())
		return; /* out of memory: this link is not counted */
	i = find(ino);
	if (!keys[i]) {
		keys[i] = ino;
		deltas[i] = 0;
		used++;
	}
	deltas[i] += delta;
	if (!deltas[i])
		erase(i);
}

/* read lock held */
static int32_t changed(uint64_t ino)
{
	size_t i;

	if (!nslots)
		return 0;
	i = find(ino);
	return keys[i] ? deltas[i] : 0;
}

/* read lock held; a is sorted */
static size_t count_sorted(const uint64_t *a, size_t n, uint64_t ino)
{
	size_t lo = 0, hi = n, first;

	while (lo < hi) { /* the first >= ino */
		size_t mid = lo + (hi - lo) / 2;
		if (a[mid] < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	first = lo;
	for (hi = n; lo < hi;) { /* the first > ino */
		size_t mid = lo + (hi - lo) / 2;
		if (a[mid] <= ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo - first;
}

void links_begin(void)
{
	pthread_rwlock_wrlock(&lock);
}

void links_end(ino_t ino, int delta)
{
	int err = errno; /* the caller's link or unlink may have failed: keep its errno */

	change(ino, delta);
	pthread_rwlock_unlock(&lock);
	errno = err;
}

void links_add_read(const ino_t *inos, size_t n)
{
	pthread_rwlock_wrlock(&lock);
	if (!done && npending + n > cappending) {
		size_t cap = cappending ? cappending : 4096;
		while (cap < npending + n)
			cap *= 2;
		uint64_t *p = realloc(pending, cap * sizeof(*p));
		if (p) {
			pending = p;
			cappending = cap;
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (!done && npending < cappending)
			pending[npending++] = inos[i];
		else
			change(inos[i], 1); /* read after the index was done (or out of memory) */
	}
	pthread_rwlock_unlock(&lock);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

void links_index_done(void)
{
	uint64_t *a;
	size_t n;

	pthread_rwlock_wrlock(&lock);
	a = pending;
	n = npending;
	pending = NULL;
	npending = cappending = 0;
	pthread_rwlock_unlock(&lock);
	/* sorted without the lock: nobody reads it before it is done */
	if (n) {
		qsort(a, n, sizeof(*a), cmp_u64);
		uint64_t *fit = realloc(a, n * sizeof(*a));
		if (fit)
			a = fit;
	}
	pthread_rwlock_wrlock(&lock);
	base = a;
	nbase = n;
	for (size_t i = 0; i < npending; i++) /* read while it was being sorted */
		change(pending[i], 1);
	free(pending);
	pending = NULL;
	npending = cappending = 0;
	pthread_mutex_lock(&done_lock);
	done = true;
	pthread_cond_broadcast(&done_cond);
	pthread_mutex_unlock(&done_lock);
	pthread_rwlock_unlock(&lock);
}

static void wait_index(void)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += LINKS_WAIT_S;
	pthread_mutex_lock(&done_lock);
	while (!done && pthread_cond_timedwait(&done_cond, &done_lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&done_lock);
}

int links_fstatat(int dirfd, const char *name, struct stat *st, bool version_only)
{
	int flags = AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH);
	bool waited = false;

	for (;;) {
		int64_t v;

		pthread_rwlock_rdlock(&lock);
		if (fstatat(dirfd, name, st, flags) < 0) {
			int err = -errno;
			pthread_rwlock_unlock(&lock);
			return err;
		}
		if (!S_ISREG(st->st_mode) || st->st_dev != sdev) {
			pthread_rwlock_unlock(&lock);
			return 0;
		}
		if (st->st_nlink >= 2 && !done && !waited) {
			pthread_rwlock_unlock(&lock);
			wait_index(); /* its versions may lie in a directory not read yet */
			waited = true;
			continue;
		}
		v = changed(st->st_ino) + (int64_t)count_sorted(base, nbase, st->st_ino);
		if (st->st_nlink >= 2 && !done) /* the wait timed out: what was read so far */
			for (size_t i = 0; i < npending; i++)
				v += pending[i] == st->st_ino;
		pthread_rwlock_unlock(&lock);
		if (version_only && st->st_nlink == 1 && v < 1)
			v = 1; /* its directory is not in the index yet */
		if (v < 0)
			v = 0;
		st->st_nlink = (int64_t)st->st_nlink > v ? st->st_nlink - (nlink_t)v : 0;
		return 0;
	}
}
