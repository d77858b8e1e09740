/* release.c - a release: every change under a directory DIR held until one commit makes them
 * all current at one instant (docs/design.md §13).
 *
 * While a release is open on DIR, the backing tree under DIR does not change for the names it
 * holds: a writer's publish links its copy into the release's directory
 * (.versions/.binvfs-staging/R<name>/h<N>), an rm or mv records what it will do, and
 * everyone, the writer included, keeps seeing the files as they were. The release keeps one
 * entry per name it changes: PLACE (the held file h<N> goes to the name) or REMOVE (the file
 * now at the name, inode `ino`, goes). A new file made by CREATE is written in place as
 * usual (its creator needs it; nobody had it before): it is remembered, an mv of it moves it
 * into the release (so rsync's temporary files disappear at their rename, as the kernel
 * expects), and an abort removes what is left of it.
 *
 * Commit: lookups under DIR wait (the `walk` lock, taken for reading by LOOKUP, for writing by
 * the commit); the store lock is taken; an intent record listing every entry is written and
 * synced (the commit point: after it, the next mount rolls the release forward, before it,
 * back); the entries are applied, each replaced or removed file kept as a version as usual;
 * the store is synced once; the record goes. Entries are idempotent, so a replay after a
 * crash in the middle redoes what is left (docs/format.md, Releases).
 *
 * The kernel's caches: during the release every LOOKUP under DIR is answered uncached (entry
 * timeout 0), and each name a change is held for is invalidated at once (from the
 * invalidation thread: the handler's caller holds the directory's lock), so at the commit no
 * entry of an affected name is cached: the first walk after it asks again.
 *
 * Lock order: walk -> store -> mu (-> the node table). */
#define _GNU_SOURCE
#include "release.h"
#include "fs.h"
#include "links.h"
#include "locks.h"
#include "log.h"
#include "procfs.h"
#include "keep.h"
#include "inval.h"
#include "versions.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define INTENT	   "intent"
#define INTENT_TMP "intent.tmp"

/* E_MOVED: removed by an mv away (the file lives on at its new name: no version of it);
 * E_NEW: a file made in place within the release (CREATE), added to the entries at the commit
 * for the history record only (applying it changes nothing) */
enum { E_PLACE = 'P', E_REMOVE = 'R', E_MOVED = 'M', E_NEW = 'N' };

struct rentry {
	struct rentry *next;
	int kind;
	struct node *dnode; /* its directory (a ref), NULL in a recovery */
	char *dir;	    /* the directory's path below SOURCE, "" for the root */
	char *name;
	char hold[24];		/* E_PLACE: the held file in the release directory */
	unsigned long long ino; /* E_REMOVE: the file at the name when the rm was held */
	/* E_PLACE: the file at the name when the commit began (0: none), for the history
	 * record of a commit replayed at mount */
	unsigned long long oldino;
};

struct rcreated {
	struct rcreated *next;
	struct node *dnode; /* a ref */
	char *name;
	ino_t ino;
	pid_t sid; /* its creator's session: only that session sees it before the commit */
};

static pthread_rwlock_t walk;
static pthread_once_t walk_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static bool active; /* rels != NULL: written holding walk (write), the store lock and mu;
		     * read atomically */

/* One open release. The list is changed holding walk (write), the store lock and mu; read
 * holding walk (read) or mu. Releases cover disjoint trees: none's DIR is another's or
 * below it (begin: EBUSY). */
struct release {
	struct release *next;
	char name[72];
	char rdir[80]; /* R<name> in .binvfs-staging */
	int rfd;       /* that directory, flock()ed while open */
	char *dir;     /* DIR below SOURCE */
	dev_t ddev;
	ino_t dino;
	uid_t uid;
	time_t started;
	struct rentry *entries, **tail;
	struct rcreated *created;
	unsigned seq;
};
static struct release *rels;

static void walk_init(void)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
	/* a stream of lookups must not starve a commit */
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&walk, &a);
	pthread_rwlockattr_destroy(&a);
}

static bool is_active(void)
{
	return __atomic_load_n(&active, __ATOMIC_ACQUIRE);
}

/* Is path (below SOURCE) dir or below it? */
static bool path_under(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	if (!len)
		return true;
	return !strncmp(path, dir, len) && (path[len] == 0 || path[len] == '/');
}

/* The path of directory d if an open release covers it (malloc'd; *rp gets the release),
 * else NULL. Caller holds walk or mu. */
static char *covered(struct node *d, struct release **rp)
{
	char *p;

	if (!active || d->kind != NODE_DIR || d->in_versions)
		return NULL;
	p = node_dir_path(d->dev, d->ino);
	for (struct release *r = p ? rels : NULL; r; r = r->next)
		if (path_under(p, r->dir)) {
			if (rp)
				*rp = r;
			return p;
		}
	free(p);
	return NULL;
}

bool release_walk_begin(struct node *dir)
{
	char *p;

	if (!is_active())
		return false;
	pthread_once(&walk_once, walk_init);
	pthread_rwlock_rdlock(&walk);
	p = covered(dir, NULL);
	if (p) {
		free(p);
		return true;
	}
	pthread_rwlock_unlock(&walk);
	return false;
}

void release_walk_end(void)
{
	pthread_rwlock_unlock(&walk);
}

static struct rentry *find_entry(struct release *R, const char *dir, const char *name)
{
	for (struct rentry *e = R->entries; e; e = e->next)
		if (!strcmp(e->name, name) && !strcmp(e->dir, dir))
			return e;
	return NULL;
}

static struct rentry *new_entry(struct release *R, struct node *dnode, char *dir, const char *name)
{
	struct rentry *e = calloc(1, sizeof(*e));

	if (!e || !(e->name = strdup(name)) || !(e->dir = strdup(dir))) {
		if (e)
			free(e->name);
		free(e);
		return NULL;
	}
	e->dnode = dnode;
	if (dnode)
		node_ref(dnode);
	*R->tail = e;
	R->tail = &e->next;
	return e;
}

/* An entry that changes nothing any more (a file made and removed within the release). */
static void drop_entry(struct release *R, struct rentry *x, struct node ***unrefs, size_t *nunrefs)
{
	for (struct rentry **pp = &R->entries; *pp; pp = &(*pp)->next) {
		if (*pp != x)
			continue;
		*pp = x->next;
		if (R->tail == &x->next)
			R->tail = pp;
		break;
	}
	if (x->dnode) /* unref'd once the locks are dropped (it may run a deferred prune) */
		(*unrefs)[(*nunrefs)++] = x->dnode;
	free(x->dir);
	free(x->name);
	free(x);
}

