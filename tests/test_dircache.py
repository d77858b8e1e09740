"""The kernel's cache of directory listings (FOPEN_CACHE_DIR, design.md §3 "Directory
listings"): after every change the daemon makes behind the kernel's back, a listing from the
mount shows what the directory underneath (or the semantics) says, twice in a row, so that a
stale cache would show. The mount is at its own path, so the directory underneath is seen
too."""
import json
import os
import subprocess
import sys

import pytest

from util import read, write

XATTR = "user.binvfs.release"
PRUNE = "user.binvfs.prune"


def listing(path, hide=()):
    """readdir of path: sorted (name, d_ino, d_type is dir)."""
    with os.scandir(path) as it:
        return sorted((e.name, e.inode(), e.is_dir(follow_symlinks=False)) for e in it
                      if e.name not in hide)


def names(path):
    return [n for n, _, _ in listing(path)]


def names_fd(fd):
    """A listing through an open directory fd (its one open: the kernel's cache is used and
    filled as that open was answered)."""
    return sorted(os.listdir(fd))


def same_twice(m, sub=""):
    """The mount's listing of sub, twice, equals the directory underneath's."""
    want = listing(m.s(sub), hide=(".versions",) if not sub else ())
    got = [listing(m.p(sub)), listing(m.p(sub))]
    assert got == [want, want], (sub, got, want)
    return want


@pytest.fixture
def dm(mounter, workdir):
    """binvfs over workdir/bin, mounted at workdir/mnt."""
    mp = os.path.join(workdir, "mnt")
    os.makedirs(mp)

    def setup(src):
        os.makedirs(os.path.join(src, "d", "sub"))
        for n in ("a", "b", "x"):
            write(os.path.join(src, "d", n), n + "0", mode=0o755 if n == "x" else 0o644)
        write(os.path.join(src, "d", "sub", "c"), "c0")

    return mounter(setup, path=mp)


def test_listing_is_cached(dm):
    """Listings of the root (which hides .versions), a directory and a subdirectory, twice
    (the second from the kernel's cache: the request trace is in docs/performance.md)."""
    for sub in ("", "d", "d/sub"):
        same_twice(dm, sub)


def test_listing_after_publishes(dm):
    """A publish renames a new inode over the name behind the kernel's back: the listing's
    inode numbers follow, in every round, for a data file and an executable one."""
    for sub in ("d",):
        same_twice(dm, sub)
    for rnd in range(1, 21):
        for n in ("a", "x"):
            write(dm.p("d", n), f"{n}{rnd}")
        got = same_twice(dm, "d")
        for n, ino, _ in got:
            assert os.lstat(dm.p("d", n)).st_ino == ino
        assert read(dm.p("d", "a")) == f"a{rnd}".encode()


