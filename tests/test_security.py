"""Security: through the mount nobody gets in where they don't belong.

- the same permission matrix (read, write open, exec, create, unlink, rename; owner, group and
  other modes; a sticky directory) run natively on a plain directory and through binvfs, as
  root, `nobody`, a test user and a member of the test user's group: identical results;
- `.versions/` never shows anyone more than the file showed;
- setuid/setgid bits and device nodes are not honoured unless the admin asks (`-o suid`);
- the `/proc/<tid>/syscall` routing gives a hostile process at most a staging copy of its own:
  permission checks stay the kernel's, faked or racing open flags change nothing, and a flood
  of fake writers does not make other users' writes fail.
"""
import errno
import json
import os
import pwd
import grp
import shutil
import stat
import subprocess
import time

import pytest

from conftest import program
from util import (NOBODY, Actor, as_actor, as_user, attempt, err_name, mountinfo, open_world,
                  read, reopen_for_write, run)
MODES = (0o600, 0o640, 0o644, 0o700, 0o750, 0o755, 0o711)


# ---------------------------------------------------------------------------------------------
# helpers

def free_id(start, taken):
    for i in range(start, start + 2000):
        if i not in taken:
            return i
    raise AssertionError("no free id")


@pytest.fixture(scope="module")
def people():
    """root, nobody, a test user (created with useradd if it exists, removed at teardown) and
    a member of the test user's group (a bare uid, only ever used through setresuid)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"bvsec{os.getpid() % 100000}"
    created = False
    if shutil.which("useradd"):
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                            "--shell", "/usr/sbin/nologin", name], capture_output=True)
        created = r.returncode == 0
    taken_u = {p.pw_uid for p in pwd.getpwall()}
    taken_g = {g.gr_gid for g in grp.getgrall()}
    if created:
        pw = pwd.getpwnam(name)
        tuid, tgid = pw.pw_uid, pw.pw_gid
    else:
        tuid = tgid = free_id(61000, taken_u | taken_g)
    mate = free_id(tuid + 1 if tuid >= 61000 else 61500, taken_u | taken_g | {tuid, tgid})
    try:
        yield {
            "root": Actor("root", 0, 0),
            "nobody": Actor("nobody", NOBODY, NOBODY),
            "user": Actor("user", tuid, tgid),
            "groupmate": Actor("groupmate", mate, mate, [tgid]),
        }
    finally:
        if created:
            subprocess.run(["userdel", name], capture_output=True)
            r = subprocess.run(["getent", "passwd", name], capture_output=True)
            assert r.returncode != 0, f"test user {name} left behind"


def public_copy(workdir, path):
    """A copy of a test program that other users can run (cbuild's directory is 0700)."""
    d = os.path.join(workdir, "pub")
    os.makedirs(d, mode=0o755, exist_ok=True)
    out = os.path.join(d, os.path.basename(path))
    shutil.copyfile(path, out)
    os.chmod(out, 0o755)
    return out


def run_as(actor, cmd, **kw):
    return run(cmd, **actor.popen_kw(), **kw)


def mount_options(path):
    for e in mountinfo("fuse.binvfs"):
        if e.point == path:
            return set(e.opts.split(","))
    raise AssertionError(f"{path} not mounted")


# ---------------------------------------------------------------------------------------------
# the permission matrix

def tree_spec(people):
    u = people["user"]
    dirs = {  # name: (uid, gid, mode)
        "root755": (0, 0, 0o755),
        "user755": (u.uid, u.gid, 0o755),
        "user775": (u.uid, u.gid, 0o775),
        "user700": (u.uid, u.gid, 0o700),
        "sticky": (0, 0, 0o1777),
    }
    owners = {"root": (0, u.gid), "user": (u.uid, u.gid)}  # the group is the test user's
    return dirs, owners


def file_ids(owners):
    return [f"{o}{m:o}" for o in owners for m in MODES]


def build_tree(base, people, elf):
    """The same tree natively and through the mount (built as root, then chowned/chmodded):
    f_<owner><mode> to read/write/exec, u_<actor>_<owner><mode> to unlink and
    r_<actor>_<owner><mode> to rename, in every directory."""
    dirs, owners = tree_spec(people)
    os.chmod(base, 0o755)
    for d, (duid, dgid, dmode) in dirs.items():
        os.mkdir(os.path.join(base, d))
        for o, (fuid, fgid) in owners.items():
            for mode in MODES:
                fid = f"{o}{mode:o}"
                names = [f"f_{fid}"] + [f"{p}_{a}_{fid}" for a in people for p in ("u", "r")]
                for name in names:
                    p = os.path.join(base, d, name)
                    if name.startswith("f_"):
                        shutil.copyfile(elf, p)
                    else:
                        with open(p, "w") as f:
                            f.write(f"{d}/{name}\n")
                    os.chown(p, fuid, fgid)
                    os.chmod(p, mode)
        os.chown(os.path.join(base, d), duid, dgid)
        os.chmod(os.path.join(base, d), dmode)


def snapshot(base):
    """{relpath: (type, mode, uid, gid, size, content-if-small)} below base, without the
    mount root's .versions."""
    out = {}
    for d, dirs, files in os.walk(base):
        if d == base and ".versions" in dirs:
            dirs.remove(".versions")
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode) and st.st_size < 4096:
                data = read(p).decode(errors="replace")
            out[os.path.relpath(p, base)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_uid, st.st_gid, st.st_size, data)
    return out


