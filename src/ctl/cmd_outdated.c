/* cmd_outdated.c - binvfsctl outdated [--units] [DIR]: the processes that still run, map or
 * hold open a replaced version of a file in a binvfs mount, and the systemd unit each belongs
 * to. Exact: the mount's st_dev and each version's inode number against /proc/PID/maps, exe
 * and fd; a process on the current version is never listed. */
#define _GNU_SOURCE
#include "outdated.h"
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "names.h"
#include "vlist.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool have_row(const struct orows *rs, pid_t pid, const char *file, unsigned running)
{
	for (size_t i = 0; i < rs->n; i++)
		if (rs->r[i].p.pid == pid && rs->r[i].running == running &&
		    !strcmp(rs->r[i].file, file))
			return true;
	return false;
}

/* root: the mount's root fd */
static void scan_mount(const struct bmount *m, int root, const char *under, struct orows *out)
{
	const char *sep = strcmp(m->point, "/") ? "/" : "";
	struct vindex ix;
	struct uses u;

	vindex_build(root, under, false, &ix);
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
		int fd = open_beneath(root, e->rel, O_PATH, 0, S_IFREG, &cur); /* no symlink */
		bool exists = fd >= 0;
		if (fd >= 0)
			close(fd);
		if ((exists && cur.st_ino == u.u[i].ino) || have_row(out, u.u[i].pid, file, e->n)) {
			free(file); /* also linked as the current file: not outdated */
			continue;
		}
		out->r = xrealloc(out->r, (out->n + 1) * sizeof(*out->r));
		struct orow *r = &out->r[out->n++];
		procinfo_get(u.u[i].pid, &r->p);
		proc_unit(u.u[i].pid, &r->u);
		r->file = file;
		r->running = e->n;
		r->current = exists ? vindex_newest(&ix, e->rel) + 1 : 0;
		r->how = u.u[i].how;
	}
	uses_free(&u);
	vindex_free(&ix);
}

int outdated_collect(char **dirs, int ndirs, struct orows *out)
{
	out->r = NULL;
	out->n = 0;
	for (int i = 0; i < ndirs; i++) {
		struct target t;
		int bad = 1;
		if (target_resolve(dirs[i], &t) == 0) {
			if (!t.exists)
				ctl_err("%s: no such file or directory", dirs[i]);
			else if (!strcmp(t.rel, STORE_DIR) ||
				 !strncmp(t.rel, STORE_DIR "/", sizeof(STORE_DIR)))
				ctl_err("%s: inside .versions/; give the path in the tree",
					dirs[i]);
			else
				bad = 0;
			if (!bad)
				scan_mount(&t.mnt, t.root, t.rel, out);
		}
		target_free(&t);
		if (bad) {
			outdated_free(out);
			return 1;
		}
	}
	if (!ndirs) {
		struct mtab m;
		if (mtab_read(&m))
			return 1;
		for (size_t i = 0; i < m.n; i++) {
			int root = mount_root(&m.m[i]);
			if (root >= 0) {
				scan_mount(&m.m[i], root, NULL, out);
				close(root);
			}
		}
		mtab_free(&m);
	}
	return 0;
}

void outdated_free(struct orows *rs)
{
	for (size_t i = 0; i < rs->n; i++) {
		procinfo_free(&rs->r[i].p);
		punit_free(&rs->r[i].u);
		free(rs->r[i].file);
	}
	free(rs->r);
	rs->r = NULL;
	rs->n = 0;
}

char *unit_label(const struct punit *u)
{
	if (!u->unit)
		return NULL;
	return u->manager ? xasprintf("%s/%s", u->manager, u->unit) : xstrdup(u->unit);
}

void outdated_group(const struct orows *rs, struct ogroups *out)
{
	out->g = NULL;
	out->n = 0;
	for (size_t i = 0; i < rs->n; i++) {
		char *label = unit_label(&rs->r[i].u);
		struct ogroup *g = NULL;
		for (size_t k = 0; k < out->n && !g; k++)
			if (label ? out->g[k].label && !strcmp(label, out->g[k].label)
				  : !out->g[k].label)
				g = &out->g[k];
		if (g) {
			free(label);
		} else {
			out->g = xrealloc(out->g, (out->n + 1) * sizeof(*out->g));
			g = &out->g[out->n++];
			*g = (struct ogroup){.u = &rs->r[i].u, .label = label};
		}
		g->rows = xrealloc(g->rows, (g->n + 1) * sizeof(*g->rows));
		g->rows[g->n++] = i;
	}
}

void ogroups_free(struct ogroups *gs)
{
	for (size_t i = 0; i < gs->n; i++) {
		free(gs->g[i].label);
		free(gs->g[i].rows);
	}
	free(gs->g);
	gs->g = NULL;
	gs->n = 0;
}

