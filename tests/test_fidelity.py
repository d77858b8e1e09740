"""What a program can observe inside the mount is what it observes in a plain directory, apart
from the promises (docs/semantics.md): link counts, inode numbers a writer sees, O_DIRECT,
editors' save patterns, renameat2(RENAME_WHITEOUT), chown(-1, -1).

Most tests run one sequence on a plain directory and through the mount and compare."""
import ctypes
import os
import pty
import select
import shutil
import stat
import time

import pytest

from util import (CAP_MKNOD, Mount, NOBODY, as_user, on_both, outcome, read, run, same_on_both,
                  versions, write)

libc = ctypes.CDLL(None, use_errno=True)


def nlink(path):
    return os.lstat(path).st_nlink


def nlink_asked(fd):
    """st_nlink of fd, asked of binvfs now (statx AT_STATX_FORCE_SYNC), not the kernel's copy."""
    buf = ctypes.create_string_buffer(256)
    AT_EMPTY_PATH, AT_STATX_FORCE_SYNC, STATX_NLINK = 0x1000, 0x2000, 0x4
    if libc.statx(fd, b"", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_NLINK, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int.from_bytes(buf.raw[16:20], "little")  # struct statx: stx_nlink


# ---------------------------------------------------------------------------------------------
# st_nlink: the names a file has in the tree, not its versions

def test_link_counts_as_natively(both):
    def seq(p):
        out = []
        write(p("a"), "A")
        os.link(p("a"), p("b"))
        out.append((nlink(p("a")), nlink(p("b"))))
        os.unlink(p("a"))                          # ln a b; rm a
        out.append(nlink(p("b")))
        write(p("c"), "C")
        write(p("d"), "D")
        os.link(p("d"), p("d2"))
        os.rename(p("c"), p("d"))                  # rename over a file with a second link
        out.append((nlink(p("d")), nlink(p("d2"))))
        os.link(p("d2"), p("d3"))
        os.rename(p("d3"), p("d2"))                # rename onto another link of itself
        out.append(nlink(p("d2")))
        fd = os.open(p("e"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"e")
        os.close(fd)
        fd = os.open(p("e"), os.O_RDONLY)
        os.unlink(p("e"))                          # removed while open
        out.append(os.fstat(fd).st_nlink)
        os.close(fd)
        fd = os.open(p("b"), os.O_RDONLY)
        write(p("f"), "F")
        os.rename(p("f"), p("b"))                  # replaced by a rename while open
        out.append(os.fstat(fd).st_nlink)
        os.close(fd)
        fd = os.open(p("new"), os.O_CREAT | os.O_RDWR, 0o644)
        out.append(os.fstat(fd).st_nlink)
        os.link(p("new"), p("new2"))
        out.append(os.fstat(fd).st_nlink)
        os.unlink(p("new"))
        os.unlink(p("new2"))
        out.append(os.fstat(fd).st_nlink)
        os.close(fd)
        for n in range(3):                          # many links, removed one by one
            os.link(p("d2"), p(f"l{n}"))
        out.append(nlink(p("d2")))
        for n in range(3):
            os.unlink(p(f"l{n}"))
            out.append(nlink(p("d2")))
        os.mkdir(p("dir"))
        os.mkdir(p("dir", "sub"))
        out.append((nlink(p("dir")), nlink(p())))  # the root: .versions/ is not counted
        os.rmdir(p("dir", "sub"))
        out.append((nlink(p("dir")), nlink(p())))
        return out
    n = same_on_both(both, seq)
    assert n[1] == 1 and n[4] == 0  # what the issue saw wrong: 3 and 1


def test_a_writer_sees_the_inode_it_opened(both):
    """stat before the open and fstat of the write fd agree on st_ino and st_nlink (vim's E949
    test); the new version's number shows at the name once it is published."""
    def seq(p):
        write(p("f"), "old\n")
        os.link(p("f"), p("g"))
        before = os.stat(p("f"))
        fd = os.open(p("f"), os.O_WRONLY)
        st = os.fstat(fd)
        os.write(fd, b"new\n")
        st2 = os.fstat(fd)
        out = [st.st_ino == before.st_ino, st2.st_ino == before.st_ino, st.st_nlink,
               st2.st_size]
        os.close(fd)
        write(p("h"), "h\n")
        before = os.stat(p("h"))
        fd = os.open(p("h"), os.O_RDWR | os.O_TRUNC)
        st = os.fstat(fd)
        out += [st.st_ino == before.st_ino, st.st_size, st.st_nlink]
        os.close(fd)
        return out
    same_on_both(both, seq)


def test_link_counts_of_versions(mnt):
    """What binvfs adds: a version is a link of the inode it kept, but counts as no name. An old
    version shows 0, like a removed file that is still open; one that shares its inode with a
    tree name shows that name's count. A reader of a version replaced by a write goes on seeing
    1, as after an in-place write, until the version is looked up in .versions/."""
    p = mnt.p
    write(p("a"), "1")
    with open(p("a"), "rb") as f:
        assert nlink_asked(f.fileno()) == 1
        write(p("a"), "2")                            # publish: the reader's inode is a version
        assert nlink_asked(f.fileno()) == 1
        assert nlink(p(".versions", "a.~1~")) == 0
        assert os.fstat(f.fileno()).st_nlink == 0     # the same kernel inode
        assert nlink_asked(f.fileno()) == 0
    write(p("r"), "r")
    with open(p("r"), "rb") as f:
        os.unlink(p("r"))
        assert nlink_asked(f.fileno()) == 0           # removed, not replaced
    assert nlink(p("a")) == 1
    assert nlink(p(".versions", "a.~1~")) == 0
    write(p("h"), "h1")
    os.link(p("h"), p("h2"))
    with open(p("h2"), "rb") as f:                    # the kernel holds h2's attributes
        assert os.fstat(f.fileno()).st_nlink == 2
        write(p("h"), "h2")                           # a write through one link of two
        assert os.fstat(f.fileno()).st_nlink == 1     # natively 2: here h got a new inode
    assert (nlink(p("h")), nlink(p("h2"))) == (1, 1)
    assert nlink(p(".versions", "h.~1~")) == 1        # the inode of h2
    assert os.lstat(p(".versions", "h.~1~")).st_ino == os.lstat(p("h2")).st_ino
    os.unlink(p("h2"))
    assert nlink(p(".versions", "h.~1~")) == 0
    assert os.lstat(p(".versions")).st_nlink == 2     # .binvfs-staging/ is not counted


def test_link_counts_after_remount(binary, workdir):
    """Versions kept by an earlier session are counted too (the index reads each versions
    directory's inode numbers), also by the first stats after the mount, while the versions
    directory that holds them is still being read (100k entries)."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    p = m.p
    try:
        os.mkdir(p("sub"))
        write(p("sub", "a"), "A")
        os.link(p("sub", "a"), p("sub", "b"))
        os.unlink(p("sub", "a"))             # b shares its inode with .versions/sub/a.~1~
        write(p("sub", "c"), "C")
        os.link(p("sub", "c"), p("sub", "d"))  # two tree names, no version
        write(p("sub", "s"), "S")
        os.link(p("sub", "s"), p("sub", "t"))
        write(p("sub", "s"), "S2")
        os.unlink(p("sub", "t"))             # s.~1~ and t.~1~: one inode, no tree name
        write(p("sub", "s"), "S3")
    finally:
        m.stop()
    for k in range(100000):  # hard links: quick to make
        if k % 60000 == 0:   # ext4 allows 65000 links to an inode
            first = os.path.join(src, ".versions", f"x{k}.~1~")
            write(first, "x")
        os.link(first, os.path.join(src, ".versions", "sub", f"x.~{k + 1}~"))
    m = Mount(binary, src).start()
    try:
        # a version with one link (s.~2~), one with two (s.~1~, t.~1~), then tree files with
        # two links, each stat'ed before or while .versions/sub/ is read
        assert [nlink(p(".versions", "sub", n)) for n in ("s.~2~", "s.~1~", "t.~1~")] == \
            [0, 0, 0]
        assert [nlink(p("sub", n)) for n in ("b", "c", "d", "s")] == [1, 2, 2, 1]
        assert nlink(p(".versions", "sub", "a.~1~")) == 1
        os.unlink(p("sub", "b"))
        assert nlink(p(".versions", "sub", "a.~1~")) == 0
    finally:
        m.stop()


# ---------------------------------------------------------------------------------------------
# O_DIRECT (a random-offset run is test_fsx.py's test_fsx_o_direct)

def test_dd_o_direct(both, workdir):
    data = os.path.join(workdir, "data")
    write(data, os.urandom(64 * 4096))

    def seq(p):
        out = []
        for args in (["of=" + p("new"), "oflag=direct", "bs=16k", "count=8"],
                     ["of=" + p("new"), "oflag=direct", "bs=4k", "seek=40", "skip=3",
                      "count=5", "conv=notrunc"],
                     ["of=" + p("new"), "oflag=direct,sync", "bs=64k", "count=2"]):
            r = run(["dd", "if=" + data, *args])
            out.append((r.returncode, r.stderr.splitlines()[:2], read(p("new"))))
        r = run(["dd", "if=" + p("new"), "of=" + p("copy"), "iflag=direct", "oflag=direct",
                 "bs=8k"])
        out.append((r.returncode, read(p("copy"))))
        return out
    n = same_on_both(both, seq)
    assert all(o[0] == 0 for o in n)


# ---------------------------------------------------------------------------------------------
# editors and in-place tools

VIM_CASES = {
    "backupcopy=yes": ["set backupcopy=yes"],
    "nowritebackup": ["set nowritebackup"],
    "default under /tmp (backupskip)": [],
    "backupskip empty (backup by rename)": ["set backupskip="],
    "hard link": [],
}


@pytest.mark.parametrize("case", list(VIM_CASES))
def test_vim_saves(both, case):
    """Debian's vim, scripted: two saves in one session (the second after a sleep, so its
    timestamp check is exercised), a third save that changes nothing, then :wq."""
    if not shutil.which("vim.basic"):
        pytest.skip("vim is not installed (scripts/deps --test installs it)")
    cmds = []
    for c in VIM_CASES[case] + ["normal Goone", "w", "sleep 20m", "normal Gotwo", "w", "w",
                                "normal Gothree", "wq"]:
        cmds += ["-c", c]

    def seq(p):
        f = p("t.txt")
        write(f, "line 1\n")
        os.chmod(f, 0o640)
        if case == "hard link":
            os.link(f, p("t2.txt"))
        # -es: no vimrc, Debian's defaults (backupskip has /tmp/*, and the test dirs are there)
        r = run(["vim.basic", "-es", "-N", *cmds, f])
        return (r.returncode, r.stdout, r.stderr, read(f), oct(os.stat(f).st_mode),
                sorted(n for n in os.listdir(p()) if n != ".versions"))
    n = same_on_both(both, seq)
    assert n[0] == 0 and n[3] == b"line 1\none\ntwo\nthree\n", n
    mnt = both[1]
    # in place: one version for each of the three saves that changed something; by rename:
    # vim removes its backup t.txt~ after each of the four writes, and rm keeps it
    rename = "rename" in case
    kept = [v for v in versions(mnt) if v.startswith("t.txt~.~" if rename else "t.txt.~")]
    assert len(kept) == (4 if rename else 3), versions(mnt)
    if case == "hard link":
        # natively both names show the new text; here t2.txt keeps the inode vim opened
        assert read(os.path.join(both[0], "t2.txt")) == n[3]
        assert read(mnt.p("t2.txt")) == b"line 1\n"


def nano_append(path, text):
    """nano in a pseudo-terminal: go to the end, type text, ^O Enter, ^X."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execvp("nano", ["nano", "--ignorercfiles", path])

    def drain(seconds):
        end, out = time.monotonic() + seconds, b""
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break
        return out
    try:
        drain(0.5)
        for keys, wait in ((b"\x1b/", 0.1), (text.encode(), 0.2), (b"\x0f", 0.3),
                           (b"\r", 0.5), (b"\x18", 0.5)):
            os.write(fd, keys)
            out = drain(wait)
        for _ in range(100):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), out
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "hung", out
    finally:
        os.close(fd)