static struct rcreated **find_created(struct release *R, struct node *d, const char *name,
				      ino_t ino)
{
	for (struct rcreated **pp = &R->created; *pp; pp = &(*pp)->next)
		if ((*pp)->dnode == d && (*pp)->ino == ino && !strcmp((*pp)->name, name))
			return pp;
	return NULL;
}

static void next_hold(struct release *R, char *buf, size_t len)
{
	snprintf(buf, len, "h%u", ++R->seq);
}

/* The kernel may hold dir/name from before: drop it (queued: the caller's caller may hold the
 * directory's lock); no LOOKUP under DIR is cached while the release is open. */
static void forget_name(struct node *dir, const char *name)
{
	inval_name_changed_queued(dir, name);
}

/* Take the locks of a hold; NULL (nothing taken) if no open release covers dir. */
static char *hold_lock(struct node *dir, struct release **rp)
{
	char *p;

	if (!is_active())
		return NULL;
	store_lock(&fs.store);
	pthread_mutex_lock(&mu);
	p = covered(dir, rp);
	if (!p) {
		pthread_mutex_unlock(&mu);
		store_unlock(&fs.store);
	}
	return p;
}

static void hold_unlock(char *p, struct node **unrefs, size_t n)
{
	pthread_mutex_unlock(&mu);
	store_unlock(&fs.store);
	free(p);
	for (size_t i = 0; i < n; i++)
		node_unref(unrefs[i]);
}

int release_hold_publish(struct node *dir, const char *name, int fd)
{
	struct release *R = NULL;
	char proc[64], hold[24], *p = hold_lock(dir, &R);
	struct node *unrefs[1], **up = unrefs;
	size_t nun = 0;
	struct rentry *e;
	int err = 0;

	if (!p)
		return RELEASE_NOT_HELD;
	next_hold(R, hold, sizeof(hold));
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, proc, R->rfd, hold, AT_SYMLINK_FOLLOW) < 0)
		err = -errno;
	e = err ? NULL : find_entry(R, p, name);
	if (!err && !e && !(e = new_entry(R, dir, p, name)))
		err = -ENOMEM;
	if (err) {
		unlinkat(R->rfd, hold, 0);
	} else {
		if (e->kind == E_PLACE)
			unlinkat(R->rfd, e->hold, 0); /* a later write of the name wins */
		e->kind = E_PLACE;
		strcpy(e->hold, hold);
		log_info("release %s: publish of %s%s%s held", R->name, p, *p ? "/" : "", name);
		inval_gen_bump();
	}
	hold_unlock(p, up, nun);
	/* The kernel may hold dir/name from before the begin (a writer that opened the file
	 * before it walks no name now): dropped before the writer's close returns, so a commit
	 * that follows finds nothing of it cached. At once, as a publish does: FLUSH and RELEASE
	 * hold no directory lock, and no lock of ours is held now. */
	if (!err)
		inval_entry_now(node_id(dir), name);
	return err;
}

int release_hold_unlink(struct node *dir, const char *name)
{
	struct release *R = NULL;
	char *p = hold_lock(dir, &R);
	struct node *unrefs[2], **up = unrefs;
	size_t nun = 0;
	struct rcreated **cp;
	struct rentry *e;
	struct stat st;
	int err = 0, dfd;

	if (!p)
		return RELEASE_NOT_HELD;
	dfd = node_fd(dir);
	e = find_entry(R, p, name);
	if (dfd < 0 || fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		err = dfd < 0 ? -errno : -errno;
		if (err == -ENOENT && e && e->kind == E_PLACE) {
			unlinkat(R->rfd, e->hold, 0); /* a name the release was to add */
			drop_entry(R, e, &up, &nun);
			err = 0;
		}
	} else if (S_ISDIR(st.st_mode)) {
		err = -EISDIR;
	} else if ((cp = find_created(R, dir, name, st.st_ino))) {
		/* made within the release: nobody had it before, it goes now */
		struct rcreated *c = *cp;
		if (unlinkat(dfd, name, 0) < 0) {
			err = -errno;
		} else {
			*cp = c->next;
			unrefs[nun++] = c->dnode;
			free(c->name);
			free(c);
		}
	} else if (!e && !(e = new_entry(R, dir, p, name))) {
		err = -ENOMEM;
	} else {
		if (e->kind == E_PLACE)
			unlinkat(R->rfd, e->hold, 0);
		e->kind = E_REMOVE;
		e->ino = st.st_ino;
		log_info("release %s: rm of %s%s%s held", R->name, p, *p ? "/" : "", name);
		forget_name(dir, name);
	}
	hold_unlock(p, up, nun);
	return err;
}

