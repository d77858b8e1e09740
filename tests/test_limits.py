"""Promise: no limit of binvfs's own where the filesystem has none.

A path longer than PATH_MAX (reached through relative paths or *at calls) can be
overwritten, renamed over and removed as natively, and each keeps its version. The daemon's
fd limit does not bound how many names the kernel may know. A name of any length up to 255
bytes works for every operation and keeps its versions (whose names are shortened in the
store, with the whole name recorded next to them), and binvfsctl shows and accepts it.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import program
from conftest import ctl_path
from util import daemon_fds, read, run, versions, write

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


# 242-255 bytes: "<name>.~N~" would not fit in NAME_MAX; one with a 2-byte UTF-8 character
# across the cut; and a short name that looks like a shortened one
LONG = {
    "242": "a" * 242,
    "255": "b" * 250 + ".conf",
    "utf8": "c" * 221 + "é" * 17,
    "lookalike": "d.~~0123456789abcdef",
}


def shortened(name):
    """The stored name binvfs gives a long name (docs/format.md): its first 222 bytes (here
    ASCII), ".~~" and 16 hex digits of its SHA-256."""
    return name[:222] + ".~~" + hashlib.sha256(name.encode()).hexdigest()[:16]


@pytest.mark.parametrize("kind", sorted(LONG))
def test_long_names_work_for_every_operation_and_keep_versions(mnt, workdir, kind):
    name = LONG[kind]
    assert len(name.encode()) <= 255
    os.mkdir(mnt.p("d"))
    f = mnt.p("d", name)
    src = os.path.join(workdir, "src")
    expect = []

    def publish(how, data):
        expect.append(read(f))
        write(src, data)
        cmd = {"cp": ["cp", src, f],
               "dd": ["dd", f"if={src}", f"of={f}", "conv=notrunc", "status=none"],
               "truncate": ["truncate", "-s", str(len(data)), f],
               "mv": ["bash", "-c", 'cp "$1" "$2" && mv "$2" "$3"', "sh", src, mnt.p("d", "t"),
                      f]}
        r = run(cmd[how])
        assert r.returncode == 0, f"{how}: {r.stderr}"

    write(f, "v1\n")  # create
    publish("cp", "v2\n")
    publish("dd", "v3\n")
    publish("truncate", "v3")
    with open(f, "ab") as fh:  # append
        expect.append(read(f))
        fh.write(b"+")
    os.chmod(f, 0o755)
    assert os.stat(f).st_mode & 0o777 == 0o755
    publish("mv", "v5\n")
    assert read(f) == b"v5\n"
    expect.append(read(f))
    r = run(["rm", f])
    assert r.returncode == 0, r.stderr

    # every version under its stored name, in order; the record names the file
    stored = sorted((v for v in versions(mnt, "d") if re.search(r"\.~\d+~$", v)),
                    key=lambda v: int(v.rsplit(".~", 1)[1][:-1]))
    assert [read(mnt.p(".versions", "d", v)) for v in stored] == expect
    base = stored[0].rsplit(".~", 1)[0]
    records = [v for v in versions(mnt, "d") if v.endswith(".~~")]
    assert base != name and len(base.encode()) <= 241
    assert records == [base + ".~~"]
    assert read(mnt.p(".versions", "d", records[0])) == name.encode()

    # binvfsctl shows and accepts the real name
    ctl = ctl_path(mnt.binary)
    write(f, "w1\n")
    log = json.loads(run([ctl, "--json", "log", f]).stdout)
    assert log["path"] == f and len(log["versions"]) == len(expect) + 1
    r = run([ctl, "rollback", f, "2"])
    assert r.returncode == 0 and name in r.stdout, r.stderr
    assert read(f) == expect[1]
    r = run([ctl, "--json", "log", mnt.p(".versions", "d", stored[0])])
    assert json.loads(r.stdout)["path"] == f, r.stdout
    r = run([ctl, "prune", "--keep", "1", f])
    assert r.returncode == 0 and name in r.stdout, r.stderr
    assert len([v for v in versions(mnt, "d") if re.search(r"\.~\d+~$", v)]) == 1

    # a tree holding it goes with rm -rf; and nothing was refused on the way
    r = run(["rm", "-rf", mnt.p("d")])
    assert r.returncode == 0, r.stderr
    assert "too long" not in mnt.logtext() and "ignoring" not in mnt.logtext()


def test_long_name_versions_after_a_remount(mounter):
    """The index reads the stored names back: numbering goes on, the record is no stray."""
    m = mounter()
    name = "e" * 250
    for v in (1, 2, 3):
        write(m.p(name), f"{v}\n")
    m.stop()
    m = mounter()
    write(m.p(name), "4\n")
    vs = [v for v in versions(m) if re.search(r"\.~\d+~$", v)]
    assert sorted(int(v.rsplit(".~", 1)[1][:-1]) for v in vs) == [1, 2, 3]
    assert "ignoring" not in m.logtext()


def test_a_name_equal_to_another_names_shortened_one_keeps_its_own_versions(mnt):
    long = "f" * 250
    short = shortened(long)  # 241 bytes, a legal name of its own
    assert len(short) == 241
    for v in (1, 2, 3):
        write(mnt.p(long), f"long {v}\n")
        write(mnt.p(short), f"short {v}\n")
    assert read(mnt.p(long)) == b"long 3\n" and read(mnt.p(short)) == b"short 3\n"
    kept = {}
    for v in versions(mnt):
        if re.search(r"\.~\d+~$", v):
            kept.setdefault(v.rsplit(".~", 1)[0], []).append(read(mnt.p(".versions", v)))
    assert sorted(sorted(c) for c in kept.values()) == [[b"long 1\n", b"long 2\n"],
                                                        [b"short 1\n", b"short 2\n"]]
    assert shortened(long) in kept  # the long name's versions are where format.md says
