"""Releases (issue 21): every change under a directory held until one commit makes them all
current at one instant; an abort drops them; a crash in the middle of a commit leaves the whole
release or none of it after the next mount."""
import errno
import fcntl
import functools
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import threading
import time

import pytest

from conftest import Mount, ctl_path
from test_tmpfile import link_proc
from util import is_mounted, read, run, wait_for, write

XATTR = "user.binvfs.release"
NLIBS = 20


def release(path, value):
    os.setxattr(path, XATTR, value.encode())


def build(dst, version, nfiles=200):
    """A build of `nfiles` files: bin/prog linked with lib/lib0..19.so, whose symbols carry
    the version, so that a program of one build with a library of another does not start,
    and data files."""
    os.makedirs(os.path.join(dst, "bin"))
    os.makedirs(os.path.join(dst, "lib"))
    os.makedirs(os.path.join(dst, "share"))
    srcdir = dst + ".c"
    os.makedirs(srcdir)
    for i in range(NLIBS):
        c = os.path.join(srcdir, f"l{i}.c")
        write(c, f"int f{i}_v{version}(void) {{ return {i}; }}\n"
                 f"const char pad{i}[{1000 * (i + 1)}] = \"{version}\";\n")
        r = run(["cc", "-shared", "-fPIC", "-o", os.path.join(dst, "lib", f"lib{i}.so"), c])
        assert r.returncode == 0, r.stderr
    calls = "".join(f"  s += f{i}_v{version}();\n" for i in range(NLIBS))
    decls = "".join(f"int f{i}_v{version}(void);\n" for i in range(NLIBS))
    main = os.path.join(srcdir, "main.c")
    write(main, "#include <stdio.h>\n" + decls +
          f"int main(void) {{ int s = 0;\n{calls}  printf(\"{version} %d\\n\", s); return 0; }}\n")
    r = run(["cc", "-o", os.path.join(dst, "bin", "prog"), main, "-L" + os.path.join(dst, "lib")]
            + [f"-l{i}" for i in range(NLIBS)] + ["-Wl,-rpath,$ORIGIN/../lib"])
    assert r.returncode == 0, r.stderr
    for i in range(nfiles - NLIBS - 1):
        write(os.path.join(dst, "share", f"data{i}"), f"build {version} file {i}\n" * (i + 1))
    subprocess.run(["rm", "-rf", srcdir], check=True)


