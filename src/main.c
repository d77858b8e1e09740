/* main.c - binvfs: startup, mount, request loop, teardown. */
#define _GNU_SOURCE
#include "fs.h"
#include "handle.h"
#include "locks.h"
#include "release.h"
#include "log.h"
#include "options.h"
#include "passthrough.h"
#include "uring.h"
#include "route.h"
#include "watchdog.h"
#include "nodefd.h"
#include "nodeid.h"
#include "inval.h"
#include "ops_entry.h"
#include "ops_file.h"
#include "ops_dir.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libmount.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct binvfs fs;

/* The kernel asks READs of at most the mount's readahead window, one round trip each; its
 * 128 KiB default caps a cold sequential read (docs/performance.md). INIT may only lower the
 * window (the kernel keeps the smaller of its bdi's and ours), so the bdi's is raised first,
 * through sysfs like `blockdev --setra`. A READ reply larger than ~1000 KiB no longer fits
 * libfuse's splice pipe (1 MiB) and is copied instead: slower, hence 512 by default. */
static void set_readahead(struct fuse_conn_info *conn)
{
	unsigned bytes = fs.readahead_kb * 1024;
	char path[96], val[16];
	int fd, len, err = 0;

	if (!fs.readahead_kb)
		return;
	if (bytes < conn->max_readahead) { /* lowering: INIT alone does it */
		conn->max_readahead = bytes;
		return;
	}
	if (!fs.bdi[0]) {
		err = ENOENT;
		snprintf(path, sizeof(path), "(our mount not found in /proc/self/mountinfo)");
	} else {
		snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", fs.bdi);
		len = snprintf(val, sizeof(val), "%u", fs.readahead_kb);
		fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			err = errno;
		else if (write(fd, val, (size_t)len) != len)
			err = errno ? errno : EIO;
		if (fd >= 0)
			close(fd);
	}
	if (!err) {
		conn->max_readahead = bytes;
		return;
	}
	errno = err;
	if (fs.readahead_asked) /* the default is a bonus, not worth a warning (containers) */
		log_warn("cannot set readahead=%u on %s; reads keep the kernel's window",
			 fs.readahead_kb, path);
	else
		log_info("readahead stays the kernel's: cannot write %s: %s", path, strerror(err));
}

static void bv_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	set_readahead(conn);
	/* a nodeid's content never changes: keep its page cache (kernel-notes §4) */
	conn->want &= ~(unsigned)(FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_WRITEBACK_CACHE);
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC; /* O_TRUNC reaches OPEN, before truncating */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
	/* Requests are read, never spliced: the bridge's read hook must see each one (INIT, the
	 * O_TMPFILE relabel, passthrough.c), and a spliced one would reach libfuse through a pipe
	 * it reads itself. libfuse 3.14 splices whenever its pipe can grow to a request's size:
	 * with CAP_SYS_RESOURCE (a root service) or a large fs.pipe-max-size. */
	conn->want &= ~(unsigned)FUSE_CAP_SPLICE_READ;
	/* ACLs as on the backing filesystem (docs/design.md §3, ACLs): the kernel leaves the umask
	 * to us, which create_mode() applies unless the parent has a default ACL; with
	 * default_permissions it also checks ACL entries itself and drops a node's cached
	 * attributes and ACLs at every setfacl and chmod */
	/* open_by_handle_at of a nodeid the kernel forgot asks LOOKUP (nodeid, ".") and a
	 * directory's parent LOOKUP (nodeid, ".."): ops_entry.c, export.c */
	if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
		conn->want |= FUSE_CAP_EXPORT_SUPPORT;
	if (conn->capable & FUSE_CAP_DONT_MASK)
		conn->want |= FUSE_CAP_DONT_MASK;
	if (fs.acl_ok && (conn->capable & FUSE_CAP_POSIX_ACL))
		conn->want |= FUSE_CAP_POSIX_ACL;
	fs.posix_acl = conn->want & FUSE_CAP_POSIX_ACL;
	/* locks are the daemon's: the kernel's are per nodeid, and a writer has its own (locks.c)
	 */
	if ((conn->capable & (FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS)) ==
	    (FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS))
		conn->want |= FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS;
	else
		log_warnx("the kernel does not hand locks to the daemon: a writer's locks exclude "
			  "nobody");
}

