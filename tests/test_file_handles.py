"""File handles inside the mount (name_to_handle_at / open_by_handle_at; xfstests generic/426,
467, 477, 756, 777; docs/semantics.md "File handles", design.md §3):

- a handle names a nodeid and its generation; when the kernel no longer caches the inode
  (drop_caches) it asks LOOKUP (nodeid, ".") and, for a directory, (nodeid, "..") to reconnect
  it: the daemon finds the object again by the backing file's own handle;
- a file that has no name in the tree any more (rm, or replaced by a publish and kept only in
  .versions/) is stale, as an unlinked file is natively; so is a writer's staging nodeid once
  the writer is gone, and every handle after a remount;
- a forged handle (any nodeid) is ESTALE and the daemon survives it (ASan build: clean).

open_by_handle_at needs CAP_DAC_READ_SEARCH: these tests run as root.
"""
import ctypes
import errno
import os
import random
import shutil
import struct
import time

import pytest

from util import Mount, cp, read, write

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
FILEID_INO64_GEN = 0x81  # the kernel's type for a FUSE handle (fs/fuse: nodeid, generation)


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


def handle_of(path, fd=None):
    """name_to_handle_at of path (or of the open fd itself)."""
    fh = FileHandle(handle_bytes=128)
    mnt_id = ctypes.c_int()
    if fd is None:
        r = libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh),
                                   ctypes.byref(mnt_id), 0)
    else:
        r = libc.name_to_handle_at(fd, b"", ctypes.byref(fh), ctypes.byref(mnt_id),
                                   AT_EMPTY_PATH)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fh


def forged(nodeid, gen):
    """A handle of the FUSE type for any nodeid and generation (as the kernel encodes them)."""
    fh = FileHandle(handle_bytes=12, handle_type=FILEID_INO64_GEN)
    raw = struct.pack("=III", nodeid >> 32, nodeid & 0xFFFFFFFF, gen)
    for i, b in enumerate(raw):
        fh.f_handle[i] = b
    return fh


def nodeid(fh):
    hi, lo, gen = struct.unpack("=III", bytes(fh.f_handle[:12]))
    return hi << 32 | lo, gen


def open_by(mount, fh, flags=os.O_RDONLY):
    mfd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = libc.open_by_handle_at(mfd, ctypes.byref(fh), flags)
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r
    finally:
        os.close(mfd)