int release_hold_rename(struct node *dir, const char *name, struct node *ndir, const char *newname,
			unsigned flags)
{
	struct release *R = NULL, *R2 = NULL;
	char hold[24], *p = NULL, *np = NULL;
	struct node *unrefs[3], **up = unrefs;
	size_t nun = 0;
	struct rentry *se, *de;
	struct rcreated **cp = NULL;
	struct stat sst, dst;
	bool src_there, dst_there;
	int err = 0, sfd, dfd;

	if (!is_active())
		return RELEASE_NOT_HELD;
	store_lock(&fs.store);
	pthread_mutex_lock(&mu);
	p = covered(dir, &R);
	np = covered(ndir, &R2);
	if (!p && !np) {
		pthread_mutex_unlock(&mu);
		store_unlock(&fs.store);
		return RELEASE_NOT_HELD;
	}
	if (!p || !np || R != R2) {
		err = -EXDEV; /* into or out of a release: mv copies and removes, each held */
		goto out;
	}
	if (flags & (RENAME_EXCHANGE | RENAME_WHITEOUT)) {
		err = -EINVAL;
		goto out;
	}
	sfd = node_fd(dir);
	dfd = node_fd(ndir);
	if (sfd < 0 || dfd < 0) {
		err = -errno;
		goto out;
	}
	src_there = fstatat(sfd, name, &sst, AT_SYMLINK_NOFOLLOW) == 0;
	dst_there = fstatat(dfd, newname, &dst, AT_SYMLINK_NOFOLLOW) == 0;
	se = find_entry(R, p, name);
	de = find_entry(R, np, newname);
	if (!src_there && !(se && se->kind == E_PLACE)) {
		err = -ENOENT;
		goto out;
	}
	if ((src_there && S_ISDIR(sst.st_mode)) || (dst_there && S_ISDIR(dst.st_mode))) {
		err = src_there && S_ISDIR(sst.st_mode) ? -EXDEV : -EISDIR;
		goto out;
	}
	if ((flags & RENAME_NOREPLACE) &&
	    ((dst_there && !(de && de->kind != E_PLACE)) || (de && de->kind == E_PLACE))) {
		err = -EEXIST;
		goto out;
	}
	/* what the new name gets */
	if (se && se->kind == E_PLACE) {
		strcpy(hold, se->hold); /* the release's own new content of the name moves on */
		if (src_there) {
			se->kind = E_REMOVE;
			se->ino = sst.st_ino;
		} else {
			drop_entry(R, se, &up, &nun);
			se = NULL;
		}
	} else if ((cp = find_created(R, dir, name, sst.st_ino))) {
		/* made within the release (rsync's temporary file): into the release */
		struct rcreated *c = *cp;
		int fd;
		next_hold(R, hold, sizeof(hold));
		if (renameat(sfd, name, R->rfd, hold) < 0) {
			err = -errno;
			goto out;
		}
		if (!fs.store.nosync &&
		    (fd = openat(R->rfd, hold, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) >=
			0) {
			fdatasync(fd);
			close(fd);
		}
		*cp = c->next;
		unrefs[nun++] = c->dnode;
		free(c->name);
		free(c);
	} else {
		/* a file from before: it stays at its name until the commit */
		next_hold(R, hold, sizeof(hold));
		if (linkat(sfd, name, R->rfd, hold, 0) < 0) {
			err = -errno;
			goto out;
		}
		if (!se && !(se = new_entry(R, dir, p, name))) {
			unlinkat(R->rfd, hold, 0);
			err = -ENOMEM;
			goto out;
		}
		se->kind = E_MOVED;
		se->ino = sst.st_ino;
	}
	if (!de && !(de = new_entry(R, ndir, np, newname))) {
		err = -ENOMEM; /* (what was done for the source stays: the name is kept) */
		unlinkat(R->rfd, hold, 0);
		goto out;
	}
	if (de->kind == E_PLACE)
		unlinkat(R->rfd, de->hold, 0);
	de->kind = E_PLACE;
	strcpy(de->hold, hold);
	log_info("release %s: mv %s%s%s -> %s%s%s held", R->name, p, *p ? "/" : "", name, np,
		 *np ? "/" : "", newname);
	forget_name(dir, name);
	forget_name(ndir, newname);
out:
	pthread_mutex_unlock(&mu);
	store_unlock(&fs.store);
	free(p);
	free(np);
	for (size_t i = 0; i < nun; i++)
		node_unref(unrefs[i]);
	return err;
}

pid_t release_sid(pid_t tid)
{
	char buf[512], *rp;
	int ppid, pgrp, sid;

	if (procfs_read(tid, "stat", buf, sizeof(buf)) <= 0)
		return -1;
	rp = strrchr(buf, ')'); /* the command may hold anything but ends at the last ')' */
	if (!rp || sscanf(rp + 1, " %*c %d %d %d", &ppid, &pgrp, &sid) != 3)
		return -1;
	return (pid_t)sid; /* 0 too: the session of programs started by an init that made none */
}

bool release_created_sid(struct node *dir, const char *name, pid_t *sid)
{
	bool found = false;

	if (!is_active() || dir->kind != NODE_DIR)
		return false;
	pthread_mutex_lock(&mu);
	for (struct release *r = rels; r && !found; r = r->next)
		for (struct rcreated *c = r->created; c && !found; c = c->next)
			if (c->dnode == dir && !strcmp(c->name, name)) {
				*sid = c->sid;
				found = true;
			}
	pthread_mutex_unlock(&mu);
	return found;
}

bool release_is_created(struct node *dir, const char *name, ino_t ino)
{
	bool found = false;

	if (!is_active() || dir->kind != NODE_DIR)
		return false;
	pthread_mutex_lock(&mu);
	for (struct release *r = rels; r && !found; r = r->next)
		found = find_created(r, dir, name, ino) != NULL;
	pthread_mutex_unlock(&mu);
	return found;
}

bool release_active(void)
{
	return is_active();
}

void release_note_created(struct node *dir, const char *name, ino_t ino, pid_t tid)
{
	struct release *R = NULL;
	struct rcreated *c;
	pid_t sid;
	char *p;

	if (!is_active())
		return;
	sid = release_sid(tid);
	pthread_mutex_lock(&mu);
	p = covered(dir, &R);
	if (p && (c = calloc(1, sizeof(*c))) && (c->name = strdup(name))) {
		c->dnode = dir;
		node_ref(dir);
		c->ino = ino;
		c->sid = sid;
		c->next = R->created;
		R->created = c;
	} else if (p && c) {
		free(c);
	}
	pthread_mutex_unlock(&mu);
	free(p);
}

/* ---- the old release, for its own programs ----
 *
 * A program of the old release that is still loading its libraries at the commit (its exec
 * resolved the old binary, its loader asks for the libraries after) would get the new
 * libraries: the one mix lookups alone cannot prevent. So for RELEASE_OLD_MS after a commit,
 * a LOOKUP of a name the release changed, by a thread whose /proc/TID/exe is a file the
 * release replaced or removed, is answered the old file (from .versions/), or no file for a
 * name the release added: a program of the old release keeps its release while it loads.
 * Everyone else gets the new files. */
#define RELEASE_OLD_MS 10000

struct oldent {
	struct node *dnode; /* a ref */
	char *name;
	char *vrel; /* the old file below .versions/, NULL: the name did not exist */
	ino_t ino;
};

static pthread_mutex_t old_mu = PTHREAD_MUTEX_INITIALIZER;
static struct oldent *olds; /* old_mu */
static size_t nolds, capolds;
static struct timespec old_until;
static bool have_old;	/* atomic hint */
static pid_t *old_pids; /* the processes that existed at the commit, sorted (old_mu) */
static size_t nold_pids;
static unsigned long old_answers; /* old_mu */

/* old_mu held */
static void old_add(const struct rentry *e, const struct store_change *ch, bool there)
{
	if (!e->dnode || e->kind == E_MOVED || e->kind == E_NEW ||
	    (there && (!ch->kept || !ch->vrel)))
		return; /* no old file to answer (dropped for space; or moved: it lives on) */
	if (nolds == capolds) {
		struct oldent *nv =
		    realloc(olds, (capolds = capolds ? 2 * capolds : 256) * sizeof(*olds));
		if (!nv)
			return;
		olds = nv;
	}
	struct oldent *o = &olds[nolds];
	o->name = strdup(e->name);
	o->vrel = there ? strdup(ch->vrel) : NULL;
	if (!o->name || (there && !o->vrel)) {
		free(o->name);
		free(o->vrel);
		return;
	}
	o->ino = there ? ch->old.st_ino : 0;
	o->dnode = e->dnode;
	node_ref(e->dnode);
	nolds++;
}

static int pid_cmp(const void *a, const void *b)
{
	pid_t x = *(const pid_t *)a, y = *(const pid_t *)b;

	return x < y ? -1 : x > y;
}

/* The processes there are now: only those can be programs of the old release (a process
 * started after the commit is not, whatever its exe). old_mu held. */
static void old_scan_pids(void)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	size_t cap = 0;

	nold_pids = 0;
	while (d && (de = readdir(d))) {
		char *end;
		long v = strtol(de->d_name, &end, 10);
		if (*end || v <= 0)
			continue;
		if (nold_pids == cap) {
			pid_t *nv = realloc(old_pids, (cap = cap ? 2 * cap : 1024) * sizeof(pid_t));
			if (!nv)
				break;
			old_pids = nv;
		}
		old_pids[nold_pids++] = (pid_t)v;
	}
	if (d)
		closedir(d);
	qsort(old_pids, nold_pids, sizeof(pid_t), pid_cmp);
}

