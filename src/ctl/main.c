/* binvfsctl - the operator's tool for binvfs: what changed, who still runs old code, roll
 * back, apply retention. It works through the mount's own files and /proc, never behind the
 * daemon's back. */
#include "ctl.h"

#include <stdio.h>
#include <string.h>

#ifndef BINVFS_VERSION
#define BINVFS_VERSION "0"
#endif

static const char usage[] =
    "usage: binvfsctl [--json] COMMAND [ARG...]\n"
    "Inspect and operate binvfs mounts, through the mount's own files and /proc.\n"
    "The versions of a file are numbered from 1; the current one has the highest N.\n"
    "\n"
    "  status [DIR]               the mounts (or DIR's): source, options,\n"
    "                             daemon, passthrough mode, files, versions,\n"
    "                             bytes in .versions/, staging in progress\n"
    "  log PATH                   the versions of PATH, newest first: N, when\n"
    "                             replaced, size, sha256, ELF build-id, the\n"
    "                             pids that run or map it\n"
    "  diff PATH [N [M]]          version N (default: the newest old one)\n"
    "                             against M (default: the current one): a\n"
    "                             unified diff for text; sizes, sha256,\n"
    "                             build-ids and changed byte ranges otherwise\n"
    "  rollback PATH [N]          make version N (default: the newest old one)\n"
    "                             current again, atomically, as a new version\n"
    "  rollback --release ID DIR  make the state before release ID current\n"
    "                             again, as one new release\n"
    "  prune [--keep N] PATH|DIR  remove all but the newest N old versions of\n"
    "                             PATH, or of every file in DIR and below\n"
    "                             (default N: the mount's keep=); never a\n"
    "                             version in use\n"
    "  outdated [--units] [DIR]   the processes that run or map a replaced\n"
    "                             version of a file: pid, user, command,\n"
    "                             systemd unit, file, version vs current;\n"
    "                             --units: one line per unit\n"
    "  restart [--dry-run] [--reload] [DIR...]\n"
    "                             systemctl try-restart (--reload:\n"
    "                             try-reload-or-restart) each service that\n"
    "                             runs or maps a replaced version; processes\n"
    "                             in no service are listed, never restarted;\n"
    "                             --dry-run: print the commands only\n"
    "  release begin|commit|abort|status DIR [--name NAME]\n"
    "                             a release on DIR: from begin on, every\n"
    "                             publish, new file, rm and mv under DIR is\n"
    "                             held; commit makes them all current at\n"
    "                             one instant, abort drops them\n"
    "  releases [DIR]             the releases committed on DIR (or touching\n"
    "                             it): id, name, time, who, files changed,\n"
    "                             added, removed\n"
    "  diff --release ID [PATH]   what release ID changed, file by file\n"
    "\n"
    "  --json                     machine-readable output (JSON) on stdout\n"
    "  -h, --help                 this help\n"
    "  -V, --version              the version\n"
    "\n"
    "Errors are one line on stderr, \"binvfsctl: ...\", and exit status 1.\n";

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
} commands[] = {
    {"status", cmd_status},	{"log", cmd_log},	  {"diff", cmd_diff},
    {"rollback", cmd_rollback}, {"prune", cmd_prune},	  {"outdated", cmd_outdated},
    {"restart", cmd_restart},	{"release", cmd_release}, {"releases", cmd_releases},
};

int main(int argc, char **argv)
{
	const char *cmd = NULL;
	int nargs = 0;
	bool dashdash = false;

	/* --json, -h and -V anywhere (before a "--"); the rest, in order, for the command */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!dashdash && !strcmp(a, "--json")) {
			ctl_json = true;
		} else if (!dashdash && (!strcmp(a, "-h") || !strcmp(a, "--help"))) {
			fputs(usage, stdout);
			return 0;
		} else if (!dashdash && (!strcmp(a, "-V") || !strcmp(a, "--version"))) {
			printf("binvfsctl %s\n", BINVFS_VERSION);
			return 0;
		} else if (!cmd && !dashdash && a[0] == '-') {
			if (!strcmp(a, "--"))
				dashdash = true;
			else
				return ctl_err("unknown option %s (see binvfsctl --help)", a);
		} else if (!cmd) {
			cmd = a;
		} else {
			if (!strcmp(a, "--"))
				dashdash = true;
			argv[++nargs] = argv[i]; /* argv[1..nargs]: the command's arguments */
		}
	}
	if (!cmd)
		return ctl_err("missing command (see binvfsctl --help)");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (!strcmp(cmd, commands[i].name)) {
			argv[0] = (char *)cmd;
			argv[nargs + 1] = NULL;
			return commands[i].fn(nargs, argv + 1);
		}
	}
	return ctl_err("unknown command %s (see binvfsctl --help)", cmd);
}
