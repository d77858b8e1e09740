"""What xfstests' generic group found different from ext4 (issue 22), each as its own behaviour:
compared with a plain directory where binvfs matches it, pinned where the difference is a
promise (docs/semantics.md, "xfstests"). Runs with passthrough on and off (conftest)."""
import ctypes
import os
import struct

import pytest

from util import as_user, on_both, open_world, outcome, read, same_on_both, write

libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x1, 0x2, 0x10


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# generic/286: SEEK_DATA / SEEK_HOLE through a read-only fd (a passthrough open holds no fd of
# the daemon's: it answered EBADF)
def test_seek_data_and_hole_through_every_fd(both):
    def seq(p):
        fd = os.open(p("sparse"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"x" * 8192, 1 << 20)
        os.pwrite(fd, b"y" * 4096, 3 << 20)
        os.ftruncate(fd, 4 << 20)
        os.fsync(fd)
        os.close(fd)
        out = []
        for flags in (os.O_RDONLY, os.O_RDWR, os.O_WRONLY):
            fd = os.open(p("sparse"), flags)
            for off, whence in ((0, os.SEEK_DATA), (0, os.SEEK_HOLE),
                                ((1 << 20) + 100, os.SEEK_HOLE), ((2 << 20), os.SEEK_DATA),
                                ((3 << 20) + 4096, os.SEEK_DATA), (5 << 20, os.SEEK_HOLE)):
                out.append((flags, off, whence, outcome(os.lseek, fd, off, whence)))
            os.close(fd)
        return out

    same_on_both(both, seq)


# generic/062: xattrs of symlinks and device nodes (the daemon refused them all: EOPNOTSUPP)
def test_xattrs_of_symlinks_and_devices_as_natively(both):
    def seq(p):
        os.symlink("target", p("link"))
        write(p("target"), "t")
        os.mknod(p("dev"), 0o600 | 0o020000, os.makedev(1, 3))
        os.mkfifo(p("fifo"))
        out = []
        for name in ("link", "dev", "fifo"):
            def x(fn, *a):
                return outcome(fn, p(name), *a, follow_symlinks=False)
            out.append((name, x(os.listxattr), x(os.getxattr, "user.a"),
                        x(os.setxattr, "user.a", b"1"),
                        x(os.setxattr, "trusted.a", b"value"),
                        x(os.setxattr, "security.b", b"v2"),
                        x(os.setxattr, "trusted.a", b"new", os.XATTR_REPLACE),
                        x(os.setxattr, "trusted.a", b"again", os.XATTR_CREATE),
                        x(os.getxattr, "trusted.a"), sorted(x(os.listxattr)[1]),
                        x(os.removexattr, "trusted.a"), x(os.removexattr, "trusted.a"),
                        x(os.listxattr)))
        # the symlink's own xattrs, not its target's
        out.append(os.listxattr(p("target")))
        out.append(os.listxattr(p("link")))  # followed: the target's
        return out

    same_on_both(both, seq)


# generic/683, 684, 685: fallocate, punch hole, zero range (and a write, a truncate by path or
# fd, an open with O_TRUNC) by a user without CAP_FSETID drop setuid, and setgid when the group
# may execute or the user is not in the group
@pytest.mark.parametrize("op", ["falloc", "falloc_keep_size", "punch", "zero", "write",
                                "truncate", "ftruncate", "o_trunc"])
def test_setuid_setgid_dropped_by_a_change_as_natively(both, workdir, op):
    open_world(workdir)
    os.chmod(both[1].p(), 0o777)
    os.chmod(both[0], 0o777)
    modes = (0o6777, 0o6767, 0o4777, 0o2777, 0o2767, 0o2757, 0o0777)

    def change(path):
        def fn():
            if op == "truncate":
                return os.truncate(path, 100)
            fd = os.open(path, os.O_RDWR | (os.O_TRUNC if op == "o_trunc" else 0))
            if op == "ftruncate":
                os.ftruncate(fd, 100)
            elif op == "o_trunc":
                pass
            elif op == "write":
                os.pwrite(fd, b"z", 10)
            else:
                mode, off, length = {"falloc": (0, 0, 65536),
                                     "falloc_keep_size": (FALLOC_FL_KEEP_SIZE, 0, 65536),
                                     "punch": (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                                               4096),
                                     "zero": (FALLOC_FL_ZERO_RANGE, 0, 4096)}[op]
                fallocate(fd, mode, off, length)
            os.close(fd)
        return fn

    def seq(p):
        out = []
        for mode in modes:
            path = p(f"f{mode:o}")
            write(path, b"a" * 8192)
            os.chmod(path, mode)  # root's, group root: nobody is not in it
            out.append((oct(mode), as_user(change(path)), oct(os.stat(path).st_mode & 0o7777),
                        os.path.getsize(path)))
        # in the file's group (its setgid stays without a group x bit, goes with one)
        for mode in (0o2767, 0o2777):
            path = p(f"g{mode:o}")
            write(path, b"a" * 8192)
            os.chown(path, 0, 65534)
            os.chmod(path, mode)
            out.append((oct(mode), as_user(change(path)), oct(os.stat(path).st_mode & 0o7777)))
        # root keeps them (CAP_FSETID)
        path = p("root")
        write(path, b"a" * 8192)
        os.chmod(path, 0o6777)
        change(path)()
        out.append(oct(os.stat(path).st_mode & 0o7777))
        return out

    same_on_both(both, seq)


# A write drops a file's capabilities (security.capability) natively, whoever writes and even
# when it rewrites the same bytes; a truncate and a chown too, a chmod not. binvfs's copy never
# carried them, but a write of unchanged content used to publish nothing and leave them.
@pytest.mark.parametrize("op", ["same_bytes", "other_bytes", "truncate_same", "chmod", "chown"])
def test_file_capabilities_dropped_by_a_write_as_natively(both, op):
    # vfs_cap_data revision 2, effective, permitted CAP_NET_BIND_SERVICE
    caps = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
    data = b"#!/bin/sh\n" + b"x" * 8000

    def seq(p):
        path = p("prog")
        write(path, data, 0o755)
        os.setxattr(path, "security.capability", caps)
        if op == "same_bytes":
            write(path, data)
        elif op == "other_bytes":
            fd = os.open(path, os.O_WRONLY)
            os.pwrite(fd, b"y", 100)
            os.close(fd)
        elif op == "truncate_same":
            os.truncate(path, len(data))
        elif op == "chmod":
            os.chmod(path, 0o750)
        else:
            os.chown(path, 0, 0)
        return outcome(os.getxattr, path, "security.capability"), read(path) == data

    got = same_on_both(both, seq)
    assert got[0][0] == ("ok" if op == "chmod" else "err")


# generic/564: copy_file_range within one file with overlapping ranges is EINVAL (the reader's
# and the writer's fd have two nodeids here: the kernel could not tell)
def test_copy_file_range_overlap_in_one_file_refused(both):
    data = bytes(range(256)) * 64

    def seq(p):
        write(p("f"), data)
        write(p("g"), b"g" * 4096)
        src = os.open(p("f"), os.O_RDONLY)
        dst = os.open(p("f"), os.O_RDWR)
        other = os.open(p("g"), os.O_RDONLY)
        out = [outcome(os.copy_file_range, src, dst, 100, 0, 50),       # overlaps
               outcome(os.copy_file_range, src, dst, 100, 50, 0),       # overlaps
               outcome(os.copy_file_range, dst, dst, 100, 0, 50),       # one fd
               outcome(os.copy_file_range, src, dst, 100, 0, 100),      # adjacent: fine
               outcome(os.copy_file_range, src, dst, 1000, 8000, 2000),  # apart: fine
               outcome(os.copy_file_range, other, dst, 4096, 0, 100)]   # other file
        for fd in (src, dst, other):
            os.close(fd)
        out.append(read(p("f")))
        return out

    same_on_both(both, seq)


# generic/486 sizes an xattr from st_blksize: binvfs says 512 KiB for regular files (faster cp,
# docs/performance.md), the backing filesystem's block size is statvfs's f_bsize (promise)
def test_io_size_is_512k_block_size_is_the_filesystems(both):
    nat, m = both
    n, b = on_both(both, lambda p: (write(p("f"), "x"), os.stat(p("f")))[1])
    assert b.st_blksize == 512 << 10
    assert os.statvfs(m.p()).f_bsize == os.statvfs(nat).f_bsize
    assert os.stat(m.p()).st_blksize == n.st_blksize  # directories: the filesystem's

    def xattr_of_a_block(p):  # what generic/486 means to do: 3/4 of the block
        size = os.statvfs(p()).f_bsize * 3 // 4
        write(p("x"), "x")
        os.setxattr(p("x"), "user.world", b"0", os.XATTR_CREATE)
        os.setxattr(p("x"), "user.world", b"1" * size, os.XATTR_REPLACE)
        return os.getxattr(p("x"), "user.world") == b"1" * size

    assert same_on_both(both, xattr_of_a_block)


# generic/131, 571: a file that its writer still has open shows its old content (here: empty)
# to everyone else until the writer closes it (promise: docs/semantics.md)
def test_other_openers_see_new_content_at_close(mnt):
    write(mnt.p("port"), "")
    fd = os.open(mnt.p("port"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"40123\n")
    assert read(mnt.p("port")) == b""
    os.close(fd)
    assert read(mnt.p("port")) == b"40123\n"


# truncate(2) by path of a setuid file by a user without CAP_FSETID: natively the truncate and
# the drop of setuid (and of setgid with a group x bit) happen at once. The kernel sends both
# in one SETATTR; binvfs applies the mode to the copy before publishing it (staging_truncate).
def test_truncate_by_path_drops_setuid_as_natively(both, workdir):
    open_world(workdir)
    os.chmod(both[1].p(), 0o777)
    os.chmod(both[0], 0o777)

    def seq(p):
        out = []
        for mode in (0o4777, 0o6777, 0o0777):
            path = p(f"t{mode:o}")
            write(path, b"a" * 8192)
            os.chmod(path, mode)
            out.append((oct(mode), as_user(lambda: os.truncate(path, 10)),
                        oct(os.stat(path).st_mode & 0o7777), os.path.getsize(path)))
        return out

    got = same_on_both(both, seq)
    assert got[0][1:] == (0, "0o777", 10)
