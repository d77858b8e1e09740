/* watchdog.c - the last line of defence against a wedged mount (kernel-notes §12).
 *
 * The kernel waits uninterruptibly for a directory's inode lock in an entry invalidation, and
 * a path walk holds that lock while it waits for its LOOKUP reply. A daemon killed (SIGKILL,
 * the OOM killer) while one of its threads waits there can never finish exiting: that thread
 * never wakes, /dev/fuse is never closed, the connection is never aborted, and everything that
 * touches the mount hangs. No code in the daemon can run after SIGKILL, so a small process of
 * its own, forked at startup, watches it: when the daemon is dying (SIGKILL pending, or its
 * main thread a zombie) and still holds its end of a pipe 0.3 s later, or it said it stops and
 * still holds it 1.5 s later, the watchdog aborts exactly its connection through fusectl
 * (mounting fusectl if needed): every waiter gets ENOTCONN at once, the stuck thread returns,
 * the daemon exits. The pipe's end closes when the daemon's last thread is gone: then the
 * kernel has ended the connection itself, and the watchdog exits. The connection cannot have
 * been reused while the daemon holds the pipe: it closes the pipe only after its last use of
 * /dev/fuse (watchdog_done), and until then its /dev/fuse fd keeps the connection alive. */
#define _GNU_SOURCE
#include "watchdog.h"
#include "log.h"
#include "procfs.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define STOP_GRACE_MS  1500 /* a stopping daemon's own end (inval_quiesce, teardown) first */
#define DEATH_GRACE_MS 300  /* a dying one that still holds its pipe: stuck in the kernel */
#define TICK_MS	       100
#define FUSECTL	       "/sys/fs/fuse/connections"

static int wfd = -1; /* the daemon's end of the pipe */

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Is the daemon dying: its main thread a zombie (other threads left), or SIGKILL pending? */
static bool dying(pid_t pid)
{
	char buf[4096];
	const char *p;
	unsigned long long mask;
	ssize_t n = procfs_read(pid, "status", buf, sizeof(buf));

	if (n < 0)
		return errno == ENOENT; /* reaped meanwhile: the pipe will say so */
	if (n == 0)
		return false;
	if ((p = procfs_field(buf, "\nState:\t")) && (*p == 'Z' || *p == 'X'))
		return true;
	static const char *const pending[] = {"\nSigPnd:\t", "\nShdPnd:\t"};
	for (size_t i = 0; i < 2; i++) {
		if ((p = procfs_field(buf, pending[i])) && sscanf(p, "%llx", &mask) == 1 &&
		    (mask & (1ULL << (SIGKILL - 1))))
			return true;
	}
	return false;
}

/* Abort connection conn (its fusectl directory's name). */
static void abort_connection(unsigned conn)
{
	char path[96];
	int fd;

	snprintf(path, sizeof(path), FUSECTL "/%u/abort", conn);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && mount("fusectl", FUSECTL, "fusectl", 0, NULL) == 0)
		fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1", 1) != 1) {
		log_warn("watchdog: cannot abort FUSE connection %u (%s)", conn, path);
	} else {
		log_warnx("watchdog: the daemon could not exit; aborted its FUSE connection %u, "
			  "every waiter gets ENOTCONN",
			  conn);
	}
	if (fd >= 0)
		close(fd);
}

static void watch(int rfd, pid_t daemon, unsigned conn)
{
	struct pollfd p = {.fd = rfd, .events = POLLIN};
	long long deadline = 0;
	bool aborted = false;

	for (;;) {
		int r = poll(&p, 1, TICK_MS);
		long long now = now_ms();
		if (r > 0) {
			char c;
			ssize_t n = read(rfd, &c, 1);
			if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
				_exit(0); /* the daemon is gone, and with it the connection */
			if (n == 1 && !deadline)
				deadline = now + STOP_GRACE_MS;
		}
		if (!aborted && dying(daemon) && (!deadline || deadline > now + DEATH_GRACE_MS))
			deadline = now + DEATH_GRACE_MS;
		if (!aborted && deadline && now >= deadline) {
			abort_connection(conn);
			aborted = true;
		}
	}
}

int watchdog_start(unsigned conn)
{
	pid_t daemon = getpid(), pid;
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int err = -errno;
		close(p[0]);
		close(p[1]);
		return err;
	}
	if (pid == 0) {
		/* nothing of the daemon's: no /dev/fuse (it would keep the connection alive), no
		 * store flock, no fd in the mount; stderr stays for the log */
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
		}
		if (dup2(p[0], 3) < 0)
			_exit(1);
		close_range(4, ~0U, 0);
		if (chdir("/") < 0)
			_exit(1);
		prctl(PR_SET_NAME, "binvfs-watchdog");
		signal(SIGTERM, SIG_IGN); /* the daemon's stop, not ours: we follow it */
		signal(SIGINT, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		signal(SIGPIPE, SIG_IGN);
		watch(3, daemon, conn);
	}
	close(p[0]);
	wfd = p[1];
	return 0;
}

void watchdog_stopping(void)
{
	if (wfd >= 0 && write(wfd, "S", 1) < 0)
		log_warn("watchdog");
}

void watchdog_done(void)
{
	if (wfd >= 0)
		close(wfd);
	wfd = -1;
}
