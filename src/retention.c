/* retention.c - how many old versions a path keeps, and removing versions.
 *
 * After each new version of a path, its oldest versions beyond `keep` (-o keep=N) are removed
 * (retention_apply); `binvfsctl prune` asks for the same with its own number (retention_prune). A
 * version that a process still uses is removed only when its last user is gone (the node
 * table defers it: node_defer_prune, then retention_remove_version). Callers hold the store lock,
 * except retention_prune's, which takes it one batch at a time. */
#define _GNU_SOURCE
#include "retention.h"
#include "history.h"
#include "links.h"
#include "log.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

/* The sorted version numbers of name (a copy the caller frees), from the history index. */
int retention_list_versions(int vdirfd, const char *name, uint32_t **ns, size_t *count)
{
	const uint32_t *h;
	size_t cnt;
	int err = history_get(vdirfd, name, &h, &cnt);

	if (err)
		return err;
	*ns = malloc((cnt ? cnt : 1) * sizeof(**ns));
	if (!*ns)
		return -ENOMEM;
	if (cnt)
		memcpy(*ns, h, cnt * sizeof(**ns));
	*count = cnt;
	return 0;
}

int retention_unlink_version(int vdirfd, const char *vname, ino_t ino)
{
	links_begin();
	int r = unlinkat(vdirfd, vname, 0);
	links_end(ino, r == 0 ? -1 : 0);
	return r;
}

/* Remove version n of name (its stored name) in vdirfd (rel below .versions/), unless a
 * process uses it: then its user's node removes it once unused (retention_remove_version). The
 * stat, the in-use check and the unlink run in one hold of the store lock, so what is
 * removed is what was checked, whoever changed the directory before. Returns 1 if removed,
 * 0 if kept or gone already, -1 on failure. */
