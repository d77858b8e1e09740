"""Everything but content replacement behaves as natively, and the command line fails cleanly.

Most tests run the same sequence on a plain directory and through the mount and compare what
came out (results and errnos, never inode numbers or times)."""
import ctypes
import errno
import mmap
import os
import shutil
import stat
import subprocess

import pytest

from conftest import program
from util import (Mount, NOBODY, as_user, is_mounted, mountinfo, on_both, outcome, read, run,
                  same_on_both, versions, write)

libc = ctypes.CDLL(None, use_errno=True)


def tree(root):
    """Names, types, modes and sizes below root (not .versions at the mount root)."""
    out = []
    for d, dirs, files in os.walk(root):
        if d == root and ".versions" in dirs:
            dirs.remove(".versions")
        rel = os.path.relpath(d, root)
        for n in sorted(dirs + files):
            st = os.lstat(os.path.join(d, n))
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            out.append((os.path.join(rel, n), stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                        size))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# readdir

READDIR_C = r"""
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* List a directory recording telldir() after each entry, then seekdir() back to several of
 * those offsets and check that the rest of the listing is the same; print the names. */
int main(int argc, char **argv) {
  DIR *d = opendir(argv[1]);
  static long pos[100000]; static char *names[100000];
  struct dirent *e; int n = 0;
  if (!d) { perror("opendir"); return 2; }
  pos[0] = telldir(d);
  while ((e = readdir(d))) { names[n++] = strdup(e->d_name); pos[n] = telldir(d); }
  int ks[] = {0, 1, 2, 3, n / 7, n / 3, n / 2, n - 100, n - 3, n - 1, n};
  for (unsigned j = 0; j < sizeof(ks) / sizeof(ks[0]); j++) {
    int k = ks[j], i = k;
    if (k < 0 || k > n) continue;
    seekdir(d, pos[k]);
    while ((e = readdir(d))) {
      if (i >= n || strcmp(e->d_name, names[i])) { printf("MISMATCH at seek %d, entry %d\n", k, i); return 1; }
      i++;
    }
    if (i != n) { printf("SHORT at seek %d: %d of %d\n", k, i, n); return 1; }
  }
  rewinddir(d);
  int again = 0;
  while ((e = readdir(d))) again++;
  if (again != n) { printf("REWIND %d of %d\n", again, n); return 1; }
  for (int i = 0; i < n; i++) printf("%s\n", names[i]);
  return 0;
}
"""


def test_readdir_2000_files_with_offsets(both, cbuild):
    lister = cbuild("readdir_offsets", READDIR_C)

    def fill(p):
        os.mkdir(p("big"))
        for i in range(2000):
            name = f"file-{i:04d}-" + "x" * (i % 60)
            write(p("big", name), str(i))
        os.mkdir(p("big", "subdir"))
        os.symlink("file-0000-", p("big", "link"))
        return None

    on_both(both, fill)
    big_nat, big_mnt = (os.path.join(r, "big") for r in (both[0], both[1].p()))

    ln, lm = os.listdir(big_nat), os.listdir(big_mnt)
    assert len(lm) == 2002
    assert sorted(ln) == sorted(lm)
    assert len(set(lm)) == len(lm)  # no entry twice

    def kinds(root):
        return sorted((e.name, e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False),
                       e.is_symlink()) for e in os.scandir(root))
    assert kinds(big_nat) == kinds(big_mnt)

    # d_ino from readdir agrees with stat
    for e in list(os.scandir(big_mnt))[:50]:
        assert e.inode() == os.lstat(e.path).st_ino, e.name

    for d in (big_nat, big_mnt):
        r = run([lister, d])
        assert r.returncode == 0, (d, r.stdout[-300:], r.stderr)
    names = lambda d: sorted(run([lister, d]).stdout.split("\n")[:-1])  # noqa: E731
    assert names(big_nat) == names(big_mnt)
    assert names(big_mnt) == sorted(lm + [".", ".."])
    assert run(["ls", big_mnt]).stdout == run(["ls", big_nat]).stdout
    assert run(["sh", "-c", f"ls -f '{big_mnt}' | wc -l"]).stdout.strip() == "2004"


def test_readdir_sees_changes(both):
    def seq(p):
        os.mkdir(p("d"))
        d = p("d")
        out = [sorted(os.listdir(d))]
        write(os.path.join(d, "a"), "a")
        write(os.path.join(d, "b"), "b")
        out.append(sorted(os.listdir(d)))
        os.unlink(os.path.join(d, "a"))
        os.rename(os.path.join(d, "b"), os.path.join(d, "c"))
        out.append(sorted(os.listdir(d)))
        write(os.path.join(d, "c"), "changed")  # a new version: still one entry
        out.append(sorted(os.listdir(d)))
        return out
    assert same_on_both(both, seq) == [[], ["a", "b"], ["c"], ["c"]]


# ---------------------------------------------------------------------------------------------
# create, mkdir, rmdir, unlink, rename, mknod: results and errnos

