/* options.c - command line and mount options, validated before anything changes on disk. */
#define _GNU_SOURCE
#include "options.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef BINVFS_VERSION
#define BINVFS_VERSION "0"
#endif

const char *binvfs_usage =
    "usage: binvfs [-f] [-d] [-s] [-o OPT[,OPT...]] SOURCE [MOUNTPOINT]\n"
    "Mount SOURCE (over itself, or at MOUNTPOINT) so that every write becomes an atomic\n"
    "new version and earlier versions stay under MOUNTPOINT/.versions/.\n"
    "\n"
    "  -f            stay in the foreground, log to stderr\n"
    "  -d            debug: trace every request (implies -f)\n"
    "  -s            single-threaded request loop\n"
    "  -h, --help    this help\n"
    "  -V, --version the version\n"
    "  -o keep=N     old versions kept per path (default 10, 0 = no limit)\n"
    "  -o nosync     skip the fsyncs of a publish (tests, benchmarks)\n"
    "  -o readahead=KB  the mount's readahead (default 512, 0 = leave the kernel's 128)\n"
    "  -o passthrough=auto|on|off  kernel FUSE passthrough for reads, execs and maps\n"
    "                (default auto: when the kernel offers it; on: refuse to mount without)\n"
    "  -o reserve=SIZE|PCT%  free space kept by removing unused old versions, oldest first\n"
    "                (default 1%; SIZE in bytes or with K, M, G, T; 0 = only when full)\n"
    "  -o debug      same as -d\n"
    "  -o OPT        FUSE and mount options (allow_other, default_permissions, suid, ro, ...);\n"
    "                as root, allow_other and default_permissions are on by default\n";

/* fstab and mount(8) options that mean nothing to a FUSE daemon */
static bool ignored(const char *o)
{
	static const char *const list[] = {"defaults", "auto",	 "noauto",  "user", "nouser",
					   "users",    "nofail", "_netdev", "rw",   NULL};
	if (!strncmp(o, "x-", 2) || !strncmp(o, "comment=", 8))
		return true;
	for (int i = 0; list[i]; i++)
		if (!strcmp(o, list[i]))
			return true;
	return false;
}

static int add_fuse_opt(struct options *o, const char *opt)
{
	size_t len = strlen(o->fuse_opts);

	if (len + strlen(opt) + 2 >= sizeof(o->fuse_opts)) {
		fprintf(stderr, "binvfs: too many options\n");
		return -1;
	}
	snprintf(o->fuse_opts + len, sizeof(o->fuse_opts) - len, "%s%s", len ? "," : "", opt);
	return 0;
}

/* reserve=SIZE (bytes, or K, M, G, T: powers of 1024) or reserve=PCT% of the filesystem. */
static int parse_reserve(struct options *o, const char *v)
{
	static const char units[] = "KMGT";
	unsigned long long n;
	char *end;

	if (*v < '0' || *v > '9')
		return -1;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno)
		return -1;
	if (!strcmp(end, "%")) {
		if (n > 50)
			return -1;
		o->reserve = n;
		o->reserve_pct = true;
		return 0;
	}
	if (*end) {
		const char *u = strchr(units, *end >= 'a' ? *end - 32 : *end);
		if (!u || !*u || end[1])
			return -1;
		for (long i = 0; i <= u - units; i++) {
			if (n > (~0ull >> 10))
				return -1;
			n <<= 10;
		}
	}
	o->reserve = n;
	o->reserve_pct = false;
	return 0;
}

