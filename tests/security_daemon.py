"""Security, issue 18 points 1, 5 and 6: the daemon acts as root only on what the requester
could reach, and one user cannot take the others' history or fds. Each attack runs as the real
unprivileged users of the `team` fixture (alice, mallory; one shared group), exactly as the
issue states it; where it applies the same attack runs first on a plain directory, where it
must get nothing (EPERM, EACCES, or no effect), and then through binvfs, where it must get
the same nothing.

- 1a/1b/1c: metadata that a writer set through her fd (fchmod, fchown) while the name was
  swapped under it (rename of root's 0600 file, of root's program, of alice's 0700 directory
  onto it) lands on nothing but her own copy;
- 5a/5b: mallory's fallocate of 1T, and her filling the disk then removing a file, remove none
  of alice's old versions;
- 6: mallory holding more write opens than the daemon has fds leaves alice's and root's `cp`
  working; mallory gets the error at her cap.
"""
import errno
import json
import os
import resource
import signal
import stat
import subprocess
import time

import pytest

from util import Actor, as_actor, attempt, open_world, read, write

ROOT = Actor("root", 0, 0)
SECRET = b"root secret 7f3a: the database password\n"
ALICE_SECRET = b"alice private notes 91c2\n"
PAYLOAD = b"#!/bin/sh\necho mallory was here\n"


# ---------------------------------------------------------------------------------------------
# helpers

def as_user(actor, fn, nofile=None, timeout=120):
    """util.as_actor, with RLIMIT_NOFILE raised to `nofile` for the attack on fd shares."""
    return as_actor(actor, fn, timeout=timeout, nofile=nofile)


def chown_tree(path, uid, gid, mode):
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def try_read(path):
    """("ok", the bytes as text) or the errno name: what a reader got."""
    try:
        return ["ok", read(path).decode(errors="replace")]
    except OSError as e:
        return [errno.errorcode.get(e.errno, str(e.errno))]


def meta(path):
    st = os.lstat(path)
    return {"type": stat.S_IFMT(st.st_mode), "mode": oct(st.st_mode & 0o7777),
            "uid": st.st_uid, "gid": st.st_gid}


def as_run(actor, cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          **actor.popen_kw(), **kw)


# ---------------------------------------------------------------------------------------------
# point 1: metadata recorded through a writer's fd lands on another file

def deputy_tree(team):
    """setup(d): d/shared 0775 root:team holding root's 0600 secret, root's 0700 program,
    mallory's own file mx and alice's 0700 directory adir (with 0600 notes); d/mal, mallory's
    0755 directory holding her file x (0600)."""
    al, mal, gid = team["alice"], team["mallory"], team["gid"]

    def setup(d):
        os.chmod(d, 0o755)
        shared = os.path.join(d, "shared")
        os.mkdir(shared)
        chown_tree(shared, 0, gid, 0o775)
        write(os.path.join(shared, "rootsecret"), SECRET, 0o600)
        write(os.path.join(shared, "rootprog"), b"#!/bin/sh\necho root's tool\n", 0o700)
        write(os.path.join(shared, "mx"), b"mallory's own\n")
        chown_tree(os.path.join(shared, "mx"), mal.uid, mal.gid, 0o600)
        adir = os.path.join(shared, "adir")
        os.mkdir(adir)
        chown_tree(adir, al.uid, al.gid, 0o700)
        write(os.path.join(adir, "notes"), ALICE_SECRET)
        chown_tree(os.path.join(adir, "notes"), al.uid, al.gid, 0o600)
        md = os.path.join(d, "mal")
        os.mkdir(md)
        chown_tree(md, mal.uid, mal.gid, 0o755)
        write(os.path.join(md, "x"), b"mallory's x\n")
        chown_tree(os.path.join(md, "x"), mal.uid, mal.gid, 0o600)

    return setup


@pytest.fixture
def srcfds():
    """fds of SOURCE directories opened before their mount (closed at teardown)."""
    fds = []
    yield fds
    for fd in fds:
        os.close(fd)


def on_native_and_mount(workdir, mounter, team, srcfds):
    """(native dir, mount, SOURCE itself under the mount): the deputy tree on a plain
    directory and under binvfs."""
    open_world(workdir)
    setup = deputy_tree(team)
    nat = os.path.join(workdir, "native")
    os.mkdir(nat)
    setup(nat)

    def setup_and_hold(d):
        setup(d)
        srcfds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    m = mounter(setup=setup_and_hold)
    return nat, m, f"/proc/self/fd/{srcfds[-1]}"


