/* mounts.c - mount discovery: the mount table (libmount), and the daemon behind a mount. */
#define _GNU_SOURCE
#include "mounts.h"
#include "ctl.h"
#include "names.h"
#include "procscan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libmount.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

void bmount_free(struct bmount *m)
{
	free(m->point);
	free(m->source);
	free(m->mntopts);
	free(m->superopts);
	memset(m, 0, sizeof(*m));
}

void bmount_copy(struct bmount *dst, const struct bmount *src)
{
	dst->point = xstrdup(src->point);
	dst->source = xstrdup(src->source);
	dst->mntopts = xstrdup(src->mntopts);
	dst->superopts = xstrdup(src->superopts);
	dst->dev = src->dev;
}

/* Every mount, in mountinfo order (later lines are mounted on top of earlier ones); libmount
 * reads the table and undoes its escapes (a space in a path is "\040" there). */
static int read_all(struct mtab *t, char ***types)
{
	struct libmnt_table *tb = mnt_new_table_from_file("/proc/self/mountinfo");
	struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
	struct libmnt_fs *fs;

	t->m = NULL;
	t->n = 0;
	*types = NULL;
	if (!tb || !it) {
		int err = errno ? errno : ENOMEM;
		mnt_unref_table(tb);
		mnt_free_iter(it);
		return ctl_err("/proc/self/mountinfo: %s", strerror(err));
	}
	while (mnt_table_next_fs(tb, it, &fs) == 0) {
		const char *point = mnt_fs_get_target(fs), *source = mnt_fs_get_source(fs);
		const char *type = mnt_fs_get_fstype(fs), *super = mnt_fs_get_fs_options(fs);
		const char *opts = mnt_fs_get_vfs_options(fs);
		if (!point || !type)
			continue;
		t->m = xrealloc(t->m, (t->n + 1) * sizeof(*t->m));
		*types = xrealloc(*types, (t->n + 1) * sizeof(char *));
		t->m[t->n] = (struct bmount){
		    .point = xstrdup(point),
		    .source = xstrdup(source ? source : "none"),
		    .mntopts = xstrdup(opts ? opts : ""),
		    .superopts = xstrdup(super ? super : ""),
		    .dev = mnt_fs_get_devno(fs),
		};
		(*types)[t->n++] = xstrdup(type);
	}
	mnt_free_iter(it);
	mnt_unref_table(tb);
	return 0;
}

static void free_types(char **types, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(types[i]);
	free(types);
}

int mtab_read(struct mtab *t)
{
	struct mtab all;
	char **types;
	size_t keep = 0;

	if (read_all(&all, &types))
		return 1;
	for (size_t i = 0; i < all.n; i++) {
		if (!strcmp(types[i], BINVFS_FSTYPE))
			all.m[keep++] = all.m[i];
		else
			bmount_free(&all.m[i]);
	}
	free_types(types, all.n);
	t->m = all.m;
	t->n = keep;
	return 0;
}

void mtab_free(struct mtab *t)
{
	for (size_t i = 0; i < t->n; i++)
		bmount_free(&t->m[i]);
	free(t->m);
	t->m = NULL;
	t->n = 0;
}

static char *join(const char *dir, const char *name)
{
	return xasprintf("%s%s%s", dir, strcmp(dir, "/") ? "/" : "", name);
}

/* Is path at or below dir (component-wise)? Returns the length of dir's prefix, or -1. */
static long below(const char *path, const char *dir)
{
	size_t l = strlen(dir);

	if (!strcmp(dir, "/"))
		return 1;
	if (strncmp(path, dir, l) != 0 || (path[l] != '/' && path[l] != 0))
		return -1;
	return (long)l;
}

int mount_root(const struct bmount *m)
{
	int fd = open(m->point, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat st;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || st.st_dev != m->dev) {
		close(fd);
		return -ESTALE; /* unmounted, or another mount on top meanwhile */
	}
	return fd;
}

/* The binvfs mount canonical path p is at or below (the innermost mount there), or -1;
 * the length of its point's prefix in *len. */
static long mount_of(const struct mtab *all, char **types, const char *p, long *len)
{
	long best = -1, bi = -1;

	for (size_t i = 0; i < all->n; i++) {
		long l = below(p, all->m[i].point);
		if (l >= 0 && l >= best) {
			best = l;
			bi = (long)i;
		}
	}
	if (bi < 0 || strcmp(types[bi], BINVFS_FSTYPE) != 0)
		return -1;
	*len = best;
	return bi;
}

/* Append component c to the lexical path rel ("" or "a/b"): "." is nothing, ".." drops the
 * last component; false if it would climb above the mount's root. */
static bool rel_push(char **rel, const char *c, size_t n)
{
	if (!n || (n == 1 && c[0] == '.'))
		return true;
	if (n == 2 && c[0] == '.' && c[1] == '.') {
		char *slash = strrchr(*rel, '/');
		if (!**rel)
			return false;
		if (slash)
			*slash = 0;
		else
			**rel = 0;
		return true;
	}
	char *next = xasprintf("%s%s%.*s", *rel, **rel ? "/" : "", (int)n, c);
	free(*rel);
	*rel = next;
	return true;
}