def matrix_ops(base, people, actor):
    """Every operation of the matrix, as `actor` (run inside as_actor)."""
    dirs, owners = tree_spec(people)
    res = {}

    def read_some(p):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.read(fd, 16)
        finally:
            os.close(fd)

    def exec_(p):
        try:
            r = subprocess.run([p], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=20)
        except OSError as e:
            return err_name(e)
        return "ok" if r.returncode == 0 else f"exit {r.returncode}"

    def create(p):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"created\n")
        os.close(fd)

    for d in dirs:
        dp = os.path.join(base, d)
        for fid in file_ids(owners):
            f = os.path.join(dp, f"f_{fid}")
            res[f"read {d}/{fid}"] = attempt(lambda: read_some(f))
            res[f"write {d}/{fid}"] = attempt(lambda: os.close(os.open(f, os.O_WRONLY)))
            res[f"exec {d}/{fid}"] = exec_(f)
            res[f"unlink {d}/{fid}"] = attempt(
                lambda: os.unlink(os.path.join(dp, f"u_{actor}_{fid}")))
            res[f"rename {d}/{fid}"] = attempt(
                lambda: os.rename(os.path.join(dp, f"r_{actor}_{fid}"),
                                  os.path.join(dp, f"r_{actor}_{fid}.moved")))
        res[f"create {d}"] = attempt(lambda: create(os.path.join(dp, f"c_{actor}")))
    return res


def run_matrix(base, people):
    return {name: as_actor(a, lambda: matrix_ops(base, people, name))
            for name, a in people.items()}


def diff(native, mounted):
    lines = []
    for actor in native:
        for k in sorted(native[actor]):
            if native[actor][k] != mounted[actor].get(k):
                lines.append(f"{actor:9} {k:28} native {native[actor][k]:8} "
                             f"mounted {mounted[actor].get(k)}")
    return "\n".join(lines)


@pytest.fixture
def matrix(mounter, workdir, people):
    """The tree built natively and through the mount, the matrix run on both."""
    open_world(workdir)
    elf = shutil.which("true")
    native = os.path.join(workdir, "native")
    os.mkdir(native)
    build_tree(native, people, elf)
    m = mounter()
    build_tree(m.p(), people, elf)
    before = snapshot(native)
    assert snapshot(m.p()) == before, "the tree differs through the mount before the matrix"
    res_native = run_matrix(native, people)
    res_mounted = run_matrix(m.p(), people)
    return {"m": m, "native": native, "before": before, "res_native": res_native,
            "res_mounted": res_mounted}


