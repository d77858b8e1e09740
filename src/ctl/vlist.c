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
		size_t len = strlen(c) + sizeof(NAMES_MIRROR_SUFFIX);
		char *buf = xmalloc(len),
		     *next = xasprintf("%s/%s", out, names_mirror(c, buf, len));
		free(buf);
		free(out);
		out = next;
	}
	free(copy);
	return out;
}

/* The whole name of the shortened stored name (len bytes) in the versions dir (fd dir), from
 * its record "<stored>.~~" (names.h); NULL if there is none, or it names another. */
static char *recorded_name(int dir, const char *stored, size_t len)
{
	char rec[NAMES_RECORD_MAX + 1], buf[NAME_MAX + 2], check[NAMES_STORED_MAX + 1];
	int fd;
	struct stat st;
	ssize_t n;

	if (len > NAMES_STORED_MAX)
		return NULL;
	names_record_of(stored, len, rec);
	fd = openat(dir, rec, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	n = fd >= 0 && !fstat(fd, &st) && S_ISREG(st.st_mode) ? pread(fd, buf, sizeof(buf) - 1, 0)
							      : -1;
	if (fd >= 0)
		close(fd);
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

/* The mount's path of rel, for output. */
static char *mount_path(const struct target *t, const char *rel)
{
	return xasprintf("%s%s%s", t->mnt.point, strcmp(t->mnt.point, "/") && *rel ? "/" : "", rel);
}

int vlist_load(const struct target *t, struct vlist *l)
{
	char *rel = tree_rel(t->rel), *slash, *dir, stored[NAMES_STORED_MAX + 1];
	struct stat cur, dst;
	bool exists;
	int fd, dfd = -1, bad = 0;
	DIR *d = NULL;

	memset(l, 0, sizeof(*l));
	l->root = t->root;
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
	l->vdir_rel = xasprintf("%s%s", STORE_DIR, dir);
	l->vdir = mount_path(t, l->vdir_rel);
	free(dir);
	dfd = open_beneath(t->root, l->vdir_rel, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &dst);
	if (dfd < 0 && dfd != -ENOENT && dfd != -ENOTDIR) {
		free(rel);
		return ctl_err("%s: %s", l->vdir, open_error(dfd, S_IFDIR));
	}
	if (dfd >= 0 && names_is_shortened(l->name, strlen(l->name))) {
		/* a version named by its shortened name: the file is the one its record names */
		char *real = recorded_name(dfd, l->name, strlen(l->name));
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
	l->file_rel = rel;
	l->file = mount_path(t, rel);
	/* the current file itself (O_PATH: nothing is opened, a symlink is not followed) */
	fd = open_beneath(t->root, l->file_rel, O_PATH, 0, 0, &cur);
	exists = fd >= 0;
	if (fd >= 0)
		close(fd);
	if (!exists && fd != -ENOENT)
		bad = ctl_err("%s: %s", t->arg, open_error(fd, S_IFREG));
	else if (exists && S_ISDIR(cur.st_mode))
		bad = ctl_err("%s: is a directory, not a file", t->arg);
	else if (exists && !S_ISREG(cur.st_mode))
		bad = ctl_err("%s: %s", t->arg, open_error(-CTL_EBADTYPE, S_IFREG));
	if (bad) {
		if (dfd >= 0)
			close(dfd);
		return 1;
	}
	if (dfd >= 0 && !(d = fdopendir(dfd)))
		close(dfd);
	for (struct dirent *e; d && (e = readdir(d));) {
		unsigned n = names_version_of(e->d_name, stored);
		struct stat st;
		if (!n || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
		l->v[l->n++] = (struct version){.n = n,
						.path = xasprintf("%s/%s", l->vdir, e->d_name),
						.rel = xasprintf("%s/%s", l->vdir_rel, e->d_name),
						.st = st};
	}
	if (d)
		closedir(d);
	if (l->n)
		qsort(l->v, l->n, sizeof(*l->v), cmp_version);
	l->newest_old = l->n ? l->v[l->n - 1].n : 0;
	if (exists) {
		l->current = l->newest_old + 1;
		l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
		l->v[l->n++] = (struct version){.n = l->current,
						.current = true,
						.path = xstrdup(l->file),
						.rel = xstrdup(l->file_rel),
						.st = cur};
	}
	if (!l->n)
		return ctl_err("%s: no such file", t->arg);
	return 0;
}

int version_open(const struct vlist *l, struct version *v, const char *arg)
{
	int fd = open_beneath(l->root, v->rel, O_RDONLY, 0, S_IFREG, &v->st);

	if (fd < 0)
		ctl_err("%s: version %u: %s", arg, v->n, open_error(fd, S_IFREG));
	return fd < 0 ? -1 : fd;
}

void vlist_free(struct vlist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].path);
		free(l->v[i].rel);
	}
	free(l->v);
	free(l->file);
	free(l->vdir);
	free(l->file_rel);
	free(l->vdir_rel);
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

int versions_tally(int root, const char *vdir_rel, const char *name, unsigned keep,
		   struct vcount *c)
{
	struct tally_ent *v = NULL;
	size_t nv = 0;
	char stored[NAMES_STORED_MAX + 1];
	struct stat st;
	int fd = open_beneath(root, vdir_rel, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return fd == -ENOENT || fd == -ENOTDIR ? 0 : fd < 0 ? fd : -errno;
	}
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

/* Open the subdirectory name of the directory fd dir, never through a symlink. */
static DIR *opendir_at(int dir, const char *name)
{
	int fd = openat(dir, name,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (!d && fd >= 0)
		close(fd);
	return d;
}

/* d: a mirror directory (closed here), vrel its path below .versions/, rel its tree
 * directory's */
static void walk(DIR *d, const char *vrel, const char *rel, const char *under, bool sizes,
		 struct vindex *ix)
{
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		unsigned char type = e->d_type;
		struct stat st;
		char *sub;
		size_t nlen;
		unsigned n;

		type = entry_type(d, e);
		if (type == DT_DIR) {
			size_t tlen = names_mirror_unescaped_len(e->d_name, strlen(e->d_name));
			sub = xasprintf("%s%s%.*s", rel, *rel ? "/" : "", (int)tlen, e->d_name);
			if (related(sub, under)) {
				char *vsub = xasprintf("%s%s%s", vrel, *vrel ? "/" : "", e->d_name);
				walk(opendir_at(dirfd(d), e->d_name), vsub, sub, under, sizes, ix);
				free(vsub);
			}
			free(sub);
			continue;
		}
		if (type != DT_REG || !(n = names_version_parse(e->d_name, &nlen)))
			continue;
		char *real = names_is_shortened(e->d_name, nlen)
				 ? recorded_name(dirfd(d), e->d_name, nlen)
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
		long long size = -1;
		if (sizes && !fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW))
			size = S_ISREG(st.st_mode) ? (long long)st.st_size : -1;
		ix->e = xrealloc(ix->e, (ix->n + 1) * sizeof(*ix->e));
		ix->e[ix->n++] =
		    (struct ventry){.ino = e->d_ino,
				    .rel = sub,
				    .vrel = xasprintf("%s%s%s", vrel, *vrel ? "/" : "", e->d_name),
				    .n = n,
				    .size = size};
	}
	closedir(d);
}

static int cmp_ventry(const void *a, const void *b)
{
	const struct ventry *x = a, *y = b;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

void vindex_build(int root, const char *under, bool sizes, struct vindex *ix)
{
	struct stat st;
	int fd = open_beneath(root, STORE_DIR, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (!d && fd >= 0)
		close(fd);
	ix->e = NULL;
	ix->n = 0;
	walk(d, "", "", under ? under : "", sizes, ix);
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

/* SHA-256 of everything readable from fd (from offset 0, with pread), in hex; 0 or -errno.
 * libcrypto picks the CPU's SHA instructions where there are some: `log` hashes every version at
 * every call. */
static int sha256_fd(int fd, char out[SHA256_HEX])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char buf[1 << 16], d[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int err = 0;
	ssize_t n;
	off_t off = 0;

	if (!c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(c);
		return -ENOMEM;
	}
	while (!err && (n = pread(fd, buf, sizeof(buf), off)) != 0) {
		if (n < 0)
			err = errno == EINTR ? 0 : -errno;
		else if (!EVP_DigestUpdate(c, buf, (size_t)n))
			err = -EIO;
		else
			off += n;
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

int vinfo_fd(int fd, struct vinfo *i)
{
	memset(i, 0, sizeof(*i));
	i->elf = elf_is(fd);
	if (i->elf)
		elf_build_id(fd, i->build_id);
	return sha256_fd(fd, i->sha256);
}
