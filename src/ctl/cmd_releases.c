/* cmd_releases.c - the history of releases: binvfsctl releases [DIR], diff --release ID
 * [PATH], rollback --release ID DIR. Each committed release left a record in
 * MOUNT/.versions/.binvfs-releases/<id> (docs/format.md, Releases), read through the mount
 * like the versions are; a rollback is itself a release (begin, every file staged through the
 * mount, commit), so it is atomic and is in the history too. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "names.h"
#include "vlist.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define RECORDS STORE_DIR "/" STORE_RELEASES

struct relent {
	char kind; /* C changed, A added, D removed, M moved away */
	char *dir, *name, *vrel;
	unsigned long long ino;
};

struct relrec {
	unsigned id;
	char *name, *dir;
	long long begun, committed;
	unsigned uid, cuid;
	struct relent *e;
	size_t n;
	unsigned changed, added, removed;
};

static void rec_free(struct relrec *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->e[i].dir);
		free(r->e[i].name);
		free(r->e[i].vrel);
	}
	free(r->e);
	free(r->name);
	free(r->dir);
	memset(r, 0, sizeof(*r));
}

/* Parse record id from the mount of root; 0, -ENOENT, or -EINVAL (malformed). */
static int rec_load(int root, unsigned id, struct relrec *r)
{
	char *rel = xasprintf("%s/%u", RECORDS, id), *buf = NULL, *p, *end;
	static const char magic[] = "binvfs release record 1\n";
	size_t len = 0, cap = 0;
	struct stat st;
	ssize_t n;
	int fd = open_beneath(root, rel, O_RDONLY, 0, S_IFREG, &st), err = 0;

	free(rel);
	memset(r, 0, sizeof(*r));
	if (fd < 0)
		return fd;
	for (;;) {
		if (len == cap)
			buf = xrealloc(buf, cap = cap ? 2 * cap : 65536);
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? -errno : 0;
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	if (err) {
		free(buf);
		return err;
	}
	if (len < sizeof(magic) - 1 || memcmp(buf, magic, sizeof(magic) - 1)) {
		free(buf);
		return -EINVAL;
	}
	p = buf + sizeof(magic) - 1;
	end = buf + len;
	char *f[7];
	for (int i = 0; i < 7; i++) {
		char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
		if (!z) {
			free(buf);
			return -EINVAL;
		}
		f[i] = p;
		p = z + 1;
	}
	r->id = id;
	r->name = xstrdup(f[1]);
	r->dir = xstrdup(f[2]);
	r->begun = strtoll(f[3], NULL, 10);
	r->committed = strtoll(f[4], NULL, 10);
	r->uid = (unsigned)strtoul(f[5], NULL, 10);
	r->cuid = (unsigned)strtoul(f[6], NULL, 10);
	while (p < end) {
		char *g[5];
		for (int i = 0; i < 5; i++) {
			char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
			if (!z) {
				free(buf);
				rec_free(r);
				return -EINVAL;
			}
			g[i] = p;
			p = z + 1;
		}
		r->e = xrealloc(r->e, (r->n + 1) * sizeof(*r->e));
		struct relent *e = &r->e[r->n++];
		e->kind = g[0][0];
		e->dir = xstrdup(g[1]);
		e->name = xstrdup(g[2]);
		e->vrel = *g[3] ? xstrdup(g[3]) : NULL;
		e->ino = strtoull(g[4], NULL, 10);
		if (e->kind == 'C')
			r->changed++;
		else if (e->kind == 'A')
			r->added++;
		else
			r->removed++;
	}
	free(buf);
	return 0;
}

/* The ids of the records there are, ascending (readdir only). */
static unsigned *rec_ids(int root, size_t *count)
{
	struct stat st;
	int fd = open_beneath(root, RECORDS, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	unsigned *ids = NULL;
	size_t n = 0;

	if (!d && fd >= 0)
		close(fd);
	while (d && (de = readdir(d))) {
		unsigned v;
		if (parse_version(de->d_name, &v)) {
			ids = xrealloc(ids, (n + 1) * sizeof(*ids));
			ids[n++] = v;
		}
	}
	if (d)
		closedir(d);
	for (size_t i = 1; i < n; i++) /* few: insertion sort */
		for (size_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
			unsigned x = ids[j];
			ids[j] = ids[j - 1];
			ids[j - 1] = x;
		}
	*count = n;
	return ids;
}

/* Is path (below the mount's root) dir or below it? */
static bool under(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	return !len || (!strncmp(path, dir, len) && (path[len] == 0 || path[len] == '/'));
}

static char *mpath(const struct target *t, const char *dir, const char *name)
{
	const char *pt = strcmp(t->mnt.point, "/") ? t->mnt.point : "";

	if (name)
		return xasprintf("%s%s%s/%s", pt, *dir ? "/" : "", dir, name);
	return xasprintf("%s%s%s", *pt || *dir ? pt : "/", *dir ? "/" : "", dir);
}

static char *who(unsigned uid)
{
	struct passwd *pw = getpwuid(uid);

	return pw ? xstrdup(pw->pw_name) : xasprintf("%u", uid);
}

/* The version number of a kept file from its path below .versions/, 0 if none. */
static unsigned vnum(const char *vrel)
{
	const char *base;
	size_t len;

	if (!vrel)
		return 0;
	base = strrchr(vrel, '/');
	return names_version_parse(base ? base + 1 : vrel, &len);
}

/* A record that touches the tree at rel: its DIR is rel or below, or one of its files is. */
static bool touches(const struct relrec *r, const char *rel)
{
	if (under(r->dir, rel))
		return true;
	for (size_t i = 0; i < r->n; i++)
		if (under(r->e[i].dir, rel))
			return true;
	return false;
}

/* A release's record as the head of a JSON object, left open (releases, diff --release). */
static void json_release(const struct relrec *r, const char *dir, const char *user)
{
	json_obj();
	json_kint("id", r->id);
	json_kstr("name", r->name);
	json_kstr("dir", dir);
	json_kint("begun", r->begun);
	json_kint("committed", r->committed);
	json_kint("uid", r->cuid);
	json_kstr("user", user);
	json_kint("changed", r->changed);
	json_kint("added", r->added);
	json_kint("removed", r->removed);
}

int cmd_releases(int argc, char **argv)
{
	char *pos[1];
	struct target t;
	struct table tb;
	unsigned *ids;
	size_t n;
	int ret = 1;

	if (cmd_args(argc, argv, 0, 1, "releases [DIR]", pos))
		return 1;
	if (target_resolve(pos[0] ? pos[0] : ".", &t))
		return 1;
	ids = rec_ids(t.root, &n);
	table_init(&tb, 8);
	table_add(&tb, "ID", "NAME", "COMMITTED", "WHO", "DIR", "CHANGED", "ADDED", "REMOVED");
	if (ctl_json)
		json_arr();
	for (size_t i = 0; i < n; i++) {
		struct relrec r;
		char when[32], idb[16], c[16], a[16], d[16];
		int err = rec_load(t.root, ids[i], &r);
		if (err) {
			if (err != -ENOENT && err != -EACCES)
				ctl_err("release %u: its record cannot be read: %s", ids[i],
					err == -EINVAL ? "malformed" : strerror(-err));
			continue;
		}
		if (!touches(&r, t.rel)) {
			rec_free(&r);
			continue;
		}
		char *dir = mpath(&t, r.dir, NULL), *user = who(r.cuid);
		if (ctl_json) {
			json_release(&r, dir, user);
			json_obj_end();
		} else {
			fmt_time((time_t)r.committed, when, sizeof(when));
			snprintf(idb, sizeof(idb), "%u", r.id);
			snprintf(c, sizeof(c), "%u", r.changed);
			snprintf(a, sizeof(a), "%u", r.added);
			snprintf(d, sizeof(d), "%u", r.removed);
			table_add(&tb, idb, r.name, when, user, dir, c, a, d);
		}
		free(dir);
		free(user);
		rec_free(&r);
	}
	if (ctl_json) {
		json_arr_end();
		putchar('\n');
	} else if (tb.rows > 1) {
		table_print(&tb);
	} else {
		char *d = esc(t.abs);
		printf("%s: no release committed here\n", d);
		free(d);
	}
	ret = 0;
	table_free(&tb);
	free(ids);
	target_free(&t);
	return ret;
}

/* "--release ID" out of argv: 1 if there, with *id; -1 after an error; 0 if absent. */
int take_release(int *argc, char **argv, unsigned *id)
{
	int n = 0, found = 0;

	for (int i = 0; i < *argc; i++) {
		const char *v = NULL;
		if (!strcmp(argv[i], "--")) {
			while (i < *argc)
				argv[n++] = argv[i++];
			break;
		}
		if (!strcmp(argv[i], "--release")) {
			if (i + 1 >= *argc)
				return ctl_err("--release needs an ID"), -1;
			v = argv[++i];
		} else if (!strncmp(argv[i], "--release=", 10)) {
			v = argv[i] + 10;
		} else {
			argv[n++] = argv[i];
			continue;
		}
		if (!parse_version(v, id))
			return ctl_err("%s: not a release id (1, 2, ...)", v), -1;
		found = 1;
	}
	*argc = n;
	return found;
}

static int load_or_say(const struct target *t, unsigned id, struct relrec *r)
{
	int err = rec_load(t->root, id, r);

	if (err == -ENOENT)
		return ctl_err("%s: no release %u (binvfsctl releases lists them)", t->mnt.point,
			       id);
	if (err)
		return ctl_err("%s: release %u: %s", t->mnt.point, id,
			       err == -EINVAL ? "its record is malformed" : strerror(-err));
	return 0;
}

/* The C or A entry that got the file a move took away (same inode), or NULL. */
static const struct relent *move_target(const struct relrec *r, const struct relent *m)
{
	for (size_t i = 0; i < r->n; i++)
		if ((r->e[i].kind == 'C' || r->e[i].kind == 'A') && r->e[i].ino == m->ino)
			return &r->e[i];
	return NULL;
}

int release_diff(int argc, char **argv, unsigned id)
{
	char *pos[1], when[32];
	struct target t;
	struct relrec r;
	int ret = 1;

	if (cmd_args(argc, argv, 0, 1, "diff --release ID [PATH]", pos))
		return 1;
	if (target_resolve(pos[0] ? pos[0] : ".", &t))
		return 1;
	if (load_or_say(&t, id, &r))
		goto out;
	char *dir = mpath(&t, r.dir, NULL), *user = who(r.cuid);
	if (ctl_json) {
		json_release(&r, dir, user);
		json_key("changes");
		json_arr();
	} else {
		char *d = esc(dir), *nm = esc(r.name);
		fmt_time((time_t)r.committed, when, sizeof(when));
		printf("release %u (%s) of %s, committed %s by %s: %u changed, %u added, %u "
		       "removed\n",
		       r.id, nm, d, when, user, r.changed, r.added, r.removed);
		free(d);
		free(nm);
	}
	for (size_t i = 0; i < r.n; i++) {
		const struct relent *e = &r.e[i], *to = NULL;
		bool moved_in = false;
		if (e->kind == 'A' || e->kind == 'C')
			for (size_t j = 0; j < r.n && !moved_in; j++)
				moved_in = r.e[j].kind == 'M' && r.e[j].ino == e->ino;
		if (e->kind == 'A' && moved_in)
			continue; /* shown with its move */
		if (e->kind == 'M')
			to = move_target(&r, e);
		char *p = mpath(&t, e->dir, e->name), *q = to ? mpath(&t, to->dir, to->name) : NULL;
		const char *kind = e->kind == 'C'   ? "changed"
				   : e->kind == 'A' ? "added"
				   : e->kind == 'D' ? "removed"
						    : "moved";
		unsigned v = vnum(e->kind == 'M' && to ? to->vrel : e->vrel);
		if (ctl_json) {
			json_obj();
			json_kstr("change", kind);
			json_kstr("path", p);
			if (e->kind == 'M') {
				json_kstr("to", q);
			}
			json_key("version");
			v ? json_int(v) : json_null();
			json_obj_end();
		} else {
			char *ep = esc(p), *eq = q ? esc(q) : NULL;
			if (e->kind == 'C')
				printf("changed  %s  (the old file: version %u)\n", ep, v);
			else if (e->kind == 'A')
				printf("added    %s\n", ep);
			else if (e->kind == 'D')
				printf("removed  %s  (kept as version %u)\n", ep, v);
			else if (eq && to->kind == 'C')
				printf("moved    %s -> %s  (replacing its version %u)\n", ep, eq,
				       v);
			else
				printf("moved    %s -> %s\n", ep, eq ? eq : "?");
			free(ep);
			free(eq);
		}
		free(p);
		free(q);
	}
	if (ctl_json) {
		json_arr_end();
		json_obj_end();
		putchar('\n');
	}
	free(dir);
	free(user);
	rec_free(&r);
	ret = 0;
out:
	target_free(&t);
	return ret;
}

/* ---- rollback --release ID DIR ---- */

struct step {
	const struct relent *e;
	int src;	/* the file to restore at the name; -1: the name is removed */
	struct stat st; /* of src */
};

/* The file that left the name in a move: at the move's target still, or kept there as a
 * version (a hard link keeps the inode). */
static int open_moved(const struct target *t, const struct relrec *r, const struct relent *m,
		      struct stat *st)
{
	const struct relent *to = move_target(r, m);
	struct target tt;
	struct vlist l = {0};
	int fd = -1;

	if (!to)
		return -1;
	char *rel = xasprintf("%s%s%s", to->dir, *to->dir ? "/" : "", to->name);
	fd = open_beneath(t->root, rel, O_RDONLY, 0, S_IFREG, st);
	free(rel);
	if (fd >= 0 && st->st_ino == m->ino)
		return fd;
	if (fd >= 0)
		close(fd);
	fd = -1;
	char *p = mpath(t, to->dir, to->name);
	if (!target_resolve(p, &tt)) {
		if (!vlist_load(&tt, &l))
			for (size_t i = 0; i < l.n && fd < 0; i++)
				if (l.v[i].st.st_ino == m->ino) {
					fd = open_beneath(l.root, l.v[i].rel, O_RDONLY, 0, S_IFREG,
							  st);
					fd = fd < 0 ? -1 : fd;
				}
		vlist_free(&l);
		target_free(&tt);
	}
	free(p);
	return fd;
}

/* Write src as dir/name through the mount in the open release: a new file beside it, then a
 * rename over the name (the daemon moves a file made within a release into the release: held
 * until the commit, like rsync's). 0 or -errno. */
static int stage(int root, const struct step *s, unsigned n)
{
	char tmp[64];
	struct stat st;
	int dfd, fd, err = 0;

	dfd = open_beneath(root, s->e->dir, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	if (dfd < 0)
		return dfd;
	if (s->src < 0) {
		err = unlinkat(dfd, s->e->name, 0) < 0 && errno != ENOENT ? -errno : 0;
		close(dfd);
		return err;
	}
	snprintf(tmp, sizeof(tmp), ".binvfs-rollback.%d.%u", (int)getpid(), n);
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		close(dfd);
		return err;
	}
	err = ctl_copy_fd(s->src, fd);
	if (!err && geteuid() == 0)
		(void)!fchown(fd, s->st.st_uid, s->st.st_gid);
	if (!err && fchmod(fd, s->st.st_mode & 07777) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	if (!err && renameat(dfd, tmp, dfd, s->e->name) < 0)
		err = -errno;
	if (err)
		unlinkat(dfd, tmp, 0);
	close(dfd);
	return err;
}

int release_rollback(int argc, char **argv, unsigned id)
{
	char *pos[1], rname[72], *val = NULL;
	struct target t;
	struct relrec r;
	struct step *steps = NULL;
	struct stat st;
	struct timespec t0, t1;
	size_t ns = 0;
	unsigned restored = 0, removed = 0;
	int ret = 1, dfd = -1, err = 0;
	bool begun = false;

	if (cmd_args(argc, argv, 1, 1, "rollback --release ID DIR", pos))
		return 1;
	if (target_resolve(pos[0], &t))
		return 1;
	if (load_or_say(&t, id, &r))
		goto out_t;
	if (!under(r.dir, t.rel)) {
		char *d = mpath(&t, r.dir, NULL);
		ctl_err("%s: release %u was on %s: give that directory (or one above it)", pos[0],
			id, d);
		free(d);
		goto out;
	}
	dfd = open_beneath(t.root, t.rel, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	if (dfd < 0) {
		ctl_err("%s: %s", pos[0], open_error(dfd, S_IFDIR));
		goto out;
	}
	/* every old file opened first: a pruned one stops the rollback before it begins */
	steps = xmalloc((r.n + 1) * sizeof(*steps));
	for (size_t i = 0; i < r.n; i++) {
		const struct relent *e = &r.e[i];
		struct step *s = &steps[ns++];
		char *p = mpath(&t, e->dir, e->name);
		s->e = e;
		s->src = -1;
		if (e->kind == 'C' || e->kind == 'D') {
			char *rel = e->vrel ? xasprintf("%s/%s", STORE_DIR, e->vrel) : NULL;
			s->src = rel ? open_beneath(t.root, rel, O_RDONLY, 0, S_IFREG, &s->st) : -1;
			free(rel);
			if (s->src < 0) {
				ctl_err("%s: release %u cannot be rolled back: the file before it "
					"(%s) is gone (pruned, or not kept for lack of space)",
					p, id, e->vrel ? e->vrel : "no version");
				free(p);
				s->src = -1;
				goto out;
			}
		} else if (e->kind == 'M') {
			s->src = open_moved(&t, &r, e, &s->st);
			if (s->src < 0) {
				ctl_err("%s: release %u cannot be rolled back: the file it moved "
					"away is gone",
					p, id);
				free(p);
				goto out;
			}
		}
		free(p);
	}
	snprintf(rname, sizeof(rname), "rollback-%u-%lld", id, (long long)time(NULL));
	val = xasprintf("begin:%s", rname);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (fsetxattr(dfd, RELEASE_XATTR, val, strlen(val), 0) < 0) {
		ctl_err("%s: rollback of release %u: cannot begin a release: %s", pos[0], id,
			errno == EBUSY ? "a release is open on it, above or below it"
				       : strerror(errno));
		goto out;
	}
	begun = true;
	for (size_t i = 0; i < ns && !err; i++) {
		err = stage(t.root, &steps[i], (unsigned)i);
		if (err) {
			char *p = mpath(&t, steps[i].e->dir, steps[i].e->name);
			ctl_err("%s: %s", p, strerror(-err));
			free(p);
		} else if (steps[i].src >= 0) {
			restored++;
		} else {
			removed++;
		}
	}
	if (err || fsetxattr(dfd, RELEASE_XATTR, "commit", 6, 0) < 0) {
		if (!err)
			ctl_err("%s: rollback of release %u: commit: %s", pos[0], id,
				strerror(errno));
		goto out;
	}
	begun = false;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	/* the new release's id: the newest record of that name */
	unsigned newid = 0;
	size_t nids;
	unsigned *ids = rec_ids(t.root, &nids);
	for (size_t i = nids; i-- > 0 && !newid;) {
		struct relrec x;
		if (rec_load(t.root, ids[i], &x) == 0) {
			if (!strcmp(x.name, rname))
				newid = x.id;
			rec_free(&x);
		}
	}
	free(ids);
	if (ctl_json) {
		json_obj();
		json_kint("release", id);
		json_key("as");
		newid ? json_int(newid) : json_null();
		json_kstr("name", rname);
		json_kint("restored", restored);
		json_kint("removed", removed);
		json_obj_end();
		putchar('\n');
	} else {
		char *d = esc(t.abs);
		printf("%s: release %u rolled back as release %u (%s): %u files restored, %u "
		       "removed, at one instant (%.1f ms; binvfsctl rollback --release %u undoes "
		       "this)\n",
		       d, id, newid, rname, restored, removed,
		       (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
			   (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
		       newid);
		free(d);
	}
	ret = 0;
out:
	if (begun && fsetxattr(dfd, RELEASE_XATTR, "abort", 5, 0) == 0)
		fprintf(stderr, "binvfsctl: nothing rolled back (its release aborted)\n");
	for (size_t i = 0; i < ns; i++)
		if (steps[i].src >= 0)
			close(steps[i].src);
	free(steps);
	free(val);
	if (dfd >= 0)
		close(dfd);
	rec_free(&r);
out_t:
	target_free(&t);
	return ret;
}