/* old_mu held */
static void old_start(void)
{
	old_scan_pids();
	clock_gettime(CLOCK_MONOTONIC, &old_until);
	old_until.tv_sec += RELEASE_OLD_MS / 1000;
	__atomic_store_n(&have_old, nolds > 0, __ATOMIC_RELEASE);
}

/* Forget the old release (its refs are dropped: call holding no store or table lock... the
 * unref of a directory node runs no deferred prune: directories have none). */
static void old_reset(void)
{
	pthread_mutex_lock(&old_mu);
	if (old_answers)
		log_info("the last release's old files were answered %lu times to its programs "
			 "still loading",
			 old_answers);
	old_answers = 0;
	for (size_t i = 0; i < nolds; i++) {
		node_unref(olds[i].dnode);
		free(olds[i].name);
		free(olds[i].vrel);
	}
	nolds = 0;
	free(old_pids);
	old_pids = NULL;
	nold_pids = 0;
	__atomic_store_n(&have_old, false, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&old_mu);
}

int release_old_lookup(struct node *parent, const char *name, pid_t tid, struct node **np,
		       struct stat *st)
{
	char proc[64];
	struct stat exe;
	struct timespec now;
	int ret = 1;

	if (!__atomic_load_n(&have_old, __ATOMIC_ACQUIRE) || !tid || parent->kind != NODE_DIR)
		return 1;
	pthread_mutex_lock(&old_mu);
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec > old_until.tv_sec ||
	    (now.tv_sec == old_until.tv_sec && now.tv_nsec > old_until.tv_nsec)) {
		pthread_mutex_unlock(&old_mu);
		old_reset();
		return 1;
	}
	struct oldent *hit = NULL;
	for (size_t i = 0; i < nolds && !hit; i++)
		if (olds[i].dnode == parent && !strcmp(olds[i].name, name))
			hit = &olds[i];
	if (!hit || !bsearch(&tid, old_pids, nold_pids, sizeof(pid_t), pid_cmp))
		goto out;
	snprintf(proc, sizeof(proc), "/proc/%d/exe", (int)tid);
	if (stat(proc, &exe) < 0)
		goto out;
	bool old_prog = false;
	for (size_t i = 0; i < nolds && !old_prog; i++)
		old_prog = olds[i].vrel && olds[i].ino == exe.st_ino;
	if (!old_prog)
		goto out;
	*np = NULL;
	ret = 0;
	if (hit->vrel) {
		if (fstatat(fs.store.vfd, hit->vrel, st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !(*np = node_lookup_at(parent, name, st, false, fs.store.vfd, hit->vrel)))
			ret = 1; /* gone (pruned): the new file */
	}
	if (!ret)
		old_answers++;
	if (!ret)
		log_info("lookup %s by %d (exe inode %llu), a program of the old release: its old "
			 "file",
			 name, (int)tid, (unsigned long long)exe.st_ino);
out:
	pthread_mutex_unlock(&old_mu);
	return ret;
}

/* ---- commit, abort, recovery ---- */

static int open_beneath(int rootfd, const char *path)
{
	struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
			       .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
					  RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV};

	return (int)syscall(SYS_openat2, rootfd, *path ? path : ".", &how, sizeof(how));
}

/* Apply one entry; idempotent (a replay after a crash redoes only what is left): *already
 * says it was done before. *newino: the file a place put at the name. */