def attack_fchmod(base):
    """1a, as mallory: fchmod(0644) through her write fd of mal/x, root's 0600 secret renamed
    onto mal/x, close; then read mal/x."""
    def fn():
        p = lambda *a: os.path.join(base, *a)  # noqa: E731
        fd = os.open(p("mal/x"), os.O_WRONLY)
        os.fchmod(fd, 0o644)
        os.rename(p("shared/rootsecret"), p("mal/x"))
        os.close(fd)
        time.sleep(0.05)
        return {"read": try_read(p("mal/x")), "stat": meta(p("mal/x"))}
    return fn


def test_1a_fchmod_then_rename_root_secret(workdir, mounter, team, srcfds):
    nat, m, under = on_native_and_mount(workdir, mounter, team, srcfds)
    mal = team["mallory"]
    for where, base, backing in (("native", nat, nat), ("binvfs", m.p(), under)):
        got = as_user(mal, attack_fchmod(base))
        assert got["read"] == ["EACCES"], \
            f"{where}: mallory read root's 0600 secret after fchmod+rename: {got}"
        st = meta(os.path.join(backing, "mal/x"))
        assert (st["mode"], st["uid"]) == (oct(0o600), 0), \
            f"{where}: root's secret (now mal/x) changed to {st}; mallory saw {got['stat']}"
        assert read(os.path.join(backing, "mal/x")) == SECRET, where


def attack_fchown(base, uid):
    """1b, as mallory: fchown(fd, her uid) through her write fd of mal/x, root's 0700 program
    renamed onto mal/x, close; then chmod 4755 and write her code into it."""
    def fn():
        p = lambda *a: os.path.join(base, *a)  # noqa: E731
        fd = os.open(p("mal/x"), os.O_WRONLY)
        os.fchown(fd, uid, -1)
        os.rename(p("shared/rootprog"), p("mal/x"))
        os.close(fd)
        time.sleep(0.05)
        out = {"chmod": attempt(lambda: os.chmod(p("mal/x"), 0o4755))}

        def overwrite():
            with open(p("mal/x"), "r+b") as f:
                f.truncate(0)
                f.write(PAYLOAD)
        out["write"] = attempt(overwrite)
        out["stat"] = meta(p("mal/x"))
        return out
    return fn


def test_1b_fchown_then_rename_root_program(workdir, mounter, team, srcfds):
    nat, m, under = on_native_and_mount(workdir, mounter, team, srcfds)
    mal = team["mallory"]
    for where, base, backing in (("native", nat, nat), ("binvfs", m.p(), under)):
        got = as_user(mal, attack_fchown(base, mal.uid))
        st = meta(os.path.join(backing, "mal/x"))
        assert st["uid"] == 0, f"{where}: root's program became mallory's: {st}, {got}"
        assert got["chmod"] == "EPERM" and got["write"] == "EACCES", \
            f"{where}: mallory's chmod 4755 / write of root's program: {got}"
        assert st["mode"] == oct(0o700), f"{where}: root's program is now {st}"
        assert read(os.path.join(backing, "mal/x")) != PAYLOAD, \
            f"{where}: root's program holds mallory's code ({st})"
    # anywhere in the tree: no setuid file that is root's, nor one with her code
    for d, _, files in os.walk(under):
        for f in files:
            path = os.path.join(d, f)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID:
                assert st.st_uid != 0, f"setuid-root file {path}: {oct(st.st_mode)}"
                assert read(path) != PAYLOAD, f"setuid file with mallory's code: {path}"


def attack_dir(base, uid):
    """1c, as mallory: fchmod(0777) and fchown(her uid) through her write fd of shared/mx,
    unlink it, rename alice's 0700 shared/adir to shared/mx, close; then list and read it."""
    def fn():
        p = lambda *a: os.path.join(base, *a)  # noqa: E731
        fd = os.open(p("shared/mx"), os.O_WRONLY)
        os.fchmod(fd, 0o777)
        os.fchown(fd, uid, -1)
        os.unlink(p("shared/mx"))
        os.rename(p("shared/adir"), p("shared/mx"))
        os.close(fd)
        time.sleep(0.05)
        return {"list": attempt(lambda: os.listdir(p("shared/mx"))),
                "read": try_read(p("shared/mx/notes")), "stat": meta(p("shared/mx"))}
    return fn


def test_1c_dir_renamed_onto_writers_name(workdir, mounter, team, srcfds):
    nat, m, under = on_native_and_mount(workdir, mounter, team, srcfds)
    al, mal = team["alice"], team["mallory"]
    for where, base, backing in (("native", nat, nat), ("binvfs", m.p(), under)):
        got = as_user(mal, attack_dir(base, mal.uid))
        st = meta(os.path.join(backing, "shared/mx"))
        assert stat.S_ISDIR(st["type"]), (where, st)
        assert (st["uid"], st["mode"]) == (al.uid, oct(0o700)), \
            f"{where}: alice's 0700 directory is now {st} (mallory is uid {mal.uid}): {got}"
        assert got["list"] == "EACCES" and got["read"] == ["EACCES"], \
            f"{where}: mallory reached into alice's directory: {got}"


