/* store.c - the version store on disk.
 *
 * SOURCE/<path>                    the current version of every file, a plain file
 * SOURCE/.versions/<dir>/<name>.~N~ old versions: hard links to the replaced inodes
 * SOURCE/.versions/.binvfs-format   the format marker
 * SOURCE/.versions/.binvfs-staging/<instance>/ each daemon's publish links in flight
 *
 * Every access is relative to a directory fd and never follows a symlink. */
#define _GNU_SOURCE
#include "store.h"
#include "history.h"
#include "links.h"
#include "log.h"
#include "space.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/xattr.h>
#include <unistd.h>

static int open_dir_nofollow(int dirfd, const char *name, int flags)
{
	return openat(dirfd, name, flags | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Remove every entry of a directory (staging leftovers); not recursive. */
static void empty_dir(int dirfd)
{
	int fd = open_dir_nofollow(dirfd, ".", O_RDONLY);
	DIR *d;
	struct dirent *e;

	if (fd < 0)
		return;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (unlinkat(dirfd, e->d_name, 0) == 0)
			log_info("removed staging leftover %s", e->d_name);
		else
			log_warn("cannot remove staging leftover %s", e->d_name);
	}
	closedir(d);
}

static int check_marker(int vfd)
{
	char buf[64] = {0};
	int fd = openat(vfd, STORE_MARKER, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	ssize_t n;

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0 || strcmp(buf, STORE_FORMAT) != 0)
		return -1;
	return 0;
}

static int write_marker(int vfd)
{
	int fd =
	    openat(vfd, STORE_MARKER, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	size_t len = strlen(STORE_FORMAT);

	if (fd < 0)
		return -errno;
	if (write(fd, STORE_FORMAT, len) != (ssize_t)len) {
		int err = errno ? errno : EIO;
		close(fd);
		return -err;
	}
	fsync(fd);
	close(fd);
	return 0;
}

/* Staging left by daemons that are gone: a directory no live daemon holds locked, and loose
 * files of the format before instances. A daemon still serving a detached mount (umount -l
 * while programs run from it) keeps its own. */
static void staging_sweep(struct store *s)
{
	int fd = open_dir_nofollow(s->lockfd, ".", O_RDONLY);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    !strcmp(e->d_name, s->stagename))
			continue;
		int sub = open_dir_nofollow(s->lockfd, e->d_name, O_RDONLY);
		if (sub < 0) {
			if (unlinkat(s->lockfd, e->d_name, 0) == 0)
				log_info("removed staging leftover %s", e->d_name);
			continue;
		}
		if (flock(sub, LOCK_EX | LOCK_NB) == 0) {
			empty_dir(sub);
			if (unlinkat(s->lockfd, e->d_name, AT_REMOVEDIR) == 0)
				log_info("removed the staging of a daemon that is gone (%s)",
					 e->d_name);
		} else {
			log_info("staging %s belongs to a live daemon: left alone", e->d_name);
		}
		close(sub);
	}
	closedir(d);
}

/* This daemon's staging directory, .binvfs-staging/<instance>, locked for its lifetime. The
 * parent may be removed by an exiting daemon while empty: create both again then. */
static int staging_open(struct store *s)
{
	for (int tries = 0; tries < 100; tries++) {
		uint32_t r = 0;
		if (getrandom(&r, sizeof(r), 0) < 0)
			r = (uint32_t)tries;
		snprintf(s->stagename, sizeof(s->stagename), "d%d-%08x", (int)getpid(), r);
		if (mkdirat(s->vfd, STORE_STAGING, 0700) < 0 && errno != EEXIST)
			break;
		if (s->lockfd >= 0)
			close(s->lockfd);
		s->lockfd = open_dir_nofollow(s->vfd, STORE_STAGING, O_RDONLY);
		if (s->lockfd < 0)
			break;
		/* under the store's flock: another daemon's sweep must not take our directory
		 * between its mkdir and its lock */
		flock(s->lockfd, LOCK_EX);
		if (mkdirat(s->lockfd, s->stagename, 0700) < 0) {
			int err = errno;
			flock(s->lockfd, LOCK_UN);
			if (err == ENOENT || err == EEXIST)
				continue;
			break;
		}
		s->stagefd = open_dir_nofollow(s->lockfd, s->stagename, O_RDONLY);
		if (s->stagefd < 0 || flock(s->stagefd, LOCK_EX | LOCK_NB) < 0) {
			flock(s->lockfd, LOCK_UN);
			break;
		}
		staging_sweep(s);
		flock(s->lockfd, LOCK_UN);
		return 0;
	}
	log_warn("cannot create a staging directory in %s/%s", STORE_DIR, STORE_STAGING);
	return -1;
}

