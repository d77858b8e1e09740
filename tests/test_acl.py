"""POSIX ACLs inside the mount as on the backing filesystem (xfstests generic/099, 319, 375,
444, 697): a parent's default ACL replaces the umask and is inherited, setfacl and chmod are
seen by stat at once, the kernel grants and denies by ACL entries, a published file keeps its
ACL, and the setgid rules of a setgid directory with a default ACL.

Each sequence runs on a plain directory and through the mount (`both`) and the results are
compared; the expected native values are asserted too where they are the point."""
import ctypes
import os
import shutil
import stat

import pytest

from util import (CAP_MKNOD, NOBODY, as_actor, as_user, attempt, open_world, read, run,
                  same_on_both, versions, write)

pytestmark = pytest.mark.skipif(
    not shutil.which("setfacl"),
    reason="setfacl/getfacl missing (Debian's acl; scripts/deps --test)")


def setfacl(*args, user=None):
    kw = user.popen_kw() if user else {}
    r = run(["setfacl", *args], **kw)
    assert r.returncode == 0, r.stderr
    return r


def getfacl(path):
    """The ACL of path as text, numeric ids, no header (the name differs between the dirs)."""
    r = run(["getfacl", "-c", "-n", "-P", path])
    assert r.returncode == 0, r.stderr
    return r.stdout


libc = ctypes.CDLL(None, use_errno=True)


