"""Helpers shared by the tests and scripts/bench (standard library only): files, users, the
mount table, and a binvfs daemon mounted for real (`Mount`)."""
import ctypes
import errno
import hashlib
import json
import contextlib
import os
import re
import resource
import subprocess
import tempfile
import time
from typing import NamedTuple

NOBODY = 65534
CAP_MKNOD = 27
libc = ctypes.CDLL(None, use_errno=True)


def write(path, data, mode=None):
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def sha(data):
    """The SHA-256 of bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def daemon_fds(m):
    """How many fds the daemon of Mount m has open now."""
    return len(os.listdir(f"/proc/{m.proc.pid}/fd"))


def run(cmd, text=True, timeout=60, **kw):
    """cmd's CompletedProcess, output as text (as bytes with text=False); never waits more
    than timeout (60 s)."""
    if text:
        kw.setdefault("errors", "replace")
    return subprocess.run(cmd, capture_output=True, text=text, timeout=timeout, **kw)


def cp(src, dst):
    r = run(["cp", src, dst])
    assert r.returncode == 0, r.stderr


def versions(m, sub=""):
    """Listing only (readdir): no LOOKUP of a version, so nothing here holds one."""
    return sorted(os.listdir(m.p(".versions", sub)))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def reopen_for_write(p):
    """Open p for reading, then again for writing through /proc/self/fd (the reopen path:
    no name walk)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY))
    finally:
        os.close(fd)


def open_world(workdir):
    """mkdtemp makes workdir 0700: let the other users reach what is below it."""
    os.chmod(workdir, 0o755)


def as_user(fn, uid=NOBODY, gid=NOBODY, caps=()):
    """Run fn() in a forked child as uid/gid, holding the capabilities caps (numbers < 32, such
    as CAP_MKNOD) and no other; returns 0 if it succeeded, else the errno."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if caps:
                libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set over setuid
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if caps:
                header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
                mask = sum(1 << c for c in caps)
                # effective, permitted, inheritable of capabilities 0-31, then of 32-63
                if libc.capset(header, (ctypes.c_uint32 * 6)(mask, mask, 0, 0, 0, 0)) != 0:
                    raise OSError(ctypes.get_errno(), "capset")
            fn()
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 254
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    return os.WEXITSTATUS(status)


# Users: real uids and gids, as an attacker would be.
class Actor:
    def __init__(self, name, uid, gid, groups=()):
        self.name, self.uid, self.gid, self.groups = name, uid, gid, list(groups)

    def popen_kw(self):
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups}


def err_name(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def attempt(fn):
    """'ok', or the errno name of the OSError fn() raised."""
    try:
        fn()
        return "ok"
    except OSError as e:
        return err_name(e)


def as_actor(actor, fn, timeout=50, nofile=None):
    """Run fn() in a forked child with actor's uids, gids and groups (setgroups, setresgid,
    setresuid; RLIMIT_NOFILE raised to `nofile`, at most the hard limit, before dropping root);
    returns what fn returned (JSON through a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = b""
        try:
            os.close(r)
            if nofile:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
            os.setgroups(actor.groups)
            os.setresgid(actor.gid, actor.gid, actor.gid)
            os.setresuid(actor.uid, actor.uid, actor.uid)
            out = json.dumps({"result": fn()}).encode()
        except BaseException as e:  # noqa: B902 - reported to the parent
            out = json.dumps({"error": repr(e)}).encode()
        finally:
            try:
                os.write(w, out)
            finally:
                os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    msg = json.loads(b"".join(chunks) or b'{"error": "no answer"}')
    assert "error" not in msg, f"{actor.name}: {msg['error']}"
    return msg["result"]



class MountEntry(NamedTuple):
    point: str
    opts: str  # per-mount options (rw,nosuid,...)
    fstype: str
    source: str
    super_opts: str  # the filesystem's (for FUSE, the connection's)
    dev: str = ""  # major:minor of the filesystem (for FUSE, its connection)


def _unescape(field):
    """mountinfo writes space, tab, newline and backslash in paths as \\ooo."""
    return re.sub(r"\\([0-3][0-7][0-7])", lambda m: chr(int(m.group(1), 8)), field)


def mountinfo(fstype=None):
    """Every mount in /proc/self/mountinfo (of fstype if given), the newest last, with its
    paths unescaped: the one Python reader of the mount table, for tests and scripts."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            fields, tail = left.split(), right.split()
            e = MountEntry(_unescape(fields[4]), fields[5], tail[0], _unescape(tail[1]),
                           tail[2] if len(tail) > 2 else "", fields[2])
            if fstype is None or e.fstype == fstype:
                out.append(e)
    return out


def is_mounted(path, fstype="fuse.binvfs"):
    return any(e.point == path for e in mountinfo(fstype))


def wait_for(cond, timeout=10.0, what="condition", poll=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def uring_enabled():
    """Does the kernel offer FUSE over io_uring now (its global switch, design.md §14)?"""
    try:
        with open(ENABLE_URING) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


class Mount:
    """A running binvfs over `src` (mounted at `path`, which is `src` unless given), with the
    -o options opts and the further arguments args (such as -s). Another FUSE daemon: a
    subclass with its own command() and fstype (scripts/bench: libfuse's passthrough_ll)."""

    extra = []  # options of the current test's variant (the `binary` fixture sets them)
    fstype = "fuse.binvfs"  # in the mount table

    def __init__(self, binary, src, opts=("nosync",), path=None, args=()):
        self.binary = binary
        self.src = str(src)
        self.path = str(path or src)
        self.opts = list(opts)
        self.args = list(args)
        if not any(o.startswith("passthrough=") for o in self.opts):
            self.opts += Mount.extra
        self.log_path = tempfile.mktemp(prefix="binvfs-log-")
        self.proc = None

    def command(self):
        cmd = [self.binary, "-f"]
        if self.opts:
            cmd += ["-o", ",".join(self.opts)]
        return cmd + self.args + [self.src] + ([self.path] if self.path != self.src else [])

    def start(self, timeout=10.0, poll=0.01, **popen):
        """Start the daemon (popen: more arguments for subprocess.Popen) and wait until it is
        in the mount table, looking every poll s."""
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     **popen)
        try:
            wait_for(lambda: is_mounted(self.path, self.fstype) or self.proc.poll() is not None,
                     timeout, "mount", poll)
        except AssertionError:
            self.stop(check=False)
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name()} exited at startup:\n" + self.logtext())
        if "uring" in self.opts and self.fstype == "fuse.binvfs" and uring_enabled():
            # a test run "over io_uring" is one: the rings took requests (design.md §14)
            st = os.getxattr(self.path, "user.binvfs.status").decode()
            assert "\nuring=on" in st, "-o uring did not take:\n" + st
        return self

    def name(self):
        return os.path.basename(self.binary)

    def logtext(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, check=True, unmount=True, tries=1):
        """Unmount (lazily if still busy after `tries` tries, 0.1 s apart) and require the
        daemon to exit 0 within 30 s. unmount=False: the mount was detached already (umount -l;
        another may now be at the same path)."""
        if self.proc is None:
            return
        if unmount:
            for i in range(tries):
                if not is_mounted(self.path, self.fstype):
                    break
                r = subprocess.run(["fusermount3", "-u", self.path], capture_output=True)
                if r.returncode == 0:
                    break
                if i + 1 < tries:
                    time.sleep(0.1)
            else:
                subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            if unmount:
                subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)
            rc = "hung"
        self.proc = None
        text = self.logtext()
        self.log.close()
        os.unlink(self.log_path)
        if check:
            for word in ("AddressSanitizer", "runtime error", "LeakSanitizer", "ThreadSanitizer"):
                assert word not in text, text
            assert rc == 0, f"{self.name()} exited with {rc}:\n{text}"
        return text

    def kill(self):
        """SIGKILL the daemon (crash), then clean the dead mount up."""
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)
        self.proc = None
        self.log.close()
        os.unlink(self.log_path)

    def p(self, *parts):
        return os.path.join(self.path, *parts)

    def s(self, *parts):
        return os.path.join(self.src, *parts)


