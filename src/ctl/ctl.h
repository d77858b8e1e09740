/* ctl.h - binvfsctl: the commands, and the helpers every command uses. */
#ifndef BINVFSCTL_CTL_H
#define BINVFSCTL_CTL_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define CTL_PRINTF(a, b) __attribute__((format(printf, a, b)))

extern bool ctl_json; /* --json: machine-readable output */

/* Print "binvfsctl: <message>" on stderr; returns 1, the exit status of bad input. */
int ctl_err(const char *fmt, ...) CTL_PRINTF(1, 2);

void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) CTL_PRINTF(1, 2);

/* A command's positional arguments (options end at "--"): min..max of them into pos[];
 * otherwise prints "binvfsctl: usage: binvfsctl <synopsis>" and returns 1. */
int cmd_args(int argc, char **argv, int min, int max, const char *synopsis, char **pos);

/* Remove every flag (e.g. "--dry-run") before a "--" from argv; true if there was one. */
bool cmd_flag(int *argc, char **argv, const char *flag);

/* "N" -> N >= 1 (a version number); false if not a number */
bool parse_version(const char *s, unsigned *out);
/* "YYYY-MM-DD HH:MM:SS" in local time, and ISO 8601 with the UTC offset */
void fmt_time(time_t t, char *buf, size_t len);
/* DT_REG, DT_DIR or 0 (anything else, "." and ".."), asking lstat when readdir did not say. */
unsigned char entry_type(DIR *d, const struct dirent *e);
void fmt_iso(time_t t, char *buf, size_t len);

/* A text table: rows of cells, printed with aligned columns. */
struct table {
	size_t cols, rows;
	char **cells; /* rows * cols, owned */
};
void table_init(struct table *t, size_t cols);
void table_add(struct table *t, ...); /* cols strings, copied */
void table_print(const struct table *t);
void table_free(struct table *t);

int cmd_status(int argc, char **argv);
int cmd_log(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_outdated(int argc, char **argv);
int cmd_restart(int argc, char **argv);

#endif