def mode(path):
    """The mode as `stat -c %a` and `ls -l` ask for it: statx for STATX_MODE alone, which the
    kernel answers from its cached attributes while they are valid (os.stat asks for the ctime
    too, which a setxattr invalidates: it would not see a stale mode)."""
    buf = ctypes.create_string_buffer(256)
    AT_FDCWD, AT_SYMLINK_NOFOLLOW, STATX_TYPE, STATX_MODE = -100, 0x100, 0x1, 0x2
    if libc.statx(AT_FDCWD, os.fsencode(path), AT_SYMLINK_NOFOLLOW, STATX_TYPE | STATX_MODE,
                  buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return oct(int.from_bytes(buf.raw[28:30], "little") & 0o7777)  # struct statx: stx_mode


def with_umask(mask, fn):
    old = os.umask(mask)
    try:
        return fn()
    finally:
        os.umask(old)


# generic/099, 319, 444: inheritance of a default ACL, and the umask it replaces

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_default_acl_replaces_umask_and_is_inherited(both, umask):
    def seq(p):
        os.mkdir(p("acl"))
        os.mkdir(p("plain"))
        setfacl("-d", "-m", "u::rwx,g::rwx,o::rwx,u:65534:rx,m::rw", p("acl"))
        out = []
        for d in ("acl", "plain"):
            def make():
                os.close(os.open(p(d, "f"), os.O_CREAT | os.O_WRONLY, 0o666))
                os.close(os.open(p(d, "x"), os.O_CREAT | os.O_WRONLY, 0o777))
                os.mkdir(p(d, "sub"), 0o777)
                os.mknod(p(d, "fifo"), stat.S_IFIFO | 0o666)
                os.symlink("f", p(d, "link"))
                os.mkdir(p(d, "sub", "deeper"), 0o755)  # the inherited default goes on
            with_umask(umask, make)
            for n in ("f", "x", "sub", "fifo", "link", "sub/deeper"):
                out.append((d, n, mode(p(d, n)),
                            getfacl(p(d, n)) if n != "link" else None))
        return out

    out = same_on_both(both, seq)
    got = {(d, n): m for d, n, m, _ in out}
    # the default ACL's mask (rw) replaces the umask; without one the umask applies
    assert got[("acl", "f")] == "0o666" and got[("acl", "x")] == "0o767"
    assert got[("acl", "sub")] == "0o767"
    assert got[("plain", "f")] == oct(0o666 & ~umask)
    assert got[("plain", "sub")] == oct(0o777 & ~umask)
    acl_f = [a for d, n, _, a in out if (d, n) == ("acl", "f")][0]
    assert "user:65534:r-x" in acl_f


# generic/375 (the stale mode), and chmod updating the ACL's mask

def test_setfacl_and_chmod_seen_by_stat_at_once(both):
    def seq(p):
        out = []
        os.mkdir(p("d"))
        write(p("data"), "x", 0o644)   # cached by the kernel for a day
        write(p("prog"), "x", 0o755)   # looked up every time
        for n in ("data", "prog", "d"):
            os.stat(p(n))                       # the kernel holds its attributes now
            setfacl("-m", "u:65534:rwx", p(n))  # the mask grows to rwx
            out.append((n, "setfacl", mode(p(n))))
            os.chmod(p(n), 0o640)               # the mask follows the group bits
            out.append((n, "chmod", mode(p(n)), getfacl(p(n))))
            setfacl("-m", "m::---", p(n))
            out.append((n, "mask", mode(p(n))))
            setfacl("-b", p(n))                 # no ACL: the mode stays
            out.append((n, "-b", mode(p(n)), getfacl(p(n))))
            setfacl("-m", "u::r,g::r,o::-", p(n))  # a minimal ACL is a chmod
            out.append((n, "minimal", mode(p(n))))
        return out

    out = same_on_both(both, seq)
    assert ("data", "setfacl", "0o674") in out
    assert ("data", "mask", "0o600") in out


# generic/375: a setfacl by the owner outside the file's group drops setgid, as chmod does

def test_setfacl_by_owner_outside_group_drops_setgid(both, team, workdir):
    open_world(workdir)
    alice = team["alice"]

    def seq(p):
        out = []
        for n, how in (("a", "setfacl"), ("b", "chmod"), ("c", "member")):
            write(p(n), "x")
            os.chown(p(n), alice.uid, 0 if n != "c" else team["gid"])
            os.chmod(p(n), 0o2755)
            if how == "chmod":
                r = run(["chmod", "2775", p(n)], **alice.popen_kw())
            else:
                r = run(["setfacl", "-m", "u::rwx,g::rwx,o::rx", p(n)], **alice.popen_kw())
            out.append((n, r.returncode, mode(p(n))))
        return out

    out = same_on_both(both, seq)
    assert out == [("a", 0, "0o775"), ("b", 0, "0o775"), ("c", 0, "0o2775")]


# the kernel checks ACL entries: real users granted or denied by one

def test_access_granted_and_denied_by_acl_entries(both, team, workdir):
    open_world(workdir)
    alice, mallory, gid = team["alice"], team["mallory"], team["gid"]

    def seq(p):
        os.chmod(p(), 0o755)
        write(p("granted"), "for alice", 0o600)      # root's: only alice by her entry
        setfacl("-m", f"u:{alice.uid}:r", p("granted"))
        write(p("denied"), "for the team", 0o640)    # the team's, but not mallory
        os.chown(p("denied"), 0, gid)
        setfacl("-m", f"u:{mallory.uid}:---", p("denied"))
        os.mkdir(p("dir"), 0o700)                    # only alice may list it
        write(p("dir", "f"), "in dir", 0o644)
        setfacl("-m", f"u:{alice.uid}:rx", p("dir"))
        write(p("shared"), "v1", 0o644)              # alice may write by her entry
        setfacl("-m", f"u:{alice.uid}:rw", p("shared"))

        def tries():
            return [attempt(lambda: read(p("granted"))), attempt(lambda: read(p("denied"))),
                    attempt(lambda: os.listdir(p("dir"))),
                    attempt(lambda: read(p("dir", "f"))),
                    attempt(lambda: write(p("shared"), "v2"))]
        out = {"alice": as_actor(alice, tries), "mallory": as_actor(mallory, tries)}
        out["shared"] = read(p("shared")).decode()
        out["acl"] = getfacl(p("shared"))
        return out

    out = same_on_both(both, seq)
    assert out["alice"] == ["ok", "ok", "ok", "ok", "ok"]
    assert out["mallory"] == ["EACCES"] * 5
    assert out["shared"] == "v2"


# a version keeps its ACL; a published file keeps the file's; nothing is inherited from the store

def test_published_file_keeps_its_acl(mounter, team, workdir):
    open_world(workdir)
    alice = team["alice"]

    def setup(src):
        os.chmod(src, 0o755)
        write(os.path.join(src, "plain"), "p1", 0o644)
        # SOURCE gets a default ACL only now: "plain" has none, and must not get one from a
        # staging directory that inherited it
        setfacl("-d", "-m", "u:65534:rwx", src)

    m = mounter(setup)
    write(m.p("shared"), "v1", 0o644)  # inherits SOURCE's default ACL, as natively
    setfacl("-m", f"u:{alice.uid}:rw", m.p("shared"))
    before = getfacl(m.p("shared"))
    assert f"user:{alice.uid}:rw-" in before
    assert as_actor(alice, lambda: attempt(lambda: write(m.p("shared"), "v2"))) == "ok"
    assert read(m.p("shared")) == b"v2"
    assert getfacl(m.p("shared")) == before           # the new version: the file's ACL
    assert versions(m) == ["shared.~1~"]
    assert getfacl(m.p(".versions", "shared.~1~")) == before  # the old one keeps its own
    plain_acl = getfacl(m.p("plain"))
    write(m.p("plain"), "p2")                          # root writes a file without an ACL
    assert read(m.p("plain")) == b"p2"
    assert getfacl(m.p("plain")) == plain_acl
    assert "user:65534" not in plain_acl
    assert mode(m.p("plain")) == "0o644"


# generic/697: a setgid directory with a default ACL, files made by a user outside its group

def test_setgid_dir_with_default_acl_generic_697(both, team, workdir):
    open_world(workdir)
    alice = team["alice"]

    def make(p, d):
        def fn():
            os.umask(stat.S_IXGRP)
            os.close(os.open(p(d, "file1"), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             stat.S_IXGRP | stat.S_ISGID))
            os.mkdir(p(d, "dir1"), 0)
            os.mknod(p(d, "file2"), stat.S_IFREG | stat.S_ISGID | stat.S_IXGRP)
            os.mknod(p(d, "chr1"), stat.S_IFCHR | stat.S_ISGID | stat.S_IXGRP,
                     os.makedev(5, 1))
        return fn

    def seq(p):
        out = []
        for d, acl in (("mask", "u::rwx,g::rwx,o::rwx,m:rw"), ("nomask", "u::rwx,g::rw,o::rwx")):
            os.mkdir(p(d))
            os.chmod(p(d), 0o2777)              # root's group: nobody is not in it
            setfacl("-d", "-m", acl, p(d))
            out.append((d, as_user(make(p, d), caps=(CAP_MKNOD,))))
            for n in ("file1", "dir1", "file2", "chr1"):
                st = os.lstat(p(d, n))
                out.append((d, n, oct(st.st_mode & 0o7777), st.st_uid, st.st_gid))
        # a member of the directory's group keeps setgid on a new file; the default ACL, not
        # her umask 077, gives the mode
        os.mkdir(p("member"))
        os.chown(p("member"), 0, team["gid"])
        os.chmod(p("member"), 0o2777)
        setfacl("-d", "-m", "u::rwx,g::rwx,o::rwx,m:rw", p("member"))

        def create():
            os.umask(0o077)
            os.close(os.open(p("member", "f"), os.O_CREAT | os.O_WRONLY, 0o2777))
            os.mkdir(p("member", "d"), 0o777)
        assert as_actor(alice, create) is None
        for n in ("f", "d"):
            st = os.lstat(p("member", n))
            out.append(("member", n, oct(st.st_mode & 0o7777), st.st_gid, getfacl(p("member", n))))
        return out

    out = same_on_both(both, seq)
    got = {(o[0], o[1]): o[2] for o in out if len(o) > 2}
    # setgid dropped on files made by a non-member; directories always inherit it
    assert got[("mask", "file1")] == "0o0" and got[("mask", "file2")] == "0o0"
    assert got[("mask", "chr1")] == "0o0"
    assert got[("mask", "dir1")] == "0o2000"
    assert got[("nomask", "file1")] == "0o0"
    assert got[("member", "f")] == "0o2767"
    assert got[("member", "d")] == "0o2767"
    assert all(o[4] == 0 for o in out if len(o) == 5 and o[0] != "member")


# -o noacl: the kernel checks the mode bits only (ACLs stay on SOURCE and are inherited)

def test_noacl_checks_mode_bits_only(mounter, team, workdir):
    open_world(workdir)
    alice = team["alice"]
    m = mounter(opts=("nosync", "noacl"))
    os.chmod(m.p(), 0o755)
    write(m.p("granted"), "for alice", 0o600)
    setfacl("-m", f"u:{alice.uid}:r", m.p("granted"))
    assert f"user:{alice.uid}:r--" in getfacl(m.p("granted"))
    assert as_actor(alice, lambda: attempt(lambda: read(m.p("granted")))) == "EACCES"
    os.mkdir(m.p("d"))
    setfacl("-d", "-m", "u::rwx,g::rwx,o::rwx,m::rw", m.p("d"))
    with_umask(0o077, lambda: write(m.p("d", "f"), "x"))
    assert mode(m.p("d", "f")) == "0o666"  # the default ACL still replaces the umask
