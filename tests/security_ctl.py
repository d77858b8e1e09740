"""Security of binvfsctl run as root on trees that other users write (issue 18, points 4, 7, 8).

- root's commands act on the file named, never through a symlink or on a FIFO that a user put
  at the name or on the way to it, and never block: rollback racing symlink and FIFO swaps,
  and log / diff / prune / rollback through a symlinked directory;
- names are data: a running program whose name holds a newline, a shell command and terminal
  escapes reaches neither the terminal raw (`outdated`), nor sh (`restart --dry-run` is a
  script), nor the daemon's log as a forged line;
- a hostile ELF (20,000 note headers) costs `log` milliseconds, not seconds.

The attackers are real unprivileged users (the `team` fixture)."""
import json
import os
import resource
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import ctl_path, program
from util import as_actor, open_world, read, write

SECRET = b"root's own file, outside the mount\n"


def user_dir(m, actor, name, mode=0o755):
    """A directory of actor's in the mount root."""
    path = m.p(name)
    os.mkdir(path)
    os.chown(path, actor.uid, actor.gid)
    os.chmod(path, mode)
    return path


def outside_secret(workdir):
    d = os.path.join(workdir, "outside")
    os.mkdir(d)
    path = os.path.join(d, "secret")
    write(path, SECRET, 0o644)
    return path


