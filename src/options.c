/* options.c - command line and mount options, validated before anything changes on disk. */
#define _GNU_SOURCE
#include "options.h"
#include "log.h"
#include "names.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef BINVFS_VERSION
#define BINVFS_VERSION "0"
#endif

/* the usage text below says it */
_Static_assert(NAMES_KEEP_DEFAULT == 10, "binvfs_usage: keep=N default");

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
    "  -o uring      FUSE over io_uring when the kernel offers it (Linux >= 6.14 with\n"
    "                /sys/module/fuse/parameters/enable_uring Y): requests and replies\n"
    "                through per-CPU rings in place of /dev/fuse reads and writes\n"
    "  -o noacl      the kernel does not check ACL entries (faster path walks for users\n"
    "                who do not own SOURCE; ACLs stay on SOURCE and are inherited)\n"
    "  -o debug      same as -d\n"
    "  -o remount    change the mount flags of the binvfs mount at MOUNTPOINT (mount -o remount)\n"
    "  -o OPT        mount flags (ro, noexec, noatime, nodiratime, relatime, strictatime, ...),\n"
    "                FUSE options (allow_other, default_permissions, ...); as root,\n"
    "                allow_other and default_permissions are on by default\n";

/* fstab and mount(8) options that mean nothing to a FUSE daemon, or (acl, noacl) that only
 * parse_opts reads; dax: direct access is the backing filesystem's (docs/semantics.md) */
static bool ignored(const char *o)
{
	static const char *const list[] = {"defaults", "auto",	"noauto", "user",   "nouser",
					   "users",    "owner", "group",  "nofail", "_netdev",
					   "noacl",    "acl",	"dax",	  NULL};
	if (!strncmp(o, "x-", 2) || !strncmp(o, "comment=", 8) || !strncmp(o, "dax=", 4))
		return true;
	for (int i = 0; list[i]; i++)
		if (!strcmp(o, list[i]))
			return true;
	return false;
}

#define ATIME_FLAGS (MS_NOATIME | MS_RELATIME | MS_STRICTATIME)

/* The mount flags of mount(8) (util-linux's names), each setting (on) or clearing its flag;
 * the atime policies replace one another. The last word for a flag wins, as in mount(8). */
static const struct {
	const char *name;
	unsigned long flag;
	bool on;
} mount_words[] = {
    {"ro", MS_RDONLY, true},
    {"rw", MS_RDONLY, false},
    {"nosuid", MS_NOSUID, true},
    {"suid", MS_NOSUID, false},
    {"nodev", MS_NODEV, true},
    {"dev", MS_NODEV, false},
    {"noexec", MS_NOEXEC, true},
    {"exec", MS_NOEXEC, false},
    {"sync", MS_SYNCHRONOUS, true},
    {"async", MS_SYNCHRONOUS, false},
    {"dirsync", MS_DIRSYNC, true},
    {"lazytime", MS_LAZYTIME, true},
    {"nolazytime", MS_LAZYTIME, false},
    {"nosymfollow", MS_NOSYMFOLLOW, true},
    {"symfollow", MS_NOSYMFOLLOW, false},
    {"nodiratime", MS_NODIRATIME, true},
    {"diratime", MS_NODIRATIME, false},
    {"noatime", MS_NOATIME, true},
    {"atime", MS_NOATIME, false},
    {"relatime", MS_RELATIME, true},
    {"norelatime", MS_RELATIME, false},
    {"strictatime", MS_STRICTATIME, true},
    {"nostrictatime", MS_STRICTATIME, false},
};

static bool mount_word(struct options *o, const char *opt)
{
	for (size_t i = 0; i < sizeof(mount_words) / sizeof(mount_words[0]); i++) {
		unsigned long f = mount_words[i].flag;
		if (strcmp(opt, mount_words[i].name))
			continue;
		if (mount_words[i].on && (f & ATIME_FLAGS))
			o->mflags &= ~(unsigned long)ATIME_FLAGS;
		if (mount_words[i].on)
			o->mflags |= f;
		else
			o->mflags &= ~f;
		o->mflags_given |= f & ATIME_FLAGS ? ATIME_FLAGS : f;
		return true;
	}
	return false;
}

unsigned long options_mount_flags(const struct options *o, unsigned long base)
{
	return (base & ~o->mflags_given) | (o->mflags & o->mflags_given);
}