static const struct fuse_lowlevel_ops bv_ops = {
    .init = bv_init,
    .lookup = bv_lookup,
    .forget = bv_forget,
    .forget_multi = bv_forget_multi,
    .getattr = bv_getattr,
    .setattr = bv_setattr,
    .readlink = bv_readlink,
    .mknod = bv_mknod,
    .mkdir = bv_mkdir,
    .symlink = bv_symlink,
    .link = bv_link,
    .unlink = bv_unlink,
    .rmdir = bv_rmdir,
    .rename = bv_rename,
    .statfs = bv_statfs,
    .open = bv_open,
    .create = bv_create,
    .read = bv_read,
    .write_buf = bv_write_buf,
    .flush = bv_flush,
    .release = bv_release,
    .fsync = bv_fsync,
    .fallocate = bv_fallocate,
    .lseek = bv_lseek,
    .copy_file_range = bv_copy_file_range,
    .getlk = bv_getlk,
    .setlk = bv_setlk,
    .flock = bv_flock,
    .opendir = bv_opendir,
    .readdir = bv_readdir,
    .releasedir = bv_releasedir,
    .fsyncdir = bv_fsyncdir,
    .getxattr = bv_getxattr,
    .listxattr = bv_listxattr,
    .setxattr = bv_setxattr,
    .removexattr = bv_removexattr,
};

/* The id of the newest binvfs mount at dir (-1 if none): the last one listed is on top.
 * dev (if not NULL) gets its "major:minor". libmount reads the table and undoes its escapes. */
static int binvfs_mount_id(const char *dir, char *dev, size_t devlen)
{
	struct libmnt_table *tb = mnt_new_table_from_file("/proc/self/mountinfo");
	struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
	struct libmnt_fs *m;
	int id = -1;

	while (tb && it && mnt_table_next_fs(tb, it, &m) == 0) {
		const char *type = mnt_fs_get_fstype(m), *point = mnt_fs_get_target(m);
		if (type && point && !strcmp(type, BINVFS_FSTYPE) && !strcmp(point, dir)) {
			id = mnt_fs_get_id(m);
			if (dev)
				snprintf(dev, devlen, "%u:%u", major(mnt_fs_get_devno(m)),
					 minor(mnt_fs_get_devno(m)));
		}
	}
	mnt_free_iter(it);
	mnt_unref_table(tb);
	return id;
}

/* The MS_* flags of the newest binvfs mount at dir, from the mount table (libmount's names
 * of them); false if there is none. */
static bool binvfs_mount_flags(const char *dir, unsigned long *flags)
{
	struct libmnt_table *tb = mnt_new_table_from_file("/proc/self/mountinfo");
	struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
	const struct libmnt_optmap *map = mnt_get_builtin_optmap(MNT_LINUX_MAP);
	struct libmnt_fs *m;
	bool found = false;

	while (tb && it && mnt_table_next_fs(tb, it, &m) == 0) {
		const char *type = mnt_fs_get_fstype(m), *point = mnt_fs_get_target(m);
		unsigned long vfs = 0, sb = 0;
		if (!type || !point || strcmp(type, BINVFS_FSTYPE) || strcmp(point, dir))
			continue;
		mnt_optstr_get_flags(mnt_fs_get_vfs_options(m), &vfs, map);
		mnt_optstr_get_flags(mnt_fs_get_fs_options(m), &sb, map);
		if (!(vfs & (MS_NOATIME | MS_RELATIME)))
			vfs |= MS_STRICTATIME; /* the table names no atime policy for it */
		*flags = (vfs | sb) & ~(unsigned long)MS_REMOUNT;
		found = true;
	}
	mnt_free_iter(it);
	mnt_unref_table(tb);
	return found;
}

