/* cmd_prune.c - binvfsctl prune [--keep N] PATH|DIR: ask the daemon to apply retention now,
 * with setxattr(DIR, "user.binvfs.prune", "KEEP" or "KEEP/NAME") on a directory in the mount
 * (src/ops_dir.c); a DIR is asked directory by directory, its subdirectories included. The
 * daemon never removes a version in use: those go when their last user does. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "store.h"
#include "vlist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* One directory of the tree (rel below the mount point), or one name in it. */
struct req {
	char *dir;   /* MOUNT/rel */
	char *vdir;  /* MOUNT/.versions/rel */
	char *name;  /* NULL: every name in dir */
};

struct plan {
	struct req *r;
	size_t n;
	unsigned keep;
};

static void plan_add(struct plan *p, const char *point, const char *rel, const char *name)
{
	const char *sep = strcmp(point, "/") ? "/" : "";

	p->r = xrealloc(p->r, (p->n + 1) * sizeof(*p->r));
	p->r[p->n++] = (struct req){
		.dir = xasprintf("%s%s%s", point, *rel ? sep : "", rel),
		.vdir = xasprintf("%s%s%s%s%s", point, sep, STORE_DIR, *rel ? "/" : "", rel),
		.name = name ? xstrdup(name) : NULL,
	};
}

/* DIR and every directory below it (not following symlinks) */
static void plan_tree(struct plan *p, const char *point, const char *rel)
{
	char *path;
	DIR *d;

	plan_add(p, point, rel, NULL);
	path = xasprintf("%s%s%s", point, *rel && strcmp(point, "/") ? "/" : "", rel);
	d = opendir(path);
	for (struct dirent *e; d && (e = readdir(d));) {
		struct stat st;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (e->d_type != DT_DIR &&
		    (e->d_type != DT_UNKNOWN ||
		     fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		     !S_ISDIR(st.st_mode)))
			continue;
		char *sub = xasprintf("%s%s%s", rel, *rel ? "/" : "", e->d_name);
		plan_tree(p, point, sub);
		free(sub);
	}
	if (d)
		closedir(d);
	free(path);
}

static void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->r[i].dir);
		free(p->r[i].vdir);
		free(p->r[i].name);
	}
	free(p->r);
}

static void tally(const struct plan *p, struct vcount *c)
{
	c->total = c->kept = 0;
	for (size_t i = 0; i < p->n; i++) {
		struct vcount one;
		if (versions_tally(p->r[i].vdir, p->r[i].name, p->keep, &one) == 0) {
			c->total += one.total;
			c->kept += one.kept;
		}
	}
}

static int request(const struct plan *p, const char *arg)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct req *r = &p->r[i];
		char *val = r->name ? xasprintf("%u/%s", p->keep, r->name) : xasprintf("%u", p->keep);
		int rc = setxattr(r->dir, PRUNE_XATTR, val, strlen(val), 0);
		int err = errno;
		free(val);
		if (rc < 0 && err != ENOENT) /* ENOENT: the directory went away meanwhile */
			return ctl_err("%s: prune request on %s failed: %s", arg, r->dir,
				       strerror(err));
	}
	return 0;
}

static int parse_keep(int *argc, char **argv, unsigned *keep, bool *given)
{
	int j = 0;
	bool dashdash = false;

	for (int i = 0; i < *argc; i++) {
		const char *a = argv[i], *v = NULL;
		if (!dashdash && !strcmp(a, "--keep")) {
			if (i + 1 == *argc)
				return ctl_err("--keep needs a number");
			v = argv[++i];
		} else if (!dashdash && !strncmp(a, "--keep=", 7)) {
			v = a + 7;
		} else {
			dashdash = dashdash || !strcmp(a, "--");
			argv[j++] = argv[i];
			continue;
		}
		char *end;
		errno = 0;
		unsigned long k = strtoul(v, &end, 10);
		if (errno || !*v || *end || *v == '-' || k > 1000000)
			return ctl_err("--keep %s: expected a number of old versions, 0..1000000",
				       v);
		*keep = (unsigned)k;
		*given = true;
	}
	*argc = j;
	return 0;
}

/* Wait briefly for versions the kernel had just looked up (binvfsctl's own stats included):
 * the daemon removes them once the kernel's FORGET arrives. */
static void settle(const struct plan *p, struct vcount *c)
{
	struct timespec ts = {0, 20 * 1000 * 1000};

	for (int i = 0; i < 25 && c->total > c->kept; i++) {
		nanosleep(&ts, NULL);
		tally(p, c);
	}
}

int cmd_prune(int argc, char **argv)
{
	char *pos[1];
	struct target t = {0};
	struct plan p = {0};
	struct vcount before, after;
	bool given = false;
	int ret = 1;

	if (parse_keep(&argc, argv, &p.keep, &given) ||
	    cmd_args(argc, argv, 1, 1, "prune [--keep N] PATH|DIR", pos))
		return 1;
	if (target_resolve(pos[0], &t))
		goto out;
	if (!strcmp(t.rel, STORE_DIR) || !strncmp(t.rel, STORE_DIR "/", sizeof(STORE_DIR))) {
		ctl_err("%s: inside .versions/ (read-only); give the path in the tree", pos[0]);
		goto out;
	}
	if (!given) {
		struct daemon d;
		daemon_find(&t.mnt, &d);
		p.keep = d.keep;
		daemon_free(&d);
		if (!d.pid) {
			ctl_err("%s: cannot find the daemon's keep=; give --keep N", pos[0]);
			goto out;
		}
	}
	if (t.exists && S_ISDIR(t.st.st_mode)) {
		plan_tree(&p, t.mnt.point, t.rel);
	} else {
		struct vlist l;
		int bad = vlist_load(&t, &l); /* a file, current or removed, with versions */
		vlist_free(&l);
		if (bad)
			goto out;
		char *slash = strrchr(t.rel, '/');
		char *dir = slash ? strndup(t.rel, (size_t)(slash - t.rel)) : xstrdup("");
		plan_add(&p, t.mnt.point, dir, slash ? slash + 1 : t.rel);
		free(dir);
	}
	if (!given && p.keep == 0) {
		/* keep=0 mounts keep everything; 0 in a request would mean "keep none" */
		tally(&p, &before);
		after = before;
	} else {
		tally(&p, &before);
		if (request(&p, pos[0]))
			goto out;
		tally(&p, &after);
		settle(&p, &after);
	}
	size_t removed = before.total - after.total;
	size_t in_use = after.total > after.kept ? after.total - after.kept : 0;
	if (ctl_json) {
		json_obj();
		json_kstr("path", t.abs);
		json_kint("keep", p.keep);
		json_kbool("no_limit", !given && p.keep == 0);
		json_kint("before", (long long)before.total);
		json_kint("after", (long long)after.total);
		json_kint("removed", (long long)removed);
		json_kint("in_use", (long long)in_use);
		json_obj_end();
	} else if (!given && p.keep == 0) {
		printf("%s: the mount keeps every version (keep=0); %zu old version%s, nothing "
		       "removed (give --keep N)\n",
		       t.abs, before.total, before.total == 1 ? "" : "s");
	} else {
		printf("%s: keep %u: %zu old version%s removed, %zu left", t.abs, p.keep, removed,
		       removed == 1 ? "" : "s", after.total);
		if (in_use)
			printf(" (%zu in use, removed when their last user is gone)", in_use);
		printf("\n");
	}
	ret = 0;
out:
	plan_free(&p);
	target_free(&t);
	return ret;
}
