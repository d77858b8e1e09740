/* cmd_log.c - binvfsctl log PATH: the versions of one file, newest (the current one) first,
 * with the pids that run, map or hold open each of them. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "procscan.h"
#include "vlist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* "4711(app) 4712(python3,map)": each user of ino; exe alone is the usual case */
static char *pids_text(const struct uses *u, ino_t ino)
{
	char *out = xstrdup("");

	for (size_t i = 0; i < u->n; i++) {
		struct procinfo p;
		char how[32], *next;
		if (u->u[i].ino != ino)
			continue;
		procinfo_get(u->u[i].pid, &p);
		if (u->u[i].how & USE_EXE)
			snprintf(how, sizeof(how), "%s", "");
		else
			use_how(u->u[i].how, how, sizeof(how));
		next = xasprintf("%s%s%d(%s%s%s)", out, *out ? " " : "", (int)p.pid, p.comm,
				 *how ? "," : "", how);
		free(out);
		out = next;
		procinfo_free(&p);
	}
	return out;
}

static void json_pids(const struct uses *u, ino_t ino)
{
	json_arr();
	for (size_t i = 0; i < u->n; i++) {
		struct procinfo p;
		if (u->u[i].ino != ino)
			continue;
		procinfo_get(u->u[i].pid, &p);
		json_obj();
		json_kint("pid", p.pid);
		json_kstr("user", p.user);
		json_kstr("command", p.comm);
		json_kstr("cmdline", p.cmdline);
		json_key("how");
		json_how(u->u[i].how);
		json_obj_end();
		procinfo_free(&p);
	}
	json_arr_end();
}

static void json_version(const struct version *v, const struct vinfo *in, const struct uses *u)
{
	char t[64];

	json_obj();
	json_kint("n", v->n);
	json_kbool("current", v->current);
	json_kstr("path", v->path);
	if (v->current) {
		json_kstr("replaced", NULL);
	} else {
		fmt_iso(v->st.st_ctime, t, sizeof(t));
		json_kstr("replaced", t);
	}
	fmt_iso(v->st.st_mtime, t, sizeof(t));
	json_kstr("mtime", t);
	json_kint("size", (long long)v->st.st_size);
	json_kint("inode", (long long)v->st.st_ino);
	json_kstr("sha256", in->sha256);
	json_kstr("build_id", in->build_id[0] ? in->build_id : NULL);
	json_key("pids");
	json_pids(u, v->st.st_ino);
	json_obj_end();
}

int cmd_log(int argc, char **argv)
{
	char *pos[1];
	struct target t;
	struct vlist l = {0};
	struct uses u;
	struct table tab;
	int ret = 1;

	if (cmd_args(argc, argv, 1, 1, "log PATH", pos))
		return 1;
	if (target_resolve(pos[0], &t) || vlist_load(&t, &l))
		goto out;
	uses_scan(t.mnt.dev, t.mnt.point, &u);
	if (ctl_json) {
		json_obj();
		json_kstr("path", l.file);
		json_kstr("mountpoint", t.mnt.point);
		json_key("current");
		l.current ? json_int(l.current) : json_null();
		json_key("versions");
		json_arr();
	} else {
		char *file = esc(l.file);
		printf("%s: %zu version%s", file, l.n, l.n == 1 ? "" : "s");
		free(file);
		if (l.current)
			printf(", current %u\n", l.current);
		else
			printf(", removed (no current version)\n");
		table_init(&tab, 6);
		table_add(&tab, "N", "REPLACED", "SIZE", "SHA256", "BUILD-ID", "PIDS");
	}
	for (size_t i = l.n; i-- > 0;) {
		struct version *v = &l.v[i];
		struct vinfo in;
		/* opened once (no symlink, no FIFO): hashed, read and stat'ed through that fd */
		int fd = version_open(&l, v, pos[0]), err;
		if (fd < 0)
			continue;
		err = vinfo_fd(fd, &in);
		close(fd);
		if (err) {
			ctl_err("%s: %s", v->path, strerror(-err));
			continue;
		}
		if (ctl_json) {
			json_version(v, &in, &u);
			continue;
		}
		char n[16], when[64], size[32], sha[16], bid[16],
		    *pids = pids_text(&u, v->st.st_ino);
		snprintf(n, sizeof(n), "%u", v->n);
		if (v->current)
			snprintf(when, sizeof(when), "current");
		else
			fmt_time(v->st.st_ctime, when, sizeof(when));
		snprintf(size, sizeof(size), "%lld", (long long)v->st.st_size);
		snprintf(sha, sizeof(sha), "%.12s", in.sha256);
		snprintf(bid, sizeof(bid), "%.12s", in.build_id[0] ? in.build_id : "-");
		table_add(&tab, n, when, size, sha, bid, *pids ? pids : "-");
		free(pids);
	}
	if (ctl_json) {
		json_arr_end();
		json_obj_end();
	} else {
		table_print(&tab);
		table_free(&tab);
	}
	uses_free(&u);
	ret = 0;
out:
	vlist_free(&l);
	target_free(&t);
	return ret;
}
