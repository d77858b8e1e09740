"""Bad input: never a crash, never a loss.

- names: 255-byte names (a name longer than 241 bytes keeps its versions under a shortened
  name, docs/format.md), newlines, `~`, names that look like versions, non-UTF-8 bytes, names
  the store itself uses;
- a SOURCE whose `.versions` is not a binvfs store: refused with one line, exit 1, untouched;
- a store edited by hand while unmounted (versions removed, stray files, bad names, removed
  or replaced directories, symlinks, truncated versions): the mount comes up, serves what is
  there, numbering continues after the highest valid N, nothing is lost, no crash;
- `.versions/` is read-only to every kind of change; `..` and symlinks are resolved by the
  kernel, the daemon never follows them out of SOURCE.
"""
import errno
import os
import shutil
import stat
import subprocess

import pytest

from conftest import program, source_made_through
from util import Mount, is_mounted, read, reopen_for_write, run, versions, write

MARKER = b"binvfs store format 1\n"




def cp_data(workdir, data, dst):
    """`cp` a file holding data over dst (bytes or str paths); returns the CompletedProcess."""
    new = os.path.join(workdir, "cp-source")
    write(new, data)
    return run([b"cp", os.fsencode(new), os.fsencode(dst)])


def cp_ok(workdir, data, dst):
    r = cp_data(workdir, data, dst)
    assert r.returncode == 0, r.stderr
    return r


def errno_of(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0


def tree(path, dir_times=True):
    """Everything below path (path included), as lstat sees it, with contents and times
    (through the mount a directory's times may be cached for a second: dir_times=False)."""
    out = {}
    for d, dirs, files in os.walk(path):
        for n in [""] + dirs + files:
            if n == "" and d != path:
                continue
            p = os.path.join(d, n) if n else d
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode):
                data = read(p)
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            mtime = st.st_mtime_ns if dir_times or not stat.S_ISDIR(st.st_mode) else None
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                             mtime, st.st_ino, data)
    return out


# ---------------------------------------------------------------------------------------------
# long names

def stored_versions(m, d=""):
    """{stored name: [contents of its versions, oldest first]} in .versions/<d>."""
    out = {}
    for v in sorted(versions(m, d), key=lambda v: (v.rsplit(".~", 1)[0], v)):
        if v.endswith("~") and v.rsplit(".~", 1)[-1][:-1].isdigit():
            out.setdefault(v.rsplit(".~", 1)[0], []).append(
                (int(v.rsplit(".~", 1)[1][:-1]), read(m.p(".versions", d, v))))
    return {k: [c for _, c in sorted(vs)] for k, vs in out.items()}


def test_255_byte_names(mnt, workdir):
    """Created, read, replaced, appended to, truncated, removed, renamed over: as natively,
    and every replaced content is kept (under a shortened name, the whole name recorded)."""
    os.mkdir(mnt.p("sub"))
    for d in ("", "sub"):
        name = ("L" if not d else "S") * 255
        p = mnt.p(d, name)
        write(p, "orig\n", 0o755)
        assert name in os.listdir(mnt.p(d))
        assert read(p) == b"orig\n"

        assert cp_data(workdir, "new\n", p).returncode == 0
        assert read(p) == b"new\n"
        r = run(["sh", "-c", 'echo more >> "$1"', "sh", p])
        assert r.returncode == 0 and read(p) == b"new\nmore\n"
        with open(p, "wb") as f:
            f.write(b"py\n")
        os.truncate(p, 1)
        assert read(p) == b"p"
        other = mnt.p(d, "other")
        write(other, "other\n")
        os.rename(other, p)  # mv over it
        assert read(p) == b"other\n"
        os.chmod(p, 0o700)  # metadata: no version
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
        r = run(["rm", "-f", p])
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(p)

        kept = stored_versions(mnt, d)
        assert list(kept.values()) == [[b"orig\n", b"new\n", b"new\nmore\n", b"py\n",
                                        b"p", b"other\n"]], kept
        (stored,) = kept
        assert len(stored) <= 241 and name.startswith(stored.split(".~~")[0])
        assert read(mnt.p(".versions", d, stored + ".~~")) == name.encode()
    assert mnt.proc.poll() is None
    assert "too long" not in mnt.logtext()


def test_241_and_242_byte_names(mnt, workdir):
    """241 bytes: "<name>.~N~" always fits in 255, versions keep the name; 242: shortened."""
    ok, long = "V" * 241, "W" * 242
    for name in (ok, long):
        write(mnt.p(name), "0\n")
        for i in (1, 2):
            cp_ok(workdir, f"{i}\n", mnt.p(name))
        os.unlink(mnt.p(name))
    kept = stored_versions(mnt)
    assert kept[ok] == [b"0\n", b"1\n", b"2\n"]
    (stored,) = [k for k in kept if k != ok]
    assert kept[stored] == [b"0\n", b"1\n", b"2\n"] and stored.startswith("W" * 222 + ".~~")
    assert sorted(v for v in versions(mnt) if not v.startswith("V")) == \
        [stored + ".~1~", stored + ".~2~", stored + ".~3~", stored + ".~~"]


