/* outdated.h - the processes that run, map or hold open a replaced version, with their
 * systemd units: shared by `outdated` and `restart`. */
#ifndef BINVFSCTL_OUTDATED_H
#define BINVFSCTL_OUTDATED_H

#include "procscan.h"

struct orow {
	struct procinfo p;
	struct punit u;
	char *file;
	unsigned running, current; /* current 0: the name was removed */
	unsigned how;		   /* USE_* */
};

struct orows {
	struct orow *r;
	size_t n;
};

/* The rows for the files at or below each of dirs[0..ndirs) (every binvfs mount if ndirs is
 * 0), each (pid, file, version) once; 0, or 1 after printing why a DIR is refused. */
int outdated_collect(char **dirs, int ndirs, struct orows *out);
void outdated_free(struct orows *rs);

/* A row's fields in a JSON object the caller opened: pid, command, unit, manager, file,
 * running and current (null: the name was removed); with all, also user, cmdline, cgroup and
 * how, in the order `outdated --json` gives them. restart lists the rows it skips without. */
void orow_json_fields(const struct orow *r, bool all);
/* A row's current version as shown: "N", or "removed"; buf. */
const char *orow_current(const struct orow *r, char *buf, size_t len);

/* A unit as shown: "app.service", "user@1000.service/foo.service"; NULL for none (owned). */
char *unit_label(const struct punit *u);

/* The units of rs in order of first appearance, each with its rows. */
struct ogroup {
	const struct punit *u; /* of the first row */
	char *label;	       /* unit_label, NULL: in no unit */
	size_t *rows, n;       /* indexes into rs */
};
struct ogroups {
	struct ogroup *g;
	size_t n;
};
void outdated_group(const struct orows *rs, struct ogroups *out);
void ogroups_free(struct ogroups *gs);
/* "a b c": the distinct pids (pids) or files of g's rows, in order; malloc'd. */
char *ogroup_join(const struct orows *rs, const struct ogroup *g, bool pids);

#endif
