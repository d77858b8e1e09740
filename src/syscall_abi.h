/* syscall_abi.h - what a line of /proc/<tid>/syscall means, for the ABI the task entered the
 * kernel by (design.md §"Writers", "Architectures and ABIs"). Pure functions: no /proc, no
 * process memory; route.c does the reading, tests/test_abi.py drives these through
 * syscall_abi_test. */
#ifndef BINVFS_SYSCALL_ABI_H
#define BINVFS_SYSCALL_ABI_H

#include <stdbool.h>
#include <stdint.h>

enum sysabi {
	SYSABI_UNKNOWN = 0,
	SYSABI_X86_64,	  /* x86-64 `syscall` */
	SYSABI_I386,	  /* i386, native or compat on an x86-64 kernel (int $0x80, vDSO entry) */
	SYSABI_X32,	  /* x32: x86-64 `syscall` with __X32_SYSCALL_BIT in the number */
	SYSABI_GENERIC64, /* asm-generic/unistd.h, 64-bit: arm64, riscv64, loongarch64 */
	SYSABI_PPC64,	  /* powerpc 64-bit (ppc64le) */
	SYSABI_S390X,	  /* s390x 64-bit */
};

/* One line of /proc/<tid>/syscall: "nr a0 a1 a2 a3 a4 a5 sp pc" (64-bit fields whatever the
 * daemon's width). */
struct sysabi_call {
	long nr;
	uint64_t arg[6];
	uint64_t sp, pc;
};

enum sysabi_verdict {
	SYSABI_NO = 0, /* not a path walk that opens for writing or truncates */
	SYSABI_WRITES, /* it is */
	SYSABI_HOW,    /* openat2: the caller's struct open_how is at *how; its first 8 bytes
			  (flags, a u64 in every ABI) decide, with sysabi_flags_write */
};

/* Parse a line; false for "running", "-1 sp pc" (blocked outside a syscall) or anything
 * malformed. */
bool sysabi_parse(const char *line, struct sysabi_call *c);

/* The ABI of the daemon's own build (SYSABI_UNKNOWN on an architecture not listed). */
enum sysabi sysabi_native(void);

/* x86-64 kernels: the table a blocked syscall entered by, told by the two bytes before its
 * user pc (insn, or NULL if they could not be read). `syscall` (0f 05) runs the x86-64 table,
 * or x32's when the number has __X32_SYSCALL_BIT; `int $0x80` (cd 80) runs the i386 table,
 * and so do 32-bit SYSENTER/SYSCALL, which the kernel returns through the vDSO's int $0x80
 * landing pad (so pc - 2 shows cd 80 for them too). Unreadable bytes: a stack below 4 GiB
 * means a 32-bit task. Other bytes: SYSABI_UNKNOWN. */
enum sysabi sysabi_x86_entry(const struct sysabi_call *c, const unsigned char *insn);

/* Does c, a syscall of `abi`, open for writing or truncate by path (open, openat, creat,
 * truncate, truncate64, openat2)? For SYSABI_HOW, *how is the address to read. */
enum sysabi_verdict sysabi_decode(enum sysabi abi, const struct sysabi_call *c, uint64_t *how);

/* Open flags that write: a write access mode or O_TRUNC, and not O_PATH (the same values in
 * every ABI above). */
bool sysabi_flags_write(uint64_t flags);

const char *sysabi_name(enum sysabi abi);
enum sysabi sysabi_by_name(const char *name);

#endif
