"""Promise: a version costs the space of what changed.

A writer's staging copy keeps the holes of a sparse file (only its data ranges are copied,
found with SEEK_DATA/SEEK_HOLE), and where the filesystem can clone (xfs with reflink) the copy
shares every extent of the version it starts from. Each test runs on a loop-mounted
filesystem of its own, so the space it measures is nobody else's.
"""
import os

import pytest

from util import read, run, versions

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def sparse(path, size, chunks):
    """A file of `size` bytes holding only `chunks` ({offset: bytes}); the rest are holes."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for off, data in chunks.items():
            os.pwrite(fd, data, off)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def used(path):
    """Bytes in use on path's filesystem, after writeback."""
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def data_ranges(path):
    """The data ranges of path as SEEK_DATA/SEEK_HOLE report them (through the mount: the
    daemon's lseek)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, out = os.fstat(fd).st_size, 0, []
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
        return out
    finally:
        os.close(fd)


def pread(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def dd_patch(path, off, data):
    r = run(["dd", "of=" + path, "bs=4096", f"seek={off // 4096}", "conv=notrunc",
             "status=none"], input=data)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", ["ext4", "xfs"])
def test_patch_of_a_sparse_gib_costs_what_changed(loopfs, kind):
    """4 KiB written into a 1 GiB file holding 8 KiB of data: the new version holds ~12 KiB
    (ext4) or shares all but the patched block with the old one (xfs), never 1 GiB."""
    chunks = {0: b"a" * 4096, 512 * MiB: b"b" * 4096}
    m = loopfs(kind, 64 if kind == "ext4" else 512,
               setup=lambda s: sparse(os.path.join(s, "f"), GiB, chunks))
    before = used(m.src)
    dd_patch(m.p("f"), 4000 * KiB, "c" * 4096)
    growth = used(m.src) - before
    assert growth < 256 * KiB, f"store grew by {growth // KiB} KiB"

    st = os.stat(m.p("f"))
    assert st.st_size == GiB and st.st_blocks * 512 <= 64 * KiB
    ranges = data_ranges(m.p("f"))
    assert sum(e - s for s, e in ranges) <= 64 * KiB, ranges
    assert pread(m.p("f"), 0, 4096) == b"a" * 4096
    assert pread(m.p("f"), 4000 * KiB, 4096) == b"c" * 4096
    assert pread(m.p("f"), 512 * MiB, 4096) == b"b" * 4096
    assert pread(m.p("f"), 100 * MiB, 4096) == bytes(4096)
    assert versions(m) == ["f.~1~"]
    old = m.p(".versions", "f.~1~")
    assert pread(old, 4000 * KiB, 4096) == bytes(4096)
    assert pread(old, 512 * MiB, 4096) == b"b" * 4096


def test_patch_of_a_dense_file_on_xfs_shares_its_extents(loopfs):
    """Where the filesystem can clone, the staging copy shares the version's extents: 4 KiB
    written into a 64 MiB file of data costs about a block, not 64 MiB."""
    data = os.urandom(64 * MiB)
    m = loopfs("xfs", 512, setup=lambda s: sparse(os.path.join(s, "f"), len(data), {0: data}))
    before = used(m.src)
    dd_patch(m.p("f"), 8 * MiB, "c" * 4096)
    growth = used(m.src) - before
    assert growth < 1 * MiB, f"store grew by {growth // KiB} KiB"
    assert read(m.p("f")) == data[:8 * MiB] + b"c" * 4096 + data[8 * MiB + 4096:]
    assert read(m.p(".versions", "f.~1~")) == data


def test_compare_of_sparse_files_sees_data_written_into_a_hole(loopfs):
    """The identical-content check skips only what is a hole in both files: zeros written into
    a hole make no version, other bytes there are published."""
    chunks = {0: b"a" * 4096, 32 * MiB: b"b" * 4096}
    m = loopfs("ext4", setup=lambda s: sparse(os.path.join(s, "f"), 64 * MiB, chunks))
    dd_patch(m.p("f"), 8 * MiB, "\0" * 4096)
    dd_patch(m.p("f"), 32 * MiB, "b" * 4096)
    assert versions(m) == [], "same bytes made a version"

    dd_patch(m.p("f"), 8 * MiB, "x" * 4096)
    assert versions(m) == ["f.~1~"]
    assert pread(m.p("f"), 8 * MiB, 4096) == b"x" * 4096
    assert read(m.p(".versions", "f.~1~")) == read(m.p("f")).replace(b"x" * 4096, bytes(4096))
