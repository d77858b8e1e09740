"""File handles inside the mount (name_to_handle_at / open_by_handle_at; xfstests generic/426,
467, 477, 756, 777; docs/semantics.md "File handles", design.md §3):

- a handle names a nodeid and its generation; when the kernel no longer caches the inode
  (drop_caches) it asks LOOKUP (nodeid, ".") and, for a directory, (nodeid, "..") to reconnect
  it: the daemon finds the object again by the backing file's own handle;
- a file that has no name in the tree any more (rm, or replaced by a publish and kept only in
  .versions/) is stale, as an unlinked file is natively; so is a writer's staging nodeid once
  the writer is gone;
- handles survive an unmount and a new mount of the same SOURCE (the nodeid table a clean stop
  leaves in the store), but not a crash of the daemon, nor a damaged or foreign table;
- a forged handle (any nodeid) is ESTALE and the daemon survives it (ASan build: clean).

open_by_handle_at needs CAP_DAC_READ_SEARCH: these tests run as root.
"""
import ctypes
import errno
import hashlib
import os
import random
import shutil
import stat
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


def table(src):
    """The nodeid table a clean stop leaves in the store (docs/format.md)."""
    return os.path.join(src, ".versions", ".binvfs-nodeids")


def ignored_lines(m):
    return [ln for ln in m.logtext().splitlines()
            if "ignoring .versions/.binvfs-nodeids" in ln]


def assert_forged_stale(mount, hs):
    """Every other generation of the handles' nodeids, either way the kernel can be asked
    (the nodeid carries the daemon's generation; the handle's own is checked by the kernel)."""
    for h in hs:
        nid, gen = nodeid(h)
        idx = nid & 0xFFFFFFFF
        for g in {(gen + 1) & 0xFFFFFFFF, (gen - 1) & 0xFFFFFFFF, gen ^ 0x80000000, 0}:
            assert stale(read_by, mount, forged(nid, g))
            assert stale(read_by, mount, forged(g << 32 | idx, g))


def test_handles_survive_a_remount(binary, workdir):
    """A clean stop writes the nodeid table into the store and the next mount of the same
    SOURCE takes it (the kernel asks the new daemon LOOKUP (old nodeid, ".")): handles of a
    file, a directory and a nested file open the same objects again (content, st_ino), and
    still after a second remount. Other generations of their nodeids stay stale, and so do a
    file removed and a directory moved out of SOURCE while unmounted."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    paths = [("f",), ("a", "b"), ("a", "b", "c", "g")]
    m = Mount(binary, src).start()
    try:
        os.makedirs(m.p("a", "b", "c"))
        os.mkdir(m.p("out"))
        write(m.p("f"), "hello\n")
        write(m.p("a", "b", "c", "g"), "deep\n")
        write(m.p("gone"), "x\n")
        hs = [handle_of(m.p(*p)) for p in paths]
        inos = [os.stat(m.p(*p)).st_ino for p in paths]
        hgone, hout = handle_of(m.p("gone")), handle_of(m.p("out"))
        assert read_by(m.path, hgone) == b"x\n" and list_by(m.path, hout) == []
    finally:
        m.stop()
    st = os.stat(table(src))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    os.unlink(os.path.join(src, "gone"))  # SOURCE is a plain directory now
    os.rename(os.path.join(src, "out"), os.path.join(workdir, "out"))
    for _ in range(2):
        m = Mount(binary, src).start()
        try:
            assert not ignored_lines(m)
            forget_all()
            assert read_by(m.path, hs[0]) == b"hello\n"
            forget_all()
            assert list_by(m.path, hs[1]) == ["c"]
            forget_all()
            assert read_by(m.path, hs[2]) == b"deep\n"
            for h, ino in zip(hs, inos):
                fd = open_by(m.path, h)
                try:
                    assert os.fstat(fd).st_ino == ino
                finally:
                    os.close(fd)
            # the names give the same nodeids: one per backing inode, as before the remount
            assert [nodeid(handle_of(m.p(*p))) for p in paths] == [nodeid(h) for h in hs]
            forget_all()
            assert stale(read_by, m.path, hgone)
            assert stale(list_by, m.path, hout)
            assert_forged_stale(m.path, hs)
            # a file made now gets a nodeid of its own; the old generations do not name it
            write(m.p("new"), "new\n")
            hn = handle_of(m.p("new"))
            assert nodeid(hn) not in [nodeid(h) for h in hs]
            forget_all()
            nidx = nodeid(hn)[0] & 0xFFFFFFFF
            for h in hs:
                ogen = nodeid(h)[1]
                assert stale(read_by, m.path, forged(nidx | ogen << 32, ogen))
            assert read_by(m.path, hn) == b"new\n"
            os.unlink(m.p("new"))
            assert m.proc.poll() is None
        finally:
            m.stop()


def test_handles_are_stale_after_a_crash(binary, workdir):
    """A daemon killed (SIGKILL) writes no table, and the one it read at its mount is gone (a
    table is read once): every handle made before is stale in the next mount, which works."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    try:
        write(m.p("f"), "f\n")
        h1 = handle_of(m.p("f"))
    finally:
        m.stop()
    m = Mount(binary, src).start()
    try:
        forget_all()
        assert read_by(m.path, h1) == b"f\n"  # the clean stop's table
        write(m.p("g"), "g\n")
        h2 = handle_of(m.p("g"))
    finally:
        m.kill()
    assert not os.path.exists(table(src))
    m = Mount(binary, src).start()
    try:
        forget_all()
        assert stale(read_by, m.path, h1)
        assert stale(read_by, m.path, h2)
        assert_forged_stale(m.path, [h1, h2])
        assert read(m.p("f")) == b"f\n" and read(m.p("g")) == b"g\n"
        assert not ignored_lines(m) and m.proc.poll() is None
    finally:
        m.stop()


