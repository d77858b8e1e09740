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
	char *dir;	/* MOUNT/rel, for messages */
	char *rel;	/* below the mount's root */
	char *vdir_rel; /* rel's mirror: .versions/rel, escaped (names.h) */
	char *name;	/* NULL: every name in dir */
};

struct plan {
	int root; /* the mount's root (the target's) */
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
	    .rel = xstrdup(rel),
	    .vdir_rel = xasprintf("%s%s", STORE_DIR, mirror),
	    .name = name ? xstrdup(name) : NULL,
	};
	free(mirror);
}

/* DIR and every directory below it (each opened below the mount's root: no symlink
 * followed) */
static void plan_tree(struct plan *p, const char *point, const char *rel)
{
	struct stat dst;
	int fd;
	DIR *d;

	plan_add(p, point, rel, NULL);
	fd = open_beneath(p->root, rel, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &dst);
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d && fd >= 0)
		close(fd);
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
}

static void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->r[i].dir);
		free(p->r[i].rel);
		free(p->r[i].vdir_rel);
		free(p->r[i].name);
	}
	free(p->r);
}

static void tally(const struct plan *p, struct vcount *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < p->n; i++)
		versions_tally(p->root, p->r[i].vdir_rel, p->r[i].name, p->keep, c);
}

/* Each request as fsetxattr on its directory, opened once below the mount's root: a
 * directory (not a symlink on the way or at the end, not a FIFO) in the mount. */
static int request(const struct plan *p, const char *arg)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct req *r = &p->r[i];
		struct stat st;
		int fd = open_beneath(p->root, r->rel, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
		if (fd == -ENOENT)
			continue; /* the directory went away meanwhile */
		if (fd < 0)
			return ctl_err("%s: prune request on %s refused: %s", arg, r->dir,
				       open_error(fd, S_IFDIR));
		char *val =
		    r->name ? xasprintf("%u/%s", p->keep, r->name) : xasprintf("%u", p->keep);
		int rc = fsetxattr(fd, PRUNE_XATTR, val, strlen(val), 0);
		int err = errno;
		free(val);
		close(fd);
		if (rc < 0 && err != ENOENT)
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
		if (errno || !*v || *end || *v == '-' || k > NAMES_KEEP_MAX)
			return ctl_err("--keep %s: expected a number of old versions, 0..%u", v,
				       NAMES_KEEP_MAX);
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

/* The keep= of the mount's daemon, as it says; 1 after printing that it is not found. */
static int daemon_keep(const struct target *t, unsigned *keep)
{
	struct daemon d;

	daemon_find(&t->mnt, &d);
	*keep = d.keep;
	daemon_free(&d);
	if (!d.pid || !d.keep_known)
		return ctl_err("%s: cannot find the daemon's keep=; give --keep N", t->arg);
	return 0;
}

/* The requests for t: a directory and every one below it, or the name of a file, current or
 * removed; 1 after printing why t has none. */
static int plan_target(struct plan *p, const struct target *t)
{
	struct vcount c;

	if (t->exists && S_ISDIR(t->st.st_mode)) {
		plan_tree(p, t->mnt.point, t->rel);
		return 0;
	}
	/* a file, current or removed: no stat of its versions, as a LOOKUP makes the kernel
	 * reference a version for a while, and the daemon then keeps it */
	if (t->exists && !S_ISREG(t->st.st_mode))
		return ctl_err("%s: not a regular file or directory (a symbolic link is never "
			       "followed), refused",
			       t->arg);
	char *slash = strrchr(t->rel, '/');
	char *dir = slash ? strndup(t->rel, (size_t)(slash - t->rel)) : xstrdup("");
	plan_add(p, t->mnt.point, dir, slash ? slash + 1 : t->rel);
	free(dir);
	tally(p, &c);
	bool none = !t->exists && !c.total;
	vcount_free(&c);
	return none ? ctl_err("%s: no such file", t->arg) : 0;
}

/* Count the old versions, ask the daemon to prune to p->keep (unless the mount keeps every
 * version and no --keep was given) and count again; 1 after printing a failed request. */
static int prune(const struct plan *p, const struct target *t, bool given, struct vcount *before,
		 struct vcount *after)
{
	tally(p, before);
	if (!given && !p->keep) {
		/* a keep=0 mount keeps every version; 0 in a request would mean "keep none" */
		*after = *before;
		before->excess = NULL;
		after->nexcess = 0;
		return 0;
	}
	if (request(p, t->arg))
		return 1;
	tally(p, after);
	settle(p, t, after);
	return 0;
}

/* What a prune did, in old versions. */
struct outcome {
	size_t before, after, removed;
	size_t in_use; /* beyond keep and used by a process: removed when the last user is gone */
	char *pids;    /* the processes that use them, "7734 8203" */
	size_t held;   /* beyond keep, no process uses them: the kernel still references them */
};

static void outcome_get(const struct target *t, const struct vcount *before,
			const struct vcount *after, struct outcome *o)
{
	struct uses u;

	uses_scan(t->mnt.dev, t->mnt.point, &u);
	o->before = before->total;
	o->after = after->total;
	o->removed = before->total > after->total ? before->total - after->total : 0;
	o->in_use = used_by_processes(after, &u, &o->pids);
	o->held = after->nexcess - o->in_use;
	uses_free(&u);
}

static void json_outcome(const struct target *t, unsigned keep, bool no_limit,
			 const struct outcome *o)
{
	json_obj();
	json_kstr("path", t->abs);
	json_kint("keep", keep);
	json_kbool("no_limit", no_limit);
	json_kint("before", (long long)o->before);
	json_kint("after", (long long)o->after);
	json_kint("removed", (long long)o->removed);
	json_kint("in_use", (long long)o->in_use);
	json_kint("held_by_kernel", (long long)o->held);
	json_obj_end();
}

static void print_outcome(const struct target *t, unsigned keep, bool no_limit,
			  const struct outcome *o)
{
	char *abs = esc(t->abs);

	if (no_limit) {
		printf("%s: the mount keeps every version (keep=0); %zu old version%s, nothing "
		       "removed (give --keep N)\n",
		       abs, o->before, o->before == 1 ? "" : "s");
		free(abs);
		return;
	}
	printf("%s: keep %u: %zu old version%s removed, %zu left\n", abs, keep, o->removed,
	       o->removed == 1 ? "" : "s", o->after);
	free(abs);
	if (o->in_use)
		printf("  %zu in use (pid %s): removed when the last user is gone\n", o->in_use,
		       o->pids);
	if (o->held)
		printf("  %zu no process uses, still referenced by the kernel: removed when the "
		       "kernel forgets %s\n",
		       o->held, o->held == 1 ? "it" : "them");
}

int cmd_prune(int argc, char **argv)
{
	char *pos[1];
	struct target t = {.root = -1};
	struct plan p = {0};
	struct vcount before = {0}, after = {0};
	struct outcome o;
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
	p.root = t.root;
	if ((!given && daemon_keep(&t, &p.keep)) || plan_target(&p, &t) ||
	    prune(&p, &t, given, &before, &after))
		goto out;
	outcome_get(&t, &before, &after, &o);
	if (ctl_json)
		json_outcome(&t, p.keep, !given && p.keep == 0, &o);
	else
		print_outcome(&t, p.keep, !given && p.keep == 0, &o);
	free(o.pids);
	ret = 0;
out:
	vcount_free(&before);
	vcount_free(&after);
	plan_free(&p);
	target_free(&t);
	return ret;
}
