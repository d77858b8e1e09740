/* cmd_diff.c - binvfsctl diff PATH [N [M]]: text versions through diff -u; binaries as sizes,
 * sha256, build-ids and the byte ranges that changed. */
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
#include <sys/wait.h>
#include <unistd.h>

#define GAP	    16	 /* changed bytes closer than this make one range */
#define MAX_RANGES  1000 /* kept for --json; all are counted */
#define SHOW_RANGES 20	 /* listed in text */

struct range {
	unsigned long long off, len;
};

struct bdiff {
	unsigned long long changed; /* bytes that differ, the size difference included */
	unsigned long long count;   /* ranges */
	struct range r[MAX_RANGES]; /* the first ones */
	struct range open;	    /* the range being extended */
	bool is_open;
};

/* Text: no NUL in the first 64 KiB and not ELF. */
static bool is_text(int fd)
{
	char buf[1 << 16];
	ssize_t n = pread(fd, buf, sizeof(buf), 0);

	return n >= 0 && !memchr(buf, 0, (size_t)n) && !(n >= 4 && !memcmp(buf, "\177ELF", 4));
}

static void flush_range(struct bdiff *d)
{
	if (!d->is_open)
		return;
	if (d->count < MAX_RANGES)
		d->r[d->count] = d->open;
	d->count++;
	d->is_open = false;
}

static void add_range(struct bdiff *d, unsigned long long off, unsigned long long len)
{
	d->changed += len;
	if (d->is_open && off <= d->open.off + d->open.len + GAP) {
		d->open.len = off + len - d->open.off;
		return;
	}
	flush_range(d);
	d->open = (struct range){off, len};
	d->is_open = true;
}

/* read at off until len bytes or end of file */
static ssize_t read_full(int fd, char *buf, size_t len, unsigned long long off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static int compare(int fa, int fb, struct bdiff *d)
{
	static char a[1 << 16], b[1 << 16];
	unsigned long long off = 0;
	int err = 0;

	memset(d, 0, sizeof(*d));
	for (;;) {
		ssize_t na = read_full(fa, a, sizeof(a), off),
			nb = read_full(fb, b, sizeof(b), off);
		if (na < 0 || nb < 0) {
			err = -errno;
			break;
		}
		ssize_t common = na < nb ? na : nb;
		for (ssize_t i = 0; i < common; i++)
			if (a[i] != b[i])
				add_range(d, off + (unsigned long long)i, 1);
		off += (unsigned long long)common;
		if (na != nb) {
			/* one ended: the rest of the other is all change */
			struct stat sa, sb;
			if (fstat(fa, &sa) < 0 || fstat(fb, &sb) < 0) {
				err = -errno;
				break;
			}
			unsigned long long end =
			    (unsigned long long)(sa.st_size > sb.st_size ? sa.st_size : sb.st_size);
			if (end > off)
				add_range(d, off, end - off);
			break;
		}
		if (na == 0)
			break;
	}
	flush_range(d);
	return err;
}

/* A --label of diff -u: the name escaped, so that it cannot forge a line of the diff. */
static char *label(const struct vlist *l, const struct version *v)
{
	char *file = esc(l->file);
	char *s = xasprintf("%s (version %u%s)", file, v->n, v->current ? ", current" : "");

	free(file);
	return s;
}

/* diff -u of the open versions fa and fb, to stdout or (for --json) into *out. diff reads
 * them as /proc/self/fd/N: the very files checked here, never a path again. */
static int run_diff(const struct vlist *l, const struct version *a, const struct version *b, int fa,
		    int fb, char **out)
{
	char *la = label(l, a), *lb = label(l, b), pa[32], pb[32];
	char *argv[] = {"diff", "-u", "--label", la, "--label", lb, pa, pb, NULL};
	int pfd[2] = {-1, -1}, status;
	size_t len = 0, cap = 0;
	pid_t pid;

	fflush(stdout);
	if (out && pipe2(pfd, O_CLOEXEC) < 0)
		return ctl_err("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0) {
		free(la);
		free(lb);
		if (out) {
			close(pfd[0]);
			close(pfd[1]);
		}
		return ctl_err("fork: %s", strerror(errno));
	}
	if (pid == 0) {
		if (out)
			dup2(pfd[1], 1);
		fcntl(fa, F_SETFD, 0); /* diff inherits them */
		fcntl(fb, F_SETFD, 0);
		snprintf(pa, sizeof(pa), "/proc/self/fd/%d", fa);
		snprintf(pb, sizeof(pb), "/proc/self/fd/%d", fb);
		execvp("diff", argv);
		fprintf(stderr, "binvfsctl: cannot run diff: %s\n", strerror(errno));
		_exit(127);
	}
	free(la);
	free(lb);
	if (out) {
		close(pfd[1]);
		*out = NULL;
		for (ssize_t n = 1; n > 0;) {
			if (len + 4096 >= cap)
				*out = xrealloc(*out, cap = 2 * cap + 8192);
			n = read(pfd[0], *out + len, cap - len - 1);
			if (n > 0)
				len += (size_t)n;
		}
		(*out)[len] = 0;
		close(pfd[0]);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) > 1)
		return WIFEXITED(status) && WEXITSTATUS(status) == 127 ? 1 : ctl_err("diff failed");
	return 0;
}

