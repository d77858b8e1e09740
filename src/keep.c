/* keep.c - a replaced or removed file is kept as the next version of its path.
 *
 * Before a publish's rename, an rm or an mv over a name, the file at the name is hard-linked
 * into its versions directory as <name>.~N~, N one more than the newest (keep_version); the
 * oldest beyond `keep` go (retention.c). A publish is one rename of the synced staging copy
 * over the name (store_publish). Lacking space, unused old versions yield (space.c); a file
 * that still cannot be kept goes without a version, said in the log. Callers hold the store
 * lock. */
#define _GNU_SOURCE
#include "keep.h"
#include "history.h"
#include "links.h"
#include "log.h"
#include "names.h"
#include "space.h"
#include "store.h"
#include "retention.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A file whose name is shortened in its versions dir (names_stored) has its whole name
 * recorded there once, as "<stored>.~~" holding exactly the name: tools show and accept the
 * real name, and a second name with the same stored form (a SHA-256 prefix collision) is
 * refused instead of mixing its versions with the first one's. */
static int keep_record(struct store *s, int vdirfd, const char *stored, const char *name)
{
	char rec[NAMES_RECORD_MAX + 1], buf[NAME_MAX + 2];
	size_t len = strlen(name);
	ssize_t n;
	int fd;

	names_record_of(stored, strlen(stored), rec);
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

/* Link dirfd/name into vdirfd as <stored>.~N~, N from *next up: a number that another daemon
 * on the store (or a stray entry) took is passed over. ch->vname: the name linked. */
static int link_next(int dirfd, const char *name, int vdirfd, const char *stored, uint32_t *next,
		     struct store_change *ch)
{
	for (;; (*next)++) {
		/* (a stored name always fits: names_stored) */
		if (snprintf(ch->vname, sizeof(ch->vname), NAMES_VERSION_FMT, stored, *next) >=
		    (int)sizeof(ch->vname))
			return -ENAMETOOLONG;
		links_begin();
		int r = linkat(dirfd, name, vdirfd, ch->vname, 0);
		links_end(ch->old.st_ino, r == 0 ? 1 : 0);
		if (r == 0)
			return 0;
		if (errno != EEXIST || *next == UINT32_MAX)
			return errno == EEXIST ? -EOVERFLOW : -errno;
	}
}

/* Link the regular file at dirfd/name as its next version; the caller holds s->lock. */
static int keep_version(struct store *s, int dirfd, const char *name, struct store_change *ch)
{
	char *rel, stored[NAMES_STORED_MAX + 1];
	uint32_t *ns = NULL, next;
	size_t cnt = 0;
	int vdirfd, err;
	struct stat last;

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
	err = retention_list_versions(vdirfd, stored, &ns, &cnt);
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
	err = link_next(dirfd, name, vdirfd, stored, &next, ch);
	if (err)
		goto out;
	history_add(vdirfd, stored, next);
	err = set_vrel(ch, rel);
	if (err)
		goto out;
	uint32_t *nn = realloc(ns, (cnt + 1) * sizeof(*ns));
	if (nn) {
		ns = nn;
		ns[cnt++] = next;
		if (s->keep)
			retention_apply(s, vdirfd, rel, stored, ns, cnt, s->keep);
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

static int store_keep_version(struct store *s, int dirfd, const char *name, struct store_change *ch,
			      uid_t uid)
{
	int err = keep_version(s, dirfd, name, ch);

	if (no_space(err)) {
		space_yield(s, space_avail(s) + YIELD_STEP, uid, name);
		err = keep_version(s, dirfd, name, ch);
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
		       uid_t uid)
{
	struct stat st;

	if (space_short(s) && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode) && st.st_nlink == 1 &&
	    !space_yield(s, space_avail(s) + (uint64_t)st.st_blocks * 512, uid, name)) {
		log_warnx("%s: below the reserve; removed without keeping a version, to free its "
			  "space",
			  name);
		ch->old = st;
		ch->kept = false;
		ch->dropped = true;
		return 0;
	}
	return store_keep_version(s, dirfd, name, ch, uid);
}

/* Publish found the name gone (removed while being written): the new content, linked in
 * staging as tmp, becomes the next version of the name rather than resurrect it. */
static int publish_orphan(struct store *s, int dirfd, const char *name, const char *tmp, int stfd,
			  struct store_change *ch, uid_t uid)
{
	char *rel = NULL, stored[NAMES_STORED_MAX + 1];
	bool shortened = names_stored(name, stored), yielded = false;
	uint32_t *ns = NULL, next;
	size_t cnt = 0;
	struct stat cst;
	int vdirfd, err;

	err = store_versions_dir(s, dirfd, true, &vdirfd, &rel);
	if (err)
		goto fail;
	if (shortened)
		err = keep_record(s, vdirfd, stored, name);
	if (!err)
		err = retention_list_versions(vdirfd, stored, &ns, &cnt);
	if (!err && cnt && ns[cnt - 1] == UINT32_MAX)
		err = -EOVERFLOW;
	if (!err && fstat(stfd, &cst) < 0)
		err = -errno;
	/* NOREPLACE: another daemon on the store may have taken the number */
	for (next = cnt ? ns[cnt - 1] + 1 : 1; !err; next++) {
		snprintf(ch->vname, sizeof(ch->vname), NAMES_VERSION_FMT, stored, next);
		links_begin();
		int r = renameat2(s->stagefd, tmp, vdirfd, ch->vname, RENAME_NOREPLACE);
		links_end(cst.st_ino, r == 0 ? 1 : 0);
		if (r == 0)
			break;
		if (no_space(-errno) && !yielded) {
			/* a directory block: versions yield it; same N */
			yielded = true;
			space_yield(s, space_avail(s) + YIELD_STEP, uid, name);
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
fail:
	if (err)
		unlinkat(s->stagefd, tmp, 0);
	return err;
}

/* Publish the staging file stfd at dirfd/name with one rename; the replaced file becomes the
 * next version. The caller has synced stfd and holds s->lock. */
int store_publish(struct store *s, int dirfd, const char *name, int stfd, struct store_change *ch,
		  uid_t uid)
{
	char tmp[64], proc[64];
	int err;

	memset(ch, 0, sizeof(*ch));
	snprintf(tmp, sizeof(tmp), "p%d.%llu", getpid(), (unsigned long long)s->seq++);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", stfd);
	if (linkat(AT_FDCWD, proc, s->stagefd, tmp, AT_SYMLINK_FOLLOW) < 0) {
		if (!no_space(-errno))
			return -errno;
		space_yield(s, space_avail(s) + YIELD_STEP, uid, name);
		if (linkat(AT_FDCWD, proc, s->stagefd, tmp, AT_SYMLINK_FOLLOW) < 0)
			return -errno;
	}
	err = store_keep_version(s, dirfd, name, ch, uid);
	if (err == -ENOENT)
		return publish_orphan(s, dirfd, name, tmp, stfd, ch, uid);
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
	store_kept_settle(s, dirfd, name, ch);
	err = store_sync_dir(s, dirfd);
	space_keep_reserve(s, uid);
	return err;
}
