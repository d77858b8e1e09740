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

/* E_MOVED: removed by an mv away (the file lives on at its new name: no version of it) */
enum { E_PLACE = 'P', E_REMOVE = 'R', E_MOVED = 'M' };

struct rentry {
	struct rentry *next;
	int kind;
	struct node *dnode; /* its directory (a ref), NULL in a recovery */
	char *dir;	    /* the directory's path below SOURCE, "" for the root */
	char *name;
	char hold[24];		/* E_PLACE: the held file in the release directory */
	unsigned long long ino; /* E_REMOVE: the file at the name when the rm was held */
};

struct rcreated {
	struct rcreated *next;
	struct node *dnode; /* a ref */
	char *name;
	ino_t ino;
};

static pthread_rwlock_t walk;
static pthread_once_t walk_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static bool active; /* written holding walk (write), the store lock and mu; read atomically */

static struct {
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
} R = {.rfd = -1};

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

/* Is path (below SOURCE) DIR or below it? */
static bool path_under(const char *path)
{
	size_t len = strlen(R.dir);

	if (!len)
		return true;
	return !strncmp(path, R.dir, len) && (path[len] == 0 || path[len] == '/');
}

/* The path of directory d if the open release covers it (malloc'd), else NULL. Caller holds
 * walk or mu. */
static char *covered(struct node *d)
{
	char *p;

	if (!active || d->kind != NODE_DIR || d->in_versions)
		return NULL;
	p = node_dir_path(d->dev, d->ino);
	if (p && !path_under(p)) {
		free(p);
		p = NULL;
	}
	return p;
}

bool release_walk_begin(struct node *dir)
{
	char *p;

	if (!is_active())
		return false;
	pthread_once(&walk_once, walk_init);
	pthread_rwlock_rdlock(&walk);
	p = covered(dir);
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

static struct rentry *find_entry(const char *dir, const char *name)
{
	for (struct rentry *e = R.entries; e; e = e->next)
		if (!strcmp(e->name, name) && !strcmp(e->dir, dir))
			return e;
	return NULL;
}

static struct rentry *new_entry(struct node *dnode, char *dir, const char *name)
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
	*R.tail = e;
	R.tail = &e->next;
	return e;
}

/* An entry that changes nothing any more (a file made and removed within the release). */
static void drop_entry(struct rentry *x, struct node ***unrefs, size_t *nunrefs)
{
	for (struct rentry **pp = &R.entries; *pp; pp = &(*pp)->next) {
		if (*pp != x)
			continue;
		*pp = x->next;
		if (R.tail == &x->next)
			R.tail = pp;
		break;
	}
	if (x->dnode) /* unref'd once the locks are dropped (it may run a deferred prune) */
		(*unrefs)[(*nunrefs)++] = x->dnode;
	free(x->dir);
	free(x->name);
	free(x);
}

static struct rcreated **find_created(struct node *d, const char *name, ino_t ino)
{
	for (struct rcreated **pp = &R.created; *pp; pp = &(*pp)->next)
		if ((*pp)->dnode == d && (*pp)->ino == ino && !strcmp((*pp)->name, name))
			return pp;
	return NULL;
}

static void next_hold(char *buf, size_t len)
{
	snprintf(buf, len, "h%u", ++R.seq);
}

/* The kernel may hold dir/name from before: drop it (queued: the caller's caller may hold the
 * directory's lock); no LOOKUP under DIR is cached while the release is open. */
static void forget_name(struct node *dir, const char *name)
{
	inval_name_changed_queued(dir, name);
}

/* Take the locks of a hold; NULL (nothing taken) if no open release covers dir. */
static char *hold_lock(struct node *dir)
{
	char *p;

	if (!is_active())
		return NULL;
	store_lock(&fs.store);
	pthread_mutex_lock(&mu);
	p = covered(dir);
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
	char proc[64], hold[24], *p = hold_lock(dir);
	struct node *unrefs[1], **up = unrefs;
	size_t nun = 0;
	struct rentry *e;
	int err = 0;

	if (!p)
		return RELEASE_NOT_HELD;
	next_hold(hold, sizeof(hold));
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, proc, R.rfd, hold, AT_SYMLINK_FOLLOW) < 0)
		err = -errno;
	e = err ? NULL : find_entry(p, name);
	if (!err && !e && !(e = new_entry(dir, p, name)))
		err = -ENOMEM;
	if (err) {
		unlinkat(R.rfd, hold, 0);
	} else {
		if (e->kind == E_PLACE)
			unlinkat(R.rfd, e->hold, 0); /* a later write of the name wins */
		e->kind = E_PLACE;
		strcpy(e->hold, hold);
		log_info("release %s: publish of %s%s%s held", R.name, p, *p ? "/" : "", name);
		forget_name(dir, name);
	}
	hold_unlock(p, up, nun);
	return err;
}

