"""Test harness: mount binvfs for real over a fresh temporary directory, always unmount.

Like libfuse's test/util.py (util.Mount): the daemon must exit 0 within 30 s of the unmount (a
daemon that hangs or crashes at unmount is a bug the test reports), and its log is scanned for
sanitizer reports. Processes a test starts go through `procs` and are killed by pid at teardown.
"""
import contextlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

pytest.register_assert_rewrite("util")  # its asserts (same_on_both's) show what differs
from util import Actor, Mount, mountinfo, run, uring_switched_on, write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINS = os.environ.get("BINVFS_BINS", os.path.join(ROOT, "build", "binvfs")).split()


def source_made_through(binary, workdir, fill):
    """A SOURCE directory (workdir/src) filled by fill(mount, workdir) through a binvfs
    mount that is gone again when this returns."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    try:
        fill(m, workdir)
    finally:
        m.stop()
    return src


class Procs:
    """Processes started by a test; killed by pid at teardown."""

    def __init__(self):
        self.procs = []

    def start(self, *args, **kw):
        p = subprocess.Popen(*args, **kw)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# The ThreadSanitizer build runs the tests that race threads of the daemon against each other.
TSAN_BINS = os.environ.get("BINVFS_TSAN_BINS", "").split()
TSAN_MODULES = ("test_races", "test_writers", "test_restart", "test_handles", "test_stop",
                "security_daemon", "security_soak", "test_locks", "test_exec_cache")  # (by the test's own module)


# The core, race and crash tests also run with passthrough=off (plain build): the daemon's own
# read path stays tested. Everything else runs as users get it (passthrough=auto).
OFF_MODULES = ("test_publish", "test_writers", "test_versions", "test_races", "test_crash",
               "test_restart", "test_handles", "test_limits", "test_fidelity", "test_stop",
               "test_inplace", "test_fidelity_xfs", "test_acl", "test_locks", "test_tmpfile",
               "test_file_handles", "test_exec_cache", "test_dircache", "test_opens")
OFF = "#passthrough=off"
# ... and the lock tests (deferred replies, interrupts), the core and the races over FUSE over
# io_uring too (-o uring, design.md §14), where the kernel has it: the fixture sets the
# kernel's global switch (enable_uring) for the test and puts it back.
URING_MODULES = ("test_locks", "test_publish", "test_races")
URING = "#uring"


def build_id(path):
    kind = "plain"
    for k in ("asan", "tsan"):
        if k in os.path.basename(os.path.dirname(path.split("#")[0])):
            kind = k
    return kind + ("-pt-off" if path.endswith(OFF) else "-uring" if path.endswith(URING) else "")


def pytest_generate_tests(metafunc):
    if "binary" in metafunc.fixturenames:
        bins = list(BINS)
        if metafunc.function.__module__ in TSAN_MODULES:
            bins += TSAN_BINS
        if metafunc.function.__module__ in OFF_MODULES:
            bins += [BINS[0] + OFF]
        if metafunc.function.__module__ in URING_MODULES:
            bins += [BINS[0] + URING]
        metafunc.parametrize("binary", bins, ids=[build_id(b) for b in bins], indirect=True)


@pytest.fixture
def binary(request):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    if os.geteuid() != 0:
        pytest.skip("binvfs tests run as root")
    path, _, opt = request.param.partition("#")
    with uring_switched_on() if opt == "uring" else contextlib.nullcontext():
        Mount.extra = [opt] if opt else []
        try:
            yield path
        finally:
            Mount.extra = []


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="binvfs-test-")
    yield d
    for e in mountinfo():
        if e.point.startswith(d):
            subprocess.run(["umount", "-l", e.point], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.cleanup()


@pytest.fixture
def mounter(binary, workdir):
    """mounter(setup=None, opts=...) -> Mount over a fresh SOURCE directory `workdir/bin`,
    after setup(src) has put files there."""
    mounts = []

    def make(setup=None, opts=("nosync",), name="bin", path=None):
        src = os.path.join(workdir, name)
        os.makedirs(src, exist_ok=True)
        if setup:
            setup(src)
        m = Mount(binary, src, opts, path=path)
        mounts.append(m)
        return m.start()

    yield make
    errors = []
    for m in mounts:
        try:
            m.stop()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


@pytest.fixture
def mnt(mounter):
    """binvfs over an empty directory."""
    return mounter()


# binvfsctl: the one built next to the binvfs under test (build/ or build-asan/).
def ctl_path(binary):
    return os.path.join(os.path.dirname(binary), "binvfsctl")


@pytest.fixture
def ctl(binary):
    """ctl(*args, rc=0, env=None) -> CompletedProcess of binvfsctl, checked for exit status
    rc."""
    path = ctl_path(binary)

    def call(*args, rc=0, env=None):
        r = run([path, *args], env=env)
        for word in ("AddressSanitizer", "LeakSanitizer", "runtime error"):
            assert word not in r.stderr, r.stderr
        assert r.returncode == rc, f"binvfsctl {args}: exit {r.returncode}\n{r.stderr}"
        return r

    return call


@pytest.fixture
def ctlj(ctl):
    """ctlj(*args, env=None) -> the parsed --json output."""
    def call(*args, env=None):
        return json.loads(ctl("--json", *args, env=env).stdout)
    return call


# Processes in systemd units without systemd: real cgroups (test_services, test_ansible).
def cgroup_roots():
    """{"v1": the name=systemd hierarchy's mount point, "v2": the cgroup2 one}, as mounted."""
    roots = {}
    for line in open("/proc/self/mounts"):
        _, mp, fstype, opts = line.split()[:4]
        if fstype == "cgroup" and "name=systemd" in opts.split(","):
            roots.setdefault("v1", mp)
        elif fstype == "cgroup2":
            roots.setdefault("v2", mp)
    return roots


class Cgroups:
    """Cgroups made by a test (path below a hierarchy's root, e.g. system.slice/x.service),
    and the processes it starts in them; everything goes at teardown."""

    def __init__(self, procs):
        self.procs = procs
        self.roots = cgroup_roots()
        self.made = []  # absolute paths, parents first
        self.tag = f"bt{os.getpid()}"

    def unit(self, name):
        """A unit name private to this test run: 'app' -> 'bt1234-app.service'."""
        return f"{self.tag}-{name}"

    def make(self, tree, rel):
        path = self.roots[tree]
        for part in rel.split("/"):
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                os.mkdir(path)
                self.made.append(path)
        return path

    def start(self, argv, tree, rel, **kw):
        """argv, started in cgroup rel of tree ("v1", "v2") and in the root cgroup of the
        other; in the root cgroup of each for rel "/" (a process in no unit at all)."""
        # the other hierarchy's root: no unit there that could count instead
        dirs = [self.make(t, rel) if t == tree and rel != "/" else root
                for t, root in self.roots.items()]

        def enter():
            for d in dirs:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))

        p = self.procs.start(argv, preexec_fn=enter, stdout=subprocess.PIPE, text=True, **kw)
        assert p.stdout.readline().startswith("version"), "the program did not start"
        return p

    def cleanup(self):
        self.procs.cleanup()  # killed by pid and reaped: they have left their cgroups
        for path in reversed(self.made):
            try:
                os.rmdir(path)
            except OSError:
                pass  # e.g. system.slice still holding another run's cgroup


