/* space.c - versions yield space to current files (see space.h).
 *
 * "Oldest first across the store": every .versions/ directory is read, the numbers of each
 * name sorted, and the oldest version of each name (its lowest number) is stat'ed for the time
 * it was kept (its ctime: linking it into .versions/ set it). A heap then hands out the oldest
 * of all; once it is removed (or skipped), that name's next version takes its place. So a
 * yield costs one readdir of the store, one stat per name and one per version looked at, and it
 * only happens when space is short. A version is skipped if the kernel holds its node (a
 * process runs, maps, reads or has just looked it up) or if its inode has other links (removing
 * it would free nothing). */
#define _GNU_SOURCE
#include "space.h"
#include "history.h"
#include "log.h"
#include "names.h"
#include "store.h"
#include "retention.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct vname {
	size_t dir;   /* index into the walk's rels */
	char *name;   /* the file's name, without ".~N~" */
	uint32_t *ns; /* its version numbers, sorted */
	size_t cnt, pos;
	struct stat st; /* of ns[pos] */
};

struct walk {
	char **rels; /* each versions dir below .versions/ ("" for the top) */
	size_t nrels;
	struct vname *v;
	size_t nv, capv;
	size_t *heap; /* indices into v, oldest ctime first */
	size_t nheap;
	int cur_dir; /* the versions dir open in cur_fd (an index into rels), -1 none */
	int cur_fd;
};

