"""O_TMPFILE inside the mount (issue 22: xfstests' O_TMPFILE tests were not run for it): the
atomic-create pattern of installers, `open(dir, O_TMPFILE)`, write, then `linkat` of the fd
(through /proc/self/fd with AT_SYMLINK_FOLLOW, or AT_EMPTY_PATH), gives a new file
that appears whole under its name, the caller's, with the mode asked (umask, default ACL).

Each sequence runs on a plain directory and through the mount (`both`) and the results are
compared; the native values that are the point are asserted too. Run in both passthrough
modes (conftest.OFF_MODULES)."""
import ctypes
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading

import pytest

from util import Actor, as_actor, attempt, open_world, run, same_on_both, versions, wait_for

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
ROOT = Actor("root", 0, 0)


def _check(r, what):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), what)


def link_proc(fd, dst):
    """linkat(AT_FDCWD, "/proc/self/fd/FD", AT_FDCWD, dst, AT_SYMLINK_FOLLOW): what anyone may
    do (os.link would link the /proc symlink itself: EXDEV)."""
    _check(libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, dst.encode(),
                       AT_SYMLINK_FOLLOW), dst)


def link_empty(fd, dst):
    """linkat(fd, "", AT_FDCWD, dst, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH, or (seen on
    Linux 6.18) an fd the caller opened herself."""
    _check(libc.linkat(fd, b"", AT_FDCWD, dst.encode(), AT_EMPTY_PATH), dst)


def tmpfile(d, mode=0o640, flags=0):
    return os.open(d, os.O_TMPFILE | os.O_RDWR | flags, mode)


def meta(path):
    st = os.stat(path)
    return (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, st.st_nlink, st.st_size)


def fmeta(fd):
    st = os.fstat(fd)
    return (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, st.st_nlink, st.st_size,
            stat.S_ISREG(st.st_mode))


def tree(src):
    """Every path below src (the store's directories included) with its size."""
    out = []
    for dirpath, dirs, files in os.walk(src):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out.append((os.path.relpath(p, src), os.lstat(p).st_size))
    return sorted(out)


def daemon_unnamed_fds(m):
    """The daemon's fds of files without a name below SOURCE (an O_TMPFILE reads
    `DIR/#INO (deleted)`)."""
    fd_dir = f"/proc/{m.proc.pid}/fd"
    found = []
    for n in os.listdir(fd_dir):
        try:
            t = os.readlink(os.path.join(fd_dir, n))
        except OSError:
            continue
        if t.startswith(m.src) and t.endswith("(deleted)"):
            found.append(t)
    return found


def publish_sequence(p, user):
    """As `user` in p(): O_TMPFILE, write, fstat, the name not there yet, linkat through
    /proc/self/fd, fstat again, more writes through the fd, close; then AT_EMPTY_PATH, and a
    17-byte name (a LOOKUP as long as the kernel's O_TMPFILE request)."""
    def seq():
        os.umask(0o027)
        out = {}
        fd = tmpfile(p(), 0o664)
        os.write(fd, b"x" * 100000)
        out["fstat_unlinked"] = fmeta(fd)
        out["name_before"] = attempt(lambda: os.stat(p("app")))
        link_proc(fd, p("app"))
        out["fstat_linked"] = fmeta(fd)
        os.write(fd, b"tail")
        os.close(fd)
        with open(p("app"), "rb") as f:
            data = f.read()
        out["content"] = (len(data), data[-8:].decode())
        out["meta"] = meta(p("app"))
        fd = tmpfile(p(), 0o600)
        os.write(fd, b"second")
        out["empty_path"] = attempt(lambda: link_empty(fd, p("app2")))
        os.close(fd)
        out["app2"] = attempt(lambda: open(p("app2")).read())
        long = p("abcdefghijklmnopq")
        out["17_bytes"] = (attempt(lambda: os.stat(long)),
                           attempt(lambda: open(long, "w").close()), attempt(lambda: os.stat(long)))
        out["listing"] = sorted(os.listdir(p()))
        return out
    return as_actor(user, seq)


