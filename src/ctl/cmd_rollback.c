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

static bool same_content(int a, int b)
{
	struct vinfo ia, ib;

	if (vinfo_fd(a, &ia) || vinfo_fd(b, &ib))
		return false;
	return !strcmp(ia.sha256, ib.sha256);
}

int ctl_copy_fd(int in, int out)
{
	char buf[1 << 16];
	off_t off = 0;
	ssize_t n;
	int err = 0;

	while (!err && (n = pread(in, buf, sizeof(buf), off)) != 0) {
		if (n < 0) {
			if (errno != EINTR)
				err = -errno;
			continue;
		}
		off += n;
		for (ssize_t done = 0; !err && done < n;) {
			ssize_t w = write(out, buf + done, (size_t)(n - done));
			if (w < 0 && errno != EINTR)
				err = -errno;
			else if (w > 0)
				done += w;
		}
	}
	return err;
}

/* The content of the version (fd in) as the file l->file_rel, in one publish: open the
 * target once below the mount's root (no symlink on the way or at the end, never blocking on
 * a FIFO; O_WRONLY without O_TRUNC: nothing is cut before the check), check through that fd
 * that it is a regular file, and the file checked before (cur; NULL: a removed file, created
 * here with O_EXCL), then ftruncate, write and close that fd. binvfs gives the write open a
 * private copy (an executed file too: the daemon reads openat2's flags) and publishes it at
 * close. 0, or 1 after printing why not. */
static int copy_over(const struct vlist *l, int in, const struct stat *cur, mode_t mode,
		     const char *arg, unsigned n)
{
	struct stat st;
	int out, err;

	if (cur)
		out = open_beneath(l->root, l->file_rel, O_WRONLY, 0, S_IFREG, &st);
	else
		out = open_beneath(l->root, l->file_rel, O_WRONLY | O_CREAT | O_EXCL, mode, S_IFREG,
				   &st);
	if (out < 0)
		return ctl_err("%s: rollback to version %u refused: %s", arg, n,
			       open_error(out, S_IFREG));
	if (cur && (st.st_dev != cur->st_dev || st.st_ino != cur->st_ino)) {
		close(out); /* nothing written: binvfs publishes nothing for it */
		return ctl_err("%s: rollback to version %u refused: the file was replaced while "
			       "binvfsctl checked it; try again",
			       arg, n);
	}
	if (!cur)
		fchmod(out, mode); /* not the umask's */
	err = cur && ftruncate(out, 0) < 0 ? -errno : 0;
	if (!err)
		err = ctl_copy_fd(in, out);
	if (close(out) < 0 && !err)
		err = -errno; /* binvfs reports a failed publish here */
	if (err)
		return ctl_err("%s: rollback to version %u failed: %s", arg, n, strerror(-err));
	return 0;
}

int cmd_rollback(int argc, char **argv)
{
	char *pos[2];
	struct target t;
	struct vlist l = {0}, after = {0};
	struct version *v, *cur = NULL;
	unsigned n, was;
	int ret = 1, vfd = -1, cfd = -1;

	int rel = take_release(&argc, argv, &n);
	if (rel)
		return rel < 0 ? 1 : release_rollback(argc, argv, n);
	if (cmd_args(argc, argv, 1, 2, "rollback PATH [N] | rollback --release ID DIR", pos))
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
	/* each opened once, below the mount's root; all later work goes through these fds */
	if ((vfd = version_open(&l, v, pos[0])) < 0)
		goto out;
	if (was && (cfd = version_open(&l, cur = vlist_get(&l, was), pos[0])) < 0)
		goto out;
	if (was && same_content(vfd, cfd)) {
		if (ctl_json) {
			json_obj();
			json_kstr("path", l.file);
			json_kint("from", n);
			json_kint("version", was);
			json_kbool("changed", false);
			json_obj_end();
		} else {
			char *file = esc(l.file);
			printf("%s: version %u has the content of the current version %u; nothing "
			       "to do\n",
			       file, n, was);
			free(file);
		}
		ret = 0;
		goto out;
	}
	if (copy_over(&l, vfd, cur ? &cur->st : NULL, v->st.st_mode & 07777, pos[0], n))
		goto out;
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
		/* the undo hint is a command: its PATH one shell word, then escaped as a name */
		char *file = esc(l.file), *word = shell_word(pos[0]), *arg = esc(word);
		printf("%s: rolled back to version %u, now current as version %u (version %u kept; "
		       "binvfsctl rollback %s %u undoes this)\n",
		       file, n, after.current, was, arg, was);
		free(file);
		free(word);
		free(arg);
	} else {
		char *file = esc(l.file);
		printf("%s: restored version %u, now current as version %u\n", file, n,
		       after.current);
		free(file);
	}
	ret = 0;
out:
	if (vfd >= 0)
		close(vfd);
	if (cfd >= 0)
		close(cfd);
	vlist_free(&after);
	vlist_free(&l);
	target_free(&t);
	return ret;
}
