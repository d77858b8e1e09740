/* vlist.c - version listing through the mount: one file's versions, counts per directory,
 * and the mount-wide inode index. */
#define _GNU_SOURCE
#include "vlist.h"
#include "ctl.h"
#include "names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmp_version(const void *a, const void *b)
{
	const struct version *x = a, *y = b;
	return x->n < y->n ? -1 : x->n > y->n;
}

char *vlist_mirror(const char *dir)
{
	char *out = xstrdup(""), *copy = xstrdup(dir), *save = NULL;

	for (char *c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		bool esc = names_mirror_escaped(c);
		char *next = xasprintf("%s/%s%s", out, c, esc ? NAMES_MIRROR_SUFFIX : "");
		free(out);
		out = next;
	}
	free(copy);
	return out;
}

/* The whole name of the shortened stored name (len bytes) in the versions dir vdir, from its
 * record "<stored>.~~" (names.h); NULL if there is none, or it names another. */
static char *recorded_name(const char *vdir, const char *stored, size_t len)
{
	char *rec = xasprintf("%s/%.*s%s", vdir, (int)len, stored, NAMES_MIRROR_SUFFIX);
	char buf[NAME_MAX + 2], check[NAMES_STORED_MAX + 1];
	int fd = open(rec, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	free(rec);
	if (n <= 0 || n > NAME_MAX || memchr(buf, 0, (size_t)n) || memchr(buf, '/', (size_t)n))
		return NULL;
	buf[n] = 0;
	names_stored(buf, check);
	return strlen(check) == len && !strncmp(check, stored, len) ? xstrdup(buf) : NULL;
}

/* The tree path a command means: a path inside .versions/ names the file it is a version of
 * (mirror directory names unescaped). */
static char *tree_rel(const char *rel)
{
	char *out, *base, *slash;
	size_t nlen;

	if (strncmp(rel, STORE_DIR "/", sizeof(STORE_DIR)) != 0)
		return xstrdup(rel);
	out = xstrdup(rel + sizeof(STORE_DIR));
	/* unescape the directory components in place */
	for (char *c = out; (slash = strchr(c, '/')); c = slash + 1) {
		size_t len = names_mirror_unescaped_len(c, (size_t)(slash - c));
		if (c + len < slash) {
			memmove(c + len, slash, strlen(slash) + 1);
			slash = c + len;
		}
	}
	base = strrchr(out, '/');
	base = base ? base + 1 : out;
	if (names_version_parse(base, &nlen))
		base[nlen] = 0;
	return out;
}

int vlist_load(const struct target *t, struct vlist *l)
{
	char *rel = tree_rel(t->rel), *slash, *dir, stored[NAMES_STORED_MAX + 1];
	struct stat cur;
	bool exists;
	DIR *d;

	memset(l, 0, sizeof(*l));
	if (!*rel || !strcmp(t->rel, STORE_DIR)) {
		free(rel);
		return ctl_err("%s: is a directory, not a file", t->arg);
	}
	slash = strrchr(rel, '/');
	if (slash) {
		char *tdir = xasprintf("%.*s", (int)(slash - rel), rel);
		dir = vlist_mirror(tdir);
		free(tdir);
	} else {
		dir = xstrdup("");
	}
	l->name = xstrdup(slash ? slash + 1 : rel);
	l->vdir = xasprintf("%s%s%s%s", t->mnt.point, strcmp(t->mnt.point, "/") ? "/" : "",
			    STORE_DIR, dir);
	if (names_is_shortened(l->name, strlen(l->name))) {
		/* a version named by its shortened name: the file is the one its record names */
		char *real = recorded_name(l->vdir, l->name, strlen(l->name));
		if (real) {
			char *r =
			    xasprintf("%.*s%s", slash ? (int)(slash - rel + 1) : 0, rel, real);
			free(l->name);
			l->name = real;
			free(rel);
			rel = r;
		}
	}
	names_stored(l->name, stored);
	l->file = xasprintf("%s%s%s", t->mnt.point, strcmp(t->mnt.point, "/") ? "/" : "", rel);
	free(dir);
	free(rel);
	exists = lstat(l->file, &cur) == 0;
	if (!exists && errno != ENOENT)
		return ctl_err("%s: %s", t->arg, strerror(errno));
	if (exists && S_ISDIR(cur.st_mode))
		return ctl_err("%s: is a directory, not a file", t->arg);
	if (exists && !S_ISREG(cur.st_mode))
		return ctl_err("%s: not a regular file", t->arg);
	d = opendir(l->vdir);
	if (!d && errno != ENOENT && errno != ENOTDIR)
		return ctl_err("%s: %s", l->vdir, strerror(errno));
	for (struct dirent *e; d && (e = readdir(d));) {
		unsigned n = names_version_of(e->d_name, stored);
		struct stat st;
		if (!n || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
		l->v[l->n++] = (struct version){
		    .n = n, .path = xasprintf("%s/%s", l->vdir, e->d_name), .st = st};
	}
	if (d)
		closedir(d);
	if (l->n)
		qsort(l->v, l->n, sizeof(*l->v), cmp_version);
	l->newest_old = l->n ? l->v[l->n - 1].n : 0;
	if (exists) {
		l->current = l->newest_old + 1;
		l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
		l->v[l->n++] = (struct version){
		    .n = l->current, .current = true, .path = xstrdup(l->file), .st = cur};
	}
	if (!l->n)
		return ctl_err("%s: no such file", t->arg);
	return 0;
}

void vlist_free(struct vlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].path);
	free(l->v);
	free(l->file);
	free(l->vdir);
	free(l->name);
	memset(l, 0, sizeof(*l));
}