int release_hold_unlink(struct node *dir, const char *name)
{
	char *p = hold_lock(dir);
	struct node *unrefs[2], **up = unrefs;
	size_t nun = 0;
	struct rcreated **cp;
	struct rentry *e;
	struct stat st;
	int err = 0, dfd;

	if (!p)
		return RELEASE_NOT_HELD;
	dfd = node_fd(dir);
	e = find_entry(p, name);
	if (dfd < 0 || fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		err = dfd < 0 ? -errno : -errno;
		if (err == -ENOENT && e && e->kind == E_PLACE) {
			unlinkat(R.rfd, e->hold, 0); /* a name the release was to add */
			drop_entry(e, &up, &nun);
			err = 0;
		}
	} else if (S_ISDIR(st.st_mode)) {
		err = -EISDIR;
	} else if ((cp = find_created(dir, name, st.st_ino))) {
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
	} else if (!e && !(e = new_entry(dir, p, name))) {
		err = -ENOMEM;
	} else {
		if (e->kind == E_PLACE)
			unlinkat(R.rfd, e->hold, 0);
		e->kind = E_REMOVE;
		e->ino = st.st_ino;
		log_info("release %s: rm of %s%s%s held", R.name, p, *p ? "/" : "", name);
		forget_name(dir, name);
	}
	hold_unlock(p, up, nun);
	return err;
}

