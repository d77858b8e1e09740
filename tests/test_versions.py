"""History, retention and the promises about old versions:

- every replaced or removed file becomes `.versions/<dir>/<name>.~N~`, N from 1 per path;
- `.versions/` is hidden from the root listing, reachable by name, read-only;
- a version keeps mode, owner and mtime; keep=N prunes the oldest unless a process uses it;
- unmounted, SOURCE is a plain directory; a remount continues the numbering;
- `/proc/PID/exe` says "(deleted)" only once a new version replaced the binary;
- `st_ino` of a version is its backing inode number, everywhere, and distinct per version.
"""
import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from conftest import program, source_made_through
from util import (Mount, as_user, cp, is_mounted, make_store, open_world, read, run, versions,
                  wait_for, write)

VERSION_RE = re.compile(r"^.+\.~[1-9][0-9]*~$")


def maps_inodes(pid, prefix):
    """{inode: path} for the mappings of pid whose path starts with prefix."""
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(prefix):
                out[int(fields[4])] = fields[5].rstrip("\n")
    return out


# ---------------------------------------------------------------------------------------------
# numbering, what makes a version

def test_numbering_after_three_cps(mnt, workdir):
    app = mnt.p("app")
    write(app, "v0\n")
    for i in (1, 2, 3):
        new = os.path.join(workdir, f"new{i}")
        write(new, f"v{i}\n")
        cp(new, app)
    assert read(app) == b"v3\n"
    assert versions(mnt) == ["app.~1~", "app.~2~", "app.~3~"]
    for n in (1, 2, 3):
        assert read(mnt.p(".versions", f"app.~{n}~")) == f"v{n - 1}\n".encode()


def test_numbering_is_per_path(mnt, workdir):
    write(mnt.p("a"), "a0\n")
    write(mnt.p("b"), "b0\n")
    for i, name in enumerate(("a", "a", "b")):
        new = os.path.join(workdir, "new")
        write(new, f"new{i}\n")
        cp(new, mnt.p(name))
    assert versions(mnt) == ["a.~1~", "a.~2~", "b.~1~"]
    assert read(mnt.p(".versions", "b.~1~")) == b"b0\n"