# ---------------------------------------------------------------------------------------------
# point 5: one user's space requests never remove another user's versions

def space_tree(team):
    al, mal = team["alice"], team["mallory"]

    def setup(src):
        os.chmod(src, 0o755)
        for name, who in (("alice", al), ("mal", mal)):
            d = os.path.join(src, name)
            os.mkdir(d)
            chown_tree(d, who.uid, who.gid, 0o755)
    return setup


def deploy_versions(actor, m, workdir, rel, n, size=64 << 10):
    """n deploys (cp as actor, from files in workdir) of distinct contents of `size` bytes to
    rel: n-1 old versions."""
    stage = os.path.join(workdir, f"stage-{actor.name}")
    os.makedirs(stage, exist_ok=True)
    os.chmod(stage, 0o755)
    for i in range(n):
        f = os.path.join(stage, f"v{i}")
        write(f, (f"{actor.name} {rel} v{i}\n".encode() * (size // 16 + 1))[:size], 0o644)
        r = as_run(actor, ["cp", f, m.p(rel)])
        assert r.returncode == 0, r.stderr


def alice_versions(m):
    d = m.s(".versions", "alice")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_5a_fallocate_1T_keeps_others_versions(loopfs, workdir, team):
    open_world(workdir)
    m = loopfs(size_mb=64, setup=space_tree(team))
    al, mal = team["alice"], team["mallory"]
    deploy_versions(al, m, workdir, "alice/app", 6)
    deploy_versions(al, m, workdir, "alice/lib.so", 4)
    before = alice_versions(m)
    assert len(before) == 8, before
    sv = os.statvfs(m.src)
    used = 1 - sv.f_bavail / sv.f_blocks
    assert used < 0.2, f"the filesystem is {used:.0%} full before the attack"
    r = as_run(mal, ["fallocate", "-l", "1T", m.p("mal/fa")])
    assert r.returncode != 0, "fallocate of 1T on a 64 MB filesystem succeeded"
    assert "No space" in r.stderr or "too large" in r.stderr, r.stderr
    after = alice_versions(m)
    assert after == before, \
        f"mallory's fallocate -l 1T removed alice's versions {sorted(set(before) - set(after))}"


def fill(path):
    """Write zeros to path until the filesystem is full (big writes, then small ones, synced
    in between: ext4 reserves space for delayed allocation); the last error and the size."""
    err, size = None, 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 64 << 10, 4 << 10, 4 << 10, 512, 512):
            try:
                while True:
                    size += f.write(b"\0" * chunk)
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno))
            try:
                os.fsync(f.fileno())
            except OSError:
                pass
    return {"error": err, "size": size}


def test_5b_fill_then_remove_keeps_others_versions(loopfs, workdir, team):
    open_world(workdir)
    m = loopfs(size_mb=64, setup=space_tree(team))
    al, mal = team["alice"], team["mallory"]
    deploy_versions(al, m, workdir, "alice/app", 6)
    deploy_versions(mal, m, workdir, "mal/tool", 4)
    write(m.p("mal/small"), "x\n")
    os.chown(m.s("mal/small"), mal.uid, mal.gid)
    before = alice_versions(m)
    assert len(before) == 5, before
    got = as_user(mal, lambda: fill(m.p("mal/fill")))
    assert got["error"] == "ENOSPC", got
    sv = os.statvfs(m.src)
    assert sv.f_bavail * sv.f_frsize < (64 << 20) // 100, f"not full: {sv}"
    after_fill = alice_versions(m)
    r = as_run(mal, ["rm", "-f", m.p("mal/small")])
    assert r.returncode == 0, r.stderr
    after = alice_versions(m)
    os.unlink(m.p("mal/fill"))
    assert after_fill == before, \
        f"mallory filling the disk removed alice's versions {sorted(set(before) - set(after_fill))}"
    assert after == before, \
        f"mallory removing a file on a full disk removed alice's versions " \
        f"{sorted(set(before) - set(after))}"


# ---------------------------------------------------------------------------------------------
# point 6: one user holding write opens leaves the others working

def fd_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no fd limit")


