/* procscan.c - the /proc scan: maps, exe and fds of every process, matched by device and
 * inode number (never by path or "(deleted)"). */
#define _GNU_SOURCE
#include "procscan.h"
#include "ctl.h"
#include "json.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

void proc_each(bool (*fn)(pid_t pid, void *arg), void *arg)
{
	DIR *d = opendir("/proc");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		if (!isdigit((unsigned char)e->d_name[0]) || *end || pid <= 0)
			continue;
		if (fn((pid_t)pid, arg))
			break;
	}
	closedir(d);
}

char *proc_cmdline(pid_t pid, size_t *len)
{
	char path[64], *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	int fd;

	*len = 0;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	do {
		if (*len + 4096 > cap)
			buf = xrealloc(buf, cap += 4096 + cap);
		n = read(fd, buf + *len, cap - *len - 1);
		if (n > 0)
			*len += (size_t)n;
	} while (n > 0);
	close(fd);
	if (*len == 0) {
		free(buf);
		return NULL; /* a kernel thread, or gone */
	}
	buf[*len] = 0;
	return buf;
}

struct scan {
	dev_t dev;
	const char *point;
	size_t plen;
	struct uses *out;
	size_t cap;
};

static void add(struct scan *s, pid_t pid, ino_t ino, unsigned how)
{
	if (s->out->n == s->cap)
		s->out->u =
		    xrealloc(s->out->u, (s->cap = s->cap ? 2 * s->cap : 64) * sizeof(*s->out->u));
	s->out->u[s->out->n++] = (struct use){.pid = pid, .ino = ino, .how = how};
}

static void scan_maps(struct scan *s, pid_t pid)
{
	char path[64], *line = NULL;
	size_t cap = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (getline(&line, &cap, f) > 0) {
		unsigned maj, min;
		unsigned long long ino;
		/* start-end perms offset MAJ:MIN inode [path] */
		if (sscanf(line, "%*x-%*x %*s %*x %x:%x %llu", &maj, &min, &ino) != 3 || !ino)
			continue;
		if (makedev(maj, min) == s->dev)
			add(s, pid, (ino_t)ino, USE_MAP);
	}
	free(line);
	fclose(f);
}

/* Is the link target in the mount? (a cheap test before stat, which may reach a daemon) */
static bool in_mount(const struct scan *s, const char *link)
{
	if (s->plen == 1)
		return link[0] == '/';
	return !strncmp(link, s->point, s->plen) && (link[s->plen] == '/' || !link[s->plen]);
}

static void scan_link(struct scan *s, pid_t pid, const char *magic, unsigned how)
{
	char link[PATH_MAX];
	ssize_t n = readlink(magic, link, sizeof(link) - 1);
	struct stat st;

	if (n <= 0)
		return;
	link[n] = 0;
	if (in_mount(s, link) && stat(magic, &st) == 0 && st.st_dev == s->dev &&
	    S_ISREG(st.st_mode))
		add(s, pid, st.st_ino, how);
}

static void scan_fds(struct scan *s, pid_t pid)
{
	char path[64];
	struct dirent *e;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d))) {
		char fdp[320];
		if (e->d_name[0] == '.')
			continue;
		snprintf(fdp, sizeof(fdp), "%s/%s", path, e->d_name);
		scan_link(s, pid, fdp, USE_FD);
	}
	closedir(d);
}

static bool scan_pid(pid_t pid, void *arg)
{
	struct scan *s = arg;
	char exe[64];

	if (pid == getpid())
		return false;
	scan_maps(s, pid);
	snprintf(exe, sizeof(exe), "/proc/%d/exe", pid);
	scan_link(s, pid, exe, USE_EXE);
	scan_fds(s, pid);
	return false;
}