@pytest.fixture
def cgroups(binary, procs):
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: the tests do not make cgroups in its tree")
    c = Cgroups(procs)
    if "v1" not in c.roots and "v2" not in c.roots:
        pytest.skip("no cgroup hierarchy of systemd's kind is mounted")
    for root in c.roots.values():
        if not os.access(os.path.join(root, "cgroup.procs"), os.W_OK):
            pytest.skip(f"{root} is not writable")
    yield c
    c.cleanup()


@pytest.fixture
def recorder(workdir):
    """A stand-in for systemctl that appends its arguments to a file and exits with the
    status in the file `rc` next to it (0 if there is none)."""
    log = os.path.join(workdir, "systemctl.log")
    script = os.path.join(workdir, "systemctl")
    write(script, f"""#!/bin/sh
echo "$*" >> {log}
echo "systemctl output on stdout"
rc=$(cat {workdir}/rc 2>/dev/null || echo 0)
exit $rc
""", 0o755)

    def calls():
        return open(log).read().splitlines() if os.path.exists(log) else []

    return script, calls


@pytest.fixture
def both(mnt, workdir):
    """(native dir, mount): two empty directories, side by side, same owner and mode."""
    nat = os.path.join(workdir, "native")
    os.mkdir(nat)
    os.chmod(nat, os.stat(mnt.p()).st_mode & 0o7777)
    return nat, mnt


