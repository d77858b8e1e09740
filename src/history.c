/* history.c - per-directory index of version numbers (see history.h). */
#define _GNU_SOURCE
#include "history.h"
#include "links.h"
#include "log.h"
#include "names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct path_history {
	char *name;    /* NULL: empty slot */
	uint32_t *buf; /* the numbers, sorted, are buf[start .. start + count) */
	uint32_t start, count, cap;
};

/* The numbers of p: removing the oldest (retention, space) moves start, in O(1). */
static uint32_t *nums(const struct path_history *p)
{
	return p->buf ? p->buf + p->start : NULL;
}

struct dir_history {
	dev_t dev;
	ino_t ino;
	struct path_history *slots; /* open addressing, power of two */
	size_t nslots, used;
	ino_t *inos; /* its versions' inode numbers, until it joins the index (links.h) */
	size_t ninos, capinos;
	struct dir_history *next;
};

static struct dir_history *dirs; /* protected by the store lock */

static size_t hash_name(const char *s, size_t len)
{
	size_t h = 1469598103934665603ull;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

static struct path_history *slot(struct dir_history *d, const char *name, size_t len, bool make)
{
	if (make && (d->used + 1) * 2 > d->nslots) {
		size_t on = d->nslots, nn = on ? on * 2 : 64;
		struct path_history *os = d->slots, *ns = calloc(nn, sizeof(*ns));
		if (!ns)
			return NULL;
		d->slots = ns;
		d->nslots = nn;
		for (size_t i = 0; i < on; i++) {
			if (!os[i].name)
				continue;
			size_t h = hash_name(os[i].name, strlen(os[i].name)) & (nn - 1);
			while (ns[h].name)
				h = (h + 1) & (nn - 1);
			ns[h] = os[i];
		}
		free(os);
	}
	if (!d->nslots)
		return NULL;
	for (size_t h = hash_name(name, len) & (d->nslots - 1);; h = (h + 1) & (d->nslots - 1)) {
		struct path_history *p = &d->slots[h];
		if (!p->name) {
			if (!make || !(p->name = strndup(name, len)))
				return NULL;
			d->used++;
			return p;
		}
		if (!strncmp(p->name, name, len) && p->name[len] == 0)
			return p;
	}
}

/* Room for one number more at the end. The room the oldest left (start) is reclaimed once it
 * is at least as large as what remains, so that each number is moved O(1) times. */
static bool grow(struct path_history *p)
{
	uint32_t cap = p->cap ? p->cap * 2 : 4, *nn;

	if (p->start + p->count < p->cap)
		return true;
	if (p->start && p->start >= p->count) {
		memmove(p->buf, p->buf + p->start, p->count * sizeof(*p->buf));
		p->start = 0;
		return true;
	}
	if (!(nn = realloc(p->buf, cap * sizeof(*nn))))
		return false;
	p->buf = nn;
	p->cap = cap;
	return true;
}

static int insert(struct path_history *p, uint32_t n)
{
	uint32_t i, *ns;

	if (!grow(p))
		return -ENOMEM;
	ns = nums(p);
	for (i = p->count; i > 0 && ns[i - 1] > n; i--)
		ns[i] = ns[i - 1];
	if (i > 0 && ns[i - 1] == n) { /* already there: undo the shift */
		memmove(&ns[i], &ns[i + 1], (p->count - i) * sizeof(*ns));
		return 0;
	}
	ns[i] = n;
	p->count++;
	return 0;
}

static int cmp_n(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* A dir is read in hash order: its numbers are appended, then sorted once (insert() per
 * entry would be quadratic for a path with 100k versions). Names in a dir are unique. */
static bool append(struct path_history *p, uint32_t n)
{
	if (!grow(p))
		return false;
	p->buf[p->start + p->count++] = n;
	return true;
}

static void sort_all(struct dir_history *d)
{
	for (size_t i = 0; i < d->nslots; i++)
		if (d->slots[i].count > 1)
			qsort(nums(&d->slots[i]), d->slots[i].count, sizeof(uint32_t), cmp_n);
}

static struct dir_history *find(dev_t dev, ino_t ino)
{
	for (struct dir_history *d = dirs; d; d = d->next)
		if (d->ino == ino && d->dev == dev)
			return d;
	return NULL;
}

static void drop(struct dir_history *d)
{
	for (size_t i = 0; i < d->nslots; i++) {
		free(d->slots[i].name);
		free(d->slots[i].buf);
	}
	free(d->slots);
	free(d->inos);
	free(d);
}

static bool note_ino(struct dir_history *d, ino_t ino)
{
	if (d->ninos == d->capinos) {
		size_t cap = d->capinos ? d->capinos * 2 : 64;
		ino_t *n = realloc(d->inos, cap * sizeof(*n));
		if (!n)
			return false;
		d->inos = n;
		d->capinos = cap;
	}
	d->inos[d->ninos++] = ino;
	return true;
}

/* d joins the index (store lock held): its versions' links count from now on. */
static void adopt(struct dir_history *d)
{
	links_add_read(d->inos, d->ninos);
	free(d->inos);
	d->inos = NULL;
	d->ninos = d->capinos = 0;
	d->next = dirs;
	dirs = d;
}

/* Read the versions dir vdirfd (not consumed) into a new, unlinked dir_history. With subs,
 * the names of its subdirectories (mirrors of tree subdirectories) are appended there. */
static struct dir_history *scan(int vdirfd, char ***subs, size_t *nsubs)
{
	struct dir_history *d;
	struct stat st;
	struct dirent *e;
	bool failed = false;
	DIR *dp;
	int fd = openat(vdirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0 || !(dp = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		closedir(dp);
		return NULL;
	}
	d->dev = st.st_dev;
	d->ino = st.st_ino;
	for (errno = 0; (e = readdir(dp)); errno = 0) {
		size_t len;
		uint32_t n = names_version_parse(e->d_name, &len);
		struct path_history *p = n ? slot(d, e->d_name, len, true) : NULL;
		bool isdir = e->d_type == DT_DIR;

		if (n) {
			/* out of memory: a partial index would prune wrong */
			if (!p || !append(p, n) || !note_ino(d, e->d_ino))
				failed = true;
			continue;
		}
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    names_store_entry(e->d_name))
			continue;
		if (e->d_type == DT_UNKNOWN &&
		    fstatat(vdirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			isdir = S_ISDIR(st.st_mode);
		if (!isdir && !names_is_record(e->d_name, &len)) {
			log_info("ignoring %s in a .versions/ directory: not a version name",
				 e->d_name);
		} else if (isdir && subs) {
			char **ns = realloc(*subs, (*nsubs + 1) * sizeof(*ns));
			if (ns && (ns[*nsubs] = strdup(e->d_name)))
				(*nsubs)++;
			if (ns)
				*subs = ns;
		}
	}
	if (errno)
		failed = true; /* readdir failed: not the end of the directory */
	closedir(dp);
	if (failed) {
		drop(d);
		if (subs) {
			while (*nsubs)
				free((*subs)[--*nsubs]);
		}
		log_warnx("cannot read a .versions/ directory completely: tried again later");
		return NULL;
	}
	sort_all(d);
	return d;
}

static struct dir_history *load(int vdirfd)
{
	struct dir_history *d;
	struct stat st;

	if (fstat(vdirfd, &st) < 0)
		return NULL;
	if ((d = find(st.st_dev, st.st_ino)))
		return d;
	if ((d = scan(vdirfd, NULL, NULL)))
		adopt(d);
	return d;
}

int history_get(int vdirfd, const char *name, const uint32_t **ns, size_t *count)
{
	struct dir_history *d = load(vdirfd);
	struct path_history *p;

	if (!d)
		return -errno ? -errno : -ENOMEM;
	p = slot(d, name, strlen(name), false);
	*ns = p ? nums(p) : NULL;
	*count = p ? p->count : 0;
	return 0;
}

void history_add(int vdirfd, const char *name, uint32_t n)
{
	struct dir_history *d = load(vdirfd);
	struct path_history *p = d ? slot(d, name, strlen(name), true) : NULL;

	if (p)
		insert(p, n);
}

/* The index of n in p's numbers, or -1. */
static long search(const struct path_history *p, uint32_t n)
{
	const uint32_t *ns = nums(p);
	uint32_t lo = 0, hi = p->count;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (ns[mid] < n)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < p->count && ns[lo] == n ? (long)lo : -1;
}

void history_del(int vdirfd, const char *name, uint32_t n)
{
	struct dir_history *d = load(vdirfd);
	struct path_history *p = d ? slot(d, name, strlen(name), false) : NULL;
	long i = p ? search(p, n) : -1;

	if (i < 0)
		return;
	if (i == 0) { /* the oldest: what retention and space remove */
		p->start++;
		if (--p->count == 0)
			p->start = 0;
		return;
	}
	uint32_t *ns = nums(p);
	memmove(&ns[i], &ns[i + 1], (p->count - (uint32_t)i - 1) * sizeof(*ns));
	p->count--;
}

bool history_has(int vdirfd, const char *name, uint32_t n)
{
	struct dir_history *d = load(vdirfd);
	struct path_history *p = d ? slot(d, name, strlen(name), false) : NULL;

	return p && search(p, n) >= 0;
}

int history_each(int vdirfd, unsigned keep,
		 int (*fn)(void *arg, const char *name, const uint32_t *ns, size_t count),
		 void *arg)
{
	struct dir_history *d = load(vdirfd);

	if (!d)
		return -errno ? -errno : -ENOMEM;
	for (size_t i = 0; i < d->nslots; i++) {
		struct path_history *p = &d->slots[i];
		int err;
		if (!p->name || p->count <= keep)
			continue;
		if ((err = fn(arg, p->name, nums(p), p->count)))
			return err;
	}
	return 0;
}

void history_free(void)
{
	while (dirs) {
		struct dir_history *d = dirs;
		dirs = d->next;
		drop(d);
	}
}

/* The indexer: one thread, started after the mount, reads every versions dir once, each
 * without the store lock, and adds it under the lock unless a change in the meantime made
 * load() read it already (every change to a versions dir loads it first, under the lock). */
static struct {
	pthread_t thread;
	bool running;
	atomic_bool stop;
	pthread_mutex_t *lock;
	int vfd;
	size_t dirs, names, versions;
} indexer;

static void index_dir(int fd, unsigned depth)
{
	char **subs = NULL;
	size_t nsubs = 0;
	struct dir_history *d = scan(fd, depth < 256 ? &subs : NULL, &nsubs);

	if (d) {
		indexer.dirs++;
		for (size_t i = 0; i < d->nslots; i++) {
			indexer.names += d->slots[i].name != NULL;
			indexer.versions += d->slots[i].count;
		}
		pthread_mutex_lock(indexer.lock);
		if (find(d->dev, d->ino))
			drop(d);
		else
			adopt(d);
		pthread_mutex_unlock(indexer.lock);
	}
	for (size_t i = 0; i < nsubs; i++) {
		int sub =
		    atomic_load(&indexer.stop)
			? -1
			: openat(fd, subs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub >= 0) {
			index_dir(sub, depth + 1);
			close(sub);
		}
		free(subs[i]);
	}
	free(subs);
}

static void *index_main(void *arg)
{
	struct timespec t0, t1;
	int fd;

	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	fd = openat(indexer.vfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		index_dir(fd, 0);
		close(fd);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	log_info("indexed %zu versions of %zu names in %zu directories in %.0f ms%s",
		 indexer.versions, indexer.names, indexer.dirs,
		 (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
		 atomic_load(&indexer.stop) ? " (stopped early)" : "");
	links_index_done();
	return NULL;
}

int history_index_start(int vfd, pthread_mutex_t *lock)
{
	int err;

	indexer.vfd = vfd;
	indexer.lock = lock;
	atomic_store(&indexer.stop, false);
	err = pthread_create(&indexer.thread, NULL, index_main, NULL);
	indexer.running = err == 0;
	if (err)
		links_index_done(); /* each directory is read at its first change instead */
	return -err;
}

void history_index_stop(void)
{
	if (!indexer.running)
		return;
	atomic_store(&indexer.stop, true);
	pthread_join(indexer.thread, NULL);
	indexer.running = false;
}
