/* buildid.h - the GNU build-id of an ELF file (NT_GNU_BUILD_ID note), for binvfsctl log/diff. */
#ifndef BINVFSCTL_BUILDID_H
#define BINVFSCTL_BUILDID_H

#include <stdbool.h>
#include <stddef.h>

#define BUILD_ID_HEX 129 /* up to 64 bytes of id, in hex */

bool elf_is(int fd);
/* 1 and the id in hex if fd is an ELF file with a build-id, 0 if not. */
int elf_build_id(int fd, char out[BUILD_ID_HEX]);

#endif
