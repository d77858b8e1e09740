/* cmd_rollback.c - binvfsctl rollback PATH [N]: copy version N over PATH through the mount.
 * binvfs publishes the write atomically at close, as a new version, so a rollback can itself
 * be rolled back; nothing is changed behind the daemon's back. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "vlist.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int same_content(const char *a, const char *b)
{
	struct vinfo ia, ib;

	if (vinfo_get(a, &ia) || vinfo_get(b, &ib))
		return 0;
	return !strcmp(ia.sha256, ib.sha256);
}

/* open(O_WRONLY|O_TRUNC) + write + close: one publish */
static int copy_over(const struct version *v, const char *file, bool exists)
{
	int in = open(v->path, O_RDONLY | O_CLOEXEC), out, err = 0;
	char buf[1 << 16];
	ssize_t n;

	if (in < 0)
		return -errno;
	if (exists)
		out = open(file, O_WRONLY | O_TRUNC | O_CLOEXEC);
	else
		out = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, v->st.st_mode & 07777);
	if (out < 0) {
		err = -errno;
		close(in);
		return err;
	}
	if (!exists)
		fchmod(out, v->st.st_mode & 07777); /* not the umask's */
	while (!err && (n = read(in, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno != EINTR)
				err = -errno;
			continue;
		}
		for (ssize_t done = 0; !err && done < n;) {
			ssize_t w = write(out, buf + done, (size_t)(n - done));
			if (w < 0 && errno != EINTR)
				err = -errno;
			else if (w > 0)
				done += w;
		}
	}
	close(in);
	if (close(out) < 0 && !err)
		err = -errno; /* binvfs reports a failed publish here */
	return err;
}

int cmd_rollback(int argc, char **argv)
{
	char *pos[2];
	struct target t;
	struct vlist l = {0}, after = {0};
	struct version *v;
	unsigned n, was;
	int ret = 1, err;

	if (cmd_args(argc, argv, 1, 2, "rollback PATH [N]", pos))
		return 1;
	if (pos[1] && !parse_version(pos[1], &n))
		return ctl_err("%s: not a version number (1, 2, ...)", pos[1]);
	if (target_resolve(pos[0], &t) || vlist_load(&t, &l))
		goto out;
	if (!pos[1] && !l.newest_old) {
		ctl_err("%s: has no old version to roll back to", pos[0]);
		goto out;
	}
	n = pos[1] ? n : l.newest_old;
	if (!(v = vlist_need(&l, n, pos[0])))
		goto out;
	if (v->current) {
		ctl_err("%s: version %u is the current one", pos[0], n);
		goto out;
	}
	was = l.current;
	if (was && same_content(v->path, l.file)) {
		if (ctl_json) {
			json_obj();
			json_kstr("path", l.file);
			json_kint("from", n);
			json_kint("version", was);
			json_kbool("changed", false);
			json_obj_end();
		} else {
			printf("%s: version %u has the content of the current version %u; nothing "
			       "to do\n",
			       l.file, n, was);
		}
		ret = 0;
		goto out;
	}
	if ((err = copy_over(v, l.file, was != 0))) {
		ctl_err("%s: rollback to version %u failed: %s", pos[0], n, strerror(-err));
		goto out;
	}
	if (vlist_load(&t, &after))
		goto out;
	if (ctl_json) {
		json_obj();
		json_kstr("path", l.file);
		json_kint("from", n);
		json_kint("version", after.current);
		json_key("previous");
		was ? json_int(was) : json_null();
		json_kbool("changed", true);
		json_obj_end();
	} else if (was) {
		printf("%s: rolled back to version %u, now current as version %u (version %u kept; "
		       "binvfsctl rollback %s %u undoes this)\n",
		       l.file, n, after.current, was, pos[0], was);
	} else {
		printf("%s: restored version %u, now current as version %u\n", l.file, n,
		       after.current);
	}
	ret = 0;
out:
	vlist_free(&after);
	vlist_free(&l);
	target_free(&t);
	return ret;
}
