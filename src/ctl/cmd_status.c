/* cmd_status.c - binvfsctl status [DIR]: every binvfs mount (or DIR's), its source, options,
 * daemon, files, versions, bytes kept in .versions/ and staging copies in progress. */
#define _GNU_SOURCE
#include "ctl.h"
#include "json.h"
#include "mounts.h"
#include "names.h"
#include "vlist.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct stats {
	unsigned long long files, versions, bytes;
};

/* Regular files in the tree below the directory d (closed here; readdir only, each
 * subdirectory opened through d, never through a symlink; the root's .versions/ is not
 * listed). */
static void count_files(DIR *d, unsigned long long *files)
{
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		unsigned char type = entry_type(d, e);
		if (type == DT_REG) {
			(*files)++;
		} else if (type == DT_DIR) {
			int fd =
			    openat(dirfd(d), e->d_name,
				   O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
			DIR *sub = fd >= 0 ? fdopendir(fd) : NULL;
			if (!sub && fd >= 0)
				close(fd);
			count_files(sub, files);
		}
	}
	closedir(d);
}

static void gather(const struct bmount *m, struct stats *s)
{
	struct vindex ix;
	struct stat st;
	int root = mount_root(m), fd;

	memset(s, 0, sizeof(*s));
	if (root < 0)
		return;
	fd = open_beneath(root, "", O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &st);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d && fd >= 0)
		close(fd);
	count_files(d, &s->files);
	vindex_build(root, NULL, true, &ix);
	s->versions = ix.n;
	for (size_t i = 0; i < ix.n; i++) {
		/* sorted by inode: a hard-linked inode counts once */
		if ((i == 0 || ix.e[i].ino != ix.e[i - 1].ino) && ix.e[i].size > 0)
			s->bytes += (unsigned long long)ix.e[i].size;
	}
	vindex_free(&ix);
	close(root);
}

static void show(const struct bmount *m)
{
	struct daemon d;
	struct stats s;

	daemon_find(m, &d);
	gather(m, &s);
	if (ctl_json) {
		json_obj();
		json_kstr("mountpoint", m->point);
		json_kstr("source", m->source);
		json_key("daemon_pid");
		d.pid ? json_int(d.pid) : json_null();
		json_key("keep");
		d.pid &&d.keep_known ? json_int(d.keep) : json_null();
		json_kstr("options", d.opts);
		json_kstr("passthrough", d.passthrough);
		json_kstr("mount_options", m->mntopts);
		json_kstr("fuse_options", m->superopts);
		json_kint("files", (long long)s.files);
		json_kint("versions", (long long)s.versions);
		json_kint("version_bytes", (long long)s.bytes);
		json_key("staging");
		d.pid ? json_int(d.staging) : json_null();
		json_obj_end();
	} else {
		char *point = esc(m->point), *source = esc(m->source),
		     *opts = esc(d.opts ? d.opts : "-");
		char *mntopts = esc(m->mntopts), *superopts = esc(m->superopts);
		printf("mount     %s\n", point);
		printf("source    %s\n", source);
		if (d.pid && d.keep_known)
			printf("daemon    pid %d, keep=%u%s%s\n", (int)d.pid, d.keep,
			       d.nosync ? ", nosync" : "", d.debug ? ", debug" : "");
		else if (d.pid) /* it did not answer STATUS_XATTR */
			printf("daemon    pid %d, keep=?%s\n", (int)d.pid,
			       d.debug ? ", debug" : "");
		else
			printf("daemon    not found in /proc (another pid namespace?)\n");
		printf("options   %s (mount: %s; fuse: %s)\n", opts, mntopts, superopts);
		if (d.passthrough) {
			char *pt = esc(d.passthrough);
			printf("passthrough %s\n", pt);
			free(pt);
		}
		free(point);
		free(source);
		free(opts);
		free(mntopts);
		free(superopts);
		printf("files     %llu\n", s.files);
		printf("versions  %llu, %llu bytes in .versions/\n", s.versions, s.bytes);
		if (d.pid)
			printf("staging   %d in progress\n", d.staging);
		else
			printf("staging   unknown\n");
	}
	daemon_free(&d);
}

int cmd_status(int argc, char **argv)
{
	char *pos[1];
	struct mtab t = {0};

	if (cmd_args(argc, argv, 0, 1, "status [DIR]", pos))
		return 1;
	if (pos[0]) {
		struct target tg;
		if (target_resolve(pos[0], &tg)) {
			target_free(&tg);
			return 1;
		}
		if (!tg.exists) {
			target_free(&tg);
			return ctl_err("%s: no such file or directory", pos[0]);
		}
		t.m = xmalloc(sizeof(*t.m));
		bmount_copy(&t.m[0], &tg.mnt);
		t.n = 1;
		target_free(&tg);
	} else if (mtab_read(&t)) {
		return 1;
	}
	if (ctl_json)
		json_arr();
	else if (!t.n)
		printf("no binvfs mounts\n");
	for (size_t i = 0; i < t.n; i++) {
		if (i && !ctl_json)
			putchar('\n');
		show(&t.m[i]);
	}
	if (ctl_json)
		json_arr_end();
	mtab_free(&t);
	return 0;
}
