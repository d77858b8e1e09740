"""Writers of every ABI (issue 19): binvfs decodes the requester's pending syscall for the ABI
it entered the kernel by (src/syscall_abi.c), so a 32-bit (i386 compat) or x32 writer over a
running binary is routed like a 64-bit one and never gets ETXTBSY.

- the decoder alone (build/syscall_abi_test), fed with /proc/<tid>/syscall lines recorded on
  this machine from real x86-64 and i386 tasks, and lines written by the documented numbers
  for x32, the generic table (arm64, riscv64, loongarch64), ppc64 and s390x;
- the same, live: a writer of each ABI blocked in its LOOKUP (the daemon stopped), its line
  and entry instruction read as the daemon reads them, then decoded;
- real writers over a program running from the mount: `gcc -m32 -static` (open, the raw
  open/creat/truncate/truncate64/openat2 syscalls), a 64-bit program using `int $0x80`, and
  an `-mx32` writer where the kernel runs x32."""
import errno
import gzip
import os
import platform
import shutil
import signal
import subprocess

import pytest

from conftest import program
from util import read, run, versions, wait_for

X86 = platform.machine() == "x86_64"

WRITER = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* writer MODE PATH [ARG]: open PATH for writing by MODE and copy file ARG into it, or
 * truncate PATH to ARG bytes. The path is copied to static memory: below 4 GiB in a
 * static non-PIE program, where int $0x80 from 64-bit code can pass it. */
static char path[4096];

int main(int argc, char **argv)
{
	const char *mode = argv[1];
	long fd = -1;

	if (argc < 3) return 2;
	strncpy(path, argv[2], sizeof(path) - 1);
	if (!strcmp(mode, "open"))
		fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0755);
	else if (!strcmp(mode, "read"))
		fd = open(path, O_RDONLY);
	else if (!strcmp(mode, "sys_open"))
		fd = syscall(SYS_open, path, O_WRONLY | O_TRUNC | O_CREAT, 0755);
	else if (!strcmp(mode, "creat"))
		fd = syscall(SYS_creat, path, 0755);
	else if (!strcmp(mode, "openat2")) {
		struct open_how how = {.flags = O_WRONLY | O_TRUNC};
		fd = syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
	} else if (!strcmp(mode, "readlink")) { /* i386 85: creat's number in the x86-64 table */
		char buf[64];
		return syscall(SYS_readlink, path, buf, sizeof(buf)) < 0;
	} else if (!strcmp(mode, "truncate"))
		fd = syscall(SYS_truncate, path, atol(argv[3]));
#ifdef SYS_truncate64
	else if (!strcmp(mode, "truncate64")) /* i386: length in two registers */
		fd = syscall(SYS_truncate64, path, atol(argv[3]), 0);
#endif
#ifdef __x86_64__
	else if (!strcmp(mode, "int80")) /* the i386 open (5), from 64-bit code */
		__asm__ volatile("int $0x80"
				 : "=a"(fd)
				 : "a"(5L), "b"(path), "c"((long)(O_WRONLY | O_TRUNC | O_CREAT)),
				   "d"(0755L)
				 : "memory");
