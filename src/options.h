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
	bool foreground;
	bool debug;
	bool single_thread;
	char fuse_opts[4096]; /* what goes on to libfuse as -o */
};

extern const char *binvfs_usage;

/* Returns 0 to go on, 1 after printing help or version (exit 0), -1 on bad usage (exit 1). */
int options_parse(int argc, char **argv, struct options *o);
void options_free(struct options *o);

#endif
