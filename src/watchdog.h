/* watchdog.h - a process of the daemon's own that aborts its FUSE connection when the daemon
 * dies or stops and cannot exit (kernel-notes §12), so that the mount never wedges. */
#ifndef BINVFS_WATCHDOG_H
#define BINVFS_WATCHDOG_H

/* Fork the watchdog for FUSE connection conn (fusectl's name for it). Call it while the
 * daemon has one thread, after it went to the background. 0 or -errno. */
int watchdog_start(unsigned conn);
/* The daemon stops: from now on it has a short while to close its connection itself. */
void watchdog_stopping(void);
/* The daemon is done with /dev/fuse (it closes it next): the watchdog goes. */
void watchdog_done(void);

#endif
