/* log.h - OpenBSD-style logging: *_warn appends strerror(errno), *_warnx does not. */
#ifndef BINVFS_LOG_H
#define BINVFS_LOG_H

#include <stdbool.h>

#define PRINTF_LIKE(a, b) __attribute__((format(printf, a, b)))

void log_init(bool to_syslog, bool debug);
void log_info(const char *fmt, ...) PRINTF_LIKE(1, 2);
void log_debug(const char *fmt, ...) PRINTF_LIKE(1, 2);
void log_warn(const char *fmt, ...) PRINTF_LIKE(1, 2);
void log_warnx(const char *fmt, ...) PRINTF_LIKE(1, 2);
void fatal(const char *fmt, ...) PRINTF_LIKE(1, 2) __attribute__((noreturn));
void fatalx(const char *fmt, ...) PRINTF_LIKE(1, 2) __attribute__((noreturn));
extern bool log_debug_enabled;

#endif
