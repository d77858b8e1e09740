"""Locks are the file's, across every open of it, whatever nodeid each open has (issue 22,
xfstests generic/478).

A reader's open is on the version's nodeid, each writer's on a staging nodeid of its own, and
the kernel keeps locks per nodeid: before binvfs kept them itself (locks.c), two processes that
each opened a file O_RDWR both got a write lock. Each sequence runs on a plain directory and in
the mount, with real processes (`Locker`: one command per line, one answer per line), and the
answers must be the same; pids are compared as "whose": the holder the test named.
"""
import os
import signal
import select
import subprocess
import sys
import time

import pytest

CHILD = r'''
import errno, fcntl, os, signal, struct, sys

class Interrupted(Exception):
    pass

def onsig(s, f):
    raise Interrupted()

signal.signal(signal.SIGUSR1, onsig)  # Python's handlers are not SA_RESTART: EINTR
TYPES = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}
NAMES = {v: k for k, v in TYPES.items()}
OPS = {"setlk": fcntl.F_SETLK, "setlkw": fcntl.F_SETLKW, "getlk": fcntl.F_GETLK,
       "ofd_setlk": 37, "ofd_setlkw": 38, "ofd_getlk": 36}
FLAGS = {"r": os.O_RDONLY, "rw": os.O_RDWR, "rwc": os.O_RDWR | os.O_CREAT,
         "wt": os.O_WRONLY | os.O_TRUNC}
fds = {}
print("pid", os.getpid(), flush=True)
for line in sys.stdin:
    a = line.split()
    out = "ok"
    try:
        if a[0] == "open":                    # open FD PATH FLAGS
            fds[a[1]] = os.open(a[2], FLAGS[a[3]], 0o644)
        elif a[0] in OPS:                     # setlk FD TYPE START LEN
            fl = struct.pack("hhqqi4x", TYPES[a[2]], 0, int(a[3]), int(a[4]), 0)
            if a[0].endswith("setlkw"):
                print("sent", flush=True)
            r = struct.unpack("hhqqi4x", fcntl.fcntl(fds[a[1]], OPS[a[0]], fl))
            if a[0].endswith("getlk"):
                out = "u" if r[0] == fcntl.F_UNLCK else "%s %d %d %d" % (
                    NAMES[r[0]], r[2], r[3], r[4])
        elif a[0] == "flock":                 # flock FD ex|sh|un [nb]
            op = {"ex": fcntl.LOCK_EX, "sh": fcntl.LOCK_SH, "un": fcntl.LOCK_UN}[a[2]]
            if len(a) < 4 and op != fcntl.LOCK_UN:
                print("sent", flush=True)
            fcntl.flock(fds[a[1]], op | (fcntl.LOCK_NB if len(a) > 3 else 0))
        elif a[0] == "lockf":                 # lockf FD tlock|ulock (lockf(3))
            fcntl.lockf(fds[a[1]], fcntl.LOCK_EX | fcntl.LOCK_NB if a[2] == "tlock"
                        else fcntl.LOCK_UN)
        elif a[0] == "write":                 # write FD TEXT (at 0, truncating)
            os.ftruncate(fds[a[1]], 0)
            os.pwrite(fds[a[1]], (a[2] + "\n").encode(), 0)
        elif a[0] == "dupclose":              # dup FD, close the dup
            os.close(os.dup(fds[a[1]]))
        elif a[0] == "forkclose":             # a forked child closes its copy of FD
            pid = os.fork()
            if pid == 0:
                os.close(fds[a[1]])
                os._exit(0)
            os.waitpid(pid, 0)
        elif a[0] == "close":
            os.close(fds.pop(a[1]))
        elif a[0] == "exit":
            print("ok", flush=True)
            os._exit(0)
    except OSError as e:
        out = errno.errorcode[e.errno]
    except Interrupted:
        out = "EINTR"
    print(out, flush=True)
'''


