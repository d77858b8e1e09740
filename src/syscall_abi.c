/* syscall_abi.c - the syscall tables binvfs decodes at LOOKUP (see syscall_abi.h).
 *
 * Numbers from the kernel's tables: arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl,
 * include/uapi/asm-generic/unistd.h, arch/powerpc/kernel/syscalls/syscall.tbl,
 * arch/s390/kernel/syscalls/syscall.tbl. The argument that holds the flags, and that of
 * openat2's struct open_how pointer, are the same position in every table. */
#define _GNU_SOURCE
#include "syscall_abi.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define X32_SYSCALL_BIT 0x40000000L

/* open(2) flags that decide, as every ABI here spells them */
#define ABI_O_ACCMODE 03ull
#define ABI_O_TRUNC   01000ull
#define ABI_O_PATH    010000000ull

#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) ||                            \
    (defined(__riscv) && __riscv_xlen == 64) || defined(__loongarch64) ||                          \
    defined(__powerpc64__) || defined(__s390x__)
_Static_assert(O_ACCMODE == ABI_O_ACCMODE && O_TRUNC == ABI_O_TRUNC && O_PATH == ABI_O_PATH,
	       "open flags differ from the ABI tables' values");
#endif

/* Numbers of the calls that matter, per table (-1: the table has no such call). */
struct table {
	long open, openat, creat, truncate, truncate64, openat2;
	uint64_t mask; /* argument width: a 32-bit ABI's registers keep stale upper halves */
};

static const struct table tables[] = {
    [SYSABI_X86_64] = {2, 257, 85, 76, -1, 437, UINT64_MAX},
    [SYSABI_X32] = {X32_SYSCALL_BIT | 2, X32_SYSCALL_BIT | 257, X32_SYSCALL_BIT | 85,
		    X32_SYSCALL_BIT | 76, -1, X32_SYSCALL_BIT | 437, UINT64_MAX},
    [SYSABI_I386] = {5, 295, 8, 92, 193, 437, UINT32_MAX},
    /* no open, creat or 32-bit truncate64 in the generic table (64-bit: truncate is 45) */
    [SYSABI_GENERIC64] = {-1, 56, -1, 45, -1, 437, UINT64_MAX},
    [SYSABI_PPC64] = {5, 286, 8, 92, -1, 437, UINT64_MAX},
    [SYSABI_S390X] = {5, 288, 8, 92, -1, 437, UINT64_MAX},
};

static const char *const names[] = {
    [SYSABI_UNKNOWN] = "unknown", [SYSABI_X86_64] = "x86_64",	    [SYSABI_I386] = "i386",
    [SYSABI_X32] = "x32",	  [SYSABI_GENERIC64] = "generic64", [SYSABI_PPC64] = "ppc64",
    [SYSABI_S390X] = "s390x",
};

bool sysabi_parse(const char *line, struct sysabi_call *c)
{
	if (!line || !c)
		return false;
	memset(c, 0, sizeof(*c));
	/* "running" and "-1 sp pc" (not in a syscall) do not match */
	if (sscanf(line,
		   "%ld %" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64
		   " %" SCNx64 " %" SCNx64,
		   &c->nr, &c->arg[0], &c->arg[1], &c->arg[2], &c->arg[3], &c->arg[4], &c->arg[5],
		   &c->sp, &c->pc) != 9)
		return false;
	return c->nr >= 0;
}

enum sysabi sysabi_native(void)
{
#if defined(__x86_64__) && defined(__ILP32__)
	return SYSABI_X32;
#elif defined(__x86_64__)
	return SYSABI_X86_64;
#elif defined(__i386__)
	return SYSABI_I386;
#elif defined(__aarch64__) || (defined(__riscv) && __riscv_xlen == 64) || defined(__loongarch64)
	return SYSABI_GENERIC64;
#elif defined(__powerpc64__)
	return SYSABI_PPC64;
#elif defined(__s390x__)
	return SYSABI_S390X;
#else
	return SYSABI_UNKNOWN;
#endif
}

enum sysabi sysabi_x86_entry(const struct sysabi_call *c, const unsigned char *insn)
{
	bool x32 = c->nr & X32_SYSCALL_BIT;

	if (!insn) /* a 32-bit task's stack is below 4 GiB (x32's too, but it sets the bit) */
		return x32 ? SYSABI_X32 : c->sp <= UINT32_MAX ? SYSABI_I386 : SYSABI_X86_64;
	if (insn[0] == 0xcd && insn[1] == 0x80) /* int $0x80, or the vDSO's landing pad */
		return SYSABI_I386;
	if (insn[0] == 0x0f && insn[1] == 0x05) /* syscall */
		return x32 ? SYSABI_X32 : SYSABI_X86_64;
	return SYSABI_UNKNOWN;
}

bool sysabi_flags_write(uint64_t flags)
{
	if (flags & ABI_O_PATH)
		return false;
	return (flags & ABI_O_ACCMODE) != 0 || (flags & ABI_O_TRUNC);
}

enum sysabi_verdict sysabi_decode(enum sysabi abi, const struct sysabi_call *c, uint64_t *how)
{
	const struct table *t;

	if (abi <= SYSABI_UNKNOWN || abi >= sizeof(tables) / sizeof(tables[0]) || c->nr < 0)
		return SYSABI_NO;
	t = &tables[abi];
	if (c->nr == t->open) /* open(path, flags, mode) */
		return sysabi_flags_write(c->arg[1] & t->mask) ? SYSABI_WRITES : SYSABI_NO;
	if (c->nr == t->openat) /* openat(dfd, path, flags, mode) */
		return sysabi_flags_write(c->arg[2] & t->mask) ? SYSABI_WRITES : SYSABI_NO;
	if (c->nr == t->creat || c->nr == t->truncate || c->nr == t->truncate64)
		return SYSABI_WRITES;
	if (c->nr == t->openat2) { /* openat2(dfd, path, how, size): flags in the caller's memory */
		if (how)
			*how = c->arg[2] & t->mask;
		return SYSABI_HOW;
	}
	return SYSABI_NO;
}

const char *sysabi_name(enum sysabi abi)
{
	if (abi < SYSABI_UNKNOWN || abi >= sizeof(names) / sizeof(names[0]))
		return "unknown";
	return names[abi];
}

enum sysabi sysabi_by_name(const char *name)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i] && !strcmp(names[i], name))
			return (enum sysabi)i;
	return SYSABI_UNKNOWN;
}
