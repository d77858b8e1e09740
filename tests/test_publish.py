"""Promise: copy-on-write, published atomically at close; never a torn file.

Every in-place write of an existing file goes to a private staging copy and is published with
one rename when its writer closes; `close()` returns only after that publish. Nobody sees the
staging content before, a writer killed by a signal publishes nothing, a child that inherited
the fd publishes nothing when it exits, and a write open that changes nothing adds no version.
"""
import hashlib
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import program
from util import read, run, wait_for


def read_elsewhere(path):
    """The content as another process (cat) sees it."""
    r = run(["cat", path], text=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def kept(mnt, name, sub=""):
    """[(N, content)] of .versions/<sub>/<name>.~N~, oldest first, read through the mount."""
    vdir = mnt.p(".versions", sub)
    if not os.path.isdir(vdir):
        return []
    pat = re.compile(re.escape(name) + r"\.~([1-9][0-9]*)~$")
    out = []
    for e in os.listdir(vdir):
        m = pat.match(e)
        if m:
            out.append((int(m.group(1)), read(os.path.join(vdir, e))))
    return sorted(out)


def contents(vs):
    return [c for _, c in vs]


def blob(tag, size=1 << 20):
    """size bytes, recognisable by tag, different for every tag."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def put(mnt, name, data):
    """A file that exists before the test's writer (created through the mount)."""
    with open(mnt.p(name), "wb") as f:
        f.write(data)
    assert read(mnt.p(name)) == data


# A writer in its own process: opens PATH, writes the first PART of NEWFILE, says "ready" on
# stdout, then does THEN: block (read stdin), spin (keep writing), segv, exit0, exit3, close.
WRITER = r"""
import os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGINT, signal.SIG_DFL)   # die of SIGINT, no KeyboardInterrupt cleanup
path, newfile, part, how, then = sys.argv[1:6]
data = open(newfile, "rb").read()
n = int(len(data) * float(part))
flags = {"trunc": os.O_WRONLY | os.O_TRUNC, "rw": os.O_RDWR}[how]
fd = os.open(path, flags)
view = memoryview(data)
off = 0
while off < n:
    off += os.write(fd, view[off:min(n, off + 65536)])
print("ready", flush=True)
if then == "block":
    sys.stdin.readline()
    sys.stdin.readline()
elif then == "spin":
    while True:
        os.pwrite(fd, view[:65536], 0)
        os.pwrite(fd, view[n // 2:n], n // 2)
elif then == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
elif then == "exit0":
    os._exit(0)
elif then == "exit3":
    os._exit(3)
elif then == "close":
    sys.stdin.readline()
    os.close(fd)
    print("closed", flush=True)
"""


def start_writer(procs, workdir, path, new, part, how, then):
    newfile = os.path.join(workdir, "new-content")
    with open(newfile, "wb") as f:
        f.write(new)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    p = procs.start([sys.executable, "-c", WRITER, path, newfile, str(part), how, then],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=env)
    line = p.stdout.readline()
    assert line == b"ready\n", (line, p.stderr.read() if p.poll() is not None else b"")
    return p


def stays(cond, seconds=1.0):
    """cond() holds now and for `seconds` (for things that must NOT happen later, e.g. a
    publish at the killed writer's RELEASE, which the kernel sends in the background)."""
    end = time.monotonic() + seconds
    while True:
        assert cond()
        if time.monotonic() >= end:
            return
        time.sleep(0.02)


# --- close() returns only after the publish ---------------------------------------------

def test_cp_then_exec_runs_the_new_version(mounter, cbuild):
    mnt = mounter(opts=("nosync", "keep=0"))
    progs = [program(cbuild, 1), program(cbuild, 2)]
    app = mnt.p("app")
    shutil.copy(progs[0], app)
    for i in range(20):
        v = (i + 1) % 2
        r = run(["sh", "-c", 'cp "$1" "$2" && "$2"', "sh", progs[v], app])
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"version {v + 1}\n", f"iteration {i}"
    # every cp published: 20 replaced versions, alternating, each complete
    vs = kept(mnt, "app")
    assert len(vs) == 20
    assert contents(vs) == [read(progs[i % 2]) for i in range(20)]


def test_python_close_then_other_fd_sees_new(mnt):
    path = mnt.p("data")
    vs = [blob("v0")] + [blob(f"v{i}", (1 << 20) + i * 4097) for i in range(1, 11)]
    put(mnt, "data", vs[0])
    for i in range(1, 11):
        old, new = vs[i - 1], vs[i]
        held = open(path, "rb")  # a reader that had the file open before the write
        with open(path, "wb") as f:
            f.write(new)
        assert read(path) == new  # another fd, same process, right after close()
        assert read_elsewhere(path) == new  # another process
        assert held.read() == old  # the reader keeps the version it opened, complete
        held.close()
    assert contents(kept(mnt, "data")) == vs[:10]


# --- nobody sees staging content before close ---------------------------------------------

@pytest.mark.parametrize("how", ["trunc", "rw"])
def test_reader_during_half_write_sees_old_complete(mnt, procs, workdir, how):
    old, new = blob("old"), blob("new")
    put(mnt, "f", old)
    w = start_writer(procs, workdir, mnt.p("f"), new, 0.5, how, "close")
    # the writer has written half and has not closed: everyone else sees the old content
    assert read_elsewhere(mnt.p("f")) == old
    assert read(mnt.p("f")) == old
    assert os.path.getsize(mnt.p("f")) == len(old)
    assert kept(mnt, "f") == []
    w.stdin.write(b"close\n")
    w.stdin.flush()
    assert w.stdout.readline() == b"closed\n"
    # close() returned: the half-written content is the current version now
    expect = new[:len(new) // 2] + (old[len(new) // 2:] if how == "rw" else b"")
    assert read(mnt.p("f")) == expect
    assert read_elsewhere(mnt.p("f")) == expect
    assert contents(kept(mnt, "f")) == [old]
    assert w.wait(timeout=30) == 0


def test_writer_fsync_does_not_publish(mnt):
    old, new = blob("old"), blob("new")
    put(mnt, "f", old)
    fd = os.open(mnt.p("f"), os.O_RDWR)
    try:
        os.write(fd, new[:len(new) // 2])
        os.fsync(fd)
        assert read_elsewhere(mnt.p("f")) == old
        os.write(fd, new[len(new) // 2:])
        os.fsync(fd)
        assert read_elsewhere(mnt.p("f")) == old
    finally:
        os.close(fd)
    assert read_elsewhere(mnt.p("f")) == new
    assert contents(kept(mnt, "f")) == [old]


# --- a writer that dies ---------------------------------------------------------------

@pytest.mark.parametrize("sig,part,how", [
    (signal.SIGKILL, 0.5, "trunc"),
    (signal.SIGKILL, 0.5, "rw"),
    (signal.SIGKILL, 1.0, "trunc"),  # all written, killed before close: still nothing
    (signal.SIGTERM, 0.5, "trunc"),
    (signal.SIGINT, 0.5, "rw"),
], ids=["KILL-trunc", "KILL-rw", "KILL-complete", "TERM", "INT"])
def test_killed_writer_publishes_nothing(mnt, procs, workdir, sig, part, how):
    old, new = blob("old"), blob("new")
    put(mnt, "f", old)
    w = start_writer(procs, workdir, mnt.p("f"), new, part, how, "block")
    assert read_elsewhere(mnt.p("f")) == old
    w.send_signal(sig)
    assert w.wait(timeout=30) == -sig
    stays(lambda: read(mnt.p("f")) == old and kept(mnt, "f") == [])
    # the name is still writable and the next writer publishes over the old content
    r = run(["sh", "-c", 'printf next > "$1"', "sh", mnt.p("f")])
    assert r.returncode == 0, r.stderr
    assert read(mnt.p("f")) == b"next"
    assert contents(kept(mnt, "f")) == [old]


def test_writer_killed_while_writing_publishes_nothing(mnt, procs, workdir):
    old, new = blob("old"), blob("new")
    put(mnt, "f", old)
    for delay in (0, 0.01, 0.05):
        w = start_writer(procs, workdir, mnt.p("f"), new, 0.7, "rw", "spin")
        time.sleep(delay)
        w.kill()
        assert w.wait(timeout=30) == -signal.SIGKILL
        stays(lambda: read(mnt.p("f")) == old and kept(mnt, "f") == [], 0.5)


@pytest.mark.parametrize("part", [0.5, 1.0])
def test_segfaulting_writer_publishes_nothing(mnt, procs, workdir, part):
    old, new = blob("old"), blob("new")
    put(mnt, "f", old)
    w = start_writer(procs, workdir, mnt.p("f"), new, part, "trunc", "segv")
    assert w.wait(timeout=30) == -signal.SIGSEGV
    stays(lambda: read(mnt.p("f")) == old and kept(mnt, "f") == [])


@pytest.mark.parametrize("then,rc", [("exit0", 0), ("exit3", 3)])
def test_writer_exiting_without_close_publishes(mnt, procs, workdir, then, rc):
    old, new = blob("old"), blob("new")
    put(mnt, "f", old)
    w = start_writer(procs, workdir, mnt.p("f"), new, 1.0, "trunc", then)
    assert w.wait(timeout=30) == rc
    # its exit closed the fd (a FLUSH it waited for): published by the time wait() returns
    assert read(mnt.p("f")) == new
    assert read_elsewhere(mnt.p("f")) == new
    assert contents(kept(mnt, "f")) == [old]


# --- a child that inherited the fd --------------------------------------------------------

FORKER = r"""
import os, sys
path, how = sys.argv[1:3]
fd = os.open(path, {"trunc": os.O_WRONLY | os.O_TRUNC, "rw": os.O_RDWR}[how])
os.write(fd, b"parent-part1;")
pid = os.fork()
if pid == 0:
    if how == "rw":
        os.close(fd)  # an explicit close by the child
    os._exit(0)       # else: its exit closes the inherited fd
_, status = os.waitpid(pid, 0)
print("child-exited", status, flush=True)
sys.stdin.readline()
os.write(fd, b"parent-part2;")
os.close(fd)
print("closed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("how", ["trunc", "rw"])
def test_forked_child_exit_does_not_publish(mnt, procs, how):
    old = b"O" * 100
    put(mnt, "f", old)
    p = procs.start([sys.executable, "-c", FORKER, mnt.p("f"), how],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "child-exited 0\n"
    assert read_elsewhere(mnt.p("f")) == old
    assert kept(mnt, "f") == []
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline() == "closed\n"
    new = b"parent-part1;parent-part2;"
    assert read_elsewhere(mnt.p("f")) == (new if how == "trunc" else new + old[len(new):])
    assert contents(kept(mnt, "f")) == [old]
    p.stdin.close()
    assert p.wait(timeout=30) == 0


def test_shell_group_with_child_publishes_once_complete(mnt):
    """{ printf part1; /bin/true; cat f; printf part2; } > f: the children (true, cat) exit
    with the fd inherited; one publish at the end, when the shell closes. The cat in the
    middle finds, as natively, that its input is its output (the write fd reports the inode
    it opened), and copies nothing."""
    put(mnt, "f", b"old content\n")
    r = run(["sh", "-c", '{ printf part1; /bin/true; cat "$1"; printf part2; } > "$1"',
             "sh", mnt.p("f")])
    assert r.returncode == 0, r.stderr
    assert "input file is output file" in r.stderr
    assert read(mnt.p("f")) == b"part1part2"
    assert contents(kept(mnt, "f")) == [b"old content\n"]


# --- a write open that changes nothing ------------------------------------------------------

def test_write_open_without_change_adds_no_version(mnt, workdir):
    data = blob("same")
    put(mnt, "f", data)
    same = os.path.join(workdir, "same")
    with open(same, "wb") as f:
        f.write(data)
    st0 = os.stat(mnt.p("f"))
    with open(mnt.p("f"), "r+b"):
        pass
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND):
        os.close(os.open(mnt.p("f"), flags))
    with open(mnt.p("f"), "r+b") as f:  # rewriting bytes with what they already are
        f.seek(1000)
        f.write(data[1000:5000])
    assert run(["cp", same, mnt.p("f")]).returncode == 0
    assert run(["dd", f"if={same}", f"of={mnt.p('f')}", "conv=notrunc",
                "status=none"]).returncode == 0
    with open(mnt.p("f"), "wb") as f:  # O_TRUNC, then the same content again
        f.write(data)
    # not now, nor at a RELEASE arriving in the background
    stays(lambda: kept(mnt, "f") == [] and read(mnt.p("f")) == data, 0.3)
    assert os.stat(mnt.p("f")).st_ino == st0.st_ino  # still the same published inode
    # and a real change afterwards does add one
    with open(mnt.p("f"), "r+b") as f:
        f.write(b"X")
    assert contents(kept(mnt, "f")) == [data]


def test_truncation_only_open_publishes(mnt):
    """`: > f` publishes an empty version (at RELEASE, or already at close)."""
    put(mnt, "f", b"something\n")
    os.close(os.open(mnt.p("f"), os.O_WRONLY | os.O_TRUNC))
    wait_for(lambda: os.path.getsize(mnt.p("f")) == 0, 5, "the truncation to be published")
    wait_for(lambda: contents(kept(mnt, "f")) == [b"something\n"], 5, "one version")
    # truncating an empty file changes nothing
    os.close(os.open(mnt.p("f"), os.O_WRONLY | os.O_TRUNC))
    stays(lambda: len(kept(mnt, "f")) == 1, 0.5)


def test_new_file_is_written_in_place(mnt):
    fd = os.open(mnt.p("new"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"first half;")
        assert read_elsewhere(mnt.p("new")) == b"first half;"  # as natively
    finally:
        os.close(fd)
    assert read(mnt.p("new")) == b"first half;"
    assert kept(mnt, "new") == []


# --- writes after a publish on the same open file ------------------------------------------

def test_closing_a_dup_while_the_fd_stays_open_does_not_publish(mnt):
    """A FLUSH from the opener that still holds another write fd on the file (a dup, as a
    shell's `2>&1` or save/restore of fd 1 leaves) is not its final close."""
    v1 = blob("v1")
    put(mnt, "f", v1)
    fd = os.open(mnt.p("f"), os.O_RDWR)
    try:
        os.write(fd, b"A" * 4096)
        os.close(os.dup(fd))
        assert read(mnt.p("f")) == v1
        assert kept(mnt, "f") == []
        os.write(fd, b"B" * 4096)
    finally:
        os.close(fd)
    assert read(mnt.p("f")) == b"A" * 4096 + b"B" * 4096 + v1[8192:]
    assert contents(kept(mnt, "f")) == [v1]


# The opener writes A and closes (a publish) while a forked child still holds the inherited fd;
# the child then writes B through it: a new copy-on-write of what was published.
AFTER_PUBLISH = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.write(fd, b"A" * 4096)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)  # so that it sees EOF, and exits, if its parent is killed
    if os.read(r, 1) != b"x":
        os._exit(1)
    os.pwrite(fd, b"B" * 4096, 4096)
    print("child-wrote", os.pread(fd, 8192, 0) == b"A" * 4096 + b"B" * 4096, flush=True)
    os.read(r, 1)
    os._exit(0)  # its exit closes the fd: RELEASE publishes what it wrote
os.close(r)
os.close(fd)
print("parent-closed", flush=True)
sys.stdin.readline()
os.write(w, b"x")
sys.stdin.readline()
os.write(w, b"x")
os.waitpid(pid, 0)
print("child-exited", flush=True)
"""


def test_write_after_publish_on_same_file_starts_new_copy(mnt, procs):
    v1 = blob("v1")
    put(mnt, "f", v1)
    v2 = b"A" * 4096 + v1[4096:]
    v3 = b"A" * 4096 + b"B" * 4096 + v1[8192:]
    p = procs.start([sys.executable, "-c", AFTER_PUBLISH, mnt.p("f")], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "parent-closed\n"
    assert read(mnt.p("f")) == v2  # the opener's close published
    assert contents(kept(mnt, "f")) == [v1]
    held = open(mnt.p("f"), "rb")  # holds the version just published
    p.stdin.write("write\n")
    p.stdin.flush()
    assert p.stdout.readline() == "child-wrote True\n"
    # the published version did not change under its reader, nor at its name
    assert held.read() == v2
    held.close()
    assert read_elsewhere(mnt.p("f")) == v2
    p.stdin.write("exit\n")
    p.stdin.flush()
    assert p.stdout.readline() == "child-exited\n"
    assert p.wait(timeout=30) == 0
    wait_for(lambda: read(mnt.p("f")) == v3, 5, "the child's writes to be published")
    assert contents(kept(mnt, "f")) == [v1, v2]


# --- two writers at once ----------------------------------------------------------------

def test_two_writers_each_own_staging_last_close_wins(mnt):
    orig, a, b = blob("orig"), blob("A"), blob("B", 700000)
    put(mnt, "f", orig)
    fa = open(mnt.p("f"), "r+b", buffering=0)
    fb = open(mnt.p("f"), "wb", buffering=0)
    try:
        fa.write(a[:1000])
        fb.write(b[:1000])
        fa.write(a[1000:])
        fb.write(b[1000:])
        # each sees its own copy, everyone else the original
        assert os.pread(fa.fileno(), len(a), 0) == a
        assert read_elsewhere(mnt.p("f")) == orig
        fa.close()
        assert read_elsewhere(mnt.p("f")) == a
        fb.close()
        assert read_elsewhere(mnt.p("f")) == b
    finally:
        fa.close()
        fb.close()
    assert contents(kept(mnt, "f")) == [orig, a]


# --- execs during a slow copy of a big executable ------------------------------------------

SLOWCOPY = r"""
import os, sys, time
src, dst = sys.argv[1:3]
data = open(src, "rb").read()
fd = os.open(dst, os.O_WRONLY | os.O_TRUNC)
print("opened", flush=True)
for off in range(0, len(data), 256 << 10):
    os.write(fd, data[off:off + (256 << 10)])
    time.sleep(0.01)
print("closing", flush=True)
sys.stdin.readline()  # the test notes the time, then lets it close
os.close(fd)
print("closed", flush=True)
"""


def test_execs_during_slow_copy_run_a_complete_version(mnt, procs, cbuild, workdir):
    big = []
    for v in (1, 2):
        out = os.path.join(workdir, f"big{v}")
        shutil.copy(program(cbuild, v), out)
        with open(out, "ab") as f:
            f.write(os.urandom(30 << 20))  # appended bytes do not disturb the ELF
        big.append(out)
    app = mnt.p("app")
    shutil.copy(big[0], app)
    assert run([app]).stdout == "version 1\n"

    state = {"opened": False, "closing": False}
    results = []  # (state when the exec started, rc, stdout, stderr)
    stop = threading.Event()

    def execloop():
        while not stop.is_set():
            during = state["opened"] and not state["closing"]
            r = subprocess.run([app], capture_output=True, text=True, timeout=30)
            # ran wholly between the open and the go-ahead to close (flag set before it)
            during = during and not state["closing"]
            results.append((during, r.returncode, r.stdout, r.stderr))

    t = threading.Thread(target=execloop)
    t.start()
    try:
        wait_for(lambda: len(results) >= 1, 30, "a first exec")
        w = procs.start([sys.executable, "-c", SLOWCOPY, big[1], app], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
        for word in ("opened", "closing", "closed"):
            line = w.stdout.readline()
            assert line == word + "\n", line
            state[word] = True
            if word == "closing":
                w.stdin.write("close\n")
                w.stdin.flush()
        assert w.wait(timeout=60) == 0
        n = len(results)
        wait_for(lambda: len(results) >= n + 2, 30, "execs after the copy")
    finally:
        stop.set()
        t.join(60)
    for during, rc, out, err in results:
        assert rc == 0 and err == "", (rc, out, err)
        assert out in ("version 1\n", "version 2\n")
        if during:  # started after the open and before close(): the old version, complete
            assert out == "version 1\n"
    during = sum(1 for r in results if r[0])
    assert during >= 10, (during, len(results))
    assert run([app]).stdout == "version 2\n"
    assert results[-1][2] == "version 2\n"
    with open(big[0], "rb") as f:
        assert contents(kept(mnt, "app")) == [f.read()]


# --- a shared writable mmap ---------------------------------------------------------------

def test_shared_mmap_writer_publishes_at_release(mnt):
    old = blob("old", 1 << 16)
    new = blob("new", 1 << 16)
    put(mnt, "f", old)
    fd = os.open(mnt.p("f"), os.O_RDWR)
    m = mmap.mmap(fd, len(old), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[:] = new
    os.close(fd)
    m.close()  # munmap: the RELEASE comes now
    wait_for(lambda: read(mnt.p("f")) == new, 5, "the mmap writes to be published")
    assert read_elsewhere(mnt.p("f")) == new
    assert contents(kept(mnt, "f")) == [old]