def test_shell_redirect_onto_a_long_name_publishes(mnt):
    """`echo new > NAME` in dash ignores close()'s error: a 250-byte name must publish (it
    once could not: its version name did not fit)."""
    p = mnt.p("L" * 250)
    write(p, "orig\n")
    r = run(["dash", "-c", 'echo new > "$1"', "dash", p])
    assert r.returncode == 0, r.stderr
    assert read(p) == b"new\n"
    assert list(stored_versions(mnt).values()) == [[b"orig\n"]]


# ---------------------------------------------------------------------------------------------
# odd names

ODD_NAMES = ["a\nb", "\n", "~", "~a", "a~", "a.~", "a.~~", "a.~1", "a.~x~", "...", " lead",
             "trail ", "tab\there", "-rf", "*", "a b", "back\\slash", "q'uo\"te", "$(x)"]


def test_odd_names_keep_versions(mnt, workdir):
    names = ODD_NAMES + ["dir\nwith newline/inner\nname"]
    os.mkdir(mnt.p("dir\nwith newline"))
    for n in names:
        write(mnt.p(n), f"{n}:0")
    for n in names:
        cp_ok(workdir, f"{n}:1", mnt.p(n))
        os.unlink(mnt.p(n))
        assert not os.path.exists(mnt.p(n))
    assert os.listdir(mnt.p()) == ["dir\nwith newline"]
    want = sorted([f"{n}.~{i}~" for n in ODD_NAMES for i in (1, 2)] + ["dir\nwith newline"])
    assert versions(mnt) == want
    assert versions(mnt, "dir\nwith newline") == ["inner\nname.~1~", "inner\nname.~2~"]
    for n in names:
        for i in (1, 2):
            assert read(mnt.p(".versions", f"{n}.~{i}~")) == f"{n}:{i - 1}".encode(), n
    r = run(["ls", "-b", mnt.p(".versions")])
    assert r.returncode == 0 and "a\\nb.~1~" in r.stdout


def test_non_utf8_names(mnt, workdir):
    root = os.fsencode(mnt.p())
    names = [b"caf\xe9", b"\xff\xfe", b"x\x80y", b"\xc3(", b"v.~\xff~", b"ok.~1~\xff"]
    os.mkdir(os.path.join(root, b"d\xfe"))
    for n in names + [b"d\xfe/in\xff"]:
        p = os.path.join(root, n)
        write(p, b"0:" + n)
        cp_ok(workdir, b"1:" + n, p)
        assert read(p) == b"1:" + n
    assert sorted(os.listdir(root)) == sorted(names + [b"d\xfe"])
    vroot = os.path.join(root, b".versions")
    assert sorted(os.listdir(vroot)) == sorted([n + b".~1~" for n in names] + [b"d\xfe"])
    assert os.listdir(os.path.join(vroot, b"d\xfe")) == [b"in\xff.~1~"]
    for n in names + [b"d\xfe/in\xff"]:
        assert read(os.path.join(vroot, n + b".~1~")) == b"0:" + n
        os.unlink(os.path.join(root, n))
        assert read(os.path.join(vroot, n + b".~2~")) == b"1:" + n
    mnt.stop()
    svroot = os.path.join(os.fsencode(mnt.src), b".versions")
    assert read(os.path.join(svroot, b"caf\xe9.~2~")) == b"1:caf\xe9"


def test_names_that_look_like_versions(mounter, workdir):
    """A user file `a.~3~` is a name like any other: its versions are a.~3~.~1~, a.~3~.~2~, and
    neither its history nor its pruning mixes with the versions of `a`."""
    # (versions are read only at the end: one looked up by name may count as in use)
    m = mounter(opts=("nosync", "keep=2"))
    write(m.p("a"), "a0")
    write(m.p("a.~3~"), "t0")
    write(m.p("a.~1~"), "o0")
    cp_ok(workdir, "t1", m.p("a.~3~"))
    cp_ok(workdir, "t2", m.p("a.~3~"))
    assert versions(m) == ["a.~3~.~1~", "a.~3~.~2~"]
    for i in (1, 2, 3, 4):  # a's versions a.~1~ .. a.~4~, keep=2 prunes a's oldest only
        cp_ok(workdir, f"a{i}", m.p("a"))
    cp_ok(workdir, "o1", m.p("a.~1~"))
    assert versions(m) == ["a.~1~.~1~", "a.~3~", "a.~3~.~1~", "a.~3~.~2~", "a.~4~"]
    cp_ok(workdir, "t3", m.p("a.~3~"))  # its own keep=2, a's a.~3~ stays
    assert versions(m) == ["a.~1~.~1~", "a.~3~", "a.~3~.~2~", "a.~3~.~3~", "a.~4~"]
    assert {v: read(m.p(".versions", v)) for v in versions(m)} == {
        "a.~1~.~1~": b"o0", "a.~3~": b"a2", "a.~3~.~2~": b"t1", "a.~3~.~3~": b"t2",
        "a.~4~": b"a3"}
    # the user files are untouched by all this
    assert (read(m.p("a")), read(m.p("a.~3~")), read(m.p("a.~1~"))) == (b"a4", b"t3", b"o1")


