"""Promise: crash safety.

SIGKILL the daemon while writers are writing or publishing, then mount the same SOURCE again
with the same binary: every file (current or old version) is one of the complete versions
that were written, staging leftovers are gone after the remount, and after a clean unmount
SOURCE holds just the current files plus .versions/ (old versions and the format marker).

SOURCE is inspected underneath the mount through a directory fd opened before mounting.
"""
import contextlib
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

from conftest import program
from util import Mount

STAGING = ".versions/.binvfs-staging"
MARKER = ".versions/.binvfs-format"
NODEIDS = ".versions/.binvfs-nodeids"


def sha_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha_file(path, dir_fd=None):
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    h = hashlib.sha256()
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)
    finally:
        os.close(fd)


def under_tree(srcfd):
    """{relpath: sha256} of every regular file in SOURCE itself (not through a mount), and
    the set of directories."""
    files, dirs = {}, set()
    for root, dnames, fnames, rootfd in os.fwalk(".", dir_fd=srcfd):
        rel = os.path.normpath(root)
        for d in dnames:
            dirs.add(os.path.normpath(os.path.join(rel, d)))
        for f in fnames:
            path = os.path.normpath(os.path.join(rel, f))
            files[path] = sha_file(f, dir_fd=rootfd)
    return files, dirs