def test_listing_after_a_publish_by_a_writer_that_opened_before(dm):
    """A writer that opened its file long before it closes walks no name at its close: the
    listing cached meanwhile shows the new inode right after the close."""
    for rnd in range(1, 21):
        fd = os.open(dm.p("d", "a"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, f"a{rnd}".encode())
        same_twice(dm, "d")  # cached now, with the old file's inode
        os.close(fd)
        same_twice(dm, "d")


def test_listing_after_rm_and_mv_keeping_versions(dm):
    """rm and mv keep the replaced file in .versions/: the tree's listing and the view's
    (not cached: computed from the store) follow."""
    same_twice(dm, "d")
    os.unlink(dm.p("d", "b"))
    same_twice(dm, "d")
    assert names(dm.p(".versions", "d")) == names(dm.p(".versions", "d")) == ["b.~1~"]
    os.rename(dm.p("d", "a"), dm.p("d", "x"))
    same_twice(dm, "d")
    assert names(dm.p(".versions", "d")) == names(dm.p(".versions", "d")) == ["b.~1~", "x.~1~"]
    write(dm.p("d", "x"), "x2")
    assert names(dm.p(".versions", "d")) == names(dm.p(".versions", "d")) == \
        ["b.~1~", "x.~1~", "x.~2~"]
    same_twice(dm, ".versions/d")


def test_view_listing_after_a_prune(dm):
    """A prune removes versions behind the kernel's back: the view's listing follows."""
    for i in range(1, 5):
        write(dm.p("d", "a"), f"a{i}")
    want = [f"a.~{i}~" for i in range(1, 5)]
    assert names(dm.p(".versions", "d")) == names(dm.p(".versions", "d")) == want
    os.setxattr(dm.p("d"), PRUNE, b"1")
    assert names(dm.p(".versions", "d")) == names(dm.p(".versions", "d")) == ["a.~4~"]
    same_twice(dm, ".versions/d")


def test_listing_after_a_release_commit(dm):
    """Listed (cached) before the begin; within the release a publish, an rm and an mv are
    held (the listing shows the old files, as the semantics say), a file is made; the commit
    renames and removes behind the kernel's back: right after it, the listing is the new one,
    in each of 20 rounds, in DIR and its subdirectory."""
    d = dm.p("d")
    for rnd in range(1, 21):
        same_twice(dm, "d")
        same_twice(dm, "d/sub")
        fd = os.open(dm.p("d", "sub", "c"), os.O_WRONLY | os.O_TRUNC)  # opened before
        os.setxattr(d, XATTR, b"begin")
        write(dm.p("d", "a"), f"a{rnd}")
        os.write(fd, f"c{rnd}".encode())
        os.close(fd)
        write(dm.p("d", f"new{rnd}"), "n")
        if rnd % 2:
            os.unlink(dm.p("d", "b"))
        else:
            os.rename(dm.p("d", "x"), dm.p("d", "b"))
        assert os.path.exists(dm.p("d", "b"))
        os.setxattr(d, XATTR, b"commit")
        got = same_twice(dm, "d")
        same_twice(dm, "d/sub")
        assert f"new{rnd}" in [n for n, _, _ in got]
        assert read(dm.p("d", "sub", "c")) == f"c{rnd}".encode()
        for n in ("b", "x"):  # back for the next round
            if not os.path.exists(dm.p("d", n)):
                write(dm.p("d", n), n)


def test_listing_after_a_release_commit_through_an_open_from_before(dm):
    """A subdirectory of DIR opened before the begin lists within the release (that open may
    fill the kernel's cache: the held publishes' old inodes), nothing else lists until the
    commit, whose renames the kernel does not see (DIR's own listing it may check by its
    mtime, refreshed after the commit's setxattr; not its subdirectory's): right after it,
    the listing shows the new inodes, in each of 20 rounds."""
    d, sub = dm.p("d"), dm.p("d", "sub")
    write(os.path.join(sub, "e"), "e0")
    for rnd in range(1, 21):
        dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            same_twice(dm, "d/sub")
            fds = [os.open(os.path.join(sub, n), os.O_WRONLY | os.O_TRUNC) for n in ("c", "e")]
            os.setxattr(d, XATTR, b"begin")
            for fd in fds:
                os.write(fd, f"{rnd}".encode())
                os.close(fd)
            assert names_fd(dfd) == names_fd(dfd) == ["c", "e"]
            os.setxattr(d, XATTR, b"commit")
            same_twice(dm, "d/sub")
        finally:
            os.close(dfd)


def test_listing_after_two_writers_publish_one_name(dm):
    """Two writers of one name (a deploy racing another): the first close publishes and drops
    the name's entry; the listing is cached again; the second close publishes over it while
    the kernel has no entry of the name left to drop. The listing shows the second's inode."""
    for rnd in range(1, 21):
        w1 = os.open(dm.p("d", "a"), os.O_WRONLY | os.O_TRUNC)
        w2 = os.open(dm.p("d", "a"), os.O_WRONLY | os.O_TRUNC)
        os.write(w1, f"w1 {rnd}".encode())
        os.write(w2, f"w2 {rnd}".encode())
        os.close(w2)
        same_twice(dm, "d")
        os.close(w1)
        same_twice(dm, "d")
        assert read(dm.p("d", "a")) == f"w1 {rnd}".encode()


SESSION_LIST = ("import json, os, sys; print(json.dumps([sorted(os.listdir(sys.argv[1])) "
                "for _ in range(2)]))")


def list_in_new_session(path, make=None):
    """Two listings of path by a process in a session of its own (after it made `make`)."""
    code = (f"open({make!r}, 'w').write('n'); " if make else "") + SESSION_LIST
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                       start_new_session=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_file_made_within_a_release_is_listed_for_its_creators_session_only(dm):
    """Within a release, a new file is listed for its creator's session and for no other,
    whichever lists first, twice each; after the commit for everyone; after an abort for
    no one."""
    d = dm.p("d")
    base = ["a", "b", "sub", "x"]
    for end in ("commit", "abort", "commit", "abort"):
        assert names(d) == names(d) == base  # cached before the begin
        os.setxattr(d, XATTR, b"begin")
        new = os.path.join(d, "new")
        # another session lists first (the cache, were it used, would hold no "new")
        assert names(d) == names(d) == base
        assert list_in_new_session(d, make=new) == [sorted(base + ["new"])] * 2
        assert names(d) == names(d) == base
        # the creator's session lists first now: a cache filled by it would show "new"
        assert list_in_new_session(d) == [base] * 2  # a third session
        os.setxattr(d, XATTR, end.encode())
        if end == "commit":
            assert names(d) == names(d) == sorted(base + ["new"])
            assert list_in_new_session(d) == [sorted(base + ["new"])] * 2
            os.unlink(new)
        else:
            assert names(d) == names(d) == base
            assert list_in_new_session(d) == [base] * 2
        same_twice(dm, "d")


def test_abort_drops_the_new_files_from_the_listing(dm):
    """A subdirectory of DIR opened before the begin lists, for its creator's session, a file
    made within the release (that open may fill the kernel's cache); the abort removes the
    file behind the kernel's back (DIR's listing the kernel may check by its mtime, refreshed
    after the abort's setxattr; not its subdirectory's): gone from every listing at once."""
    d, sub = dm.p("d"), dm.p("d", "sub")
    for rnd in range(10):
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert names_fd(fd) == names_fd(fd) == ["c"]
            os.setxattr(d, XATTR, b"begin")
            write(os.path.join(sub, "tmp"), "t")  # this process's session lists it
            assert names_fd(fd) == names_fd(fd) == ["c", "tmp"]
            os.setxattr(d, XATTR, b"abort")
            same_twice(dm, "d/sub")
            assert "tmp" not in names(sub)
        finally:
            os.close(fd)