/* Where arg enters a binvfs mount: the directories of arg are resolved one prefix at a time
 * (realpath, as the kernel would: the tree outside mounts is the operator's), until one is
 * in a binvfs mount; the rest of arg is then taken as it is, below that mount. *mi: the
 * mount, *rel the path below it; 0, or 1 after printing why not. */
static int enter_mount(const char *arg, const struct mtab *all, char **types, long *mi, char **rel)
{
	char *cur = arg[0] == '/' ? xstrdup("/") : getcwd(NULL, 0);
	const char *p = arg, *last = NULL;
	long len = 0;
	int ret = 0;

	*mi = -1;
	*rel = NULL;
	if (!cur)
		return ctl_err("%s: %s", arg, strerror(errno));
	for (;;) {
		if ((*mi = mount_of(all, types, cur, &len)) >= 0)
			break;
		p += strspn(p, "/");
		size_t n = strcspn(p, "/");
		if (!n)
			break;
		if (!p[n + strspn(p + n, "/")]) {
			last = p; /* the last component: not followed */
			break;
		}
		char *next = xasprintf("%s%s%.*s", cur, strcmp(cur, "/") ? "/" : "", (int)n, p);
		char *real = realpath(next, NULL);
		int err = errno;
		free(next);
		if (!real) {
			free(cur);
			return ctl_err("%s: %s", arg, strerror(err));
		}
		free(cur);
		cur = real;
		p += n;
	}
	if (*mi < 0 && last) {
		/* "." or "..": the directory it names; else the name in cur, not followed */
		size_t n = strcspn(last, "/");
		char *whole = xasprintf("%s%s%.*s", cur, strcmp(cur, "/") ? "/" : "", (int)n, last);
		if ((n == 1 && last[0] == '.') || (n == 2 && !strncmp(last, "..", 2))) {
			char *real = realpath(whole, NULL);
			free(whole);
			whole = real ? real : xstrdup(cur);
		}
		free(cur);
		cur = whole;
		p = last + n;
		*mi = mount_of(all, types, cur, &len);
	}
	if (*mi < 0) {
		free(cur);
		return ctl_err("%s: not in a binvfs mount", arg);
	}
	*rel = xstrdup("");
	for (const char *c = cur + len; *c;) { /* cur is canonical: no "." or ".." */
		c += strspn(c, "/");
		size_t n = strcspn(c, "/");
		rel_push(rel, c, n);
		c += n;
	}
	while (*p && !ret) {
		p += strspn(p, "/");
		size_t n = strcspn(p, "/");
		if (!rel_push(rel, p, n))
			ret = ctl_err("%s: leads out of the mount, refused", arg);
		p += n;
	}
	free(cur);
	return ret;
}

int target_resolve(const char *arg, struct target *t)
{
	struct mtab all;
	char **types;
	long mi;
	int fd;

	memset(t, 0, sizeof(*t));
	t->root = -1;
	t->arg = arg;
	if (!*arg)
		return ctl_err("empty path");
	if (read_all(&all, &types))
		return 1;
	if (enter_mount(arg, &all, types, &mi, &t->rel)) {
		free_types(types, all.n);
		mtab_free(&all);
		return 1;
	}
	bmount_copy(&t->mnt, &all.m[mi]);
	free_types(types, all.n);
	mtab_free(&all);
	t->abs = *t->rel ? join(t->mnt.point, t->rel) : xstrdup(t->mnt.point);
	t->root = mount_root(&t->mnt);
	if (t->root < 0)
		return ctl_err("%s: %s: %s", arg, t->mnt.point, strerror(-t->root));
	/* the object itself: O_PATH opens nothing, and with O_NOFOLLOW a symlink is itself */
	fd = open_beneath(t->root, t->rel, O_PATH, 0, 0, &t->st);
	if (fd >= 0) {
		t->exists = true;
		close(fd);
	} else if (fd != -ENOENT) {
		return ctl_err("%s: %s", arg, open_error(fd, 0));
	}
	return 0;
}

void target_free(struct target *t)
{
	if (t->root >= 0)
		close(t->root);
	bmount_free(&t->mnt);
	free(t->abs);
	free(t->rel);
	memset(t, 0, sizeof(*t));
	t->root = -1;
}

/* Does arg, given to process pid, name the directory source? */
static bool names_source(pid_t pid, const char *arg, const char *source)
{
	char *p = arg[0] == '/' ? xstrdup(arg) : xasprintf("/proc/%d/cwd/%s", pid, arg);
	char *r = realpath(p, NULL);
	bool same = r && !strcmp(r, source);

	free(r);
	free(p);
	return same || !strcmp(arg, source);
}

