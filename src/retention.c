/* retention.c - how many old versions a path keeps, and removing versions.
 *
 * After each new version of a path, its oldest versions beyond `keep` (-o keep=N) are removed
 * (retention_apply); `binvfsctl prune` asks for the same with its own number (store_prune). A
 * version that a process still uses is removed only when its last user is gone (the node
 * table defers it: node_defer_prune, then store_remove_version). Callers hold the store lock. */
#define _GNU_SOURCE
#include "history.h"
#include "links.h"
#include "log.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The sorted version numbers of name (a copy the caller frees), from the history index. */
int store_list_versions(int vdirfd, const char *name, uint32_t **ns, size_t *count)
{
	const uint32_t *h;
	size_t cnt;
	int err = history_get(vdirfd, name, &h, &cnt);

	if (err)
		return err;
	*ns = malloc((cnt ? cnt : 1) * sizeof(**ns));
	if (!*ns)
		return -ENOMEM;
	if (cnt)
		memcpy(*ns, h, cnt * sizeof(**ns));
	*count = cnt;
	return 0;
}

int store_unlink_version(int vdirfd, const char *vname, ino_t ino)
{
	links_begin();
	int r = unlinkat(vdirfd, vname, 0);
	links_end(ino, r == 0 ? -1 : 0);
	return r;
}

/* Retention: remove the oldest of the versions ns[0..cnt) of name (its stored name,
 * names_stored) in vdirfd (rel below .versions/) until `keep` are left; one in use (in_use)
 * is removed when its last user is gone. Returns how many were removed. */
int retention_apply(struct store *s, int vdirfd, const char *rel, const char *name, uint32_t *ns,
		    size_t cnt, unsigned keep)
{
	char vname[300], *vrel;
	int removed = 0;

	for (size_t i = 0; cnt > keep && i < cnt - keep; i++) {
		struct stat st;
		snprintf(vname, sizeof(vname), NAMES_VERSION_FMT, name, ns[i]);
		if (fstatat(vdirfd, vname, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				history_del(vdirfd, name, ns[i]); /* gone already */
			continue;
		}
		if (!(vrel = store_join(rel, vname)))
			break;
		if (s->in_use && s->in_use(&st, vrel, vdirfd, vname)) {
			log_info("keep %s/%s: in use, removed when its last user is gone",
				 STORE_DIR, vrel);
		} else if (store_unlink_version(vdirfd, vname, st.st_ino) == 0) {
			history_del(vdirfd, name, ns[i]);
			log_info("prune %s/%s", STORE_DIR, vrel);
			removed++;
		} else {
			log_warn("prune %s/%s", STORE_DIR, vrel);
		}
		free(vrel);
	}
	return removed;
}

/* Apply retention now: keep the newest `keep` versions of dirfd/name, or of every name with
 * versions in that directory when name is NULL. Returns the number removed or -errno. */
int store_prune(struct store *s, int dirfd, const char *name, unsigned keep)
{
	char *rel;
	int vdirfd, err, removed = 0;
	char **names = NULL;
	size_t nnames = 0;

	err = store_versions_dir(s, dirfd, false, &vdirfd, &rel);
	if (err)
		return err == -ENOENT ? 0 : err;
	if (name) {
		char stored[NAMES_STORED_MAX + 1];
		names_stored(name, stored);
		names = malloc(sizeof(*names));
		if (names && (names[0] = strdup(stored)))
			nnames = 1;
	} else {
		int fd = store_open_dir(vdirfd, ".", O_RDONLY);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		struct dirent *e;
		while (d && (e = readdir(d))) {
			size_t len;
			if (!names_version_parse(e->d_name, &len))
				continue;
			char **nn = realloc(names, (nnames + 1) * sizeof(*names));
			if (!nn)
				break;
			names = nn;
			names[nnames] = strndup(e->d_name, len);
			if (names[nnames])
				nnames++;
		}
		if (d)
			closedir(d);
		else if (fd >= 0)
			close(fd);
	}
	for (size_t i = 0; i < nnames; i++) {
		uint32_t *ns = NULL;
		size_t cnt = 0;
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = !strcmp(names[j], names[i]);
		if (!seen && store_list_versions(vdirfd, names[i], &ns, &cnt) == 0)
			removed += retention_apply(s, vdirfd, rel, names[i], ns, cnt, keep);
		free(ns);
	}
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	free(rel);
	close(vdirfd);
	return removed;
}

/* Remove a deferred version once unused, if it still is the same inode; never follows links. */
int store_remove_version(struct store *s, const char *vrel, dev_t dev, ino_t ino)
{
	char *path = strdup(vrel), *slash, *base;
	int dirfd;
	struct stat st;
	int err = 0;

	if (!path)
		return -ENOMEM;
	slash = strrchr(path, '/');
	dirfd = dup(s->vfd);
	if (dirfd < 0) {
		free(path);
		return -errno;
	}
	if (slash) {
		char *save = NULL;
		*slash = 0;
		for (char *c = strtok_r(path, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
			int next = store_open_dir(dirfd, c, O_PATH);
			err = next < 0 ? -errno : 0;
			close(dirfd);
			if (next < 0) {
				free(path);
				return err;
			}
			dirfd = next;
		}
		base = slash + 1;
	} else {
		base = path;
	}
	if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == dev &&
	    st.st_ino == ino) {
		size_t len;
		uint32_t n = names_version_parse(base, &len);
		if (store_unlink_version(dirfd, base, ino) < 0) {
			err = -errno;
		} else if (n) {
			base[len] = 0;
			history_del(dirfd, base, n);
			base[len] = '.';
		}
		if (!err)
			log_info("prune %s/%s (its last user is gone)", STORE_DIR, vrel);
	}
	close(dirfd);
	free(path);
	return err;
}