@pytest.mark.parametrize("order", ["file_first", "dir_first"])
def test_directory_named_like_a_version_of_its_sibling(mnt, workdir, order):
    """A directory `a.~1~/` next to a file `a`: `.versions/a.~1~` is both the first version of
    `a` and the mirror of the directory. Writes in either must work and nothing be lost."""
    write(mnt.p("a"), "a0")
    if order == "file_first":
        cp_ok(workdir, "a1", mnt.p("a"))  # .versions/a.~1~ is a file now
    os.mkdir(mnt.p("a.~1~"))
    write(mnt.p("a.~1~", "x"), "x0")
    r = cp_data(workdir, "x1", mnt.p("a.~1~", "x"))
    if order == "dir_first":
        cp_ok(workdir, "a1", mnt.p("a"))
    cp_ok(workdir, "a2", mnt.p("a"))
    assert read(mnt.p("a")) == b"a2"
    va = [v for v in versions(mnt) if os.path.isfile(mnt.p(".versions", v))]
    assert sorted(read(mnt.p(".versions", v)) for v in va) == [b"a0", b"a1"]
    assert r.returncode == 0, f"cp into a.~1~/ failed: {r.stderr!r}"
    assert read(mnt.p("a.~1~", "x")) == b"x1"
    found = [os.path.join(d, f) for d, _, fs in os.walk(mnt.p(".versions")) for f in fs
             if read(os.path.join(d, f)) == b"x0"]
    assert len(found) == 1, "the replaced a.~1~/x is not a version"


def versions_named(top, name):
    """{path: content} of every regular file called name below top (a .versions directory,
    wherever its mirror directories are)."""
    out = {}
    for d, _, files in os.walk(top):
        for f in files:
            if f == name:
                out[os.path.relpath(os.path.join(d, f), top)] = read(os.path.join(d, f))
    return out


@pytest.mark.parametrize("dirname", [".binvfs-staging", ".binvfs-format"])
def test_user_directory_named_like_the_stores_own_entries(binary, workdir, dirname):
    """SOURCE already holds a directory called like the store's staging directory or marker.
    Files in it are the user's like any other: writes work, and their versions are kept (the
    staging directory is emptied at every mount and unmount), visible in the view and still
    there after a remount."""
    src = os.path.join(workdir, "src")
    os.makedirs(os.path.join(src, dirname))
    write(os.path.join(src, dirname, "f"), "f0")
    m = Mount(binary, src).start()
    try:
        assert dirname in os.listdir(m.p())
        r = cp_data(workdir, "f1", m.p(dirname, "f"))
        assert r.returncode == 0, r.stderr
        assert read(m.p(dirname, "f")) == b"f1"
    finally:
        m.stop()
    store = os.path.join(src, ".versions")
    kept = versions_named(store, "f.~1~")
    assert list(kept.values()) == [b"f0"], f"the version of {dirname}/f after the unmount: {kept}"
    m = Mount(binary, src).start()
    try:
        assert read(m.p(dirname, "f")) == b"f1"
        seen = versions_named(m.p(".versions"), "f.~1~")
        assert list(seen.values()) == [b"f0"], f"the version of {dirname}/f in the view: {seen}"
        r = cp_data(workdir, "f2", m.p(dirname, "f"))
        assert r.returncode == 0, r.stderr
    finally:
        m.stop()
    assert versions_named(store, "f.~1~") == kept, "the version is gone after a remount"
    assert list(versions_named(store, "f.~2~").values()) == [b"f1"]
    assert read(os.path.join(store, ".binvfs-format")) == MARKER


# ---------------------------------------------------------------------------------------------
# a .versions that is not a binvfs store