int store_open(struct store *s, const char *source, unsigned keep, bool nosync)
{
	struct stat st;
	bool fresh = false;
	int err;

	memset(s, 0, sizeof(*s));
	s->lockfd = s->stagefd = -1;
	s->keep = keep;
	s->nosync = nosync;
	pthread_mutex_init(&s->lock, NULL);
	s->rootfd = open(source, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (s->rootfd < 0) {
		log_warn("%s", source);
		return -1;
	}
	links_init(fstat(s->rootfd, &st) == 0 ? st.st_dev : 0);
	if (fstatat(s->rootfd, STORE_DIR, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (!S_ISDIR(st.st_mode)) {
			log_warnx("%s/%s exists and is not a binvfs store (not a directory); "
				  "rename it first",
				  source, STORE_DIR);
			return -1;
		}
	} else if (errno == ENOENT) {
		if (mkdirat(s->rootfd, STORE_DIR, 0755) < 0) {
			log_warn("cannot create %s/%s", source, STORE_DIR);
			return -1;
		}
		fresh = true;
	} else {
		log_warn("%s/%s", source, STORE_DIR);
		return -1;
	}
	s->vfd = open_dir_nofollow(s->rootfd, STORE_DIR, O_PATH);
	if (s->vfd < 0) {
		log_warn("%s/%s", source, STORE_DIR);
		return -1;
	}
	if (fresh) {
		err = write_marker(s->vfd);
		if (err) {
			errno = -err;
			log_warn("cannot write %s/%s/%s", source, STORE_DIR, STORE_MARKER);
			return -1;
		}
	} else if (check_marker(s->vfd) < 0) {
		log_warnx("%s/%s exists but is not a binvfs store (no %s marker); rename it first",
			  source, STORE_DIR, STORE_MARKER);
		return -1;
	}
	return staging_open(s);
}

void store_lock(struct store *s)
{
	pthread_mutex_lock(&s->lock);
	while (flock(s->lockfd, LOCK_EX) < 0 && errno == EINTR)
		;
}

void store_unlock(struct store *s)
{
	flock(s->lockfd, LOCK_UN);
	pthread_mutex_unlock(&s->lock);
}

/* Read every versions dir into the history index in the background (see history.h). */
void store_index_start(struct store *s)
{
	int err = history_index_start(s->vfd, &s->lock);

	if (err) {
		errno = -err;
		log_warn("cannot start the indexer: each versions dir is read at its first change");
	}
}

void store_close(struct store *s)
{
	history_index_stop();
	if (s->stagefd >= 0) {
		empty_dir(s->stagefd);
		unlinkat(s->lockfd, s->stagename, AT_REMOVEDIR);
		close(s->stagefd);
		/* the last daemon out removes the parent; another's keeps it (ENOTEMPTY) */
		unlinkat(s->vfd, STORE_STAGING, AT_REMOVEDIR);
	}
	if (s->lockfd >= 0)
		close(s->lockfd);
	if (s->vfd >= 0)
		close(s->vfd);
	if (s->rootfd >= 0)
		close(s->rootfd);
	history_free();
	links_free();
}

/* The one root name the tree cannot have: the store itself. */
bool store_reserved_root_name(const char *name)
{
	return !strcmp(name, STORE_DIR);
}

static ssize_t fd_path(int fd, char *buf, size_t len)
{
	char proc[64];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, buf, len - 1);
	if (n < 0)
		return -errno;
	if ((size_t)n >= len - 1)
		return -ENAMETOOLONG;
	buf[n] = 0;
	return n;
}

/* "rel/name", or name when rel is empty; NULL when out of memory. */
char *store_join(const char *rel, const char *name)
{
	char *out;

	return asprintf(&out, "%s%s%s", rel, *rel ? "/" : "", name) < 0 ? NULL : out;
}

/* The path of the tree directory dirfd below SOURCE ("" for SOURCE itself), malloc'd. The
 * kernel says it through /proc/self/fd, up to PATH_MAX; a deeper directory (reached through
 * relative paths or *at calls) is known to the node table, whose directory nodes remember
 * their parent and name (s->dir_path): *from_nodes is then set, and the caller checks that the
 * path still leads to dirfd. */
static int relpath(struct store *s, int dirfd, char **out, bool *from_nodes)
{
	char root[PATH_MAX], dir[PATH_MAX];
	ssize_t rl, dl;
	struct stat st;

	*out = NULL;
	*from_nodes = false;
	if (dirfd == s->rootfd)
		return (*out = strdup("")) ? 0 : -ENOMEM;
	rl = fd_path(s->rootfd, root, sizeof(root));
	if (rl < 0)
		return (int)rl;
	dl = fd_path(dirfd, dir, sizeof(dir));
	if (dl == -ENAMETOOLONG) {
		if (!s->dir_path || fstat(dirfd, &st) < 0 ||
		    !(*out = s->dir_path(st.st_dev, st.st_ino)))
			return -ENAMETOOLONG;
		*from_nodes = true;
		return 0;
	}
	if (dl < 0)
		return (int)dl;
	if (rl == 1) /* SOURCE is "/" */
		rl = 0;
	if (strncmp(dir, root, rl) != 0 || (dir[rl] != '/' && dir[rl] != 0))
		return -ENOENT; /* removed, or not below SOURCE */
	if (strstr(dir + rl, " (deleted)"))
		return -ENOENT;
	return (*out = strdup(dir[rl] == '/' ? dir + rl + 1 : dir + rl)) ? 0 : -ENOMEM;
}

/* The name of a tree directory's mirror in .versions/ (names.h); NULL if it does not fit. */
static const char *mirror_name(const char *name, char *buf, size_t len)
{
	size_t nl = strlen(name);

	if (!names_mirror_escaped(name))
		return name;
	if (nl + 4 > len || nl + 3 > 255)
		return NULL;
	snprintf(buf, len, "%s" NAMES_MIRROR_SUFFIX, name);
	return buf;
}

/* A mirror directory has its tree directory's mode and owner, so .versions/ never lets
 * anyone reach a version they could not reach as the file (also after a later chmod). */
static void sync_mirror_meta(int vfd, const struct stat *tst)
{
	struct stat vst;
	char proc[64];

	if (fstat(vfd, &vst) < 0)
		return;
	if (vst.st_uid != tst->st_uid || vst.st_gid != tst->st_gid)
		fchownat(vfd, "", tst->st_uid, tst->st_gid, AT_EMPTY_PATH);
	if ((vst.st_mode & 07777) != (tst->st_mode & 07777) || vst.st_uid != tst->st_uid) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", vfd);
		chmod(proc, tst->st_mode & 07777);
	}
}

