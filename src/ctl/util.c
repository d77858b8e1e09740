/* util.c - errors, allocation, number and time formatting, text tables. */
#define _GNU_SOURCE
#include "ctl.h"

#include <sys/stat.h>

#include <fcntl.h>

#include <dirent.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ctl_json;

int ctl_err(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("binvfsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
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
		t->cells[t->rows * t->cols + c] = xstrdup(s ? s : "-");
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