class Locker:
    """A process that runs lock commands one by one (CHILD) and answers each with a line."""

    def __init__(self, procs):
        self.p = procs.start([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)
        self.pid = int(self.line(10).split()[1])

    def line(self, timeout):
        """The next line of output, or None if none comes within timeout seconds."""
        out = b""
        end = time.monotonic() + timeout
        while not out.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                return None
            c = self.p.stdout.read(1)
            if not c:
                return "EOF"
            out += c
        return out.decode().strip()

    def send(self, cmd):
        self.p.stdin.write((cmd + "\n").encode())

    def __call__(self, cmd, timeout=10):
        self.send(cmd)
        return self.line(timeout)

    def start_wait(self, cmd):
        """A command that blocks (setlkw, a blocking flock): sent, and seen to block."""
        self.send(cmd)
        assert self.line(10) == "sent"
        return self.line(0.3)  # None: still waiting

    def kill(self, sig):
        os.kill(self.pid, sig)

    def exit(self):
        """exit() with its files open; returns once the process is gone (its files closed)."""
        out = self("exit")
        self.p.wait(10)
        return out


def whose(answer, lockers):
    """A getlk answer with the pid replaced by the name of the locker it is."""
    if answer in (None, "u") or " " not in answer:
        return answer
    t, start, length, pid = answer.split()
    names = [n for n, lk in lockers.items() if lk.pid == int(pid)]
    return f"{t} {start} {length} {names[0] if names else pid}"


def on_both(both, procs, seq, setup=None):
    """seq(p, L) on the plain directory and in the mount; L(name) makes a Locker. The two
    results, which the caller compares."""
    nat, m = both
    res = []
    for p in (lambda *a: os.path.join(nat, *a), m.p):
        if setup:
            setup(p)
        lockers = {}

        def L(name):
            lockers[name] = Locker(procs)
            return lockers[name]

        res.append(seq(p, L, lambda a: whose(a, lockers)))
        for lk in lockers.values():
            if lk.p.poll() is None:
                lk.p.kill()
                lk.p.wait(10)
    return res


def existing(p):
    """A file that exists before the test: in the mount every write open of it gets a staging
    nodeid of its own (a new file's creator would share its nodeid with those who join it)."""
    with open(p("f"), "w") as f:
        f.write("data\n")


def same(both, procs, seq, setup=existing):
    nat, mnt = on_both(both, procs, seq, setup)
    assert mnt == nat
    return nat


def test_write_lock_excludes_a_second_write_open(both, procs):
    """Two O_RDWR opens: the second gets EAGAIN and F_GETLK names the first (generic/478)."""
    def seq(p, L, who):
        a, b = L("a"), L("b")
        return [a(f"open 1 {p('f')} rw"), b(f"open 1 {p('f')} rw"),
                a("setlk 1 w 0 0"), b("setlk 1 w 0 0"), b("lockf 1 tlock"),
                who(b("getlk 1 w 0 0")), who(b("getlk 1 r 100 10")),
                a("setlk 1 u 0 0"), b("setlk 1 w 0 10"), a("setlk 1 w 10 10"),
                who(a("getlk 1 r 5 10")), a("setlk 1 w 5 1"), b("lockf 1 ulock"),
                a("setlk 1 w 5 1")]
    assert same(both, procs, seq) == [
        "ok", "ok", "ok", "EAGAIN", "EAGAIN", "w 0 0 a", "w 0 0 a",
        "ok", "ok", "ok", "w 0 10 b", "EAGAIN", "ok", "ok"]


def test_ranges_split_and_merge(both, procs):
    """An owner's ranges: an unlock in the middle splits one, touching ones of one type merge,
    and a read lock inside a write lock makes three ranges."""
    def seq(p, L, who):
        a, b = L("a"), L("b")
        a(f"open 1 {p('f')} rw")
        b(f"open 1 {p('f')} rw")
        return [a("setlk 1 w 0 100"), a("setlk 1 u 40 20"), who(b("getlk 1 w 30 40")),
                who(b("getlk 1 w 45 10")), b("setlk 1 w 45 10"), b("setlk 1 u 45 10"),
                a("setlk 1 w 40 20"), who(b("getlk 1 w 99 1")), a("setlk 1 r 10 10"),
                b("setlk 1 r 12 5"), b("setlk 1 r 25 1"), who(b("getlk 1 r 0 0")),
                a("setlk 1 u 0 0"), b("setlk 1 w 0 0"), a("setlk 1 w 100 0"),
                who(a("getlk 1 w 1000 1"))]
    assert same(both, procs, seq) == [
        "ok", "ok", "w 0 40 a", "u", "ok", "ok", "ok", "w 0 100 a", "ok", "ok", "EAGAIN",
        "w 0 10 a", "ok", "ok", "EAGAIN", "w 0 0 b"]


def until_ok(x, cmd, timeout=10):
    """x(cmd) again until it says ok: for a lock that goes at a RELEASE, which the kernel sends
    a moment after close() returns (docs/semantics.md item 5); natively the first try."""
    end = time.monotonic() + timeout
    while True:
        got = x(cmd)
        if got == "ok" or time.monotonic() > end:
            return got
        time.sleep(0.01)


def test_read_lock_of_a_reader_and_write_lock_of_a_writer(both, procs):
    """A reader's read lock (the version's nodeid) blocks a writer's write lock (a staging
    nodeid) and the other way round; read locks share."""
    def seq(p, L, who):
        r, w = L("r"), L("w")
        out = [r(f"open 1 {p('f')} r"), w(f"open 1 {p('f')} rw"), r("setlk 1 r 0 0"),
               w("setlk 1 w 0 0"), who(w("getlk 1 w 0 0")), w("setlk 1 r 0 0"),
               # the reader's first lock goes at its RELEASE (docs/semantics.md)
               r("close 1"), until_ok(w, "setlk 1 w 0 0"), r(f"open 1 {p('f')} r"),
               r("setlk 1 r 0 0"), who(r("getlk 1 r 0 0")), w("close 1")]
        return out + [until_ok(r, "setlk 1 r 0 0")]
    assert same(both, procs, seq) == [
        "ok", "ok", "ok", "EAGAIN", "r 0 0 r", "ok", "ok", "ok", "ok", "EAGAIN", "w 0 0 w",
        "ok", "ok"]


def test_setlkw_waits_until_unlock_or_close(both, procs):
    def seq(p, L, who):
        a, b, c = L("a"), L("b"), L("c")
        for x in (a, b, c):
            x(f"open 1 {p('f')} rw")
        return [a("setlk 1 w 0 0"), b.start_wait("setlkw 1 w 0 0"), a("setlk 1 u 0 0"),
                b.line(10), c.start_wait("setlkw 1 r 0 1"), b("close 1"), c.line(10),
                who(a("getlk 1 w 0 0"))]
    assert same(both, procs, seq) == [
        "ok", None, "ok", "ok", None, "ok", "ok", "r 0 1 c"]


def test_setlkw_is_interrupted_by_a_signal(both, procs):
    """EINTR to the waiter (its handler is not SA_RESTART); the holder keeps its lock, and the
    interrupted waiter holds nothing."""
    def seq(p, L, who):
        a, b, c = L("a"), L("b"), L("c")
        for x in (a, b, c):
            x(f"open 1 {p('f')} rw")
        out = [a("setlk 1 w 0 0"), b.start_wait("setlkw 1 w 0 0")]
        b.kill(signal.SIGUSR1)
        return out + [b.line(10), who(c("getlk 1 w 0 0")), a("close 1"), who(c("getlk 1 w 0 0")),
                      c("setlk 1 w 0 0")]
    assert same(both, procs, seq) == ["ok", None, "EINTR", "w 0 0 a", "ok", "u", "ok"]


def test_locks_go_at_exit_and_at_sigkill(both, procs):
    """A holder's exit and its SIGKILL free its locks for a waiter; a waiter killed while it
    waits is never granted (no lock of a dead process stays)."""
    def seq(p, L, who):
        a, b, c, d = L("a"), L("b"), L("c"), L("d")
        for x in (a, b, c, d):
            x(f"open 1 {p('f')} rw")
        out = [a("setlk 1 w 0 0"), b.start_wait("setlkw 1 w 0 0"), a("exit"), b.line(10),
               c.start_wait("setlkw 1 w 0 0"), d.start_wait("setlkw 1 w 0 0")]
        d.kill(signal.SIGKILL)
        d.p.wait(10)
        b.kill(signal.SIGKILL)
        b.p.wait(10)
        out += [c.line(10), c("close 1")]
        e = L("e")
        e(f"open 1 {p('f')} rw")
        return out + [who(e("getlk 1 w 0 0")), e("setlk 1 w 0 0")]
    assert same(both, procs, seq) == ["ok", None, "ok", "ok", None, None, "ok", "ok", "u", "ok"]


def test_flock_across_opens(both, procs):
    """flock: one owner per open file description; readers' and writers' opens exclude each
    other; flock and fcntl locks are independent (Linux)."""
    def seq(p, L, who):
        a, b, r = L("a"), L("b"), L("r")
        out = [a(f"open 1 {p('f')} rw"), b(f"open 1 {p('f')} rw"), r(f"open 1 {p('f')} r"),
               a("flock 1 ex nb"), b("flock 1 ex nb"), b("flock 1 sh nb"), r("flock 1 sh nb"),
               b("setlk 1 w 0 0"), a("flock 1 sh nb"), r("flock 1 sh nb"),
               b("flock 1 ex nb"), b.start_wait("flock 1 ex")]
        out += [a("flock 1 un"), r("close 1")]
        return out + [b.line(10), a.start_wait("flock 1 sh"), b("close 1"), a.line(10)]
    assert same(both, procs, seq) == [
        "ok", "ok", "ok", "ok", "EAGAIN", "EAGAIN", "EAGAIN", "ok", "ok", "ok", "EAGAIN", None,
        "ok", "ok", "ok", None, "ok", "ok"]


def test_ofd_locks_follow_the_open_file_description(both, procs):
    """generic/478: an OFD lock stays through a dup's close and a forked child's close, and
    goes with the last close of its open file description; a POSIX lock goes at any close of
    the file by its process."""
    def seq(p, L, who):
        a, b = L("a"), L("b")
        out = [a(f"open 1 {p('f')} rw"), b(f"open 1 {p('f')} rw"),
               a("ofd_setlk 1 w 0 10"), a("setlk 1 w 20 10"), a("dupclose 1"),
               b("ofd_getlk 1 w 0 10").split()[0], who(b("getlk 1 w 20 10")),
               a("forkclose 1"), b("ofd_getlk 1 w 0 10").split()[0], a("close 1")]
        for _ in range(100):  # the last close: RELEASE comes after close() returned
            got = b("ofd_getlk 1 w 0 10")
            if got == "u":
                break
            time.sleep(0.02)
        return out + [got]
    assert same(both, procs, seq) == ["ok", "ok", "ok", "ok", "ok", "w", "u", "ok", "w", "ok",
                                      "u"]


def test_pid_file(both, procs):
    """The pid-file pattern over a stale pid file: lock, write the pid, keep it open; a second
    instance is refused and told who runs; after the first exits the second gets it."""
    def stale(p):
        with open(p("run.pid"), "w") as f:
            f.write("12345\n")

    def seq(p, L, who):
        a, b = L("a"), L("b")
        out = [a(f"open 1 {p('run.pid')} rwc"), a("lockf 1 tlock"), a(f"write 1 {a.pid}"),
               b(f"open 1 {p('run.pid')} rwc"), b("lockf 1 tlock"), who(b("getlk 1 w 0 0")),
               a.exit(), b("lockf 1 tlock")]
        with open(p("run.pid")) as f:
            return out + [f.read() == f"{a.pid}\n"]
    assert same(both, procs, seq, stale) == [
        "ok", "ok", "ok", "ok", "EAGAIN", "w 0 0 a", "ok", "ok", True]


def test_lock_stays_with_the_file_across_a_publish(both, procs):
    """A lock held while someone else writes the file (a publish in the mount: the name gets a
    new inode) still excludes those who open the file after: it is the file's, as natively
    the in-place write keeps the inode."""
    def seq(p, L, who):
        a, c, d = L("a"), L("c"), L("d")
        out = [a(f"open 1 {p('f')} rw"), a("setlk 1 w 0 0"),
               c(f"open 1 {p('f')} wt"), c("write 1 new"), c("close 1"),
               d(f"open 1 {p('f')} rw"), d("setlk 1 w 0 0"), who(d("getlk 1 r 0 0")),
               d(f"open 2 {p('f')} r"), who(d("getlk 2 r 0 0")), c(f"open 1 {p('f')} wt"),
               c("write 1 newer"), c("close 1"), a("setlk 1 u 0 0"), d("setlk 1 w 0 0"),
               who(a("getlk 1 w 0 0")), d("close 1"), a("setlk 1 w 0 0")]
        with open(p("f")) as f:
            return out + [f.read()]
    assert same(both, procs, seq) == [
        "ok", "ok", "ok", "ok", "ok", "ok", "EAGAIN", "w 0 0 a", "ok", "w 0 0 a", "ok", "ok",
        "ok", "ok", "ok", "w 0 0 d", "ok", "ok", "newer\n"]


def test_many_waiters_one_lock_at_a_time(both, procs):
    """Several SETLKW waiters on one range: each unlock grants exactly one of them."""
    def seq(p, L, who):
        a = L("a")
        ws = [L(f"w{i}") for i in range(4)]
        a(f"open 1 {p('f')} rw")
        a("setlk 1 w 0 0")
        for w in ws:
            w(f"open 1 {p('f')} rw")
            assert w.start_wait("setlkw 1 w 0 0") is None
        a("close 1")
        order = []
        pending = list(ws)
        while pending:
            got = [w for w in pending if w.line(0.2) == "ok"]
            assert len(got) == 1, "one waiter granted at a time"
            order.append(got[0])
            pending.remove(got[0])
            got[0]("close 1")
        return len(order)
    assert same(both, procs, seq) == 4