struct version *vlist_get(struct vlist *l, unsigned n)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->v[i].n == n)
			return &l->v[i];
	return NULL;
}

struct version *vlist_need(struct vlist *l, unsigned n, const char *arg)
{
	struct version *v = vlist_get(l, n);

	if (!v)
		ctl_err("%s: no such version %u (versions: %u..%u)", arg, n, l->v[0].n,
			l->v[l->n - 1].n);
	return v;
}

struct tally_ent {
	char *name;
	unsigned n;
	unsigned long long ino;
};

static int cmp_tally(const void *a, const void *b)
{
	const struct tally_ent *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	return c ? c : x->n < y->n ? -1 : x->n > y->n;
}

int versions_tally(const char *vdir, const char *name, unsigned keep, struct vcount *c)
{
	struct tally_ent *v = NULL;
	size_t nv = 0;
	char stored[NAMES_STORED_MAX + 1];
	DIR *d = opendir(vdir);

	if (!d)
		return errno == ENOENT ? 0 : -errno;
	if (name) {
		names_stored(name, stored);
		name = stored;
	}
	for (struct dirent *e; (e = readdir(d));) {
		size_t nlen;
		unsigned n = names_version_parse(e->d_name, &nlen);
		if (!n || e->d_type == DT_DIR)
			continue;
		if (name && (nlen != strlen(name) || strncmp(e->d_name, name, nlen)))
			continue;
		v = xrealloc(v, (nv + 1) * sizeof(*v));
		char *nm = xmalloc(nlen + 1);
		memcpy(nm, e->d_name, nlen);
		nm[nlen] = 0;
		v[nv++] = (struct tally_ent){nm, n, e->d_ino};
	}
	closedir(d);
	if (nv)
		qsort(v, nv, sizeof(*v), cmp_tally);
	for (size_t i = 0, j; i < nv; i = j) {
		for (j = i; j < nv && !strcmp(v[j].name, v[i].name); j++)
			;
		size_t cnt = j - i, drop = cnt > keep ? cnt - keep : 0;
		c->total += cnt;
		c->kept += cnt - drop;
		for (size_t k = i; k < i + drop; k++) {
			c->excess = xrealloc(c->excess, (c->nexcess + 1) * sizeof(*c->excess));
			c->excess[c->nexcess++] = v[k].ino;
		}
	}
	for (size_t i = 0; i < nv; i++)
		free(v[i].name);
	free(v);
	return 0;
}

void vcount_free(struct vcount *c)
{
	free(c->excess);
	memset(c, 0, sizeof(*c));
}

/* Is the tree path rel on the way to, or below, under? */
static bool related(const char *rel, const char *under)
{
	size_t r = strlen(rel), u = strlen(under);

	if (!u || !r)
		return true;
	if (r <= u)
		return !strncmp(under, rel, r) && (under[r] == '/' || !under[r]);
	return !strncmp(rel, under, u) && rel[u] == '/';
}

/* path: a mirror directory, vrel its path below .versions/, rel its tree directory's */
static void walk(const char *path, const char *vrel, const char *rel, const char *under,
		 struct vindex *ix)
{
	DIR *d = opendir(path);

	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		unsigned char type = e->d_type;
		char *sub;
		size_t nlen;
		unsigned n;