def test_nano_save(both):
    if not shutil.which("nano"):
        pytest.skip("nano is not installed (scripts/deps --test installs it)")

    def seq(p):
        f = p("n.txt")
        write(f, "one\n")
        rc, _ = nano_append(f, "two\n")
        return rc, read(f), oct(os.stat(f).st_mode), sorted(os.listdir(p()))
    n, m = on_both(both, seq)
    m = (m[0], m[1], m[2], [x for x in m[3] if x != ".versions"])
    assert n == m
    assert n[0] == 0 and b"two" in n[1], n
    assert versions(both[1]) == ["n.txt.~1~"]


@pytest.mark.parametrize("tool", [["sed", "-i", "s/b/B/"], ["perl", "-pi", "-e", "s/b/B/"],
                                  ["sed", "-i", "--follow-symlinks", "s/b/B/"]])
def test_in_place_editing_tools(both, tool):
    """sed -i and perl -i write a new file and rename it over the old one."""
    def seq(p):
        write(p("f"), "a\nb\n", 0o751)
        os.link(p("f"), p("g"))
        os.symlink("f", p("link"))
        r = run(tool + [p("f" if "--follow-symlinks" not in tool else "link")])
        st = os.stat(p("f"))
        return (r.returncode, r.stderr, read(p("f")), read(p("g")), oct(st.st_mode),
                st.st_nlink, nlink(p("g")), os.path.islink(p("link")))
    n = same_on_both(both, seq)
    assert n[2] == b"a\nB\n" and n[3] == b"a\nb\n" and n[5:7] == (1, 1), n
    assert versions(both[1]) == ["f.~1~"]