static int parse_opts(struct options *o, char *list)
{
	char *save = NULL;

	for (char *opt = strtok_r(list, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
		if (!strncmp(opt, "keep=", 5)) {
			char *end;
			errno = 0;
			unsigned long k = strtoul(opt + 5, &end, 10);
			if (errno || *end || end == opt + 5 || k > 1000000 || opt[5] == '-') {
				fprintf(stderr, "binvfs: bad option %s: expected keep=N, N >= 0\n",
					opt);
				return -1;
			}
			o->keep = (unsigned)k;
		} else if (!strncmp(opt, "readahead=", 10)) {
			char *end;
			errno = 0;
			unsigned long kb = strtoul(opt + 10, &end, 10);
			if (errno || *end || end == opt + 10 || kb > 65536 || opt[10] == '-') {
				fprintf(stderr,
					"binvfs: bad option %s: expected readahead=KB, 0 <= KB <= "
					"65536\n",
					opt);
				return -1;
			}
			o->readahead_kb = (unsigned)kb;
			o->readahead_asked = true;
		} else if (!strncmp(opt, "passthrough=", 12)) {
			const char *v = opt + 12;
			if (!strcmp(v, "auto"))
				o->passthrough = PT_AUTO;
			else if (!strcmp(v, "on"))
				o->passthrough = PT_ON;
			else if (!strcmp(v, "off"))
				o->passthrough = PT_OFF;
			else {
				fprintf(stderr,
					"binvfs: bad option %s: expected passthrough=auto, on "
					"or off\n",
					opt);
				return -1;
			}
		} else if (!strncmp(opt, "reserve=", 8)) {
			if (parse_reserve(o, opt + 8) < 0) {
				fprintf(
				    stderr,
				    "binvfs: bad option %s: expected reserve=SIZE (bytes, or with "
				    "K, M, G, T) or reserve=PCT%% (0 to 50)\n",
				    opt);
				return -1;
			}
		} else if (!strcmp(opt, "nosync")) {
			o->nosync = true;
		} else if (!strcmp(opt, "debug")) {
			o->debug = o->foreground = true;
		} else if (!ignored(opt)) {
			if (add_fuse_opt(o, opt) < 0)
				return -1;
		}
	}
	return 0;
}

static char *real_dir(const char *what, const char *path)
{
	struct stat st;
	char *r = realpath(path, NULL);

	if (!r || stat(r, &st) < 0) {
		fprintf(stderr, "binvfs: %s %s: %s\n", what, path, strerror(errno));
		free(r);
		return NULL;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "binvfs: %s %s: not a directory\n", what, path);
		free(r);
		return NULL;
	}
	return r;
}

void options_free(struct options *o)
{
	free(o->source);
	free(o->mountpoint);
	o->source = o->mountpoint = NULL;
}

int options_parse(int argc, char **argv, struct options *o)
{
	const char *args[2];
	int nargs = 0;

	memset(o, 0, sizeof(*o));
	o->keep = 10;
	o->readahead_kb = 512;
	o->reserve = 1;
	o->reserve_pct = true;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			printf("%s", binvfs_usage);
			return 1;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("binvfs %s\n", BINVFS_VERSION);
			return 1;
		} else if (!strcmp(a, "-f")) {
			o->foreground = true;
		} else if (!strcmp(a, "-d")) {
			o->debug = o->foreground = true;
		} else if (!strcmp(a, "-s")) {
			o->single_thread = true;
		} else if (!strncmp(a, "-o", 2)) {
			char *list =
			    a[2] ? strdup(a + 2) : (i + 1 < argc ? strdup(argv[++i]) : NULL);
			if (!list) {
				fprintf(stderr,
					"binvfs: -o needs an argument (see binvfs --help)\n");
				return -1;
			}
			int r = parse_opts(o, list);
			free(list);
			if (r < 0)
				return -1;
		} else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "binvfs: unknown flag %s (see binvfs --help)\n", a);
			return -1;
		} else if (nargs < 2) {
			args[nargs++] = a;
		} else {
			fprintf(stderr, "binvfs: too many arguments (see binvfs --help)\n");
			return -1;
		}
	}
	if (nargs == 0) {
		fprintf(stderr, "binvfs: missing SOURCE (see binvfs --help)\n");
		return -1;
	}
	o->source = real_dir("SOURCE", args[0]);
	if (!o->source)
		return -1;
	o->mountpoint = nargs == 2 ? real_dir("MOUNTPOINT", args[1]) : strdup(o->source);
	if (!o->mountpoint) {
		free(o->source);
		return -1;
	}
	if (geteuid() == 0 &&
	    (add_fuse_opt(o, "allow_other") < 0 || add_fuse_opt(o, "default_permissions") < 0)) {
		options_free(o);
		return -1;
	}
	return 0;
}
