/* cmd_prune.c - binvfsctl prune [--keep N] PATH|DIR: ask the daemon to apply retention now,
 * with setxattr(DIR, "user.binvfs.prune", "KEEP" or "KEEP/NAME") on a directory in the mount
 * (src/ops_dir.c); a DIR is asked directory by directory, its subdirectories included. The
 * daemon never removes a version in use: those go when their last user does. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "names.h"
#include "procscan.h"
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
	char *dir;  /* MOUNT/rel */
	char *vdir; /* rel's mirror: MOUNT/.versions/rel, escaped (names.h) */
	char *name; /* NULL: every name in dir */
};

struct plan {
	struct req *r;
	size_t n;
	unsigned keep;
};

static void plan_add(struct plan *p, const char *point, const char *rel, const char *name)
{
	const char *sep = strcmp(point, "/") ? "/" : "";
	char *mirror = vlist_mirror(rel);

	p->r = xrealloc(p->r, (p->n + 1) * sizeof(*p->r));
	p->r[p->n++] = (struct req){
	    .dir = xasprintf("%s%s%s", point, *rel ? sep : "", rel),
	    .vdir = xasprintf("%s%s%s%s", point, sep, STORE_DIR, mirror),
	    .name = name ? xstrdup(name) : NULL,
	};
	free(mirror);
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
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < p->n; i++)
		versions_tally(p->r[i].vdir, p->r[i].name, p->keep, c);
}

static int request(const struct plan *p, const char *arg)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct req *r = &p->r[i];
		char *val =
		    r->name ? xasprintf("%u/%s", p->keep, r->name) : xasprintf("%u", p->keep);
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

/* Versions beyond keep that a process uses (maps, runs, holds open); their pids in *pids. */
static size_t used_by_processes(const struct vcount *c, const struct uses *u, char **pids)
{
	size_t used = 0;

	*pids = xstrdup("");
	for (size_t i = 0; i < c->nexcess; i++) {
		bool hit = false;
		for (size_t j = 0; j < u->n; j++) {
			if (u->u[j].ino != c->excess[i])
				continue;
			char *next =
			    xasprintf("%s%s%d", *pids, **pids ? " " : "", (int)u->u[j].pid);
			free(*pids);
			*pids = next;
			hit = true;
		}
		used += hit;
	}
	return used;
}

/* The daemon defers versions the kernel still references; a reference of a LOOKUP that just
 * ended goes with the kernel's FORGET, moments later: wait for those, not for versions a
 * process uses. */
static void settle(const struct plan *p, const struct target *t, struct vcount *c)
{
	struct timespec ts = {0, 20 * 1000 * 1000};

	for (int i = 0; i < 25 && c->total > c->kept; i++) {
		struct uses u;
		char *pids;
		uses_scan(t->mnt.dev, t->mnt.point, &u);
		size_t used = used_by_processes(c, &u, &pids);
		uses_free(&u);
		free(pids);
		if (used == c->nexcess)
			return;
		nanosleep(&ts, NULL);
		vcount_free(c);
		tally(p, c);
	}
}

int cmd_prune(int argc, char **argv)
{
	char *pos[1];
	struct target t = {0};
	struct plan p = {0};
	struct vcount before = {0}, after = {0};
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
		/* a file, current or removed: no stat of its versions, as a LOOKUP makes the
		 * kernel reference a version for a while, and the daemon then keeps it */
		if (t.exists && !S_ISREG(t.st.st_mode)) {
			ctl_err("%s: not a regular file or directory", pos[0]);
			goto out;
		}
		char *slash = strrchr(t.rel, '/');
		char *dir = slash ? strndup(t.rel, (size_t)(slash - t.rel)) : xstrdup("");
		plan_add(&p, t.mnt.point, dir, slash ? slash + 1 : t.rel);
		free(dir);
		tally(&p, &before);
		if (!t.exists && !before.total) {
			ctl_err("%s: no such file", pos[0]);
			goto out;
		}
		vcount_free(&before);
	}
	tally(&p, &before);
	if (given || p.keep) {
		if (request(&p, pos[0]))
			goto out;
		tally(&p, &after);
		settle(&p, &t, &after);
	} else {
		/* a keep=0 mount keeps every version; 0 in a request would mean "keep none" */
		after = before;
		before.excess = NULL;
		after.nexcess = 0;
	}
	struct uses u;
	char *pids;
	uses_scan(t.mnt.dev, t.mnt.point, &u);
	size_t removed = before.total > after.total ? before.total - after.total : 0;
	size_t in_use = used_by_processes(&after, &u, &pids);
	size_t held = after.nexcess - in_use;
	uses_free(&u);
	if (ctl_json) {
		json_obj();
		json_kstr("path", t.abs);
		json_kint("keep", p.keep);
		json_kbool("no_limit", !given && p.keep == 0);
		json_kint("before", (long long)before.total);
		json_kint("after", (long long)after.total);
		json_kint("removed", (long long)removed);
		json_kint("in_use", (long long)in_use);
		json_kint("held_by_kernel", (long long)held);
		json_obj_end();
	} else if (!given && p.keep == 0) {
		printf("%s: the mount keeps every version (keep=0); %zu old version%s, nothing "
		       "removed (give --keep N)\n",
		       t.abs, before.total, before.total == 1 ? "" : "s");
	} else {
		printf("%s: keep %u: %zu old version%s removed, %zu left\n", t.abs, p.keep, removed,
		       removed == 1 ? "" : "s", after.total);
		if (in_use)
			printf("  %zu in use (pid %s): removed when the last user is gone\n",
			       in_use, pids);
		if (held)
			printf(
			    "  %zu no process uses, still referenced by the kernel: removed when "
			    "the kernel forgets %s\n",
			    held, held == 1 ? "it" : "them");
	}
	free(pids);
	ret = 0;
out:
	vcount_free(&before);
	vcount_free(&after);
	plan_free(&p);
	target_free(&t);
	return ret;
}
