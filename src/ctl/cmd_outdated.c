/* cmd_outdated.c - binvfsctl outdated [DIR]: the processes that still run, map or hold open a
 * replaced version of a file in a binvfs mount. Exact: the mount's st_dev and each version's
 * inode number against /proc/PID/maps, exe and fd; a process on the current version is never
 * listed. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "procscan.h"
#include "vlist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct row {
	struct procinfo p;
	char *file;
	unsigned running, current; /* current 0: the name was removed */
	unsigned how;
};

struct rows {
	struct row *r;
	size_t n;
};

static void scan_mount(const struct bmount *m, const char *under, struct rows *out)
{
	const char *sep = strcmp(m->point, "/") ? "/" : "";
	struct vindex ix;
	struct uses u;

	vindex_build(m->point, under, &ix);
	if (!ix.n) {
		vindex_free(&ix);
		return;
	}
	uses_scan(m->dev, m->point, &u);
	for (size_t i = 0; i < u.n; i++) {
		const struct ventry *e = vindex_find(&ix, u.u[i].ino);
		struct stat cur;
		if (!e)
			continue;
		char *file = xasprintf("%s%s%s", m->point, sep, e->rel);
		bool exists = lstat(file, &cur) == 0 && S_ISREG(cur.st_mode);
		if (exists && cur.st_ino == u.u[i].ino) {
			free(file); /* also linked as the current file: not outdated */
			continue;
		}
		out->r = xrealloc(out->r, (out->n + 1) * sizeof(*out->r));
		struct row *r = &out->r[out->n++];
		procinfo_get(u.u[i].pid, &r->p);
		r->file = file;
		r->running = e->n;
		r->current = exists ? vindex_newest(&ix, e->rel) + 1 : 0;
		r->how = u.u[i].how;
	}
	uses_free(&u);
	vindex_free(&ix);
}

static void print_rows(const struct rows *rs)
{
	struct table t;

	if (!rs->n) {
		printf("no process runs or maps a replaced version\n");
		return;
	}
	table_init(&t, 7);
	table_add(&t, "PID", "USER", "COMMAND", "FILE", "RUNNING", "CURRENT", "HOW");
	for (size_t i = 0; i < rs->n; i++) {
		const struct row *r = &rs->r[i];
		char pid[16], run[16], cur[16], how[32];
		snprintf(pid, sizeof(pid), "%d", (int)r->p.pid);
		snprintf(run, sizeof(run), "%u", r->running);
		if (r->current)
			snprintf(cur, sizeof(cur), "%u", r->current);
		else
			snprintf(cur, sizeof(cur), "removed");
		table_add(&t, pid, r->p.user, r->p.comm, r->file, run, cur,
			  use_how(r->how, how, sizeof(how)));
	}
	table_print(&t);
	table_free(&t);
}

static void json_rows(const struct rows *rs)
{
	json_arr();
	for (size_t i = 0; i < rs->n; i++) {
		const struct row *r = &rs->r[i];
		json_obj();
		json_kint("pid", r->p.pid);
		json_kstr("user", r->p.user);
		json_kstr("command", r->p.comm);
		json_kstr("cmdline", r->p.cmdline);
		json_kstr("file", r->file);
		json_kint("running", r->running);
		json_key("current");
		r->current ? json_int(r->current) : json_null();
		json_key("how");
		json_arr();
		if (r->how & USE_EXE)
			json_str("exe");
		if (r->how & USE_MAP)
			json_str("map");
		if (r->how & USE_FD)
			json_str("open");
		json_arr_end();
		json_obj_end();
	}
	json_arr_end();
}

int cmd_outdated(int argc, char **argv)
{
	char *pos[1];
	struct rows rs = {0};
	int ret = 1;

	if (cmd_args(argc, argv, 0, 1, "outdated [DIR]", pos))
		return 1;
	if (pos[0]) {
		struct target t;
		if (target_resolve(pos[0], &t) == 0) {
			if (!t.exists)
				ctl_err("%s: no such file or directory", pos[0]);
			else if (!strcmp(t.rel, ".versions") || !strncmp(t.rel, ".versions/", 10))
				ctl_err("%s: inside .versions/; give the path in the tree", pos[0]);
			else
				ret = 0;
			if (!ret)
				scan_mount(&t.mnt, t.rel, &rs);
		}
		target_free(&t);
		if (ret)
			return ret;
	} else {
		struct mtab m;
		if (mtab_read(&m))
			return 1;
		for (size_t i = 0; i < m.n; i++)
			scan_mount(&m.m[i], NULL, &rs);
		mtab_free(&m);
	}
	if (ctl_json)
		json_rows(&rs);
	else
		print_rows(&rs);
	for (size_t i = 0; i < rs.n; i++) {
		procinfo_free(&rs.r[i].p);
		free(rs.r[i].file);
	}
	free(rs.r);
	return 0;
}
