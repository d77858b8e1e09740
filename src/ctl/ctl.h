/* ctl.h - binvfsctl: the commands, and the helpers every command uses. */
#ifndef BINVFSCTL_CTL_H
#define BINVFSCTL_CTL_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <time.h>

#define CTL_PRINTF(a, b) __attribute__((format(printf, a, b)))

extern bool ctl_json; /* --json: machine-readable output */

/* Print "binvfsctl: <message>" on stderr, escaped as esc() does (a name in it cannot end the
 * line or reach the terminal raw); returns 1, the exit status of bad input. */
int ctl_err(const char *fmt, ...) CTL_PRINTF(1, 2);

/* Names are data: s as human output shows it, one line with no control character, like
 * `ls -b`: a backslash as \\, \a \b \t \n \v \f \r, every other byte below 0x20, DEL, a
 * C1 control (U+0080-U+009F) and every byte that is not well-formed UTF-8 as \xNN (each
 * byte); printable UTF-8 as is. binvfsctl(8), NAMES IN OUTPUT. malloc'd. */
char *esc(const char *s);
/* s as one word that sh reads back as s: as is if it has only [A-Za-z0-9@%+=:,./_-], else in
 * single quotes (a ' as '\''). malloc'd. */
char *shell_word(const char *s);

/* Root on a tree that others write (binvfsctl(8), HOSTILE TREES): every file or directory in
 * a mount is opened once, below an fd of the mount's root, and all later work goes through
 * that fd. rel: a path below root with no "." or ".." component ("" or "." for root itself).
 * openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (on kernels without it, a walk of
 * O_NOFOLLOW opens): no symlink is followed, not even as a directory on the way; flags gets
 * O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY (a FIFO never blocks the open; O_NONBLOCK is
 * cleared again on a regular file). Then fstat: want S_IFREG or S_IFDIR refuses any other
 * type (-CTL_EBADTYPE), 0 takes any (with O_PATH, a symlink itself). The fd, *st filled; or
 * -errno. */
#define CTL_EBADTYPE 4096
int open_beneath(int root, const char *rel, int flags, mode_t mode, mode_t want, struct stat *st);
/* Why open_beneath failed, for "PATH: <why>". */
const char *open_error(int err, mode_t want);

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
int cmd_release(int argc, char **argv);
int cmd_releases(int argc, char **argv);
/* cmd_releases.c: "--release ID" out of argv (1 with *id, 0 if absent, -1 after an error);
 * diff --release ID [PATH] and rollback --release ID DIR. */
int take_release(int *argc, char **argv, unsigned *id);
int release_diff(int argc, char **argv, unsigned id);
int release_rollback(int argc, char **argv, unsigned id);
/* Write everything of in (from offset 0) to out; 0 or -errno. */
int ctl_copy_fd(int in, int out);

#endif