def test_creating_new_files_makes_no_version(mnt):
    write(mnt.p("fresh"), "x\n")
    fd = os.open(mnt.p("fresh2"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"a")
    os.write(fd, b"b")
    os.close(fd)
    os.mkdir(mnt.p("d"))
    os.symlink("fresh", mnt.p("link"))
    os.mkfifo(mnt.p("fifo"))
    assert read(mnt.p("fresh2")) == b"ab"
    assert versions(mnt) == []
    # removing what is not a regular file keeps nothing either
    os.unlink(mnt.p("link"))
    os.unlink(mnt.p("fifo"))
    os.rmdir(mnt.p("d"))
    assert versions(mnt) == []


def test_rm_keeps_version(mnt):
    app = mnt.p("app")
    write(app, "first\n")
    r = run(["rm", app])
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(app)
    assert versions(mnt) == ["app.~1~"]
    assert read(mnt.p(".versions", "app.~1~")) == b"first\n"
    write(app, "second\n")
    os.unlink(app)
    assert versions(mnt) == ["app.~1~", "app.~2~"]
    assert read(mnt.p(".versions", "app.~2~")) == b"second\n"


def test_mv_over_keeps_version(mnt):
    app, new = mnt.p("app"), mnt.p("app.new")
    write(app, "old\n")
    write(new, "new\n")
    r = run(["mv", new, app])
    assert r.returncode == 0, r.stderr
    assert read(app) == b"new\n"
    assert not os.path.exists(new)
    # the replaced file is kept; the moved file was not replaced, so it has no version
    assert versions(mnt) == ["app.~1~"]
    assert read(mnt.p(".versions", "app.~1~")) == b"old\n"


def test_mv_to_a_free_name_makes_no_version(mnt):
    write(mnt.p("a"), "a\n")
    os.rename(mnt.p("a"), mnt.p("b"))
    assert read(mnt.p("b")) == b"a\n"
    assert versions(mnt) == []


def test_ansible_style_temp_and_rename_keeps_version(mnt):
    """Ansible's atomic_move: mkstemp in the destination's directory, write, fsync, copy the
    destination's mode, rename over it."""
    app = mnt.p("app")
    write(app, "#!/bin/sh\necho one\n", 0o750)
    fd, tmp = tempfile.mkstemp(dir=mnt.p(), prefix=".ansible_tmp", suffix="app")
    os.write(fd, b"#!/bin/sh\necho two\n")
    os.fsync(fd)
    os.close(fd)
    os.chmod(tmp, stat.S_IMODE(os.stat(app).st_mode))
    os.rename(tmp, app)
    assert run([app]).stdout == "two\n"
    assert versions(mnt) == ["app.~1~"]
    old = mnt.p(".versions", "app.~1~")
    assert read(old) == b"#!/bin/sh\necho one\n"
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o750
    assert run([old]).stdout == "one\n"
    assert not [n for n in os.listdir(mnt.p()) if n.startswith(".ansible_tmp")]


# ---------------------------------------------------------------------------------------------
# the .versions view

def test_versions_hidden_from_listing_but_reachable(mnt, workdir):
    os.makedirs(mnt.p("lib"))
    write(mnt.p("app"), "a\n")
    write(mnt.p("lib", "x"), "x0\n")
    new = os.path.join(workdir, "new")
    write(new, "new\n")
    cp(new, mnt.p("app"))
    cp(new, mnt.p("lib", "x"))

    assert ".versions" not in os.listdir(mnt.p())
    assert ".versions" not in [e.name for e in os.scandir(mnt.p())]
    for cmd in (["ls", mnt.p()], ["ls", "-a", mnt.p()], ["ls", "-A", mnt.p()]):
        r = run(cmd)
        assert r.returncode == 0, r.stderr
        assert ".versions" not in r.stdout.split(), cmd
    assert ".versions" not in os.listdir(mnt.p("lib"))
    assert sorted(os.listdir(mnt.p())) == ["app", "lib"]

    # reachable by name
    assert os.path.isdir(mnt.p(".versions"))
    r = run(["ls", mnt.p(".versions")])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["app.~1~", "lib"]
    # the store's own entries never show in the view
    assert versions(mnt) == ["app.~1~", "lib"]
    r = run(["ls", mnt.p(".versions", "lib")])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["x.~1~"]
    assert read(mnt.p(".versions", "lib", "x.~1~")) == b"x0\n"
    r = run(["find", mnt.p()])
    assert ".versions" not in r.stdout


def test_versions_name_only_special_at_root(mnt):
    """A `.versions` in a subdirectory is an ordinary user name."""
    os.makedirs(mnt.p("sub", ".versions"))
    write(mnt.p("sub", ".versions", "f"), "user data\n")
    assert ".versions" in os.listdir(mnt.p("sub"))
    write(mnt.p("sub", ".versions", "f"), "changed\n")
    assert read(mnt.p("sub", ".versions", "f")) == b"changed\n"


def test_cat_exec_cp_of_a_version(mnt, cbuild, workdir):
    app = mnt.p("app")
    shutil.copy(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    old = mnt.p(".versions", "app.~1~")
    assert read(old) == read(program(cbuild, 1))
    r = run(["cat", old])
    assert r.returncode == 0
    assert run([old]).stdout == "version 1\n"
    assert run([app]).stdout == "version 2\n"
    out = os.path.join(workdir, "restored")
    cp(old, out)
    assert run([out]).stdout == "version 1\n"
    cp(old, mnt.p("restored"))  # into the mount, a new name
    assert run([mnt.p("restored")]).stdout == "version 1\n"


READONLY_OPS = {
    "open_wronly": lambda v, m: os.close(os.open(v, os.O_WRONLY)),
    "open_rdwr": lambda v, m: os.close(os.open(v, os.O_RDWR)),
    "open_trunc": lambda v, m: os.close(os.open(v, os.O_WRONLY | os.O_TRUNC)),
    "open_append": lambda v, m: os.close(os.open(v, os.O_WRONLY | os.O_APPEND)),
    "truncate": lambda v, m: os.truncate(v, 0),
    "create": lambda v, m: os.close(os.open(m.p(".versions", "new"),
                                            os.O_WRONLY | os.O_CREAT, 0o644)),
    "create_in_subdir": lambda v, m: os.close(os.open(m.p(".versions", "lib", "new"),
                                                      os.O_WRONLY | os.O_CREAT, 0o644)),
    "unlink": lambda v, m: os.unlink(v),
    "unlink_in_subdir": lambda v, m: os.unlink(m.p(".versions", "lib", "x.~1~")),
    "rename_out": lambda v, m: os.rename(v, m.p("out")),
    "rename_in": lambda v, m: os.rename(m.p("app"), m.p(".versions", "app.~9~")),
    "rename_inside": lambda v, m: os.rename(v, m.p(".versions", "app.~9~")),
    "chmod": lambda v, m: os.chmod(v, 0o777),
    "chown": lambda v, m: os.chown(v, 1, 1),
    "utime": lambda v, m: os.utime(v, (0, 0)),
    "mkdir": lambda v, m: os.mkdir(m.p(".versions", "d")),
    "rmdir": lambda v, m: os.rmdir(m.p(".versions", "lib")),
    "symlink": lambda v, m: os.symlink("app.~1~", m.p(".versions", "sl")),
    "mkfifo": lambda v, m: os.mkfifo(m.p(".versions", "fifo")),
    "setxattr": lambda v, m: os.setxattr(v, "user.x", b"1"),
    "removexattr": lambda v, m: os.removexattr(v, "user.x"),
    "link_into": lambda v, m: os.link(m.p("app"), m.p(".versions", "lnk")),
    "chmod_view_root": lambda v, m: os.chmod(m.p(".versions"), 0o777),
    "chmod_view_subdir": lambda v, m: os.chmod(m.p(".versions", "lib"), 0o777),
    "setxattr_view_root": lambda v, m: os.setxattr(m.p(".versions"), "user.x", b"1"),
    "utime_view_subdir": lambda v, m: os.utime(m.p(".versions", "lib"), (0, 0)),
}


@pytest.fixture
def with_versions(mnt, workdir):
    os.makedirs(mnt.p("lib"))
    write(mnt.p("app"), "app0\n", 0o755)
    write(mnt.p("lib", "x"), "x0\n")
    new = os.path.join(workdir, "new")
    write(new, "new\n")
    cp(new, mnt.p("app"))
    cp(new, mnt.p("lib", "x"))
    return mnt


@pytest.mark.parametrize("op", sorted(READONLY_OPS))
def test_versions_are_read_only(with_versions, op):
    m = with_versions
    v = m.p(".versions", "app.~1~")
    before = os.stat(v)
    with pytest.raises(OSError) as e:
        READONLY_OPS[op](v, m)
    assert e.value.errno == errno.EROFS, (op, e.value)
    # nothing changed
    after = os.stat(v)
    assert (after.st_mode, after.st_uid, after.st_mtime_ns, after.st_size) == \
        (before.st_mode, before.st_uid, before.st_mtime_ns, before.st_size)
    assert read(v) == b"app0\n"
    assert versions(m) == ["app.~1~", "lib"]
    assert versions(m, "lib") == ["x.~1~"]
    assert read(m.p("app")) == b"new\n"
    assert not os.path.exists(m.p("out"))


def test_view_root_cannot_be_removed_or_renamed(with_versions):
    m = with_versions
    for op in (lambda: os.rmdir(m.p(".versions")),
               lambda: os.rename(m.p(".versions"), m.p("vv")),
               lambda: os.rename(m.p("app"), m.p(".versions")),
               lambda: os.unlink(m.p(".versions"))):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno in (errno.EPERM, errno.EROFS, errno.EBUSY, errno.EISDIR,
                                 errno.ENOTEMPTY, errno.ENOTDIR), e.value
    for op in (lambda: os.mkdir(m.p(".versions")),
               lambda: os.close(os.open(m.p(".versions"), os.O_WRONLY | os.O_CREAT))):
        with pytest.raises(OSError):
            op()
    assert versions(m) == ["app.~1~", "lib"]
    assert read(m.p(".versions", "app.~1~")) == b"app0\n"
    assert not os.path.exists(m.p("vv"))
    assert read(m.p("app")) == b"new\n"


def test_link_out_of_versions_fails(with_versions):
    """A version counts no link in the tree, and the kernel refuses to give a name to a file
    with none (ENOENT, as for a removed file); binvfs would say EXDEV."""
    m = with_versions
    assert os.stat(m.p(".versions", "app.~1~")).st_nlink == 0
    with pytest.raises(OSError) as e:
        os.link(m.p(".versions", "app.~1~"), m.p("back"))
    assert e.value.errno == errno.ENOENT
    assert not os.path.exists(m.p("back"))
    r = run(["ln", m.p(".versions", "app.~1~"), m.p("back")])
    assert r.returncode != 0


def test_shell_writes_into_versions_fail(with_versions):
    m = with_versions
    v = m.p(".versions", "app.~1~")
    for cmd in (["sh", "-c", f"echo x > '{v}'"], ["sh", "-c", f"echo x >> '{v}'"],
                ["rm", "-f", v], ["touch", m.p(".versions", "t")], ["chmod", "600", v],
                ["cp", m.p("app"), v]):
        r = run(cmd)
        assert r.returncode != 0, cmd
        assert "Read-only file system" in r.stderr, (cmd, r.stderr)
    assert read(v) == b"app0\n"


def test_rollback_is_a_new_version(mnt, cbuild):
    app = mnt.p("app")
    shutil.copy(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    assert run([app]).stdout == "version 2\n"
    cp(mnt.p(".versions", "app.~1~"), app)  # roll back
    assert run([app]).stdout == "version 1\n"
    assert versions(mnt) == ["app.~1~", "app.~2~"]
    assert run([mnt.p(".versions", "app.~1~")]).stdout == "version 1\n"
    assert run([mnt.p(".versions", "app.~2~")]).stdout == "version 2\n"


def test_version_keeps_mode_owner_mtime(mnt, workdir):
    app = mnt.p("app")
    write(app, "#!/bin/sh\necho old\n")
    os.chmod(app, 0o700)
    os.chown(app, 1234, 5678)
    os.utime(app, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    st = os.stat(app)
    new = os.path.join(workdir, "new")
    write(new, "#!/bin/sh\necho new\n", 0o755)
    cp(new, app)
    v = os.stat(mnt.p(".versions", "app.~1~"))
    assert stat.S_ISREG(v.st_mode)
    assert stat.S_IMODE(v.st_mode) == 0o700
    assert (v.st_uid, v.st_gid) == (1234, 5678)
    assert v.st_mtime_ns == st.st_mtime_ns == 1_000_000_000_123_456_789
    assert v.st_size == st.st_size
    # cp over an existing file keeps the destination's mode, as natively
    assert stat.S_IMODE(os.stat(app).st_mode) == 0o700
    assert os.stat(app).st_mtime_ns != st.st_mtime_ns


def test_version_setuid_and_odd_modes_kept(mnt, workdir):
    new = os.path.join(workdir, "new")
    write(new, "new\n")
    for name, mode in (("a", 0o4755), ("b", 0o600), ("c", 0o444), ("d", 0o2711)):
        write(mnt.p(name), name + "\n")
        os.chmod(mnt.p(name), mode)
        os.unlink(mnt.p(name))
        assert stat.S_IMODE(os.stat(mnt.p(".versions", name + ".~1~")).st_mode) == mode, name


def test_nobody_cannot_read_version_of_0600_root_file(mnt, workdir):
    open_world(workdir)
    secret = mnt.p("secret")
    write(secret, "top secret\n", 0o600)
    public = mnt.p("public")
    write(public, "public\n", 0o644)
    new = os.path.join(workdir, "new")
    write(new, "new\n")
    cp(new, secret)
    cp(new, public)
    v = mnt.p(".versions", "secret.~1~")
    assert stat.S_IMODE(os.stat(v).st_mode) == 0o600
    assert os.stat(v).st_uid == 0
    # the current file: denied as natively
    assert as_user(lambda: read(secret)) == errno.EACCES
    # the old version: denied too
    assert as_user(lambda: read(v)) == errno.EACCES
    r = run(["runuser", "-u", "nobody", "--", "cat", v])
    assert r.returncode != 0
    assert "Permission denied" in r.stderr
    assert "top secret" not in r.stdout
    # control: the same user can list the view and read a version of a world-readable file
    assert as_user(lambda: os.listdir(mnt.p(".versions"))) == 0
    assert as_user(lambda: read(mnt.p(".versions", "public.~1~"))) == 0
    r = run(["runuser", "-u", "nobody", "--", "cat", mnt.p(".versions", "public.~1~")])
    assert r.returncode == 0 and r.stdout == "public\n", r.stderr


def test_versions_below_a_private_dir_stay_private(mnt, workdir):
    """A 0644 file in a root-only 0700 directory: nobody cannot reach it natively, nor its
    old versions (the view's directories copy the tree directories' mode and owner)."""
    open_world(workdir)
    os.mkdir(mnt.p("priv"), 0o700)
    f = mnt.p("priv", "f")
    write(f, "private\n", 0o644)
    write(os.path.join(workdir, "new"), "new\n")
    cp(os.path.join(workdir, "new"), f)
    v = mnt.p(".versions", "priv", "f.~1~")
    assert read(v) == b"private\n"
    st = os.stat(mnt.p(".versions", "priv"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 0)
    assert as_user(lambda: read(f)) == errno.EACCES
    assert as_user(lambda: read(v)) == errno.EACCES
    assert as_user(lambda: os.listdir(mnt.p(".versions", "priv"))) == errno.EACCES


def test_nobody_cannot_modify_or_write_through_versions(mnt, workdir):
    open_world(workdir)
    f = mnt.p("f")
    write(f, "0\n", 0o666)
    new = os.path.join(workdir, "new")
    write(new, "new\n")
    cp(new, f)
    v = mnt.p(".versions", "f.~1~")
    assert stat.S_IMODE(os.stat(v).st_mode) == 0o666
    res = as_user(lambda: os.close(os.open(v, os.O_WRONLY)))
    assert res in (errno.EROFS, errno.EACCES), res
    assert read(v) == b"0\n"


# ---------------------------------------------------------------------------------------------
# retention

def test_keep2_prunes_oldest(mounter, workdir):
    m = mounter(opts=("nosync", "keep=2"))
    app = m.p("app")
    write(app, "v0\n")
    for i in range(1, 6):
        new = os.path.join(workdir, f"new{i}")
        write(new, f"v{i}\n")
        cp(new, app)
        assert versions(m) == [f"app.~{n}~" for n in range(max(1, i - 1), i + 1)]
    assert read(app) == b"v5\n"
    assert versions(m) == ["app.~4~", "app.~5~"]
    os.unlink(app)  # a removal is a version too and counts against keep
    assert versions(m) == ["app.~5~", "app.~6~"]
    # (contents read only now: a version looked up by name may count as in use)
    assert read(m.p(".versions", "app.~5~")) == b"v4\n"
    assert read(m.p(".versions", "app.~6~")) == b"v5\n"


def test_keep_is_per_path_and_in_subdirs(mounter, workdir):
    m = mounter(opts=("nosync", "keep=2"))
    os.makedirs(m.p("lib", "a"))
    for name in ("app", "lib/a/x"):
        write(m.p(name), "0")
    for i in range(1, 5):
        for name in ("app", "lib/a/x"):
            write(os.path.join(workdir, "n"), f"{name}{i}")
            cp(os.path.join(workdir, "n"), m.p(name))
    assert versions(m) == ["app.~3~", "app.~4~", "lib"]
    assert versions(m, "lib/a") == ["x.~3~", "x.~4~"]


def test_keep_default_is_10_and_keep0_unlimited(mounter, workdir):
    m = mounter(name="default")
    app = m.p("app")
    write(app, "0")
    for i in range(1, 13):
        write(os.path.join(workdir, "n"), str(i))
        cp(os.path.join(workdir, "n"), app)
    assert sorted(versions(m), key=lambda s: int(s.split("~")[1])) == \
        [f"app.~{n}~" for n in range(3, 13)]
    m0 = mounter(name="unlimited", opts=("nosync", "keep=0"))
    app = m0.p("app")
    write(app, "0")
    for i in range(1, 16):
        write(os.path.join(workdir, "n"), str(i))
        cp(os.path.join(workdir, "n"), app)
    assert len(versions(m0)) == 15


def wait_pruned(m, name, what):
    """Poll up to 10 s for .versions/name to go; if it does not, see whether dropping the
    kernel's dentry cache (which sends the FORGETs) removes it, and fail saying which."""
    gone = lambda: name not in os.listdir(m.p(".versions"))  # noqa: E731
    try:
        wait_for(gone, timeout=10, what=what)
    except AssertionError:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        try:
            wait_for(gone, timeout=5, what=what)
        except AssertionError:
            pytest.fail(f"{name} still listed 10 s after its last user was gone, "
                        "and after `echo 2 > /proc/sys/vm/drop_caches`")
        pytest.fail(f"{name} was pruned only after `echo 2 > /proc/sys/vm/drop_caches`, "
                    "not within 10 s of its last user being gone")


def test_keep2_running_version_stays_until_its_process_exits(mounter, procs, cbuild):
    m = mounter(opts=("nosync", "keep=2"))
    app = m.p("app")
    shutil.copy(program(cbuild, 1), app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    for v in range(2, 7):  # 5 publishes: versions 1..5
        cp(program(cbuild, v), app)
    assert run([app]).stdout == "version 6\n"
    # version 1 is still in use: kept and listed; the others beyond keep are gone
    assert versions(m) == ["app.~1~", "app.~4~", "app.~5~"]
    # ... and working (reached through the process, so no name lookup of our own holds it)
    exe = f"/proc/{runner.pid}/exe"
    assert read(exe) == read(program(cbuild, 1))
    assert run([exe]).stdout == "version 1\n"
    assert runner.poll() is None

    runner.kill()
    runner.wait()
    wait_pruned(m, "app.~1~", "version 1 to be pruned after its process was killed")
    assert versions(m) == ["app.~4~", "app.~5~"]
    # and the next publish prunes normally
    cp(program(cbuild, 1), app)
    assert versions(m) == ["app.~5~", "app.~6~"]


def test_keep2_running_version_used_by_name_goes_after_its_users(mounter, procs, cbuild):
    """Same, but the kept version is also run, read and stat'ed at its .versions name while
    in use: once every process is gone it must go too."""
    m = mounter(opts=("nosync", "keep=2"))
    app = m.p("app")
    shutil.copy(program(cbuild, 1), app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    for v in range(2, 7):
        cp(program(cbuild, v), app)
    v1 = m.p(".versions", "app.~1~")
    assert versions(m) == ["app.~1~", "app.~4~", "app.~5~"]
    assert run([v1]).stdout == "version 1\n"
    assert read(v1) == read(program(cbuild, 1))
    assert os.stat(v1).st_ino == os.stat(f"/proc/{runner.pid}/exe").st_ino
    runner.kill()
    runner.wait()
    wait_pruned(m, "app.~1~", "version 1 to be pruned after its process was killed")
    assert not os.path.exists(v1)


def test_keep_prunes_versions_that_were_only_looked_at(mounter, workdir):
    """`cat`, `stat` or `ls -l` of an old version (all closed again) does not make it 'in use':
    the next publishes prune it like any other."""
    m = mounter(opts=("nosync", "keep=2"))
    app = m.p("app")
    write(app, "v0\n")
    for i in (1, 2):
        write(os.path.join(workdir, "n"), f"v{i}\n")
        cp(os.path.join(workdir, "n"), app)
    assert versions(m) == ["app.~1~", "app.~2~"]
    assert read(m.p(".versions", "app.~1~")) == b"v0\n"
    os.stat(m.p(".versions", "app.~2~"))
    assert run(["ls", "-l", m.p(".versions")]).returncode == 0
    for i in (3, 4):
        write(os.path.join(workdir, "n"), f"v{i}\n")
        cp(os.path.join(workdir, "n"), app)
    # (a version the kernel still had an entry for goes once that entry is invalidated, by
    # the invalidation thread: both may come a moment after the cp)
    wait_pruned(m, "app.~1~", "app.~1~ (only read, never held) to be pruned")
    wait_pruned(m, "app.~2~", "app.~2~ (only stat'ed, never held) to be pruned")
    assert versions(m) == ["app.~3~", "app.~4~"]


HOLDER = ("import sys, os, mmap\n"
          "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
          "if sys.argv[2] == 'mapped':\n"
          "    mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ); os.close(fd)\n"
          "    get = lambda: mm[:3]\n"
          "else:\n"
          "    get = lambda: os.pread(fd, 3, 0)\n"
          "sys.stdout.write(get().decode()); sys.stdout.flush()\n"
          "for line in sys.stdin:\n"
          "    sys.stdout.write(get().decode()); sys.stdout.flush()\n")


@pytest.mark.parametrize("how", ["open", "mapped"])
def test_keep2_open_or_mapped_version_stays(mounter, procs, how):
    """A version some process has open, or only mapped (fd closed), is kept the same way."""
    m = mounter(opts=("nosync", "keep=2"))
    data = m.p("data")
    write(data, "d0\n")
    holder = procs.start([sys.executable, "-c", HOLDER, data, how],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "d0\n"
    for i in range(1, 6):
        with open(data, "w") as f:
            f.write(f"d{i}\n")
    assert read(data) == b"d5\n"
    assert versions(m) == ["data.~1~", "data.~4~", "data.~5~"]
    holder.stdin.write("again\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "d0\n"
    holder.stdin.close()
    holder.wait(timeout=10)
    wait_pruned(m, "data.~1~", "data.~1~ to be pruned after its holder exited")
    assert versions(m) == ["data.~4~", "data.~5~"]


# ---------------------------------------------------------------------------------------------
# unmounted and remounted

def populate(m, workdir):
    os.makedirs(m.p("lib", "a"))
    write(m.p("app"), "app0\n", 0o755)
    write(m.p("lib", "a", "x"), "x0\n")
    write(m.p("gone"), "gone\n")
    for i in (1, 2, 3):
        write(os.path.join(workdir, "n"), f"app{i}\n")
        cp(os.path.join(workdir, "n"), m.p("app"))
    write(os.path.join(workdir, "n"), "x1\n")
    cp(os.path.join(workdir, "n"), m.p("lib", "a", "x"))
    os.unlink(m.p("gone"))
    os.close(os.open(m.p("lib", "a", "x"), os.O_WRONLY))  # a write open that changes nothing


def test_unmounted_dir_is_plain(binary, workdir):
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    try:
        populate(m, workdir)
        assert versions(m) == ["app.~1~", "app.~2~", "app.~3~", "gone.~1~", "lib"]
    finally:
        m.stop()
    assert not is_mounted(src)
    assert sorted(os.listdir(src)) == [".versions", "app", "lib"]
    assert read(os.path.join(src, "app")) == b"app3\n"
    assert stat.S_IMODE(os.stat(os.path.join(src, "app")).st_mode) == 0o755
    assert read(os.path.join(src, "lib", "a", "x")) == b"x1\n"
    vdir = os.path.join(src, ".versions")
    found = {}
    for d, dirs, files in os.walk(vdir):
        assert ".binvfs-staging" not in dirs and ".binvfs-staging" not in files, d
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), vdir)
            st = os.lstat(os.path.join(d, f))
            assert stat.S_ISREG(st.st_mode), rel
            if rel == ".binvfs-format":
                continue
            if rel == ".binvfs-nodeids":  # the nodeid table of a clean stop (format.md)
                assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, rel
                continue
            assert VERSION_RE.match(f), rel
            assert st.st_nlink == 1, rel  # nothing else links to an old version
            found[rel] = read(os.path.join(d, f))
    assert os.path.isfile(os.path.join(vdir, ".binvfs-format"))
    assert found == {"app.~1~": b"app0\n", "app.~2~": b"app1\n", "app.~3~": b"app2\n",
                     "gone.~1~": b"gone\n", "lib/a/x.~1~": b"x0\n"}
    # the SOURCE root holds nothing else of binvfs
    assert [n for n in os.listdir(src) if "binvfs" in n] == []


def test_remount_continues_numbering(binary, workdir):
    src = source_made_through(binary, workdir, populate)
    # changed while unmounted: a plain directory, plain writes
    write(os.path.join(src, "app"), "offline\n")
    m = Mount(binary, src).start()
    try:
        assert read(m.p("app")) == b"offline\n"
        assert versions(m) == ["app.~1~", "app.~2~", "app.~3~", "gone.~1~", "lib"]
        write(os.path.join(workdir, "n"), "app4\n")
        cp(os.path.join(workdir, "n"), m.p("app"))
        assert versions(m) == ["app.~1~", "app.~2~", "app.~3~", "app.~4~", "gone.~1~", "lib"]
        assert read(m.p(".versions", "app.~4~")) == b"offline\n"
        cp(os.path.join(workdir, "n"), m.p("lib", "a", "x"))
        assert versions(m, "lib/a") == ["x.~1~", "x.~2~"]
        write(m.p("gone"), "back\n")
        os.unlink(m.p("gone"))
        assert "gone.~2~" in versions(m)
    finally:
        m.stop()
    assert not is_mounted(src)
    assert read(os.path.join(src, ".versions", "app.~4~")) == b"offline\n"
    assert not os.path.exists(os.path.join(src, ".versions", ".binvfs-staging"))


def test_indexer_reads_every_versions_dir_at_mount(binary, workdir):
    """After the mount a thread reads every versions dir, nested and escaped ones too: its
    log line counts them, and a publish anywhere continues that path's numbering."""
    src = os.path.join(workdir, "src")
    dirs = [("a", "a"), ("a/b", "a/b"), ("a/b/c", "a/b/c"), ("x.~3~", "x.~3~.~~"),
            ("x.~3~/y", "x.~3~.~~/y")]
    make_store(src, dirs, 7)
    write(os.path.join(src, "top"), "top\n")
    write(os.path.join(src, ".versions", "top.~4~"), "4\n")
    m = Mount(binary, src).start()
    try:
        wait_for(lambda: "indexed" in m.logtext(), what="the indexer's log line")
        line = [l for l in m.logtext().splitlines() if "indexed" in l][0]
        assert re.search(r"indexed 36 versions of 6 names in 6 directories in ", line), line
        for d, mirror in dirs:
            write(m.p(d, "f"), "new\n")
            assert read(m.p(".versions", mirror, "f.~8~")) == b"current\n", d
            assert not os.path.exists(m.p(".versions", mirror, "f.~9~"))
        write(m.p("top"), "new\n")
        assert read(m.p(".versions", "top.~5~")) == b"top\n"
    finally:
        m.stop()


# ---------------------------------------------------------------------------------------------
# /proc/PID/exe

def exe_of(pid):
    return os.readlink(f"/proc/{pid}/exe")


def test_proc_exe_deleted_after_binary_replaced(mnt, procs, cbuild):
    app = mnt.p("app")
    shutil.copy(program(cbuild, 1), app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    assert exe_of(runner.pid) == app
    cp(program(cbuild, 2), app)
    assert exe_of(runner.pid) == app + " (deleted)"
    # a process started now runs the new version and is not marked
    r2 = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert r2.stdout.readline() == "version 2\n"
    assert exe_of(r2.pid) == app
    assert exe_of(runner.pid) == app + " (deleted)"


@pytest.mark.parametrize("how", ["mv", "rm"])
def test_proc_exe_deleted_after_mv_over_or_rm(mnt, procs, cbuild, how):
    app = mnt.p("app")
    shutil.copy(program(cbuild, 1), app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    if how == "mv":
        shutil.copy(program(cbuild, 2), app + ".new")
        os.rename(app + ".new", app)
    else:
        os.unlink(app)
    assert exe_of(runner.pid) == app + " (deleted)"


def test_proc_exe_not_deleted_when_only_read_or_run_by_others(mnt, procs, cbuild, workdir):
    app = mnt.p("app")
    shutil.copy(program(cbuild, 1), app)
    runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "version 1\n"
    ino = os.stat(f"/proc/{runner.pid}/exe").st_ino
    for _ in range(3):
        assert run(["cat", app]).returncode == 0
        assert run([app]).stdout == "version 1\n"
        assert run(["sha256sum", app]).returncode == 0
        cp(app, os.path.join(workdir, "copy"))
        with open(app, "rb") as f:
            f.read(10)
        os.stat(app)
        os.listdir(mnt.p())
    other = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline() == "version 1\n"
    # metadata changes apply in place: no new version either
    os.chmod(app, 0o755)
    os.utime(app)
    for pid in (runner.pid, other.pid):
        assert exe_of(pid) == app, pid
        assert os.stat(f"/proc/{pid}/exe").st_ino == ino
    assert os.stat(app).st_ino == ino
    assert versions(mnt) == []


# ---------------------------------------------------------------------------------------------
# st_ino

MAPPER = ("import sys, mmap\n"
          "f = open(sys.argv[1], 'rb')\n"
          "mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
          "f.close()\n"
          "print(mm[:2].decode(), flush=True)\n"
          "sys.stdin.read()\n")


def test_st_ino_is_backing_inode_everywhere(mounter, procs, cbuild):
    backing = {}

    def setup(src):
        # a handle on SOURCE from before the mount sees the backing files under it
        backing["fd"] = os.open(src, os.O_PATH | os.O_DIRECTORY)

    m = mounter(setup=setup)
    bfd = backing["fd"]
    try:
        data = m.p("data")
        write(data, "v0" * 5000)
        ino0 = os.stat(data).st_ino
        assert ino0 == os.stat("data", dir_fd=bfd).st_ino
        mapper = procs.start([sys.executable, "-c", MAPPER, data],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert mapper.stdout.readline() == "v0\n"
        assert ino0 in maps_inodes(mapper.pid, data)

        app = m.p("app")
        shutil.copy(program(cbuild, 1), app)
        runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True)
        assert runner.stdout.readline() == "version 1\n"
        app_ino1 = os.stat(app).st_ino
        assert os.stat(f"/proc/{runner.pid}/exe").st_ino == app_ino1
        assert app_ino1 in maps_inodes(runner.pid, app)

        for i in (1, 2, 3):
            with open(data, "w") as f:
                f.write(f"v{i}" * 5000)
        cp(program(cbuild, 2), app)

        vinos = [os.stat(m.p(".versions", f"data.~{n}~")).st_ino for n in (1, 2, 3)]
        cur = os.stat(data).st_ino
        # the version's st_ino: same as the name had, same as the backing file, same in maps
        assert vinos[0] == ino0
        for n, vi in zip((1, 2, 3), vinos):
            assert vi == os.stat(f".versions/data.~{n}~", dir_fd=bfd).st_ino
        assert cur == os.stat("data", dir_fd=bfd).st_ino
        assert ino0 in maps_inodes(mapper.pid, data)
        # distinct versions, distinct st_ino
        assert len(set(vinos + [cur])) == 4

        app_v1 = os.stat(m.p(".versions", "app.~1~")).st_ino
        assert app_v1 == app_ino1
        assert app_v1 == os.stat(".versions/app.~1~", dir_fd=bfd).st_ino
        assert os.stat(f"/proc/{runner.pid}/exe").st_ino == app_v1
        assert app_ino1 in maps_inodes(runner.pid, app)
        assert os.stat(app).st_ino != app_v1
        assert os.stat(app).st_ino == os.stat("app", dir_fd=bfd).st_ino
        # readdir's d_ino agrees too
        dino = {e.name: e.inode() for e in os.scandir(m.p(".versions"))}
        assert dino["data.~1~"] == ino0
        assert dino["app.~1~"] == app_v1
        mapper.stdin.close()
        mapper.wait(timeout=10)
    finally:
        os.close(bfd)


def test_st_ino_distinct_across_many_versions(mnt, workdir):
    app = mnt.p("app")
    write(app, "0")
    inos = {os.stat(app).st_ino}
    for i in range(1, 8):
        write(os.path.join(workdir, "n"), str(i))
        cp(os.path.join(workdir, "n"), app)
        inos.add(os.stat(app).st_ino)
    vinos = {os.stat(mnt.p(".versions", f"app.~{n}~")).st_ino for n in range(1, 8)}
    assert len(inos) == 8
    assert vinos | {os.stat(app).st_ino} == inos