/* The daemon's options from its command line: -o LIST (or -oLIST), -d. */
static void parse_cmdline(struct daemon *d, const char *source, pid_t pid, bool *names_binvfs,
			  bool *names_src)
{
	size_t len;
	char *buf = proc_cmdline(pid, &len), *prev = NULL;

	*names_binvfs = *names_src = false;
	for (char *a = buf; buf && a < buf + len; prev = a, a += strlen(a) + 1) {
		char *list = NULL;
		if (a == buf) {
			*names_binvfs = strstr(a, "binvfs") != NULL;
			continue;
		}
		if (prev && !strcmp(prev, "-o"))
			list = a;
		else if (!strncmp(a, "-o", 2) && a[2])
			list = a + 2;
		else if (!strcmp(a, "-d"))
			d->debug = true;
		else if (a[0] != '-' && names_source(pid, a, source))
			*names_src = true;
		if (!list)
			continue;
		char *o = d->opts ? xasprintf("%s,%s", d->opts, list) : xstrdup(list);
		free(d->opts);
		d->opts = o;
		char *copy = xstrdup(list), *save = NULL;
		for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			if (!strcmp(t, "debug"))
				d->debug = true;
		}
		free(copy);
	}
	free(buf);
}

struct dsearch {
	const struct bmount *m;
	char *stagedir; /* SOURCE/.versions/.binvfs-staging */
	pid_t want;	/* the pid the mount named, 0 if it did not */
	struct daemon *d;
};

static bool daemon_check(pid_t pid, void *arg)
{
	struct dsearch *s = arg;
	char path[64], link[PATH_MAX + 32];
	bool fuse = false, stage = false, names_binvfs, names_src;
	size_t sl = strlen(s->stagedir);
	int staging = 0;
	struct dirent *e;
	DIR *dir;

	if (s->want && pid != s->want)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	dir = opendir(path);
	if (!dir)
		return false;
	while ((e = readdir(dir))) {
		char fdp[320];
		ssize_t n;
		if (e->d_name[0] == '.')
			continue;
		snprintf(fdp, sizeof(fdp), "/proc/%d/fd/%s", pid, e->d_name);
		n = readlink(fdp, link, sizeof(link) - 1);
		if (n < 0)
			continue;
		link[n] = 0;
		if (!strcmp(link, "/dev/fuse"))
			fuse = true;
		else if (!strcmp(link, s->stagedir))
			stage = true;
		else if (!strncmp(link, s->stagedir, sl) && link[sl] == '/' &&
			 strstr(link + sl, "/#") && n > 10 && !strcmp(link + n - 10, " (deleted)"))
			staging++; /* .binvfs-staging/<instance>/#ino (deleted): an O_TMPFILE */
	}
	closedir(dir);
	if (!fuse)
		return false;
	struct daemon d = {0};
	parse_cmdline(&d, s->m->source, pid, &names_binvfs, &names_src);
	if (!stage && !(names_binvfs && names_src) && pid != s->want) {
		daemon_free(&d);
		return false;
	}
	d.pid = pid;
	d.staging = staging;
	*s->d = d;
	return true;
}

#define KEY(l, k) (!strncmp(l, k, sizeof(k) - 1) ? l + sizeof(k) - 1 : NULL)

/* The daemon that serves the mount says who it is (after `umount -l DIR; binvfs DIR`, an
 * older daemon still serving a detached copy holds the same store) and how it runs: its pid
 * in *pid, keep, nosync and passthrough in *d (names.h, STATUS_XATTR). */
static void daemon_ask(const struct bmount *m, pid_t *pid, struct daemon *d)
{
	char buf[512], *save = NULL, *v;
	ssize_t n = getxattr(m->point, STATUS_XATTR, buf, sizeof(buf) - 1);

	*pid = 0;
	if (n <= 0)
		return;
	buf[n] = 0;
	for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if ((v = KEY(l, STATUS_PID)))
			*pid = (pid_t)atoi(v);
		else if ((v = KEY(l, STATUS_KEEP))) {
			d->keep = (unsigned)strtoul(v, NULL, 10);
			d->keep_known = true;
		} else if ((v = KEY(l, STATUS_NOSYNC)))
			d->nosync = atoi(v) != 0;
		else if ((v = KEY(l, STATUS_PASSTHROUGH)))
			d->passthrough = xstrdup(v);
	}
}

void daemon_find(const struct bmount *m, struct daemon *d)
{
	char *vdir = join(m->source, STORE_DIR);
	struct dsearch s = {.m = m, .stagedir = join(vdir, STORE_STAGING), .d = d};
	struct daemon said = {.keep = NAMES_KEEP_DEFAULT};

	memset(d, 0, sizeof(*d));
	daemon_ask(m, &s.want, &said);
	proc_each(daemon_check, &s); /* fills *d afresh */
	d->keep = said.keep;
	d->keep_known = said.keep_known;
	d->nosync = said.nosync;
	d->passthrough = said.passthrough;
	if (!d->pid)
		d->pid = s.want;
	free(s.stagedir);
	free(vdir);
}

void daemon_free(struct daemon *d)
{
	free(d->opts);
	free(d->passthrough);
	d->opts = d->passthrough = NULL;
}