#endif
	else {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	if (fd < 0) {
		if (fd != -1) errno = (int)-fd; /* int $0x80 returns -errno */
		fprintf(stderr, "%s: %s\n", mode, strerror(errno));
		return 1;
	}
	if (!strncmp(mode, "truncate", 8) || !strcmp(mode, "read"))
		return 0;
	FILE *in = fopen(argv[3], "rb");
	char buf[65536];
	size_t n;
	if (!in) { perror(argv[3]); return 1; }
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		if (write((int)fd, buf, n) != (ssize_t)n) { perror("write"); return 1; }
	if (close((int)fd)) { perror("close"); return 1; }
	return 0;
}
"""


def abi_test_path(binary):
    return os.path.join(os.path.dirname(binary), "syscall_abi_test")


def decode(binary, cases):
    """[(abi, insn, line)] -> ["abi verdict[ how]"] from the decoder alone."""
    exe = abi_test_path(binary)
    if not os.path.exists(exe):
        pytest.skip(f"{exe} is not built")
    inp = "".join(f"{a} {i} {line}\n" for a, i, line in cases)
    r = run([exe], input=inp)
    for word in ("AddressSanitizer", "runtime error", "LeakSanitizer"):
        assert word not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def writers(tmp_path_factory):
    """{"x86_64": path, "i386": path or None, "x32": path or None}: the writer, built static
    for each ABI the toolchain has (None, with the reason in writers["why_<abi>"])."""
    if not X86:
        pytest.skip("the ABI writers are x86 programs; this machine is " + platform.machine())
    d = tmp_path_factory.mktemp("abiwriters")
    src = d / "writer.c"
    src.write_text(WRITER)
    # The kernel headers' asm/ is in the 64-bit multiarch dir; gcc-multilib's only addition
    # to gcc-12-multilib is a /usr/include/asm link to it, and gcc-multilib conflicts with
    # the cross compilers (gcc-aarch64-linux-gnu: scripts/test-arch). Link it privately.
    inc = d / "include"
    inc.mkdir()
    multiarch = run(["gcc", "-print-multiarch"]).stdout.strip() or "x86_64-linux-gnu"
    os.symlink(f"/usr/include/{multiarch}/asm", inc / "asm")
    out = {}
    for abi, flags in (("x86_64", ["-no-pie"]), ("i386", ["-m32", "-I", str(inc)]),
                       ("x32", ["-mx32", "-I", str(inc)])):
        exe = d / f"writer-{abi}"
        r = run(["gcc", "-O1", "-static", *flags, "-o", str(exe), str(src)])
        if r.returncode != 0:
            out[abi] = None
            out["why_" + abi] = (f"gcc {flags[0]} -static cannot build here (scripts/deps "
                                 f"--test installs gcc-12-multilib): {r.stderr.strip()[-300:]}")
        else:
            out[abi] = str(exe)
    return out


def kernel_config(option):
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(option + "="):
                    return line.strip().split("=", 1)[1]
    except OSError:
        return "unknown (no /proc/config.gz)"
    return "not set"


def writer_for(writers, abi):
    exe = writers.get(abi)
    if exe is None:
        pytest.skip(writers["why_" + abi])
    if abi == "x32":
        try:
            run([exe, "read", "/"])
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                raise
            pytest.skip("this kernel cannot run x32 programs: CONFIG_X86_X32_ABI "
                        f"{kernel_config('CONFIG_X86_X32_ABI')} in /proc/config.gz")
    return exe


# --- the decoder alone -------------------------------------------------------------------

# Recorded on this machine (kernel 6.18, x86-64) from real tasks blocked in the syscall:
# (abi given to the decoder or "x86" = told by insn, insn, line, expected answer)
RECORDED = [
    # x86-64 cp: openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC)
    ("x86", "0f05", "257 0xffffff9c 0x7fff8218caa4 0x241 0x1a4 0x0 0x7f6c45d5b6d0 "
     "0x7fff8218c4c0 0x7f6c45c57011", "x86_64 writes"),
    # i386 static (gcc -m32 -static): glibc's open is openat (295), entered through the vDSO
    ("x86", "cd80", "295 0xffffff9c 0xffc13aa4 0x241 0x1a4 0x80ebff4 0x241 0xffc134a0 "
     "0xf7f6c5e9", "i386 writes"),
    # i386 dynamic: the same
    ("x86", "cd80", "295 0xffffff9c 0xff9c3a9e 0x241 0x1a4 0xf7f70ff4 0x241 0xff9c2e40 "
     "0xf7f905e9", "i386 writes"),
    # i386 openat2: how in 32-bit memory
    ("x86", "cd80", "437 0xffffff9c 0xffc05aa0 0xffc03a14 0x18 0x80ebff4 0x2414 0xffc039cc "
     "0xf7fd05e9", "i386 how 0xffc03a14"),
    # int $0x80 from a 64-bit static program: i386 open (5), upper halves not cleared
    ("x86", "cd80", "5 0x479004 0x241 0x1a4 0x7ffcf1471188 0x2 0x4a06f0 0x7ffcf1470fc0 "
     "0x401509", "i386 writes"),
    # the writer of this file, gcc -m32 -static, blocked in its LOOKUP: O_RDONLY open,
    # open (5), creat (8), truncate (92), truncate64 (193)
    ("x86", "cd80", "295 0xffffff9c 0x80f22e0 0x0 0x0 0x80f0ff4 0x0 0xffaa5720 0xf7f675e9",
     "i386 no"),
    ("x86", "cd80", "5 0x80f22e0 0x241 0x1ed 0x0 0xffff6044 0x0 0xfffe5e8c 0xf7fdc5e9",
     "i386 writes"),
    ("x86", "cd80", "8 0x80f22e0 0x1ed 0x8049731 0x0 0xffd48194 0x0 0xffd37fdc 0xf7f575e9",
     "i386 writes"),
    ("x86", "cd80", "92 0x80f22e0 0x0 0x8049731 0x0 0xffceb3c4 0x0 0xffcdb20c 0xf7f5a5e9",
     "i386 writes"),
    ("x86", "cd80", "193 0x80f22e0 0x0 0x0 0xffa369e6 0x0 0xa 0xffa2658c 0xf7f4b5e9",
     "i386 writes"),
    # its readlink (85, i386), which the x86-64 table takes for creat: no writer
    ("x86", "cd80", "85 0x80f22e0 0xffb61f10 0x40 0x0 0xffb720a4 0x0 0xffb61ecc 0xf7f5c5e9",
     "i386 no"),
    ("x86_64", "-", "85 0x80f22e0 0xffb61f10 0x40 0x0 0xffb720a4 0x0 0xffb61ecc 0xf7f5c5e9",
     "x86_64 writes"),
    # its x86-64 build (static non-PIE): openat O_RDONLY, openat2
    ("x86", "0f05", "257 0xffffff9c 0x4ab300 0x0 0x0 0x1f 0x28db46c0 0x7ffc4f5cbeb0 0x43ba51",
     "x86_64 no"),
    ("x86", "0f05", "437 0xffffff9c 0x4ab300 0x7ffd2e2b9720 0x18 0x303dc6c0 0x201 "
     "0x7ffd2e2b9718 0x43c9c9", "x86_64 how 0x7ffd2e2b9720"),
    # the same line read as x86-64 (today's decoder): 5 is fstat, no writer -> ETXTBSY
    ("x86_64", "-", "5 0x479004 0x241 0x1a4 0x7ffcf1471188 0x2 0x4a06f0 0x7ffcf1470fc0 "
     "0x401509", "x86_64 no"),
    # i386 openat read as x86-64: 295 is preadv there
    ("x86_64", "-", "295 0xffffff9c 0xffc13aa4 0x241 0x1a4 0x80ebff4 0x241 0xffc134a0 "
     "0xf7f6c5e9", "x86_64 no"),
    # unreadable entry bytes: a stack below 4 GiB is a 32-bit task
    ("x86", "-", "295 0xffffff9c 0xffc13aa4 0x241 0x1a4 0x80ebff4 0x241 0xffc134a0 "
     "0xf7f6c5e9", "i386 writes"),
    ("x86", "-", "257 0xffffff9c 0x7fff8218caa4 0x241 0x1a4 0x0 0x7f6c45d5b6d0 "
     "0x7fff8218c4c0 0x7f6c45c57011", "x86_64 writes"),
    # neither syscall nor int $0x80 before pc: not decoded
    ("x86", "9090", "257 0xffffff9c 0x7fff8218caa4 0x241 0x1a4 0x0 0x0 0x7fff8218c4c0 "
     "0x7f6c45c57011", "unknown no"),
]

# Written by the documented numbers (kernel syscall tables; flags O_WRONLY|O_CREAT|O_TRUNC
# = 0x241, O_RDONLY = 0, O_PATH = 0x200000; x32 numbers carry __X32_SYSCALL_BIT 0x40000000).
SP64, PC64 = "0x7ffd1000", "0x7f0000001000"
A = f"{SP64} {PC64}"
DOCUMENTED = [
    # x86-64
    ("x86_64", "-", f"2 0x7ffd2000 0x241 0x1ed 0x0 0x0 0x0 {A}", "x86_64 writes"),
    ("x86_64", "-", f"2 0x7ffd2000 0x0 0x0 0x0 0x0 0x0 {A}", "x86_64 no"),
    ("x86_64", "-", f"85 0x7ffd2000 0x1ed 0x0 0x0 0x0 0x0 {A}", "x86_64 writes"),
    ("x86_64", "-", f"76 0x7ffd2000 0x0 0x0 0x0 0x0 0x0 {A}", "x86_64 writes"),
    ("x86_64", "-", f"257 0xffffff9c 0x7ffd2000 0x200000 0x0 0x0 0x0 {A}", "x86_64 no"),
    ("x86_64", "-", f"257 0xffffff9c 0x7ffd2000 0x200 0x0 0x0 0x0 {A}", "x86_64 writes"),
    ("x86_64", "-", f"59 0x7ffd2000 0x7ffd3000 0x7ffd4000 0x0 0x0 0x0 {A}", "x86_64 no"),
    # chown (92) entered by syscall: i386's truncate number, but not i386
    ("x86", "0f05", f"92 0x7ffd2000 0x0 0x0 0x0 0x0 0x0 {A}", "x86_64 no"),
    # x32 (entered by syscall, number with the x32 bit)
    ("x86", "0f05", "1073741826 0xffd2000 0x241 0x1ed 0x0 0x0 0x0 0xffd1000 0x401000",
     "x32 writes"),
    ("x86", "0f05", "1073742081 0xffffff9c 0xffd2000 0x241 0x1ed 0x0 0x0 0xffd1000 0x401000",
     "x32 writes"),
    ("x86", "0f05", "1073742081 0xffffff9c 0xffd2000 0x0 0x0 0x0 0x0 0xffd1000 0x401000",
     "x32 no"),
    ("x86", "0f05", "1073741909 0xffd2000 0x1ed 0x0 0x0 0x0 0x0 0xffd1000 0x401000",
     "x32 writes"),
    ("x86", "0f05", "1073741900 0xffd2000 0x0 0x0 0x0 0x0 0x0 0xffd1000 0x401000",
     "x32 writes"),
    ("x86", "0f05", "1073742261 0xffffff9c 0xffd2000 0xffd3000 0x18 0x0 0x0 0xffd1000 "
     "0x401000", "x32 how 0xffd3000"),
    ("x86", "-", "1073742081 0xffffff9c 0xffd2000 0x241 0x1ed 0x0 0x0 0xffd1000 0x401000",
     "x32 writes"),
    # i386: creat 8, truncate 92, truncate64 193, open read-only, execve 11
    ("i386", "-", "8 0xffd2000 0x1ed 0x0 0x0 0x0 0x0 0xffd1000 0xf7f005e9", "i386 writes"),
    ("i386", "-", "92 0xffd2000 0x0 0x0 0x0 0x0 0x0 0xffd1000 0xf7f005e9", "i386 writes"),
    ("i386", "-", "193 0xffd2000 0x0 0x0 0x0 0x0 0x0 0xffd1000 0xf7f005e9", "i386 writes"),
    ("i386", "-", "5 0xffd2000 0x8000 0x0 0x0 0x0 0x0 0xffd1000 0xf7f005e9", "i386 no"),
    ("i386", "-", "11 0xffd2000 0xffd3000 0xffd4000 0x0 0x0 0x0 0xffd1000 0xf7f005e9",
     "i386 no"),
    # a stale upper half in an i386 flags register is not a write flag
    ("i386", "-", "295 0xffffff9c 0xffd2000 0x100000000 0x0 0x0 0x0 0xffd1000 0xf7f005e9",
     "i386 no"),
    # generic (arm64, riscv64, loongarch64): openat 56, truncate 45, openat2 437; no open
    ("generic64", "-", f"56 0xffffffffffffff9c 0xffffd000 0x241 0x1ed 0x0 0x0 {A}",
     "generic64 writes"),
    ("generic64", "-", f"56 0xffffffffffffff9c 0xffffd000 0x0 0x0 0x0 0x0 {A}",
     "generic64 no"),
    ("generic64", "-", f"56 0xffffffffffffff9c 0xffffd000 0x200000 0x0 0x0 0x0 {A}",
     "generic64 no"),
    ("generic64", "-", f"45 0xffffd000 0x0 0x0 0x0 0x0 0x0 {A}", "generic64 writes"),
    ("generic64", "-", f"437 0xffffffffffffff9c 0xffffd000 0xffffe000 0x18 0x0 0x0 {A}",
     "generic64 how 0xffffe000"),
    ("generic64", "-", f"221 0xffffd000 0xffffe000 0x0 0x0 0x0 0x0 {A}", "generic64 no"),
    # in the generic table 2, 85 and 76 are not open/creat/truncate
    ("generic64", "-", f"2 0xffffd000 0x241 0x0 0x0 0x0 0x0 {A}", "generic64 no"),
    ("generic64", "-", f"76 0xffffd000 0x0 0x0 0x0 0x0 0x0 {A}", "generic64 no"),
    # ppc64: open 5, creat 8, truncate 92, openat 286, openat2 437
    ("ppc64", "-", f"5 0xffffd000 0x241 0x1ed 0x0 0x0 0x0 {A}", "ppc64 writes"),
    ("ppc64", "-", f"8 0xffffd000 0x1ed 0x0 0x0 0x0 0x0 {A}", "ppc64 writes"),
    ("ppc64", "-", f"92 0xffffd000 0x0 0x0 0x0 0x0 0x0 {A}", "ppc64 writes"),
    ("ppc64", "-", f"286 0xffffffffffffff9c 0xffffd000 0x241 0x0 0x0 0x0 {A}",
     "ppc64 writes"),
    ("ppc64", "-", f"286 0xffffffffffffff9c 0xffffd000 0x0 0x0 0x0 0x0 {A}", "ppc64 no"),
    ("ppc64", "-", f"437 0xffffffffffffff9c 0xffffd000 0xffffe000 0x18 0x0 0x0 {A}",
     "ppc64 how 0xffffe000"),
    # s390x: open 5, creat 8, truncate 92, openat 288, openat2 437
    ("s390x", "-", f"5 0xffffd000 0x241 0x1ed 0x0 0x0 0x0 {A}", "s390x writes"),
    ("s390x", "-", f"288 0xffffffffffffff9c 0xffffd000 0x241 0x0 0x0 0x0 {A}",
     "s390x writes"),
    ("s390x", "-", f"288 0xffffffffffffff9c 0xffffd000 0x0 0x0 0x0 0x0 {A}", "s390x no"),
    ("s390x", "-", f"92 0xffffd000 0x0 0x0 0x0 0x0 0x0 {A}", "s390x writes"),
    ("s390x", "-", f"437 0xffffffffffffff9c 0xffffd000 0xffffe000 0x18 0x0 0x0 {A}",
     "s390x how 0xffffe000"),
    # s390x's 286 is inotify_rm_watch, ppc64's 288 is mknodat
    ("s390x", "-", f"286 0x3 0x1 0x0 0x0 0x0 0x0 {A}", "s390x no"),
    ("ppc64", "-", f"288 0xffffffffffffff9c 0xffffd000 0x241 0x0 0x0 0x0 {A}", "ppc64 no"),
]

NOT_A_CALL = ["running", "-1 0x7ffd1000 0x7f0000001000", "257 0x1 0x2", ""]


def test_decoder_recorded_and_documented_lines(binary):
    cases = RECORDED + DOCUMENTED
    got = decode(binary, [(a, i, line) for a, i, line, _ in cases])
    want = [w for *_, w in cases]
    bad = [(c[:3], g, w) for c, g, w in zip(cases, got, want) if g != w]
    assert not bad, "\n".join(map(str, bad))
    assert len(got) == len(want)


def test_decoder_refuses_what_is_not_a_blocked_call(binary):
    assert decode(binary, [("x86_64", "-", line) for line in NOT_A_CALL]) == ["bad"] * len(
        NOT_A_CALL)


def test_decoder_native_table_is_the_builds(binary):
    """The daemon's table is chosen at build time: on x86-64, the x86-64 one."""
    line = f"257 0xffffff9c 0x7ffd2000 0x241 0x0 0x0 0x0 {A}"
    want = {"x86_64": "x86_64 writes", "aarch64": "generic64 no", "riscv64": "generic64 no",
            "loongarch64": "generic64 no", "ppc64le": "ppc64 no", "s390x": "s390x no"}
    if platform.machine() not in want:
        pytest.skip(f"no expectation for {platform.machine()}")
    assert decode(binary, [("native", "-", line)]) == [want[platform.machine()]]