int release_hold_rename(struct node *dir, const char *name, struct node *ndir, const char *newname,
			unsigned flags)
{
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
	p = covered(dir);
	np = covered(ndir);
	if (!p && !np) {
		pthread_mutex_unlock(&mu);
		store_unlock(&fs.store);
		return RELEASE_NOT_HELD;
	}
	if (!p || !np) {
		err = -EXDEV; /* into or out of the release: mv copies and removes, each held */
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
	se = find_entry(p, name);
	de = find_entry(np, newname);
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
			drop_entry(se, &up, &nun);
			se = NULL;
		}
	} else if ((cp = find_created(dir, name, sst.st_ino))) {
		/* made within the release (rsync's temporary file): into the release */
		struct rcreated *c = *cp;
		int fd;
		next_hold(hold, sizeof(hold));
		if (renameat(sfd, name, R.rfd, hold) < 0) {
			err = -errno;
			goto out;
		}
		if (!fs.store.nosync &&
		    (fd = openat(R.rfd, hold, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) >=
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
		next_hold(hold, sizeof(hold));
		if (linkat(sfd, name, R.rfd, hold, 0) < 0) {
			err = -errno;
			goto out;
		}
		if (!se && !(se = new_entry(dir, p, name))) {
			unlinkat(R.rfd, hold, 0);
			err = -ENOMEM;
			goto out;
		}
		se->kind = E_MOVED;
		se->ino = sst.st_ino;
	}
	if (!de && !(de = new_entry(ndir, np, newname))) {
		err = -ENOMEM; /* (what was done for the source stays: the name is kept) */
		unlinkat(R.rfd, hold, 0);
		goto out;
	}
	if (de->kind == E_PLACE)
		unlinkat(R.rfd, de->hold, 0);
	de->kind = E_PLACE;
	strcpy(de->hold, hold);
	log_info("release %s: mv %s%s%s -> %s%s%s held", R.name, p, *p ? "/" : "", name, np,
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

void release_note_created(struct node *dir, const char *name, ino_t ino)
{
	struct rcreated *c;
	char *p;

	if (!is_active())
		return;
	pthread_mutex_lock(&mu);
	p = covered(dir);
	if (p && (c = calloc(1, sizeof(*c))) && (c->name = strdup(name))) {
		c->dnode = dir;
		node_ref(dir);
		c->ino = ino;
		c->next = R.created;
		R.created = c;
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
	if (!e->dnode || e->kind == E_MOVED || (there && (!ch->kept || !ch->vrel)))
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

/* Apply one entry; idempotent (a replay after a crash redoes only what is left). */
static int apply_one(struct store *s, int rfd, const struct rentry *e, uid_t uid,
		     struct store_change *ch, bool *was_there)
{
	struct stat st;
	int dfd = open_beneath(s->rootfd, e->dir), err = 0;

	memset(ch, 0, sizeof(*ch));
	*was_there = true;
	if (dfd < 0)
		return -errno;
	if (e->kind == E_PLACE) {
		if (fstatat(rfd, e->hold, &st, AT_SYMLINK_NOFOLLOW) < 0)
			goto out; /* placed already */
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
	} else {
		if (fstatat(dfd, e->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    (unsigned long long)st.st_ino != e->ino)
			goto out; /* removed already */
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

/* The intent record: "binvfs release 1\n", then per entry KIND \0 DIR \0 NAME \0 HOLD-or-INO
 * \0, each field NUL-terminated (names may hold any byte but NUL). */
static int write_intent(struct store *s, int rfd)
{
	FILE *f;
	int fd, err = 0;

	fd = openat(rfd, INTENT_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		return -errno;
	}
	fputs("binvfs release 1\n", f);
	for (struct rentry *e = R.entries; e; e = e->next) {
		fprintf(f, "%c%c%s%c%s%c", e->kind, 0, e->dir, 0, e->name, 0);
		if (e->kind == E_PLACE)
			fprintf(f, "%s%c", e->hold, 0);
		else
			fprintf(f, "%llu%c", e->ino, 0);
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
static void end_release(struct store *s)
{
	empty_dir(R.rfd);
	unlinkat(s->lockfd, R.rdir, AT_REMOVEDIR);
	close(R.rfd);
	R.rfd = -1;
	free(R.dir);
	R.dir = NULL;
	__atomic_store_n(&active, false, __ATOMIC_RELEASE);
}

static int lock_all(struct node *dir)
{
	pthread_once(&walk_once, walk_init);
	pthread_rwlock_wrlock(&walk);
	store_lock(&fs.store);
	pthread_mutex_lock(&mu);
	if (!active)
		return -ENOENT;
	if (dir->dev != R.ddev || dir->ino != R.dino)
		return -EINVAL; /* the release is on another directory */
	return 0;
}

static void unlock_all(void)
{
	pthread_mutex_unlock(&mu);
	store_unlock(&fs.store);
	pthread_rwlock_unlock(&walk);
}

static int commit(struct node *dir)
{
	struct store *s = &fs.store;
	struct timespec t0;
	struct rentry *es;
	struct rcreated *cs;
	unsigned placed = 0, removed = 0, failed = 0;
	double locked;
	int err;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	err = lock_all(dir);
	if (err) {
		unlock_all();
		return err;
	}
	err = write_intent(s, R.rfd);
	if (err) {
		errno = -err;
		log_warn("release %s: cannot write its intent record; nothing committed", R.name);
		unlock_all();
		return err;
	}
	bool nosync = s->nosync;
	s->batch = true; /* one sync of the whole store below, not one per name */
	old_reset();
	pthread_mutex_lock(&old_mu);
	for (struct rentry *e = R.entries; e; e = e->next) {
		struct store_change ch;
		bool there;
		int r = apply_one(s, R.rfd, e, R.uid, &ch, &there);
		if (!r)
			old_add(e, &ch, there);
		if (r) {
			errno = -r;
			log_warn("release %s: %s %s%s%s", R.name,
				 e->kind == E_PLACE ? "place" : "remove", e->dir,
				 *e->dir ? "/" : "", e->name);
			failed++;
		} else {
			if (e->kind == E_PLACE)
				placed++;
			else
				removed++;
		}
		versions_after_change(&ch);
		store_change_done(&ch);
	}
	s->batch = false;
	old_start();
	pthread_mutex_unlock(&old_mu);
	inval_gen_bump();
	if (!nosync)
		syncfs(s->rootfd);
	unlinkat(R.rfd, INTENT, 0);
	log_info("release %s committed: %u placed, %u removed%s in %.1f ms", R.name, placed,
		 removed, failed ? " (some failed: see above)" : "", ms_since(&t0));
	es = R.entries;
	cs = R.created;
	R.entries = NULL;
	R.tail = &R.entries;
	R.created = NULL;
	end_release(s);
	locked = ms_since(&t0);
	unlock_all();
	/* names looked up before the release may still be cached: the kernel asks again */
	for (struct rentry *e = es; e; e = e->next)
		if (e->dnode)
			inval_entry_queue(e->dnode, e->name);
	log_debug("release commit held lookups %.1f ms", locked);
	free_all(es, cs);
	return failed ? -EIO : 0;
}

static int abort_release(struct node *dir)
{
	struct rentry *es;
	struct rcreated *cs;
	struct stat st;
	int err = lock_all(dir);

	if (err) {
		unlock_all();
		return err;
	}
	/* files made within the release go again */
	for (struct rcreated *c = R.created; c; c = c->next) {
		int dfd = node_fd(c->dnode);
		if (dfd >= 0 && fstatat(dfd, c->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_ino == c->ino && unlinkat(dfd, c->name, 0) == 0)
			store_sync_dir(&fs.store, dfd);
	}
	log_info("release %s aborted: its held changes dropped", R.name);
	es = R.entries;
	cs = R.created;
	R.entries = NULL;
	R.tail = &R.entries;
	R.created = NULL;
	end_release(&fs.store);
	unlock_all();
	for (struct rcreated *c = cs; c; c = c->next)
		inval_entry_queue(c->dnode, c->name);
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
	pthread_once(&walk_once, walk_init);
	pthread_rwlock_wrlock(&walk);
	store_lock(s);
	pthread_mutex_lock(&mu);
	if (active) {
		err = -EBUSY; /* one release at a time (on this mount) */
		goto out;
	}
	snprintf(R.rdir, sizeof(R.rdir), "R%s", name);
	if (mkdirat(s->lockfd, R.rdir, 0700) < 0) {
		err = errno == EEXIST ? -EBUSY : -errno;
		goto out;
	}
	fd = openat(s->lockfd, R.rdir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		err = -errno;
		if (fd >= 0)
			close(fd);
		unlinkat(s->lockfd, R.rdir, AT_REMOVEDIR);
		goto out;
	}
	R.rfd = fd;
	snprintf(R.name, sizeof(R.name), "%s", name);
	R.dir = path;
	path = NULL;
	R.ddev = dir->dev;
	R.dino = dir->ino;
	R.uid = uid;
	R.started = time(NULL);
	R.entries = NULL;
	R.tail = &R.entries;
	R.created = NULL;
	R.seq = 0;
	inval_gen_bump();
	__atomic_store_n(&active, true, __ATOMIC_RELEASE);
	log_info("release %s begun on /%s (held changes do not survive a stop of the daemon)",
		 R.name, R.dir);
out:
	pthread_mutex_unlock(&mu);
	store_unlock(s);
	pthread_rwlock_unlock(&walk);
	free(path);
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
		return commit(dir);
	if (!strcmp(buf, "abort"))
		return abort_release(dir);
	return -EINVAL;
}

int release_status(struct node *dir, char *buf, size_t size)
{
	unsigned place = 0, remove = 0;
	int n;

	pthread_mutex_lock(&mu);
	if (!active || dir->dev != R.ddev || dir->ino != R.dino) {
		pthread_mutex_unlock(&mu);
		return -ENODATA;
	}
	for (struct rentry *e = R.entries; e; e = e->next)
		if (e->kind == E_PLACE)
			place++;
		else
			remove++;
	n = snprintf(buf, size,
		     "open %s since %lld by uid %u: %u to place, %u to remove; held "
		     "changes do not survive a stop of the daemon\n",
		     R.name, (long long)R.started, (unsigned)R.uid, place, remove);
	pthread_mutex_unlock(&mu);
	return n;
}

void release_shutdown(void)
{
	old_reset();
	pthread_mutex_lock(&mu);
	if (active) {
		log_warnx("release %s was open at the stop: its held changes are dropped", R.name);
		free_all(R.entries, R.created);
		R.entries = NULL;
		R.created = NULL;
		end_release(&fs.store);
	}
	pthread_mutex_unlock(&mu);
}

/* Read an intent record into a list of entries (dnode NULL); -EINVAL if malformed. */
static int read_intent(int rfd, struct rentry **out)
{
	struct rentry *head = NULL, **tail = &head;
	char *buf = NULL, *p, *end;
	size_t cap = 0, len = 0;
	ssize_t n;
	int fd = openat(rfd, INTENT, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
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
	static const char magic[] = "binvfs release 1\n";
	if (!err && (len < sizeof(magic) - 1 || memcmp(buf, magic, sizeof(magic) - 1)))
		err = -EINVAL;
	p = buf + sizeof(magic) - 1;
	end = buf + len;
	while (!err && p < end) {
		char *f[4];
		for (int i = 0; i < 4; i++) {
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
		if (!e || (f[0][0] != E_PLACE && f[0][0] != E_REMOVE && f[0][0] != E_MOVED) ||
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
		int err = read_intent(rfd, &es);
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
			bool nosync = s->nosync;
			s->batch = true;
			for (struct rentry *e = es; e; e = e->next, n++) {
				struct store_change ch;
				bool there;
				int r = apply_one(s, rfd, e, 0, &ch, &there);
				if (r) {
					errno = -r;
					log_warn("release %s: replay of %s", de->d_name + 1,
						 e->name);
				}
				store_change_done(&ch);
			}
			s->batch = false;
			if (!nosync)
				syncfs(s->rootfd);
			log_warnx("release %s: a commit interrupted by a stop, rolled forward (%u "
				  "changes)",
				  de->d_name + 1, n);
			free_all(es, NULL);
		}
		empty_dir(rfd);
		unlinkat(s->lockfd, de->d_name, AT_REMOVEDIR);
		close(rfd);
	}
	store_unlock(s);
	closedir(d);
}