/* Open (creating if asked) the mirror of the tree directory dirfd in .versions/, one
 * component at a time, copying each tree directory's mode and owner onto its mirror. rel (if
 * not NULL) gets the mirror's path below .versions/, malloc'd. Any depth: every call takes one
 * component. */
int store_versions_dir(struct store *s, int dirfd, bool create, int *vdirfd, char **rel)
{
	char *save = NULL, *comp, *path, *vrel = NULL, mbuf[260];
	bool from_nodes;
	int vcur = -1, tcur = -1, err;

	err = relpath(s, dirfd, &path, &from_nodes);
	if (err)
		return err;
	if (!(vrel = strdup(""))) {
		err = -ENOMEM;
		goto out;
	}
	vcur = dup(s->vfd);
	tcur = dup(s->rootfd);
	if (vcur < 0 || tcur < 0) {
		err = -errno;
		goto out;
	}
	for (comp = strtok_r(path, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
		struct stat tst;
		const char *mirror = mirror_name(comp, mbuf, sizeof(mbuf));
		int vnext, tnext = open_dir_nofollow(tcur, comp, O_PATH);
		char *nrel;

		if (tnext < 0 || fstat(tnext, &tst) < 0) {
			err = -errno;
			if (tnext >= 0)
				close(tnext);
			goto out;
		}
		close(tcur);
		tcur = tnext;
		if (!mirror) {
			err = -ENAMETOOLONG;
			goto out;
		}
		if (!(nrel = store_join(vrel, mirror))) {
			err = -ENOMEM;
			goto out;
		}
		free(vrel);
		vrel = nrel;
		vnext = open_dir_nofollow(vcur, mirror, O_PATH);
		if (vnext < 0 && errno == ENOENT && create) {
			if (mkdirat(vcur, mirror, tst.st_mode & 07777) < 0 && errno != EEXIST) {
				err = -errno;
				goto out;
			}
			vnext = open_dir_nofollow(vcur, mirror, O_PATH);
			if (vnext >= 0)
				store_sync_dir(s, vcur);
		}
		if (vnext < 0) {
			err = -errno;
			goto out;
		}
		sync_mirror_meta(vnext, &tst);
		close(vcur);
		vcur = vnext;
	}
	if (from_nodes) {
		/* the node table's path must still lead to dirfd (not if it was removed or moved
		 * behind the mount) */
		struct stat a, b;
		if (fstat(tcur, &a) < 0 || fstat(dirfd, &b) < 0 || a.st_ino != b.st_ino ||
		    a.st_dev != b.st_dev) {
			err = -ENOENT;
			goto out;
		}
	}
	*vdirfd = vcur;
	vcur = -1;
	if (rel) {
		*rel = vrel;
		vrel = NULL;
	}
	err = 0;
out:
	free(path);
	free(vrel);
	if (vcur >= 0)
		close(vcur);
	if (tcur >= 0)
		close(tcur);
	return err;
}

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

static void copy_xattrs(int src, int dst)
{
	char names[4096], val[4096];
	ssize_t len = flistxattr(src, names, sizeof(names));

	for (char *n = names; len > 0 && n < names + len; n += strlen(n) + 1) {
		ssize_t vl;
		if (!strcmp(n, "security.capability"))
			continue; /* a write drops file capabilities natively too */
		vl = fgetxattr(src, n, val, sizeof(val));
		if (vl >= 0)
			fsetxattr(dst, n, val, (size_t)vl, 0);
	}
}

int store_stage_create(struct store *s, int srcfd, const struct stat *base, off_t len, int *out)
{
	int fd, err;

	fd = openat(s->stagefd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, base->st_mode & 0777);
	if (fd < 0)
		return -errno;
	if (fchown(fd, base->st_uid, base->st_gid) < 0 || fchmod(fd, base->st_mode & 07777) < 0) {
		err = -errno;
		goto fail;
	}
	if (srcfd >= 0) {
		copy_xattrs(srcfd, fd);
		if (len > 0) {
			err = store_copy(srcfd, fd, len);
			if (err)
				goto fail;
		}
	}
	*out = fd;
	return 0;
fail:
	close(fd);
	return err;
}

int store_sync_dir(struct store *s, int dirfd)
{
	int fd;

	if (s->nosync)
		return 0;
	fd = open_dir_nofollow(dirfd, ".", O_RDONLY);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	close(fd);
	return 0;
}

int store_unlink_version(int vdirfd, const char *vname, ino_t ino)
{
	links_begin();
	int r = unlinkat(vdirfd, vname, 0);
	links_end(ino, r == 0 ? -1 : 0);
	return r;
}

/* name: the stored name (names_stored) */
static int prune(int vdirfd, const char *rel, const char *name, uint32_t *ns, size_t cnt,
		 unsigned keep, store_in_use_fn in_use, void *arg)
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
		if (in_use && in_use(arg, &st, vrel, vdirfd, vname)) {
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
int store_prune(struct store *s, int dirfd, const char *name, unsigned keep, store_in_use_fn in_use,
		void *arg)
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
		int fd = open_dir_nofollow(vdirfd, ".", O_RDONLY);
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
			removed += prune(vdirfd, rel, names[i], ns, cnt, keep, in_use, arg);
		free(ns);
	}
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	free(rel);
	close(vdirfd);
	return removed;
}