def test_permission_matrix_native_equals_mounted(matrix):
    n, mt = matrix["res_native"], matrix["res_mounted"]
    # the matrix means something: spot checks of what the kernel answers natively
    expect = {
        ("nobody", "read root755/root600"): "EACCES",
        ("nobody", "read root755/root644"): "ok",
        ("user", "read root755/root640"): "ok",       # by group
        ("groupmate", "read user755/user640"): "ok",  # by group
        ("groupmate", "read user755/user600"): "EACCES",
        ("root", "read user755/user600"): "ok",
        ("root", "write user755/user600"): "ok",
        ("nobody", "write root755/root755"): "EACCES",
        ("user", "write root755/root644"): "EACCES",
        ("user", "write user755/user644"): "ok",
        ("root", "exec root755/root600"): "EACCES",   # root too needs an x bit
        ("root", "exec user755/user700"): "ok",
        ("nobody", "exec root755/root711"): "ok",
        ("nobody", "exec root755/root750"): "EACCES",
        ("groupmate", "exec user755/user750"): "ok",
        ("nobody", "read user700/user644"): "EACCES",  # the directory stops it
        ("nobody", "create root755"): "EACCES",
        ("nobody", "create sticky"): "ok",
        ("groupmate", "create user775"): "ok",
        ("groupmate", "unlink user775/root600"): "ok",
        ("nobody", "unlink root755/user644"): "EACCES",
        ("user", "unlink sticky/root644"): "EPERM",    # sticky: not the owner
        ("user", "unlink sticky/user600"): "ok",
        ("user", "rename sticky/root755"): "EPERM",
        ("nobody", "unlink sticky/user644"): "EPERM",
        ("nobody", "rename sticky/root644"): "EPERM",
        ("root", "unlink sticky/user600"): "ok",
    }
    wrong = {k: n[k[0]][k[1]] for k, v in expect.items() if n[k[0]][k[1]] != v}
    assert not wrong, f"native results not as the kernel should answer: {wrong}"
    d = diff(n, mt)
    assert not d, "native and mounted results differ:\n" + d
    total = sum(len(v) for v in n.values())
    assert total == 4 * (5 * 14 * 5 + 5)


def test_permission_matrix_leaves_the_same_tree(matrix):
    """After the matrix both trees hold the same names, owners, modes and contents: write
    opens changed nothing, creates belong to their creator."""
    m = matrix["m"]
    after_native = snapshot(matrix["native"])
    after_mounted = snapshot(m.p())
    assert after_native != matrix["before"]  # unlinks, renames and creates happened
    only_n = set(after_native) - set(after_mounted)
    only_m = set(after_mounted) - set(after_native)
    assert not only_n and not only_m, (sorted(only_n), sorted(only_m))
    changed = {k: (after_native[k], after_mounted[k]) for k in after_native
               if after_native[k] != after_mounted[k]}
    assert not changed, changed
    # and the mounted tree agrees with its own SOURCE once unmounted
    m.stop()
    assert snapshot(m.src) == after_mounted