def test_tmpfile_linked_publishes_a_new_file_as_root(both, mnt):
    r = same_on_both(both, lambda p: publish_sequence(p, ROOT))
    assert r["fstat_unlinked"] == ["0o640", 0, 0, 0, 100000, True]
    assert r["name_before"] == "ENOENT"
    assert r["fstat_linked"] == ["0o640", 0, 0, 1, 100000, True]
    assert r["content"] == [100004, "xxxxtail"]
    assert r["meta"] == ["0o640", 0, 0, 1, 100004]
    assert r["empty_path"] == "ok" and r["app2"] == "ok"
    assert ".versions" not in r["listing"]
    assert versions(mnt) == []  # a new file, nothing replaced


def test_tmpfile_linked_publishes_a_new_file_as_user(both, mnt, workdir, team):
    open_world(workdir)
    for d in both[0], both[1].p():
        os.chmod(d, 0o1777)
    alice = team["alice"]
    r = same_on_both(both, lambda p: publish_sequence(p, alice))
    assert r["fstat_unlinked"] == ["0o640", alice.uid, alice.gid, 0, 100000, True]
    assert r["meta"] == ["0o640", alice.uid, alice.gid, 1, 100004]
    assert r["content"] == [100004, "xxxxtail"]
    # seen natively on 6.18: a user may link her own open file by AT_EMPTY_PATH too
    assert r["empty_path"] == "ok" and r["app2"] == "ok"


@pytest.mark.skipif(not shutil.which("setfacl"), reason="setfacl missing (Debian's acl)")
def test_tmpfile_mode_follows_the_default_acl(both):
    def seq(p):
        os.mkdir(p("d"))
        r = run(["setfacl", "-d", "-m", "u::rw,g::r,o::-,m::rwx", p("d")])
        assert r.returncode == 0, r.stderr

        def make():
            os.umask(0o077)  # a default ACL replaces it
            fd = tmpfile(p("d"), 0o666)
            link_proc(fd, p("d", "f"))
            os.close(fd)
            return meta(p("d", "f"))
        m = as_actor(ROOT, make)
        acl = run(["getfacl", "-c", "-n", "-P", p("d", "f")]).stdout
        return m, acl
    m, acl = same_on_both(both, seq)
    assert m[0] == "0o660", m  # the umask (0o600) replaced by the ACL: its mask is the group's
    assert "group::r--" in acl


def test_link_onto_an_existing_name_fails_and_changes_nothing(both, mnt):
    def seq(p):
        with open(p("app"), "w") as f:
            f.write("old\n")
        before = os.stat(p("app")).st_ino
        fd = tmpfile(p())
        os.write(fd, b"new\n")
        r = (attempt(lambda: link_proc(fd, p("app"))), attempt(lambda: link_empty(fd, p("app"))))
        os.close(fd)
        return r, open(p("app")).read(), os.stat(p("app")).st_ino == before, os.listdir(p())
    r = same_on_both(both, seq)
    assert r[0] == ("EEXIST", "EEXIST") and r[1] == "old\n" and r[2]
    assert versions(mnt) == []


def test_excl_tmpfile_cannot_be_linked(both):
    def seq(p):
        fd = tmpfile(p(), flags=os.O_EXCL)
        os.write(fd, b"data")
        r = (fmeta(fd), attempt(lambda: link_proc(fd, p("a"))),
             attempt(lambda: link_empty(fd, p("b"))))
        os.close(fd)
        return r, sorted(os.listdir(p()))
    r = same_on_both(both, seq)
    assert r[0][0][3] == 0
    assert r[0][1:] == ("ENOENT", "ENOENT")