# --- live: lines of real tasks blocked in their LOOKUP ------------------------------------

def blocked_line(pid, timeout=10.0):
    """The line and the two bytes before pc of pid, once it sleeps in a syscall."""
    def ready():
        with open(f"/proc/{pid}/syscall") as f:
            line = f.read().strip()
        return line if line[0].isdigit() and line.split()[0] != "-1" else None

    wait_for(lambda: ready() is not None, timeout, "the writer to block in its LOOKUP")
    line = ready()
    pc = int(line.split()[-1], 16)
    try:
        with open(f"/proc/{pid}/mem", "rb") as m:
            m.seek(pc - 2)
            insn = m.read(2).hex()
    except OSError:
        insn = "-"
    return line, insn


LIVE = [  # (writer's abi, mode, expected decoder answer's first two words)
    ("i386", "open", "i386 writes"),
    ("i386", "read", "i386 no"),
    ("i386", "sys_open", "i386 writes"),
    ("i386", "creat", "i386 writes"),
    ("i386", "truncate", "i386 writes"),
    ("i386", "truncate64", "i386 writes"),
    ("i386", "openat2", "i386 how"),
    ("i386", "readlink", "i386 no"),
    ("x86_64", "open", "x86_64 writes"),
    ("x86_64", "read", "x86_64 no"),
    ("x86_64", "int80", "i386 writes"),
    ("x86_64", "openat2", "x86_64 how"),
    ("x32", "open", "x32 writes"),
    ("x32", "openat2", "x32 how"),
]