def make_bad_store(src, kind, workdir):
    v = os.path.join(src, ".versions")
    if kind == "file":
        write(v, "my notes\n")
    elif kind == "fifo":
        os.mkfifo(v)
    elif kind == "symlink_to_store":
        other = os.path.join(workdir, "elsewhere")
        os.makedirs(other)
        write(os.path.join(other, ".binvfs-format"), MARKER)
        os.symlink(other, v)
    else:
        os.makedirs(os.path.join(v, "project"))
        write(os.path.join(v, "project", "notes.txt"), "user data\n")
        write(os.path.join(v, "a.~1~"), "looks like a version\n")
        mk = os.path.join(v, ".binvfs-format")
        if kind == "empty_dir":
            shutil.rmtree(v)
            os.mkdir(v)
        elif kind == "wrong_marker":
            write(mk, "binvfs store format 2\n")
        elif kind == "marker_prefix":
            write(mk, MARKER + b"trailing\n")
        elif kind == "marker_symlink":
            good = os.path.join(workdir, "good-marker")
            write(good, MARKER)
            os.symlink(good, mk)
        elif kind == "marker_dir":
            os.mkdir(mk)
        elif kind == "marker_fifo":
            os.mkfifo(mk)
        elif kind == "staging_symlink":
            write(mk, MARKER)
            outside = os.path.join(workdir, "outside")
            os.makedirs(outside)
            write(os.path.join(outside, "precious"), "keep me\n")
            os.symlink(outside, os.path.join(v, ".binvfs-staging"))
        else:
            assert kind == "dir_no_marker"


BAD_STORES = ["dir_no_marker", "empty_dir", "wrong_marker", "marker_prefix", "marker_symlink",
              "marker_dir", "marker_fifo", "file", "fifo", "symlink_to_store",
              "staging_symlink"]


@pytest.mark.parametrize("kind", BAD_STORES)
@pytest.mark.parametrize("form", ["over_itself", "at_mountpoint"])
def test_versions_that_is_not_a_store_is_refused(binary, workdir, kind, form):
    src = os.path.join(workdir, "src")
    os.makedirs(src)
    write(os.path.join(src, "app"), "app\n", 0o755)
    make_bad_store(src, kind, workdir)
    mp = src
    cmd = [binary, "-f", "-o", "nosync", src]
    if form == "at_mountpoint":
        mp = os.path.join(workdir, "mp")
        os.mkdir(mp)
        cmd.append(mp)
    before = tree(workdir)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:  # run() killed it (by its pid)
        pytest.fail(f"binvfs hangs at startup on a .versions of kind {kind}")
    try:
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        out = (r.stdout + r.stderr).strip()
        assert len(out.splitlines()) == 1, out
        # the line says what is wrong with what
        assert ("staging directory" if kind == "staging_symlink" else ".versions") in out, out
        assert not is_mounted(mp)
        assert tree(workdir) == before  # not a byte, not a time changed
    finally:
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-u", mp])


# ---------------------------------------------------------------------------------------------
# a store edited by hand while unmounted

def populate(m, workdir):
    os.makedirs(m.p("sub"))
    os.makedirs(m.p("sub2"))
    write(m.p("a"), "a0")
    for i in (1, 2, 3):
        cp_ok(workdir, f"a{i}", m.p("a"))
    write(m.p("sub", "b"), "b0")
    for i in (1, 2):
        cp_ok(workdir, f"b{i}", m.p("sub", "b"))
    write(m.p("sub2", "c"), "c0")
    cp_ok(workdir, "c1", m.p("sub2", "c"))
    write(m.p("gone"), "gone")
    os.unlink(m.p("gone"))
    assert versions(m) == ["a.~1~", "a.~2~", "a.~3~", "gone.~1~", "sub", "sub2"]


STRAY = {"junk": b"junk\n", "x.~0~": b"x zero\n", "x.~abc~": b"x abc\n", "a.~01~": b"lead 0\n",
         "a.~-1~": b"minus\n", "a.~4294967296~": b"2^32\n", "a.~2~x": b"suffix\n",
         "a.~~": b"empty\n", ".hidden": b"hidden\n"}