# ---------------------------------------------------------------------------------------------
# smaller differences

RENAME_WHITEOUT = 4


def renameat2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_rename_whiteout(both, workdir):
    os.chmod(workdir, 0o755)  # nobody walks to both trees

    def seq(p):
        write(p("a"), "A")
        write(p("b"), "B")
        write(p("c"), "C")
        os.mkdir(p("d"))
        os.mkdir(p("sg"))
        os.chown(p("sg"), 0, 65534)
        os.chmod(p("sg"), 0o2777)
        write(p("sg", "x"), "X")
        out = [outcome(renameat2, p("a"), p("new"), RENAME_WHITEOUT),
               outcome(renameat2, p("b"), p("c"), RENAME_WHITEOUT),       # over a file
               outcome(renameat2, p("d"), p("d2"), RENAME_WHITEOUT),      # a directory
               outcome(renameat2, p("new"), p("c"), RENAME_WHITEOUT | 1),  # and NOREPLACE
               outcome(renameat2, p("sg", "x"), p("sg", "y"), RENAME_WHITEOUT)]
        for name in ("a", "b", "d", "new", "c", "sg/x"):
            st = os.lstat(p(name))
            out.append((name, stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)),
                        st.st_rdev, st.st_uid, st.st_gid))
        out.append((read(p("new")), read(p("c"))))
        os.mkdir(p("w"))
        os.chmod(p("w"), 0o777)
        write(p("w", "n"), "N")
        os.chown(p("w", "n"), NOBODY, NOBODY)
        # by nobody holding CAP_MKNOD, which the kernel asks of a whiteout
        out.append(as_user(lambda: renameat2(p("w", "n"), p("w", "n2"), RENAME_WHITEOUT),
                           caps=[CAP_MKNOD]))
        st = os.lstat(p("w", "n"))                 # the whiteout belongs to its maker
        out.append((stat.S_IFMT(st.st_mode), st.st_rdev, st.st_uid, st.st_gid))
        os.unlink(p("a"))
        out.append(sorted(x for x in os.listdir(p()) if x != ".versions"))
        return out
    n = same_on_both(both, seq)
    assert n[0] == ("ok", None) and stat.S_ISCHR(n[5][1]), n
    assert n[-3:-1] == [0, (stat.S_IFCHR, 0, NOBODY, NOBODY)], n
    assert versions(both[1]) == ["c.~1~"]  # the file the whiteout rename replaced


def test_chown_to_minus_one_and_rename_change_ctime(both):
    """As ext4 does (POSIX allows either); pjdfstest's rename/22.t runs on ext4 only."""
    def seq(p):
        out = []
        for name, make in (("f", lambda at: write(at, "x")), ("d", os.mkdir),
                           ("l", lambda at: os.symlink("f", at)), ("p", os.mkfifo)):
            path = p(name)
            make(path)
            before = os.lstat(path).st_ctime_ns
            time.sleep(0.01)
            os.chown(path, -1, -1, follow_symlinks=False)
            after = os.lstat(path).st_ctime_ns
            time.sleep(0.01)
            os.rename(path, path + "2")
            out.append((name, after > before, os.lstat(path + "2").st_ctime_ns > after))
        return out
    n = same_on_both(both, seq)
    assert all(chown and rename for _, chown, rename in n), n