def tree(root):
    """{relative path: content} of every file below root (not .versions/)."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".versions"]
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = read(p)
    return out


class ExecLoop:
    """Runs prog again and again from a shell loop; each line: its output, or FAIL rc."""

    def __init__(self, procs, prog, out):
        self.out = out
        self.stop_file = out + ".stop"
        script = ('while [ ! -e "$2" ]; do "$1" 2>/dev/null || echo "FAIL $?"; done')
        self.p = procs.start(["sh", "-c", script, "sh", prog, self.stop_file],
                             stdout=open(out, "w"))

    def lines(self):
        return read(self.out).decode().split("\n")[:-1]

    def stop(self):
        write(self.stop_file, "")
        self.p.wait(timeout=30)
        return self.lines()


@pytest.fixture
def builds(workdir):
    b1, b2 = os.path.join(workdir, "b1"), os.path.join(workdir, "b2")
    build(b1, 1)
    build(b2, 2)
    # build 1 an hour older: rsync's quick check (size and mtime) must see every file changed
    # (both builds' files have the same sizes, and may have the same mtime)
    past = time.time() - 3600
    for d, _, files in os.walk(b1):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))
    return b1, b2


def setup_app(b1):
    def setup(src):
        r = run(["cp", "-a", b1, os.path.join(src, "app")])
        assert r.returncode == 0, r.stderr
    return setup


def test_rsync_into_release_then_commit_switches_at_once(mounter, builds, procs, workdir):
    b1, b2 = builds
    m = mounter(setup_app(b1))
    app = m.p("app")
    prog = os.path.join(app, "bin", "prog")
    assert run([prog]).stdout == f"1 {sum(range(NLIBS))}\n"
    release(app, "begin:deploy2")
    loop = ExecLoop(procs, prog, os.path.join(workdir, "loop.out"))
    wait_for(lambda: len(loop.lines()) >= 5, 20, "the exec loop")
    r = run(["rsync", "-a", b2 + "/", app + "/"])
    assert r.returncode == 0, r.stderr
    # held: everyone, the writer included, still sees build 1
    assert tree(app) == tree(b1)
    assert run([prog]).stdout.startswith("1 ")
    n = len(loop.lines())
    wait_for(lambda: len(loop.lines()) >= n + 5, 20, "the exec loop")
    old_ino = os.stat(prog).st_ino
    t0 = time.monotonic()
    release(app, "commit")
    took = time.monotonic() - t0
    first = run([prog])
    wait_for(lambda: len(loop.lines()) >= len(loop.lines()) + 0, 1)
    n = len(loop.lines())
    wait_for(lambda: len(loop.lines()) >= n + 5, 20, "the exec loop")
    lines = loop.stop()
    if first.returncode != 0 or not first.stdout.startswith("2 "):
        print(m.logtext())
        print("old prog inode", old_ino, "new", os.stat(prog).st_ino)
    assert first.returncode == 0 and first.stdout.startswith("2 "), first
    fails = [x for x in lines if x.startswith("FAIL")]
    vers = [x.split()[0] for x in lines if not x.startswith("FAIL")]
    olds = len(re.findall(r"a program of the old release: its old file", m.logtext()))
    print(f"\n{len(lines)} execs, {len(fails)} failed, commit of ~200 files took "
          f"{took * 1000:.1f} ms; {olds} lookups by a program of the old release answered old")
    assert not fails, f"{len(fails)} of {len(lines)} execs failed"
    # all of build 1, then all of build 2: never back
    assert vers == sorted(vers) and vers[0] == "1" and vers[-1] == "2", vers
    assert tree(app) == tree(b2)
    assert run([prog]).stdout.startswith("2 ")
    assert "committed: 200 placed, 0 removed" in m.logtext()


def test_abort_leaves_everything_as_before(mounter, builds, workdir):
    b1, b2 = builds
    m = mounter(setup_app(b1))
    app = m.p("app")
    before = tree(m.path)
    vbefore = sorted(os.walk(m.p(".versions")))
    release(app, "begin")
    r = run(["rsync", "-a", "--delete", b2 + "/", app + "/"])
    assert r.returncode == 0, r.stderr
    write(os.path.join(app, "share", "new-file"), "made in the release")
    os.unlink(os.path.join(app, "share", "data3"))
    os.rename(os.path.join(app, "share", "data4"), os.path.join(app, "share", "data4.moved"))
    release(app, "abort")
    assert tree(m.path) == before
    assert sorted(os.walk(m.p(".versions"))) == vbefore
    assert run([os.path.join(app, "bin", "prog")]).stdout.startswith("1 ")
    # and no release is left: a new one can begin
    release(app, "begin:again")
    release(app, "abort")


def test_held_changes_and_commit(mnt):
    d = mnt.p("d")
    os.mkdir(d)
    write(os.path.join(d, "a"), "a1")
    write(os.path.join(d, "b"), "b1")
    write(os.path.join(d, "c"), "c1")
    write(mnt.p("outside"), "o1")
    release(d, "begin:r1")
    assert os.getxattr(d, XATTR).decode().startswith("open r1")
    with pytest.raises(OSError) as e:
        release(d, "begin:r2")
    assert e.value.errno == 16  # EBUSY: one at a time
    write(os.path.join(d, "a"), "a2")
    os.unlink(os.path.join(d, "b"))
    os.rename(os.path.join(d, "c"), os.path.join(d, "c2"))
    write(mnt.p("outside"), "o2")  # outside the release: at once
    assert read(os.path.join(d, "a")) == b"a1"
    assert read(os.path.join(d, "b")) == b"b1"
    assert read(os.path.join(d, "c")) == b"c1"
    assert not os.path.exists(os.path.join(d, "c2"))
    assert read(mnt.p("outside")) == b"o2"
    with pytest.raises(OSError) as e:  # in or out of the release: mv copies
        os.rename(mnt.p("outside"), os.path.join(d, "o"))
    assert e.value.errno == 18
    release(d, "commit")
    assert sorted(os.listdir(d)) == ["a", "c2"]
    assert read(os.path.join(d, "a")) == b"a2"
    assert read(os.path.join(d, "c2")) == b"c1"
    # replaced and removed files are versions as usual; a moved one is not
    assert sorted(os.listdir(mnt.p(".versions", "d"))) == ["a.~1~", "b.~1~"]
    with pytest.raises(OSError):
        os.getxattr(d, XATTR)


def test_release_follows_the_directory_permissions(mnt, workdir):
    from util import as_user, open_world
    open_world(workdir)
    d = mnt.p("d")
    os.mkdir(d, 0o755)
    os.chmod(mnt.path, 0o755)
    assert as_user(lambda: release(d, "begin")) == 13  # EACCES: no write access to DIR
    os.chown(d, 65534, 65534)
    assert as_user(lambda: release(d, "begin:nobody")) == 0
    assert os.getxattr(d, XATTR).decode().startswith("open nobody since")
    assert as_user(lambda: release(d, "commit")) == 0


def make_files(root, n, tag):
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        write(os.path.join(root, f"f{i:04d}"), f"{tag} {i}\n")


def state_of(root, n):
    tags = set()
    for i in range(n):
        data = read(os.path.join(root, f"f{i:04d}")).decode()
        tags.add(data.split()[0])
    return tags


def test_commit_of_1000_files_time(mounter):
    m = mounter(lambda src: make_files(os.path.join(src, "app"), 1000, "old"), opts=())
    app = m.p("app")
    release(app, "begin")
    for i in range(1000):
        write(os.path.join(app, f"f{i:04d}"), f"new {i}\n")
    assert state_of(app, 1000) == {"old"}
    t0 = time.monotonic()
    release(app, "commit")
    took = (time.monotonic() - t0) * 1000
    assert state_of(app, 1000) == {"new"}
    [(logged, held)] = re.findall(r"committed: 1000 placed, 0 removed in ([0-9.]+) ms, "
                                  r"lookups held ([0-9.]+) ms", m.logtext())
    print(f"\ncommit of 1000 files: {took:.1f} ms (daemon: {logged} ms, lookups held {held} ms, "
          "synced)")
    assert float(held) <= float(logged)


@pytest.mark.parametrize("rnd", range(int(os.environ.get("RELEASE_CRASH_ROUNDS", "20"))))
def test_daemon_killed_during_a_commit(binary, workdir, rnd):
    """SIGKILL at a random moment of a 1000-file commit: after the next mount the tree is
    entirely the old or entirely the new release."""
    src = os.path.join(workdir, "src")
    make_files(os.path.join(src, "app"), 1000, "old")
    m = Mount(binary, src, opts=()).start()
    app = m.p("app")
    try:
        release(app, "begin")
        for i in range(1000):
            write(os.path.join(app, f"f{i:04d}"), f"new {i}\n")
        assert state_of(app, 1000) == {"old"}  # held
        setter = subprocess.Popen(["setfattr", "-n", XATTR, "-v", "commit", app],
                                  stderr=subprocess.DEVNULL)
        # at once (before the intent record: rolled back) or within the commit's ~70 ms
        time.sleep(0 if rnd % 4 == 0 else random.Random(rnd).uniform(0, 0.08))
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait()
        setter.wait(timeout=30)
    finally:
        subprocess.run(["fusermount3", "-uz", m.path], capture_output=True)
        m.stop(check=False, unmount=False)
    m = Mount(binary, src).start()
    try:
        state = state_of(m.p("app"), 1000)
        how = re.findall(r"release \S+:? (a commit interrupted.*|was open when.*)",
                         m.logtext())
        print(f"\nround {rnd}: {state} {how}")
        assert state in ({"old"}, {"new"}), state
        check_record_after_crash(m, state)
    finally:
        m.stop()
    staging = os.path.join(src, ".versions", ".binvfs-staging")
    left = os.listdir(staging) if os.path.isdir(staging) else []
    assert not [e for e in left if e.startswith("R")], left


def check_record_after_crash(m, state):
    """The history has the release exactly when it was rolled forward: record 1, 1000 files
    changed, each with the version it replaced."""
    records = m.p(".versions", ".binvfs-releases")
    ids = [x for x in os.listdir(records) if not x.endswith(".tmp")] \
        if os.path.isdir(records) else []
    if state == {"old"}:
        assert ids == [], ids
        return
    assert ids == ["1"], ids
    fields = read(os.path.join(records, "1")).split(b"\0")
    entries = fields[7:-1]
    assert len(entries) == 5 * 1000, len(entries)
    for i in range(0, len(entries), 5):
        kind, d, name, vrel = entries[i:i + 4]
        assert (kind, d, vrel) == (b"C", b"app", b"app/" + name + b".~1~"), entries[i:i + 5]


def test_binvfsctl_release(mnt, ctl):
    d = mnt.p("app")
    os.mkdir(d)
    write(os.path.join(d, "a"), "1")
    r = ctl("release", "begin", d, "--name", "v2")
    assert "open v2 since" in r.stdout and "do not survive" in r.stdout, r.stdout
    r = ctl("release", "begin", d, rc=1)
    assert "a release is open already" in r.stderr
    write(os.path.join(d, "a"), "2")
    assert "1 to place" in ctl("release", "status", d).stdout
    assert read(os.path.join(d, "a")) == b"1"
    r = ctl("release", "commit", d)
    assert re.search(r": release committed \([0-9.]+ ms\)", r.stdout), r.stdout
    assert read(os.path.join(d, "a")) == b"2"
    assert "no release open" in ctl("release", "status", d).stdout
    assert "no release is open" in ctl("release", "commit", d, rc=1).stderr
    ctl("release", "begin", d)
    write(os.path.join(d, "a"), "3")
    assert "release aborted" in ctl("release", "abort", d).stdout
    assert read(os.path.join(d, "a")) == b"2"
    assert "invalid name" in ctl("release", "begin", d, "--name", "a/b", rc=1).stderr


def power_cut(fsdir):
    """The ext4 shutdown ioctl without a journal flush (xfs_io -x -c shutdown; called directly:
    xfs_io stats every mount on the machine first, and one hung FUSE mount would hang it)."""
    EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
    EXT4_GOING_FLAGS_NOLOGFLUSH = 2
    fd = os.open(fsdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:  # the filesystem is down
        os.close(os.open(os.path.join(fsdir, "probe"), os.O_CREAT | os.O_WRONLY, 0o600))
    assert e.value.errno == errno.EIO, e.value


@pytest.mark.parametrize("rnd", range(int(os.environ.get("RELEASE_CRASH_ROUNDS", "20"))))
def test_power_cut_during_a_commit(loopfs, rnd):
    """A power cut (the ext4 shutdown ioctl without a journal flush) at a random moment of a
    1000-file commit: after the filesystem's journal replay and the next mount the tree is
    entirely the old or entirely the new release."""
    def setup(src):
        make_files(os.path.join(src, "app"), 1000, "old")
        os.sync()  # the old release is on disk before the power cut

    m = loopfs("ext4", 256, opts=(), setup=setup)
    fsdir = os.path.dirname(m.src)
    app = m.p("app")
    m2 = None
    try:
        release(app, "begin")
        for i in range(1000):
            write(os.path.join(app, f"f{i:04d}"), f"new {i}\n")
        assert state_of(app, 1000) == {"old"}
        setter = subprocess.Popen(["setfattr", "-n", XATTR, "-v", "commit", app],
                                  stderr=subprocess.DEVNULL)
        time.sleep(0 if rnd % 4 == 0 else random.Random(rnd).uniform(0, 0.1))
        power_cut(fsdir)
        m.proc.kill()
        m.proc.wait()
        setter.wait(timeout=30)
        subprocess.run(["fusermount3", "-uz", m.path], capture_output=True)
        m.stop(check=False, unmount=False)
        subprocess.run(["umount", fsdir], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", fsdir + ".img", fsdir], check=True,
                       capture_output=True)
        m2 = Mount(m.binary, m.src).start()
        state = state_of(m2.p("app"), 1000)
        how = re.findall(r"release \S+:? (a commit interrupted.*|was open when.*)",
                         m2.logtext())
        print(f"\npower cut, round {rnd}: {state} {how}")
        assert state in ({"old"}, {"new"}), state
        check_record_after_crash(m2, state)
    finally:
        if m2:
            m2.stop()


def test_releases_history_diff_and_rollback(mnt, ctl, ctlj):
    """A committed release leaves a record: `releases` lists it, `diff --release` shows what
    it changed, `rollback --release` makes the state before it current again as one new
    release, itself in the history; single-file versions keep working alongside."""
    d = mnt.p("app")
    os.makedirs(os.path.join(d, "sub"))
    for n in "abc":
        write(os.path.join(d, n), n + "1")
    assert "no release committed here" in ctl("releases", d).stdout
    ctl("release", "begin", d, "--name", "v2")
    write(os.path.join(d, "a"), "a2")
    os.unlink(os.path.join(d, "b"))
    os.rename(os.path.join(d, "c"), os.path.join(d, "c2"))
    write(os.path.join(d, "sub", "new"), "n")
    ctl("release", "commit", d)
    after = tree(d)
    [r] = ctlj("releases", d)
    assert (r["id"], r["name"], r["dir"], r["user"], r["changed"], r["added"],
            r["removed"]) == (1, "v2", d, "root", 1, 2, 2), r
    assert abs(r["committed"] - time.time()) < 60
    out = ctl("releases", mnt.path).stdout.splitlines()
    assert out[0].split() == ["ID", "NAME", "COMMITTED", "WHO", "DIR", "CHANGED", "ADDED",
                              "REMOVED"]
    assert out[1].split()[:2] == ["1", "v2"] and out[1].split()[-4:] == [d, "1", "2", "2"]
    diff = ctl("diff", "--release", "1", d).stdout
    assert diff.splitlines()[1:] == [
        f"changed  {d}/a  (the old file: version 1)",
        f"removed  {d}/b  (kept as version 1)",
        f"moved    {d}/c -> {d}/c2",
        f"added    {d}/sub/new"], diff
    j = ctlj("diff", "--release", "1", d)
    assert [(c["change"], c["path"], c["version"]) for c in j["changes"]] == [
        ("changed", f"{d}/a", 1), ("removed", f"{d}/b", 1), ("moved", f"{d}/c", None),
        ("added", f"{d}/sub/new", None)]

    # the rollback: all of it at once, as release 2
    r = ctl("rollback", "--release", "1", d).stdout
    assert "release 1 rolled back as release 2" in r and "3 files restored, 2 removed" in r, r
    assert tree(d) == {"a": b"a1", "b": b"b1", "c": b"c1"}
    assert [x["id"] for x in ctlj("releases", d)] == [1, 2]
    assert not [x for x in os.listdir(d) if x.startswith(".binvfs-rollback")]
    # single-file versions as ever: a's versions are a1 (1), a2 (2), a1 now (3)
    assert [v["n"] for v in ctlj("log", os.path.join(d, "a"))["versions"]] == [3, 2, 1]
    # and the rollback rolls back
    ctl("rollback", "--release", "2", d)
    assert tree(d) == after
    # errors: no such release, a directory the release was not on
    assert "no release 9" in ctl("rollback", "--release", "9", d, rc=1).stderr
    assert "was on" in ctl("rollback", "--release", "1", os.path.join(d, "sub"), rc=1).stderr


def test_rollback_of_a_release_whose_old_file_was_pruned_changes_nothing(mnt, ctl):
    d = mnt.p("app")
    os.mkdir(d)
    write(os.path.join(d, "a"), "a1")
    write(os.path.join(d, "b"), "b1")
    ctl("release", "begin", d)
    write(os.path.join(d, "a"), "a2")
    write(os.path.join(d, "b"), "b2")
    ctl("release", "commit", d)
    ctl("prune", "--keep", "0", os.path.join(d, "b"))
    r = ctl("rollback", "--release", "1", d, rc=1)
    assert "the file before it" in r.stderr and "gone" in r.stderr, r.stderr
    assert tree(d) == {"a": b"a2", "b": b"b2"}
    assert "no release open" in ctl("release", "status", d).stdout


def test_releases_on_disjoint_trees_coexist(mnt):
    a, b = mnt.p("a"), mnt.p("b")
    os.makedirs(os.path.join(a, "x"))
    os.mkdir(b)
    write(os.path.join(a, "x", "f"), "a1")
    write(os.path.join(b, "f"), "b1")
    release(a, "begin:ra")
    release(b, "begin:rb")  # another tree: fine
    for inner in (os.path.join(a, "x"), mnt.path):  # below or above an open one: EBUSY
        with pytest.raises(OSError) as e:
            release(inner, "begin:inner")
        assert e.value.errno == 16, inner
    with pytest.raises(OSError) as e:  # one name per open release
        release(mnt.p("a", "x"), "begin:rb")
    assert e.value.errno == 16
    with pytest.raises(OSError) as e:  # the release is on a, not a/x
        release(os.path.join(a, "x"), "commit")
    assert e.value.errno == 22
    write(os.path.join(a, "x", "f"), "a2")
    write(os.path.join(b, "f"), "b2")
    with pytest.raises(OSError) as e:  # from one release into another: mv copies
        os.rename(os.path.join(a, "x", "f"), os.path.join(b, "g"))
    assert e.value.errno == 18
    release(a, "commit")
    assert read(os.path.join(a, "x", "f")) == b"a2"
    assert read(os.path.join(b, "f")) == b"b1"  # still held by rb
    assert os.getxattr(b, XATTR).decode().startswith("open rb")
    release(b, "commit")
    assert read(os.path.join(b, "f")) == b"b2"
    release(mnt.path, "begin:top")  # both gone: the whole mount may have one now
    release(mnt.path, "abort")


def run_ctl_as(ctlp, actor, *args):
    """binvfsctl as a real user: (exit status, stdout + stderr)."""
    r = subprocess.run([ctlp, *args], capture_output=True, text=True, **actor.popen_kw())
    return r.returncode, r.stdout + r.stderr


def test_release_permissions_as_real_users(mounter, workdir, team, binary):
    """Who may begin, commit or abort follows DIR's permissions (write access), checked by the
    kernel for the user.* xattr: real unprivileged users, through binvfsctl."""
    from util import as_actor, open_world
    open_world(workdir)
    alice, mallory = team["alice"], team["mallory"]
    m = mounter()
    os.chmod(m.path, 0o755)
    d = m.p("app")
    os.mkdir(d, 0o755)
    write(os.path.join(d, "f"), "1")
    os.chown(d, alice.uid, alice.gid)
    os.chown(os.path.join(d, "f"), alice.uid, alice.gid)
    ctlp = ctl_path(binary)
    ctl_as = functools.partial(run_ctl_as, ctlp)

    def xattr_as(actor, value):
        def fn():
            try:
                os.setxattr(d, XATTR, value.encode())
                return 0
            except OSError as e:
                return e.errno
        return as_actor(actor, fn)

    assert xattr_as(mallory, "begin") == 13  # EACCES: mallory may not write app
    rc, out = ctl_as(alice, "release", "begin", d, "--name", "alices")
    assert rc == 0 and f"open alices since" in out and f"by uid {alice.uid}" in out, out
    assert xattr_as(mallory, "commit") == 13 and xattr_as(mallory, "abort") == 13

    def alice_writes():
        with open(os.path.join(d, "f"), "w") as f:
            f.write("2")
    as_actor(alice, alice_writes)
    assert read(os.path.join(d, "f")) == b"1"
    rc, out = ctl_as(alice, "release", "commit", d)
    assert rc == 0 and "release committed" in out, out
    assert read(os.path.join(d, "f")) == b"2"
    rc, out = ctl_as(alice, "--json", "releases", d)
    assert rc == 0, out
    [r] = __import__("json").loads(out)
    assert r["uid"] == alice.uid and r["changed"] == 1, r
    # a group-writable directory: a member of its group may
    os.chown(d, alice.uid, team["gid"])
    os.chmod(d, 0o775)
    assert xattr_as(mallory, "begin:mallorys") == 0
    assert xattr_as(alice, "abort") == 0


def test_a_private_directorys_releases_are_not_shown_to_others(mounter, workdir, team, binary):
    """A release record names the files it changed: for alice's 0700 directory, mallory can
    neither list them (binvfsctl releases, diff --release) nor read the records in .versions/,
    while alice can."""
    from util import as_actor, open_world
    open_world(workdir)
    alice, mallory = team["alice"], team["mallory"]
    m = mounter()
    os.chmod(m.path, 0o755)
    d = m.p("priv")
    os.mkdir(d, 0o700)
    os.chown(d, alice.uid, alice.gid)
    ctlp = ctl_path(binary)
    ctl_as = functools.partial(run_ctl_as, ctlp)

    def alice_deploys():
        os.setxattr(d, XATTR, b"begin:secret-release")
        with open(os.path.join(d, "secret-name"), "w") as f:
            f.write("s")
        os.setxattr(d, XATTR, b"commit")
    as_actor(alice, alice_deploys)
    rc, out = ctl_as(alice, "releases", d)
    assert rc == 0 and "secret-release" in out, out
    rc, out = ctl_as(alice, "diff", "--release", "1", d)
    assert rc == 0 and "secret-name" in out, out
    for args in (("releases", m.path), ("releases", d), ("diff", "--release", "1", m.path)):
        rc, out = ctl_as(mallory, *args)
        assert "secret" not in out, (args, out)
    recs = m.p(".versions", ".binvfs-releases")

    def mallory_reads():
        got = []
        for name in os.listdir(recs):
            try:
                got.append(open(os.path.join(recs, name), "rb").read())
            except OSError as e:
                got.append(e.errno)
        return got
    got = as_actor(mallory, mallory_reads)
    assert got and all(x == 13 for x in got), got


def test_rollback_of_the_200_file_release_restores_all_at_once(mounter, builds, procs, workdir,
                                                               ctl):
    """After the rsync'ed release of build 2, `rollback --release` brings back all 200 files of
    build 1 at one instant: an exec loop running throughout never fails and never goes back
    to build 2 once it ran build 1 again."""
    b1, b2 = builds
    m = mounter(setup_app(b1))
    app = m.p("app")
    prog = os.path.join(app, "bin", "prog")
    release(app, "begin:build2")
    r = run(["rsync", "-a", b2 + "/", app + "/"])
    assert r.returncode == 0, r.stderr
    release(app, "commit")
    assert tree(app) == tree(b2)
    loop = ExecLoop(procs, prog, os.path.join(workdir, "loop.out"))
    wait_for(lambda: len(loop.lines()) >= 5, 20, "the exec loop")
    [rec] = [x for x in json_out(ctl("--json", "releases", app)) if x["name"] == "build2"]
    assert (rec["changed"], rec["added"], rec["removed"]) == (200, 0, 0), rec
    out = ctl("rollback", "--release", str(rec["id"]), app).stdout
    assert "200 files restored, 0 removed" in out, out
    first = run([prog])
    n = len(loop.lines())
    wait_for(lambda: len(loop.lines()) >= n + 5, 20, "the exec loop")
    lines = loop.stop()
    assert first.returncode == 0 and first.stdout.startswith("1 "), first
    fails = [x for x in lines if x.startswith("FAIL")]
    vers = [x.split()[0] for x in lines if not x.startswith("FAIL")]
    print(f"\n{len(lines)} execs, {len(fails)} failed; {out.strip()}")
    assert not fails, f"{len(fails)} of {len(lines)} execs failed"
    assert vers == sorted(vers, reverse=True) and vers[0] == "2" and vers[-1] == "1", vers
    assert tree(app) == tree(b1)


def json_out(r):
    import json
    return json.loads(r.stdout)


def test_a_new_file_is_held_for_everyone_but_its_creators_session(mnt, ctl):
    """A new file made in place within a release (cp to a new name) is held like a publish:
    other sessions do not see it (lookup, ls) until the commit; its creator's session does
    (it writes and chmods it by name). mkdir and chmod are not held (semantics.md)."""
    d = mnt.p("app")
    os.mkdir(d)
    write(os.path.join(d, "old"), "o1")
    release(d, "begin:new")
    new = os.path.join(d, "new")
    script = (f'echo n1 > "{new}" && chmod 0750 "{new}" && cat "{new}" && ls "{d}" && '
              f'mkdir "{d}/sub" && chmod 0600 "{d}/old"')
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["n1", "new", "old"], r.stdout
    assert not os.path.exists(new)
    assert sorted(os.listdir(d)) == ["old", "sub"]  # the directory at once, not the file
    assert os.stat(os.path.join(d, "old")).st_mode & 0o777 == 0o600  # chmod: at once
    with pytest.raises(FileNotFoundError):
        open(new)
    release(d, "commit")
    assert read(new) == b"n1\n" and os.stat(new).st_mode & 0o777 == 0o750
    assert sorted(os.listdir(d)) == ["new", "old", "sub"]
    assert "added    " + new in ctl("diff", "--release", "1", d).stdout


def test_a_new_file_written_again_chmodded_and_renamed_in_a_release(mnt):
    """Ansible's copy (mkstemp in the directory, copy2 into it: a second write open, then a
    chmod by name, then rename over the file): the file made within the release is written in
    place each time, so the rename takes its last content and its mode, and no version of the
    temporary name is kept."""
    d = mnt.p("d")
    os.mkdir(d)
    write(os.path.join(d, "a"), "a1")
    release(d, "begin")
    tmp = os.path.join(d, ".tmp-a")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    write(tmp, "a2 final")
    os.chmod(tmp, 0o755)
    os.rename(tmp, os.path.join(d, "a"))
    assert read(os.path.join(d, "a")) == b"a1"
    release(d, "commit")
    assert read(os.path.join(d, "a")) == b"a2 final"
    assert os.stat(os.path.join(d, "a")).st_mode & 0o777 == 0o755
    assert sorted(os.listdir(mnt.p(".versions", "d"))) == ["a.~1~"]


def test_names_cached_before_the_begin_are_new_right_after_the_commit(mnt):
    """A name the kernel cached before the release (looked up, its entry kept) and changed in
    it by a writer that opened it before the begin (no walk of the name when it publishes):
    the walk right after the commit returns gets the new file, every time, also when the
    commit follows the held change at once (the entry is invalidated when the change is held,
    and again after the commit), in DIR and in a subdirectory."""
    d = mnt.p("d")
    os.makedirs(os.path.join(d, "sub"))
    names = [os.path.join(d, "a"), os.path.join(d, "sub", "b")]
    for p in names:
        write(p, "0")
    stale = []
    for rnd in range(1, 31):
        fds = [os.open(p, os.O_WRONLY | os.O_TRUNC) for p in names]
        for p in names:  # cached: looked up and read before the begin
            os.stat(p)
            read(p)
        release(d, "begin")
        for fd in fds:
            os.write(fd, str(rnd).encode())
            os.close(fd)
        release(d, "commit")
        for p in names:
            got = read(p).decode()
            if got != str(rnd):
                stale.append((rnd, p, got))
    assert not stale, stale


def test_a_file_made_in_a_release_by_a_program_without_a_session(binary, workdir):
    """Programs started by an init that never called setsid (a container's or a CI runner's)
    are all in session 0: that is their session like any other. A file such a program makes
    within a release is seen by it and its children (rsync's receiver renames its temporary
    file), and held for the others until the commit. Run in a new pid namespace, where every session leader
    is outside and so every process reads session 0, the daemon included."""
    d = os.path.join(workdir, "bin")
    os.makedirs(os.path.join(d, "app"))
    write(os.path.join(d, "app", "old"), "old")
    src = os.path.join(workdir, "src")
    os.makedirs(src)
    write(os.path.join(src, "new"), "new")
    write(os.path.join(src, "old"), "old 2")
    script = f"""