uint64_t space_avail(struct store *s)
{
	struct statvfs sv;

	if (fstatvfs(s->rootfd, &sv) < 0)
		return UINT64_MAX; /* cannot tell: do not prune */
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

bool space_short(struct store *s)
{
	return s->reserve && space_avail(s) < s->reserve;
}

static bool older(const struct stat *a, const struct stat *b)
{
	if (a->st_ctim.tv_sec != b->st_ctim.tv_sec)
		return a->st_ctim.tv_sec < b->st_ctim.tv_sec;
	return a->st_ctim.tv_nsec < b->st_ctim.tv_nsec;
}

static void heap_push(struct walk *w, size_t i)
{
	size_t k = w->nheap++;

	while (k && older(&w->v[i].st, &w->v[w->heap[(k - 1) / 2]].st)) {
		w->heap[k] = w->heap[(k - 1) / 2];
		k = (k - 1) / 2;
	}
	w->heap[k] = i;
}

static size_t heap_pop(struct walk *w)
{
	size_t top = w->heap[0], last = w->heap[--w->nheap], k = 0;

	for (;;) {
		size_t c = 2 * k + 1;
		if (c >= w->nheap)
			break;
		if (c + 1 < w->nheap && older(&w->v[w->heap[c + 1]].st, &w->v[w->heap[c]].st))
			c++;
		if (!older(&w->v[w->heap[c]].st, &w->v[last].st))
			break;
		w->heap[k] = w->heap[c];
		k = c;
	}
	if (w->nheap)
		w->heap[k] = last;
	return top;
}

/* The versions dir rels[dir], opened one component at a time without following links. */
static int dir_fd(struct store *s, struct walk *w, size_t dir)
{
	char *path, *save = NULL;
	int fd;

	if (w->cur_dir == (int)dir)
		return w->cur_fd;
	if (w->cur_fd >= 0)
		close(w->cur_fd);
	w->cur_dir = -1;
	w->cur_fd = -1;
	path = strdup(w->rels[dir]);
	fd = path ? dup(s->vfd) : -1;
	for (char *c = path ? strtok_r(path, "/", &save) : NULL; fd >= 0 && c;
	     c = strtok_r(NULL, "/", &save)) {
		int next = openat(fd, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(fd);
		fd = next;
	}
	free(path);
	if (fd >= 0) {
		w->cur_dir = (int)dir;
		w->cur_fd = fd;
	}
	return fd;
}

static void vname_str(const struct vname *v, char *buf, size_t len)
{
	snprintf(buf, len, NAMES_VERSION_FMT, v->name, v->ns[v->pos]);
}

/* Move v to its next version that still exists and push it; false when it has none left. */
static void advance(struct store *s, struct walk *w, size_t i)
{
	struct vname *v = &w->v[i];
	char vn[300];
	int fd = dir_fd(s, w, v->dir);

	for (; fd >= 0 && v->pos < v->cnt; v->pos++) {
		vname_str(v, vn, sizeof(vn));
		if (fstatat(fd, vn, &v->st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(v->st.st_mode)) {
			heap_push(w, i);
			return;
		}
	}
}

struct entry {
	char *name; /* a version entry, cut before ".~N~" */
	uint32_t n;
};

static int cmp_entry(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int add_rel(struct walk *w, const char *rel)
{
	char **nr = realloc(w->rels, (w->nrels + 1) * sizeof(*nr));

	if (!nr)
		return -ENOMEM;
	w->rels = nr;
	if (!(nr[w->nrels] = strdup(rel)))
		return -ENOMEM;
	return (int)w->nrels++;
}

/* Group one dir's version entries by name into w->v. Takes the entries' names. */
static int add_names(struct walk *w, size_t dir, struct entry *e, size_t ne)
{
	if (ne)
		qsort(e, ne, sizeof(*e), cmp_entry);
	for (size_t i = 0, j; i < ne; i = j) {
		struct vname *v;
		for (j = i + 1; j < ne && !strcmp(e[j].name, e[i].name); j++)
			;
		if (w->nv == w->capv) {
			size_t cap = w->capv ? w->capv * 2 : 64;
			struct vname *nv = realloc(w->v, cap * sizeof(*nv));
			if (!nv)
				return -ENOMEM;
			w->v = nv;
			w->capv = cap;
		}
		v = &w->v[w->nv];
		memset(v, 0, sizeof(*v));
		v->dir = dir;
		v->cnt = j - i;
		v->ns = malloc(v->cnt * sizeof(*v->ns));
		if (!v->ns)
			return -ENOMEM;
		for (size_t k = i; k < j; k++)
			v->ns[k - i] = e[k].n;
		v->name = e[i].name;
		e[i].name = NULL;
		w->nv++;
	}
	return 0;
}

/* A version entry (name without ".~N~", N) of the directory walk_dir reads. */
static int push_entry(struct entry **e, size_t *ne, size_t *cap, const char *name, size_t len,
		      uint32_t n)
{
	if (*ne == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct entry *ee = realloc(*e, ncap * sizeof(**e));
		if (!ee)
			return -ENOMEM;
		*e = ee;
		*cap = ncap;
	}
	(*e)[*ne].n = n;
	if (!((*e)[*ne].name = strndup(name, len)))
		return -ENOMEM;
	(*ne)++;
	return 0;
}

/* A subdirectory of the directory walk_dir reads, walked after it. */
static int push_sub(char ***subs, size_t *nsubs, const char *name)
{
	char **ns = realloc(*subs, (*nsubs + 1) * sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	*subs = ns;
	if (!(ns[*nsubs] = strdup(name)))
		return -ENOMEM;
	(*nsubs)++;
	return 0;
}

static int walk_sub(struct walk *w, int dfd, const char *rel, const char *name, unsigned depth);

/* Read the versions dir fd (rel below .versions/) and, below it, every mirror dir. */
static int walk_dir(struct walk *w, int fd, const char *rel, unsigned depth)
{
	DIR *d = fdopendir(fd);
	struct entry *e = NULL;
	size_t ne = 0, cap = 0;
	char **subs = NULL;
	size_t nsubs = 0;
	struct dirent *de;
	int dir, err = 0;

	if (!d) {
		close(fd);
		return -errno;
	}
	dir = add_rel(w, rel);
	if (dir < 0) {
		closedir(d);
		return dir;
	}
	while (!err && (de = readdir(d))) {
		size_t len;
		uint32_t n = names_version_parse(de->d_name, &len);
		struct stat st;

		if (n) {
			err = push_entry(&e, &ne, &cap, de->d_name, len, n);
			continue;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    !strcmp(de->d_name, STORE_STAGING) || depth >= 256)
			continue;
		if (de->d_type == DT_DIR ||
		    (de->d_type == DT_UNKNOWN &&
		     fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		     S_ISDIR(st.st_mode))) {
			err = push_sub(&subs, &nsubs, de->d_name);
		}
	}
	if (!err)
		err = add_names(w, (size_t)dir, e, ne);
	for (size_t i = 0; i < ne; i++)
		free(e[i].name);
	free(e);
	for (size_t i = 0; i < nsubs; i++) {
		if (!err)
			err = walk_sub(w, dirfd(d), rel, subs[i], depth);
		free(subs[i]);
	}
	free(subs);
	closedir(d);
	return err;
}

/* walk_dir of the subdirectory name of the versions dir dfd (rel). */
static int walk_sub(struct walk *w, int dfd, const char *rel, const char *name, unsigned depth)
{
	int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	size_t rl = strlen(rel) + strlen(name) + 2;
	char *srel;
	int err;

	if (sub < 0)
		return 0; /* gone meanwhile */
	srel = malloc(rl);
	if (!srel) {
		close(sub);
		return -ENOMEM;
	}
	snprintf(srel, rl, "%s%s%s", rel, *rel ? "/" : "", name);
	err = walk_dir(w, sub, srel, depth + 1);
	free(srel);
	return err;
}

static void walk_free(struct walk *w)
{
	for (size_t i = 0; i < w->nv; i++) {
		free(w->v[i].name);
		free(w->v[i].ns);
	}
	for (size_t i = 0; i < w->nrels; i++)
		free(w->rels[i]);
	free(w->v);
	free(w->rels);
	free(w->heap);
	if (w->cur_fd >= 0)
		close(w->cur_fd);
}

/* May this version yield? Only if removing it frees its blocks (no other link, no node of the
 * kernel's), and only a version of the user the space is for: one user's need never removes
 * another user's history (root's, uid 0, may remove anyone's). */
static bool may_yield(struct store *s, const struct stat *st, uid_t uid)
{
	return st->st_nlink == 1 && (uid == 0 || st->st_uid == uid) &&
	       !(s->busy && s->busy(st->st_dev, st->st_ino));
}

struct victim {
	size_t dir; /* index into the walk's rels */
	char name[300];
	const char *stored; /* the walk's name, for the history index */
	uint32_t n;
	ino_t ino;
};

/* The oldest versions that may yield, until their blocks cover `need` bytes: *out (count in
 * *cnt). If all of them together cannot cover it, none: a version is removed only when that
 * makes the change fit, never for a need that cannot be met (fallocate -l 1T). */
static int plan_victims(struct store *s, struct walk *w, uint64_t need, uid_t uid,
			struct victim **out, size_t *cnt)
{
	struct victim *vs = NULL;
	size_t n = 0, cap = 0;
	uint64_t sum = 0;

	while (sum < need && w->nheap) {
		size_t i = heap_pop(w);
		struct vname *v = &w->v[i];

		if (may_yield(s, &v->st, uid)) {
			if (n == cap) {
				struct victim *g =
				    realloc(vs, (cap = cap ? 2 * cap : 16) * sizeof(*g));
				if (!g) {
					free(vs);
					return -ENOMEM;
				}
				vs = g;
			}
			vs[n] = (struct victim){.dir = v->dir,
						.stored = v->name,
						.n = v->ns[v->pos],
						.ino = v->st.st_ino};
			vname_str(v, vs[n].name, sizeof(vs[n].name));
			sum += (uint64_t)v->st.st_blocks * 512;
			n++;
		}
		v->pos++;
		advance(s, w, i);
	}
	if (sum < need)
		n = 0;
	*out = vs;
	*cnt = n;
	return 0;
}

bool space_yield(struct store *s, uint64_t want, uid_t uid, const char *why)
{
	struct walk w = {.cur_dir = -1, .cur_fd = -1};
	uint64_t avail = space_avail(s), start = avail;
	struct victim *vs = NULL;
	size_t removed = 0, nv = 0;
	int fd, err;

	if (avail >= want)
		return true;
	fd = openat(s->vfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	err = fd < 0 ? -errno : walk_dir(&w, fd, "", 0);
	if (!err && w.nv && !(w.heap = malloc(w.nv * sizeof(*w.heap))))
		err = -ENOMEM;
	for (size_t i = 0; !err && i < w.nv; i++)
		advance(s, &w, i);
	if (!err)
		err = plan_victims(s, &w, want - avail, uid, &vs, &nv);
	if (err) {
		errno = -err;
		log_warn("cannot read the store to free space for %s", why);
		walk_free(&w);
		return false;
	}
	for (size_t k = 0; k < nv && avail < want; k++) {
		int dfd = dir_fd(s, &w, vs[k].dir);
		if (dfd >= 0 && retention_unlink_version(dfd, vs[k].name, vs[k].ino) == 0) {
			history_del(dfd, vs[k].stored, vs[k].n);
			log_info("prune %s/%s%s%s: space for %s", STORE_DIR, w.rels[vs[k].dir],
				 *w.rels[vs[k].dir] ? "/" : "", vs[k].name, why);
			removed++;
			avail = space_avail(s);
		}
	}
	log_info("low on space for %s: %zu old versions removed, %llu KiB -> %llu KiB free%s", why,
		 removed, (unsigned long long)(start >> 10), (unsigned long long)(avail >> 10),
		 avail < want
		     ? (nv ? " (no unused version left)"
			   : " (unused versions of this user cannot cover it: none removed)")
		     : "");
	free(vs);
	walk_free(&w);
	return avail >= want;
}

void space_keep_reserve(struct store *s, uid_t uid)
{
	if (space_short(s))
		space_yield(s, s->reserve, uid, "the reserve");
}
