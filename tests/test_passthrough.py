"""Kernel FUSE passthrough (design.md "Passthrough"): every open that cannot write a published
version is served by the kernel from the backing file, so the daemon sees no READ; when the
kernel cannot take a file the open falls back to the daemon and never fails; programs started
from the mount outlive the daemon.

The daemon's `-d` trace counts the requests it receives."""
import mmap
import os
import re
import signal
import subprocess
import sys

import pytest

from util import Mount, is_mounted, read, run, wait_for, write

LIBZ = "/lib/x86_64-linux-gnu/libz.so.1"


def reads(m):
    return len(re.findall(r"opcode: READ \(15\)", m.logtext()))


def writes(m):
    return len(re.findall(r"opcode: WRITE \(16\)", m.logtext()))


def mode_logged(m):
    """The log line that says which passthrough mode is active (logged right after INIT)."""
    wait_for(lambda: "binvfs: passthrough " in m.logtext(), what="the passthrough log line")
    return re.search(r"binvfs: passthrough (.*)", m.logtext()).group(1)


def status_line(m):
    return os.getxattr(m.path, "user.binvfs.status").decode()


def test_reads_execs_maps_and_versions_never_reach_the_daemon(mounter, cbuild):
    prog = cbuild("hello_pt", '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    prog2 = cbuild("hello_pt2", '#include <stdio.h>\nint main(void){puts("2");return 0;}\n')

    def setup(src):
        write(os.path.join(src, "data"), os.urandom(3 << 20))
        subprocess.run(["cp", prog, os.path.join(src, "app")], check=True)
        subprocess.run(["cp", LIBZ, os.path.join(src, "libz.so.1")], check=True)

    m = mounter(setup, opts=("nosync", "debug"))
    assert mode_logged(m) == "on"
    assert "passthrough=on\n" in status_line(m)
    want = read(m.s("data"))
    assert read(m.p("data")) == want                                  # read(2)
    assert run(["dd", f"if={m.p('data')}", "of=/dev/null", "bs=64k"]).returncode == 0
    with open(m.p("data"), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == want                                            # page-ins
    assert run([m.p("app")]).stdout == "hi\n"                           # exec
    r = run([sys.executable, "-c", "import ctypes, sys; z = ctypes.CDLL(sys.argv[1]); "
             "z.zlibVersion.restype = ctypes.c_char_p; print(z.zlibVersion().decode())",
             m.p("libz.so.1")])                                         # dlopen
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    subprocess.run(["cp", prog2, m.p("app")], check=True)               # a version
    assert run([m.p(".versions", "app.~1~")]).stdout == "hi\n"
    assert read(m.p(".versions", "app.~1~")) == read(prog)
    before = writes(m)
    write(m.p("new"), b"created in place\n" * 1000)                     # CREATE: passthrough too
    assert read(m.p("new")) == b"created in place\n" * 1000
    assert writes(m) == before, "the creator's writes crossed the daemon"
    assert reads(m) == 0, "the daemon served a READ"


def test_passthrough_off_is_todays_path(mounter):
    """The counter above can fail: with passthrough=off every read crosses the daemon."""
    m = mounter(lambda src: write(os.path.join(src, "data"), os.urandom(1 << 20)),
                opts=("nosync", "debug", "passthrough=off"))
    assert read(m.p("data")) == read(m.s("data"))
    assert reads(m) > 0
    assert mode_logged(m) == "off (passthrough=off)"
    assert "passthrough=off (passthrough=off)\n" in status_line(m)


def test_status_names_the_mode(mounter, binary):
    m = mounter(lambda src: None)
    ctl = os.path.join(os.path.dirname(binary), "binvfsctl")
    r = run([ctl, "status", m.path])
    assert r.returncode == 0 and "passthrough on\n" in r.stdout, r.stdout


def test_creator_and_readers_share_the_backing_file(mounter):
    """A file its creator still writes (passthrough, writable backing) and readers of the same
    node share one backing id: no open fails with EIO, and each sees the data written."""
    m = mounter(lambda src: None)
    with open(m.p("log"), "wb", buffering=0) as w:
        w.write(b"a" * 4096)
        with open(m.p("log"), "rb") as r1:
            assert r1.read() == b"a" * 4096
            w.write(b"b" * 4096)
            with open(m.p("log"), "rb") as r2:
                assert r2.read() == b"a" * 4096 + b"b" * 4096
    # and once closed, a writer of the published file gets its private copy as before
    with open(m.p("log"), "r+b") as w:
        w.write(b"c")
    assert read(m.p("log"))[:1] == b"c"
    assert os.listdir(m.p(".versions")) == ["log.~1~"]


def test_stop_with_a_passthrough_writer_open(mounter):
    """Stopped (SIGTERM) while a creator still writes its file through a backing id: the
    unmount closes the session's /dev/fuse fd, and the handle closed after it frees its id
    with the connection, not by an ioctl on that fd number (closed then, or a pipe's, or
    another file's): the daemon exits 0 and logs no failed backing close."""
    m = mounter(lambda src: None)
    assert mode_logged(m) == "on"
    fd = os.open(m.p("new"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 4096)
        m.proc.send_signal(signal.SIGTERM)
        m.proc.wait(timeout=30)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    text = m.stop()
    assert "closing backing id" not in text, text


# --- fallbacks ------------------------------------------------------------------------------

@pytest.fixture
def overlay(workdir):
    """mount(at) -> an overlayfs mounted at `at`, with one file `lf` in its lower layer;
    unmounted at the end."""
    mounted = []

    def mount(at):
        parts = {k: os.path.join(workdir, "ovl-" + k) for k in ("lower", "upper", "work")}
        for p in parts.values():
            os.makedirs(p, exist_ok=True)
        write(os.path.join(parts["lower"], "lf"), b"from the lower layer\n" * 1000)
        os.makedirs(at, exist_ok=True)
        r = run(["mount", "-t", "overlay", "overlay", "-o",
                 "lowerdir={lower},upperdir={upper},workdir={work}".format(**parts), at])
        if r.returncode != 0:
            pytest.skip("cannot mount overlayfs here: " + r.stderr)
        mounted.append(at)
        return at

    yield mount
    for at in reversed(mounted):
        run(["umount", "-l", at])


def test_backing_open_failing_falls_back_for_that_node(mounter, overlay):
    """A file on a stacked filesystem (an overlayfs mounted inside SOURCE) cannot be a backing
    file (ELOOP): its opens, overlapping ones included, are served by the daemon; the other
    files stay passthrough."""
    m = mounter(lambda src: (write(os.path.join(src, "plain"), b"plain\n" * 1000),
                             overlay(os.path.join(src, "ovl"))),
                opts=("nosync", "debug"))
    assert mode_logged(m) == "on"
    want = b"from the lower layer\n" * 1000
    with open(m.p("ovl", "lf"), "rb") as a, open(m.p("ovl", "lf"), "rb") as b:
        assert a.read() == want and b.read() == want
    assert read(m.p("ovl", "lf")) == want
    n = reads(m)
    assert n > 0
    assert "backing open of inode" in m.logtext() and "Too many levels" in m.logtext()
    assert read(m.p("plain")) == b"plain\n" * 1000
    assert reads(m) == n, "a file on ext4 was read through the daemon"


def test_source_on_overlayfs(binary, workdir, overlay):
    """auto: mounts, says why passthrough is off, works; on: refuses, one line, exit 1."""
    src = overlay(os.path.join(workdir, "src"))
    r = run([binary, "-f", "-o", "passthrough=on", src])
    assert r.returncode == 1 and not is_mounted(src)
    assert r.stderr.strip().count("\n") == 0 and "overlayfs" in r.stderr, r.stderr
    m = Mount(binary, src).start()
    try:
        assert mode_logged(m).startswith("off (backing open: Too many levels of symbolic links")
        assert read(m.p("lf")) == b"from the lower layer\n" * 1000
        write(os.path.join(src, "lf"), b"v2\n")
        assert read(m.p("lf")) == b"v2\n"
        assert sorted(os.listdir(m.p(".versions"))) == ["lf.~1~"]
    finally:
        m.stop()


UNSHARED = r"""
import os, subprocess, sys, time
binary, src, extra, tests = sys.argv[1:5]
sys.path.insert(0, tests)
from util import is_mounted
log = open(src + ".log", "w")
p = subprocess.Popen([binary, "-f", "-o", "nosync" + extra, src], stdout=log, stderr=log)
for _ in range(100):
    if is_mounted(src) or p.poll() is not None:
        break
    time.sleep(0.05)
if p.poll() is not None:
    sys.exit("exit %d" % p.wait())
try:
    content = open(os.path.join(src, "f")).read()
except OSError:  # passthrough=on: the daemon may refuse at INIT, after the mount was seen
    sys.exit("exit %d" % p.wait(timeout=30))
print(content, end="")
print(os.getxattr(src, "user.binvfs.status").decode(), end="")
subprocess.run(["umount", src], check=True)
sys.exit(p.wait(timeout=30))
"""


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_daemon_without_cap_sys_admin(binary, workdir, mode):
    """In a user namespace the daemon may mount FUSE but lacks CAP_SYS_ADMIN in the initial
    namespace, which the backing-open ioctl requires (EPERM): auto serves every read itself,
    on refuses to mount."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    write(os.path.join(src, "f"), "content\n")
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--propagation",
                        "private", sys.executable, "-c", UNSHARED, binary, src,
                        ",passthrough=" + mode, os.path.dirname(os.path.abspath(__file__))],
                       capture_output=True, text=True, timeout=60)
    log = open(src + ".log").read()
    if "fuse: failed to open /dev/fuse" in log or "fusermount" in log:
        pytest.skip("no FUSE mount in a user namespace here: " + log)
    if mode == "auto":
        assert r.returncode == 0, r.stderr + log
        assert r.stdout.startswith("content\n")
        assert "passthrough=off (backing open: Operation not permitted; the daemon lacks " \
               "CAP_SYS_ADMIN)" in r.stdout
    else:
        assert r.returncode != 0 and "exit 1" in r.stderr, r.stderr + log
        assert log.strip().splitlines()[-1].startswith("binvfs: passthrough=on but")


def test_daemon_at_its_fd_limit_still_opens(mounter):
    """The backing file is named by the node's O_PATH fd: a passthrough open takes no fd in
    the daemon, so opens of known names work even at its fd limit (the daemon's read path
    needs one per file: with passthrough=off the same open fails with EMFILE)."""
    import resource

    def setup(src):
        for i in range(20):
            write(os.path.join(src, f"f{i}"), f"file {i}\n")

    results = {}
    for mode in ("auto", "off"):
        m = mounter(setup, opts=("nosync", "passthrough=" + mode), name="bin-" + mode)
        for i in range(20):
            os.stat(m.p(f"f{i}"))  # the kernel knows every name: each node holds its fd
        pid = m.proc.pid
        nfds = len(os.listdir(f"/proc/{pid}/fd"))
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE, (nfds, hard))
        try:
            got = []
            for i in range(20):
                try:
                    got.append(read(m.p(f"f{i}")) == f"file {i}\n".encode())
                except OSError as e:
                    got.append(e.errno)
            results[mode] = got
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    assert results["auto"] == [True] * 20
    assert 24 in results["off"], results  # EMFILE: the counter-test can fail


# --- the daemon dies ------------------------------------------------------------------------

BIG_PROGRAM = r"""
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>
__asm__(".section .rodata\n.global blob\n.balign 4096\nblob:\n.incbin \"BLOB\"\n"
        ".global blob_end\nblob_end:\n.previous\n");
extern const unsigned char blob[], blob_end[];
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(void)
{
	uint64_t h = 0;
	signal(SIGUSR1, on_usr1);
	printf("ready %zu\n", (size_t)(blob_end - blob));
	fflush(stdout);
	while (!go)
		pause();
	for (const uint64_t *p = (const void *)blob; p < (const uint64_t *)blob_end; p++)
		h += *p;
	printf("%016llx\n", (unsigned long long)h);
	return 0;
}
"""


def wordsum(data):
    return sum(memoryview(data).cast("Q")) & (2**64 - 1)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_program_outlives_the_daemon(mounter, workdir, procs, mode):
    """A program with 32 MiB of read-only data, started from the mount; the daemon is killed
    with SIGKILL and the page cache dropped; then the program reads all its data. With
    passthrough its page-ins go to the backing file and it exits 0 with the right sum;
    without, the page-ins have nowhere to go (SIGBUS), as the README says."""
    blob = os.path.join(workdir, "blob")
    data = os.urandom(32 << 20)
    write(blob, data)
    csrc = os.path.join(workdir, "big.c")
    write(csrc, BIG_PROGRAM.replace("BLOB", blob))
    exe = os.path.join(workdir, "big")
    subprocess.run(["cc", "-O1", "-o", exe, csrc], check=True)
    m = mounter(lambda src: subprocess.run(["cp", exe, os.path.join(src, "big")], check=True),
                opts=("nosync", "passthrough=" + mode))
    p = procs.start([m.p("big")], stdout=subprocess.PIPE, cwd="/")
    assert p.stdout.readline() == b"ready %d\n" % len(data)
    m.kill()  # SIGKILL, then the dead mount is detached
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    p.send_signal(signal.SIGUSR1)
    out, _ = p.communicate(timeout=120)
    if mode == "auto":
        assert p.returncode == 0 and out == b"%016x\n" % wordsum(data)
    else:
        assert p.returncode == -signal.SIGBUS, (p.returncode, out)