def ctl_run(binary, *args, timeout=10):
    """binvfsctl as root; (exit status, stdout, stderr) as bytes; None if it did not finish
    within timeout s (killed)."""
    try:
        r = subprocess.run([ctl_path(binary), *args], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    for word in (b"AddressSanitizer", b"LeakSanitizer", b"runtime error"):
        assert word not in r.stderr, r.stderr
    return r.returncode, r.stdout, r.stderr


def versions_as(actor, path, texts):
    """actor writes each of texts to path in turn (each write after the first keeps a
    version)."""
    def fn():
        for t in texts:
            with open(path, "wb") as f:
                f.write(t)
    as_actor(actor, fn)


# ---------------------------------------------------------------------------------------------
# point 4: rollback, log, diff, prune on a hostile tree

def test_symlinks_and_fifos_at_the_name_or_on_the_way_are_refused(mounter, workdir, team,
                                                                  binary):
    """mallory points a directory of hers at alice's (inside the mount) and at a directory
    outside the mount, and puts a symlink and a FIFO where a file with versions was: root's
    rollback, log, diff and prune through those paths are refused with a clear error, in
    bounded time, and nothing of alice's or outside changes."""
    open_world(workdir)
    m = mounter(opts=("nosync", "keep=0"))
    secret = outside_secret(workdir)
    alice, mallory = team["alice"], team["mallory"]
    user_dir(m, alice, "alice")
    mal = user_dir(m, mallory, "mal")
    notes = m.p("alice", "notes")
    versions_as(alice, notes, [b"alice 1\n", b"alice 2\n", b"alice 3\n"])
    before = sorted(os.listdir(m.p(".versions", "alice")))
    assert before == ["notes.~1~", "notes.~2~"]

    def plant():
        os.symlink(m.p("alice"), os.path.join(mal, "in"))
        os.symlink(os.path.dirname(secret), os.path.join(mal, "out"))
        for name, kind in (("lnk", "symlink"), ("fifo", "fifo")):
            p = os.path.join(mal, name)
            for t in (b"PAYLOAD\n", b"decoy\n"):
                with open(p, "wb") as f:
                    f.write(t)
            os.unlink(p)
            if kind == "symlink":
                os.symlink(secret, p)
            else:
                os.mkfifo(p)
    as_actor(mallory, plant)

    refusals = []
    for via in ("in", "out"):
        path = os.path.join(mal, via, "notes")
        for args in (("rollback", path, "1"), ("log", path), ("diff", path),
                     ("prune", "--keep", "0", path),
                     ("prune", "--keep", "0", os.path.join(mal, via))):
            r = ctl_run(binary, *args)
            assert r is not None, f"{args} blocked"
            rc, out, err = r
            assert rc == 1 and out == b"", (args, rc, out, err)
            refusals.append(err)
    for name in ("lnk", "fifo"):
        path = os.path.join(mal, name)
        for args in (("rollback", path, "1"), ("log", path), ("diff", path, "1", "2")):
            r = ctl_run(binary, *args)
            assert r is not None, f"{args} blocked on mallory's {name}"
            rc, out, err = r
            assert rc == 1 and out == b"", (args, rc, out, err)
            refusals.append(err)
    for err in refusals:
        assert err.startswith(b"binvfsctl: ") and err.count(b"\n") == 1, err
        assert (b"refused" in err or b"not in a binvfs mount" in err), err
    # nothing of alice's, nothing outside
    assert read(notes) == b"alice 3\n"
    assert sorted(os.listdir(m.p(".versions", "alice"))) == before
    assert read(secret) == SECRET
    assert os.listdir(os.path.dirname(secret)) == ["secret"]


SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
os.chdir(sys.argv[1])
end = time.monotonic() + float(sys.argv[3])
print("go", flush=True)
while time.monotonic() < end and not os.path.exists("stop"):
    if libc.renameat2(-100, b"app", -100, sys.argv[2].encode(), RENAME_EXCHANGE) != 0:
        sys.exit("renameat2: errno %d" % ctypes.get_errno())
"""


def race_rollbacks(m, workdir, team, binary, procs, kind):
    """mallory swaps her file mal/app with a symlink to root's file outside the mount, or
    with a FIFO, as fast as she can (renameat2 RENAME_EXCHANGE, no version made), while root
    rolls mal/app back again and again (to versions 1 and 2 in turn: each one writes). Root
    must never write outside the mount, never block, and refuse clearly when it sees the
    swap."""
    secret = outside_secret(workdir)
    mallory = team["mallory"]
    mal = user_dir(m, mallory, "mal")
    app = os.path.join(mal, "app")
    versions_as(mallory, app, [b"PAYLOAD 1\n", b"PAYLOAD 2\n", b"decoy\n"])

    def plant():
        if kind == "symlink":
            os.symlink(secret, os.path.join(mal, "alt"))
        else:
            os.mkfifo(os.path.join(mal, "alt"))
    as_actor(mallory, plant)
    swapper = procs.start(["/usr/bin/python3", "-c", SWAPPER, mal, "alt", "20"],
                          stdout=subprocess.PIPE, **mallory.popen_kw())
    assert swapper.stdout.readline() == b"go\n"
    outcomes = {"rolled back": 0, "refused": 0}
    end = time.monotonic() + 6
    try:
        for i in range(60):
            if time.monotonic() > end:
                break
            t0 = time.monotonic()
            r = ctl_run(binary, "rollback", app, str(1 + i % 2), timeout=5)
            assert r is not None, f"rollback blocked (mallory's {kind} swap, run {i})"
            assert time.monotonic() - t0 < 5
            rc, out, err = r
            if rc == 0:
                outcomes["rolled back"] += 1
            else:
                assert err.startswith(b"binvfsctl: ") and err.count(b"\n") == 1, err
                assert (b"refused" in err or b"not a regular file" in err
                        or b"o such file" in err), err
                outcomes["refused"] += 1
            assert read(secret) == SECRET, f"root wrote through mallory's symlink (run {i})"
    finally:
        write(os.path.join(mal, "stop"), "")
        swapper.wait(timeout=30)
    assert swapper.returncode == 0
    assert read(secret) == SECRET
    assert os.stat(secret).st_mode & 0o7777 == 0o644
    assert outcomes["refused"] > 0, outcomes  # the swap was seen
    return outcomes


def test_rollback_racing_a_symlink_swap_never_writes_outside(mounter, workdir, team, binary,
                                                             procs):
    open_world(workdir)
    m = mounter(opts=("nosync", "keep=0"))
    race_rollbacks(m, workdir, team, binary, procs, "symlink")


def test_rollback_racing_a_fifo_swap_never_blocks(mounter, workdir, team, binary, procs):
    open_world(workdir)
    m = mounter(opts=("nosync", "keep=0"))
    race_rollbacks(m, workdir, team, binary, procs, "fifo")


# ---------------------------------------------------------------------------------------------
# point 7: names are data

HOSTILE = "y\ntouch PWNED #\x1b]0;title\x07"


def hostile_running(mnt, workdir, team, cbuild, procs):
    """mallory's program mal/HOSTILE, started from the mount as mallory, then replaced by her:
    (its path, the process, which now runs a replaced version)."""
    open_world(workdir)
    mallory = team["mallory"]
    mal = user_dir(mnt, mallory, "mal")
    progs = os.path.join(workdir, "progs")
    os.mkdir(progs, 0o755)
    for v in (1, 2):
        write(os.path.join(progs, f"p{v}"), read(program(cbuild, v)), 0o755)
    path = os.path.join(mal, HOSTILE)

    def install(v):
        def fn():
            with open(path, "wb") as f:
                f.write(read(os.path.join(progs, f"p{v}")))
            os.chmod(path, 0o755)
        as_actor(mallory, fn)

    install(1)
    p = procs.start([path, "60"], stdout=subprocess.PIPE, text=True, **mallory.popen_kw())
    assert p.stdout.readline() == "version 1\n"
    install(2)
    return path, p


def test_hostile_program_name_reaches_the_terminal_escaped(mnt, workdir, team, binary, cbuild,
                                                          procs):
    """`outdated` (and its COMMAND column, the process's own name) print the name as data:
    one row, no raw ESC, BEL or newline; --json stays exact."""
    path, p = hostile_running(mnt, workdir, team, cbuild, procs)
    rc, out, err = ctl_run(binary, "outdated", mnt.path)
    assert rc == 0, err
    lines = out.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3, out  # the header, one row
    assert str(p.pid).encode() in lines[1]
    for raw in (b"\x1b", b"\x07", b"\r"):
        assert raw not in out, out
    assert b"y\\ntouch PWNED #\\x1b]0;title\\a" in lines[1], out  # binvfsctl(8)
    assert b" y\\ntouch PWNED # " in lines[1], out  # COMMAND: the 15 bytes of comm
    rc, out, err = ctl_run(binary, "outdated", "--units", mnt.path)
    assert rc == 0 and b"\x1b" not in out and out.count(b"\n") == 2, out
    rc, out, err = ctl_run(binary, "--json", "outdated", mnt.path)
    rows = json.loads(out)
    assert [(r["file"], r["command"]) for r in rows if r["pid"] == p.pid] == [
        (path, HOSTILE[:15])]


def test_hostile_program_name_runs_nothing_from_restart_dry_run(mnt, workdir, team, binary,
                                                                cbuild, procs):
    """restart --dry-run prints a script (binvfsctl(8)); run by sh as root, the name injects
    no command."""
    path, p = hostile_running(mnt, workdir, team, cbuild, procs)
    rc, out, err = ctl_run(binary, "restart", "--dry-run", mnt.path)
    assert rc == 0, err
    assert b"PWNED" in out and str(p.pid).encode() in out, out  # the process is listed
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["sh"], input=out, cwd=tmp, capture_output=True, timeout=30)
        assert os.listdir(tmp) == [], "sh ran a command injected by a file name"
    for raw in (b"\x1b", b"\x07", b"\r"):
        assert raw not in out, out
    assert out.count(b"\n") == 1, out  # one comment line: the process not restarted


def test_hostile_program_name_forges_no_log_line(mnt, workdir, team, cbuild, procs):
    """The daemon logs the publish of mallory's file by its name: one line, escaped."""
    hostile_running(mnt, workdir, team, cbuild, procs)
    text = mnt.logtext()
    assert "publish" in text and "PWNED" in text, text
    for raw in ("\x1b", "\x07", "\r"):
        assert raw not in text, repr(text)
    for line in text.splitlines():
        assert line.startswith("binvfs: "), repr(line)
    assert any("publish mal/y\\ntouch PWNED #\\x1b]0;title\\x07" in line or
               "publish y\\ntouch PWNED #\\x1b]0;title\\x07" in line
               for line in text.splitlines()), text


# ---------------------------------------------------------------------------------------------
# point 8: bounded ELF parsing

def hostile_elf(nheaders=20000, notes=1 << 20):
    """An ELF64 file with nheaders PT_NOTE program headers, each pointing at the same `notes`
    bytes of empty notes (no build-id): a naive reader reads and walks them nheaders times."""
    phoff, phentsize = 64, 56
    notes_off = phoff + nheaders * phentsize
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize,
                               nheaders, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, notes_off, 0, 0, notes, notes, 4)
    return ehdr + phdr * nheaders + bytes(notes)


def test_hostile_elf_costs_log_milliseconds(mnt, workdir, team, binary):
    open_world(workdir)
    mallory = team["mallory"]
    mal = user_dir(mnt, mallory, "mal")
    elf = hostile_elf()
    path = os.path.join(mal, "tool")
    versions_as(mallory, path, [elf, elf + b"\0"])  # two versions, both hostile

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = ctl_run(binary, "log", path, timeout=60)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r is not None, "binvfsctl log ran for more than 60 s"
    rc, out, err = r
    assert rc == 0, err
    assert out.count(b"\n") == 4, out  # the title, the header, two versions
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # bounded: well under a second of CPU (unbounded, this file took seconds per version)
    assert cpu < 1.0, f"binvfsctl log used {cpu:.2f} s of CPU ({wall:.2f} s)"
