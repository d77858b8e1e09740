/* options.h - the command line: binvfs [-f] [-d] [-o OPT[,OPT...]] SOURCE [MOUNTPOINT] */
#ifndef BINVFS_OPTIONS_H
#define BINVFS_OPTIONS_H

#include <stdbool.h>

#include "passthrough.h"

struct options {
	char *source;		    /* realpath of SOURCE */
	char *mountpoint;	    /* realpath of MOUNTPOINT (SOURCE when omitted) */
	unsigned keep;		    /* keep=N, default 10, 0 = no limit */
	unsigned readahead_kb;	    /* readahead=KB, default 512, 0 = the kernel's */
	unsigned long long reserve; /* reserve=SIZE: bytes, or a percentage if reserve_pct */
	bool reserve_pct;	    /* default 1% */
	bool readahead_asked;
	enum pt_want passthrough; /* passthrough=auto|on|off, default auto */
	bool nosync;
	bool uring; /* -o uring: FUSE over io_uring when the kernel offers it (uring.h) */
	bool noacl; /* -o noacl: no FUSE_POSIX_ACL (the kernel checks the mode bits only) */
	bool foreground;
	bool debug;
	bool single_thread;
	bool remount;		    /* -o remount: change the flags of a running mount */
	unsigned long mflags;	    /* MS_* mount flags the options set ... */
	unsigned long mflags_given; /* ... among those they named */
	char fuse_opts[4096];	    /* what goes on to libfuse as -o */
};

extern const char *binvfs_usage;

/* Returns 0 to go on, 1 after printing help or version (exit 0), -1 on bad usage (exit 1). */
int options_parse(int argc, char **argv, struct options *o);
void options_free(struct options *o);
/* The MS_* flags of a mount: those the options named, the others as in base. */
unsigned long options_mount_flags(const struct options *o, unsigned long base);

#endif