static int cmp_use(const void *a, const void *b)
{
	const struct use *x = a, *y = b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

void uses_scan(dev_t dev, const char *point, struct uses *out)
{
	struct scan s = {.dev = dev, .point = point, .plen = strlen(point), .out = out};
	size_t j = 0;

	out->u = NULL;
	out->n = 0;
	proc_each(scan_pid, &s);
	if (!out->n)
		return;
	qsort(out->u, out->n, sizeof(*out->u), cmp_use);
	for (size_t i = 1; i < out->n; i++) {
		if (out->u[i].pid == out->u[j].pid && out->u[i].ino == out->u[j].ino)
			out->u[j].how |= out->u[i].how;
		else
			out->u[++j] = out->u[i];
	}
	out->n = j + 1;
}

void uses_free(struct uses *u)
{
	free(u->u);
	u->u = NULL;
	u->n = 0;
}

const char *use_how(unsigned how, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s%s", how & USE_EXE ? "exe" : "",
		 (how & USE_EXE) && (how & (USE_MAP | USE_FD)) ? "," : "",
		 how & USE_MAP ? "map" : "", (how & USE_MAP) && (how & USE_FD) ? "," : "",
		 how & USE_FD ? "open" : "");
	return buf;
}

void procinfo_get(pid_t pid, struct procinfo *p)
{
	char path[64], line[256];
	size_t len;
	FILE *f;
	long uid = -1;

	memset(p, 0, sizeof(*p));
	p->pid = pid;
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "re");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "Uid:", 4))
			uid = strtol(line + 4, NULL, 10);
	if (f)
		fclose(f);
	/* the name as the process set it (status's Name: is the kernel's escaped form): bytes,
	 * escaped or not as each output wants */
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, p->comm, sizeof(p->comm) - 1) : -1;
	if (fd >= 0)
		close(fd);
	p->comm[n > 0 ? n : 0] = 0;
	if (n > 0 && p->comm[n - 1] == '\n')
		p->comm[n - 1] = 0; /* the kernel's line end */
	struct passwd *pw = uid >= 0 ? getpwuid((uid_t)uid) : NULL;
	if (pw)
		snprintf(p->user, sizeof(p->user), "%s", pw->pw_name);
	else if (uid >= 0)
		snprintf(p->user, sizeof(p->user), "%ld", uid);
	p->cmdline = proc_cmdline(pid, &len);
	for (size_t i = 0; p->cmdline && i + 1 < len; i++)
		if (!p->cmdline[i])
			p->cmdline[i] = ' ';
	if (!p->cmdline)
		p->cmdline = xstrdup(p->comm);
}

void procinfo_free(struct procinfo *p)
{
	free(p->cmdline);
	p->cmdline = NULL;
}

/* A unit name as systemd writes it into cgroup paths: NAME.TYPE with a known type. Names that
 * collide with the kernel's own cgroup files are escaped with a leading '_'. */
static const char *unit_types[] = {".service", ".scope",  ".socket", ".mount", ".automount",
				   ".swap",    ".target", ".path",   ".timer", ".device"};

static bool is_unit(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(unit_types) / sizeof(unit_types[0]); i++) {
		size_t tl = strlen(unit_types[i]);
		if (len > tl && !memcmp(name + len - tl, unit_types[i], tl))
			return true;
	}
	return false;
}

static bool is_slice(const char *name, size_t len)
{
	return len > 6 && !memcmp(name + len - 6, ".slice", 6);
}

/* The next path component after *p that is not a slice, unescaped; its length in *len. */
static const char *next_unit(const char **p, size_t *len)
{
	for (;;) {
		const char *c = *p + strspn(*p, "/");
		size_t l = strcspn(c, "/");
		*p = c + l;
		if (!l)
			return NULL;
		if (is_slice(c, l))
			continue;
		if (c[0] == '_')
			c++, l--;
		*len = l;
		return is_unit(c, l) ? c : NULL;
	}
}