		type = entry_type(d, e);
		if (type == DT_DIR) {
			size_t tlen = names_mirror_unescaped_len(e->d_name, strlen(e->d_name));
			sub = xasprintf("%s%s%.*s", rel, *rel ? "/" : "", (int)tlen, e->d_name);
			if (related(sub, under)) {
				char *p = xasprintf("%s/%s", path, e->d_name);
				char *vsub = xasprintf("%s%s%s", vrel, *vrel ? "/" : "", e->d_name);
				walk(p, vsub, sub, under, ix);
				free(vsub);
				free(p);
			}
			free(sub);
			continue;
		}
		if (type != DT_REG || !(n = names_version_parse(e->d_name, &nlen)))
			continue;
		char *real = names_is_shortened(e->d_name, nlen)
				 ? recorded_name(path, e->d_name, nlen)
				 : NULL;
		if (real)
			sub = xasprintf("%s%s%s", rel, *rel ? "/" : "", real);
		else
			sub = xasprintf("%s%s%.*s", rel, *rel ? "/" : "", (int)nlen, e->d_name);
		free(real);
		if (!related(sub, under) || strlen(sub) < strlen(under)) {
			free(sub);
			continue;
		}
		ix->e = xrealloc(ix->e, (ix->n + 1) * sizeof(*ix->e));
		ix->e[ix->n++] =
		    (struct ventry){.ino = e->d_ino,
				    .rel = sub,
				    .vrel = xasprintf("%s%s%s", vrel, *vrel ? "/" : "", e->d_name),
				    .n = n};
	}
	closedir(d);
}

static int cmp_ventry(const void *a, const void *b)
{
	const struct ventry *x = a, *y = b;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

void vindex_build(const char *point, const char *under, struct vindex *ix)
{
	char *root = xasprintf("%s%s%s", point, strcmp(point, "/") ? "/" : "", STORE_DIR);

	ix->e = NULL;
	ix->n = 0;
	walk(root, "", "", under ? under : "", ix);
	free(root);
	if (ix->n)
		qsort(ix->e, ix->n, sizeof(*ix->e), cmp_ventry);
}

const struct ventry *vindex_find(const struct vindex *ix, unsigned long long ino)
{
	struct ventry key = {.ino = ino};

	return ix->n ? bsearch(&key, ix->e, ix->n, sizeof(*ix->e), cmp_ventry) : NULL;
}

unsigned vindex_newest(const struct vindex *ix, const char *rel)
{
	unsigned n = 0;

	for (size_t i = 0; i < ix->n; i++)
		if (ix->e[i].n > n && !strcmp(ix->e[i].rel, rel))
			n = ix->e[i].n;
	return n;
}

void vindex_free(struct vindex *ix)
{
	for (size_t i = 0; i < ix->n; i++) {
		free(ix->e[i].rel);
		free(ix->e[i].vrel);
	}
	free(ix->e);
	ix->e = NULL;
	ix->n = 0;
}

/* SHA-256 of everything readable from fd, in hex; 0 or -errno. libcrypto picks the CPU's
 * SHA instructions where there are some: `log` hashes every version at every call. */
static int sha256_fd(int fd, char out[SHA256_HEX])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char buf[1 << 16], d[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int err = 0;
	ssize_t n;

	if (!c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(c);
		return -ENOMEM;
	}
	while (!err && (n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0)
			err = errno == EINTR ? 0 : -errno;
		else if (!EVP_DigestUpdate(c, buf, (size_t)n))
			err = -EIO;
	}
	if (!err && (!EVP_DigestFinal_ex(c, d, &dlen) || dlen != SHA256_DIGEST_LENGTH))
		err = -EIO;
	EVP_MD_CTX_free(c);
	for (unsigned k = 0; !err && k < dlen; k++) {
		out[2 * k] = hex[d[k] >> 4];
		out[2 * k + 1] = hex[d[k] & 15];
	}
	if (!err)
		out[2 * dlen] = 0;
	return err;
}

int vinfo_get(const char *path, struct vinfo *i)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), err;

	memset(i, 0, sizeof(*i));
	if (fd < 0)
		return -errno;
	i->elf = elf_is(fd);
	if (i->elf)
		elf_build_id(fd, i->build_id);
	err = sha256_fd(fd, i->sha256);
	close(fd);
	return err;
}