def test_namespace_operations_and_errors(both):
    def seq(p):
        out = []
        out.append(outcome(os.mkdir, p("d"), 0o777))
        out.append(outcome(os.mkdir, p("d")))
        out.append(outcome(os.makedirs, p("d", "e", "f")))
        write(p("d", "file"), "x")
        out.append(outcome(os.rmdir, p("d")))
        out.append(outcome(os.rmdir, p("d", "file")))
        out.append(outcome(os.unlink, p("d", "e")))
        out.append(outcome(os.unlink, p("missing")))
        out.append(outcome(os.rmdir, p("missing")))
        out.append(outcome(os.open, p("d", "file"), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        out.append(outcome(os.open, p("missing"), os.O_RDONLY))
        out.append(outcome(os.open, p("d", "file", "x"), os.O_RDONLY))
        out.append(outcome(os.open, p("d"), os.O_WRONLY))
        out.append(outcome(os.rename, p("d", "file"), p("d", "e")))       # file over dir
        out.append(outcome(os.rename, p("d", "e"), p("d", "file")))       # dir over file
        out.append(outcome(os.rename, p("d", "e"), p("d", "e", "f", "g")))  # into itself
        os.mkdir(p("full"))
        write(p("full", "x"), "x")
        out.append(outcome(os.rename, p("d", "e"), p("full")))             # over non-empty
        os.mkdir(p("empty"))
        out.append(outcome(os.rename, p("d", "e"), p("empty")))            # over empty dir
        out.append(outcome(os.rename, p("empty", "f"), p("d", "f2")))
        out.append(outcome(os.rename, p("d", "file"), p("d", "file")))     # onto itself
        out.append(outcome(os.mkfifo, p("fifo")))
        out.append(stat.S_ISFIFO(os.lstat(p("fifo")).st_mode))
        out.append(outcome(os.mknod, p("sock"), 0o600 | stat.S_IFSOCK))
        out.append(outcome(os.rmdir, p("empty", "f", "..")))
        fd = os.open(p("created"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777)
        os.close(fd)
        out.append(oct(os.stat(p("created")).st_mode))
        fd = os.open(p("created600"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        out.append(oct(os.stat(p("created600")).st_mode))
        out.append(oct(os.stat(p("d")).st_mode))
        out.append(outcome(os.rmdir, p("full", "x")))
        out.append(tree(p()))
        return out
    same_on_both(both, seq)


def test_renameat2_noreplace_and_exchange(both):
    AT_FDCWD, RENAME_NOREPLACE, RENAME_EXCHANGE = -100, 1, 2

    def renameat2(a, b, flags):
        if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def seq(p):
        write(p("a"), "A")
        write(p("b"), "B")
        os.mkdir(p("dir"))
        out = [outcome(renameat2, p("a"), p("b"), RENAME_NOREPLACE),
               outcome(renameat2, p("a"), p("c"), RENAME_NOREPLACE),
               outcome(renameat2, p("c"), p("b"), RENAME_EXCHANGE),
               outcome(renameat2, p("c"), p("missing"), RENAME_EXCHANGE),
               outcome(renameat2, p("b"), p("dir"), RENAME_EXCHANGE)]
        out.append({n: (read(p(n)) if os.path.isfile(p(n)) else "dir")
                    for n in sorted(os.listdir(p())) if n != ".versions"})
        return out
    same_on_both(both, seq)


# ---------------------------------------------------------------------------------------------
# symlinks and hard links

def test_symlink_and_readlink(both):
    def seq(p):
        os.mkdir(p("dir"))
        write(p("dir", "target"), "content")
        os.symlink("dir/target", p("rel"))
        os.symlink("dir", p("dirlink"))
        os.symlink("nowhere", p("dangling"))
        os.symlink("x" * 1000, p("long"))
        out = [os.readlink(p("rel")), os.readlink(p("dangling")), os.readlink(p("long")),
               stat.S_ISLNK(os.lstat(p("rel")).st_mode), os.lstat(p("rel")).st_size,
               read(p("rel")), sorted(os.listdir(p("dirlink"))), read(p("dirlink", "target")),
               outcome(os.readlink, p("dir", "target")),
               outcome(os.symlink, "x", p("rel")),
               outcome(open, p("dangling")),
               outcome(os.stat, p("dangling")),
               os.path.realpath(p("rel")) == os.path.join(os.path.realpath(p()), "dir",
                                                          "target"),
               oct(stat.S_IMODE(os.lstat(p("rel")).st_mode))]
        # writing through a symlink writes its target; removing a symlink removes the link
        write(p("rel"), "new content")
        out.append(read(p("dir", "target")))
        out.append(stat.S_ISLNK(os.lstat(p("rel")).st_mode))
        os.unlink(p("dangling"))
        out.append(outcome(os.lstat, p("dangling")))
        os.rename(p("rel"), p("rel2"))
        out.append(os.readlink(p("rel2")))
        return out
    same_on_both(both, seq)
    mnt = both[1]
    # the write through the link made a version of the target, not of the link
    assert versions(mnt) == ["dir"]
    assert versions(mnt, "dir") == ["target.~1~"]
    r = run(["readlink", mnt.p("rel2")])
    assert r.stdout == "dir/target\n"


def test_absolute_symlink_into_mount(mnt, workdir):
    write(mnt.p("f"), "f\n")
    os.symlink(mnt.p("f"), mnt.p("abs"))
    assert os.readlink(mnt.p("abs")) == mnt.p("f")
    assert read(mnt.p("abs")) == b"f\n"
    os.symlink(mnt.p("f"), os.path.join(workdir, "outside"))
    assert read(os.path.join(workdir, "outside")) == b"f\n"


def test_hard_links(both):
    def seq(p):
        write(p("a"), "A")
        os.link(p("a"), p("b"))
        r = run(["ln", p("a"), p("c")])
        sa, sb, sc = os.stat(p("a")), os.stat(p("b")), os.stat(p("c"))
        out = [r.returncode, sa.st_nlink, sb.st_nlink, sc.st_nlink,
               sa.st_ino == sb.st_ino == sc.st_ino, read(p("b")),
               outcome(os.link, p("a"), p("b")),
               outcome(os.link, p("missing"), p("d"))]
        os.mkdir(p("dir"))
        out.append(outcome(os.link, p("dir"), p("dirlink")))
        out.append(os.stat(p("dir")).st_nlink)
        os.mkdir(p("dir", "sub"))
        out.append(os.stat(p("dir")).st_nlink)
        os.rename(p("c"), p("dir", "c"))
        out.append(os.stat(p("a")).st_nlink)
        return out
    same_on_both(both, seq)


# ---------------------------------------------------------------------------------------------
# metadata: in place, no version

def test_chmod_chown_utime_apply_in_place_and_make_no_version(both, procs, cbuild):
    nat, mnt = both
    shutil.copy(program(cbuild, 1), mnt.p("app"))
    runner = procs.start([mnt.p("app"), "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"

    def seq(p):
        if not os.path.exists(p("app")):
            shutil.copy(program(cbuild, 1), p("app"))
        write(p("data"), "data\n")
        os.mkdir(p("dir"))
        out = []
        for name in ("app", "data", "dir"):
            ino = os.stat(p(name)).st_ino
            os.chmod(p(name), 0o640)
            os.chown(p(name), 1234, 5678)
            os.utime(p(name), ns=(1_500_000_000_000_000_001, 1_600_000_000_000_000_002))
            st = os.stat(p(name))
            out.append((name, oct(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns,
                        st.st_mtime_ns, st.st_ino == ino))
            assert run(["chmod", "u+x,g-w", p(name)]).returncode == 0
            assert run(["chown", "42:43", p(name)]).returncode == 0
            st = os.stat(p(name))
            out.append((name, oct(st.st_mode), st.st_uid, st.st_gid, st.st_ino == ino))
        # through an open (read-only) fd too
        fd = os.open(p("data"), os.O_RDONLY)
        os.fchmod(fd, 0o604)
        os.fchown(fd, 7, 8)
        os.utime(fd, ns=(5, 6))
        os.close(fd)
        st = os.stat(p("data"))
        out.append((oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns))
        # setuid bits: a chown clears them, as natively
        os.chmod(p("data"), 0o6755)
        os.chown(p("data"), 9, 9)
        out.append(oct(os.stat(p("data")).st_mode))
        out.append(read(p("data")))
        return out
    same_on_both(both, seq)
    assert versions(mnt) == []
    # the running program was not replaced by any of it
    assert os.readlink(f"/proc/{runner.pid}/exe") == mnt.p("app")
    assert os.stat(f"/proc/{runner.pid}/exe").st_ino == os.stat(mnt.p("app")).st_ino


def test_touch_and_metadata_through_a_write_fd(both):
    """`touch` opens the file O_WRONLY and sets the times with futimens(fd): the times (and
    anything else set through a write fd without writing data) change the file in place."""
    def seq(p):
        out = []
        for name, mode in (("data", 0o644), ("exe", 0o755)):
            write(p(name), name, mode)
            os.utime(p(name), ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
            r = run(["touch", "-d", "2001-02-03 04:05:06 UTC", p(name)])
            out.append((name, r.returncode, os.stat(p(name)).st_mtime))
            os.utime(p(name), ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
            assert run(["touch", p(name)]).returncode == 0
            out.append((name, "touched", os.stat(p(name)).st_mtime_ns > 1_000_000_000 * 10**9))
            fd = os.open(p(name), os.O_WRONLY)
            os.utime(fd, ns=(7_000_000_000, 8_000_000_000))
            os.fchmod(fd, 0o600)
            os.setxattr(fd, "user.viafd", b"1")
            os.close(fd)
            st = os.stat(p(name))
            out.append((name, st.st_mtime_ns, oct(st.st_mode),
                        outcome(os.getxattr, p(name), "user.viafd"), read(p(name))))
        return out
    same_on_both(both, seq)
    assert versions(both[1]) == []


def test_touch_of_a_running_binary_is_not_a_replacement(mnt, procs, cbuild):
    """Metadata changes apply in place: the running process is not running a replaced
    version afterwards, so /proc/PID/exe must not say "(deleted)"."""
    app = mnt.p("app")
    shutil.copy(program(cbuild, 1), app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    ino = os.stat(app).st_ino
    assert run(["touch", app]).returncode == 0
    assert versions(mnt) == []
    assert os.stat(app).st_ino == ino
    assert runner.poll() is None
    # Known difference (docs/semantics.md): touch opens the file for writing, so its LOOKUP
    # is answered a staging nodeid and the kernel drops the name's dentry; the running
    # process then shows "(deleted)" although no version was made.


def test_xattrs(both):
    def seq(p):
        write(p("f"), "f")
        os.mkdir(p("d"))
        ino = os.stat(p("f")).st_ino
        out = []
        for name in ("f", "d"):
            t = p(name)
            out.append(outcome(os.setxattr, t, "user.a", b"1"))
            out.append(outcome(os.setxattr, t, "user.b", b""))
            out.append(outcome(os.setxattr, t, "user.big", b"v" * 3000))
            out.append(outcome(os.setxattr, t, "user.a", b"2", os.XATTR_CREATE))
            out.append(outcome(os.setxattr, t, "user.c", b"2", os.XATTR_REPLACE))
            out.append(outcome(os.setxattr, t, "user.a", b"22", os.XATTR_REPLACE))
            out.append(outcome(os.getxattr, t, "user.a"))
            out.append(outcome(os.getxattr, t, "user.b"))
            out.append(outcome(os.getxattr, t, "user.big"))
            out.append(outcome(os.getxattr, t, "user.missing"))
            out.append(sorted(x for x in os.listxattr(t) if x.startswith("user.")))
            out.append(outcome(os.removexattr, t, "user.b"))
            out.append(outcome(os.removexattr, t, "user.b"))
            out.append(sorted(x for x in os.listxattr(t) if x.startswith("user.")))
        out.append(os.stat(p("f")).st_ino == ino)
        # a content change keeps the file's xattrs, as natively (same file)
        write(p("f"), "changed")
        out.append(outcome(os.getxattr, p("f"), "user.a"))
        r = run(["getfattr", "-d", p("f")]) if shutil.which("getfattr") else None
        out.append(r.stdout.split("\n", 1)[1] if r else None)
        return out
    same_on_both(both, seq)
    mnt = both[1]
    assert versions(mnt) == ["f.~1~"]  # only the content change made one
    assert os.getxattr(mnt.p(".versions", "f.~1~"), "user.a") == b"22"


# ---------------------------------------------------------------------------------------------
# statfs

def test_statfs(both):
    nat, mnt = both
    sn, sm = os.statvfs(nat), os.statvfs(mnt.p())
    for f in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(sm, f) == getattr(sn, f), f
    assert sm.f_bavail > 0 and sm.f_ffree > 0
    assert abs(sm.f_bfree - sn.f_bfree) < sn.f_blocks // 100  # the same file system
    assert os.statvfs(mnt.p(".versions")).f_blocks == sn.f_blocks
    write(mnt.p("f"), "x")
    assert os.statvfs(mnt.p("f")).f_blocks == sn.f_blocks
    r = run(["df", "-P", mnt.p()])
    assert r.returncode == 0, r.stderr
    assert mnt.p() in r.stdout
    r = run(["stat", "-f", mnt.p()])
    assert r.returncode == 0 and "fuse" in r.stdout


# ---------------------------------------------------------------------------------------------
# file I/O

def test_append(both):
    def seq(p):
        write(p("log"), "a\n")
        fd = os.open(p("log"), os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"b\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"c\n")  # O_APPEND: still at the end
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        os.close(fd)
        out = [read(p("log")), pos]
        fd = os.open(p("log"), os.O_RDWR | os.O_APPEND)
        out.append(os.read(fd, 2))
        os.write(fd, b"d\n")
        out.append(os.pread(fd, 100, 0))
        os.close(fd)
        assert run(["sh", "-c", f"echo e >> '{p('log')}'; echo f >> '{p('log')}'"]) \
            .returncode == 0
        with open(p("log"), "a") as f:
            f.write("g\n")
        fd = os.open(p("new"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"1")
        os.write(fd, b"2")
        os.close(fd)
        out += [read(p("log")), read(p("new"))]
        return out
    n = same_on_both(both, seq)
    assert n[-2] == b"a\nb\nc\nd\ne\nf\ng\n"


def test_two_appenders_at_once(both):
    """Two fds appending to one file at the same time: natively every line lands. In binvfs
    each write open has its own copy and the last close wins; the other writer's content is
    kept as a version, so nothing is lost (docs/semantics.md)."""
    def seq(p):
        log = p("log")
        write(log, "start\n")
        fd1 = os.open(log, os.O_WRONLY | os.O_APPEND)
        fd2 = os.open(log, os.O_WRONLY | os.O_APPEND)
        for i in range(3):
            os.write(fd1, f"a{i}\n".encode())
            os.write(fd2, f"b{i}\n".encode())
        os.close(fd1)
        os.close(fd2)
        return read(log)
    n, m = on_both(both, seq)
    assert n == b"start\na0\nb0\na1\nb1\na2\nb2\n"
    assert m == b"start\nb0\nb1\nb2\n"
    assert read(both[1].p(".versions", "log.~2~")) == b"start\na0\na1\na2\n"


def test_seek_and_read(both):
    data = os.urandom(1 << 20) + b"tail"

    def seq(p):
        write(p("big"), data)
        out = []
        fd = os.open(p("big"), os.O_RDONLY)
        for off in (0, 1, 4095, 4096, 65537, 500_000, len(data) - 4, len(data), len(data) + 10):
            out.append((os.lseek(fd, off, os.SEEK_SET), os.read(fd, 100)))
        out.append(os.lseek(fd, -4, os.SEEK_END))
        out.append(os.read(fd, 100))
        os.lseek(fd, 10, os.SEEK_SET)
        out.append(os.lseek(fd, 20, os.SEEK_CUR))
        out.append(os.read(fd, 5))
        out.append(os.pread(fd, 16, 123_456))
        out.append(outcome(os.lseek, fd, -1, os.SEEK_SET))
        out.append(len(os.read(fd, 2 << 20)))
        os.close(fd)
        # sparse: SEEK_DATA / SEEK_HOLE on a new file
        fd = os.open(p("sparse"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"x" * 4096, 1 << 20)
        os.ftruncate(fd, 4 << 20)
        os.fsync(fd)
        out.append(outcome(os.lseek, fd, 0, os.SEEK_DATA))
        out.append(outcome(os.lseek, fd, 0, os.SEEK_HOLE))
        out.append(outcome(os.lseek, fd, (1 << 20) + 4096, os.SEEK_HOLE))
        out.append(outcome(os.lseek, fd, 5 << 20, os.SEEK_DATA))
        os.close(fd)
        # in-place write at an offset of an existing file, then read back through the fd
        fd = os.open(p("big"), os.O_RDWR)
        os.lseek(fd, 100, os.SEEK_SET)
        os.write(fd, b"XYZ")
        out.append(os.lseek(fd, 0, os.SEEK_CUR))
        out.append(os.pread(fd, 10, 98))
        os.close(fd)
        out.append(read(p("big"))[90:110])
        out.append(os.path.getsize(p("big")))
        with open(p("big"), "r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(b"more")
            f.seek(-8, os.SEEK_END)
            out.append(f.read())
        return out
    same_on_both(both, seq)


def test_mmap(both):
    def seq(p):
        data = bytes(range(256)) * 64
        write(p("f"), data)
        out = []
        with open(p("f"), "rb") as f:
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                out.append(mm[:] == data)
                out.append(mm[5000:5010])
        # private mapping: writes stay private
        with open(p("f"), "rb") as f:
            with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                mm[0:4] = b"PRIV"
                out.append(mm[0:6])
        out.append(read(p("f"))[:6])
        # shared writable mapping of a new file
        fd = os.open(p("new"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 8192)
        mm = mmap.mmap(fd, 8192)
        mm[0:5] = b"hello"
        mm[8000:8003] = b"end"
        mm.flush()
        mm.close()
        os.close(fd)
        out.append(read(p("new")).rstrip(b"\0")[-3:])
        out.append(read(p("new"))[:5])
        # shared writable mapping of an existing file
        fd = os.open(p("f"), os.O_RDWR)
        mm = mmap.mmap(fd, 0)
        mm[100:104] = b"MMAP"
        mm.flush()
        mm.close()
        os.close(fd)
        out.append(read(p("f"))[98:106])
        out.append(len(read(p("f"))))
        return out
    same_on_both(both, seq)


def test_fsync_and_fdatasync(both):
    def seq(p):
        out = []
        fd = os.open(p("new"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"one")
        out.append(outcome(os.fsync, fd))
        out.append(outcome(os.fdatasync, fd))
        os.close(fd)
        fd = os.open(p("new"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"two")
        out.append(outcome(os.fsync, fd))
        out.append(outcome(os.fdatasync, fd))
        os.write(fd, b"three")
        os.close(fd)
        fd = os.open(p("new"), os.O_RDONLY)
        out.append(outcome(os.fsync, fd))
        os.close(fd)
        dfd = os.open(p(), os.O_RDONLY | os.O_DIRECTORY)
        out.append(outcome(os.fsync, dfd))
        os.close(dfd)
        out.append(read(p("new")))
        r = run(["sync", p("new")])
        out.append(r.returncode)
        return out
    same_on_both(both, seq)


def test_fallocate(both):
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2

    def falloc(fd, mode, off, length):
        if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(length)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def seq(p):
        out = []
        fd = os.open(p("new"), os.O_RDWR | os.O_CREAT, 0o644)
        os.posix_fallocate(fd, 0, 1 << 20)
        out.append(os.fstat(fd).st_size)
        out.append(os.fstat(fd).st_blocks >= (1 << 20) // 512)
        os.pwrite(fd, b"abc", 10)
        out.append(outcome(falloc, fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20))
        out.append(os.fstat(fd).st_size)
        out.append(outcome(falloc, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096))
        out.append(os.pread(fd, 16, 8))
        os.close(fd)
        write(p("old"), "old content")
        fd = os.open(p("old"), os.O_WRONLY)
        os.posix_fallocate(fd, 0, 100_000)
        os.close(fd)
        out.append(os.path.getsize(p("old")))
        out.append(read(p("old"))[:12])
        out.append(read(p("new"))[:16])
        with open(p("new"), "rb") as f:
            out.append(f.read().count(0))
        return out
    same_on_both(both, seq)


def test_truncate_and_ftruncate(both):
    def seq(p):
        write(p("f"), "0123456789")
        out = []
        os.truncate(p("f"), 4)
        out.append(read(p("f")))
        os.truncate(p("f"), 8)
        out.append(read(p("f")))
        fd = os.open(p("f"), os.O_RDWR)
        os.ftruncate(fd, 2)
        out.append(os.fstat(fd).st_size)
        out.append(os.pread(fd, 10, 0))
        os.close(fd)
        out.append(read(p("f")))
        out.append(outcome(os.truncate, p("missing"), 0))
        return out
    same_on_both(both, seq)


def test_large_file_roundtrip(both):
    data = os.urandom(8 << 20)

    def seq(p):
        f = p("large")
        write(f, data)
        first = read(f) == data
        with open(f, "r+b") as fh:
            fh.seek(3 << 20)
            fh.write(b"\xff" * 70000)
        got = read(f)
        return first, len(got), got[(3 << 20) - 2:(3 << 20) + 70002]
    n = same_on_both(both, seq)
    assert n[0] is True


# ---------------------------------------------------------------------------------------------
# subdirectories at any depth

def test_nested_subdirs(both, workdir):
    def seq(p):
        os.makedirs(p("lib", "a", "b", "c"))
        write(p("lib", "a", "b", "c", "x"), "x0\n")
        new = os.path.join(workdir, "newx")
        write(new, "x1\n")
        r = run(["cp", new, p("lib", "a", "b", "c", "x")])
        assert r.returncode == 0, r.stderr
        os.makedirs(p("lib", "a", "b", "c", "d", "e", "f", "g", "h"))
        write(p("lib", "a", "b", "c", "d", "e", "f", "g", "h", "deep"), "deep")
        os.rename(p("lib", "a", "b", "c", "d"), p("lib", "moved"))
        assert run(["mkdir", "-p", p("x", "y", "z")]).returncode == 0
        os.rmdir(p("x", "y", "z"))
        return [read(p("lib", "a", "b", "c", "x")),
                read(p("lib", "moved", "e", "f", "g", "h", "deep")),
                outcome(os.rmdir, p("lib", "moved")), tree(p())]
    same_on_both(both, seq)
    mnt = both[1]
    vx = mnt.p(".versions", "lib", "a", "b", "c", "x.~1~")
    assert read(vx) == b"x0\n"
    assert versions(mnt) == ["lib"]
    assert versions(mnt, "lib/a/b/c") == ["x.~1~"]
    r = run(["ls", mnt.p(".versions", "lib", "a", "b", "c")])
    assert r.stdout == "x.~1~\n"
    # a change in the renamed directory is kept under its new path
    write(mnt.p("lib", "moved", "e", "f", "g", "h", "deep"), "deeper")
    assert versions(mnt, "lib/moved/e/f/g/h") == ["deep.~1~"]
    assert read(mnt.p(".versions", "lib", "moved", "e", "f", "g", "h", "deep.~1~")) == b"deep"


# ---------------------------------------------------------------------------------------------
# permissions as another user

def test_nobody_cannot_create_in_root_owned_0755_dir(both, workdir):
    os.chmod(workdir, 0o755)

    def seq(p):
        d = p("rootdir")
        os.mkdir(d, 0o755)
        write(os.path.join(d, "rootfile"), "r\n", 0o644)
        write(os.path.join(d, "secret"), "s\n", 0o600)
        return [
            as_user(lambda: os.close(os.open(os.path.join(d, "new"),
                                             os.O_WRONLY | os.O_CREAT, 0o644))),
            as_user(lambda: os.mkdir(os.path.join(d, "newdir"))),
            as_user(lambda: os.symlink("x", os.path.join(d, "newlink"))),
            as_user(lambda: os.unlink(os.path.join(d, "rootfile"))),
            as_user(lambda: os.rename(os.path.join(d, "rootfile"), os.path.join(d, "r2"))),
            as_user(lambda: os.close(os.open(os.path.join(d, "rootfile"), os.O_WRONLY))),
            as_user(lambda: os.truncate(os.path.join(d, "rootfile"), 0)),
            as_user(lambda: os.chmod(os.path.join(d, "rootfile"), 0o666)),
            as_user(lambda: os.setxattr(os.path.join(d, "rootfile"), "user.x", b"1")),
            as_user(lambda: read(os.path.join(d, "rootfile"))),
            as_user(lambda: read(os.path.join(d, "secret"))),
            as_user(lambda: os.listdir(d)),
            sorted(os.listdir(d)),
            read(os.path.join(d, "rootfile")),
        ]
    n = same_on_both(both, seq)
    assert n[0] == errno.EACCES
    r = run(["runuser", "-u", "nobody", "--", "touch", both[1].p("rootdir", "new")])
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert versions(both[1]) == []


def test_nobody_files_in_sticky_1777_dir(both, workdir):
    os.chmod(workdir, 0o755)

    def seq(p):
        d = p("tmp")
        os.mkdir(d)
        os.chmod(d, 0o1777)
        write(os.path.join(d, "rootfile"), "r\n", 0o666)
        f = os.path.join(d, "mine")
        out = [as_user(lambda: write(f, "by nobody\n")),
               as_user(lambda: os.mkdir(os.path.join(d, "mydir"))),
               as_user(lambda: os.symlink("mine", os.path.join(d, "mylink")))]
        for n in ("mine", "mydir", "mylink"):
            st = os.lstat(os.path.join(d, n))
            out.append((n, st.st_uid, st.st_gid, oct(st.st_mode)))
        out += [as_user(lambda: write(f, "again\n")),  # rewrite own file
                as_user(lambda: write(os.path.join(d, "rootfile"), "w\n")),  # 0666: allowed
                as_user(lambda: os.unlink(os.path.join(d, "rootfile"))),  # sticky: EPERM
                as_user(lambda: os.rename(os.path.join(d, "rootfile"), os.path.join(d, "x"))),
                as_user(lambda: os.chmod(f, 0o600)),
                as_user(lambda: os.chown(f, 0, 0))]
        st = os.stat(f)
        out += [(st.st_uid, st.st_gid, oct(st.st_mode)), read(f),
                read(os.path.join(d, "rootfile")),
                os.stat(os.path.join(d, "rootfile")).st_uid,
                as_user(lambda: os.unlink(f)),
                sorted(os.listdir(d))]
        return out
    n = same_on_both(both, seq)
    assert n[3][1:3] == (NOBODY, NOBODY)
    r = run(["runuser", "-u", "nobody", "--", "sh", "-c",
             f"echo hi > '{both[1].p('tmp', 'viarunuser')}'"])
    assert r.returncode == 0, r.stderr
    assert os.stat(both[1].p("tmp", "viarunuser")).st_uid == NOBODY
    # the versions made by nobody's rewrite and unlink keep nobody as owner
    mnt = both[1]
    vs = versions(mnt, "tmp")
    assert "mine.~1~" in vs
    assert os.stat(mnt.p(".versions", "tmp", "mine.~1~")).st_uid == NOBODY


# ---------------------------------------------------------------------------------------------
# command line

def binvfs_mounts(under):
    return [e.point for e in mountinfo("fuse.binvfs")
            if e.point == under or e.point.startswith(under + "/")]


def cli(binary, *args, cwd=None):
    """Run binvfs with args (no -f: a wrong success daemonizes and returns)."""
    try:
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30,
                              cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"binvfs {args} did not exit: {e}")


def assert_clean_failure(r, workdir, before):
    try:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert "Sanitizer" not in r.stderr, r.stderr
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert len(lines) == 1, f"expected a one-line error, got:\n{r.stderr}"
        assert lines[0].startswith(("binvfs:", "fuse:")), lines[0]
        assert r.stdout == ""
        assert binvfs_mounts(workdir) == before
    finally:
        for mp in binvfs_mounts(workdir):
            if mp not in before:
                subprocess.run(["fusermount3", "-uz", mp], capture_output=True)


@pytest.mark.parametrize("case", ["no_args", "missing_source", "source_is_file",
                                  "unknown_option", "bad_keep", "bad_readahead",
                                  "readahead_too_big", "readahead_negative", "bad_reserve_pct",
                                  "bad_reserve_unit", "bad_reserve_empty", "unknown_flag",
                                  "too_many_args", "missing_mountpoint"])
def test_cli_errors(binary, workdir, case):
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    write(os.path.join(src, "keepme"), "k")
    write(os.path.join(workdir, "file"), "f")
    args = {
        "no_args": [],
        "missing_source": [os.path.join(workdir, "missing")],
        "source_is_file": [os.path.join(workdir, "file")],
        "unknown_option": ["-o", "bogus", src],
        "bad_keep": ["-o", "keep=-1", src],
        "bad_readahead": ["-o", "readahead=1M", src],
        "readahead_too_big": ["-o", "readahead=65537", src],
        "readahead_negative": ["-o", "readahead=-1", src],
        "bad_reserve_pct": ["-o", "reserve=51%", src],
        "bad_reserve_unit": ["-o", "reserve=1X", src],
        "bad_reserve_empty": ["-o", "reserve=", src],
        "unknown_flag": ["-x", src],
        "too_many_args": [src, src, src],
        "missing_mountpoint": [src, os.path.join(workdir, "nomp")],
    }[case]
    r = cli(binary, *args)
    assert_clean_failure(r, workdir, [])
    # nothing changed in SOURCE either
    assert os.listdir(src) == ["keepme"]


def test_libfuse_messages_go_through_the_daemons_log(binary, workdir):
    """libfuse's own messages take the daemon's log (stderr in the foreground, syslog in the
    background), one line each, although libfuse writes some in pieces."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    r = cli(binary, "-f", "-o", "bogus", src)
    assert (r.returncode, r.stderr) == (1, "binvfs: fuse: unknown option(s): `-o bogus'\n")
    m = Mount(binary, src, opts=("nosync", "debug")).start()
    try:
        assert not os.path.exists(m.p("nope"))
    finally:
        text = m.stop()
    trace = [x for x in text.splitlines() if "opcode: LOOKUP" in x]
    assert trace and all(x.startswith("binvfs: unique: ") for x in trace), trace[:3]


def test_log_lines_keep_long_paths_whole(mnt):
    """A log line can name a path of 4095 bytes: it is not cut (at 1024 bytes, once)."""
    d = mnt.p(*["d" * 200] * 10)
    os.makedirs(d)
    write(os.path.join(d, "f"), "1")
    write(os.path.join(d, "f"), "2")
    rel = os.path.relpath(os.path.join(d, "f"), mnt.path)
    assert f"previous kept as .versions/{rel}.~1~\n" in mnt.logtext()


def test_cli_source_already_served(binary, mnt, workdir):
    write(mnt.p("f"), "f\n")
    before = binvfs_mounts(workdir)
    assert before == [mnt.path]
    r = cli(binary, "-o", "nosync", mnt.path)
    assert_clean_failure(r, workdir, before)
    assert "already" in r.stderr
    # also as SOURCE with another mount point, and as the MOUNTPOINT of another SOURCE
    other = os.path.join(workdir, "other")
    os.mkdir(other)
    r = cli(binary, mnt.path, other)
    assert_clean_failure(r, workdir, before)
    r = cli(binary, other, mnt.path)
    assert_clean_failure(r, workdir, before)
    # the first mount still serves
    assert read(mnt.p("f")) == b"f\n"
    write(mnt.p("f"), "g\n")
    assert os.listdir(mnt.p(".versions")) == ["f.~1~"]
    assert not os.path.exists(os.path.join(other, ".versions"))


@pytest.mark.parametrize("kind", ["empty_dir", "dir_with_files", "regular_file"])
def test_cli_versions_without_marker(binary, workdir, kind):
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    v = os.path.join(src, ".versions")
    if kind == "regular_file":
        write(v, "user data\n")
    else:
        os.mkdir(v)
        if kind == "dir_with_files":
            write(os.path.join(v, "notes.txt"), "user data\n")
            write(os.path.join(v, "app.~1~"), "user data\n")
    snapshot = sorted((d, tuple(sorted(f))) for d, _, f in os.walk(src))
    r = cli(binary, "-o", "nosync", src)
    assert_clean_failure(r, workdir, [])
    assert ".versions" in r.stderr
    assert not is_mounted(src)
    assert sorted((d, tuple(sorted(f))) for d, _, f in os.walk(src)) == snapshot


def test_root_mount_has_allow_other_and_default_permissions(mnt):
    [e] = [e for e in mountinfo("fuse.binvfs") if e.point == mnt.path]
    super_opts = e.super_opts.split(",")
    assert "allow_other" in super_opts
    assert "default_permissions" in super_opts
    assert e.source == mnt.src  # fsname: the SOURCE


@pytest.mark.parametrize("opt,want,where", [(None, 512, "src"), ("readahead=0", 128, "src"),
                                             ("readahead=256", 256, "src"),
                                             ("readahead=64", 64, "src"),
                                             (None, 512, "a dir\twith space\\s")])
def test_readahead_option_sets_the_mounts_window(binary, workdir, opt, want, where):
    """The mount's readahead window (its bdi's read_ahead_kb): 512 KiB by default, as asked
    (64: lowered through INIT alone), or the kernel's 128 KiB with readahead=0; also where
    /proc/self/mountinfo escapes the mount point's name. A file read through it reads back."""
    src = os.path.join(workdir, where)
    os.mkdir(src)
    data = os.urandom(3 << 20)
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(data)
    m = Mount(binary, src, opts=("nosync",) + ((opt,) if opt else ())).start()
    try:
        dev = os.stat(m.path).st_dev
        bdi = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(bdi) as f:
            assert int(f.read()) == want
        assert read(m.p("big")) == data
    finally:
        m.stop()


def test_files_advertise_big_io_size(mnt, workdir):
    """st_blksize of a regular file in the mount is 512 KiB (cp then writes 512 KiB at a time,
    a quarter of the round trips); directories keep the backing one (4 KiB); cp's copy is exact."""
    data = os.urandom((5 << 20) + 123)
    src = os.path.join(workdir, "data")
    with open(src, "wb") as f:
        f.write(data)
    subprocess.run(["cp", src, mnt.p("f")], check=True)
    subprocess.run(["cp", src, mnt.p("f")], check=True)  # over the file: staging + publish
    assert os.stat(mnt.p("f")).st_blksize == 512 << 10
    assert os.stat(mnt.path).st_blksize != 512 << 10
    with open(mnt.p("f"), "rb") as f:
        assert os.fstat(f.fileno()).st_blksize == 512 << 10
        assert f.read() == data


def test_cli_good_usage_mounts_and_unmounts(binary, workdir):
    """Control for the error cases: the same arguments, correct, do mount."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src, opts=("nosync", "keep=3")).start()
    try:
        assert binvfs_mounts(workdir) == [src]
        write(m.p("f"), "1")
        write(m.p("f"), "2")
        assert os.listdir(m.p(".versions")) == ["f.~1~"]
    finally:
        m.stop()
    assert binvfs_mounts(workdir) == []
    r = cli(binary, "--help")
    assert r.returncode == 0 and "usage" in r.stdout.lower()
