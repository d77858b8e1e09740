/* history.c - per-directory index of version numbers (see history.h). */
#define _GNU_SOURCE
#include "history.h"
#include "log.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct path_history {
	char *name;   /* NULL: empty slot */
	uint32_t *ns; /* sorted */
	uint32_t count, cap;
};

struct dir_history {
	dev_t dev;
	ino_t ino;
	struct path_history *slots; /* open addressing, power of two */
	size_t nslots, used;
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

static int insert(struct path_history *p, uint32_t n)
{
	uint32_t i;

	if (p->count == p->cap) {
		uint32_t *nn = realloc(p->ns, (p->cap = p->cap ? p->cap * 2 : 4) * sizeof(*nn));
		if (!nn)
			return -ENOMEM;
		p->ns = nn;
	}
	for (i = p->count; i > 0 && p->ns[i - 1] > n; i--)
		p->ns[i] = p->ns[i - 1];
	if (i > 0 && p->ns[i - 1] == n) { /* already there: undo the shift */
		memmove(&p->ns[i], &p->ns[i + 1], (p->count - i) * sizeof(*p->ns));
		return 0;
	}
	p->ns[i] = n;
	p->count++;
	return 0;
}

uint32_t history_parse(const char *entry, size_t *namelen)
{
	size_t len = strlen(entry);
	const char *p;
	uint64_t n = 0;

	if (len < 5 || entry[len - 1] != '~')
		return 0;
	for (p = entry + len - 2; p > entry && *p >= '0' && *p <= '9'; p--)
		;
	if (p - entry < 2 || *p != '~' || p[-1] != '.' || p[1] == '0' || p + 1 == entry + len - 1)
		return 0;
	for (const char *q = p + 1; q < entry + len - 1; q++) {
		n = n * 10 + (uint64_t)(*q - '0');
		if (n > UINT32_MAX)
			return 0;
	}
	if (p - 1 == entry) /* no name before ".~N~" */
		return 0;
	*namelen = (size_t)(p - 1 - entry);
	return (uint32_t)n;
}

static struct dir_history *load(int vdirfd)
{
	struct dir_history *d;
	struct stat st;
	struct dirent *e;
	DIR *dp;
	int fd;

	if (fstat(vdirfd, &st) < 0)
		return NULL;
	for (d = dirs; d; d = d->next)
		if (d->ino == st.st_ino && d->dev == st.st_dev)
			return d;
	fd = openat(vdirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(dp = fdopendir(fd))) {
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
	while ((e = readdir(dp))) {
		size_t len;
		uint32_t n = history_parse(e->d_name, &len);
		struct path_history *p = n ? slot(d, e->d_name, len, true) : NULL;
		if (p)
			insert(p, n);
		else if (!n && e->d_type != DT_DIR && strcmp(e->d_name, ".") &&
			 strcmp(e->d_name, "..") && strcmp(e->d_name, STORE_MARKER) != 0)
			log_info("ignoring %s in a .versions/ directory: not a version name",
				 e->d_name);
	}
	closedir(dp);
	d->next = dirs;
	dirs = d;
	return d;
}

int history_get(int vdirfd, const char *name, const uint32_t **ns, size_t *count)
{
	struct dir_history *d = load(vdirfd);
	struct path_history *p;

	if (!d)
		return -errno ? -errno : -ENOMEM;
	p = slot(d, name, strlen(name), false);
	*ns = p ? p->ns : NULL;
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

void history_del(int vdirfd, const char *name, uint32_t n)
{
	struct dir_history *d = load(vdirfd);
	struct path_history *p = d ? slot(d, name, strlen(name), false) : NULL;

	for (uint32_t i = 0; p && i < p->count; i++) {
		if (p->ns[i] == n) {
			memmove(&p->ns[i], &p->ns[i + 1], (p->count - i - 1) * sizeof(*p->ns));
			p->count--;
			return;
		}
	}
}

void history_free(void)
{
	while (dirs) {
		struct dir_history *d = dirs;
		dirs = d->next;
		for (size_t i = 0; i < d->nslots; i++) {
			free(d->slots[i].name);
			free(d->slots[i].ns);
		}
		free(d->slots);
		free(d);
	}
}
