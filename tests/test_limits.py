"""Promise: no limit of binvfs's own where the filesystem has none.

A path longer than PATH_MAX (reached through relative paths or *at calls) can be
overwritten, renamed over and removed as natively, and each keeps its version. The daemon's
fd limit does not bound how many names the kernel may know.
"""
import os
import shutil
import subprocess

from conftest import program
from util import read, run, write

# 20 levels of 250-byte names: a path of about 5,000 bytes, beyond PATH_MAX (4096)
DEEP = [f"d{i:02d}" + "x" * 247 for i in range(20)]


def open_chain(top, names, create=False):
    """An fd of top/names[0]/names[1]/..., reached one *at call at a time."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for n in names:
        if create:
            os.mkdir(n, dir_fd=fd)
        nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def put(dirfd, name, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(name, flags, 0o755, dir_fd=dirfd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def get(dirfd, name):
    fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_path_beyond_path_max_overwrite_rename_remove(mnt, workdir):
    deep = open_chain(mnt.path, DEEP, create=True)
    try:
        assert len(os.path.join(mnt.path, *DEEP)) > 4096
        put(deep, "f", b"v1\n")
        put(deep, "f", b"v2\n")  # overwrite: a publish
        assert get(deep, "f") == b"v2\n"
        put(deep, "g", b"v3\n")
        os.rename("g", "f", src_dir_fd=deep, dst_dir_fd=deep)  # rename over
        assert get(deep, "f") == b"v3\n"
        os.unlink("f", dir_fd=deep)  # remove
        assert "f" not in os.listdir(deep)

        # the same with tools, through a relative path (the cwd is the deep directory)
        a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
        write(a, "v4\n")
        write(b, "v5\n")
        r = run(["bash", "-c", f"cd -P /proc/self/fd/{deep} && cp {a} h && cp {b} h && "
                 "echo v6 > x && mv x h && cat h && rm h"], pass_fds=(deep,))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "v6\n"
    finally:
        os.close(deep)

    vdeep = open_chain(mnt.p(".versions"), DEEP)
    try:
        assert sorted(os.listdir(vdeep)) == ["f.~1~", "f.~2~", "f.~3~", "h.~1~", "h.~2~",
                                             "h.~3~"]
        assert [get(vdeep, f"f.~{i}~") for i in (1, 2, 3)] == [b"v1\n", b"v2\n", b"v3\n"]
        assert [get(vdeep, f"h.~{i}~") for i in (1, 2, 3)] == [b"v4\n", b"v5\n", b"v6\n"]
    finally:
        os.close(vdeep)
    # a deep directory renamed through the mount keeps its versions under its new path
    parent = open_chain(mnt.path, DEEP[:-1])
    try:
        moved = "m" * 250
        os.rename(DEEP[-1], moved, src_dir_fd=parent, dst_dir_fd=parent)
        d = os.open(moved, os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
        try:
            put(d, "f", b"w1\n")
            put(d, "f", b"w2\n")
        finally:
            os.close(d)
    finally:
        os.close(parent)
    vd = open_chain(mnt.p(".versions"), DEEP[:-1] + [moved])
    try:
        assert os.listdir(vd) == ["f.~1~"] and get(vd, "f.~1~") == b"w1\n"
    finally:
        os.close(vd)
    assert "too long" not in mnt.logtext()
    r = run(["rm", "-rf", mnt.p(DEEP[0])])
    assert r.returncode == 0, r.stderr
    assert os.listdir(mnt.path) == []


def daemon_fds(m):
    return len(os.listdir(f"/proc/{m.proc.pid}/fd"))


def lower_nofile(m, n):
    """RLIMIT_NOFILE of the running daemon (after its start, where it raises its own)."""
    r = run(["prlimit", "--pid", str(m.proc.pid), f"--nofile={n}:{n}"])
    assert r.returncode == 0, r.stderr


def test_names_beyond_the_fd_limit(mnt, workdir, procs, cbuild):
    """Daemon fd limit 3000, 4000 names known at once: cp -r, ls -lR, reading them all, cp
    over a running binary and rm -rf all work."""
    lower_nofile(mnt, 3000)
    tree = os.path.join(workdir, "tree")
    for d in range(40):
        os.makedirs(os.path.join(tree, f"d{d:02d}"))
        for f in range(100):
            write(os.path.join(tree, f"d{d:02d}", f"f{f:03d}"), f"{d}/{f}\n")
    shutil.copy(program(cbuild, 1), os.path.join(tree, "app"))
    r = run(["cp", "-r", tree, mnt.p("tree")])
    assert r.returncode == 0, r.stderr
    r = run(["ls", "-lR", mnt.p("tree")])
    assert r.returncode == 0, r.stderr
    assert sum(1 for line in r.stdout.splitlines() if line.startswith("-")) == 4001
    print(f"4040 names known under an fd limit of 3000: the daemon holds {daemon_fds(mnt)} fds")
    assert daemon_fds(mnt) < 3000
    r = subprocess.run(["find", mnt.p("tree"), "-name", "f*", "-type", "f", "-exec", "cat",
                        "{}", "+"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4000

    app = mnt.p("tree", "app")
    p = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "version 1\n"
    r = run(["cp", program(cbuild, 2), app])
    assert r.returncode == 0, r.stderr
    assert run([app]).stdout == "version 2\n"
    assert p.poll() is None

    r = run(["rm", "-rf", mnt.p("tree")])
    assert r.returncode == 0, r.stderr
    assert os.listdir(mnt.path) == []
    assert "Too many open files" not in mnt.logtext()