@pytest.mark.parametrize("abi,mode,want", LIVE, ids=[f"{a}-{m}" for a, m, _ in LIVE])
def test_decoder_on_live_lines(binary, mounter, procs, writers, abi, mode, want):
    """A writer blocked in the LOOKUP of a name (the daemon stopped meanwhile): its
    /proc/<tid>/syscall line and entry instruction, as the daemon reads them, decode to the
    writer's own ABI and verdict."""
    exe = writer_for(writers, abi)
    m = mounter(setup=lambda src: None)
    target = m.p(f"never-looked-up-{abi}-{mode}")
    os.kill(m.proc.pid, signal.SIGSTOP)
    try:
        w = procs.start([exe, mode, target, "0" if mode.startswith("truncate") else "/dev/null"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line, insn = blocked_line(w.pid)
    finally:
        os.kill(m.proc.pid, signal.SIGCONT)
    w.wait(timeout=30)
    got = decode(binary, [("x86", insn, line)])[0]
    print(f"LIVE {abi} {mode} {insn} {line} -> {got}")
    assert got.startswith(want), f"{abi} {mode}: line {line!r}, insn {insn}: {got}"


# --- real writers over a running binary ---------------------------------------------------

MODES = [("i386", "open"), ("i386", "sys_open"), ("i386", "creat"), ("i386", "openat2"),
         ("i386", "truncate"), ("i386", "truncate64"), ("x86_64", "int80"),
         ("x86_64", "sys_open"), ("x86_64", "creat"), ("x86_64", "openat2"),
         ("x32", "open"), ("x32", "openat2")]


@pytest.mark.parametrize("abi,mode", MODES, ids=[f"{a}-{m}" for a, m in MODES])
def test_writer_of_each_abi_over_running_binary(mnt, procs, cbuild, writers, abi, mode):
    """The writer's open (or truncate) over a program running from the mount succeeds: no
    ETXTBSY, the running program keeps its inode and keeps running, the new content is
    published (and runs), the old version is kept in .versions/."""
    exe = writer_for(writers, abi)
    v1, v2 = program(cbuild, 1), program(cbuild, 2)
    app = mnt.p("app")
    shutil.copy(v1, app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    ino_before = os.stat(f"/proc/{runner.pid}/exe").st_ino

    arg = "100" if mode.startswith("truncate") else v2
    r = run([exe, mode, app, arg])
    assert "Text file busy" not in r.stderr, f"{abi} {mode}: {r.stderr}"
    assert r.returncode == 0, f"{abi} {mode}: {r.stderr}"

    assert runner.poll() is None
    assert os.stat(f"/proc/{runner.pid}/exe").st_ino == ino_before
    if mode.startswith("truncate"):
        assert os.path.getsize(app) == 100
    else:
        assert read(app) == read(v2)
        assert run([app]).stdout == "version 2\n"
    assert any(read(mnt.p(".versions", v)) == read(v1) for v in versions(mnt)), \
        "the running version is not kept in .versions/"