static char *copy_n(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

bool cgroup_unit(const char *path, char **unit, char **manager)
{
	const char *p = path, *c, *sub;
	size_t len, sublen;

	*unit = *manager = NULL;
	if (!(c = next_unit(&p, &len)))
		return false;
	/* user@UID.service/app.slice/foo.service: foo.service of that user's manager */
	if (!strncmp(c, "user@", 5) && len > 13 && !memcmp(c + len - 8, ".service", 8) &&
	    (sub = next_unit(&p, &sublen))) {
		*manager = copy_n(c, len);
		*unit = copy_n(sub, sublen);
	} else {
		*unit = copy_n(c, len);
	}
	return true;
}

void proc_unit(pid_t pid, struct punit *u)
{
	char path[64], *line = NULL, *v1 = NULL, *v2 = NULL;
	size_t cap = 0;
	FILE *f;

	memset(u, 0, sizeof(*u));
	snprintf(path, sizeof(path), "/proc/%d/cgroup", pid);
	f = fopen(path, "re");
	if (!f)
		return;
	/* "ID:CONTROLLERS:PATH"; v1 systemd: "N:name=systemd:/system.slice/app.service",
	 * v2 (or the hybrid layout's unified tree): "0::/system.slice/app.service" */
	while (getline(&line, &cap, f) > 0) {
		char *ctrl = strchr(line, ':'), *cg;
		if (!ctrl || !(cg = strchr(++ctrl, ':')))
			continue;
		*cg++ = 0;
		cg[strcspn(cg, "\n")] = 0;
		if (!strcmp(ctrl, "name=systemd") && !v1)
			v1 = xstrdup(cg);
		else if (!*ctrl && !strncmp(line, "0:", 2) && !v2)
			v2 = xstrdup(cg);
	}
	free(line);
	fclose(f);
	/* systemd keeps both trees alike where both exist; the v1 one is its own in the hybrid
	 * layout, so it comes first, and the v2 path counts when v1 places the process nowhere */
	if (v1 && cgroup_unit(v1, &u->unit, &u->manager)) {
		u->cgroup = v1;
		v1 = NULL;
	} else if (v2 && cgroup_unit(v2, &u->unit, &u->manager)) {
		u->cgroup = v2;
		v2 = NULL;
	} else if (v1) {
		u->cgroup = v1; /* in the root cgroup, or under no unit */
		v1 = NULL;
	} else {
		u->cgroup = v2;
		v2 = NULL;
	}
	free(v1);
	free(v2);
}

void punit_free(struct punit *u)
{
	free(u->cgroup);
	free(u->unit);
	free(u->manager);
	memset(u, 0, sizeof(*u));
}

/* The bytes of a valid unit name (systemd's unit_name_is_valid): a cgroup named otherwise
 * was made by someone else, and its name never goes into a command. */
#define UNIT_NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:-_.\\@"

bool punit_restartable(const struct punit *u, const char **why)
{
	size_t len = u->unit ? strlen(u->unit) : 0;

	*why = NULL;
	if (!u->unit)
		*why = "in no unit";
	else if (u->manager)
		*why = "a user unit (restart it with systemctl --user as that user)";
	else if (!strncmp(u->unit, "user@", 5))
		*why = "a user's service manager";
	else if (len > 6 && !strcmp(u->unit + len - 6, ".scope"))
		*why = "in a scope (a login session or a transient group), not a service";
	else if (len <= 8 || strcmp(u->unit + len - 8, ".service"))
		*why = "not a service";
	else if (strspn(u->unit, UNIT_NAME_CHARS) != len)
		*why = "not a valid systemd unit name";
	return *why == NULL;
}

/* how, as a JSON array: "exe", "map", "open" (log and outdated --json) */
void json_how(unsigned how)
{
	json_arr();
	if (how & USE_EXE)
		json_str("exe");
	if (how & USE_MAP)
		json_str("map");
	if (how & USE_FD)
		json_str("open");
	json_arr_end();
}