def test_versions_show_no_more_than_the_files_did(matrix, people):
    """Every file the matrix removed through the mount is a version now, with the mode and
    owner it had; each user can read a version exactly when they could read the file."""
    m, before = matrix["m"], matrix["before"]
    dirs, owners = tree_spec(people)
    removed = [(d, a, fid) for a in people for d in dirs for fid in file_ids(owners)
               if matrix["res_mounted"][a][f"unlink {d}/{fid}"] == "ok"]
    assert len(removed) > 100
    listed = {d: sorted(os.listdir(m.p(".versions", d))) for d in dirs}
    assert sum(len(v) for v in listed.values()) == len(removed), listed
    for d, (duid, dgid, dmode) in dirs.items():
        st = os.stat(m.p(".versions", d))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (dmode, duid, dgid), d
    for d, a, fid in removed:
        v = m.p(".versions", d, f"u_{a}_{fid}.~1~")
        st = os.stat(v)
        _, mode, uid, gid, size, data = before[f"{d}/u_{a}_{fid}"]
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == \
            (mode, uid, gid, size), v
        assert read(v).decode() == data

    def read_versions(actor):
        out = {}
        for d, a, fid in removed:
            p = os.path.join(m.p(".versions", d, f"u_{a}_{fid}.~1~"))
            out[f"{d}/{a}/{fid}"] = attempt(lambda: os.close(os.open(p, os.O_RDONLY)))
        return out

    for name, actor in people.items():
        got = as_actor(actor, lambda: read_versions(name))
        # the file f_<fid> in the same directory has the same owner and mode
        want = {f"{d}/{a}/{fid}": matrix["res_native"][name][f"read {d}/{fid}"]
                for d, a, fid in removed}
        bad = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
        assert not bad, f"{name}: (file natively, version): {bad}"


def test_version_in_a_directory_closed_later_stays_closed(mnt, workdir, people):
    """A directory that was open when its mirror in .versions/ was made and closed later
    (chmod 0700, or removed and made again 0700): versions of what was written after that
    must not be readable through .versions/ by those the tree now keeps out."""
    open_world(workdir)
    nobody = people["nobody"]
    leaks = []
    for d, how in (("chmodded", "chmod"), ("remade", "rmdir")):
        os.mkdir(mnt.p(d), 0o755)
        with open(mnt.p(d, "x"), "w") as f:
            f.write("public\n")
        os.chmod(mnt.p(d, "x"), 0o644)
        with open(mnt.p(d, "x"), "w") as f:  # the mirror .versions/<d>/ appears, 0755
            f.write("public 2\n")
        if how == "chmod":
            os.chmod(mnt.p(d), 0o700)
        else:
            os.unlink(mnt.p(d, "x"))
            os.rmdir(mnt.p(d))
            os.mkdir(mnt.p(d), 0o700)
            with open(mnt.p(d, "x"), "w") as f:
                f.write("public 3\n")
            os.chmod(mnt.p(d, "x"), 0o644)
        with open(mnt.p(d, "x"), "w") as f:  # secret: the directory keeps others out
            f.write("secret\n")
        with open(mnt.p(d, "x"), "w") as f:  # "secret" becomes a version
            f.write("newer\n")
        assert as_actor(nobody, lambda: attempt(lambda: read(mnt.p(d, "x")))) == "EACCES"
        vs = sorted(os.listdir(mnt.p(".versions", d)))
        secret = [v for v in vs if read(mnt.p(".versions", d, v)) == b"secret\n"]
        assert len(secret) == 1, vs
        res = as_actor(nobody, lambda: attempt(
            lambda: read(mnt.p(".versions", d, secret[0]))))
        if res != "EACCES":
            leaks.append(f"{how}: nobody reads .versions/{d}/{secret[0]} ({res}), written "
                         f"while {d}/ was 0700")
    assert not leaks, leaks


# ---------------------------------------------------------------------------------------------
# setuid, setgid, devices

def install_setid(path, source, mode):
    shutil.copyfile(source, path)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def ids_of(actor, path):
    r = run_as(actor, [path, "-u"])
    s = run_as(actor, [path, "-g"])
    assert r.returncode == 0 and s.returncode == 0, (r.stderr, s.stderr)
    return int(r.stdout), int(s.stdout)


