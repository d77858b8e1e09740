"""Opens of versions (node_open.c; docs/performance.md, "Opens: backing ids kept"): a node's
passthrough backing id stays registered after its last RELEASE for the node's next open. Whatever
is kept, a new exec or open after a publish reaches the new version and a running program keeps
the one it loaded; with passthrough on and off (conftest OFF_MODULES)."""
import os
import shutil
import subprocess

import pytest

from util import wait_for

LIB = r"""
const char *libv_version(void) { return "lib %d"; }
"""

USE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
const char *libv_version(void);
int main(int c, char **v) {
  printf("prog %d %s\n", VERSION, libv_version()); fflush(stdout);
  if (c > 1) { sleep(atoi(v[1])); printf("prog %d %s\n", VERSION, libv_version()); }
  return 0;
}
"""

BIG = 256 << 10
SMALL = 16 << 10


def build(workdir, version, size):
    """libv.so of `version` padded to `size` bytes (ld.so ignores bytes past its segments),
    and a program `use` linked against it that prints both versions."""
    d = os.path.join(workdir, f"b{version}-{size}")
    os.makedirs(d)
    with open(os.path.join(d, "libv.c"), "w") as f:
        f.write(LIB.replace("%d", str(version)))
    with open(os.path.join(d, "use.c"), "w") as f:
        f.write(USE)
    lib = os.path.join(d, "libv.so")
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", lib, os.path.join(d, "libv.c")],
                   check=True)
    with open(lib, "ab") as f:
        f.write(bytes([version]) * (size - os.path.getsize(lib)))
    use = os.path.join(d, "use")
    subprocess.run(["cc", "-O1", f"-DVERSION={version}", "-o", use, os.path.join(d, "use.c"),
                    "-L" + d, "-lv"], check=True)
    with open(use, "ab") as f:
        f.write(bytes([version]) * (size - os.path.getsize(use)))
    return lib, use


def passthrough_on(m):
    return "passthrough on\n" in m.logtext()


def kept_lines(m):
    return m.logtext().count(" kept\n")


def releases(m):
    return m.logtext().count("opcode: RELEASE ")


def settle(m, before, n):
    """Wait for n more RELEASEs than `before`: RELEASE is queued in the background after
    close() or exit (KN §8), and an open that comes before it shares the id, with nothing to
    take again."""
    wait_for(lambda: releases(m) >= before + n, what=f"{n} RELEASEs")


def runs_keep(m, want, version):
    """Run the program (each run settled) until the log shows a kept id taken again, up to 5
    runs: a node the kernel forgot between two runs (another test's drop_caches, memory
    pressure) takes a new id, which is right."""
    before = kept_lines(m)
    for _ in range(5):
        n = releases(m)
        r = run(m)
        assert (r.returncode, r.stdout) == (0, f"prog {version} lib {version}\n"), r.stderr
        settle(m, n, 2)  # the program's and the library's
        if kept_lines(m) > before:
            return
    assert not want, "no backing id was kept"


def run(m, *args, timeout=30):
    env = {"LD_LIBRARY_PATH": m.p("lib"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([m.p("bin", "use"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("size", [BIG, SMALL], ids=["big", "small"])
def test_a_publish_over_a_kept_library_and_program(mounter, workdir, procs, size):
    """A library and a program (versions in SOURCE) run three times (their backing ids kept,
    with passthrough), then both published while one copy runs: a new exec runs the
    new versions, the running one keeps calling the library it loaded."""
    lib1, use1 = build(workdir, 1, size)
    lib2, use2 = build(workdir, 2, size)

    def setup(src):
        os.makedirs(os.path.join(src, "lib"))
        os.makedirs(os.path.join(src, "bin"))
        shutil.copy(lib1, os.path.join(src, "lib", "libv.so"))
        shutil.copy(use1, os.path.join(src, "bin", "use"))

    m = mounter(setup=setup, opts=("nosync", "debug"))
    runs_keep(m, passthrough_on(m), 1)
    env = {"LD_LIBRARY_PATH": m.p("lib"), "PATH": "/usr/bin:/bin"}
    old = procs.start([m.p("bin", "use"), "3"], stdout=subprocess.PIPE, text=True, env=env)
    assert old.stdout.readline() == "prog 1 lib 1\n"
    # publish both while the old copy runs (cp writes over the names, as a deploy does)
    subprocess.run(["cp", lib2, m.p("lib", "libv.so")], check=True)
    subprocess.run(["cp", use2, m.p("bin", "use")], check=True)
    for _ in range(3):
        n = releases(m)
        r = run(m)
        assert (r.returncode, r.stdout) == (0, "prog 2 lib 2\n"), r.stderr
        settle(m, n, 2)
    out, _ = old.communicate(timeout=30)
    assert (old.returncode, out) == (0, "prog 1 lib 1\n"), "the running program lost its library"
    runs_keep(m, passthrough_on(m), 2)  # the new versions' ids
    # and back: the old versions' nodes (and kept ids) are not what a new exec reaches
    subprocess.run(["cp", lib1, m.p("lib", "libv.so")], check=True)
    subprocess.run(["cp", use1, m.p("bin", "use")], check=True)
    r = run(m)
    assert (r.returncode, r.stdout) == (0, "prog 1 lib 1\n"), r.stderr


def requests(m, op):
    return m.logtext().count(f"opcode: {op} ")


def test_an_open_of_a_kept_id_reads_the_version(mounter):
    """open, read, fstat, close (ld.so's per library), again and again: with passthrough the
    node's backing id is kept from the second open on, and no READ reaches the daemon; the
    content is the version's each time, and after a publish the new version's."""
    data = os.urandom(SMALL)

    def setup(src):  # a version (a file made through the mount is written in place)
        with open(os.path.join(src, "f"), "wb") as f:
            f.write(data)

    m = mounter(setup=setup, opts=("nosync", "debug"))
    for _ in range(5):
        n = releases(m)
        with open(m.p("f"), "rb") as f:
            assert f.read() == data
            os.fstat(f.fileno())
        settle(m, n, 1)
    if passthrough_on(m):
        # (a forget between two opens, by another test's drop_caches, takes a new id)
        assert kept_lines(m) >= 1, "the backing id was not kept"
        assert requests(m, "READ") == 0
    new = os.urandom(SMALL)
    with open(m.p("f"), "wb") as f:  # a publish: the name's new version
        f.write(new)
    for _ in range(2):
        with open(m.p("f"), "rb") as f:
            assert f.read() == new
    with open(m.p(".versions", "f.~1~"), "rb") as f:
        assert f.read() == data
