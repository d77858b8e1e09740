/* copy.h - a writer's staging copy and the identical-content check (copy.c). */
#ifndef BINVFS_COPY_H
#define BINVFS_COPY_H

#include <sys/types.h>

int store_copy(int srcfd, int dstfd, off_t len);
int store_same_content(int a, int b, off_t size);

#endif