static void json_side(const char *key, const struct version *v, const struct vinfo *in)
{
	json_key(key);
	json_obj();
	json_kint("n", v->n);
	json_kbool("current", v->current);
	json_kstr("path", v->path);
	json_kint("size", (long long)v->st.st_size);
	json_kstr("sha256", in->sha256);
	json_kstr("build_id", in->build_id[0] ? in->build_id : NULL);
	json_obj_end();
}

static void text_binary(const struct vlist *l, const struct version *a, const struct version *b,
			const struct vinfo *ia, const struct vinfo *ib, const struct bdiff *d)
{
	char *file = esc(l->file);
	printf("%s: version %u -> version %u%s, binary\n", file, a->n, b->n,
	       b->current ? " (current)" : "");
	free(file);
	printf("size:      %lld -> %lld bytes\n", (long long)a->st.st_size,
	       (long long)b->st.st_size);
	printf("sha256:    %s\n        -> %s\n", ia->sha256, ib->sha256);
	if (ia->build_id[0] || ib->build_id[0])
		printf("build-id:  %s -> %s\n", ia->build_id[0] ? ia->build_id : "-",
		       ib->build_id[0] ? ib->build_id : "-");
	if (!d->count) {
		printf("changed:   nothing, identical\n");
		return;
	}
	printf("changed:   %llu bytes in %llu range%s\n", d->changed, d->count,
	       d->count == 1 ? "" : "s");
	for (unsigned long long i = 0; i < d->count && i < SHOW_RANGES; i++)
		printf("  0x%08llx-0x%08llx (%llu byte%s)\n", d->r[i].off,
		       d->r[i].off + d->r[i].len - 1, d->r[i].len, d->r[i].len == 1 ? "" : "s");
	if (d->count > SHOW_RANGES)
		printf("  ... and %llu more\n", d->count - SHOW_RANGES);
}

static int pick(struct vlist *l, char **pos, const char *arg, struct version **a,
		struct version **b)
{
	unsigned n, m;

	if (pos[0] && !parse_version(pos[0], &n))
		return ctl_err("%s: not a version number (1, 2, ...)", pos[0]);
	if (pos[1] && !parse_version(pos[1], &m))
		return ctl_err("%s: not a version number (1, 2, ...)", pos[1]);
	if (!pos[1] && !l->current)
		return ctl_err("%s: removed, no current version; give N and M", arg);
	if (!pos[0] && !l->newest_old)
		return ctl_err("%s: has no old version to compare with", arg);
	if (!pos[0])
		n = l->newest_old;
	if (!pos[1])
		m = l->current;
	if (!(*a = vlist_need(l, n, arg)) || !(*b = vlist_need(l, m, arg)))
		return 1;
	return 0;
}

int cmd_diff(int argc, char **argv)
{
	char *pos[3], *text = NULL;
	struct target t;
	struct vlist l = {0};
	struct version *a = NULL, *b = NULL;
	struct vinfo ia, ib;
	struct bdiff *d = NULL;
	int ret = 1, err, fa = -1, fb = -1;

	unsigned id;
	int rel = take_release(&argc, argv, &id);
	if (rel)
		return rel < 0 ? 1 : release_diff(argc, argv, id);
	if (cmd_args(argc, argv, 1, 3, "diff PATH [N [M]] | diff --release ID [PATH]", pos))
		return 1;
	if (target_resolve(pos[0], &t) || vlist_load(&t, &l) || pick(&l, pos + 1, pos[0], &a, &b))
		goto out;
	/* each opened once (a regular file, no symlink on the way): all reads through these */
	if ((fa = version_open(&l, a, pos[0])) < 0 || (fb = version_open(&l, b, pos[0])) < 0)
		goto out;
	if ((err = vinfo_fd(fa, &ia)) || (err = vinfo_fd(fb, &ib))) {
		ctl_err("%s: %s", pos[0], strerror(-err));
		goto out;
	}
	bool binary = !is_text(fa) || !is_text(fb);
	if (binary) {
		d = xmalloc(sizeof(*d));
		if ((err = compare(fa, fb, d))) {
			ctl_err("%s: %s", pos[0], strerror(-err));
			goto out;
		}
	} else if (run_diff(&l, a, b, fa, fb, ctl_json ? &text : NULL)) {
		goto out;
	}
	bool same = !strcmp(ia.sha256, ib.sha256);
	if (ctl_json) {
		json_obj();
		json_kstr("path", l.file);
		json_side("a", a, &ia);
		json_side("b", b, &ib);
		json_kbool("binary", binary);
		json_kbool("identical", same);
		if (binary) {
			json_kint("changed_bytes", (long long)d->changed);
			json_kint("range_count", (long long)d->count);
			json_key("ranges");
			json_arr();
			for (unsigned long long i = 0; i < d->count && i < MAX_RANGES; i++) {
				json_obj();
				json_kint("offset", (long long)d->r[i].off);
				json_kint("length", (long long)d->r[i].len);
				json_obj_end();
			}
			json_arr_end();
		} else {
			json_kstr("diff", text ? text : "");
		}
		json_obj_end();
	} else if (binary) {
		text_binary(&l, a, b, &ia, &ib, d);
	} else if (same) {
		char *file = esc(l.file);
		printf("%s: versions %u and %u are identical\n", file, a->n, b->n);
		free(file);
	}
	ret = 0;
out:
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	free(text);
	free(d);
	vlist_free(&l);
	target_free(&t);
	return ret;
}