def test_setuid_root_copy_of_id_not_honoured_by_default(mounter, workdir, people):
    open_world(workdir)
    nobody = people["nobody"]
    idbin = shutil.which("id")
    native = os.path.join(workdir, "native")
    os.mkdir(native, 0o755)
    install_setid(os.path.join(native, "id"), idbin, 0o6755)
    # control: the filesystem below honours setuid, so the bits are what is tested
    assert ids_of(nobody, os.path.join(native, "id")) == (0, 0)

    m = mounter()
    os.chmod(m.p(), 0o755)
    opts = mount_options(m.path)
    assert "nosuid" in opts and "nodev" in opts, opts
    install_setid(m.p("id"), idbin, 0o6755)
    assert ids_of(nobody, m.p("id")) == (NOBODY, NOBODY)
    # an old setuid version is not honoured either
    id2 = os.path.join(workdir, "id2")  # another id: one byte more
    with open(id2, "wb") as f:
        f.write(read(idbin) + b"\0")
    shutil.copyfile(id2, m.p("id"))  # cp over: the setuid copy becomes .versions/id.~1~
    assert stat.S_IMODE(os.stat(m.p("id")).st_mode) == 0o6755
    v = m.p(".versions", "id.~1~")
    assert stat.S_IMODE(os.stat(v).st_mode) == 0o6755
    assert ids_of(nobody, v) == (NOBODY, NOBODY)
    assert ids_of(nobody, m.p("id")) == (NOBODY, NOBODY)


def test_suid_option_honours_setuid(mounter, workdir, people):
    """The admin asked (-o suid): then, and only then, setuid works as natively."""
    open_world(workdir)
    m = mounter(opts=("nosync", "suid"))
    os.chmod(m.p(), 0o755)
    assert "nosuid" not in mount_options(m.path)
    install_setid(m.p("id"), shutil.which("id"), 0o6755)
    assert ids_of(people["nobody"], m.p("id")) == (0, 0)


def test_device_nodes_not_honoured_by_default(mounter, workdir):
    native = os.path.join(workdir, "native")
    os.mkdir(native)
    os.mknod(os.path.join(native, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fd = os.open(os.path.join(native, "null"), os.O_RDWR)  # control
    os.close(fd)
    m = mounter()
    os.mknod(m.p("null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert stat.S_ISCHR(os.lstat(m.p("null")).st_mode)
    with pytest.raises(OSError) as e:
        os.open(m.p("null"), os.O_RDWR)
    assert e.value.errno == errno.EACCES


# ---------------------------------------------------------------------------------------------
# hostile processes and the /proc/<tid>/syscall routing

WRITE_TRIES = {
    "O_WRONLY": lambda p: os.close(os.open(p, os.O_WRONLY)),
    "O_RDWR": lambda p: os.close(os.open(p, os.O_RDWR)),
    "O_TRUNC": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)),
    "O_APPEND": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_APPEND)),
    "O_RDONLY|O_TRUNC": lambda p: os.close(os.open(p, os.O_RDONLY | os.O_TRUNC)),
    "O_CREAT": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o777)),
    "truncate": lambda p: os.truncate(p, 0),
    "reopen_proc_fd": lambda p: reopen_for_write(p),
}


def hostile_tries(path):
    out = {k: attempt(lambda: fn(path)) for k, fn in WRITE_TRIES.items()}
    # right after its failed write opens, its reads and execs still see the published file
    with open(path, "rb") as f:
        out["read"] = f.read().hex()[:64]
    out["exec"] = subprocess.run([path], stdout=subprocess.DEVNULL, timeout=20).returncode
    return out


def test_nobody_write_to_root_binary_is_eacces_as_natively(mnt, workdir, people, procs,
                                                           cbuild):
    """nobody opening a root-owned 0755 binary for writing, in every way, while root runs
    it: EACCES exactly as natively; nothing changes, no version appears."""
    open_world(workdir)
    prog = program(cbuild, 1)
    native = os.path.join(workdir, "native")
    os.mkdir(native, 0o755)
    os.chmod(mnt.p(), 0o755)
    results = {}
    for where, path in (("native", os.path.join(native, "app")), ("mounted", mnt.p("app"))):
        shutil.copyfile(prog, path)
        os.chmod(path, 0o755)
        runner = procs.start([path, "30"], stdout=subprocess.PIPE, text=True)
        assert runner.stdout.readline() == "version 1\n"
        results[where] = as_actor(people["nobody"], lambda: hostile_tries(path))
        assert runner.poll() is None
        assert read(path) == read(prog)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
        runner.kill()
        runner.wait()
    assert results["native"]["O_WRONLY"] == "EACCES"
    assert results["mounted"] == results["native"]
    assert os.listdir(mnt.p(".versions")) == []
    with open(mnt.p("app"), "rb") as f:
        assert f.read() == read(prog)


