"""Promise 1: any in-place writer works on a running binary, and never gets ETXTBSY.
Promise 2: the running program keeps its inode and keeps running."""
import os
import shutil
import subprocess

import pytest

from conftest import program
from util import run


def py_rplusb(path, data):
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))


def scp_style(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
    os.write(fd, data)
    os.close(fd)


WRITERS = {
    "cp": lambda new, dst: run(["cp", new, dst]),
    "dd_notrunc": lambda new, dst: run(["dd", f"if={new}", f"of={dst}", "conv=notrunc",
                                        "status=none"]),
    "cat_redirect": lambda new, dst: run(["sh", "-c", f"cat '{new}' > '{dst}'"]),
    "tee": lambda new, dst: run(["sh", "-c", f"tee '{dst}' < '{new}' > /dev/null"]),
    "rsync_inplace": lambda new, dst: run(["rsync", "--inplace", "-I", new, dst]),
    "install": lambda new, dst: run(["install", "-m", "755", new, dst]),
    "mv": lambda new, dst: (shutil.copy(new, dst + ".tmp"), run(["mv", dst + ".tmp", dst]))[1],
}


@pytest.mark.parametrize("tool", sorted(WRITERS))
def test_writer_over_running_binary(mnt, procs, cbuild, tool):
    v1, v2 = program(cbuild, 1), program(cbuild, 2)
    app = mnt.p("app")
    shutil.copy(v1, app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    ino_before = os.stat(f"/proc/{runner.pid}/exe").st_ino

    r = WRITERS[tool](v2, app)
    assert r.returncode == 0, r.stderr
    assert "Text file busy" not in r.stderr

    # the new version runs, the old process keeps its inode and keeps running
    assert run([app]).stdout == "version 2\n"
    assert runner.poll() is None
    assert os.stat(f"/proc/{runner.pid}/exe").st_ino == ino_before
    with open(app, "rb") as f, open(v2, "rb") as g:
        assert f.read() == g.read()


def test_truncate_and_python_rplusb_on_running_binary(mnt, procs, cbuild):
    v1 = program(cbuild, 1)
    app = mnt.p("app")
    shutil.copy(v1, app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    r = run(["truncate", "-s", "100", app])
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(app) == 100
    os.truncate(app, 10)  # truncate(2) on a path
    assert os.path.getsize(app) == 10
    py_rplusb(app, b"#!/bin/sh\necho scripted\n")
    assert run([app]).stdout == "scripted\n"
    scp_style(app, b"#!/bin/sh\necho scp\n")
    assert run([app]).stdout == "scp\n"
    assert runner.poll() is None


def test_shared_library_keeps_working_while_overwritten(mnt, procs, cbuild, workdir):
    """A process that dlopen'ed a .so from the mount keeps computing with the old code while
    the .so is overwritten 20 times in a row (natively: SIGBUS or garbage)."""
    libsrc = "int value(void) { return %d; }\n"
    libs = []
    for v in range(21):
        src = os.path.join(workdir, f"lib{v}.c")
        out = os.path.join(workdir, f"lib{v}.so")
        open(src, "w").write(libsrc % v + "char pad[1 << 16] = {%d};\n" % v)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", out, src], check=True)
        libs.append(out)
    user = cbuild("dluser", r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int c, char **v) {
  void *h = dlopen(v[1], RTLD_NOW); if (!h) { puts(dlerror()); return 1; }
  int (*f)(void) = dlsym(h, "value"); char *pad = dlsym(h, "pad");
  printf("%d\n", f()); fflush(stdout);
  for (;;) { char line[16]; if (!fgets(line, sizeof line, stdin)) return 0;
    printf("%d %d\n", f(), pad[0]); fflush(stdout); }
}""", "-ldl")
    so = mnt.p("libvalue.so")
    shutil.copy(libs[0], so)
    p = procs.start([user, so], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "0\n"
    for v in range(1, 21):
        r = run(["cp", libs[v], so])
        assert r.returncode == 0, r.stderr
        p.stdin.write("x\n")
        p.stdin.flush()
        assert p.stdout.readline() == "0 0\n"  # still the old code and data
    # a new process loads the newest
    q = run([user, so], input="")
    assert q.stdout == "20\n"


def test_no_etxtbsy_for_write_open_while_running(mnt, procs, cbuild):
    v1 = program(cbuild, 1)
    app = mnt.p("app")
    shutil.copy(v1, app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    runner.stdout.readline()
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_APPEND):
        fd = os.open(app, flags)
        os.close(fd)
    assert runner.poll() is None


def test_writer_over_binary_that_got_its_x_bit_late(mnt, procs, cbuild):
    """A name without an x bit may be cached by the kernel; once chmod +x'ed and running, a
    writer must still be routed away from it (no ETXTBSY)."""
    v1, v2 = program(cbuild, 1), program(cbuild, 2)
    app = mnt.p("app")
    shutil.copy(v1, app)
    os.chmod(app, 0o644)
    for _ in range(3):
        os.stat(app)  # cached while it has no x bit
    os.chmod(app, 0o755)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    r = run(["cp", v2, app])
    assert r.returncode == 0, r.stderr
    assert run([app]).stdout == "version 2\n"
    assert runner.poll() is None


def test_cached_name_sees_a_publish_at_once(mnt):
    """A data file's name is cached by the kernel; every publish must drop that answer before
    the writer's close() returns."""
    path = mnt.p("data")
    with open(path, "w") as f:
        f.write("content -1\n")
    for i in range(50):
        with open(path, "w") as f:
            f.write(f"content {i}\n")
            with open(path) as g:  # looked up meanwhile: the old version, cached
                assert g.read() == f"content {i - 1}\n"
        with open(path) as f:
            assert f.read() == f"content {i}\n"



def test_a_writers_direct_copy_reads_back_and_publishes_whole(mnt):
    """A writer's open is a direct_io open where the kernel allows shared mmaps of one
    (passthrough.c): its WRITEs carry the caller's pages, and its reads go to the copy.
    Unaligned writes, some larger than a WRITE request (1 MiB), read back through the writer's
    fd (pread, a shared mapping, which also writes) before the close; nobody else sees them
    before it; published whole, the previous content kept."""
    import mmap
    old = os.urandom(3 << 20)
    new = bytearray(os.urandom((24 << 20) + 12345))
    path = mnt.p("app")
    with open(path, "wb") as f:
        f.write(old)
    os.chmod(path, 0o755)
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    try:
        off, sizes, k = 0, (524288, 777777, (1 << 20) + 3, 4095, 3 << 20), 0
        while off < len(new):
            n = min(sizes[k % len(sizes)], len(new) - off)
            assert os.write(fd, new[off:off + n]) == n
            off += n
            k += 1
        assert os.pread(fd, 100000, 5 << 20) == new[5 << 20:(5 << 20) + 100000]
        m = mmap.mmap(fd, len(new), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert m[(9 << 20) + 7:(11 << 20)] == new[(9 << 20) + 7:(11 << 20)]
        m[(20 << 20) + 1:(20 << 20) + 9] = b"mmapped!"
        new[(20 << 20) + 1:(20 << 20) + 9] = b"mmapped!"
        m.flush()
        m.close()
        assert os.pread(fd, 8, (20 << 20) + 1) == b"mmapped!"
        with open(path, "rb") as f:  # nobody else sees the copy before the close
            assert f.read() == old
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read() == new
    with open(mnt.p(".versions", "app.~1~"), "rb") as f:
        assert f.read() == old
