/* route.h - who gets which nodeid at LOOKUP: writers go to a staging nodeid, everyone else to
 * the published version. */
#ifndef BINVFS_ROUTE_H
#define BINVFS_ROUTE_H

#include <stdbool.h>
#include <sys/types.h>

struct node;

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
