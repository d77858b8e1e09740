/* closer.c - who is closing a writer's file, at FLUSH (kernel-notes §8, §8b): the process that
 * opened it (publish), a child that inherited the fd (not yet), or the opener dying of a
 * signal (a killed writer publishes nothing). Reads /proc of the closing task, each read
 * bounded where it can block. */
#define _GNU_SOURCE
#include "closer.h"
#include "log.h"
#include "names.h"
#include "procfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STAT_WAIT_NS 100000000l /* bound on reading /proc/<pid>/stat at FLUSH */

pid_t closer_tgid(pid_t tid)
{
	char buf[512];
	const char *p;

	if (procfs_read(tid, "status", buf, sizeof(buf)) <= 0)
		return 0;
	p = procfs_field(buf, "\nTgid:");
	return p ? (pid_t)atoi(p) : 0;
}

unsigned closer_write_fds(pid_t tid, int mnt_id, ino_t a, ino_t b)
{
	char path[64], buf[256];
	struct dirent *e;
	unsigned found = 0;
	int n = 0;
	DIR *d;

	if (tid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/fdinfo", tid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((e = readdir(d)) && n++ < 4096) {
		unsigned long flags = 0;
		unsigned long long ino = 0;
		int mnt = -1;
		char *p;
		ssize_t len;
		int fd;

		if (e->d_name[0] == '.')
			continue;
		fd = openat(dirfd(d), e->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		len = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (len <= 0)
			continue;
		buf[len] = 0;
		if ((p = strstr(buf, "flags:")))
			flags = strtoul(p + 6, NULL, 8);
		if ((p = strstr(buf, "\nino:")))
			ino = strtoull(p + 5, NULL, 10);
		if ((p = strstr(buf, "\nmnt_id:")))
			mnt = atoi(p + 8);
		/* an inode number means something only on our mount */
		found += names_write_flags(flags) && ino && (ino == a || ino == b) &&
			 (mnt_id < 0 || mnt == mnt_id);
	}
	closedir(d);
	return found;
}

/* Reading /proc/<pid>/stat of a task inside execve blocks until we answer its FLUSH
 * (kernel-notes §8b), so the read runs on its own thread and we wait a bounded time. */
struct statread {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int refs; /* 2 while both sides hold it; protected by lock */
	bool done;
	pid_t tid;
	ssize_t len;
	char buf[1024];
};

static void statread_put(struct statread *s)
{
	pthread_mutex_lock(&s->lock);
	int left = --s->refs;
	pthread_mutex_unlock(&s->lock);
	if (!left) {
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->lock);
		free(s);
	}
}

static void *statread_main(void *arg)
{
	struct statread *s = arg;
	ssize_t n = procfs_read(s->tid, "stat", s->buf, sizeof(s->buf));

	pthread_mutex_lock(&s->lock);
	s->len = n;
	s->done = true;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	statread_put(s);
	return NULL;
}

/* Returns the stat line of tid, or false if it could not be read in time. */
static bool read_stat_bounded(pid_t tid, char *out, size_t len)
{
	struct statread *s = calloc(1, sizeof(*s));
	pthread_condattr_t ca;
	pthread_attr_t ta;
	pthread_t th;
	struct timespec dl;
	bool ok = false;

	if (!s)
		return false;
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);
	s->refs = 2;
	s->tid = tid;
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&ta, 64 * 1024);
	if (pthread_create(&th, &ta, statread_main, s) != 0) {
		pthread_attr_destroy(&ta);
		s->refs = 1;
		statread_put(s);
		return false;
	}
	pthread_attr_destroy(&ta);
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_nsec += STAT_WAIT_NS;
	if (dl.tv_nsec >= 1000000000l) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000l;
	}
	pthread_mutex_lock(&s->lock);
	while (!s->done)
		if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) != 0)
			break;
	if (s->done && s->len > 0) {
		size_t n = (size_t)s->len < len - 1 ? (size_t)s->len : len - 1;
		memcpy(out, s->buf, n);
		out[n] = 0;
		ok = true;
	}
	pthread_mutex_unlock(&s->lock);
	statread_put(s);
	if (!ok)
		log_debug("stat of %d not readable in time: taken as a normal close", tid);
	return ok;
}

enum closer closer_of(pid_t tid, pid_t opener_tgid)
{
	char buf[1024], *p, *save = NULL;
	unsigned long flags = 0, exit_code = 0;
	int field = 3;

	if (tid <= 0)
		return CLOSER_OPENER; /* in a pid namespace we cannot see: trust the close */
	if (opener_tgid && closer_tgid(tid) != opener_tgid)
		return CLOSER_OTHER;
	if (!read_stat_bounded(tid, buf, sizeof(buf)))
		return CLOSER_OPENER;
	p = strrchr(buf, ')');
	if (!p)
		return CLOSER_OPENER;
	for (char *t = strtok_r(p + 1, " ", &save); t; t = strtok_r(NULL, " ", &save), field++) {
		if (field == 9)
			flags = strtoul(t, NULL, 10);
		else if (field == 52)
			exit_code = strtoul(t, NULL, 10);
	}
	if ((flags & 0x4) && (exit_code & 0x7f))
		return CLOSER_KILLED; /* PF_EXITING, dying of a signal */
	return CLOSER_OPENER;
}
