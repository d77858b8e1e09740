/* log.c - one line per event, to stderr in the foreground, to syslog when daemonised;
 * libfuse's own messages go the same way. */
#define _GNU_SOURCE /* vasprintf */
#include "log.h"
#include "names.h"

#include <errno.h>
#include <fuse_log.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

static bool use_syslog;
bool log_debug_enabled;

/* The message as one line of data: file names in it are anybody's, and a newline, CR or ESC
 * in one must neither forge a line of its own nor reach a terminal raw. A backslash becomes
 * \\, \t \n \r as such, every other control byte (C0, DEL, each byte of a C1 control) and
 * every byte of no UTF-8 character \xNN; as binvfsctl(8) escapes names. NULL: out of memory. */
static char *escape_line(const char *s)
{
	return names_escape(s, "\\\t\n\r", "\\tnr");
}

static void vlog(int pri, const char *fmt, va_list ap, const char *err)
{
	char small[1024], *buf = small, *line;
	va_list again;
	int n;

	va_copy(again, ap);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	/* a message can name two paths of up to 4095 bytes each: never cut one (out of
	 * memory, the cut line is still better than none) */
	if (n >= (int)sizeof(small) && (buf = malloc((size_t)n + 1)))
		vsnprintf(buf, (size_t)n + 1, fmt, again);
	else
		buf = small;
	va_end(again);
	line = escape_line(buf);
	if (!line) /* out of memory: plain text only, every other byte as '?' */
		for (char *c = buf; *c; c++)
			if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
				*c = '?';
	const char *text = line ? line : buf;
	if (use_syslog && err)
		syslog(pri, "%s: %s", text, err);
	else if (use_syslog)
		syslog(pri, "%s", text);
	else if (err)
		fprintf(stderr, "binvfs: %s: %s\n", text, err);
	else
		fprintf(stderr, "binvfs: %s\n", text);
	free(line);
	if (buf != small)
		free(buf);
}

static void log_line(int pri, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void log_line(int pri, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(pri, fmt, ap, NULL);
	va_end(ap);
}

/* libfuse's messages (a bad option, a failed mount, -d's request trace), whose levels are
 * syslog's priorities: without this they would go to stderr, which is /dev/null once
 * fuse_daemonize() has run. libfuse ends a line with a newline, and writes some in pieces
 * (fuse_opt's "unknown option(s)" in three): a piece waits in its thread's buffer until its
 * line is complete. */
static __thread char *fuse_pending;

static void fuse_log_to_ours(enum fuse_log_level level, const char *fmt, va_list ap)
{
	char *piece, *line;
	size_t len;

	if (vasprintf(&piece, fmt, ap) < 0)
		return;
	line = piece;
	if (fuse_pending) {
		if (asprintf(&line, "%s%s", fuse_pending, piece) < 0)
			line = NULL;
		free(fuse_pending);
		free(piece);
		fuse_pending = NULL;
		if (!line)
			return;
	}
	len = strlen(line);
	if (!len || line[len - 1] != '\n') {
		fuse_pending = line;
		return;
	}
	line[len - 1] = 0;
	log_line((int)level, "%s", line);
	free(line);
}

void log_init(bool to_syslog, bool debug)
{
	use_syslog = to_syslog;
	log_debug_enabled = debug;
	if (to_syslog)
		openlog("binvfs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	fuse_set_log_func(fuse_log_to_ours);
}

#define LOG_BODY(pri, err)                                                                         \
	do {                                                                                       \
		va_list ap;                                                                        \
		va_start(ap, fmt);                                                                 \
		vlog(pri, fmt, ap, err);                                                           \
		va_end(ap);                                                                        \
	} while (0)

void log_info(const char *fmt, ...)
{
	LOG_BODY(LOG_INFO, NULL);
}

void log_debug(const char *fmt, ...)
{
	if (log_debug_enabled)
		LOG_BODY(LOG_DEBUG, NULL);
}

void log_warn(const char *fmt, ...)
{
	const char *e = strerror(errno);
	LOG_BODY(LOG_WARNING, e);
}

void log_warnx(const char *fmt, ...)
{
	LOG_BODY(LOG_WARNING, NULL);
}

void fatal(const char *fmt, ...)
{
	const char *e = strerror(errno);
	LOG_BODY(LOG_ERR, e);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	LOG_BODY(LOG_ERR, NULL);
	exit(1);
}