def test_unlinked_tmpfile_closed_leaves_nothing(mnt):
    before = tree(mnt.src)
    fd = tmpfile(mnt.p())
    os.write(fd, os.urandom(1 << 20))
    assert os.fstat(fd).st_nlink == 0
    # the one difference (semantics.md item 20): ext4 reads DIR/#INO (deleted)
    assert os.readlink(f"/proc/self/fd/{fd}") == mnt.p() + "// (deleted)"
    assert daemon_unnamed_fds(mnt)  # the daemon holds it while it is open
    os.close(fd)
    wait_for(lambda: not daemon_unnamed_fds(mnt), 10, "the daemon lets go of the tmpfile")
    assert tree(mnt.src) == before
    assert versions(mnt) == []
    # and a tmpfile in .versions/ is refused like any create there
    assert attempt(lambda: os.close(tmpfile(mnt.p(".versions")))) == "EROFS"


def test_writer_killed_while_writing_a_tmpfile_leaves_nothing(mnt, procs):
    before = tree(mnt.src)
    code = ("import os, sys, time\n"
            f"fd = os.open({mnt.p()!r}, os.O_TMPFILE | os.O_RDWR, 0o644)\n"
            "os.write(fd, b'x' * (1 << 20)); print('ready', flush=True)\n"
            "while True: os.write(fd, b'y' * 4096); time.sleep(0.01)\n")
    p = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    assert daemon_unnamed_fds(mnt)
    p.send_signal(signal.SIGKILL)
    p.wait()
    wait_for(lambda: not daemon_unnamed_fds(mnt), 10, "the daemon lets go of the tmpfile")
    assert tree(mnt.src) == before
    assert versions(mnt) == []


def test_readers_see_the_linked_file_whole(mnt):
    """A reader polling the name sees nothing, then all of it: never a part."""
    size = 8 << 20
    seen = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with open(mnt.p("big"), "rb") as f:
                    seen.append(len(f.read()))
                    return
            except FileNotFoundError:
                pass

    t = threading.Thread(target=reader)
    t.start()
    try:
        fd = tmpfile(mnt.p(), 0o644)
        for _ in range(size // 65536):
            os.write(fd, b"z" * 65536)
        link_proc(fd, mnt.p("big"))
        os.close(fd)
        t.join(10)
    finally:
        stop.set()
        t.join()
    assert seen == [size]


def test_tmpfile_in_a_setgid_directory(both, workdir, team):
    """vfstest's O_TMPFILE cases (xfstests generic/696, 697): in a setgid directory of a group
    the caller is not in, the file gets the directory's group and loses the setgid bit it
    asked for."""
    open_world(workdir)
    alice = team["alice"]

    def seq(p):
        os.mkdir(p("sg"))
        os.chown(p("sg"), 0, 0)
        os.chmod(p("sg"), 0o2777)

        def make():
            os.umask(0)
            fd = tmpfile(p("sg"), 0o2755)
            before = fmeta(fd)
            link_proc(fd, p("sg", "f"))
            os.close(fd)
            return before, meta(p("sg", "f"))
        return as_actor(alice, make)
    r = same_on_both(both, seq)
    assert r[0] == ["0o755", alice.uid, 0, 0, 0, True]


def test_tmpfile_where_libfuse_could_splice_requests(mounter):
    """libfuse 3.14 receives requests by splice whenever its pipe can grow to a request's size:
    with CAP_SYS_RESOURCE (a root service; CI's runner has it) or a large fs.pipe-max-size. A
    spliced request bypasses the bridge's read hook, and O_TMPFILE (relabelled there) then
    failed with EOPNOTSUPP. binvfs asks for no spliced requests: O_TMPFILE, a WRITE of 1 MiB
    and a publish work with a pipe-max-size of 16 MiB."""
    knob = "/proc/sys/fs/pipe-max-size"
    old = open(knob).read().strip()
    with open(knob, "w") as f:
        f.write(str(16 << 20))
    try:
        m = mounter()
        fd = tmpfile(m.p())
        try:
            os.write(fd, b"x" * (1 << 20))
            link_proc(fd, m.p("t"))
        finally:
            os.close(fd)
        assert os.path.getsize(m.p("t")) == 1 << 20
        with open(m.p("t"), "r+b") as f:
            f.write(b"y" * (1 << 20))
        assert open(m.p("t"), "rb").read() == b"y" * (1 << 20)
    finally:
        with open(knob, "w") as f:
            f.write(old)
