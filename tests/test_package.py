"""The Debian package: `dpkg-buildpackage -b -us -uc` from a copy of the tree, lintian on the
result, then install it, mount through an fstab line and through `mount -t fuse.binvfs`, and
purge it.

The build runs in a temporary directory (dpkg-buildpackage writes its results to the parent
of the tree), from the files git knows (tracked, and untracked ones not ignored) or, outside a
git checkout, from the tree without build directories: a worktree, a fresh clone and a tarball
all work. The install touches nothing of the tests' own builds; the package is purged on every
path. The smoke test runs in a private mount namespace and never edits /etc/fstab.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT
from util import is_mounted, read, run, write

TOOLS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "lintian", "dpkg-deb", "unshare",
         "mount.fuse3")


def meson_version():
    return re.search(r"version\s*:\s*'([^']+)'", open(os.path.join(ROOT, "meson.build")).read())[1]


def copy_tree(dst):
    """The source tree into dst: what a checkout of it would hold."""
    r = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if r.returncode == 0 and r.stdout:
        for rel in r.stdout.split("\0"):
            src = os.path.join(ROOT, rel)
            if rel and os.path.isfile(src):  # a file deleted in the work tree is not there
                os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(dst, rel))
    else:
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
            ".git", "build*", "obj-*", "__pycache__", ".pytest_cache"))


def dpkg(*args):
    """dpkg, waiting up to 5 minutes for a lock another dpkg or apt holds."""
    end = time.monotonic() + 300
    while True:
        r = subprocess.run(["dpkg", *args], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if r.returncode == 0 or "locked by another process" not in r.stderr or \
                time.monotonic() > end:
            return r
        time.sleep(2)


def binvfs_named_files():
    """Every path on the system with binvfs in its name, but dpkg's own records and temporary
    directories: a maintainer script that leaves something behind shows up here."""
    r = run(["find", "/etc", "/usr", "/var", "/opt", "/run", "/srv", "-xdev", "(", "-path",
             "/var/lib/dpkg", "-o", "-path", "/var/tmp", ")", "-prune", "-o", "-iname",
             "*binvfs*", "-print"])
    return set(r.stdout.splitlines())


def installed_status():
    r = run(["dpkg-query", "-W", "-f=${Status}", "binvfs"])
    return r.stdout.strip() if r.returncode == 0 else ""


@pytest.fixture(scope="module")
def package():
    """{"deb", "changes", "dir", "log"} of one package build for this module."""
    if os.geteuid() != 0:
        pytest.skip("the package test installs a package: it runs as root")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"package build tools missing: {' '.join(missing)} (scripts/deps --test "
                    "installs debhelper, lintian, dpkg-dev)")
    r = run(["dpkg-checkbuilddeps", os.path.join(ROOT, "debian", "control")])
    if r.returncode != 0:
        pytest.skip(f"build dependencies missing: {r.stderr.strip()}")
    version = meson_version()
    tmp = tempfile.mkdtemp(prefix="binvfs-pkg-")
    try:
        tree = os.path.join(tmp, f"binvfs-{version}")
        copy_tree(tree)
        env = dict(os.environ, DEB_BUILD_OPTIONS="parallel=2")
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS"):
            env.pop(k, None)
        r = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"dpkg-buildpackage failed:\n{r.stdout[-4000:]}\n{r.stderr}"
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()
        yield {"deb": os.path.join(tmp, f"binvfs_{version}_{arch}.deb"),
               "changes": os.path.join(tmp, f"binvfs_{version}_{arch}.changes"),
               "dir": tmp, "log": r.stdout + r.stderr, "version": version}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_package_builds_and_lintian_finds_no_error(package):
    version = package["version"]
    # debian/changelog names the version meson.build has
    head = open(os.path.join(ROOT, "debian", "changelog")).readline()
    assert head.startswith(f"binvfs ({version}) "), head
    assert os.path.exists(package["deb"]), os.listdir(package["dir"])
    info = run(["dpkg-deb", "-f", package["deb"], "Package", "Version", "Depends"]).stdout
    assert f"Version: {version}\n" in info and "fuse3" in info and "libfuse3-3" in info
    files = run(["dpkg-deb", "-c", package["deb"]]).stdout
    for path in ("./usr/sbin/binvfs", "./usr/sbin/binvfsctl", "./usr/share/man/man8/binvfs.8.gz",
                 "./usr/share/man/man8/binvfsctl.8.gz",
                 "./usr/lib/systemd/system/binvfs@.service",
                 "./usr/share/doc/binvfs/copyright"):
        assert re.search(rf" {re.escape(path)}$", files, re.M), f"{path} not in\n{files}"
    # lintian on the .changes (the .deb and the .buildinfo), every tag shown
    r = run(["lintian", "--display-info", "--pedantic", "--display-experimental",
             "--fail-on", "error", package["changes"]])
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    summary = {k: sum(t.startswith(k + ":") for t in tags) for k in "EWIPX"}
    print(f"lintian: {summary['E']} errors, {summary['W']} warnings, {summary['I']} info, "
          f"{summary['P']} pedantic, {summary['X']} experimental")
    print("\n".join(tags))
    assert r.returncode == 0 and summary["E"] == 0, r.stdout + r.stderr
    # the warnings that are accepted are explained in debian/; today there is none
    assert summary["W"] == 0, "\n".join(tags)


def test_package_installs_mounts_through_fstab_and_purges(package, workdir):
    state = installed_status()
    assert "installed" not in state.split(), (
        f"a binvfs package is already installed here ({state}); this test installs its own "
        "build and purges it again: remove it first with dpkg -P binvfs")
    src = os.path.join(workdir, "opt app bin")  # a space: fstab writes it as \040
    src2 = os.path.join(workdir, "other-bin")
    for d in (src, src2):
        os.makedirs(d)
        write(os.path.join(d, "app"), "v1\n", 0o755)
    fstab = os.path.join(workdir, "fstab")
    esc = src.replace(" ", "\\040")
    write(fstab, f"# a line as in /etc/fstab\n{esc} {esc} fuse.binvfs defaults,keep=3 0 0\n")
    listed, purged = [], None
    before = binvfs_named_files()
    try:
        r = dpkg("-i", package["deb"])
        assert r.returncode == 0, r.stdout + r.stderr
        listed = run(["dpkg", "-L", "binvfs"]).stdout.split()
        unit = read("/usr/lib/systemd/system/binvfs@.service").decode()
        assert "\nExecStart=/usr/sbin/binvfs -f %f\n" in unit
        man = run(["man", "-w", "binvfs", "binvfsctl"]).stdout.split()
        assert man == ["/usr/share/man/man8/binvfs.8.gz", "/usr/share/man/man8/binvfsctl.8.gz"]
        # mount(8) -> mount.fuse3 -> sh's default PATH -> /usr/sbin/binvfs; a binvfs from a
        # `meson install` in /usr/local/sbin would come first, so it is hidden in here
        script = f"""