/* -o remount (mount -o remount,ro DIR runs mount.fuse3, which runs binvfs with it): a change
 * of the flags of the mount, which the kernel makes (mount(2) with MS_REMOUNT); its daemon
 * serves on. The options give flags over the mount's own, as mount(8) merges them. */
static int remount(const struct options *o)
{
	unsigned long now = 0, f;

	if (!binvfs_mount_flags(o->mountpoint, &now)) {
		fprintf(stderr, "binvfs: remount: %s is not a binvfs mount\n", o->mountpoint);
		return 1;
	}
	f = options_mount_flags(o, now);
	if (mount(NULL, o->mountpoint, NULL, MS_REMOUNT | f, NULL) < 0) {
		fprintf(stderr, "binvfs: remount %s: %s\n", o->mountpoint, strerror(errno));
		return 1;
	}
	return 0;
}

/* The flags libfuse 3.14 cannot give a new mount (nodiratime, strictatime, lazytime,
 * nosymfollow), set before INIT is answered: nothing can use the mount before. */
static int mount_flags_beyond_libfuse(const struct options *o)
{
	unsigned long f = options_mount_flags(o, MS_NOSUID | MS_NODEV | MS_RELATIME);

	if (!(f & (MS_NODIRATIME | MS_STRICTATIME | MS_LAZYTIME | MS_NOSYMFOLLOW)))
		return 0;
	if (mount(NULL, o->mountpoint, NULL, MS_REMOUNT | f, NULL) == 0)
		return 0;
	fprintf(stderr, "binvfs: cannot set the mount flags of %s: %s\n", o->mountpoint,
		strerror(errno));
	return -1;
}

/* Is dir already the mount point of a binvfs? Then serving it again would stack on it. */
static bool served_by_binvfs(const char *dir)
{
	return binvfs_mount_id(dir, NULL, 0) >= 0;
}

/* libfuse unmounts by path. After `umount -l DIR; binvfs DIR` the path may hold another
 * daemon's mount while this one still serves the detached copy: stopped by a signal, it would
 * detach the new mount. libfuse skips the unmount when the session's fd polls POLLERR (an
 * ended connection), so when the mount at the path is not ours, its fd is replaced by one
 * that does: a pipe with no reader. (Closing /dev/fuse ends the detached mount, as exiting
 * does anyway.) */
static void unmount_if_ours(const char *dir)
{
	int p[2], id = binvfs_mount_id(dir, NULL, 0);

	pt_detach(); /* the session's fd is closed or replaced below */
	if (fs.mnt_id >= 0 && id != fs.mnt_id && pipe2(p, O_CLOEXEC) == 0) {
		log_info("%s is not our mount any more (%s): leaving it alone", dir,
			 id < 0 ? "detached" : "another binvfs serves it now");
		close(p[0]);
		dup2(p[1], fuse_session_fd(fs.se));
		close(p[1]);
	}
	fuse_session_unmount(fs.se);
}

/* systemd Type=notify: tell the service manager the mount is up (sd_notify's protocol). */
static void systemd_ready(void)
{
	const char *sock = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd;

	if (!sock || (sock[0] != '/' && sock[0] != '@') || strlen(sock) >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, sock, strlen(sock));
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = 0;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&sa,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sock))) < 0)
		log_warn("sd_notify");
	close(fd);
}

/* The kernel sends INIT as soon as the mount is up: answer it here, before the request loop
 * and before going to the background, so that passthrough=on can still refuse to mount. */
static int serve_init(struct fuse_session *se)
{
	struct fuse_buf buf = {.mem = NULL};
	int res = fuse_session_receive_buf(se, &buf);

	if (res > 0)
		fuse_session_process_buf(se, &buf);
	free(buf.mem);
	return res < 0 ? res : res == 0 ? -ENODEV : 0;
}

/* Stopping on SIGTERM, SIGINT or SIGHUP without wedging the mount (kernel-notes §12): the
 * loop keeps serving while invalidations in flight finish (their LOOKUPs need answers), none
 * starts any more, and only then the loop is told to end. libfuse's own handler would end it
 * at once. The handler only wakes the stopper thread (a pipe write is async-signal-safe); the
 * stopper quiesces, ends the session and sends the signal on to the main thread, whose
 * handler then finds the session ended: its interrupted wait lets the loop return. */