/* A file whose name is shortened in its versions dir (names_stored) has its whole name
 * recorded there once, as "<stored>.~~" holding exactly the name: tools show and accept the
 * real name, and a second name with the same stored form (a SHA-256 prefix collision) is
 * refused instead of mixing its versions with the first one's. */
static int keep_record(struct store *s, int vdirfd, const char *stored, const char *name)
{
	char rec[NAMES_STORED_MAX + sizeof(NAMES_MIRROR_SUFFIX)], buf[NAME_MAX + 2];
	size_t len = strlen(name);
	ssize_t n;
	int fd;

	snprintf(rec, sizeof(rec), "%s" NAMES_MIRROR_SUFFIX, stored);
	fd = openat(vdirfd, rec, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd >= 0) {
		int err = 0;
		errno = 0;
		if (write(fd, name, len) != (ssize_t)len)
			err = errno ? -errno : -ENOSPC; /* a short write: the disk is full */
		else if (!s->nosync && fsync(fd) < 0)
			err = -errno;
		close(fd);
		if (err)
			unlinkat(vdirfd, rec, 0);
		return err;
	}
	if (errno != EEXIST)
		return -errno;
	fd = openat(vdirfd, rec, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n == (ssize_t)len && !memcmp(buf, name, len))
		return 0;
	log_warnx("%s: its shortened name %s is recorded for another name; no version kept", name,
		  stored);
	return -ENAMETOOLONG;
}