def hold_write_opens(actor, paths, target, nofile):
    """A forked child as actor (RLIMIT_NOFILE raised to nofile first) that opens paths for
    writing, round robin, until `target` fds or an error; reports {"count", "error"} on a pipe
    and then holds them until it is killed. (pid, read end of the pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = {"count": 0, "error": None}
        try:
            os.close(r)
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
            os.setgroups(actor.groups)
            os.setresgid(actor.gid, actor.gid, actor.gid)
            os.setresuid(actor.uid, actor.uid, actor.uid)
            fds = []
            try:
                while len(fds) < target:
                    fds.append(os.open(paths[len(fds) % len(paths)], os.O_WRONLY))
            except OSError as e:
                out["error"] = errno.errorcode.get(e.errno, str(e.errno))
            out["count"] = len(fds)
        except BaseException as e:  # noqa: B902 - reported to the parent
            out["error"] = repr(e)
        os.write(w, json.dumps(out).encode() + b"\n")
        while True:
            signal.pause()
    os.close(w)
    return pid, r


def read_report(r, timeout):
    import select
    ready, _, _ = select.select([r], [], [], timeout)
    assert ready, f"a holder did not report within {timeout} s"
    return json.loads(os.read(r, 4096))


def test_6_write_opens_of_one_user_leave_others_working(mounter, workdir, team):
    open_world(workdir)
    al, mal = team["alice"], team["mallory"]

    def setup(src):
        os.chmod(src, 0o755)
        for name, who in (("alice", al), ("mal", mal)):
            d = os.path.join(src, name)
            os.mkdir(d)
            chown_tree(d, who.uid, who.gid, 0o755)
        for i in range(64):
            f = os.path.join(src, "mal", f"f{i}")
            write(f, "m\n")
            os.chown(f, mal.uid, mal.gid)
        os.mkdir(os.path.join(src, "root"))
        write(os.path.join(src, "root", "app"), "root v1\n", 0o755)
        write(os.path.join(src, "alice", "app"), "alice v1\n", 0o755)
        os.chown(os.path.join(src, "alice", "app"), al.uid, al.gid)

    m = mounter(setup=setup)
    limit = fd_limit(m.proc.pid)
    if limit > 200000:
        pytest.skip(f"the daemon may open {limit} fds: too many to exhaust in a test")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_proc = min(hard - 64, limit)
    want = limit + 1000  # more than the daemon's fds: unfixed, they all go to mallory
    nproc = max(2, -(-want // per_proc))
    target = -(-want // nproc)
    assert target + 64 <= hard, (target, hard)
    srcs = os.path.join(workdir, "payload")
    os.mkdir(srcs)
    write(os.path.join(srcs, "alice-new"), "alice v2\n", 0o644)
    write(os.path.join(srcs, "alice-app"), "alice app v2\n", 0o755)
    write(os.path.join(srcs, "root-app"), "root v2\n", 0o755)
    paths = [m.p("mal", f"f{i}") for i in range(64)]
    holders = []
    try:
        for _ in range(nproc):
            holders.append(hold_write_opens(mal, paths, target, target + 64))
        reports = [read_report(r, 600) for _, r in holders]
        held = sum(x["count"] for x in reports)
        # while mallory holds them: alice's and root's cp, new files and over existing ones
        results = {
            "alice cp new": as_run(al, ["cp", os.path.join(srcs, "alice-new"),
                                        m.p("alice", "new")]),
            "alice cp over": as_run(al, ["cp", os.path.join(srcs, "alice-app"),
                                         m.p("alice", "app")]),
            "root cp over": as_run(ROOT, ["cp", os.path.join(srcs, "root-app"),
                                                           m.p("root", "app")]),
            "root cp new": as_run(ROOT, ["cp", os.path.join(srcs, "root-app"),
                                                          m.p("root", "new")]),
        }
    finally:
        for pid, r in holders:
            os.kill(pid, signal.SIGKILL)
        for pid, r in holders:
            os.waitpid(pid, 0)
            os.close(r)
    failed = {k: v.stderr.strip() for k, v in results.items() if v.returncode != 0}
    assert not failed, \
        f"with mallory holding {held} write opens ({reports}; daemon fd limit {limit}), " \
        f"other users' cp failed: {failed}"
    assert read(m.p("alice", "app")) == b"alice app v2\n"
    assert read(m.p("root", "app")) == b"root v2\n"
    errs = {x["error"] for x in reports if x["error"]}
    assert errs and errs <= {"EMFILE", "ENFILE", "ENOSPC", "EDQUOT", "EAGAIN", "ENOMEM"}, \
        f"mallory opened {held} of {want} without a clear error at her cap: {reports}"
    # and the daemon is fine once she lets go
    r = as_run(al, ["cp", os.path.join(srcs, "alice-new"), m.p("alice", "after")])
    assert r.returncode == 0, r.stderr