/* Options a remount cannot change, or that come back from the mount table (mount(8) passes
 * them on to the helper at a remount): binvfs's own, and the FUSE kernel's. */
static bool remount_fixed(const char *o)
{
	static const char *const list[] = {
	    "keep=",	 "readahead=", "passthrough=", "reserve=", "user_id=", "group_id=",
	    "rootmode=", "max_read=",  "blksize=",     "fsname=",  "subtype=", NULL};
	if (!strcmp(o, "nosync") || !strcmp(o, "uring") || !strcmp(o, "allow_other") ||
	    !strcmp(o, "allow_root") || !strcmp(o, "default_permissions"))
		return true;
	for (int i = 0; list[i]; i++)
		if (!strncmp(o, list[i], strlen(list[i])))
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
		if (!strcmp(opt, "acl") || !strcmp(opt, "noacl"))
			o->noacl = !strcmp(opt, "noacl"); /* at INIT only: a remount keeps it */
		if (!strcmp(opt, "remount") || mount_word(o, opt) || ignored(opt)) {
			/* the mount flags: applied by main.c */
		} else if (o->remount && remount_fixed(opt)) {
			/* taken from the mount table again, or not changeable: main.c says which */
			if (!strncmp(opt, "keep=", 5) || !strncmp(opt, "readahead=", 10) ||
			    !strncmp(opt, "passthrough=", 12) || !strncmp(opt, "reserve=", 8) ||
			    !strcmp(opt, "nosync") || !strcmp(opt, "uring"))
				fprintf(
				    stderr,
				    "binvfs: remount: %s is not changed (binvfs keeps the options "
				    "it was started with)\n",
				    opt);
		} else if (!strncmp(opt, "keep=", 5)) {
			char *end;
			errno = 0;
			unsigned long k = strtoul(opt + 5, &end, 10);
			if (errno || *end || end == opt + 5 || k > NAMES_KEEP_MAX ||
			    opt[5] == '-') {
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
		} else if (!strcmp(opt, "uring")) {
			o->uring = true;
		} else if (!strcmp(opt, "debug")) {
			o->debug = o->foreground = true;
		} else if (o->remount) {
			fprintf(stderr, "binvfs: remount: unknown option %s\n", opt);
			return -1;
		} else if (add_fuse_opt(o, opt) < 0) {
			return -1;
		}
	}
	return 0;
}

/* The mount flags libfuse 3.14 knows, as options for it: only those that differ from its
 * defaults (nosuid, nodev, relatime), so that fusermount3 sees what it saw before. */
static int libfuse_flags(struct options *o)
{
	unsigned long f = options_mount_flags(o, MS_NOSUID | MS_NODEV);
	static const struct {
		unsigned long flag;
		bool on;
		const char *opt;
	} words[] = {{MS_RDONLY, true, "ro"},	     {MS_NOSUID, false, "suid"},
		     {MS_NODEV, false, "dev"},	     {MS_NOEXEC, true, "noexec"},
		     {MS_SYNCHRONOUS, true, "sync"}, {MS_DIRSYNC, true, "dirsync"},
		     {MS_NOATIME, true, "noatime"}};

	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!!(f & words[i].flag) == words[i].on && add_fuse_opt(o, words[i].opt) < 0)
			return -1;
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
	/* a remount (mount -o remount DIR runs mount.fuse3, which runs binvfs) changes the flags
	 * of a running mount: known before the options are read, which it changes the meaning of */
	for (int i = 1; i < argc; i++) {
		const char *l = !strncmp(argv[i], "-o", 2) ? (argv[i][2]     ? argv[i] + 2
							      : i + 1 < argc ? argv[i + 1]
									     : "")
							   : NULL;
		for (const char *w = l; w && (w = strstr(w, "remount")); w += 7)
			if ((w == l || w[-1] == ',') && (!w[7] || w[7] == ','))
				o->remount = true;
	}
	o->keep = NAMES_KEEP_DEFAULT;
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
	if (!o->remount && libfuse_flags(o) < 0) {
		options_free(o);
		return -1;
	}
	if (geteuid() == 0 &&
	    (add_fuse_opt(o, "allow_other") < 0 || add_fuse_opt(o, "default_permissions") < 0)) {
		options_free(o);
		return -1;
	}
	return 0;
}