OPENAT2_RACE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* openat2 reads its flags from our memory once; binvfs reads them again at LOOKUP
 * (process_vm_readv). A second thread flips them all the time, so the two disagree. */
static struct open_how how;
static volatile int stop;

static void *flip(void *arg) {
  (void)arg;
  while (!stop) {
    __atomic_store_n(&how.flags, (unsigned long long)O_WRONLY, __ATOMIC_RELAXED);
    __atomic_store_n(&how.flags, (unsigned long long)O_RDONLY, __ATOMIC_RELAXED);
  }
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  static char want[1 << 20], got[1 << 20];
  long rd = 0, wr = 0, eacces = 0, other = 0, bad = 0;
  int efd = open(argv[2], O_RDONLY);
  ssize_t wl = read(efd, want, sizeof want);
  double end = now() + atof(argv[3]);
  pthread_t t;
  close(efd);
  pthread_create(&t, NULL, flip, NULL);
  while (now() < end) {
    int fd = syscall(SYS_openat2, AT_FDCWD, argv[1], &how, sizeof how);
    if (fd < 0) {
      if (errno == EACCES) eacces++;
      else { other++; fprintf(stderr, "openat2: %s\n", strerror(errno)); }
      continue;
    }
    if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY) {
      wr++;
    } else {
      ssize_t n = 0, r;
      while ((r = read(fd, got + n, sizeof got - n)) > 0) n += r;
      if (n != wl || memcmp(got, want, (size_t)n)) bad++;
      rd++;
    }
    close(fd);
  }
  stop = 1;
  pthread_join(t, NULL);
  printf("%ld %ld %ld %ld %ld\n", rd, wr, eacces, other, bad);
  return 0;
}
"""


def test_racing_openat2_flags_get_nothing_more(mnt, workdir, people, cbuild, procs):
    """A nobody process whose openat2 flags flip between O_RDONLY and O_WRONLY while binvfs
    reads them (a faked /proc/<tid>/syscall view): on root's 0755 binary every open is a
    correct read or EACCES; root's execs meanwhile run the right program; nothing changes."""
    open_world(workdir)
    os.chmod(mnt.p(), 0o755)
    racer = public_copy(workdir, cbuild("openat2race", OPENAT2_RACE, "-pthread"))
    prog = public_copy(workdir, program(cbuild, 1))
    app = mnt.p("app")
    shutil.copyfile(prog, app)
    os.chmod(app, 0o755)
    p = procs.start([racer, app, prog, "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, **people["nobody"].popen_kw())
    runs = 0
    while p.poll() is None:
        r = subprocess.run([app], capture_output=True, text=True, timeout=20)
        assert (r.returncode, r.stdout) == (0, "version 1\n")
        runs += 1
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    rd, wr, eacces, other, bad = map(int, out.split())
    assert wr == 0 and bad == 0 and other == 0, (out, err)
    assert rd > 0 and eacces > 0, out  # both ways were taken
    assert runs > 0
    assert read(app) == read(prog)
    assert os.listdir(mnt.p(".versions")) == []


def test_nobody_truncates_its_own_running_binary(mounter, workdir, people, cbuild, procs):
    """nobody's own program, run by another nobody process, truncated and rewritten by nobody:
    works through the mount (natively: ETXTBSY); the runner keeps running; the old program is
    nobody's version. That is all routing gives: a staging copy of what you may write."""
    open_world(workdir)
    nobody = people["nobody"]
    v1, v2 = public_copy(workdir, program(cbuild, 1)), public_copy(workdir, program(cbuild, 2))
    native = os.path.join(workdir, "native")
    m = mounter()
    os.chmod(m.p(), 0o755)
    res = {}
    for where, base in (("native", native), ("mounted", m.p())):
        os.makedirs(os.path.join(base, "home"))
        os.chown(os.path.join(base, "home"), NOBODY, NOBODY)
        app = os.path.join(base, "home", "app")
        shutil.copyfile(v1, app)
        os.chown(app, NOBODY, NOBODY)
        os.chmod(app, 0o755)
        runner = procs.start([app, "30"], stdout=subprocess.PIPE, text=True,
                             **nobody.popen_kw())
        assert runner.stdout.readline() == "version 1\n"

        def rewrite():
            out = {"truncate": attempt(lambda: os.truncate(app, 0))}

            def put():
                with open(app, "r+b") as f:
                    f.write(read(v2))
            out["write"] = attempt(put)
            return out

        res[where] = as_actor(nobody, rewrite)
        assert runner.poll() is None, where
        runner.kill()
        runner.wait()
    assert res["native"] == {"truncate": "ETXTBSY", "write": "ETXTBSY"}
    assert res["mounted"] == {"truncate": "ok", "write": "ok"}
    app = m.p("home", "app")
    r = run_as(nobody, [app])
    assert r.stdout == "version 2\n"
    vs = sorted(os.listdir(m.p(".versions", "home")))
    assert vs == ["app.~1~", "app.~2~"]  # v1, then the empty file the truncate published
    st = os.stat(m.p(".versions", "home", "app.~1~"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o755)
    assert read(m.p(".versions", "home", "app.~1~")) == read(v1)
    # and nobody still cannot touch root's files through its routes
    with open(m.p("rootfile"), "w") as f:
        f.write("root\n")
    os.chmod(m.p("rootfile"), 0o755)
    assert as_actor(nobody, lambda: attempt(lambda: os.truncate(m.p("rootfile"), 0))) == \
        "EACCES"
    assert read(m.p("rootfile")) == b"root\n"


FLOOD = r"""
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Many threads, each opening a file it may not write for writing: every LOOKUP looks like a
 * writer's to binvfs, which answers EACCES-bound staging nodeids. */
static const char *path;
static double secs;
static long eacces, other;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *run(void *arg) {
  double end = now() + secs;
  (void)arg;
  while (now() < end) {
    int fd = open(path, O_WRONLY);
    if (fd >= 0) { close(fd); __atomic_add_fetch(&other, 1, __ATOMIC_RELAXED); }
    else if (errno == EACCES) __atomic_add_fetch(&eacces, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&other, 1, __ATOMIC_RELAXED);
  }
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t t[256];
  int n = atoi(argv[3]);
  path = argv[1];
  secs = atof(argv[2]);
  for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, run, NULL);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  printf("%ld %ld\n", eacces, other);
  return 0;
}
"""


def test_flood_of_fake_writers_does_not_fail_other_writers(mnt, workdir, people, cbuild,
                                                           procs):
    """100 nobody threads open root's 0755 binary for writing in a loop (EACCES each time,
    but each LOOKUP first takes a writer route). Root's ordinary writes to a data file
    meanwhile must still succeed: a hostile user gets at most staging copies of its own, not
    other users' writes failing (ESTALE)."""
    open_world(workdir)
    os.chmod(mnt.p(), 0o755)
    flood = public_copy(workdir, cbuild("flood", FLOOD, "-pthread"))
    shutil.copyfile(shutil.which("true"), mnt.p("rootbin"))
    os.chmod(mnt.p("rootbin"), 0o755)
    data = mnt.p("data")
    with open(data, "w") as f:
        f.write("0\n")
    p = procs.start([flood, mnt.p("rootbin"), "6", "100"], stdout=subprocess.PIPE, text=True,
                    **people["nobody"].popen_kw())
    time.sleep(0.5)
    failures, n = [], 0
    while p.poll() is None and n < 50:
        n += 1
        try:
            with open(data, "w") as f:
                f.write(f"{n}\n")
        except OSError as e:
            failures.append(err_name(e))
    out, _ = p.communicate(timeout=60)
    eacces, other = map(int, out.split())
    assert other == 0 and eacces > 0, out
    assert n > 0
    assert not failures, f"{len(failures)} of {n} root writes failed during the flood: " \
        f"{sorted(set(failures))}"
    assert read(data) == f"{n}\n".encode()


def hostile_comm_writer(path, data):
    """Name ourselves like the fields of /proc/PID/stat that tell a killed writer from a
    normal close (comm is the one field a process chooses), then write and close normally."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    assert libc.prctl(PR_SET_NAME, b"x) X 1 1 4 9 9", 0, 0, 0) == 0
    with open(f"/proc/{os.getpid()}/comm") as f:
        comm = f.read()
    with open(path, "wb") as f:
        f.write(data)
    return comm


def test_hostile_comm_cannot_fake_the_closer(mnt, workdir, people):
    """The closer is judged from /proc/PID/stat, whose comm field the process sets itself:
    a name full of ')' and fake fields changes nothing, its write is published as usual, and
    it still cannot write what it may not."""
    open_world(workdir)
    os.chmod(mnt.p(), 0o755)
    nobody = people["nobody"]
    os.mkdir(mnt.p("home"))
    os.chown(mnt.p("home"), NOBODY, NOBODY)
    mine = mnt.p("home", "mine")
    with open(mine, "w") as f:
        f.write("old\n")
    os.chown(mine, NOBODY, NOBODY)
    os.chmod(mine, 0o755)
    comm = as_actor(nobody, lambda: hostile_comm_writer(mine, b"new\n"))
    assert comm.startswith("x) X")
    assert read(mine) == b"new\n"
    assert read(mnt.p(".versions", "home", "mine.~1~")) == b"old\n"
    with open(mnt.p("rootfile"), "w") as f:
        f.write("root\n")
    os.chmod(mnt.p("rootfile"), 0o755)
    res = as_actor(nobody, lambda: attempt(
        lambda: hostile_comm_writer(mnt.p("rootfile"), b"evil\n")))
    assert res == "EACCES"
    assert read(mnt.p("rootfile")) == b"root\n"


def test_only_root_can_prune_history(mnt, workdir):
    """Removing history through the prune request is the administrator's, even for a user
    who may write the directory."""
    os.chmod(workdir, 0o755)
    os.chmod(mnt.p(), 0o777)
    path = mnt.p("f")
    for i in range(3):
        with open(path, "w") as f:
            f.write(str(i))
    before = sorted(os.listdir(mnt.p(".versions")))
    assert as_user(lambda: os.setxattr(mnt.p(), "user.binvfs.prune", b"0")) == errno.EPERM
    assert sorted(os.listdir(mnt.p(".versions"))) == before == ["f.~1~", "f.~2~"]
    os.setxattr(mnt.p(), "user.binvfs.prune", b"0/f")
    assert os.listdir(mnt.p(".versions")) == []


# ---------------------------------------------------------------------------------------------
# The attacks of issue 18, each part in a module of its own (tests/security_*.py), all collected
# here: a writer's metadata, fair shares of space and fds (points 1, 5, 6); history no more open
# than the file was or is (2, 3); binvfsctl on hostile trees, names as data, bounded ELF
# parsing (4, 7, 8); and the hostile-user soak. conftest.py picks builds by each test's own
# module (the races also run on TSan).
import security_ctl  # noqa: E402
import security_daemon  # noqa: E402
import security_history  # noqa: E402
import security_soak  # noqa: E402

for _part in (security_daemon, security_history, security_ctl, security_soak):
    for _name, _obj in vars(_part).items():  # its tests and fixtures; its helpers stay its own
        if _name.startswith("test_") or hasattr(_obj, "_pytestfixturefunction"):
            assert _name not in globals(), f"{_part.__name__}.{_name} is defined twice"
            globals()[_name] = _obj
