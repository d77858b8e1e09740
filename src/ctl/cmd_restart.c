/* cmd_restart.c - binvfsctl restart [--dry-run] [--reload] [DIR...]: restart every systemd
 * service that has a process running, mapping or holding open a replaced version, with
 * `systemctl try-restart UNIT` (try-reload-or-restart with --reload). needrestart's job, but
 * exact: the processes are the ones `outdated` lists, matched by inode number. A process in
 * no service (a login session's scope, the root cgroup, a user's manager) is listed and never
 * restarted. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "outdated.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Tests and wrappers name another program to run instead of systemctl; it is then trusted to
 * reach the service manager, so the check that systemd runs here is skipped. */
#define SYSTEMCTL_ENV "BINVFSCTL_SYSTEMCTL"

/* sd_booted(3): systemd is the init system iff this directory exists */
static bool systemd_running(void)
{
	return access("/run/systemd/system", F_OK) == 0;
}

/* Run argv with its stdout on our stderr (--json keeps stdout to itself); the exit status,
 * 128+N for a signal, 127 if it could not be run. */
static int run(char *const argv[])
{
	int status;
	pid_t pid;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return 127;
	if (pid == 0) {
		dup2(STDERR_FILENO, STDOUT_FILENO);
		execvp(argv[0], argv);
		fprintf(stderr, "binvfsctl: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return 127;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void json_ints(const struct orows *rs, const struct ogroup *g)
{
	json_arr();
	for (size_t k = 0; k < g->n; k++) {
		bool seen = false;
		for (size_t j = 0; j < k && !seen; j++)
			seen = rs->r[g->rows[j]].p.pid == rs->r[g->rows[k]].p.pid;
		if (!seen)
			json_int(rs->r[g->rows[k]].p.pid);
	}
	json_arr_end();
}

/* A comment line of the script: every name escaped (esc), so none can end the comment and
 * start a command of its own, or reach the terminal raw. */
static void print_skipped(const struct orow *r, const char *why)
{
	char cur[16];
	char *comm = esc(r->p.comm), *unit = esc(r->u.unit ? r->u.unit : ""), *file = esc(r->file);

	printf("# not restarted: pid %d (%s%s%s) uses %s version %u (current %s): %s\n",
	       (int)r->p.pid, comm, r->u.unit ? ", " : "", unit, file, r->running,
	       orow_current(r, cur, sizeof(cur)), why);
	free(comm);
	free(unit);
	free(file);
}

static void json_skipped(const struct orow *r, const char *why)
{
	json_obj();
	orow_json_fields(r, false);
	json_kstr("why", why);
	json_obj_end();
}

/* How each unit is restarted. */
struct restart {
	const char *systemctl, *action; /* argv[0] and [1] of the command */
	bool dry;			/* print the commands, run none */
};

/* The DIRs among argv (options end at "--"); 1 after printing each unknown option. */
static int restart_dirs(int argc, char **argv, char ***dirs, int *ndirs)
{
	const char *synopsis = "restart [--dry-run] [--reload] [DIR...]";
	bool dashdash = false;
	int failed = 0;

	*dirs = xmalloc(((size_t)argc + 1) * sizeof(**dirs));
	*ndirs = 0;
	for (int i = 0; i < argc; i++) {
		if (!dashdash && !strcmp(argv[i], "--"))
			dashdash = true;
		else if (!dashdash && argv[i][0] == '-' && argv[i][1])
			failed =
			    ctl_err("unknown option %s; usage: binvfsctl %s", argv[i], synopsis);
		else
			(*dirs)[(*ndirs)++] = argv[i];
	}
	if (failed) {
		free(*dirs);
		*dirs = NULL;
	}
	return failed;
}

/* "systemctl try-restart app.service  # pid 7734 8203", each word as the shell reads it
 * (shell_word; a unit is restarted only with a valid systemd name, punit_restartable) */
static void print_command(const struct restart *how, const struct orows *rs, const struct ogroup *g)
{
	char *w0 = shell_word(how->systemctl), *w2 = shell_word(g->u->unit);
	char *pids = ogroup_join(rs, g, true);

	printf("%s %s %s  # pid %s\n", w0, how->action, w2, pids);
	free(w0);
	free(w2);
	free(pids);
}

/* {"unit", "command", "pids", "status"}: status null for a dry run */
static void json_command(const struct restart *how, const struct orows *rs, const struct ogroup *g,
			 char *const cmd[], int rc)
{
	json_obj();
	json_kstr("unit", g->u->unit);
	json_key("command");
	json_arr();
	for (int k = 0; cmd[k]; k++)
		json_str(cmd[k]);
	json_arr_end();
	json_key("pids");
	json_ints(rs, g);
	json_key("status");
	how->dry ? json_null() : json_int(rc);
	json_obj_end();
}

/* Print and (unless dry) run `systemctl ACTION UNIT` for g's unit; 1 if it failed. */
static int restart_unit(const struct restart *how, const struct orows *rs, const struct ogroup *g)
{
	char *cmd[] = {(char *)how->systemctl, (char *)how->action, g->u->unit, NULL};
	int rc = -1;

	if (!ctl_json)
		print_command(how, rs, g);
	if (!how->dry) {
		rc = run(cmd);
		if (rc)
			ctl_err("%s %s %s failed (exit status %d)", how->systemctl, how->action,
				g->u->unit, rc);
	}
	if (ctl_json)
		json_command(how, rs, g, cmd, rc);
	return !how->dry && rc != 0;
}

/* Each restartable unit in turn; how many failed. */
static int restart_units(const struct restart *how, const struct orows *rs,
			 const struct ogroups *gs)
{
	int failed = 0;

	for (size_t i = 0; i < gs->n; i++) {
		const char *why;
		if (punit_restartable(gs->g[i].u, &why))
			failed += restart_unit(how, rs, &gs->g[i]);
	}
	return failed;
}

/* Each process of a unit that is not restarted, with why. */
static void list_not_restarted(const struct orows *rs, const struct ogroups *gs)
{
	for (size_t i = 0; i < gs->n; i++) {
		const char *why;
		if (punit_restartable(gs->g[i].u, &why))
			continue;
		for (size_t k = 0; k < gs->g[i].n; k++) {
			const struct orow *r = &rs->r[gs->g[i].rows[k]];
			if (ctl_json)
				json_skipped(r, why);
			else
				print_skipped(r, why);
		}
	}
}

int cmd_restart(int argc, char **argv)
{
	struct restart how = {.dry = cmd_flag(&argc, argv, "--dry-run")};
	bool reload = cmd_flag(&argc, argv, "--reload");
	const char *systemctl = getenv(SYSTEMCTL_ENV);
	struct orows rs;
	struct ogroups gs;
	char **dirs;
	int ndirs, failed;

	if (restart_dirs(argc, argv, &dirs, &ndirs))
		return 1;
	if (!how.dry && !systemctl && !systemd_running()) {
		free(dirs);
		return ctl_err("systemd is not running here (no /run/systemd/system): there is no "
			       "unit to restart; binvfsctl restart --dry-run prints the commands");
	}
	how.systemctl = systemctl && *systemctl ? systemctl : "systemctl";
	how.action = reload ? "try-reload-or-restart" : "try-restart";
	failed = outdated_collect(dirs, ndirs, &rs);
	free(dirs);
	if (failed)
		return 1;
	outdated_group(&rs, &gs);
	if (ctl_json) {
		json_obj();
		json_kbool("dry_run", how.dry);
		json_kstr("action", how.action);
		json_key("units");
		json_arr();
	}
	failed = restart_units(&how, &rs, &gs);
	if (ctl_json) {
		json_arr_end();
		json_key("not_restarted");
		json_arr();
	}
	list_not_restarted(&rs, &gs);
	if (ctl_json) {
		json_arr_end();
		json_obj_end();
	} else if (!rs.n) {
		printf("# no process runs or maps a replaced version\n");
	}
	ogroups_free(&gs);
	outdated_free(&rs);
	return failed ? 1 : 0;
}