const char *orow_current(const struct orow *r, char *buf, size_t len)
{
	if (r->current)
		snprintf(buf, len, "%u", r->current);
	else
		snprintf(buf, len, "removed");
	return buf;
}

static void print_rows(const struct orows *rs)
{
	struct table t;

	table_init(&t, 8);
	table_add(&t, "PID", "USER", "COMMAND", "UNIT", "FILE", "RUNNING", "CURRENT", "HOW");
	for (size_t i = 0; i < rs->n; i++) {
		const struct orow *r = &rs->r[i];
		char pid[16], run[16], cur[16], how[32], *unit = unit_label(&r->u);
		snprintf(pid, sizeof(pid), "%d", (int)r->p.pid);
		snprintf(run, sizeof(run), "%u", r->running);
		table_add(&t, pid, r->p.user, r->p.comm, unit, r->file, run,
			  orow_current(r, cur, sizeof(cur)), use_how(r->how, how, sizeof(how)));
		free(unit);
	}
	table_print(&t);
	table_free(&t);
}

char *ogroup_join(const struct orows *rs, const struct ogroup *g, bool pids)
{
	char *out = xstrdup("");

	for (size_t k = 0; k < g->n; k++) {
		const struct orow *r = &rs->r[g->rows[k]];
		char *item = pids ? xasprintf("%d", (int)r->p.pid) : xstrdup(r->file), *next;
		bool seen = false;
		for (size_t j = 0; j < k && !seen; j++) {
			const struct orow *o = &rs->r[g->rows[j]];
			seen = pids ? o->p.pid == r->p.pid : !strcmp(o->file, r->file);
		}
		if (!seen) {
			next = xasprintf("%s%s%s", out, *out ? " " : "", item);
			free(out);
			out = next;
		}
		free(item);
	}
	return out;
}

static void print_units(const struct orows *rs)
{
	struct ogroups gs;
	struct table t;

	outdated_group(rs, &gs);
	table_init(&t, 4);
	table_add(&t, "UNIT", "RESTART", "PIDS", "FILES");
	for (size_t i = 0; i < gs.n; i++) {
		const char *why;
		char *pids = ogroup_join(rs, &gs.g[i], true);
		char *files = ogroup_join(rs, &gs.g[i], false);
		table_add(&t, gs.g[i].label, punit_restartable(gs.g[i].u, &why) ? "yes" : "no",
			  pids, files);
		free(pids);
		free(files);
	}
	table_print(&t);
	table_free(&t);
	ogroups_free(&gs);
}

void orow_json_fields(const struct orow *r, bool all)
{
	json_kint("pid", r->p.pid);
	if (all)
		json_kstr("user", r->p.user);
	json_kstr("command", r->p.comm);
	if (all)
		json_kstr("cmdline", r->p.cmdline);
	json_kstr("unit", r->u.unit);
	json_kstr("manager", r->u.manager);
	if (all)
		json_kstr("cgroup", r->u.cgroup);
	json_kstr("file", r->file);
	json_kint("running", r->running);
	json_key("current");
	r->current ? json_int(r->current) : json_null();
	if (all) {
		json_key("how");
		json_how(r->how);
	}
}

static void json_row(const struct orow *r)
{
	json_obj();
	orow_json_fields(r, true);
	json_obj_end();
}

static void json_units(const struct orows *rs)
{
	struct ogroups gs;

	outdated_group(rs, &gs);
	json_arr();
	for (size_t i = 0; i < gs.n; i++) {
		const struct ogroup *g = &gs.g[i];
		const char *why;
		bool restart = punit_restartable(g->u, &why);
		json_obj();
		json_kstr("unit", g->u->unit);
		json_kstr("manager", g->u->manager);
		json_kbool("restart", restart);
		json_kstr("not_restarted", why);
		json_key("processes");
		json_arr();
		for (size_t k = 0; k < g->n; k++)
			json_row(&rs->r[g->rows[k]]);
		json_arr_end();
		json_obj_end();
	}
	json_arr_end();
	ogroups_free(&gs);
}

int cmd_outdated(int argc, char **argv)
{
	char *pos[1];
	struct orows rs;
	bool units = cmd_flag(&argc, argv, "--units");

	if (cmd_args(argc, argv, 0, 1, "outdated [--units] [DIR]", pos) ||
	    outdated_collect(pos, pos[0] ? 1 : 0, &rs))
		return 1;
	if (ctl_json && units)
		json_units(&rs);
	else if (ctl_json) {
		json_arr();
		for (size_t i = 0; i < rs.n; i++)
			json_row(&rs.r[i]);
		json_arr_end();
	} else if (!rs.n)
		printf("no process runs or maps a replaced version\n");
	else if (units)
		print_units(&rs);
	else
		print_rows(&rs);
	outdated_free(&rs);
	return 0;
}
