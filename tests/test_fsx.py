"""fsx-style integrity: a random sequence of operations checked op by op against a model of
binvfs's promises (copy-on-write until close, publish at close, versions numbered per path,
rm/rename keep versions). BINVFS_FSX_OPS sets the length, BINVFS_FSX_SEED replays a run."""
import mmap
import os
import random

import pytest

from util import outcome

OPS = int(os.environ.get("BINVFS_FSX_OPS", "100000"))
NAMES = ["a", "b", "c"]
MAXLEN = 64 * 1024


class Model:
    def __init__(self):
        self.current = {}   # name -> bytes (published)
        self.versions = {}  # name -> [(N, bytes)]
        self.handles = {}   # name -> [fd, staged bytes, staging (True) or created in place]

    def keep(self, name, data):
        vs = self.versions.setdefault(name, [])
        vs.append((vs[-1][0] + 1 if vs else 1, data))

    def publish(self, name, data):
        if name not in self.current:
            self.keep(name, data)  # the name was removed meanwhile: kept as a version
        elif self.current[name] != data:
            self.keep(name, self.current[name])
            self.current[name] = data


def apply(buf, off, data):
    if off > len(buf):
        buf = buf + bytes(off - len(buf))
    return buf[:off] + data + buf[off + len(data):]


def test_fsx(mounter, binary):
    seed = int(os.environ.get("BINVFS_FSX_SEED", random.randrange(1 << 30)))
    ops = OPS if "asan" not in binary else OPS // 5  # the sanitizer build is slower
    print(f"fsx seed {seed}, {ops} ops (replay: BINVFS_FSX_SEED={seed})")
    rnd = random.Random(seed)
    m = mounter(opts=("nosync", "keep=0"))
    md = Model()
    p = m.p
    counts = {}

    def check_read(name):
        want = md.current.get(name)
        if want is None:
            assert not os.path.exists(p(name)), name
            return
        with open(p(name), "rb") as f:
            assert f.read() == want, name

    try:
        for i in range(ops):
            name = rnd.choice(NAMES)
            h = md.handles.get(name)
            op = rnd.choice(["open", "write", "write", "write", "truncate", "close", "read",
                             "mmap", "rename", "unlink", "version"])
            counts[op] = counts.get(op, 0) + 1
            ctx = f"op {i} {op} {name} (seed {seed})"
            if op == "open" and h is None:
                if name in md.current:
                    fd = os.open(p(name), os.O_RDWR)
                    md.handles[name] = [fd, md.current[name], True]
                else:
                    fd = os.open(p(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                    md.current[name] = b""
                    md.handles[name] = [fd, b"", False]
            elif op == "write" and h is not None:
                off = rnd.randrange(0, MAXLEN)
                data = rnd.randbytes(rnd.randrange(1, 4096))
                assert os.pwrite(h[0], data, off) == len(data), ctx
                h[1] = apply(h[1], off, data)
                if not h[2]:
                    md.current[name] = h[1]
            elif op == "truncate" and h is not None:
                size = rnd.randrange(0, MAXLEN)
                os.ftruncate(h[0], size)
                h[1] = h[1][:size] + bytes(max(0, size - len(h[1])))
                if not h[2]:
                    md.current[name] = h[1]
            elif op == "close" and h is not None:
                # the writer reads its own staging copy through its fd
                assert os.pread(h[0], MAXLEN * 2, 0) == h[1], ctx
                os.close(h[0])
                del md.handles[name]
                if h[2]:
                    md.publish(name, h[1])
            elif op == "read":
                check_read(name)
            elif op == "mmap" and md.current.get(name):
                with open(p(name), "rb") as f:
                    with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                        assert mm[:] == md.current[name], ctx
            elif op == "rename" and name in md.current and not md.handles:
                dst = rnd.choice([n for n in NAMES if n != name])
                os.rename(p(name), p(dst))
                if dst in md.current:
                    md.keep(dst, md.current[dst])
                md.current[dst] = md.current.pop(name)
            elif op == "unlink" and name in md.current and h is None:
                os.unlink(p(name))
                md.keep(name, md.current.pop(name))
            elif op == "version" and md.versions.get(name):
                n, data = rnd.choice(md.versions[name])
                with open(p(".versions", f"{name}.~{n}~"), "rb") as f:
                    assert f.read() == data, ctx
            if i % 1000 == 0:
                for n in NAMES:
                    if n not in md.handles or md.handles[n][2]:
                        check_read(n)
        for name, h in list(md.handles.items()):  # the last closes publish too
            os.close(h[0])
            del md.handles[name]
            if h[2]:
                md.publish(name, h[1])
    finally:
        for h in md.handles.values():
            os.close(h[0])
    for n in NAMES:
        listed = sorted(int(v.split(".~")[1][:-1]) for v in os.listdir(p(".versions"))
                        if v.startswith(n + ".~"))
        assert listed == [v[0] for v in md.versions.get(n, [])], n
    print("fsx ops:", counts)


DIRECT_OPS = int(os.environ.get("BINVFS_FSX_DIRECT_OPS", "4000"))
BS = 4096  # O_DIRECT I/O in whole blocks from page-aligned buffers, as fsx -Z does
MAXBLOCKS = 32


@pytest.mark.parametrize("pt", ["auto", "off"])  # I/O by the kernel, or through the daemon
def test_fsx_o_direct(mounter, workdir, binary, pt):
    """The same random sequence of O_DIRECT opens (new and existing files, with and without
    O_TRUNC), writes and reads at random block offsets, ftruncates, fsyncs and closes, run on a
    plain directory and in the mount: every result must be the same. Reads through a writer's
    own fd see its writes; after each close, and for readers while no writer has the file
    open, both trees hold the same bytes."""
    seed = int(os.environ.get("BINVFS_FSX_SEED", random.randrange(1 << 30)))
    ops = DIRECT_OPS if "asan" not in binary else DIRECT_OPS // 4
    print(f"fsx O_DIRECT seed {seed}, {ops} ops (replay: BINVFS_FSX_SEED={seed})")
    rnd = random.Random(seed)
    m = mounter(opts=("nosync", "keep=0", "passthrough=" + pt))
    nat = os.path.join(workdir, "native")
    os.mkdir(nat)
    roots = (nat, m.p())
    wbuf = mmap.mmap(-1, MAXBLOCKS * BS)
    rbuf = mmap.mmap(-1, MAXBLOCKS * BS)
    fds = {}  # name -> (native fd, mount fd)
    counts = {}

    def whole(path, direct):
        if not direct:
            with open(path, "rb") as f:
                return f.read()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            out, off = b"", 0
            while True:
                n = os.preadv(fd, [rbuf], off)
                out += rbuf[:n]
                off += n
                if n < len(rbuf):
                    return out
        finally:
            os.close(fd)

    for name in NAMES[:2]:  # existing files: their write opens get staging copies
        data = rnd.randbytes(rnd.randrange(0, MAXBLOCKS * BS))
        for r in roots:
            with open(os.path.join(r, name), "wb") as f:
                f.write(data)
    # and one written by the open that creates it (dd oflag=direct into a new file)
    wbuf[:2 * BS] = rnd.randbytes(2 * BS)
    for r in roots:
        fd = os.open(os.path.join(r, NAMES[2]), os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            assert outcome(os.pwrite, fd, memoryview(wbuf)[:2 * BS], 3 * BS) == ("ok", 2 * BS)
        finally:
            os.close(fd)
    try:
        for i in range(ops):
            name = rnd.choice(NAMES)
            op = rnd.choice(["open", "write", "write", "write", "read", "read", "truncate",
                             "fsync", "close", "readfile"])
            ctx = f"op {i} {op} {name} (seed {seed})"
            if op == "open" and name not in fds:
                flags = os.O_RDWR | os.O_DIRECT | os.O_CREAT
                if rnd.random() < 0.2:
                    flags |= os.O_TRUNC
                got = [outcome(os.open, os.path.join(r, name), flags, 0o644) for r in roots]
                assert [g[0] for g in got] == ["ok", "ok"], (ctx, got)
                fds[name] = (got[0][1], got[1][1])
            elif op == "write" and name in fds:
                off = rnd.randrange(MAXBLOCKS) * BS
                n = rnd.randrange(1, MAXBLOCKS // 4) * BS
                wbuf[:n] = rnd.randbytes(n)
                got = [outcome(os.pwrite, fd, memoryview(wbuf)[:n], off) for fd in fds[name]]
                assert got[0] == got[1] == ("ok", n), (ctx, got)
            elif op == "read" and name in fds:
                off = rnd.randrange(MAXBLOCKS + 2) * BS
                n = rnd.randrange(1, MAXBLOCKS) * BS
                got = []
                for fd in fds[name]:
                    r = outcome(os.preadv, fd, [memoryview(rbuf)[:n]], off)
                    got.append((r, rbuf[:r[1]] if r[0] == "ok" else None))
                assert got[0] == got[1], ctx
            elif op == "truncate" and name in fds:
                size = rnd.randrange(MAXBLOCKS + 1) * BS
                got = [outcome(os.ftruncate, fd, size) for fd in fds[name]]
                assert got[0] == got[1], (ctx, got)
            elif op == "fsync" and name in fds:
                got = [outcome(os.fsync, fd) for fd in fds[name]]
                assert got[0] == got[1], (ctx, got)
            elif op == "close" and name in fds:
                for fd in fds.pop(name):
                    os.close(fd)
                got = [whole(os.path.join(r, name), False) for r in roots]
                assert got[0] == got[1], ctx
            elif op == "readfile" and name not in fds:
                got = [outcome(whole, os.path.join(r, name), True) for r in roots]
                assert got[0] == got[1], ctx
            else:
                continue
            counts[op] = counts.get(op, 0) + 1
    finally:
        for pair in fds.values():
            for fd in pair:
                os.close(fd)
    for name in NAMES:
        got = [outcome(whole, os.path.join(r, name), True) for r in roots]
        assert got[0] == got[1], name
    print("fsx O_DIRECT ops:", counts)
    assert counts.get("open", 0) > 10 and counts.get("write", 0) > 100, counts