set -eu
trap 'umount -l "{src}" 2>/dev/null || true; umount -l "{src2}" 2>/dev/null || true' EXIT
if [ -e /usr/local/sbin/binvfs ]; then mount -t tmpfs none /usr/local/sbin; fi
mount -T "{fstab}" "{src}"
mount -t fuse.binvfs -o keep=2 "{src2}" "{src2}"
grep -c " - fuse.binvfs " /proc/self/mountinfo >/dev/null
echo v2 > "{src}/app"
echo v2 > "{src2}/app"
for d in "{src}" "{src2}"; do
    pid=$(/usr/sbin/binvfsctl status "$d" | awk '$1 == "daemon" {{ print $3 }}' | tr -d ,)
    echo "daemon $(readlink /proc/$pid/exe) $(tr '\\0' ' ' < /proc/$pid/cmdline)"
done
/usr/sbin/binvfsctl --json status "{src}"
umount "{src}"
umount "{src2}"
"""
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            script], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        daemons = [line for line in r.stdout.splitlines() if line.startswith("daemon ")]
        assert [d.split()[1] for d in daemons] == ["/usr/sbin/binvfs", "/usr/sbin/binvfs"]
        assert "keep=3" in daemons[0] and "keep=2" in daemons[1], daemons
        assert '"keep":3' in r.stdout.replace(" ", "")
    finally:
        if installed_status():
            purged = dpkg("-P", "binvfs")
    assert purged and purged.returncode == 0, purged and purged.stdout + purged.stderr
    assert installed_status() == ""
    # everything it installed is gone (directories other packages share stay)
    left = [f for f in listed if os.path.lexists(f) and not os.path.isdir(f)]
    assert listed and left == [], left
    assert not os.path.exists("/usr/sbin/binvfs")
    assert binvfs_named_files() == before
    # the user's data stays: the files and their versions, as the mounts left them
    assert not is_mounted(src) and not is_mounted(src2)
    for d in (src, src2):
        assert read(os.path.join(d, "app")) == b"v2\n"
        assert read(os.path.join(d, ".versions", "app.~1~")) == b"v1\n"
        assert os.path.exists(os.path.join(d, ".versions", ".binvfs-format"))
