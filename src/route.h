/* route.h - who gets which nodeid at LOOKUP: writers go to a staging nodeid, everyone else to
 * the published version. */
#ifndef BINVFS_ROUTE_H
#define BINVFS_ROUTE_H

#include <stdbool.h>
#include <sys/types.h>

struct node;

/* The routing rule, decided here and applied by the ops files (ops_entry.c, ops_file.c). */

/* LOOKUP of a regular file found in the tree or in .versions/ as version node n (one kernel
 * lookup): the node to answer (n, or a writer's staging node, which then holds the lookup:
 * n's is dropped), and whether the kernel may cache the name -> node answer (*cache; the
 * caller still refuses it when a publish overlapped the LOOKUP, design.md §3 Entry caching).
 * mode: the file's st_mode. */
struct node *route_lookup(pid_t tid, uid_t uid, struct node *parent, const char *name,
			  struct node *n, mode_t mode, bool *cache);

/* What an OPEN with these flags of node n gets. */
enum route_open {
	ROUTE_SERVE,	      /* open it (a staging node's write open, a join in place, a read) */
	ROUTE_REWALK,	      /* answer ESTALE: the kernel walks the path again (route armed) */
	ROUTE_REFUSE_VIEW,    /* a write open of a version in .versions/: read-only view */
	ROUTE_REFUSE_NO_WALK, /* a write open sent back once that came back without a name walk
			       * (/proc/PID/fd, a file handle): EROFS */
};
enum route_open route_open(pid_t tid, uid_t uid, struct node *n, int flags);

/* LOOKUP of a name whose version could be running: is the requesting thread in the middle of
 * a syscall that opens for writing or truncates? Reads /proc/<tid>/syscall. */
bool route_thread_writes(pid_t tid);

/* A write open or truncate reached a version nodeid: remember that this thread's next
 * LOOKUP(s) of a regular file must answer a staging nodeid. Returns false if the thread had
 * already been sent back for this very node (no name walk happened in between). */
bool route_arm(pid_t tid, uid_t uid, struct node *stale);

/* At LOOKUP: the staging node for this thread if it is routed (or `detected`, a writer seen
 * at LOOKUP), with one kernel lookup added; NULL if the thread is not routed. */
struct node *route_staging(pid_t tid, uid_t uid, struct node *base, struct node *parent,
			   const char *name, bool detected);

/* At LOOKUP: the file this writer's thread reached is being written in place
 * (node_written_in_place), so it writes it in place too; its open joins it even if the last
 * of those writers closes in between (route_joins_in_place consumes the decision), rather
 * than be sent back a second time. */
void route_in_place(pid_t tid, uid_t uid, struct node *file);
bool route_joins_in_place(pid_t tid, struct node *file);

/* Any LOOKUP of the thread: it walks a path, so its next open of the same version is a new
 * attempt, not the retry of one that had no name walk. */
void route_saw_lookup(pid_t tid);

/* The routed open or truncate arrived (or an exec was sent back): forget the route. */
void route_done(pid_t tid);

void route_clear_all(void);

#endif
