/* cmd_release.c - binvfsctl release begin|commit|abort|status DIR [--name NAME]: a thin wrapper
 * of setxattr(DIR, "user.binvfs.release", "begin[:NAME]" | "commit" | "abort") on DIR, opened
 * once below the mount's root (src/release.c does the work; a deploy tool can set the xattr
 * itself). Who may do it: whoever may write DIR (the kernel's check of user.* xattrs). */
#define _GNU_SOURCE
#include "ctl.h"
#include "mounts.h"
#include "names.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char synopsis[] = "release begin|commit|abort|status DIR [--name NAME]";

/* --name NAME (or --name=NAME) out of argv */
static int take_name(int *argc, char **argv, const char **name)
{
	int n = 0;

	*name = NULL;
	for (int i = 0; i < *argc; i++) {
		if (!strcmp(argv[i], "--")) {
			while (i < *argc)
				argv[n++] = argv[i++];
			break;
		}
		if (!strcmp(argv[i], "--name")) {
			if (i + 1 >= *argc)
				return ctl_err("--name needs a NAME; usage: binvfsctl %s",
					       synopsis);
			*name = argv[++i];
		} else if (!strncmp(argv[i], "--name=", 7)) {
			*name = argv[i] + 7;
		} else {
			argv[n++] = argv[i];
		}
	}
	*argc = n;
	return 0;
}

static void print_state(int fd, const char *dir)
{
	char buf[512], *d = esc(dir);
	ssize_t n = fgetxattr(fd, RELEASE_XATTR, buf, sizeof(buf) - 1);

	if (n < 0 && errno == ENODATA) {
		printf("%s: no release open\n", d);
	} else if (n < 0) {
		ctl_err("%s: %s", dir, strerror(errno));
	} else {
		buf[n] = 0;
		char *e = esc(buf[n - 1] == '\n' ? (buf[n - 1] = 0, buf) : buf);
		printf("%s: %s\n", d, e);
		free(e);
	}
	free(d);
}

int cmd_release(int argc, char **argv)
{
	const char *name, *action;
	char *pos[2], *val = NULL;
	struct target t = {.root = -1};
	struct stat st;
	struct timespec t0, t1;
	int fd = -1, ret = 1;

	if (take_name(&argc, argv, &name) || cmd_args(argc, argv, 2, 2, synopsis, pos))
		return 1;
	action = pos[0];
	if (strcmp(action, "begin") && strcmp(action, "commit") && strcmp(action, "abort") &&
	    strcmp(action, "status"))
		return ctl_err("unknown action %s; usage: binvfsctl %s", action, synopsis);
	if (name && strcmp(action, "begin"))
		return ctl_err("--name goes with begin only");
	if (target_resolve(pos[1], &t))
		goto out;
	if (!strcmp(t.rel, STORE_DIR) || !strncmp(t.rel, STORE_DIR "/", sizeof(STORE_DIR))) {
		ctl_err("%s: inside .versions/ (read-only); give a directory of the tree", pos[1]);
		goto out;
	}
	fd = open_beneath(t.root, t.rel, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	if (fd < 0) {
		ctl_err("%s: %s", pos[1], open_error(fd, S_IFDIR));
		fd = -1;
		goto out;
	}
	if (!strcmp(action, "status")) {
		print_state(fd, t.abs);
		ret = 0;
		goto out;
	}
	val = !strcmp(action, "begin") && name ? xasprintf("begin:%s", name) : xstrdup(action);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (fsetxattr(fd, RELEASE_XATTR, val, strlen(val), 0) < 0) {
		int err = errno;
		ctl_err("%s: release %s: %s", pos[1], action,
			err == EBUSY	? "a release is open already, on it, above or below it, or "
					  "with that name (commit or abort it first)"
			: err == ENOENT ? "no release is open on this directory"
			: err == EINVAL && !strcmp(action, "begin")
			    ? "invalid name (letters, digits, . _ -; at most 64)"
			: err == EINVAL ? "the open release is on another directory"
					: strerror(err));
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (!strcmp(action, "begin")) {
		print_state(fd, t.abs);
	} else {
		char *d = esc(t.abs);
		printf("%s: release %s (%.1f ms)\n", d,
		       !strcmp(action, "commit") ? "committed" : "aborted",
		       (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
			   (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
		free(d);
	}
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	free(val);
	target_free(&t);
	return ret;
}