static int apply_one(struct store *s, int rfd, const struct rentry *e, uid_t uid,
		     struct store_change *ch, bool *was_there, bool *already,
		     unsigned long long *newino)
{
	struct stat st;
	int dfd = open_beneath(s->rootfd, e->dir), err = 0;

	memset(ch, 0, sizeof(*ch));
	*was_there = true;
	*already = false;
	*newino = 0;
	if (dfd < 0)
		return -errno;
	if (e->kind == E_PLACE) {
		if (fstatat(rfd, e->hold, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			*already = true; /* placed already */
			if (fstatat(dfd, e->name, &st, AT_SYMLINK_NOFOLLOW) == 0)
				*newino = st.st_ino;
			goto out;
		}
		*newino = st.st_ino;
		err = store_keep_removed(s, dfd, e->name, ch, uid);
		if (err == -ENOENT) {
			err = 0; /* a new name */
			*was_there = false;
		}
		/* the file's locks go with its name to the new version, as at a publish (a
		 * recovery has none: no daemon served the file since) */
		bool locked = !err && e->dnode && S_ISREG(ch->old.st_mode);
		if (locked)
			locks_published(ch->old.st_dev, ch->old.st_ino, st.st_dev, st.st_ino,
					node_held(ch->old.st_dev, ch->old.st_ino));
		if (!err) {
			links_begin();
			err = renameat(rfd, e->hold, dfd, e->name) < 0 ? -errno : 0;
			links_end(0, 0);
		}
		if (err && locked)
			locks_unpublished(ch->old.st_dev, ch->old.st_ino, st.st_dev, st.st_ino);
		if (!err)
			store_kept_settle(s, dfd, e->name, ch);
	} else if (e->kind == E_NEW) {
		*was_there = false;
		if (fstatat(dfd, e->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    (unsigned long long)st.st_ino == e->ino)
			*newino = st.st_ino; /* still there: an addition of the release */
	} else {
		if (fstatat(dfd, e->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    (unsigned long long)st.st_ino != e->ino) {
			*already = true; /* removed already */
			goto out;
		}
		if (e->kind == E_REMOVE)
			err = store_keep_removed(s, dfd, e->name, ch, uid);
		if (!err && unlinkat(dfd, e->name, 0) < 0)
			err = -errno;
	}
out:
	close(dfd);
	return err;
}

static int sync_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), err = 0;

	if (fd < 0 || fsync(fd) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	return err;
}

/* The header of an intent record (format 2; format 1 had none: no history record). */
struct rhead {
	unsigned id; /* the history record's id; 0: none */
	char name[72];
	char *dir;
	long long begun;
	uid_t uid;
};

/* The intent record: "binvfs release 2\n", then five fields (the history record's id, the
 * release's name, DIR, begin time, begin uid), then per entry KIND, DIR, NAME, HOLD-or-INO,
 * OLDINO, each field NUL-terminated (names may hold any byte but NUL). */
static int write_intent(struct store *s, struct release *R, unsigned id)
{
	FILE *f;
	int fd, err = 0, rfd = R->rfd;

	fd = openat(rfd, INTENT_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		return -errno;
	}
	fprintf(f, "binvfs release 2\n%u%c%s%c%s%c%lld%c%u%c", id, 0, R->name, 0, R->dir, 0,
		(long long)R->started, 0, (unsigned)R->uid, 0);
	for (struct rentry *e = R->entries; e; e = e->next) {
		fprintf(f, "%c%c%s%c%s%c", e->kind, 0, e->dir, 0, e->name, 0);
		if (e->kind == E_PLACE)
			fprintf(f, "%s%c", e->hold, 0);
		else
			fprintf(f, "%llu%c", e->ino, 0);
		fprintf(f, "%llu%c", e->kind == E_PLACE ? e->oldino : 0, 0);
	}
	if (fflush(f) != 0 || ferror(f))
		err = -(errno ? errno : EIO);
	if (!err && !s->nosync && fsync(fileno(f)) < 0)
		err = -errno;
	fclose(f);
	/* the held files' names are durable before the record that points to them */
	if (!err && !s->nosync)
		err = sync_dir(rfd);
	if (!err && renameat(rfd, INTENT_TMP, rfd, INTENT) < 0) /* the commit point */
		err = -errno;
	if (!err && !s->nosync)
		err = sync_dir(rfd);
	return err;
}

/* ---- the history of releases: .versions/.binvfs-releases/<id> (docs/format.md) ---- */

struct rec {
	char *buf;
	size_t len, cap;
	bool oom;
	unsigned changed, added, removed;
};

static void rec_field(struct rec *b, const char *v)
{
	size_t n = strlen(v) + 1;

	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *nb = realloc(b->buf, cap);
		if (!nb) {
			b->oom = true;
			return;
		}
		b->buf = nb;
		b->cap = cap;
	}
	memcpy(b->buf + b->len, v, n);
	b->len += n;
}

static void rec_num(struct rec *b, unsigned long long v)
{
	char n[24];

	snprintf(n, sizeof(n), "%llu", v);
	rec_field(b, n);
}

static void rec_head(struct rec *b, const struct rhead *h, long long committed, uid_t cuid)
{
	static const char magic[] = "binvfs release record 1\n";

	b->len = 0;
	if (!b->oom && b->cap < sizeof(magic)) {
		free(b->buf);
		b->buf = malloc(b->cap = 4096);
		b->oom = !b->buf;
	}
	if (!b->oom) {
		memcpy(b->buf, magic, sizeof(magic) - 1);
		b->len = sizeof(magic) - 1;
	}
	rec_num(b, h->id);
	rec_field(b, h->name);
	rec_field(b, h->dir);
	rec_num(b, (unsigned long long)h->begun);
	rec_num(b, (unsigned long long)committed);
	rec_num(b, h->uid);
	rec_num(b, cuid);
}

/* One change: C (a name replaced; VREL its old file's version), A (added), D (removed; VREL
 * its version), M (moved away: the file lives on at the name of the C or A entry with the
 * same inode); INO: the file now at the name (C, A), or the one that left it (D, M). */
static void rec_entry(struct rec *b, const struct rentry *e, bool there, const char *vrel,
		      unsigned long long newino)
{
	char kind[2] = {0, 0};

	if (e->kind == E_NEW && !newino)
		return; /* made and gone again within the release */
	kind[0] = e->kind == E_NEW	? 'A'
		  : e->kind == E_PLACE	? (there ? 'C' : 'A')
		  : e->kind == E_REMOVE ? 'D'
					: 'M';
	rec_field(b, kind);
	rec_field(b, e->dir);
	rec_field(b, e->name);
	rec_field(b, vrel ? vrel : "");
	rec_num(b, e->kind == E_PLACE ? newino : e->ino);
	if (kind[0] == 'C')
		b->changed++;
	else if (kind[0] == 'A')
		b->added++;
	else
		b->removed++;
}

static int records_dir(struct store *s)
{
	if (mkdirat(s->vfd, STORE_RELEASES, 0755) < 0 && errno != EEXIST)
		return -errno;
	return openat(s->vfd, STORE_RELEASES, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* The next record's id: one past the highest there is. Store lock held. */
static unsigned next_record_id(struct store *s)
{
	int fd = records_dir(s);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	unsigned max = 0;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	while ((de = readdir(d))) {
		char *end;
		unsigned long v = strtoul(de->d_name, &end, 10);
		if (de->d_name[0] >= '1' && de->d_name[0] <= '9' && !*end && v > max &&
		    v < UINT_MAX)
			max = (unsigned)v;
	}
	closedir(d);
	return max + 1;
}

/* Write record id (not synced: the caller syncs the store after); readable by the classes
 * that may list DIR (read and search), owned by DIR's owner and group. */
static void write_record(struct store *s, struct rec *b, unsigned id, const char *dir)
{
	char tmp[32], name[16];
	struct stat st;
	int rd = -1, fd = -1, dfd = open_beneath(s->rootfd, dir);
	mode_t mode = 0;
	ssize_t n;

	if (!id || b->oom) {
		errno = ENOMEM;
		goto fail;
	}
	if (dfd < 0 || fstat(dfd, &st) < 0 || (rd = records_dir(s)) < 0)
		goto fail;
	for (int sh = 0; sh <= 6; sh += 3)
		if (((st.st_mode >> sh) & 5) == 5)
			mode |= (mode_t)(4 << sh);
	snprintf(tmp, sizeof(tmp), "%u.tmp", id);
	snprintf(name, sizeof(name), "%u", id);
	fd = openat(rd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || (n = write(fd, b->buf, b->len)) != (ssize_t)b->len ||
	    fchown(fd, st.st_uid, st.st_gid) < 0 || fchmod(fd, mode) < 0 ||
	    renameat(rd, tmp, rd, name) < 0) {
		if (fd >= 0)
			unlinkat(rd, tmp, 0);
		goto fail;
	}
	close(fd);
	close(rd);
	close(dfd);
	return;
fail:
	log_warn("release record %u of /%s not written (the release is committed; it is "
		 "missing from binvfsctl releases)",
		 id, dir);
	if (fd >= 0)
		close(fd);
	if (rd >= 0)
		close(rd);
	if (dfd >= 0)
		close(dfd);
}

/* Does record id exist? */
static bool record_exists(struct store *s, unsigned id)
{
	char name[40];
	struct stat st;

	snprintf(name, sizeof(name), "%s/%u", STORE_RELEASES, id);
	return fstatat(s->vfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* A replay found an entry done before the crash: the version kept of dir/name then, by its
 * inode (malloc'd, below .versions/), or NULL. */
static char *find_kept(struct store *s, const char *dir, const char *name, unsigned long long ino)
{
	char stored[NAMES_STORED_MAX + 1], *rel = NULL, *out = NULL;
	int dfd = open_beneath(s->rootfd, dir), vfd = -1;
	DIR *d = NULL;
	struct dirent *de;

	if (!ino || dfd < 0 || store_versions_dir(s, dfd, false, &vfd, &rel) < 0)
		goto out;
	names_stored(name, stored);
	int rd = openat(vfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* vfd is O_PATH */
	d = rd >= 0 ? fdopendir(rd) : NULL;
	if (!d) {
		if (rd >= 0)
			close(rd);
		goto out;
	}
	while (!out && (de = readdir(d)))
		if (de->d_ino == ino && names_version_of(de->d_name, stored))
			out = store_join(rel, de->d_name);
out:
	if (d)
		closedir(d);
	if (vfd >= 0)
		close(vfd);
	if (dfd >= 0)
		close(dfd);
	free(rel);
	return out;
}

static void empty_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(dirfd, de->d_name, 0);
	closedir(d);
}

static double ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void free_all(struct rentry *es, struct rcreated *cs)
{
	while (es) {
		struct rentry *n = es->next;
		if (es->dnode)
			node_unref(es->dnode);
		free(es->dir);
		free(es->name);
		free(es);
		es = n;
	}
	while (cs) {
		struct rcreated *n = cs->next;
		node_unref(cs->dnode);
		free(cs->name);
		free(cs);
		cs = n;
	}
}

/* Close the release directory and forget the release; all locks held. */
static void end_release(struct store *s, struct release *R)
{
	empty_dir(R->rfd);
	unlinkat(s->lockfd, R->rdir, AT_REMOVEDIR);
	close(R->rfd);
	for (struct release **pp = &rels; *pp; pp = &(*pp)->next)
		if (*pp == R) {
			*pp = R->next;
			break;
		}
	free(R->dir);
	free(R);
	__atomic_store_n(&active, rels != NULL, __ATOMIC_RELEASE);
}

/* Take every lock and find the release on dir: 0 with *rp, -ENOENT (none on dir or above
 * it) or -EINVAL (dir is below another release's DIR). */
static int lock_all(struct node *dir, struct release **rp)
{
	pthread_once(&walk_once, walk_init);
	pthread_rwlock_wrlock(&walk);
	store_lock(&fs.store);
	pthread_mutex_lock(&mu);
	for (struct release *r = rels; r; r = r->next)
		if (dir->dev == r->ddev && dir->ino == r->dino) {
			*rp = r;
			return 0;
		}
	char *p = covered(dir, NULL);
	free(p);
	return p ? -EINVAL : -ENOENT;
}

static void unlock_all(void)
{
	pthread_mutex_unlock(&mu);
	store_unlock(&fs.store);
	pthread_rwlock_unlock(&walk);
}

static int commit(struct node *dir, uid_t cuid)
{
	struct store *s = &fs.store;
	struct timespec t0, tl;
	struct release *R = NULL;
	struct rentry *es;
	struct rcreated *cs;
	struct rec rec = {0};
	struct rhead h = {0};
	unsigned placed = 0, removed = 0, failed = 0;
	double locked;
	int err;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	err = lock_all(dir, &R);
	clock_gettime(CLOCK_MONOTONIC, &tl); /* from here lookups under any release wait */
	if (err) {
		unlock_all();
		return err;
	}
	/* the files made in place within the release, for the record */
	for (struct rcreated *c = R->created; c; c = c->next) {
		char *dp = node_dir_path(c->dnode->dev, c->dnode->ino);
		struct rentry *e = dp ? new_entry(R, c->dnode, dp, c->name) : NULL;
		if (e) {
			e->kind = E_NEW;
			e->ino = c->ino;
		}
		free(dp);
	}
	/* what each place replaces: a replay finds its version by it */
	for (struct rentry *e = R->entries; e; e = e->next) {
		struct stat st;
		int dfd = e->kind == E_PLACE && e->dnode ? node_fd(e->dnode) : -1;
		e->oldino = dfd >= 0 && fstatat(dfd, e->name, &st, AT_SYMLINK_NOFOLLOW) == 0
				? st.st_ino
				: 0;
	}
	h.id = next_record_id(s);
	err = write_intent(s, R, h.id);
	if (err) {
		errno = -err;
		log_warn("release %s: cannot write its intent record; nothing committed", R->name);
		unlock_all();
		return err;
	}
	snprintf(h.name, sizeof(h.name), "%s", R->name);
	h.dir = R->dir;
	h.begun = R->started;
	h.uid = R->uid;
	rec_head(&rec, &h, time(NULL), cuid);
	bool nosync = s->nosync;
	s->batch = true; /* one sync of the whole store below, not one per name */
	old_reset();
	pthread_mutex_lock(&old_mu);
	for (struct rentry *e = R->entries; e; e = e->next) {
		struct store_change ch;
		unsigned long long newino;
		bool there, already;
		int r = apply_one(s, R->rfd, e, R->uid, &ch, &there, &already, &newino);
		if (!r) {
			old_add(e, &ch, there);
			rec_entry(&rec, e, there, ch.kept ? ch.vrel : NULL, newino);
		}
		if (r) {
			errno = -r;
			log_warn("release %s: %s %s%s%s", R->name,
				 e->kind == E_PLACE ? "place" : "remove", e->dir,
				 *e->dir ? "/" : "", e->name);
			failed++;
		} else {
			if (e->kind == E_PLACE)
				placed++;
			else if (e->kind != E_NEW)
				removed++;
		}
		versions_after_change(&ch);
		store_change_done(&ch);
	}
	store_batch_end(s);
	old_start();
	pthread_mutex_unlock(&old_mu);
	inval_gen_bump();
	write_record(s, &rec, h.id, R->dir);
	if (!nosync)
		syncfs(s->rootfd);
	unlinkat(R->rfd, INTENT, 0);
	es = R->entries;
	cs = R->created;
	end_release(s, R);
	locked = ms_since(&tl);
	unlock_all();
	log_info("release %s committed: %u placed, %u removed%s in %.1f ms, lookups held %.1f ms "
		 "(history: release %u)",
		 h.name, placed, removed, failed ? " (some failed: see above)" : "", ms_since(&t0),
		 locked, h.id);
	free(rec.buf);
	/* names looked up before the release may still be cached: the kernel asks again */
	for (struct rentry *e = es; e; e = e->next)
		if (e->dnode)
			inval_entry_queue(e->dnode, e->name);
	/* and so are listings of the directories the commit changed, dropped before the commit
	 * returns (no inode lock is taken); its new files are everyone's now */
	for (struct rentry *e = es; e; e = e->next)
		inval_dir_changed(e->dnode);
	for (struct rcreated *c = cs; c; c = c->next)
		inval_dir_changed(c->dnode);
	free_all(es, cs);
	return failed ? -EIO : 0;
}

static int abort_release(struct node *dir)
{
	struct release *R = NULL;
	struct rentry *es;
	struct rcreated *cs;
	struct stat st;
	int err = lock_all(dir, &R);

	if (err) {
		unlock_all();
		return err;
	}
	/* files made within the release go again */
	for (struct rcreated *c = R->created; c; c = c->next) {
		int dfd = node_fd(c->dnode);
		if (dfd >= 0 && fstatat(dfd, c->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_ino == c->ino && unlinkat(dfd, c->name, 0) == 0)
			store_sync_dir(&fs.store, dfd);
	}
	log_info("release %s aborted: its held changes dropped", R->name);
	es = R->entries;
	cs = R->created;
	end_release(&fs.store, R);
	unlock_all();
	for (struct rcreated *c = cs; c; c = c->next) {
		inval_entry_queue(c->dnode, c->name);
		inval_dir_changed(c->dnode); /* its listing, before the abort returns */
	}
	free_all(es, cs);
	return 0;
}

static bool valid_name(const char *n)
{
	size_t len = strlen(n);

	if (!len || len > 64 || n[0] == '.')
		return false;
	for (const char *c = n; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-'))
			return false;
	return true;
}

static int begin(struct node *dir, const char *name, uid_t uid)
{
	struct store *s = &fs.store;
	struct release *R = NULL;
	char gen[72];
	char *path;
	int err = 0, fd;

	if (!name) {
		snprintf(gen, sizeof(gen), "r%lld-%d", (long long)time(NULL), (int)getpid());
		name = gen;
	}
	if (!valid_name(name))
		return -EINVAL;
	path = node_dir_path(dir->dev, dir->ino);
	if (!path)
		return -ENOENT;
	if (!(R = calloc(1, sizeof(*R)))) {
		free(path);
		return -ENOMEM;
	}
	pthread_once(&walk_once, walk_init);
	pthread_rwlock_wrlock(&walk);
	store_lock(s);
	pthread_mutex_lock(&mu);
	for (struct release *r = rels; r; r = r->next)
		if (path_under(path, r->dir) || path_under(r->dir, path)) {
			err = -EBUSY; /* one release per tree: DIR, above or below it */
			goto out;
		}
	snprintf(R->rdir, sizeof(R->rdir), "R%s", name);
	if (mkdirat(s->lockfd, R->rdir, 0700) < 0) {
		err = errno == EEXIST ? -EBUSY : -errno; /* a release of that name is open */
		goto out;
	}
	fd = openat(s->lockfd, R->rdir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		err = -errno;
		if (fd >= 0)
			close(fd);
		unlinkat(s->lockfd, R->rdir, AT_REMOVEDIR);
		goto out;
	}
	R->rfd = fd;
	snprintf(R->name, sizeof(R->name), "%s", name);
	R->dir = path;
	path = NULL;
	R->ddev = dir->dev;
	R->dino = dir->ino;
	R->uid = uid;
	R->started = time(NULL);
	R->tail = &R->entries;
	R->next = rels;
	rels = R;
	inval_gen_bump();
	__atomic_store_n(&active, true, __ATOMIC_RELEASE);
	log_info("release %s begun on /%s (held changes do not survive a stop of the daemon)",
		 R->name, R->dir);
	R = NULL;
out:
	pthread_mutex_unlock(&mu);
	store_unlock(s);
	pthread_rwlock_unlock(&walk);
	free(path);
	free(R);
	return err;
}

int release_request(struct node *dir, const char *value, size_t size, uid_t uid)
{
	char buf[96];

	if (dir->kind != NODE_DIR)
		return -ENOTDIR;
	if (dir->in_versions)
		return versions_refuse("a release in", "a .versions/ directory");
	if (size == 0 || size >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, value, size);
	buf[size] = 0;
	if (!strcmp(buf, "begin"))
		return begin(dir, NULL, uid);
	if (!strncmp(buf, "begin:", 6))
		return begin(dir, buf + 6, uid);
	if (!strcmp(buf, "commit"))
		return commit(dir, uid);
	if (!strcmp(buf, "abort"))
		return abort_release(dir);
	return -EINVAL;
}

int release_status(struct node *dir, char *buf, size_t size)
{
	unsigned place = 0, remove = 0;
	struct release *R = NULL;
	int n;

	pthread_mutex_lock(&mu);
	for (struct release *r = rels; r && !R; r = r->next)
		if (dir->dev == r->ddev && dir->ino == r->dino)
			R = r;
	if (!R) {
		pthread_mutex_unlock(&mu);
		return -ENODATA;
	}
	for (struct rentry *e = R->entries; e; e = e->next)
		if (e->kind == E_PLACE)
			place++;
		else
			remove++;
	n = snprintf(buf, size,
		     "open %s since %lld by uid %u: %u to place, %u to remove; held "
		     "changes do not survive a stop of the daemon\n",
		     R->name, (long long)R->started, (unsigned)R->uid, place, remove);
	pthread_mutex_unlock(&mu);
	return n;
}

void release_shutdown(void)
{
	old_reset();
	pthread_mutex_lock(&mu);
	while (rels) {
		struct release *R = rels;
		log_warnx("release %s was open at the stop: its held changes are dropped", R->name);
		free_all(R->entries, R->created);
		end_release(&fs.store, R);
	}
	pthread_mutex_unlock(&mu);
}

/* Read an intent record (format 1 or 2) into a header and a list of entries (dnode NULL);
 * -EINVAL if malformed. */
static int read_intent(int rfd, struct rhead *h, struct rentry **out, time_t *when)
{
	struct rentry *head = NULL, **tail = &head;
	char *buf = NULL, *p, *end;
	size_t cap = 0, len = 0;
	ssize_t n;
	struct stat st;
	int fd = openat(rfd, INTENT, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), err = 0, nf = 4;

	if (fd < 0)
		return -errno;
	*when = fstat(fd, &st) == 0 ? st.st_mtime : time(NULL);
	for (;;) {
		if (len == cap) {
			char *nb = realloc(buf, cap = cap ? 2 * cap : 65536);
			if (!nb) {
				err = -ENOMEM;
				break;
			}
			buf = nb;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	static const char magic1[] = "binvfs release 1\n", magic2[] = "binvfs release 2\n";
	if (!err && len >= sizeof(magic2) - 1 && !memcmp(buf, magic2, sizeof(magic2) - 1))
		nf = 5;
	else if (!err && (len < sizeof(magic1) - 1 || memcmp(buf, magic1, sizeof(magic1) - 1)))
		err = -EINVAL;
	p = buf + sizeof(magic1) - 1;
	end = buf + len;
	if (!err && nf == 5) {
		char *f[5];
		for (int i = 0; i < 5 && !err; i++) {
			char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
			if (!z)
				err = -EINVAL;
			f[i] = p;
			p = z ? z + 1 : p;
		}
		if (!err) {
			h->id = (unsigned)strtoul(f[0], NULL, 10);
			snprintf(h->name, sizeof(h->name), "%s", f[1]);
			h->dir = strdup(f[2]);
			h->begun = strtoll(f[3], NULL, 10);
			h->uid = (uid_t)strtoul(f[4], NULL, 10);
			if (!h->dir)
				err = -ENOMEM;
		}
	}
	while (!err && p < end) {
		char *f[5];
		for (int i = 0; i < nf; i++) {
			char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
			if (!z) {
				err = -EINVAL;
				break;
			}
			f[i] = p;
			p = z + 1;
		}
		if (err)
			break;
		struct rentry *e = calloc(1, sizeof(*e));
		if (!e ||
		    (f[0][0] != E_PLACE && f[0][0] != E_REMOVE && f[0][0] != E_MOVED &&
		     f[0][0] != E_NEW) ||
		    strlen(f[3]) >= 24) {
			free(e);
			err = e ? -EINVAL : -ENOMEM;
			break;
		}
		e->kind = f[0][0];
		e->dir = strdup(f[1]);
		e->name = strdup(f[2]);
		if (e->kind == E_PLACE)
			strcpy(e->hold, f[3]);
		else
			e->ino = strtoull(f[3], NULL, 10);
		if (nf == 5)
			e->oldino = strtoull(f[4], NULL, 10);
		*tail = e;
		tail = &e->next;
		if (!e->dir || !e->name)
			err = -ENOMEM;
	}
	free(buf);
	if (err) {
		free_all(head, NULL);
		head = NULL;
	}
	*out = head;
	return err;
}

void release_recover(struct store *s)
{
	int fd = openat(s->lockfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	store_lock(s);
	while ((de = readdir(d))) {
		struct rentry *es = NULL;
		struct rhead h = {0};
		struct rec rec = {0};
		time_t when = 0;
		unsigned n = 0;
		if (de->d_name[0] != 'R')
			continue;
		int rfd =
		    openat(s->lockfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (rfd < 0)
			continue;
		if (flock(rfd, LOCK_EX | LOCK_NB) < 0) {
			log_info("release %s belongs to a live daemon: left alone", de->d_name + 1);
			close(rfd);
			continue;
		}
		int err = read_intent(rfd, &h, &es, &when);
		if (err == -ENOENT) {
			log_warnx(
			    "release %s was open when its daemon stopped: its held changes are "
			    "dropped (rolled back)",
			    de->d_name + 1);
		} else if (err) {
			errno = -err;
			log_warn("release %s: its intent record cannot be read; rolled back",
				 de->d_name + 1);
		} else {
			bool nosync = s->nosync, want = h.id && h.dir && !record_exists(s, h.id);
			if (want)
				rec_head(&rec, &h, when, h.uid);
			s->batch = true;
			for (struct rentry *e = es; e; e = e->next, n++) {
				struct store_change ch;
				unsigned long long newino;
				bool there, already;
				int r = apply_one(s, rfd, e, 0, &ch, &there, &already, &newino);
				if (r) {
					errno = -r;
					log_warn("release %s: replay of %s", de->d_name + 1,
						 e->name);
				} else if (want && already) {
					/* done before the crash: its version by inode */
					unsigned long long was =
					    e->kind == E_PLACE ? e->oldino : e->ino;
					char *vrel = e->kind == E_MOVED || e->kind == E_NEW
							 ? NULL
							 : find_kept(s, e->dir, e->name, was);
					rec_entry(&rec, e, e->kind != E_PLACE || was, vrel, newino);
					free(vrel);
				} else if (want) {
					rec_entry(&rec, e, there, ch.kept ? ch.vrel : NULL, newino);
				}
				store_change_done(&ch);
			}
			store_batch_end(s);
			if (want)
				write_record(s, &rec, h.id, h.dir);
			if (!nosync)
				syncfs(s->rootfd);
			log_warnx("release %s: a commit interrupted by a stop, rolled forward (%u "
				  "changes)",
				  de->d_name + 1, n);
			free_all(es, NULL);
		}
		free(h.dir);
		free(rec.buf);
		empty_dir(rfd);
		unlinkat(s->lockfd, de->d_name, AT_REMOVEDIR);
		close(rfd);
	}
	store_unlock(s);
	closedir(d);
}