def read_by(mount, fh):
    fd = open_by(mount, fh)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def list_by(mount, fh):
    fd = open_by(mount, fh, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def stale(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.ESTALE, e.value
    return True


def forget_all():
    """The kernel drops every unused dentry and inode: FORGETs reach the daemon, and a handle
    of them must be looked up again (LOOKUP nodeid ".")."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    time.sleep(0.1)  # the FORGETs are queued: let the daemon take them first


@pytest.fixture
def dmnt(mounter):
    """binvfs over its own SOURCE (the usual way), with -o debug: its log says when a nodeid
    the kernel forgot is found again by handle."""
    return mounter(opts=("nosync", "debug"))


def found_again(m, fh):
    return f"nodeid {nodeid(fh)[0]} found again by handle" in m.logtext()


def test_file_dir_and_nested_file_after_the_kernel_forgot_them(dmnt):
    os.makedirs(dmnt.p("a", "b", "c"))
    write(dmnt.p("f"), "hello\n")
    write(dmnt.p("a", "b", "c", "g"), "deep\n")
    hf, hd, hg = (handle_of(dmnt.p(*p)) for p in (("f",), ("a", "b"), ("a", "b", "c", "g")))
    assert hf.handle_type == FILEID_INO64_GEN
    assert read_by(dmnt.path, hf) == b"hello\n"  # cached: the kernel alone
    forget_all()
    assert read_by(dmnt.path, hf) == b"hello\n"
    forget_all()
    assert list_by(dmnt.path, hd) == ["c"]
    forget_all()
    assert read_by(dmnt.path, hg) == b"deep\n"
    # each went through LOOKUP "." of a nodeid whose node had been freed
    assert found_again(dmnt, hf) and found_again(dmnt, hd) and found_again(dmnt, hg)
    # and the names still give the same nodeids (one per backing inode)
    assert nodeid(handle_of(dmnt.p("f"))) == nodeid(hf)
    assert nodeid(handle_of(dmnt.p("a", "b"))) == nodeid(hd)
    assert read(dmnt.p("a", "b", "c", "g")) == b"deep\n"


def test_directory_reconnects_when_mounted_elsewhere(mounter, workdir):
    """SOURCE not covered by the mount: ".." of a top directory is SOURCE itself."""
    point = os.path.join(workdir, "point")
    os.mkdir(point)
    m = mounter(path=point)
    os.makedirs(m.p("x", "y"))
    write(m.p("x", "y", "z"), "z\n")
    hy = handle_of(m.p("x", "y"))
    forget_all()
    assert list_by(m.path, hy) == ["z"]
    fd = open_by(m.path, hy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == m.p("x", "y")  # reconnected
    finally:
        os.close(fd)


def test_version_file_handle(dmnt, workdir):
    """A version in .versions/ has the nodeid of the file it was: while the kernel caches
    its inode the handle opens it; once forgotten it has no name in the tree: ESTALE."""
    write(dmnt.p("app"), "v1\n")
    write(os.path.join(workdir, "new"), "v2\n")
    cp(os.path.join(workdir, "new"), dmnt.p("app"))
    vpath = dmnt.p(".versions", "app.~1~")
    hv = handle_of(vpath)
    keep = os.open(vpath, os.O_RDONLY)
    try:
        forget_all()
        assert read_by(dmnt.path, hv) == b"v1\n"  # its inode is in use: cached
    finally:
        os.close(keep)
    forget_all()
    assert stale(read_by, dmnt.path, hv)
    assert read(vpath) == b"v1\n"  # the version itself is still there, by name


def test_replaced_file_handle_is_stale_like_mv_natively(dmnt, workdir):
    """binvfs publishes a new inode at each change: a handle names one version, and after a
    publish it is stale, as after `mv new f` natively. Natively `cp new f` rewrites the inode in
    place, and the handle reads the new content: this is where binvfs differs (semantics.md)."""
    new = os.path.join(workdir, "new")
    write(new, "v2\n")
    write(dmnt.p("f"), "v1\n")
    hf = handle_of(dmnt.p("f"))
    cp(new, dmnt.p("f"))
    forget_all()
    assert stale(read_by, dmnt.path, hf)
    assert read(dmnt.p("f")) == b"v2\n"
    # the new version has a handle of its own that works
    assert read_by(dmnt.path, handle_of(dmnt.p("f"))) == b"v2\n"

    # natively, on the filesystem under SOURCE (where handles exist)
    native = os.path.join(workdir, "native")
    os.mkdir(native)
    write(os.path.join(native, "f"), "v1\n")
    h = handle_of(os.path.join(native, "f"))
    cp(new, os.path.join(native, "f"))
    forget_all()
    assert read_by(native, h) == b"v2\n"  # cp: same inode
    shutil.copy(new, os.path.join(native, "g"))
    os.rename(os.path.join(native, "g"), os.path.join(native, "f"))
    forget_all()
    assert stale(read_by, native, h)  # mv over it: unlinked


def test_unlinked_file_handle_is_stale(dmnt, workdir):
    write(dmnt.p("gone"), "x\n")
    os.mkdir(dmnt.p("dir"))
    h, hd = handle_of(dmnt.p("gone")), handle_of(dmnt.p("dir"))
    os.unlink(dmnt.p("gone"))  # kept as .versions/gone.~1~, but no longer in the tree
    os.rmdir(dmnt.p("dir"))
    forget_all()
    assert stale(read_by, dmnt.path, h)
    assert stale(list_by, dmnt.path, hd)
    assert read(dmnt.p(".versions", "gone.~1~")) == b"x\n"
    # natively the same
    native = os.path.join(workdir, "native")
    os.mkdir(native)
    write(os.path.join(native, "gone"), "x\n")
    hn = handle_of(os.path.join(native, "gone"))
    os.unlink(os.path.join(native, "gone"))
    forget_all()
    assert stale(read_by, native, hn)


def test_writers_staging_nodeid_is_stale_after_the_writer(dmnt):
    write(dmnt.p("w"), "old\n")
    fd = os.open(dmnt.p("w"), os.O_WRONLY | os.O_TRUNC)
    try:
        hs = handle_of(None, fd=fd)  # the writer's own nodeid
        assert nodeid(hs) != nodeid(handle_of(dmnt.p("w")))
        os.write(fd, b"new\n")
    finally:
        os.close(fd)
    forget_all()
    assert stale(read_by, dmnt.path, hs)
    assert read_by(dmnt.path, handle_of(dmnt.p("w"))) == b"new\n"


def test_forged_handles_are_stale_and_the_daemon_survives(dmnt):
    write(dmnt.p("f"), "hello\n")
    os.mkdir(dmnt.p("d"))
    hf = handle_of(dmnt.p("f"))
    real, gen = nodeid(hf)
    index = real & 0xFFFFFFFF
    rng = random.Random(426)
    forge = [(0, 0), (1, 1), (2, 0), (real, gen + 1), (real + (1 << 32), gen),
             (index, 0), (index | 0xFFFFFFFF << 32, 0xFFFFFFFF), (0xFFFFFFFF, gen),
             (1 << 31, gen), ((1 << 64) - 1, 0)]
    forge += [(rng.getrandbits(64), rng.getrandbits(32)) for _ in range(300)]
    forge += [(rng.getrandbits(64) & ~0xFFFFFFFF | rng.randrange(2, 64), rng.getrandbits(32))
              for _ in range(300)]  # real indexes, random generations
    for _ in range(2):
        forget_all()
        for nid, g in forge:
            if (nid, g) == (real, gen):
                continue
            assert stale(read_by, dmnt.path, forged(nid, g)), (nid, g)
    # the real one still works, and so does everything else
    forget_all()
    assert read_by(dmnt.path, hf) == b"hello\n"
    assert read(dmnt.p("f")) == b"hello\n"
    assert sorted(os.listdir(dmnt.path)) == ["d", "f"]
    assert dmnt.proc.poll() is None


def test_handles_are_stale_after_a_remount(binary, workdir):
    """nodeids live as long as the daemon: a new daemon answers ESTALE for every handle of the
    old one, also where an old handle's index is one the new daemon uses (a slot's first
    generation is random per daemon)."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    try:
        os.mkdir(m.p("d"))
        write(m.p("f"), "f\n")
        old = [handle_of(m.p("d")), handle_of(m.p("f"))]
    finally:
        m.stop()
    m = Mount(binary, src).start()
    try:
        now = [handle_of(m.p("d")), handle_of(m.p("f"))]
        forget_all()
        for h in old:
            assert stale(read_by, m.path, h)
        for h in now:  # the indexes in use now, with the old daemon's generations
            for o in old:
                ogen = nodeid(o)[1]
                assert stale(read_by, m.path, forged(nodeid(h)[0] & 0xFFFFFFFF | ogen << 32, ogen))
        assert read_by(m.path, now[1]) == b"f\n"
    finally:
        m.stop()


def test_name_to_handle_inside_versions_dir(dmnt, workdir):
    """A directory of the .versions/ view is opened by handle while the kernel caches it.
    Once forgotten the kernel reconnects it through its parent's listing, and .versions/ is
    hidden from the root's: ESTALE (semantics.md)."""
    os.mkdir(dmnt.p("sub"))
    write(dmnt.p("sub", "f"), "1\n")
    write(os.path.join(workdir, "new"), "2\n")
    cp(os.path.join(workdir, "new"), dmnt.p("sub", "f"))
    vdir = dmnt.p(".versions", "sub")
    hv = handle_of(vdir)
    keep = os.open(vdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert list_by(dmnt.path, hv) == ["f.~1~"]
    finally:
        os.close(keep)
    forget_all()
    with pytest.raises(OSError) as e:
        list_by(dmnt.path, hv)
    assert e.value.errno in (errno.ESTALE, errno.ENOENT)
    assert dmnt.proc.poll() is None
    assert os.listdir(vdir) == ["f.~1~"]
