"""A daemon that stops or dies never wedges the mount (docs/design.md §10, "Stopping").

Under load (publishes and path walks of the same executable names, renames, creates and
removals in the same directory), the daemon is killed with SIGKILL or stopped with SIGTERM at a
random moment, again and again. Every time: the daemon process is gone within 3 s, no client is
left blocked (each exits within 3 s of its own SIGKILL: a process waiting on a directory lock
that a dead daemon's notification holds cannot), a new mount over the same directory serves,
and every file holds one complete version. The same for `fusermount3 -u` and `umount -l`: the
daemon exits within 2 s.

Without the watchdog and the stop protocol (a notification sent inline while its LOOKUP can no
longer be answered), kernel-notes §12: about half of such SIGKILLs left the daemon stuck.
"""
import os
import random
import re
import signal
import subprocess
import time

import pytest

from util import Mount, is_mounted, mountinfo, wait_for

NAMES = [f"f{i}" for i in range(20, 41)]
COMPLETE = re.compile(rb"^(init|\d+ \d+)\n$")  # what the writers write, whole

# (SIGKILLs, SIGTERMs) per build: the plain build takes the count, the others fewer
# (they are slower, and the plain one already hunts the race); BINVFS_STOP_ROUNDS scales all.
# Each build also stops UNMOUNTS times by `fusermount3 -u` and by `umount -l` (what the
# systemd unit's ExecStop does).
ROUNDS = {"plain": (60, 20), "plain-pt-off": (20, 10), "asan": (8, 4), "tsan": (4, 4)}
UNMOUNTS = {"plain": 10, "plain-pt-off": 5}
SCALE = float(os.environ.get("BINVFS_STOP_ROUNDS", "1"))

WRITER = r"""
n=0
while :; do for f in {names}; do n=$((n+1)); echo "$$ $n" > {d}/$f; done; done 2>/dev/null
"""
WALKER = r"""
while :; do for f in {names}; do stat {d}/$f >/dev/null; done; done 2>/dev/null
"""
SHUFFLER = r"""
while :; do echo a > {d}/t$$; mv {d}/t$$ {d}/u$$; ln -s u$$ {d}/s$$; rm -f {d}/u$$ {d}/s$$;
mkdir {d}/d$$; rmdir {d}/d$$; done 2>/dev/null
"""


def fuse_connection(path):
    """The number of the FUSE connection mounted at path (fusectl's directory name)."""
    for e in mountinfo():
        if e.point == path and e.fstype.startswith("fuse"):
            major, minor = map(int, e.dev.split(":"))
            return (major << 20) | minor
    return None


def abort_connection(conn):
    """Free a wedged connection by hand, as an operator would (kernel-notes §12)."""
    base = "/sys/fs/fuse/connections"
    if not os.path.exists(os.path.join(base, str(conn))):
        subprocess.run(["mount", "-t", "fusectl", "none", base], capture_output=True)
    try:
        with open(os.path.join(base, str(conn), "abort"), "w") as f:
            f.write("1")
    except OSError:
        pass


def blocked(procs, timeout):
    """The load processes that do not die within timeout s of a SIGKILL (blocked in the
    kernel where a signal cannot reach them), after which they are waited for anyway."""
    for p in procs:
        p.kill()
    end = time.monotonic() + timeout
    stuck = []
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(p.pid)
    return stuck


def one_round(binary, src, mnt, sig, rng, extra):
    # the load works at a mount point of its own: once the mount is gone its writes land in
    # that empty directory, not in SOURCE
    m = Mount(binary, src, ("nosync", *extra), path=mnt).start()
    conn = fuse_connection(mnt)
    d = mnt
    names = " ".join(NAMES)
    load = []
    try:
        for script, count in ((WRITER, 3), (WALKER, 3), (SHUFFLER, 1)):
            for _ in range(count):
                load.append(subprocess.Popen(["bash", "-c", script.format(d=d, names=names)],
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
        time.sleep(rng.uniform(0.2, 0.6))
        t0 = time.monotonic()
        if sig == "fusermount3 -u":
            # busy while a walker is inside (EBUSY, as natively): try again, as an operator
            # would, then detach; the exit is timed from the unmount that took
            while subprocess.run(["fusermount3", "-u", mnt], capture_output=True).returncode:
                if time.monotonic() - t0 > 5:
                    subprocess.run(["umount", "-l", mnt], capture_output=True)
                    break
                time.sleep(0.01)
            t0 = time.monotonic()
        elif sig == "umount -l":
            subprocess.run(["umount", "-l", mnt], check=True)
        else:
            m.proc.send_signal(sig)
        try:
            m.proc.wait(timeout=3)
            gone = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            gone = None
            abort_connection(conn)  # clean up by hand, then report
            m.proc.wait(timeout=30)
        stuck = blocked(load, 3)
        load = []
        return gone, stuck, "watchdog: the daemon could not exit" in m.logtext()
    finally:
        for p in load:
            p.kill()
            p.wait()
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        m.proc = None
        m.log.close()
        os.unlink(m.log_path)


def test_kill_and_stop_under_load_never_wedge(binary, workdir, request):
    kind = request.node.callspec.id
    kills, terms = ROUNDS.get(kind, (4, 4))
    kills, terms = max(1, round(kills * SCALE)), max(1, round(terms * SCALE))
    extra = [o for o in Mount.extra]
    src, mnt = os.path.join(workdir, "bin"), os.path.join(workdir, "mnt")
    os.mkdir(src)
    os.mkdir(mnt)
    for n in NAMES:
        with open(os.path.join(src, n), "w") as f:
            f.write("init\n")
        os.chmod(os.path.join(src, n), 0o755)
    rng = random.Random(os.getpid())
    unmounts = max(1, round(UNMOUNTS.get(kind, 2) * SCALE))
    sigs = [signal.SIGKILL] * kills + [signal.SIGTERM] * terms
    sigs += ["fusermount3 -u", "umount -l"] * unmounts
    rng.shuffle(sigs)
    slow, wedged, torn, times, watchdog = [], [], [], [], 0
    for i, sig in enumerate(sigs):
        gone, stuck, rescued = one_round(binary, src, mnt, sig, rng, extra)
        watchdog += rescued
        if gone is not None:
            times.append(gone)
        name = getattr(sig, "name", sig)
        if gone is None or stuck:
            wedged.append((i, name, gone, stuck))
        elif gone > 2 and sig != signal.SIGKILL:
            slow.append((i, name, round(gone, 2)))
        # a new mount over the same directory serves, and holds complete versions only
        m = Mount(binary, src, ("nosync", *extra)).start()
        try:
            for n in NAMES:
                with open(os.path.join(src, n), "rb") as f:
                    data = f.read()
                if not COMPLETE.match(data):
                    torn.append((i, name, n, data))
        finally:
            m.stop(check=False)
    print(f"{len(sigs)} stops ({kills} SIGKILL, {terms} SIGTERM, {unmounts} fusermount3 -u, "
          f"{unmounts} umount -l): {len(wedged)} wedged, "
          f"{len(torn)} files torn, {len(slow)} slow stops, {watchdog} ended by the watchdog; "
          f"exit times: median "
          f"{sorted(times)[len(times) // 2] if times else 0:.3f} s, max {max(times, default=0):.3f} s")
    assert not (wedged or torn or slow), (
        f"wedged (round, signal, exit time, clients blocked): {wedged}\n"
        f"files holding no complete version after a stop: {torn}\n"
        f"a stop (SIGTERM, unmount) took over 2 s to exit: {slow}")
