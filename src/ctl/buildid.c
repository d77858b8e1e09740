/* buildid.c - find NT_GNU_BUILD_ID in an ELF file: its PT_NOTE segments, then its SHT_NOTE
 * sections. 32/64-bit, either byte order; reads with pread only. */
#include "buildid.h"

#include <elf.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Bounds: a file's content is anybody's (a version is what a user wrote), and `log` reads every
 * version as root. Real files have a dozen program headers, under a hundred sections (a few
 * thousand with -ffunction-sections objects) and a few hundred bytes of notes (build-id 36,
 * ABI tag 32, property 48, package metadata some hundred). So: at most MAX_HEADERS entries of
 * each table, read in one pread, and at most NOTE_BUDGET bytes of notes per file, all tables
 * together. A hostile file with 65535 note headers, each pointing at a MiB of notes, costs
 * about 256 KiB of header reads and 64 KiB of notes, not 64 GiB. */
#define MAX_HEADERS 4096
#define NOTE_BUDGET (64 * 1024)

struct ef {
	int fd;
	bool is64, swap;
	uint64_t budget; /* note bytes still to read in this file */
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

/* pread until len bytes, the end of the file or an error: the bytes read */
static size_t some_pread(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	return done;
}

static bool full_pread(int fd, void *buf, size_t len, uint64_t off)
{
	return some_pread(fd, buf, len, off) == len;
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
static int scan_notes(struct ef *e, uint64_t off, uint64_t size, uint64_t align,
		      char out[BUILD_ID_HEX])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char *buf;
	uint64_t p = 0, a = align == 8 ? 7 : 3;
	int found = 0;

	if (size > e->budget)
		size = e->budget; /* the notes that fit; a note cut off ends the walk */
	if (size < 12)
		return 0;
	e->budget -= size;
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

/* A table of headers that can point at notes: the program headers (PT_NOTE segments) or the
 * section headers (SHT_NOTE sections). Where things are, as byte offsets, [0] for ELF32 and
 * [1] for ELF64: in the ELF header, the table's file offset, entry size and entry count; in an
 * entry, its type and the file offset, size and alignment of the notes it points at. */
struct note_table {
	uint32_t notes; /* the type of an entry that points at notes */
	size_t table[2], entsize[2], count[2];
	size_t type[2], offset[2], size[2], align[2];
	size_t min_entsize[2];
};

static const struct note_table program_headers = {
    .notes = PT_NOTE,
    .table = {offsetof(Elf32_Ehdr, e_phoff), offsetof(Elf64_Ehdr, e_phoff)},
    .entsize = {offsetof(Elf32_Ehdr, e_phentsize), offsetof(Elf64_Ehdr, e_phentsize)},
    .count = {offsetof(Elf32_Ehdr, e_phnum), offsetof(Elf64_Ehdr, e_phnum)},
    .type = {offsetof(Elf32_Phdr, p_type), offsetof(Elf64_Phdr, p_type)},
    .offset = {offsetof(Elf32_Phdr, p_offset), offsetof(Elf64_Phdr, p_offset)},
    .size = {offsetof(Elf32_Phdr, p_filesz), offsetof(Elf64_Phdr, p_filesz)},
    .align = {offsetof(Elf32_Phdr, p_align), offsetof(Elf64_Phdr, p_align)},
    .min_entsize = {sizeof(Elf32_Phdr), sizeof(Elf64_Phdr)},
};

static const struct note_table section_headers = {
    .notes = SHT_NOTE,
    .table = {offsetof(Elf32_Ehdr, e_shoff), offsetof(Elf64_Ehdr, e_shoff)},
    .entsize = {offsetof(Elf32_Ehdr, e_shentsize), offsetof(Elf64_Ehdr, e_shentsize)},
    .count = {offsetof(Elf32_Ehdr, e_shnum), offsetof(Elf64_Ehdr, e_shnum)},
    .type = {offsetof(Elf32_Shdr, sh_type), offsetof(Elf64_Shdr, sh_type)},
    .offset = {offsetof(Elf32_Shdr, sh_offset), offsetof(Elf64_Shdr, sh_offset)},
    .size = {offsetof(Elf32_Shdr, sh_size), offsetof(Elf64_Shdr, sh_size)},
    .align = {offsetof(Elf32_Shdr, sh_addralign), offsetof(Elf64_Shdr, sh_addralign)},
    .min_entsize = {sizeof(Elf32_Shdr), sizeof(Elf64_Shdr)},
};

/* Scan the notes that the first MAX_HEADERS entries of table t point at, while the note
 * budget lasts; 1 when the build-id was found. */
static int from_table(struct ef *e, const unsigned char *eh, const struct note_table *t,
		      char out[BUILD_ID_HEX])
{
	int c = e->is64, found = 0;
	uint64_t off = uw(e, eh + t->table[c]);
	uint16_t entsize = u16(e, eh + t->entsize[c]);
	unsigned count = u16(e, eh + t->count[c]);
	unsigned char *tab;

	if (!off || entsize < t->min_entsize[c] || entsize > 64)
		return 0;
	if (count > MAX_HEADERS)
		count = MAX_HEADERS;
	tab = malloc((size_t)count * entsize + 1);
	/* one read for the table; where the file ends, so does the table */
	if (!tab) /* out of memory: no build-id shown */
		return 0;
	count = (unsigned)(some_pread(e->fd, tab, (size_t)count * entsize, off) / entsize);
	for (unsigned i = 0; i < count && !found && e->budget >= 12; i++) {
		const unsigned char *ent = tab + (size_t)i * entsize;
		if (u32(e, ent + t->type[c]) == t->notes)
			found = scan_notes(e, uw(e, ent + t->offset[c]), uw(e, ent + t->size[c]),
					   uw(e, ent + t->align[c]), out);
	}
	free(tab);
	return found;
}

int elf_build_id(int fd, char out[BUILD_ID_HEX])
{
	unsigned char eh[64];
	struct ef e = {.fd = fd, .budget = NOTE_BUDGET};
	uint16_t one = 1;
	bool little_host = *(unsigned char *)&one == 1;

	out[0] = 0;
	if (read_ident(fd, eh) < 0)
		return 0;
	e.is64 = eh[EI_CLASS] == ELFCLASS64;
	e.swap = (eh[EI_DATA] == ELFDATA2LSB) != little_host;
	if (!full_pread(fd, eh, e.is64 ? 64 : 52, 0))
		return 0;
	return from_table(&e, eh, &program_headers, out) ||
	       from_table(&e, eh, &section_headers, out);
}