def make_store(src, dirs, nver, names=("f",)):
    """A store written directly on disk: for each tree dir d and name f, a file d/f and the
    versions f.~1~ .. f.~nver~ (hard links of a few files "old") in d's mirror dir."""
    vroot = os.path.join(src, ".versions")
    os.makedirs(vroot)
    write(os.path.join(vroot, ".binvfs-format"), "binvfs store format 1\n")
    links = 60000  # ext4 allows 65000 links to an inode
    for d, mirror in dirs:
        os.makedirs(os.path.join(src, d), exist_ok=True)
        os.makedirs(os.path.join(vroot, mirror), exist_ok=True)
        for f in names:
            write(os.path.join(src, d, f), "current\n", 0o755)
            for k in range(1, nver + 1):
                path = os.path.join(vroot, mirror, f"{f}.~{k}~")
                if links == 60000:
                    first, links = path, 0
                    write(first, "old\n", 0o755)
                else:
                    os.link(first, path)
                    links += 1


def outcome(fn, *args, **kw):
    """("ok", result) or ("err", errno name): comparable between native and mount."""
    try:
        return ("ok", fn(*args, **kw))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def on_both(both, fn):
    """fn(p) on the native dir and on the mount (the `both` fixture), where p(*parts) is a path
    below the dir it runs on (p() the dir itself, as Mount.p); both results."""
    nat, m = both
    return fn(lambda *parts: os.path.join(nat, *parts)), fn(m.p)


def same_on_both(both, fn):
    """on_both's result, which must be the same on both."""
    n, m = on_both(both, fn)
    assert n == m
    return n


ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"


@contextlib.contextmanager
def uring_switched_on():
    """The kernel's switch for FUSE over io_uring set to Y, put back after; skips the test on a
    kernel without it (CONFIG_FUSE_IO_URING, Linux >= 6.14)."""
    import pytest
    if not os.path.exists(ENABLE_URING):
        pytest.skip("this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux >= 6.14)")
    with open(ENABLE_URING) as f:
        old = f.read().strip()
    with open(ENABLE_URING, "w") as f:
        f.write("Y")
    try:
        yield
    finally:
        with open(ENABLE_URING, "w") as f:
            f.write(old)