def test_hand_edited_store(binary, workdir):
    src = source_made_through(binary, workdir, populate)
    v = os.path.join(src, ".versions")
    os.unlink(os.path.join(v, "a.~2~"))
    for name, data in STRAY.items():
        write(os.path.join(v, name), data)
    os.mkdir(os.path.join(v, "strange.~5~"))  # a directory with a version's name
    write(os.path.join(v, "strange.~5~", "inside"), "inside\n")
    shutil.rmtree(os.path.join(v, "sub2"))
    stray_tree = {n: read(os.path.join(v, n)) for n in STRAY}

    m = Mount(binary, src).start()
    try:
        assert m.proc.poll() is None
        assert versions(m) == sorted(["a.~1~", "a.~3~", "gone.~1~", "sub", "strange.~5~"] +
                                  list(STRAY))
        assert (read(m.p(".versions", "a.~1~")), read(m.p(".versions", "a.~3~"))) == \
            (b"a0", b"a2")
        for name, data in STRAY.items():  # served as they are
            assert read(m.p(".versions", name)) == data
        assert read(m.p(".versions", "strange.~5~", "inside")) == b"inside\n"
        assert read(m.p("a")) == b"a3"
        # numbering continues after the highest valid N (3), never below or in a gap
        cp_ok(workdir, "a4", m.p("a"))
        assert read(m.p(".versions", "a.~4~")) == b"a3"
        assert not os.path.exists(m.p(".versions", "a.~2~"))
        # names that are not versions of x are not counted
        write(m.p("x"), "x0")
        cp_ok(workdir, "x1", m.p("x"))
        assert read(m.p(".versions", "x.~1~")) == b"x0"
        # a removed mirror directory is made again
        cp_ok(workdir, "c2", m.p("sub2", "c"))
        assert versions(m, "sub2") == ["c.~1~"]
        assert read(m.p(".versions", "sub2", "c.~1~")) == b"c1"
        cp_ok(workdir, "b3", m.p("sub", "b"))
        assert versions(m, "sub") == ["b.~1~", "b.~2~", "b.~3~"]
        write(m.p("gone"), "gone again")
        os.unlink(m.p("gone"))
        assert read(m.p(".versions", "gone.~2~")) == b"gone again"
        # a name whose history holds a directory named like a version
        write(m.p("strange"), "s0")
        cp_ok(workdir, "s1", m.p("strange"))
        assert read(m.p(".versions", "strange.~6~")) == b"s0"
    finally:
        m.stop()
    # nothing of the hand-made entries was touched
    for name, data in stray_tree.items():
        assert read(os.path.join(v, name)) == data, name
    assert read(os.path.join(v, "strange.~5~", "inside")) == b"inside\n"
    assert not os.path.exists(os.path.join(v, ".binvfs-staging"))


def test_hand_edited_store_pruning_spares_what_is_not_a_version(binary, workdir):
    src = source_made_through(binary, workdir, populate)
    v = os.path.join(src, ".versions")
    for name, data in STRAY.items():
        write(os.path.join(v, name), data)
    outside = os.path.join(workdir, "outside")
    write(outside, "outside\n")
    os.symlink(outside, os.path.join(v, "a.~5~"))  # a symlink with a version's name
    m = Mount(binary, src, opts=("nosync", "keep=2")).start()
    try:
        assert os.path.islink(m.p(".versions", "a.~5~"))
        for i in (4, 5, 6):
            cp_ok(workdir, f"a{i}", m.p("a"))
        # valid numbers only: 1, 2, 3, 5 (the link), then 6, 7, 8; keep=2 leaves 7, 8
        valid = sorted(n for n in versions(m) if n.startswith("a.~") and n not in STRAY)
        assert valid == ["a.~7~", "a.~8~"]
        assert (read(m.p(".versions", "a.~7~")), read(m.p(".versions", "a.~8~"))) == \
            (b"a4", b"a5")
    finally:
        m.stop()
    for name, data in STRAY.items():
        assert read(os.path.join(v, name)) == data, name
    assert read(outside) == b"outside\n"  # the link was removed, never followed


def test_highest_possible_version_number(binary, workdir):
    """N may be as large as 2^32-1. A store holding a.~4294967295~ cannot number past it:
    either the next versions are still kept under valid names (and retention does not remove
    the newest), or the change is refused with an error and the file stays as it was; never
    a version under an invalid name such as a.~0~, never a loss."""
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    m = Mount(binary, src).start()
    try:
        write(m.p("a"), "v0")
        cp_ok(workdir, "v1", m.p("a"))
    finally:
        m.stop()
    write(os.path.join(src, ".versions", "a.~4294967295~"), "max")
    m = Mount(binary, src, opts=("nosync", "keep=3")).start()
    try:
        results = [cp_data(workdir, f"v{i}", m.p("a")) for i in range(2, 7)]
        refused = [r for r in results if r.returncode != 0]
        rm = errno_of(lambda: os.unlink(m.p("a")))
        vs = {n: read(m.p(".versions", n)) for n in versions(m)}
        bad = [n for n in vs if n.endswith(".~0~")]
        assert not bad, f"versions kept under invalid names: {bad}"
        if refused:
            assert len(refused) == len(results), "some refused, some not"
            assert all(r.stderr.strip() for r in refused)
            assert rm != 0 and read(m.p("a")) == b"v1"
            assert vs == {"a.~1~": b"v0", "a.~4294967295~": b"max"}
        else:
            assert rm == 0
            kept = set(vs.values())
            assert {b"v6", b"v5", b"v4"} <= kept, \
                f"the newest versions were pruned: {sorted(vs.items())}"
    finally:
        m.stop()