/* ch->vname was linked into the versions dir rel: the change kept it. */
static int set_vrel(struct store_change *ch, const char *rel)
{
	free(ch->vrel);
	ch->vrel = store_join(rel, ch->vname);
	ch->kept = ch->vrel != NULL;
	return ch->kept ? 0 : -ENOMEM;
}

void store_change_done(struct store_change *ch)
{
	free(ch->vrel);
	ch->vrel = NULL;
}

/* Link the regular file at dirfd/name as its next version; the caller holds s->lock. */
static int keep_version(struct store *s, int dirfd, const char *name, struct store_change *ch,
			store_in_use_fn in_use, void *arg)
{
	char *rel;
	uint32_t *ns = NULL, next;
	size_t cnt = 0;
	int vdirfd, err;
	struct stat last;

	char stored[NAMES_STORED_MAX + 1];

	if (fstatat(dirfd, name, &ch->old, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISREG(ch->old.st_mode))
		return 0;
	err = store_versions_dir(s, dirfd, true, &vdirfd, &rel);
	if (err)
		return err;
	if (names_stored(name, stored)) {
		err = keep_record(s, vdirfd, stored, name);
		if (err)
			goto out;
	}
	err = store_list_versions(vdirfd, stored, &ns, &cnt);
	if (err)
		goto out;
	if (cnt && ns[cnt - 1] == UINT32_MAX) {
		err = -EOVERFLOW; /* no number left for this path */
		goto out;
	}
	next = cnt ? ns[cnt - 1] + 1 : 1;
	snprintf(ch->vname, sizeof(ch->vname), NAMES_VERSION_FMT, stored, next - 1);
	if (cnt && fstatat(vdirfd, ch->vname, &last, AT_SYMLINK_NOFOLLOW) == 0 &&
	    last.st_ino == ch->old.st_ino && last.st_dev == ch->old.st_dev) {
		/* a crash between link and rename left it linked already */
		err = set_vrel(ch, rel);
		goto out;
	}
	for (;; next++) {
		/* (a stored name always fits: names_stored) */
		if (snprintf(ch->vname, sizeof(ch->vname), NAMES_VERSION_FMT, stored, next) >=
		    (int)sizeof(ch->vname)) {
			err = -ENAMETOOLONG;
			goto out;
		}
		links_begin();
		int r = linkat(dirfd, name, vdirfd, ch->vname, 0);
		links_end(ch->old.st_ino, r == 0 ? 1 : 0);
		if (r == 0) {
			history_add(vdirfd, stored, next);
			break;
		}
		if (errno != EEXIST || next == UINT32_MAX) {
			/* (another daemon on the store, or a stray entry, took the number) */
			err = errno == EEXIST ? -EOVERFLOW : -errno;
			goto out;
		}
	}
	err = set_vrel(ch, rel);
	if (err)
		goto out;
	uint32_t *nn = realloc(ns, (cnt + 1) * sizeof(*ns));
	if (nn) {
		ns = nn;
		ns[cnt++] = next;
		if (s->keep)
			prune(vdirfd, rel, stored, ns, cnt, s->keep, in_use, arg);
	}
	err = store_sync_dir(s, vdirfd);
out:
	free(ns);
	free(rel);
	close(vdirfd);
	return err;
}

/* A link into .versions/ can need a directory block, a new mirror directory an inode and a
 * block: what old versions yield for one try more. */
#define YIELD_STEP (1u << 20)

static bool no_space(int err)
{
	return err == -ENOSPC || err == -EDQUOT;
}

int store_keep_version(struct store *s, int dirfd, const char *name, struct store_change *ch,
		       store_in_use_fn in_use, void *arg)
{
	int err = keep_version(s, dirfd, name, ch, in_use, arg);

	if (no_space(err)) {
		space_yield(s, space_avail(s) + YIELD_STEP, name);
		err = keep_version(s, dirfd, name, ch, in_use, arg);
	}
	if (no_space(err)) {
		/* the current file must change anyway: do it without keeping this version */
		errno = -err;
		log_warn("%s: no space to keep the replaced file; it goes without a version", name);
		ch->kept = false;
		ch->dropped = true;
		return 0;
	}
	return err;
}

int store_keep_removed(struct store *s, int dirfd, const char *name, struct store_change *ch,
		       store_in_use_fn in_use, void *arg)
{
	struct stat st;

	if (space_short(s) && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode) && st.st_nlink == 1 &&
	    !space_yield(s, space_avail(s) + (uint64_t)st.st_blocks * 512, name)) {
		log_warnx("%s: below the reserve; removed without keeping a version, to free its "
			  "space",
			  name);
		ch->old = st;
		ch->kept = false;
		ch->dropped = true;
		return 0;
	}
	return store_keep_version(s, dirfd, name, ch, in_use, arg);
}