def parse_table(data):
    """The table's header and records (docs/format.md, "The nodeid table")."""
    magic = b"binvfs nodeids 1\n"
    assert data.startswith(magic)
    off = len(magic) + 8
    _, hlen = struct.unpack_from("<II", data, off)
    off += 8 + hlen
    (count,) = struct.unpack_from("<I", data, off)
    head, off, recs = data[:off], off + 4, []
    for _ in range(count):
        idx, gen, ino, kind, flags, htype, hlen = struct.unpack_from("<IIQBBiI", data, off)
        fh = data[off + 26:off + 26 + hlen]
        recs.append([idx, gen, ino, kind, flags, htype, hlen, fh])
        off += 26 + hlen
    assert off == len(data) - 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]
    return head, recs


def build_table(head, recs):
    body = head + struct.pack("<I", len(recs)) + b"".join(
        struct.pack("<IIQBBiI", *r[:7]) + r[7] for r in recs)
    return body + hashlib.sha256(body).digest()


def with_recs(change):
    """A table whose checksum is right but whose records were changed."""
    def damage(data):
        head, recs = parse_table(data)
        change(recs)
        return build_table(head, recs)
    return damage


DAMAGE = {
    "byte flipped": lambda d: d[:len(d) // 2] + bytes([d[len(d) // 2] ^ 1]) + d[len(d) // 2 + 1:],
    "truncated": lambda d: d[:-40],
    "empty": lambda d: b"",
    "other version": lambda d: d.replace(b"binvfs nodeids 1\n", b"binvfs nodeids 9\n", 1),
    "index 0": with_recs(lambda r: r[0].__setitem__(0, 0)),
    "index 1 (the root)": with_recs(lambda r: r[0].__setitem__(0, 1)),
    "index beyond the table": with_recs(lambda r: r[0].__setitem__(0, 1 << 28)),
    "one index twice": with_recs(lambda r: r[1].__setitem__(0, r[0][0])),
    "generation 0": with_recs(lambda r: r[0].__setitem__(1, 0)),
    "unknown kind": with_recs(lambda r: r[0].__setitem__(3, ord("s"))),
    "unknown flag": with_recs(lambda r: r[0].__setitem__(4, 6)),
    "handle longer than the file": with_recs(lambda r: r[0].__setitem__(6, 100)),
    "handle too long": with_recs(lambda r: (r[0].__setitem__(6, 129),
                                            r[0].__setitem__(7, b"\0" * 129))),
    "empty handle": with_recs(lambda r: (r[0].__setitem__(6, 0), r[0].__setitem__(7, b""))),
    "count beyond the records": lambda d: count_plus_one(d),
}


def count_plus_one(data):
    head, recs = parse_table(data)
    body = build_table(head, recs)[:-32]
    body = head + struct.pack("<I", len(recs) + 1) + body[len(head) + 4:]
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("damage", sorted(DAMAGE) + ["another SOURCE", "mode 0644", "a fifo"])
def test_damaged_or_foreign_table_is_ignored(binary, workdir, damage):
    """The table is never trusted: a damaged one, one of another SOURCE, one that is not the
    daemon's own file are ignored with one log line; every old handle is then stale, and the
    mount works (ASan build: clean)."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    try:
        os.mkdir(m.p("d"))
        write(m.p("f"), "f\n")
        write(m.p("d", "g"), "g\n")
        hs = [handle_of(m.p("f")), handle_of(m.p("d")), handle_of(m.p("d", "g"))]
    finally:
        m.stop()
    with open(table(src), "rb") as f:
        data = f.read()
    if damage == "another SOURCE":  # a store copied over: its table names the other one
        other = os.path.join(workdir, "other")
        os.mkdir(other)
        o = Mount(binary, other).start()
        try:
            write(o.p("f"), "o\n")
        finally:
            o.stop()
        shutil.copy(table(other), table(src))
    elif damage == "mode 0644":
        os.chmod(table(src), 0o644)
    elif damage == "a fifo":
        os.unlink(table(src))
        os.mkfifo(table(src), 0o600)
    else:
        with open(table(src), "wb") as f:
            f.write(DAMAGE[damage](data))
    m = Mount(binary, src).start()
    try:
        assert len(ignored_lines(m)) == 1, m.logtext()
        forget_all()
        for h in hs:
            assert stale(read_by, m.path, h)
        assert_forged_stale(m.path, hs)
        assert read(m.p("f")) == b"f\n" and os.listdir(m.p("d")) == ["g"]
        assert m.proc.poll() is None
    finally:
        m.stop()
    # the damaged table is gone; this mount's own took its place
    parse_table(open(table(src), "rb").read())


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
