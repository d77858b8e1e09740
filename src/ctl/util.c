/* util.c - errors, allocation, number and time formatting, text tables. */
#define _GNU_SOURCE
#include "ctl.h"
#include "names.h"

#include <sys/stat.h>
#include <sys/syscall.h>

#include <fcntl.h>
#include <linux/openat2.h>

#include <dirent.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool ctl_json;

int ctl_err(const char *fmt, ...)
{
	va_list ap;
	char *msg, *e;
	int r;

	fflush(stdout);
	va_start(ap, fmt);
	r = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (r < 0) {
		fputs("binvfsctl: out of memory\n", stderr);
		return 1;
	}
	e = esc(msg);
	fprintf(stderr, "binvfsctl: %s\n", e);
	free(e);
	free(msg);
	return 1;
}

static void oom(void)
{
	fputs("binvfsctl: out of memory\n", stderr);
	exit(1);
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		oom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		oom();
	return s;
}

int cmd_args(int argc, char **argv, int min, int max, const char *synopsis, char **pos)
{
	bool dashdash = false;
	int n = 0;

	for (int i = 0; i < argc; i++) {
		if (!dashdash && !strcmp(argv[i], "--")) {
			dashdash = true;
		} else if (!dashdash && argv[i][0] == '-' && argv[i][1]) {
			return ctl_err("unknown option %s; usage: binvfsctl %s", argv[i], synopsis);
		} else {
			if (n == max)
				return ctl_err("too many arguments; usage: binvfsctl %s", synopsis);
			pos[n++] = argv[i];
		}
	}
	if (n < min)
		return ctl_err("missing argument; usage: binvfsctl %s", synopsis);
	for (int i = n; i < max; i++)
		pos[i] = NULL;
	return 0;
}

bool cmd_flag(int *argc, char **argv, const char *flag)
{
	bool found = false;
	int i = 0, n = 0;

	for (; i < *argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], flag))
			found = true;
		else
			argv[n++] = argv[i];
	}
	while (i < *argc)
		argv[n++] = argv[i++];
	*argc = n;
	return found;
}

bool parse_version(const char *s, unsigned *out)
{
	char *end;
	unsigned long v;

	if (*s < '1' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > 0xffffffffUL)
		return false;
	*out = (unsigned)v;
	return true;
}