# Small programs the tests build once per session.
@pytest.fixture(scope="session")
def cbuild(tmp_path_factory):
    d = tmp_path_factory.mktemp("cprogs")

    def build(name, source, *flags):
        out = d / name
        if not out.exists():
            src = d / (name + ".c")
            src.write_text(source)
            subprocess.run(["cc", "-O1", "-o", str(out), str(src), *flags], check=True)
        return str(out)

    return build


def program(cbuild, version):
    """A tiny executable that prints its version, then sleeps argv[1] seconds."""
    return cbuild(f"prog{version}", f"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int c, char **v) {{ printf("version {version}\\n"); fflush(stdout);
  if (c > 1) sleep(atoi(v[1])); return 0; }}
""")


@pytest.fixture
def loopfs(binary, workdir):
    """loopfs(kind="ext4", size_mb=64, opts=("nosync",), setup=None) -> Mount of binvfs over
    SOURCE = the root of a fresh filesystem (ext4 without reserved blocks, or xfs with reflink)
    made on an image file in workdir and loop-mounted there; setup(src) runs before the
    mount. Teardown stops binvfs, then unmounts the filesystem (its loop device goes too)."""
    made = []  # [fs dir, Mount or None]

    def make(kind="ext4", size_mb=64, opts=("nosync",), setup=None):
        mkfs = {"ext4": ["mkfs.ext4", "-q", "-F", "-m", "0"],
                "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]}[kind]
        if not shutil.which(mkfs[0]):
            pytest.skip(f"{mkfs[0]} is missing (scripts/deps --test installs it)")
        fsdir = os.path.join(workdir, f"{kind}{len(made)}")
        img = fsdir + ".img"
        with open(img, "wb") as f:
            f.truncate(size_mb << 20)
        # mkfs looks for its image in the mount table and stats every mount's source: one
        # hung FUSE mount on the machine (anybody's) would hang it. It runs where FUSE mounts
        # are lazily detached: a private mount namespace of its own.
        fuse = [e.point for e in mountinfo() if e.fstype.startswith("fuse")]
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        'for m in "$@"; do [ "$m" = -- ] && break; umount -l "$m"; shift; '
                        'done; shift; exec "$@"', "sh", *fuse, "--", *mkfs, img],
                       check=True, capture_output=True, timeout=120)
        os.mkdir(fsdir)
        subprocess.run(["mount", "-o", "loop", img, fsdir], check=True, capture_output=True)
        entry = [fsdir, None]
        made.append(entry)
        src = os.path.join(fsdir, "src")
        os.mkdir(src)
        if setup:
            setup(src)
        entry[1] = Mount(binary, src, opts)
        return entry[1].start()

    yield make
    errors = []
    for fsdir, m in reversed(made):
        try:
            if m:
                m.stop()
        except AssertionError as e:
            errors.append(str(e))
        if subprocess.run(["umount", fsdir], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", fsdir], capture_output=True)
    assert not errors, "\n".join(errors)


# Real local users for attacks (tests/test_security*.py): two unprivileged users in one group.
@pytest.fixture(scope="session")
def team():
    """{"alice", "mallory": Actor, "gid": the group they share}: a group and two users made
    with groupadd/useradd (system accounts, no home, nologin), each with a group of its own,
    both members of the shared one; removed at the end of the session."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    tag = f"{os.getpid() % 100000}"
    group, names = f"bvteam{tag}", {"alice": f"bvalice{tag}", "mallory": f"bvmal{tag}"}
    made = []
    try:
        subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
        made.append(("groupdel", group))
        for login in names.values():
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "-G",
                            group, "--shell", "/usr/sbin/nologin", login], check=True,
                           capture_output=True)
            made.append(("userdel", login))
        import grp
        import pwd
        gid = grp.getgrnam(group).gr_gid
        team = {"gid": gid}
        for who, login in names.items():
            pw = pwd.getpwnam(login)
            team[who] = Actor(who, pw.pw_uid, pw.pw_gid, [gid])
        yield team
    finally:
        for cmd, name in reversed(made):
            subprocess.run([cmd, name], capture_output=True)