/* Publish the staging file stfd at dirfd/name with one rename; the replaced file becomes the
 * next version. The caller has synced stfd and holds s->lock. */
int store_publish(struct store *s, int dirfd, const char *name, int stfd, struct store_change *ch,
		  store_in_use_fn in_use, void *arg)
{
	char tmp[64], proc[64];
	int err;

	memset(ch, 0, sizeof(*ch));
	snprintf(tmp, sizeof(tmp), "p%d.%llu", getpid(), (unsigned long long)s->seq++);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", stfd);
	if (linkat(AT_FDCWD, proc, s->stagefd, tmp, AT_SYMLINK_FOLLOW) < 0) {
		if (!no_space(-errno))
			return -errno;
		space_yield(s, space_avail(s) + YIELD_STEP, name);
		if (linkat(AT_FDCWD, proc, s->stagefd, tmp, AT_SYMLINK_FOLLOW) < 0)
			return -errno;
	}
	err = store_keep_version(s, dirfd, name, ch, in_use, arg);
	if (err == -ENOENT) {
		/* The name is gone (removed while being written): keep the new content as a
		 * version rather than resurrect the name. */
		int vdirfd;
		char *rel = NULL, stored[NAMES_STORED_MAX + 1];
		uint32_t *ns = NULL;
		size_t cnt = 0;
		bool shortened = names_stored(name, stored);

		err = store_versions_dir(s, dirfd, true, &vdirfd, &rel);
		if (!err && shortened)
			err = keep_record(s, vdirfd, stored, name);
		if (!err)
			err = store_list_versions(vdirfd, stored, &ns, &cnt);
		if (!err) {
			if (cnt && ns[cnt - 1] == UINT32_MAX)
				err = -EOVERFLOW;
			/* NOREPLACE: another daemon on the store may have taken the number */
			uint32_t next = cnt ? ns[cnt - 1] + 1 : 1;
			bool yielded = false;
			struct stat cst;
			if (!err && fstat(stfd, &cst) < 0)
				err = -errno;
			for (; !err; next++) {
				snprintf(ch->vname, sizeof(ch->vname), NAMES_VERSION_FMT, stored,
					 next);
				links_begin();
				int r =
				    renameat2(s->stagefd, tmp, vdirfd, ch->vname, RENAME_NOREPLACE);
				links_end(cst.st_ino, r == 0 ? 1 : 0);
				if (r == 0)
					break;
				if (no_space(-errno) && !yielded) {
					/* a directory block: versions yield it; same N */
					yielded = true;
					space_yield(s, space_avail(s) + YIELD_STEP, name);
					next--;
					continue;
				}
				if (errno != EEXIST || next == UINT32_MAX)
					err = errno == EEXIST ? -EOVERFLOW : -errno;
			}
			if (!err) {
				history_add(vdirfd, stored, next);
				ch->orphaned = true;
				ch->vrel = store_join(rel, ch->vname);
			}
			free(ns);
			free(rel);
			close(vdirfd);
		}
		if (err)
			unlinkat(s->stagefd, tmp, 0);
		return err;
	}
	if (err) {
		unlinkat(s->stagefd, tmp, 0);
		return err;
	}
	/* No reader may stat the name between the moment ext4 takes the replaced inode's link
	 * and the moment the name shows the new one: it would count 0 links for a name that
	 * was never missing (natively an in-place write renames nothing). */
	links_begin();
	err = renameat(s->stagefd, tmp, dirfd, name) < 0 ? -errno : 0;
	links_end(0, 0);
	if (err) {
		unlinkat(s->stagefd, tmp, 0);
		return err;
	}
	err = store_sync_dir(s, dirfd);
	space_keep_reserve(s);
	return err;
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
			int next = open_dir_nofollow(dirfd, c, O_PATH);
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
