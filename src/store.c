/* store.c - the version store on disk: opening it, its lock, staging, versions directories.
 *
 * SOURCE/<path>                    the current version of every file, a plain file
 * SOURCE/.versions/<dir>/<name>.~N~ old versions: hard links to the replaced inodes
 * SOURCE/.versions/.binvfs-format   the format marker
 * SOURCE/.versions/.binvfs-staging/<instance>/ each daemon's publish links in flight
 *
 * Keeping versions is keep.c, removing them retention.c. Every access is relative to a
 * directory fd and never follows a symlink. */
#define _GNU_SOURCE
#include "store.h"
#include "history.h"
#include "links.h"
#include "log.h"
#include "copy.h"
#include "names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

int store_open_dir(int dirfd, const char *name, int flags)
{
	return openat(dirfd, name, flags | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Remove every entry of a directory (staging leftovers); not recursive. */
static void empty_dir(int dirfd)
{
	int fd = store_open_dir(dirfd, ".", O_RDONLY);
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
	int fd = store_open_dir(s->lockfd, ".", O_RDONLY);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((e = readdir(d))) {
		/* R<name>: a release's, rolled forward or back by release_recover */
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    !strcmp(e->d_name, s->stagename) || e->d_name[0] == 'R')
			continue;
		int sub = store_open_dir(s->lockfd, e->d_name, O_RDONLY);
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

/* No ACL on a directory of the store: a default ACL on SOURCE (or on .versions/ from an
 * earlier session) would be inherited by every staging copy and mirror made below, giving
 * published files and history entries that the tree's files never had. fd: O_PATH is fine. */
static void store_dir_no_acl(int fd)
{
	char proc[64];

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	removexattr(proc, "system.posix_acl_default");
	removexattr(proc, "system.posix_acl_access");
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
		s->lockfd = store_open_dir(s->vfd, STORE_STAGING, O_RDONLY);
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
		s->stagefd = store_open_dir(s->lockfd, s->stagename, O_RDONLY);
		if (s->stagefd < 0 || flock(s->stagefd, LOCK_EX | LOCK_NB) < 0) {
			flock(s->lockfd, LOCK_UN);
			break;
		}
		store_dir_no_acl(s->lockfd);
		store_dir_no_acl(s->stagefd);
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
	s->vfd = store_open_dir(s->rootfd, STORE_DIR, O_PATH);
	if (s->vfd < 0) {
		log_warn("%s/%s", source, STORE_DIR);
		return -1;
	}
	store_dir_no_acl(s->vfd);
	if (fresh) {
		err = write_marker(s->vfd);
		if (err) {
			errno = -err;
			log_warn("cannot write %s/%s/%s", source, STORE_DIR, STORE_MARKER);
			return -1;
		}
		/* the new store's names on disk before anything is kept in it: a power cut must
		 * not leave a store without its marker (a later mount refuses such a directory) */
		store_sync_dir(s, s->vfd);
		store_sync_dir(s, s->rootfd);
	} else if (check_marker(s->vfd) < 0) {
		log_warnx("%s/%s exists but is not a binvfs store (no %s marker); rename it first",
			  source, STORE_DIR, STORE_MARKER);
		return -1;
	}
	return staging_open(s);
}

void store_lock(struct store *s)
{
	__atomic_add_fetch(&s->waiting, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&s->lock);
	__atomic_sub_fetch(&s->waiting, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&s->taken, 1, __ATOMIC_SEQ_CST);
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

void *store_nodeids_read(struct store *s, size_t max, size_t *len, const char **why)
{
	unsigned char *data = NULL;
	struct stat sb;
	size_t off = 0;
	ssize_t got = 1;
	int fd;

	*why = NULL;
	store_lock(s);
	fd = openat(s->vfd, STORE_NODEIDS, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		store_unlock(s);
		return NULL; /* a first mount, or the last one did not stop cleanly */
	}
	if (fd < 0 || fstat(fd, &sb) < 0)
		*why = "cannot open it";
	else if (!S_ISREG(sb.st_mode) || sb.st_uid != geteuid() || (sb.st_mode & 077))
		*why = "not a regular file of the daemon's, mode 0600";
	else if ((size_t)sb.st_size > max)
		*why = "damaged: too large";
	else if (!(data = malloc(sb.st_size ? (size_t)sb.st_size : 1)))
		*why = "out of memory";
	while (!*why && off < (size_t)sb.st_size &&
	       (got = pread(fd, data + off, (size_t)sb.st_size - off, (off_t)off)) > 0)
		off += (size_t)got;
	if (!*why && off < (size_t)sb.st_size)
		*why = "cannot read it";
	if (fd >= 0)
		close(fd);
	/* read once: a daemon that mounts next (while this one serves a detached mount) starts
	 * without it, and so does the mount after a crash of this daemon */
	if (unlinkat(s->vfd, STORE_NODEIDS, 0) == 0)
		store_sync_dir(s, s->vfd);
	store_unlock(s);
	if (*why) {
		free(data);
		return NULL;
	}
	*len = off;
	return data;
}

int store_nodeids_write(struct store *s, const void *table, size_t len)
{
	const unsigned char *p = table;
	size_t off = 0;
	ssize_t w = 0;
	int fd, err = 0;

	if (s->stagefd < 0)
		return -ENOENT;
	fd = openat(s->stagefd, NODEIDS_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
		    0600);
	if (fd < 0)
		return -errno;
	while (off < len && (w = write(fd, p + off, len - off)) > 0)
		off += (size_t)w;
	if (off < len)
		err = w < 0 ? -errno : -EIO;
	else if (!s->nosync && fsync(fd) < 0)
		err = -errno;
	close(fd);
	if (!err) {
		store_lock(s);
		if (renameat(s->stagefd, NODEIDS_TMP, s->vfd, STORE_NODEIDS) < 0)
			err = -errno;
		store_unlock(s);
	}
	if (err)
		unlinkat(s->stagefd, NODEIDS_TMP, 0);
	else
		store_sync_dir(s, s->vfd);
	return err;
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

#define ACL_ACCESS "system.posix_acl_access"

/* The access ACL of the directory fd (O_PATH) in buf: its length, 0 if it has none (or the
 * filesystem has no ACLs), -1 if it cannot be read. */
static ssize_t dir_acl(int fd, char *buf, size_t len)
{
	char proc[64];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = getxattr(proc, ACL_ACCESS, buf, len);
	if (n < 0 && (errno == ENODATA || errno == ENOTSUP))
		return 0;
	return n;
}

/* Have the mirror vfd and its tree directory tfd the same access ACL (both none included)? */
static bool acl_same(int vfd, int tfd)
{
	char a[4096], b[4096];
	ssize_t na = dir_acl(vfd, a, sizeof(a)), nb = dir_acl(tfd, b, sizeof(b));

	return na >= 0 && na == nb && !memcmp(a, b, (size_t)na);
}

/* A mirror directory has its tree directory's mode, owner and access ACL, so .versions/ never
 * lets anyone reach a version they could not reach as the file (also after a later chmod or
 * setfacl: a change that would open the mirror moves it aside first, opens()). */
static void sync_mirror_meta(int vfd, int tfd, const struct stat *tst)
{
	struct stat vst;
	char proc[64], acl[4096];
	ssize_t n;

	if (fstat(vfd, &vst) < 0)
		return;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", vfd);
	if (vst.st_uid != tst->st_uid || vst.st_gid != tst->st_gid)
		fchownat(vfd, "", tst->st_uid, tst->st_gid, AT_EMPTY_PATH);
	if ((vst.st_mode & 07777) != (tst->st_mode & 07777) || vst.st_uid != tst->st_uid)
		chmod(proc, tst->st_mode & 07777);
	if (tfd >= 0 && !acl_same(vfd, tfd)) {
		n = dir_acl(tfd, acl, sizeof(acl));
		if (n > 0 ? setxattr(proc, ACL_ACCESS, acl, (size_t)n, 0) < 0
			  : n == 0 && removexattr(proc, ACL_ACCESS) < 0 && errno != ENODATA)
			log_warn("cannot give a mirror in .versions/ its directory's ACL");
	}
}

/* Which permission classes (rwx triplets) of a file owned by uid:gid have every member granted
 * `bit` (4: read) by a, the file now at its name? Group membership is not looked up (no NSS in
 * the daemon): a member of the file's group may also be a's owner, and a user outside it may
 * or may not be in a's group, so both are assumed. With the same owner and group this is
 * exact: each class keeps its triplet if a's same class has the bit. (ACL entries are not
 * read.) Root passes every check, so a root-owned file keeps its owner class. */
static mode_t class_mask(uid_t uid, gid_t gid, const struct stat *a, unsigned bit)
{
	bool u = (a->st_mode >> 6) & bit, g = (a->st_mode >> 3) & bit, o = a->st_mode & bit;
	bool same_owner = a->st_uid == uid, same_group = a->st_gid == gid;
	mode_t keep = S_ISUID | S_ISGID | S_ISVTX;

	if (uid == 0 || (same_owner ? u : (g && o)))
		keep |= 0700;
	if ((same_group ? g : (g && o)) && (same_owner || u))
		keep |= 0070;
	if ((same_group ? o : (g && o)) && (same_owner || u))
		keep |= 0007;
	return keep;
}

/* A mirror names the tree directory it mirrors in NAMES_MIRROR_XATTR (trusted.*: only root
 * sets it): "h<type>:<hex>", its file handle (inode and generation: an inode number reused by
 * a new directory does not match), or where the filesystem has no handles "i<ino>:<birth
 * time>"; "gone" once the directory was removed. */
static int dir_identity(int tfd, char *buf, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	union {
		struct file_handle fh;
		char space[sizeof(struct file_handle) + MAX_HANDLE_SZ];
	} h;
	struct statx sx;
	int mount_id;
	size_t off;

	h.fh.handle_bytes = MAX_HANDLE_SZ;
	if (name_to_handle_at(tfd, "", &h.fh, &mount_id, AT_EMPTY_PATH) == 0 &&
	    2 * h.fh.handle_bytes + 16 < len) {
		off = (size_t)snprintf(buf, len, "h%d:", h.fh.handle_type);
		for (unsigned i = 0; i < h.fh.handle_bytes; i++) {
			buf[off++] = hex[h.fh.f_handle[i] >> 4];
			buf[off++] = hex[h.fh.f_handle[i] & 15];
		}
		buf[off] = 0;
		return 0;
	}
	if (statx(tfd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME, &sx) < 0)
		return -errno;
	if (sx.stx_mask & STATX_BTIME)
		snprintf(buf, len, "i%llu:%lld.%09u", (unsigned long long)sx.stx_ino,
			 (long long)sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec);
	else
		snprintf(buf, len, "i%llu", (unsigned long long)sx.stx_ino);
	return 0;
}

#define IDENTITY_MAX  (2 * MAX_HANDLE_SZ + 32)
#define IDENTITY_GONE "gone"

static void mirror_set_identity(int vfd, const char *id)
{
	char proc[64];

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", vfd);
	if (setxattr(proc, NAMES_MIRROR_XATTR, id, strlen(id), 0) < 0 && errno != ENOTSUP &&
	    errno != EOPNOTSUPP)
		log_warn("cannot record which directory a mirror mirrors");
}

/* Does the mirror vfd mirror the tree directory tfd (stat tst)? A mirror without the record
 * (made by an earlier binvfs, or on a filesystem without trusted.* attributes) is taken to be
 * the directory's if both have one owner, and then gets the record. */
static bool mirror_is_of(int vfd, int tfd, const struct stat *tst)
{
	char have[IDENTITY_MAX], want[IDENTITY_MAX], proc[64];
	struct stat vst;
	ssize_t n;

	if (dir_identity(tfd, want, sizeof(want)) < 0)
		return false;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", vfd);
	n = getxattr(proc, NAMES_MIRROR_XATTR, have, sizeof(have) - 1);
	if (n >= 0) {
		have[n] = 0;
		return !strcmp(have, want);
	}
	int err = errno;
	if ((err != ENODATA && err != ENOTSUP) || fstat(vfd, &vst) < 0 || vst.st_uid != tst->st_uid)
		return false;
	if (err == ENODATA)
		mirror_set_identity(vfd, want);
	return true;
}

/* A mirror whose directory is gone: only its owner (and root) may still enter it, as far as
 * it could before; removed (`gone`): no directory can ever match it again. */
static void mirror_freeze(int vfd, bool gone)
{
	struct stat vst;
	char proc[64];

	if (gone)
		mirror_set_identity(vfd, IDENTITY_GONE);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", vfd);
	if (fstat(vfd, &vst) == 0 && (vst.st_mode & 07077))
		chmod(proc, vst.st_mode & 0700);
}

/* Would giving mirror vfd the mode and owner tst let in anyone it kept out? Another owner or
 * group, or a read or search bit it lacks. (Write bits open nothing: the view is read-only.)
 * A mirror only ever closes: the versions in it were kept while its directory was as closed
 * as the mirror is, and must stay so. */
static bool opens(int vfd, int tfd, const struct stat *tst)
{
	struct stat vst;

	if (fstat(vfd, &vst) < 0)
		return true;
	/* an ACL that changed counts as opening: entries are not compared one by one */
	return vst.st_uid != tst->st_uid || vst.st_gid != tst->st_gid ||
	       (tst->st_mode & 0555 & ~vst.st_mode) != 0 || !acl_same(vfd, tfd);
}

/* Another directory holds the name of mirror vfd (named `mirror` in vparent), or its own
 * would open it: the old mirror, closed, goes to a reserved name (names_aside) and the
 * directory gets a new mirror, never this one re-chowned or opened. */
static int mirror_aside(struct store *s, int vparent, const char *mirror, int vfd)
{
	char aside[NAME_MAX + 1];
	struct stat a, b;
	long long t = (long long)time(NULL);

	mirror_freeze(vfd, true);
	if (fstat(vfd, &a) < 0 || fstatat(vparent, mirror, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
	    a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		return -ESTALE;
	for (unsigned n = 1; n < 1000; n++) {
		if (!names_aside(mirror, t, n, aside, sizeof(aside)) || !names_is_aside(aside))
			return -ENAMETOOLONG;
		if (renameat2(vparent, mirror, vparent, aside, RENAME_NOREPLACE) == 0) {
			log_info(
			    "%s: another directory took its name, or its directory opened; its "
			    "history moved aside to %s",
			    mirror, aside);
			store_sync_dir(s, vparent);
			return 0;
		}
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

/* A new mirror for tree directory tfd in vparent: made 0700 root, recorded as tfd's, then
 * given its directory's owner and mode (sync_mirror_meta). Returns its fd or -errno. A mirror
 * another daemon made meanwhile is taken as it is (mirror_step checks it). */
static int mirror_make(struct store *s, int vparent, const char *mirror, int tfd,
		       const struct stat *tst)
{
	char id[IDENTITY_MAX];
	int vfd;

	if (mkdirat(vparent, mirror, 0700) < 0) {
		if (errno != EEXIST)
			return -errno;
		/* another daemon on the store made it meanwhile */
		vfd = store_open_dir(vparent, mirror, O_PATH);
		if (vfd < 0)
			return -errno;
		if (!mirror_is_of(vfd, tfd, tst) || opens(vfd, tfd, tst)) {
			close(vfd);
			return -EEXIST;
		}
		return vfd;
	}
	vfd = store_open_dir(vparent, mirror, O_PATH);
	if (vfd < 0)
		return -errno;
	if (dir_identity(tfd, id, sizeof(id)) == 0)
		mirror_set_identity(vfd, id);
	sync_mirror_meta(vfd, tfd, tst);
	store_sync_dir(s, vparent);
	return vfd;
}

/* One component of store_versions_dir: from tree directory *tcur and its mirror *vcur (rel
 * *vrel) down to comp and its mirror, made (with comp's mode) if `create`. A mirror that
 * another directory had at this name, or that comp's mode or owner would open (opens()), is
 * moved aside first and comp gets a new one: history is never more open than when kept. */
static int mirror_step(struct store *s, const char *comp, bool create, int *tcur, int *vcur,
		       char **vrel)
{
	char mbuf[NAME_MAX + 1], *nrel;
	const char *mirror = names_mirror(comp, mbuf, sizeof(mbuf));
	struct stat tst;
	int err, vnext, tnext = store_open_dir(*tcur, comp, O_PATH);

	if (tnext < 0 || fstat(tnext, &tst) < 0) {
		err = -errno;
		if (tnext >= 0)
			close(tnext);
		return err;
	}
	close(*tcur);
	*tcur = tnext;
	if (!mirror)
		return -ENAMETOOLONG;
	if (!(nrel = store_join(*vrel, mirror)))
		return -ENOMEM;
	free(*vrel);
	*vrel = nrel;
	vnext = store_open_dir(*vcur, mirror, O_PATH);
	if (vnext >= 0 && (!mirror_is_of(vnext, tnext, &tst) || opens(vnext, tnext, &tst))) {
		err = mirror_aside(s, *vcur, mirror, vnext);
		close(vnext);
		if (err)
			return err; /* never reuse another directory's mirror */
		vnext = -1;
		errno = ENOENT;
	}
	if (vnext < 0 && errno == ENOENT && create) {
		vnext = mirror_make(s, *vcur, mirror, tnext, &tst);
		if (vnext < 0)
			return vnext;
	}
	if (vnext < 0)
		return -errno;
	sync_mirror_meta(vnext, tnext, &tst);
	close(*vcur);
	*vcur = vnext;
	return 0;
}

/* Open (creating if asked) the mirror of the tree directory dirfd in .versions/, one
 * component at a time, copying each tree directory's mode and owner onto its mirror. rel (if
 * not NULL) gets the mirror's path below .versions/, malloc'd. Any depth: every call takes one
 * component. */
static void batch_forget(struct store *s)
{
	if (s->batch_dir.ino) {
		close(s->batch_dir.vfd);
		free(s->batch_dir.rel);
		s->batch_dir.ino = 0;
	}
}

void store_batch_end(struct store *s)
{
	s->batch = false;
	batch_forget(s);
}

int store_versions_dir(struct store *s, int dirfd, bool create, int *vdirfd, char **rel)
{
	char *save = NULL, *comp, *path, *vrel = NULL;
	struct stat dst = {0};
	bool from_nodes;
	int vcur = -1, tcur = -1, err;

	/* A release's commit keeps versions of many names in few directories, holding the store
	 * lock throughout: the same directory's mirror is found once (and its metadata copied
	 * once) per commit, not once per name. */
	if (!s->batch) {
		batch_forget(s);
	} else if (fstat(dirfd, &dst) == 0 && s->batch_dir.ino == dst.st_ino &&
		   s->batch_dir.dev == dst.st_dev) {
		char *r = rel ? strdup(s->batch_dir.rel) : NULL;
		int fd = dup(s->batch_dir.vfd);
		if (fd >= 0 && (!rel || r)) {
			*vdirfd = fd;
			if (rel)
				*rel = r;
			return 0;
		}
		if (fd >= 0)
			close(fd);
		free(r);
	}
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
	for (comp = strtok_r(path, "/", &save); comp && !err; comp = strtok_r(NULL, "/", &save))
		err = mirror_step(s, comp, create, &tcur, &vcur, &vrel);
	if (err)
		goto out;
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
	if (s->batch && dst.st_ino) {
		char *r = strdup(vrel);
		int fd = dup(vcur);
		batch_forget(s);
		if (r && fd >= 0) {
			s->batch_dir.dev = dst.st_dev;
			s->batch_dir.ino = dst.st_ino;
			s->batch_dir.vfd = fd;
			s->batch_dir.rel = r;
		} else {
			free(r);
			if (fd >= 0)
				close(fd);
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

void store_mirror_settle(struct store *s, int dirfd, const char *name, bool gone)
{
	char mbuf[NAME_MAX + 1];
	const char *mirror = names_mirror(name, mbuf, sizeof(mbuf));
	struct stat tst;
	int vparent, vfd, tfd;

	if (!mirror || store_versions_dir(s, dirfd, false, &vparent, NULL) < 0)
		return; /* no mirror of the parent: none of name */
	vfd = store_open_dir(vparent, mirror, O_PATH);
	if (vfd >= 0) {
		tfd = store_open_dir(dirfd, name, O_PATH);
		if (tfd >= 0 && fstat(tfd, &tst) == 0) {
			if (!mirror_is_of(vfd, tfd, &tst) || opens(vfd, tfd, &tst))
				mirror_aside(s, vparent, mirror, vfd);
		} else {
			mirror_freeze(vfd, gone);
			log_debug("%s: its directory is %s; its history is closed to all but its "
				  "owner",
				  mirror, gone ? "removed" : "moved");
		}
		if (tfd >= 0)
			close(tfd);
		close(vfd);
	}
	close(vparent);
}

/* The version vname in vdirfd keeps only the classes in keep. Not when the inode still has a
 * name in the tree (a hard link): its mode is that file's. */
static void restrict_version(int vdirfd, const char *vname, mode_t keep)
{
	int fd = openat(vdirfd, vname, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	char proc[64];

	if (fd < 0)
		return;
	if (links_fstatat(fd, "", &st, false) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 0 &&
	    (st.st_mode & 07777 & ~keep)) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		if (chmod(proc, st.st_mode & 07777 & keep) < 0)
			log_warn("cannot restrict %s", vname);
	}
	close(fd);
}

/* Every version of name in vdirfd loses the classes that cannot read cur. */
static void restrict_all(int vdirfd, const char *name, const struct stat *cur)
{
	char stored[NAMES_STORED_MAX + 1], vname[NAME_MAX + 1];
	const uint32_t *ns;
	uint32_t *copy;
	size_t cnt;
	struct stat st;

	names_stored(name, stored);
	if (history_get(vdirfd, stored, &ns, &cnt) < 0 || !cnt)
		return;
	if (!(copy = malloc(cnt * sizeof(*copy))))
		return;
	memcpy(copy, ns, cnt * sizeof(*copy));
	for (size_t i = 0; i < cnt; i++) {
		snprintf(vname, sizeof(vname), NAMES_VERSION_FMT, stored, copy[i]);
		if (fstatat(vdirfd, vname, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			restrict_version(vdirfd, vname, class_mask(st.st_uid, st.st_gid, cur, 4));
	}
	free(copy);
}

/* Does b let some class read that a did not (or has it another owner or group)? */
static bool grants_less(const struct stat *b, const struct stat *a)
{
	return b->st_uid != a->st_uid || b->st_gid != a->st_gid ||
	       (a->st_mode & 0444 & ~b->st_mode) != 0;
}

void store_kept_settle(struct store *s, int dirfd, const char *name, const struct store_change *ch)
{
	struct stat cur;
	int vdirfd;

	if (!ch->kept || fstatat(dirfd, name, &cur, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(cur.st_mode) || !grants_less(&cur, &ch->old))
		return; /* the usual case: nothing to take away */
	if (store_versions_dir(s, dirfd, false, &vdirfd, NULL) < 0)
		return;
	restrict_all(vdirfd, name, &cur);
	close(vdirfd);
}

int store_history_follow(struct store *s, int dirfd, const char *name)
{
	struct stat cur;
	int vdirfd, err;

	if (fstatat(dirfd, name, &cur, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(cur.st_mode))
		return 0;
	err = store_versions_dir(s, dirfd, false, &vdirfd, NULL);
	if (err)
		return err == -ENOENT ? 0 : err;
	restrict_all(vdirfd, name, &cur);
	close(vdirfd);
	return 0;
}

/* The directory of the file fd and its name there, as the kernel says it through
 * /proc/self/fd, checked to hold fd's inode: *dirfd (O_PATH) and name. */
static int file_place(struct store *s, int fd, int *dirfd, char *name, size_t len)
{
	char root[PATH_MAX], path[PATH_MAX], *slash, *save = NULL, *comp;
	struct stat a, b;
	ssize_t rl, pl;
	int cur, next;

	if ((rl = fd_path(s->rootfd, root, sizeof(root))) < 0)
		return (int)rl;
	if ((pl = fd_path(fd, path, sizeof(path))) < 0)
		return (int)pl;
	if (rl == 1) /* SOURCE is "/" */
		rl = 0;
	if (strncmp(path, root, rl) != 0 || path[rl] != '/' || strstr(path + rl, " (deleted)"))
		return -ENOENT;
	slash = strrchr(path + rl, '/');
	if (strlen(slash + 1) >= len || !slash[1])
		return -ENOENT;
	strcpy(name, slash + 1);
	*slash = 0;
	if ((cur = dup(s->rootfd)) < 0)
		return -errno;
	for (comp = strtok_r(path + rl, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
		next = store_open_dir(cur, comp, O_PATH);
		int err = next < 0 ? -errno : 0;
		close(cur);
		if (err)
			return err;
		cur = next;
	}
	if (fstat(fd, &a) < 0 || fstatat(cur, name, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
	    a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
		close(cur);
		return -ENOENT;
	}
	*dirfd = cur;
	return 0;
}

int store_history_acl_changed(struct store *s, int fd)
{
	char name[NAME_MAX + 1];
	struct stat cur;
	int dirfd, vdirfd, err = file_place(s, fd, &dirfd, name, sizeof(name));

	if (err)
		return err;
	/* entries are not compared one by one: the versions keep their owner's read only, as
	 * if the file were now 0400 (and with a mask of nothing, no named entry reads) */
	if (fstat(fd, &cur) == 0 && store_versions_dir(s, dirfd, false, &vdirfd, NULL) == 0) {
		cur.st_mode = S_IFREG | 0400;
		restrict_all(vdirfd, name, &cur);
		close(vdirfd);
	}
	close(dirfd);
	return 0;
}

int store_history_follow_fd(struct store *s, int fd)
{
	char name[NAME_MAX + 1];
	int dirfd, err = file_place(s, fd, &dirfd, name, sizeof(name));

	if (err) {
		errno = -err;
		log_warn("a file's mode or owner changed, but its name is not known: its versions "
			 "keep theirs");
		return err;
	}
	err = store_history_follow(s, dirfd, name);
	close(dirfd);
	return err;
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
	fremovexattr(fd, "system.posix_acl_access"); /* the base's own is copied below */
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

	if (s->nosync || s->batch)
		return 0;
	fd = store_open_dir(dirfd, ".", O_RDONLY);
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