def staging_entries(srcfd):
    """The files under the staging directory (each daemon's own directory in it, and loose
    ones); None if there is no staging directory."""
    try:
        fd = os.open(STAGING, os.O_RDONLY | os.O_DIRECTORY, dir_fd=srcfd)
    except FileNotFoundError:
        return None
    try:
        found = []
        for e in os.listdir(fd):
            if stat.S_ISDIR(os.stat(e, dir_fd=fd, follow_symlinks=False).st_mode):
                sub = os.open(e, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    found += [f"{e}/{f}" for f in os.listdir(sub)]
                finally:
                    os.close(sub)
            else:
                found.append(e)
        return found
    finally:
        os.close(fd)


def version_of(relpath):
    """'.versions/lib/data.bin.~3~' -> 'lib/data.bin'; None if not a version name."""
    if not relpath.startswith(".versions/"):
        return None
    base, sep, n = relpath[len(".versions/"):].rpartition(".~")
    if not sep or not n.endswith("~") or not n[:-1].isdigit():
        return None
    return base


@contextlib.contextmanager
def mounts(binary):
    """make(src) -> a started Mount; whatever is still running at the end is stopped."""
    made = []

    def make(src):
        m = Mount(binary, src)
        made.append(m)
        return m.start()

    try:
        yield make
    finally:
        for m in made:
            if m.proc is not None:
                m.stop(check=False)


@contextlib.contextmanager
def source_fd(src):
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def check_store(srcfd, known):
    """Every current file and every old version is one of the known complete versions, and
    the format marker is intact."""
    files, dirs = under_tree(srcfd)
    for path, digest in files.items():
        if path in (MARKER, NODEIDS):  # NODEIDS: the nodeid table of a clean stop
            continue
        if path.startswith(STAGING + "/"):
            continue  # checked separately: only right after a (re)mount
        name = version_of(path) or path
        assert name in known, f"unexpected file {path} in SOURCE"
        assert digest in known[name], f"{path} is not a complete version of {name}"
    for name in known:
        assert name in files, f"{name} is gone"
    assert files.get(MARKER) == sha_bytes(b"binvfs store format 1\n")
    return files, dirs


def check_clean_unmount(srcfd, known):
    """After a clean unmount: the current files, .versions/ with old versions, the marker and
    the nodeid table only (no staging directory, nothing else)."""
    files, dirs = check_store(srcfd, known)
    assert staging_entries(srcfd) is None, "staging directory left after a clean unmount"
    extra = {p for p in files if p not in (MARKER, NODEIDS) and p not in known and not version_of(p)}
    assert not extra, extra
    assert set(os.listdir(srcfd)) == {".versions"} | {n.split("/")[0] for n in known}
    tree_dirs = {os.path.dirname(n) for n in known} - {""}
    assert dirs <= tree_dirs | {".versions"} | {".versions/" + d for d in tree_dirs}, dirs
    files.pop(NODEIDS, None)
    return files


WRITER = r"""
import os, sys
path, newfile, how = sys.argv[1:4]
data = open(newfile, "rb").read()
fd = os.open(path, {"trunc": os.O_WRONLY | os.O_TRUNC, "rw": os.O_RDWR}[how])
os.write(fd, data[:len(data) // 2])
print("ready", flush=True)
sys.stdin.readline()
"""


def test_daemon_killed_mid_write_keeps_old_versions(binary, workdir, procs, cbuild):
    src = os.path.join(workdir, "src")
    os.makedirs(os.path.join(src, "lib"))
    old_app, new_app = os.path.join(workdir, "app1"), os.path.join(workdir, "app2")
    shutil.copy(program(cbuild, 1), old_app)
    shutil.copy(program(cbuild, 2), new_app)
    for f in (old_app, new_app):
        with open(f, "ab") as o:
            o.write(os.urandom(2 << 20))
    old_data, new_data = os.urandom(1 << 20), os.urandom(1 << 20)
    newdata_file = os.path.join(workdir, "data2")
    with open(newdata_file, "wb") as f:
        f.write(new_data)
    shutil.copy(old_app, os.path.join(src, "app"))
    with open(os.path.join(src, "lib", "data.bin"), "wb") as f:
        f.write(old_data)
    known = {"app": {sha_file(old_app)}, "lib/data.bin": {sha_bytes(old_data)}}

    with source_fd(src) as sfd, mounts(binary) as mount:
        m = mount(src)
        writers = [
            procs.start([sys.executable, "-c", WRITER, os.path.join(src, "app"), new_app,
                         "trunc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE),
            procs.start([sys.executable, "-c", WRITER, os.path.join(src, "lib", "data.bin"),
                         newdata_file, "rw"], stdin=subprocess.PIPE, stdout=subprocess.PIPE),
        ]
        for w in writers:
            assert w.stdout.readline() == b"ready\n"
        m.kill()  # the writers are mid-write, with half the new content each
        for w in writers:
            w.kill()
            w.wait(timeout=30)
        check_store(sfd, known)

        m = mount(src)
        assert staging_entries(sfd) == []
        check_store(sfd, known)
        assert sha_file(m.p("app")) in known["app"]
        assert subprocess.run([m.p("app")], capture_output=True).stdout == b"version 1\n"
        assert os.listdir(m.p(".versions")) == []
        # it works on: a publish keeps the old content as version 1
        assert subprocess.run(["cp", new_app, m.p("app")]).returncode == 0
        assert subprocess.run([m.p("app")], capture_output=True).stdout == b"version 2\n"
        assert sorted(os.listdir(m.p(".versions"))) == ["app.~1~"]
        m.stop()
        known["app"].add(sha_file(new_app))
        files = check_clean_unmount(sfd, known)
        assert files["app"] == sha_file(new_app)
        assert files[".versions/app.~1~"] == sha_file(old_app)
        assert sorted(files) == [".versions/.binvfs-format", ".versions/app.~1~", "app",
                                 "lib/data.bin"]


LOOP = r"""
i=0
while :; do
  i=$((i + 1))
  for v in 0 1 2; do
    cp "$1/app$v" app || exit 1
    cp "$1/data$v" lib/data.bin || exit 1
  done
  ./app > /dev/null || exit 1
done
"""


def test_daemon_killed_at_random_moments_during_publishes(binary, workdir, procs, cbuild):
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    vdir = os.path.join(workdir, "v")
    os.makedirs(vdir)
    known = {"app": set(), "lib/data.bin": set()}
    for v in range(3):
        app = os.path.join(vdir, f"app{v}")
        shutil.copy(program(cbuild, v + 1), app)
        with open(app, "ab") as f:
            f.write(os.urandom(3 << 20))
        data = os.path.join(vdir, f"data{v}")
        with open(data, "wb") as f:
            f.write(os.urandom(2 << 20))
        known["app"].add(sha_file(app))
        known["lib/data.bin"].add(sha_file(data))
    src = os.path.join(workdir, "src")
    os.makedirs(os.path.join(src, "lib"))
    shutil.copy(os.path.join(vdir, "app2"), os.path.join(src, "app"))
    shutil.copy(os.path.join(vdir, "data2"), os.path.join(src, "lib", "data.bin"))

    published = 0
    with source_fd(src) as sfd, mounts(binary) as mount:
        for i in range(10):
            what = f"iteration {i}, seed {seed}"
            m = mount(src)
            assert staging_entries(sfd) == [], what  # leftovers of the last crash removed
            check_store(sfd, known)
            for name in known:
                assert sha_file(m.p(name)) in known[name], what
            # the loop works relative to its cwd: once the daemon is dead, it fails there
            # instead of writing into SOURCE underneath
            loop = procs.start(["sh", "-c", LOOP, "sh", vdir], cwd=m.path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.02, 0.4))
            published += len([e for e in os.listdir(m.p(".versions")) if "~" in e])
            m.kill()
            try:
                loop.wait(timeout=10)
            except subprocess.TimeoutExpired:
                loop.send_signal(signal.SIGKILL)
                loop.wait(timeout=10)
            check_store(sfd, known)

        m = mount(src)
        assert staging_entries(sfd) == []
        check_store(sfd, known)
        for name in known:
            assert sha_file(m.p(name)) in known[name]
        for e in os.listdir(m.p(".versions")):
            if "~" in e:
                assert sha_file(m.p(".versions", e)) in known["app"]
        for e in os.listdir(m.p(".versions", "lib")):
            assert sha_file(m.p(".versions", "lib", e)) in known["lib/data.bin"]
        r = subprocess.run([m.p("app")], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout in ("version 1\n", "version 2\n", "version 3\n")
        m.stop()
        files = check_clean_unmount(sfd, known)
    assert published > 0, "the loop never published: the test tested nothing"
    assert any(version_of(p) for p in files)


def test_leftovers_of_a_crash_inside_publish_are_repaired(binary, workdir):
    """The two crash points inside a publish, set up by hand: (1) the staging file linked into
    .binvfs-staging, nothing else done; (2) additionally the current file already linked as
    its next version, the rename not done."""
    src = os.path.join(workdir, "src")
    os.makedirs(src)
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(b"current\n")
    known = {"f": {sha_bytes(b"current\n"), sha_bytes(b"next\n")}}
    with source_fd(src) as sfd, mounts(binary) as mount:
        m = mount(src)
        m.stop()  # creates the store
        # crash point 1 and 2 at once: a staging link and a version link of "current"
        os.mkdir(os.path.join(src, STAGING), 0o700)
        with open(os.path.join(src, STAGING, "p4242.7"), "wb") as f:
            f.write(b"half-publis")  # the format before per-daemon staging directories
        os.mkdir(os.path.join(src, STAGING, "d4243-0badf00d"), 0o700)
        with open(os.path.join(src, STAGING, "d4243-0badf00d", "p4243.1"), "wb") as f:
            f.write(b"half-publis")  # a daemon that is gone
        os.link(os.path.join(src, "f"), os.path.join(src, ".versions", "f.~1~"))

        m = mount(src)
        assert staging_entries(sfd) == []
        with open(m.p("f"), "rb") as f:
            assert f.read() == b"current\n"
        with open(m.p("f"), "wb") as f:
            f.write(b"next\n")
        # the version left linked by the crash is reused, not kept twice
        assert sorted(os.listdir(m.p(".versions"))) == ["f.~1~"]
        with open(m.p(".versions", "f.~1~"), "rb") as f:
            assert f.read() == b"current\n"
        m.stop()
        files = check_clean_unmount(sfd, known)
        assert sorted(files) == [".versions/.binvfs-format", ".versions/f.~1~", "f"]
        assert files["f"] == sha_bytes(b"next\n")