def test_mirror_directory_replaced_by_a_symlink(binary, workdir):
    """A store whose mirror directory became a symlink out of SOURCE: the daemon never
    follows it; nothing is written outside; the file stays one complete version."""
    src = source_made_through(binary, workdir, populate)
    outside = os.path.join(workdir, "outside")
    os.mkdir(outside)
    shutil.rmtree(os.path.join(src, ".versions", "sub"))
    os.symlink(outside, os.path.join(src, ".versions", "sub"))
    m = Mount(binary, src).start()
    try:
        assert os.path.islink(m.p(".versions", "sub"))
        r = cp_data(workdir, "b9", m.p("sub", "b"))
        assert read(m.p("sub", "b")) == (b"b9" if r.returncode == 0 else b"b2")
        assert errno_of(lambda: os.unlink(m.p("sub", "b"))) in (0, errno.ENOTDIR, errno.ELOOP)
        write(m.p("sub", "new"), "n")  # a create needs no version
        assert read(m.p("sub", "new")) == b"n"
    finally:
        m.stop()
    assert os.listdir(outside) == []


def test_truncated_and_corrupted_versions(binary, workdir, cbuild):
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    big = os.urandom(1 << 20)
    m = Mount(binary, src).start()
    try:
        write(m.p("a"), big)
        cp_ok(workdir, b"second" * 1000, m.p("a"))
        cp_ok(workdir, "third", m.p("a"))
        shutil.copyfile(program(cbuild, 1), m.p("prog"))
        os.chmod(m.p("prog"), 0o755)
        cp_ok(workdir, read(program(cbuild, 2)), m.p("prog"))
    finally:
        m.stop()
    v = os.path.join(src, ".versions")
    os.truncate(os.path.join(v, "a.~1~"), 1000)
    os.truncate(os.path.join(v, "a.~2~"), 0)
    with open(os.path.join(v, "prog.~1~"), "r+b") as f:  # a torn ELF
        f.truncate(200)
        f.seek(64)
        f.write(b"\xff" * 64)
    m = Mount(binary, src).start()
    try:
        assert os.path.getsize(m.p(".versions", "a.~1~")) == 1000
        assert read(m.p(".versions", "a.~1~")) == big[:1000]
        assert read(m.p(".versions", "a.~2~")) == b""
        with open(m.p(".versions", "a.~1~"), "rb") as f:
            f.seek(5000)
            assert f.read(10) == b""  # past the end
            assert os.pread(f.fileno(), 100, 950) == big[950:1000]
        try:
            rc = run([m.p(".versions", "prog.~1~")]).returncode
        except OSError as e:
            rc = e.errno
        assert rc != 0  # ENOEXEC, or a crash of the torn program; the daemon does not care
        assert run([m.p("prog")]).stdout == "version 2\n"
        # a rollback from the short version is a normal write
        cp_ok(workdir, read(m.p(".versions", "a.~1~")), m.p("a"))
        assert read(m.p("a")) == big[:1000]
        assert read(m.p(".versions", "a.~3~")) == b"third"
        assert m.proc.poll() is None
    finally:
        m.stop()  # exit 0 and no sanitizer report


# ---------------------------------------------------------------------------------------------
# .versions/ is read-only

@pytest.fixture
def store(mnt, workdir):
    os.makedirs(mnt.p("lib"))
    write(mnt.p("app"), "app0", 0o755)
    write(mnt.p("lib", "x"), "x0")
    cp_ok(workdir, "app1", mnt.p("app"))
    cp_ok(workdir, "x1", mnt.p("lib", "x"))
    return mnt


def sub_version(m):
    return m.p(".versions", "lib", "x.~1~")