void fmt_time(time_t t, char *buf, size_t len)
{
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

void fmt_iso(time_t t, char *buf, size_t len)
{
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%S%z", &tm);
}

void table_init(struct table *t, size_t cols)
{
	t->cols = cols;
	t->rows = 0;
	t->cells = NULL;
}

void table_add(struct table *t, ...)
{
	va_list ap;

	t->cells = xrealloc(t->cells, (t->rows + 1) * t->cols * sizeof(char *));
	va_start(ap, t);
	for (size_t c = 0; c < t->cols; c++) {
		const char *s = va_arg(ap, const char *);
		t->cells[t->rows * t->cols + c] = esc(s ? s : "-"); /* names are data */
	}
	va_end(ap);
	t->rows++;
}

void table_print(const struct table *t)
{
	size_t *w = xmalloc(t->cols * sizeof(*w));

	for (size_t c = 0; c < t->cols; c++) {
		w[c] = 0;
		for (size_t r = 0; r < t->rows; r++) {
			size_t l = strlen(t->cells[r * t->cols + c]);
			w[c] = l > w[c] ? l : w[c];
		}
	}
	for (size_t r = 0; r < t->rows; r++) {
		for (size_t c = 0; c < t->cols; c++) {
			const char *s = t->cells[r * t->cols + c];
			if (c + 1 == t->cols)
				printf("%s\n", s);
			else
				printf("%-*s  ", (int)w[c], s);
		}
	}
	free(w);
}

void table_free(struct table *t)
{
	for (size_t i = 0; i < t->rows * t->cols; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->rows = 0;
}

unsigned char entry_type(DIR *d, const struct dirent *e)
{
	struct stat st;

	if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
		return 0;
	if (e->d_type == DT_REG || e->d_type == DT_DIR)
		return e->d_type;
	if (e->d_type != DT_UNKNOWN || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	return S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : 0;
}

char *esc(const char *s)
{
	char *out = names_escape(s, "\\\a\b\t\n\v\f\r", "\\abtnvfr");

	if (!out)
		oom();
	return out;
}

char *shell_word(const char *s)
{
	if (*s &&
	    strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@%+=:,./_-") ==
		strlen(s))
		return xstrdup(s);
	char *out = xmalloc(4 * strlen(s) + 3), *o = out;
	*o++ = '\'';
	for (; *s; s++) {
		if (*s == '\'') {
			memcpy(o, "'\\''", 4);
			o += 4;
		} else {
			*o++ = *s;
		}
	}
	*o++ = '\'';
	*o = 0;
	return out;
}

/* The fallback of kernels before 5.6 (no openat2): one component at a time, each directory
 * with O_PATH | O_NOFOLLOW, so a symlink anywhere on the way fails the walk (ELOOP). */
static int open_walk(int root, const char *rel, int flags, mode_t mode)
{
	char *copy = xstrdup(rel), *save = NULL, *c, *next;
	int dir = openat(root, ".", O_PATH | O_DIRECTORY | O_CLOEXEC), fd = -1;

	if (dir < 0) {
		free(copy);
		return -errno;
	}
	c = strtok_r(copy, "/", &save);
	if (!c) { /* root itself */
		fd = openat(dir, ".", flags, mode);
		fd = fd < 0 ? -errno : fd;
	}
	for (; c; c = next) {
		next = strtok_r(NULL, "/", &save);
		if (!strcmp(c, "..") || !strcmp(c, ".")) {
			fd = -EXDEV;
			break;
		}
		if (!next) {
			fd = openat(dir, c, flags, mode);
			fd = fd < 0 ? -errno : fd;
			break;
		}
		int sub = openat(dir, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0) {
			struct stat st;
			fd = errno == ENOTDIR && !fstatat(dir, c, &st, AT_SYMLINK_NOFOLLOW) &&
				     S_ISLNK(st.st_mode)
				 ? -ELOOP
				 : -errno;
			break;
		}
		close(dir);
		dir = sub;
	}
	close(dir);
	free(copy);
	return fd;
}

int open_beneath(int root, const char *rel, int flags, mode_t mode, mode_t want, struct stat *st)
{
	static bool no_openat2;
	struct open_how how = {
	    /* openat2 takes no other flag with O_PATH (which opens nothing) */
	    .flags = (unsigned long long)(flags | O_NOFOLLOW | O_CLOEXEC |
					  (flags & O_PATH ? 0 : O_NONBLOCK | O_NOCTTY)),
	    .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
	    .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	int fd = -ENOSYS;

	if (!*rel)
		rel = ".";
	if (!no_openat2) {
		fd = (int)syscall(SYS_openat2, root, rel, &how, sizeof(how));
		fd = fd < 0 ? -errno : fd;
		no_openat2 = fd == -ENOSYS;
	}
	if (fd == -ENOSYS)
		fd = open_walk(root, rel, (int)how.flags, (mode_t)how.mode);
	if (fd < 0)
		return fd;
	if (fstat(fd, st) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	if (want && (st->st_mode & S_IFMT) != want) {
		close(fd);
		return -CTL_EBADTYPE;
	}
	if (S_ISREG(st->st_mode) && !(flags & O_PATH))
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return fd;
}

const char *open_error(int err, mode_t want)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case ELOOP:
		return "a symbolic link on the way, refused (binvfsctl follows none in a mount)";
	case EXDEV:
		return "leads out of the mount, refused";
	case ENXIO: /* O_WRONLY | O_NONBLOCK of a FIFO no one reads; a socket */
	case CTL_EBADTYPE:
		return want == S_IFDIR ? "not a directory, refused"
				       : "not a regular file (a FIFO, device, socket or "
					 "symbolic link), refused";
	default:
		return strerror(err);
	}
}