static int stop_pipe[2] = {-1, -1};
static pthread_t main_thread;
static volatile sig_atomic_t stop_signal, stop_ready;

static void stop_handler(int sig)
{
	int saved = errno;

	if (stop_ready) {
		fuse_session_exit(fs.se);
	} else if (!stop_signal) {
		stop_signal = sig;
		if (write(stop_pipe[1], "s", 1) < 0) {
			/* the pipe is full: a stop is under way already */
		}
	}
	errno = saved;
}

static void *stopper(void *arg)
{
	char c;

	(void)arg;
	while (read(stop_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	watchdog_stopping();
	if (!inval_quiesce(500))
		log_warnx("stop: an invalidation is still in the kernel; the watchdog ends it");
	log_info("stopping on signal %d", (int)stop_signal);
	stop_ready = 1;
	fuse_session_exit(fs.se);
	pthread_kill(main_thread, (int)stop_signal);
	return NULL;
}

/* Our handler over libfuse's for the stop signals, and the stopper thread. */
static int stop_handlers_install(void)
{
	struct sigaction sa = {.sa_handler = stop_handler};
	static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
	pthread_t t;

	main_thread = pthread_self();
	if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
		return -1;
	fcntl(stop_pipe[0], F_SETFL, 0); /* the stopper blocks; the handler never does */
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (sigaction(sigs[i], &sa, NULL) < 0)
			return -1;
	if (pthread_create(&t, NULL, stopper, NULL) != 0)
		return -1;
	pthread_detach(t);
	return 0;
}

/* The number of our FUSE connection (fusectl's directory name): the kernel's dev_t of the
 * mount, from "major:minor". */
static unsigned connection_of(const char *devno)
{
	unsigned ma = 0, mi = 0;

	if (sscanf(devno, "%u:%u", &ma, &mi) != 2)
		return 0;
	return (ma << 20) | mi;
}

/* Passthrough as asked (kernel-notes §10); false if passthrough=on cannot have it. */
static bool start_passthrough(enum pt_want want)
{
	int fd = openat(fs.store.vfd, STORE_MARKER, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	pt_probe(fd);
	if (fd >= 0)
		close(fd);
	if (want == PT_ON && !pt_active()) {
		fprintf(stderr, "binvfs: passthrough=on but passthrough is %s\n", pt_status());
		return false;
	}
	return true;
}

/* What the store asks of the node table, and reserve= as bytes of SOURCE's filesystem
 * (space.c keeps them free). */
static void store_setup(struct store *s, const struct options *o)
{
	struct statvfs sv;

	s->busy = node_busy;
	s->dir_path = node_dir_path;
	s->in_use = node_defer_prune;
	s->reserve = o->reserve;
	if (o->reserve_pct)
		s->reserve = fstatvfs(s->rootfd, &sv) == 0
				 ? (uint64_t)sv.f_blocks * sv.f_frsize / 100 * o->reserve
				 : 0;
}

/* Nodes keep fds up to a share of the limit, file handles beyond it (nodefd.c): more fds
 * means fewer reopens by handle. As root, allow as many as the system does (fs.nr_open), else
 * the soft limit up to the hard one. */
static void raise_nofile(void)
{
	struct rlimit rl;
	FILE *f = fopen("/proc/sys/fs/nr_open", "r");
	unsigned long nr_open = 0;

	if (f) {
		if (fscanf(f, "%lu", &nr_open) != 1)
			nr_open = 0;
		fclose(f);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (nr_open > rl.rlim_max) {
		struct rlimit want = {nr_open, nr_open};
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
}

/* File handles made inside the mount survive a remount (docs/design.md §3, File handles): the
 * nodeid table a clean stop leaves in the store, taken by the next mount before it serves. */
static void load_nodeids(void)
{
	const char *why = NULL;
	size_t len = 0;
	uint32_t n = 0;
	void *table = store_nodeids_read(&fs.store, nodeid_table_max(), &len, &why);

	if (table)
		why = nodeid_table_take(table, len, fs.store.rootfd, &n);
	free(table);
	if (why)
		log_warnx("ignoring %s/%s (%s): file handles made before this mount are stale",
			  STORE_DIR, STORE_NODEIDS, why);
	else if (table)
		log_info("%u nodeids of the last mount taken from %s/%s", n, STORE_DIR,
			 STORE_NODEIDS);
}

/* After the session, before the store closes: not on the way of any request. */
static void save_nodeids(void)
{
	size_t len = 0;
	uint32_t n = 0;
	void *table = nodeid_table_build(fs.store.rootfd, &len, &n);
	int err;

	if (!table)
		return; /* no nodeid keeps a handle */
	err = store_nodeids_write(&fs.store, table, len);
	free(table);
	if (err) {
		errno = -err;
		log_warn("cannot keep the nodeids for the next mount: its file handles will be "
			 "stale");
	} else {
		log_info("%u nodeids kept for the next mount (%s/%s)", n, STORE_DIR, STORE_NODEIDS);
	}
}

/* The store under the mount, and the node table on it. */
static int open_store(const struct options *o)
{
	struct stat vst;

	if (store_open(&fs.store, o->source, o->keep, o->nosync) < 0)
		return -1;
	if (fstat(fs.store.vfd, &vst) == 0) {
		fs.view_dev = vst.st_dev;
		fs.view_ino = vst.st_ino;
	}
	store_setup(&fs.store, o);
	node_table_init(&fs.store);
	load_nodeids();
	node_inval_hook = inval_entry_queue;
	/* a commit a stop interrupted: forward; an open release: back */
	release_recover(&fs.store);
	return 0;
}

/* Has the option list opts (a,b,c) the word w? */
static bool has_opt(const char *opts, const char *w)
{
	size_t n = strlen(w);

	for (const char *p = opts; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
		if (!strncmp(p, w, n) && (p[n] == ',' || !p[n]))
			return true;
	return false;
}

/* Does SOURCE's filesystem keep POSIX ACLs? (ext4 -o noacl, vfat: EOPNOTSUPP) Only then may
 * the kernel check them: with FUSE_POSIX_ACL it fails every access check that needs an ACL
 * the daemon cannot read. */
static bool source_has_acls(void)
{
	char proc[64];

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fs.store.rootfd);
	return getxattr(proc, "system.posix_acl_access", NULL, 0) >= 0 || errno == ENODATA;
}

/* The mount is up: answer INIT, set passthrough up, go to the background, start the threads.
 * -1 if the mount must go again. */
static int start_serving(const struct options *o)
{
	int r;

	fs.mnt_id = binvfs_mount_id(o->mountpoint, fs.bdi, sizeof(fs.bdi));
	fs.readahead_kb = o->readahead_kb;
	fs.readahead_asked = o->readahead_asked;
	fs.acl_ok = !o->noacl && has_opt(o->fuse_opts, "default_permissions") && source_has_acls();
	uring_want(o->uring);
	r = pt_install(fs.se, o->passthrough);
	if (r < 0) {
		errno = -r;
		log_warn("cannot hook the session for passthrough");
		return -1;
	}
	r = serve_init(fs.se);
	if (r < 0) {
		errno = -r;
		log_warn("no INIT from the kernel");
		return -1;
	}
	nodefd_atime_init(o->mountpoint,
			  options_mount_flags(o, MS_NOSUID | MS_NODEV | MS_RELATIME));
	if (!start_passthrough(o->passthrough))
		return -1;
	if (!o->foreground)
		log_init(true, o->debug);
	fuse_daemonize(o->foreground);
	/* still one thread: fork the watchdog now, start the others after */
	if (!fs.bdi[0] || watchdog_start(connection_of(fs.bdi)) < 0)
		log_warnx("no watchdog: a daemon killed at the wrong moment may leave the mount "
			  "hanging until %s/N/abort",
			  "/sys/fs/fuse/connections");
	/* the kernel holds every request from INIT's reply on until the rings are up: here, in
	 * the process that serves, before anything else touches the mount */
	uring_start(fs.se);
	if (stop_handlers_install() < 0)
		log_warn("cannot install the stop handlers; libfuse's stop at once");
	inval_init(fs.se);
	if (inval_start() < 0)
		log_warnx("cannot start the invalidation thread: deferred prunes wait for FORGET");
	log_info("serving %s at %s (keep=%u, reserve=%llu KiB%s)", o->source, o->mountpoint,
		 o->keep, (unsigned long long)(fs.store.reserve >> 10),
		 o->nosync ? ", nosync" : "");
	log_info("passthrough %s", pt_status());
	if (o->uring)
		log_info("uring %s", uring_status());
	store_index_start(&fs.store);
	systemd_ready();
	return 0;
}

/* The request loop, until the unmount or a signal: libfuse's worker pool, or one thread. */
static int serve_requests(bool single_thread)
{
	struct fuse_loop_config *cfg;
	int ret;

	if (single_thread)
		return fuse_session_loop(fs.se);
	cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_idle_threads(cfg, 10);
	/* libfuse's default of 10 workers lets ten slow /proc reads stall every request */
	fuse_loop_cfg_set_max_threads(cfg, 128);
	ret = fuse_session_loop_mt(fs.se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return ret;
}

/* After the loop: what the unmount left (handles whose RELEASE it dropped, pending prunes). */
static void end_session(const char *mountpoint)
{
	watchdog_stopping();
	inval_quiesce(500);
	inval_stop();
	unmount_if_ours(mountpoint);
	uring_stop(); /* the unmount failed the requests in the rings */
	locks_shutdown();
	handles_shutdown();
	release_shutdown();
	dirs_shutdown();
	log_info("unmounted %s", mountpoint);
	route_clear_all();
	save_nodeids();
	node_table_destroy();
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct options o;
	char fsname[4200];
	int r, ret = 1;

	r = options_parse(argc, argv, &o);
	if (r)
		return r > 0 ? 0 : 1;
	log_init(false, o.debug);
	if (o.remount) {
		ret = remount(&o);
		options_free(&o);
		return ret;
	}
	if (served_by_binvfs(o.source) || served_by_binvfs(o.mountpoint)) {
		fprintf(stderr, "binvfs: %s is already served by binvfs\n",
			served_by_binvfs(o.source) ? o.source : o.mountpoint);
		options_free(&o);
		return 1;
	}
	snprintf(fsname, sizeof(fsname), "subtype=binvfs,fsname=%s%s%s", o.source,
		 o.fuse_opts[0] ? "," : "", o.fuse_opts);
	if (fuse_opt_add_arg(&args, argv[0]) || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, fsname) || (o.debug && fuse_opt_add_arg(&args, "-d")))
		fatalx("out of memory");

	umask(0); /* the caller's umask is applied for it (create_mode), or by the kernel */
	/* libfuse's loop cancels its workers at exit, and glibc's pthread_cancel then loads
	 * libgcc_s: with the fd table full that open fails and aborts the daemon before its
	 * cleanup (docs/performance.md, Problem 4). Loaded now, it is found in memory then. */
	if (!dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_NODELETE))
		log_warnx("cannot preload libgcc_s.so.1: %s", dlerror());
	raise_nofile();
	fs.se = fuse_session_new(&args, &bv_ops, sizeof(bv_ops), &fs);
	if (!fs.se)
		goto out_args; /* libfuse said which option it did not know */
	if (open_store(&o) < 0)
		goto out_session;
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_store;
	if (fuse_session_mount(fs.se, o.mountpoint) != 0)
		goto out_signals;
	if (mount_flags_beyond_libfuse(&o) < 0 || start_serving(&o) < 0) {
		fuse_session_unmount(fs.se);
		goto out_signals;
	}
	ret = serve_requests(o.single_thread);
	end_session(o.mountpoint);
	watchdog_done(); /* the session's /dev/fuse closes next */
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_store:
	store_close(&fs.store);
out_session:
	fuse_session_destroy(fs.se);
out_args:
	fuse_opt_free_args(&args);
	options_free(&o);
	return ret ? 1 : 0;
}
