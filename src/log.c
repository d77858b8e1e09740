/* log.c - one line per event, to stderr in the foreground, to syslog when daemonised. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

static bool use_syslog;
bool log_debug_enabled;

void log_init(bool to_syslog, bool debug)
{
	use_syslog = to_syslog;
	log_debug_enabled = debug;
	if (to_syslog)
		openlog("binvfs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

static void vlog(int pri, const char *fmt, va_list ap, const char *err)
{
	char buf[1024];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (use_syslog) {
		if (err)
			syslog(pri, "%s: %s", buf, err);
		else
			syslog(pri, "%s", buf);
		return;
	}
	if (err)
		fprintf(stderr, "binvfs: %s: %s\n", buf, err);
	else
		fprintf(stderr, "binvfs: %s\n", buf);
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
