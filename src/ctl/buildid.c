/* buildid.c - find NT_GNU_BUILD_ID in an ELF file: its PT_NOTE segments, then its SHT_NOTE
 * sections. 32/64-bit, either byte order; reads with pread only. */
#include "buildid.h"

#include <elf.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ef {
	int fd;
	bool is64, swap;
};

static uint16_t u16(const struct ef *e, const void *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return e->swap ? __builtin_bswap16(v) : v;
}

static uint32_t u32(const struct ef *e, const void *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return e->swap ? __builtin_bswap32(v) : v;
}

static uint64_t u64(const struct ef *e, const void *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return e->swap ? __builtin_bswap64(v) : v;
}

/* a word that is 4 bytes in ELF32 and 8 in ELF64 */
static uint64_t uw(const struct ef *e, const void *p)
{
	return e->is64 ? u64(e, p) : u32(e, p);
}

static bool full_pread(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n <= 0)
			return false;
		done += (size_t)n;
	}
	return true;
}

static int read_ident(int fd, unsigned char id[EI_NIDENT])
{
	if (!full_pread(fd, id, EI_NIDENT, 0) || memcmp(id, ELFMAG, SELFMAG) != 0)
		return -1;
	if (id[EI_CLASS] != ELFCLASS32 && id[EI_CLASS] != ELFCLASS64)
		return -1;
	if (id[EI_DATA] != ELFDATA2LSB && id[EI_DATA] != ELFDATA2MSB)
		return -1;
	return 0;
}

bool elf_is(int fd)
{
	unsigned char id[EI_NIDENT];
	return read_ident(fd, id) == 0;
}

/* Walk the notes in [off, off+size), aligned to 4 or 8; 1 when the build-id was found. */
static int scan_notes(const struct ef *e, uint64_t off, uint64_t size, uint64_t align,
		      char out[BUILD_ID_HEX])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char *buf;
	uint64_t p = 0, a = align == 8 ? 7 : 3;
	int found = 0;

	if (size < 12 || size > (1u << 20))
		return 0;
	buf = malloc(size);
	if (!buf || !full_pread(e->fd, buf, size, off)) {
		free(buf);
		return 0;
	}
	while (!found && p + 12 <= size) {
		uint32_t namesz = u32(e, buf + p), descsz = u32(e, buf + p + 4);
		uint32_t type = u32(e, buf + p + 8);
		uint64_t name = p + 12, desc = name + ((namesz + a) & ~a);
		uint64_t next = desc + ((descsz + a) & ~a);

		if (next > size || desc + descsz > size)
			break;
		if (type == NT_GNU_BUILD_ID && namesz == 4 && !memcmp(buf + name, "GNU", 4) &&
		    descsz > 0 && descsz <= (BUILD_ID_HEX - 1) / 2) {
			for (uint32_t i = 0; i < descsz; i++) {
				out[2 * i] = hex[buf[desc + i] >> 4];
				out[2 * i + 1] = hex[buf[desc + i] & 15];
			}
			out[2 * descsz] = 0;
			found = 1;
		}
		p = next;
	}
	free(buf);
	return found;
}

static int from_phdrs(const struct ef *e, const unsigned char *eh, char out[BUILD_ID_HEX])
{
	uint64_t phoff = uw(e, eh + (e->is64 ? 32 : 28));
	uint16_t phentsize = u16(e, eh + (e->is64 ? 54 : 42));
	uint16_t phnum = u16(e, eh + (e->is64 ? 56 : 44));
	unsigned char ph[64];

	if (!phoff || phentsize < (e->is64 ? 56 : 32) || phentsize > sizeof(ph))
		return 0;
	for (unsigned i = 0; i < phnum; i++) {
		if (!full_pread(e->fd, ph, phentsize, phoff + (uint64_t)i * phentsize))
			return 0;
		if (u32(e, ph) != PT_NOTE)
			continue;
		uint64_t off = e->is64 ? u64(e, ph + 8) : u32(e, ph + 4);
		uint64_t sz = e->is64 ? u64(e, ph + 32) : u32(e, ph + 16);
		uint64_t align = e->is64 ? u64(e, ph + 48) : u32(e, ph + 28);
		if (scan_notes(e, off, sz, align, out))
			return 1;
	}
	return 0;
}

static int from_shdrs(const struct ef *e, const unsigned char *eh, char out[BUILD_ID_HEX])
{
	uint64_t shoff = uw(e, eh + (e->is64 ? 40 : 32));
	uint16_t shentsize = u16(e, eh + (e->is64 ? 58 : 46));
	uint16_t shnum = u16(e, eh + (e->is64 ? 60 : 48));
	unsigned char sh[64];

	if (!shoff || shentsize < (e->is64 ? 64 : 40) || shentsize > sizeof(sh))
		return 0;
	for (unsigned i = 0; i < shnum; i++) {
		if (!full_pread(e->fd, sh, shentsize, shoff + (uint64_t)i * shentsize))
			return 0;
		if (u32(e, sh + 4) != SHT_NOTE)
			continue;
		uint64_t off = e->is64 ? u64(e, sh + 24) : u32(e, sh + 16);
		uint64_t sz = e->is64 ? u64(e, sh + 32) : u32(e, sh + 20);
		uint64_t align = e->is64 ? u64(e, sh + 48) : u32(e, sh + 32);
		if (scan_notes(e, off, sz, align, out))
			return 1;
	}
	return 0;
}

int elf_build_id(int fd, char out[BUILD_ID_HEX])
{
	unsigned char eh[64];
	struct ef e = {.fd = fd};
	uint16_t one = 1;
	bool little_host = *(unsigned char *)&one == 1;

	out[0] = 0;
	if (read_ident(fd, eh) < 0)
		return 0;
	e.is64 = eh[EI_CLASS] == ELFCLASS64;
	e.swap = (eh[EI_DATA] == ELFDATA2LSB) != little_host;
	if (!full_pread(fd, eh, e.is64 ? 64 : 52, 0))
		return 0;
	return from_phdrs(&e, eh, out) || from_shdrs(&e, eh, out);
}