static int remove_version(struct store *s, int vdirfd, const char *rel, const char *name,
			  uint32_t n)
{
	char vname[300], *vrel;
	struct stat st;
	int r = 0;

	snprintf(vname, sizeof(vname), NAMES_VERSION_FMT, name, n);
	if (fstatat(vdirfd, vname, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			history_del(vdirfd, name, n); /* gone already */
		return 0;
	}
	if (!(vrel = store_join(rel, vname)))
		return -1;
	if (s->in_use && s->in_use(&st, vrel, vdirfd, vname)) {
		log_info("keep %s/%s: in use, removed when its last user is gone", STORE_DIR, vrel);
	} else if (retention_unlink_version(vdirfd, vname, st.st_ino) == 0) {
		history_del(vdirfd, name, n);
		log_info("prune %s/%s", STORE_DIR, vrel);
		r = 1;
	} else {
		log_warn("prune %s/%s", STORE_DIR, vrel);
		r = -1;
	}
	free(vrel);
	return r;
}

/* Retention after a new version: remove the oldest of the versions ns[0..cnt) of name (its
 * stored name, names_stored) in vdirfd (rel below .versions/) until `keep` are left, at most
 * PRUNE_BATCH of them, since the caller (a publish, an rm) holds the store lock: a path with
 * more beyond `keep` (keep lowered at a remount) loses PRUNE_BATCH more at each new version,
 * or all at once, in batches, by a prune request. Returns how many were removed. */
int retention_apply(struct store *s, int vdirfd, const char *rel, const char *name, uint32_t *ns,
		    size_t cnt, unsigned keep)
{
	size_t beyond = cnt > keep ? cnt - keep : 0, todo = beyond;
	int removed = 0;

	if (todo > PRUNE_BATCH)
		todo = PRUNE_BATCH;
	for (size_t i = 0; i < todo; i++)
		if (remove_version(s, vdirfd, rel, name, ns[i]) > 0)
			removed++;
	if (beyond > todo)
		log_info(
		    "%s/%s%s%s: %zu more versions beyond keep=%u; each new version removes up to "
		    "%d of them, or `binvfsctl prune` all",
		    STORE_DIR, rel, *rel ? "/" : "", name, beyond - todo, keep, PRUNE_BATCH);
	return removed;
}

/* The versions a prune request removes: for each name, its oldest numbers beyond keep, as the
 * index had them when the request began. */
struct victim {
	char *name; /* stored name */
	uint32_t *ns;
	size_t n;
};

struct victims {
	struct victim *v;
	size_t n, cap, total;
	unsigned keep;
};

static int victims_add(void *arg, const char *name, const uint32_t *ns, size_t count)
{
	struct victims *vs = arg;
	struct victim *v;

	if (count <= vs->keep)
		return 0;
	if (vs->n == vs->cap) {
		size_t cap = vs->cap ? vs->cap * 2 : 16;
		struct victim *nv = realloc(vs->v, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		vs->v = nv;
		vs->cap = cap;
	}
	v = &vs->v[vs->n];
	v->n = count - vs->keep;
	v->name = strdup(name);
	v->ns = malloc(v->n * sizeof(*v->ns));
	if (!v->name || !v->ns) {
		free(v->name);
		free(v->ns);
		return -ENOMEM;
	}
	memcpy(v->ns, ns, v->n * sizeof(*v->ns));
	vs->n++;
	vs->total += v->n;
	return 0;
}

static void victims_free(struct victims *vs)
{
	for (size_t i = 0; i < vs->n; i++) {
		free(vs->v[i].name);
		free(vs->v[i].ns);
	}
	free(vs->v);
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void pause_ns(long ns)
{
	nanosleep(&(struct timespec){0, ns}, NULL);
}

/* The store lock, taken as store_lock() does, but politely: the prune polls the mutex and
 * never counts as waiting for it (store.waiting), so any other thread that waits goes first. */
static void prune_lock(struct store *s)
{
	while (pthread_mutex_trylock(&s->lock) != 0)
		pause_ns(PRUNE_PAUSE_NS);
	while (flock(s->lockfd, LOCK_EX) < 0 && errno == EINTR)
		;
}

/* Does another thread wait for the store lock, which the caller holds (taken by prune_lock)?
 * store_lock() counts its waiters. */
static bool lock_waited(struct store *s)
{
	return __atomic_load_n(&s->waiting, __ATOMIC_SEQ_CST) > 0;
}

/* Release the store lock between two batches. A thread that waits for it was woken by the
 * unlock, but may not run before the prune would take the lock again (on a busy machine a
 * woken thread can wait for a CPU for milliseconds, and glibc's mutex is not fair): wait until
 * it has taken the lock, at most PRUNE_HANDOFF_NS. */
static void prune_unlock(struct store *s)
{
	bool waited = lock_waited(s);
	unsigned long long taken = __atomic_load_n(&s->taken, __ATOMIC_SEQ_CST);
	uint64_t t0;

	store_unlock(s);
	pause_ns(PRUNE_PAUSE_NS);
	for (t0 = now_ns(); waited && now_ns() - t0 < PRUNE_HANDOFF_NS;) {
		if (__atomic_load_n(&s->taken, __ATOMIC_SEQ_CST) != taken)
			break; /* a waiter has it now */
		pause_ns(PRUNE_PAUSE_NS);
	}
}

/* Under the store lock: the versions dir of the tree directory dirfd, if it is still the one
 * (dev, ino) the request began with. */
static int prune_dir(struct store *s, int dirfd, dev_t dev, ino_t ino, int *vdirfd, char **rel)
{
	struct stat st;
	int err = store_versions_dir(s, dirfd, false, vdirfd, rel);

	if (err)
		return err;
	if (fstat(*vdirfd, &st) < 0 || st.st_dev != dev || st.st_ino != ino) {
		err = -ESTALE;
		close(*vdirfd);
		free(*rel);
		return err;
	}
	return 0;
}

/* Apply retention now: keep the newest `keep` versions of dirfd/name, or of every name with
 * versions in that directory when name is NULL. The caller does not hold the store lock: the
 * victims are taken from the history index under it (O(names + victims), no directory
 * listing), then removed oldest first in batches, each in one hold of the lock of at most
 * PRUNE_BATCH versions or PRUNE_BATCH_NS, so that publishes and other changes run between
 * two batches. Versions kept meanwhile are newer than every victim and stay; a victim that is
 * no longer in the index (removed meanwhile: space, a deferred removal, another prune) is
 * passed over. Returns the number removed or -errno. */
int retention_prune(struct store *s, int dirfd, const char *name, unsigned keep)
{
	struct victims vs = {.keep = keep};
	struct stat st;
	char *rel0, *rel;
	int vdirfd, err, removed = 0;
	size_t vi = 0, k = 0, tried = 0;

	store_lock(s);
	err = store_versions_dir(s, dirfd, false, &vdirfd, &rel0);
	if (err) {
		store_unlock(s);
		return err == -ENOENT ? 0 : err;
	}
	if (fstat(vdirfd, &st) < 0) {
		err = -errno;
	} else if (name) {
		char stored[NAMES_STORED_MAX + 1];
		const uint32_t *ns;
		size_t cnt;
		names_stored(name, stored);
		err = history_get(vdirfd, stored, &ns, &cnt);
		if (!err)
			err = victims_add(&vs, stored, ns, cnt);
	} else {
		err = history_each(vdirfd, keep, victims_add, &vs);
	}
	close(vdirfd);
	store_unlock(s);
	while (!err && vi < vs.n) {
		uint64_t t0;
		prune_lock(s);
		if (prune_dir(s, dirfd, st.st_dev, st.st_ino, &vdirfd, &rel) < 0) {
			/* the directory was removed or replaced meanwhile: its versions moved */
			store_unlock(s);
			log_warnx(
			    "prune %s%s%s: the directory changed during the prune; %zu of its "
			    "versions not tried",
			    STORE_DIR, *rel0 ? "/" : "", rel0, vs.total - tried);
			break;
		}
		t0 = now_ns();
		for (int b = 0; vi < vs.n && b < PRUNE_BATCH; b++) {
			struct victim *v = &vs.v[vi];
			if (history_has(vdirfd, v->name, v->ns[k]) &&
			    remove_version(s, vdirfd, rel, v->name, v->ns[k]) > 0)
				removed++;
			tried++;
			if (++k == v->n) {
				vi++;
				k = 0;
			}
			if (now_ns() - t0 > PRUNE_BATCH_NS)
				break;
		}
		prune_unlock(s);
		close(vdirfd);
		free(rel);
	}
	victims_free(&vs);
	free(rel0);
	return err ? err : removed;
}

/* Remove a deferred version once unused, if it still is the same inode; never follows links. */
int retention_remove_version(struct store *s, const char *vrel, dev_t dev, ino_t ino)
{
	char *path = strdup(vrel), *slash, *base;
	int dirfd;
	struct stat st;
	int err = 0;

	if (!path)
		return -ENOMEM;
	slash = strrchr(path, '/');
	dirfd = dup(s->vfd);
	if (dirfd < 0) {
		free(path);
		return -errno;
	}
	if (slash) {
		char *save = NULL;
		*slash = 0;
		for (char *c = strtok_r(path, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
			int next = store_open_dir(dirfd, c, O_PATH);
			err = next < 0 ? -errno : 0;
			close(dirfd);
			if (next < 0) {
				free(path);
				return err;
			}
			dirfd = next;
		}
		base = slash + 1;
	} else {
		base = path;
	}
	if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == dev &&
	    st.st_ino == ino) {
		size_t len;
		uint32_t n = names_version_parse(base, &len);
		if (retention_unlink_version(dirfd, base, ino) < 0) {
			err = -errno;
		} else if (n) {
			base[len] = 0;
			history_del(dirfd, base, n);
			base[len] = '.';
		}
		if (!err)
			log_info("prune %s/%s (its last user is gone)", STORE_DIR, vrel);
	}
	close(dirfd);
	free(path);
	return err;
}

void retention_remove_deferred(struct store *s, const char *vrel, dev_t dev, ino_t ino)
{
	store_lock(s);
	retention_remove_version(s, vrel, dev, ino);
	store_unlock(s);
}
