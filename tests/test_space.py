"""Promise: a version costs the space of what changed, and yields it to current files.

A writer's staging copy keeps the holes of a sparse file (only its data ranges are copied,
found with SEEK_DATA/SEEK_HOLE), and where the filesystem can clone (xfs with reflink) the copy
shares every extent of the version it starts from. On a full filesystem, old versions that
nobody uses are removed, oldest first across the store, so that `rm` frees space, a deploy
succeeds, and no current file or kept version is ever damaged. Each test runs on a
loop-mounted filesystem of its own, so the space it measures is nobody else's.
"""
import errno
import os
import re
import time

import pytest

from util import cp, read, run, sha, versions, wait_for, write

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
    if isinstance(data, str):
        data = data.encode()
    r = run(["dd", "of=" + path, "bs=4096", f"seek={off // 4096}", "conv=notrunc",
             "status=none"], text=False, input=data)
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


def daemon_rchar(m):
    with open(f"/proc/{m.proc.pid}/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_compare_of_a_clone_skips_the_blocks_both_share(loopfs):
    """Same bytes written back into a 64 MiB file of data on xfs: no version, and the
    identical-content check reads only what the clone does not share with the version (the
    daemon's read bytes), not 2 x 64 MiB."""
    data = os.urandom(64 * MiB)
    m = loopfs("xfs", 512, setup=lambda s: sparse(os.path.join(s, "f"), len(data), {0: data}))
    before = daemon_rchar(m)
    dd_patch(m.p("f"), 60 * MiB, data[60 * MiB:60 * MiB + 4096])
    read_by_daemon = daemon_rchar(m) - before
    assert versions(m) == []
    assert read_by_daemon < 16 * MiB, f"the daemon read {read_by_daemon // KiB} KiB"
    dd_patch(m.p("f"), 60 * MiB, "x" * 4096)  # and a real change is seen
    assert versions(m) == ["f.~1~"]
    assert read(m.p("f"))[60 * MiB:60 * MiB + 4096] == b"x" * 4096


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


def fill(fsdir):
    """Fill fsdir's filesystem from outside the mount (another user of the disk) until
    ENOSPC; returns the filler's path."""
    path = os.path.join(fsdir, "filler%d" % len(os.listdir(fsdir)))
    chunk = b"\xff" * (64 * KiB)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        try:
            while True:
                f.write(b"\xff" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    # and the blocks kept for metadata: directories until mkdir fails too
    for i in range(100000):
        try:
            os.mkdir(f"{path}.d{i}")
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            break
    os.sync()
    return path


def wait_freed(path, before, want):
    """Space is freed once the kernel forgets the removed inode (asynchronous): wait for it."""
    deadline = time.monotonic() + 10
    while before - used(path) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return before - used(path)


def check_versions_complete(m, contents, sub=""):
    """Every version left is byte for byte one of the contents that were ever published."""
    known = {sha(c) for c in contents}
    for v in versions(m, sub):
        assert sha(read(m.p(".versions", sub, v))) in known, f"{v} is not a complete version"


def deployed(src, m, name, datas):
    """Publish datas one after the other at name through the mount."""
    for d in datas:
        tmp = os.path.join(os.path.dirname(m.src), "deploy.tmp")
        write(tmp, d, 0o755)
        cp(tmp, m.p(name))
        os.unlink(tmp)


def test_full_disk_rm_frees_and_deploy_succeeds(loopfs):
    """On a full ext4: rm of a 1 MiB file frees >= 1 MiB, a 4 MiB deploy over a binary
    succeeds, old versions go oldest first, nothing current is damaged, every version left is
    complete."""
    apps = [os.urandom(4 * MiB) for _ in range(5)]
    big, keep = os.urandom(1 * MiB), os.urandom(256 * KiB)
    m = loopfs("ext4", 64)
    fsdir = os.path.dirname(m.src)
    deployed(m.src, m, "app", apps[:4])  # app.~1~ .. app.~3~, 12 MiB of versions
    write(m.p("big"), big)
    write(m.p("keep"), keep)
    assert versions(m) == ["app.~1~", "app.~2~", "app.~3~"]

    fill(fsdir)
    before = used(fsdir)
    r = run(["rm", m.p("big")])
    assert r.returncode == 0, r.stderr
    freed = wait_freed(fsdir, before, MiB)
    print(f"full disk: rm of a 1 MiB file freed {freed // KiB} KiB")
    assert freed >= MiB, f"rm freed {freed // KiB} KiB"
    assert not os.path.exists(m.p("big"))

    fill(fsdir)
    new = os.path.join(os.path.dirname(fsdir), "app.new")
    write(new, apps[4], 0o755)
    r = run(["cp", new, m.p("app")])
    assert r.returncode == 0, r.stderr
    assert read(m.p("app")) == apps[4]
    assert read(m.p("keep")) == keep
    left = sorted((v for v in versions(m) if v.startswith("app.")),
                  key=lambda v: int(v.split("~")[1]))
    assert read(m.p(".versions", left[-1])) == apps[3]  # the replaced binary is kept
    pruned = re.findall(r"prune \.versions/(\S+): space for", m.logtext())
    assert pruned[:3] == ["app.~1~", "app.~2~", "app.~3~"], pruned  # oldest first
    check_versions_complete(m, apps + [big])
    assert "low on space" in m.logtext()


def test_rm_on_a_full_disk_without_versions_frees_its_file(loopfs):
    """Nothing older to remove: the rm goes without keeping a version, as natively."""
    data = os.urandom(2 * MiB)
    m = loopfs("ext4", 64)
    fsdir = os.path.dirname(m.src)
    write(m.p("f"), data)
    fill(fsdir)
    before = used(fsdir)
    r = run(["rm", m.p("f")])
    assert r.returncode == 0, r.stderr
    assert wait_freed(fsdir, before, 2 * MiB) >= 2 * MiB
    assert versions(m) == []
    assert "removed without keeping a version" in m.logtext()


def test_rm_never_fails_for_lack_of_space(loopfs):
    """reserve=0: versions are kept as long as they fit; when the link into .versions/ finds
    no space (a new mirror directory) and no version can yield any, rm still succeeds,
    without a version."""
    m = loopfs("ext4", 64, opts=("nosync", "reserve=0"))
    os.mkdir(m.p("lib"))
    write(m.p("lib", "a.so"), b"a" * 4096)
    write(m.p("b"), b"b" * 4096)
    write(m.p("c"), b"c" * 4096)
    fill(os.path.dirname(m.src))
    r = run(["rm", m.p("lib", "a.so")])
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(m.p("lib", "a.so"))
    r = run(["mv", m.p("b"), m.p("c")])
    assert r.returncode == 0, r.stderr
    assert read(m.p("c")) == b"b" * 4096
    log = m.logtext()
    assert "a.so: no space to keep the replaced file" in log, log
    assert not os.path.exists(m.p(".versions", "lib")) or versions(m, "lib") == []
    # a link into a directory block that has room needs no space: that version is kept
    assert read(m.p(".versions", "c.~1~")) == b"c" * 4096


def test_reserve_keeps_space_free_as_publishes_happen(loopfs):
    """reserve=40M on a 64 MiB filesystem: after each publish, unused old versions go, oldest
    first, until 40 MiB are free again (or only versions in use are left)."""
    apps = [os.urandom(4 * MiB) for _ in range(8)]
    m = loopfs("ext4", 64, opts=("nosync", "reserve=40M"))
    # logged after the mount is up: wait for it
    wait_for(lambda: "reserve=40960 KiB" in m.logtext(), what="the reserve log line")
    deployed(m.src, m, "app", apps)
    assert read(m.p("app")) == apps[-1]
    left = versions(m)
    assert 1 <= len(left) <= 4, left  # without the reserve: 7
    assert "app.~1~" not in left
    pruned = re.findall(r"prune \.versions/(\S+): space for the reserve", m.logtext())
    assert pruned == sorted(pruned, key=lambda v: int(v.split("~")[1])), pruned
    check_versions_complete(m, apps)
    st = os.statvfs(m.src)
    assert st.f_bavail * st.f_frsize >= 40 * MiB - 8 * MiB  # one version may be in use