set -e
test "$(awk '{{print $6}}' /proc/self/stat)" = 0
{binary} -f {d} & pid=$!
for i in $(seq 200); do grep -q " {d} fuse.binvfs" /proc/self/mountinfo && break; sleep 0.05; done
setfattr -n {XATTR} -v begin {d}/app
rsync -a {src}/ {d}/app/
test ! -e {d}/app/new; cat {d}/app/old; echo
setfattr -n {XATTR} -v commit {d}/app
cat {d}/app/new {d}/app/old; echo
fusermount3 -u {d}; wait $pid
"""
    r = run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", script], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split("\n")[:2] == ["old", "newold 2"], r.stdout + r.stderr
    assert not is_mounted(d)


def test_a_tmpfile_linked_within_a_release(mnt):
    """O_TMPFILE then linkat (an installer's atomic create) within a release: the new name is
    held like any new file (its creator's session sees it, another does not), an abort removes
    it, a commit shows it to all."""
    d = mnt.p("d")
    os.mkdir(d)

    def make(name):
        fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o644)
        try:
            os.write(fd, name.encode())
            link_proc(fd, os.path.join(d, name))
        finally:
            os.close(fd)

    def seen_by_another_session(name):
        r = subprocess.run(["cat", os.path.join(d, name)], capture_output=True,
                           start_new_session=True)
        return r.returncode == 0

    for end in ("abort", "commit"):
        release(d, "begin")
        make(end)
        assert read(os.path.join(d, end)) == end.encode()
        assert end in os.listdir(d)
        assert not seen_by_another_session(end)
        release(d, end)
        assert os.path.exists(os.path.join(d, end)) == (end == "commit")
        assert seen_by_another_session(end) == (end == "commit")
    assert sorted(os.listdir(d)) == ["commit"]
    assert not os.path.exists(mnt.p(".versions", "d"))