EROFS_OPS = {
    "write_sub_version": lambda m: os.close(os.open(sub_version(m), os.O_WRONLY)),
    "trunc_sub_version": lambda m: os.truncate(sub_version(m), 0),
    "reopen_proc_fd_for_write": lambda m: reopen_for_write(sub_version(m)),
    "create_in_view_root": lambda m: os.close(os.open(m.p(".versions", "n"), os.O_CREAT |
                                                      os.O_WRONLY, 0o644)),
    "create_in_mirror": lambda m: os.close(os.open(m.p(".versions", "lib", "n"), os.O_CREAT |
                                                   os.O_WRONLY, 0o644)),
    "create_excl_like_a_version": lambda m: os.close(os.open(
        m.p(".versions", "app.~2~"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)),
    "mkdir_in_mirror": lambda m: os.mkdir(m.p(".versions", "lib", "d")),
    "mknod_fifo": lambda m: os.mkfifo(m.p(".versions", "lib", "p")),
    "symlink_in_view": lambda m: os.symlink("/etc/passwd", m.p(".versions", "lnk")),
    "link_into_view": lambda m: os.link(m.p("app"), m.p(".versions", "app.~2~")),
    "link_into_mirror": lambda m: os.link(m.p("lib", "x"), m.p(".versions", "lib", "x.~9~")),
    "rename_into_view": lambda m: os.rename(m.p("lib", "x"), m.p(".versions", "lib", "x.~2~")),
    "rename_dir_into_view": lambda m: os.rename(m.p("lib"), m.p(".versions", "lib2")),
    "rename_out_of_view": lambda m: os.rename(sub_version(m), m.p("lib", "restored")),
    "rename_mirror_dir": lambda m: os.rename(m.p(".versions", "lib"), m.p(".versions", "l")),
    "rename_within_view": lambda m: os.rename(m.p(".versions", "lib", "x.~1~"),
                                              m.p(".versions", "app.~1~")),
    "unlink_sub_version": lambda m: os.unlink(sub_version(m)),
    "rmdir_mirror": lambda m: os.rmdir(m.p(".versions", "lib")),
    "chmod_sub_version": lambda m: os.chmod(sub_version(m), 0o777),
    "chmod_mirror_dir": lambda m: os.chmod(m.p(".versions", "lib"), 0o777),
    "chmod_view_root": lambda m: os.chmod(m.p(".versions"), 0o777),
    "chown_mirror_dir": lambda m: os.chown(m.p(".versions", "lib"), 1, 1),
    "utime_view_root": lambda m: os.utime(m.p(".versions"), (0, 0)),
    "setxattr_sub_version": lambda m: os.setxattr(sub_version(m), "user.x", b"1"),
    "setxattr_mirror_dir": lambda m: os.setxattr(m.p(".versions", "lib"), "user.x", b"1"),
    "prune_request_on_view": lambda m: os.setxattr(m.p(".versions"), "user.binvfs.prune",
                                                   b"0"),
}


@pytest.mark.parametrize("op", sorted(EROFS_OPS))
def test_changes_into_versions_are_erofs(store, op):
    m = store
    snap = tree(m.p(".versions"), dir_times=False)
    cur = tree(m.p(), dir_times=False)
    assert errno_of(lambda: EROFS_OPS[op](m)) == errno.EROFS, op
    assert tree(m.p(".versions"), dir_times=False) == snap
    assert tree(m.p(), dir_times=False) == cur


STORE_NAME_OPS = {
    "rename_view_root": lambda m: os.rename(m.p(".versions"), m.p("stolen")),
    "rmdir_view_root": lambda m: os.rmdir(m.p(".versions")),
    "mkdir_over_view_root": lambda m: os.mkdir(m.p(".versions")),
    "rename_file_over_view_root": lambda m: os.rename(m.p("app"), m.p(".versions")),
    "rename_dir_over_view_root": lambda m: os.rename(m.p("lib"), m.p(".versions")),
    "symlink_named_view_root": lambda m: os.symlink("/tmp", m.p(".versions")),
    "link_named_view_root": lambda m: os.link(m.p("app"), m.p(".versions")),
    "open_view_root_for_write": lambda m: os.open(m.p(".versions"), os.O_WRONLY),
}


@pytest.mark.parametrize("op", sorted(STORE_NAME_OPS))
def test_the_store_itself_cannot_be_replaced(store, op):
    m = store
    snap = tree(m.p(".versions"), dir_times=False)
    cur = tree(m.p(), dir_times=False)
    e = errno_of(lambda: STORE_NAME_OPS[op](m))
    assert e in (errno.EROFS, errno.EPERM, errno.EEXIST, errno.EISDIR, errno.ENOTEMPTY,
                 errno.EBUSY), (op, e)
    assert tree(m.p(".versions"), dir_times=False) == snap
    assert tree(m.p(), dir_times=False) == cur


# ---------------------------------------------------------------------------------------------
# .. and symlinks

def test_dotdot_from_versions_stays_in_the_kernel(store, workdir):
    m = store
    parent = os.path.dirname(m.path)
    assert os.path.realpath(m.p(".versions", "..")) == m.path
    assert os.path.realpath(m.p(".versions", "..", "..")) == parent
    assert os.path.realpath(m.p(".versions", "lib", "..", "..", "..")) == parent
    same = lambda a, b: (os.stat(a).st_dev, os.stat(a).st_ino) == \
        (os.stat(b).st_dev, os.stat(b).st_ino)
    assert same(m.p(".versions", ".."), m.path)
    assert same(m.p(".versions", "..", ".."), parent)
    assert same(m.p(".versions", "lib", "..", "..", ".."), parent)
    assert sorted(os.listdir(m.p(".versions", "lib", "..", ".."))) == ["app", "lib"]
    assert read(m.p(".versions", "lib", "..", "app.~1~")) == b"app0"
    assert read(m.p(".versions", "..", "app")) == b"app1"
    # relative to a directory fd deep in the view, as a program that chdir'ed there would
    fd = os.open(m.p(".versions", "lib"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        up = os.open("../../..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        assert (os.fstat(up).st_dev, os.fstat(up).st_ino) == \
            (os.stat(parent).st_dev, os.stat(parent).st_ino)
        os.close(up)
        with open(os.open("../../lib/x", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"x1"
        # writes that climb out of the view land in the tree and are ordinary writes
        with open(os.open("../../lib/x", os.O_WRONLY | os.O_TRUNC, dir_fd=fd), "wb") as f:
            f.write(b"x2")
    finally:
        os.close(fd)
    assert read(m.p("lib", "x")) == b"x2"
    assert versions(m, "lib") == ["x.~1~", "x.~2~"]


def test_symlinks_pointing_outside_behave_as_natively(mounter, workdir):
    """Symlinks in SOURCE that point out of it are shown as symlinks; whatever goes through
    them is the kernel's doing (it follows them outside the mount), exactly as natively."""
    def setup(base, target):
        os.makedirs(target)
        write(os.path.join(target, "f"), "target f\n")
        write(os.path.join(target, "g"), "target g\n")
        os.symlink("/etc", os.path.join(base, "etc"))
        os.symlink(target, os.path.join(base, "out"))
        os.symlink(os.path.join(target, "f"), os.path.join(base, "outfile"))
        os.symlink("..", os.path.join(base, "up"))
        os.symlink("loop", os.path.join(base, "loop"))
        os.symlink(os.path.join(target, "missing"), os.path.join(base, "dangling"))
        write(os.path.join(base, "victim"), "victim\n")
        os.symlink("victim", os.path.join(base, "inside"))

    def exercise(base, target, tag):
        res = {}
        res["readlink"] = os.readlink(os.path.join(base, "out")) == target
        res["is_link"] = os.path.islink(os.path.join(base, "etc"))
        res["etc_same"] = os.stat(os.path.join(base, "etc")).st_ino == os.stat("/etc").st_ino
        res["passwd"] = read(os.path.join(base, "etc", "passwd")) == read("/etc/passwd")
        res["up"] = os.path.realpath(os.path.join(base, "up")) == os.path.dirname(base)
        res["loop"] = errno_of(lambda: read(os.path.join(base, "loop")))
        write(os.path.join(base, "outfile"), f"through link {tag}\n")
        r = cp_data(workdir, f"cp {tag}\n", os.path.join(base, "out", "g"))
        res["cp"] = r.returncode
        write(os.path.join(base, "out", "new"), "new\n")
        write(os.path.join(base, "dangling"), "made\n")  # creates the target outside
        res["unlink_through"] = errno_of(lambda: os.unlink(os.path.join(base, "out", "f")))
        write(os.path.join(base, "inside"), f"inside {tag}\n")  # a link within: the target
        os.unlink(os.path.join(base, "outfile"))  # the link itself
        os.rename(os.path.join(base, "victim"), os.path.join(base, "etc"))  # over a link
        res["names"] = sorted(os.listdir(base))
        res["etc"] = read(os.path.join(base, "etc"))
        res["target"] = {n: read(os.path.join(target, n)) for n in sorted(os.listdir(target))}
        return res

    native = os.path.join(workdir, "native")
    os.mkdir(native)
    setup(native, os.path.join(workdir, "target-native"))
    m = mounter(setup=lambda src: setup(src, os.path.join(workdir, "target-mount")))
    for n in ("etc", "out", "outfile", "up", "loop", "dangling", "inside"):
        assert stat.S_ISLNK(os.lstat(m.p(n)).st_mode), n
    got_n = exercise(native, os.path.join(workdir, "target-native"), "T")
    got_m = exercise(m.p(), os.path.join(workdir, "target-mount"), "T")
    assert got_n["loop"] == errno.ELOOP and got_n["passwd"] and got_n["up"]
    assert got_n["target"] == {"g": b"cp T\n", "missing": b"made\n", "new": b"new\n"}
    assert got_m == got_n
    # the write through the link `inside` replaced its target in the mount, which kept the
    # target's old content; links themselves have no history
    assert versions(m) == ["victim.~1~"]
    assert read(m.p(".versions", "victim.~1~")) == b"victim\n"
    m.stop()
    assert os.path.islink(os.path.join(m.src, "out"))
    assert os.readlink(os.path.join(m.src, "up")) == ".."
