"""Small file and user helpers shared by the tests."""
import errno
import os
import subprocess

NOBODY = 65534


def write(path, data, mode=None):
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def run(cmd, text=True, **kw):
    """cmd's CompletedProcess, output as text (as bytes with text=False); never waits more
    than 60 s."""
    if text:
        kw.setdefault("errors", "replace")
    return subprocess.run(cmd, capture_output=True, text=text, timeout=60, **kw)


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


def as_user(fn, uid=NOBODY, gid=NOBODY):
    """Run fn() in a forked child as uid/gid; returns 0 if it succeeded, else the errno."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fn()
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 254
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    return os.WEXITSTATUS(status)


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
    """fn(root) on the native dir and on the mount (the `both` fixture); both results."""
    nat, m = both
    return fn(nat), fn(m.p())
