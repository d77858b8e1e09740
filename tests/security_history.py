"""Security, issue 18 points 2 and 3: history is never more open than the file was when it was
kept, nor than it is now (docs/security.md, "History"). Every attack runs as the real
unprivileged users of the `team` fixture (alice, mallory: one shared group).

- 2, sticky: alice's 0700 directory in a 1777 directory, removed; mallory makes one of the same
  name and keeps a version in it: she reads nothing of alice's history (root still has it);
- 2, shared: in a 0775 root:team directory mallory moves alice's 0700 directory away and makes
  one of its name: she reads nothing of alice's;
- 3: `chmod 600 doc` closes doc's versions at once; `chmod 700 pub` closes .versions/pub/ at
  once (no attribute-cache window); `mv pub pub2; chmod 700 pub2` closes the mirror pub left;
- chown: a version does not become readable to a new owner or group of its file (or of its
  directory) who could not read it when it was kept; opening a directory (chmod 755) does not
  open what was kept while it was 0700;
- and what the owner and the group could read stays readable to them.
"""
import errno
import os
import shutil
import subprocess

import pytest

from util import NOBODY, Actor, as_actor, open_world, read, write

ALICE = b"alice private notes 91c2: v1\n"


def try_read(path):
    """"ok" with the content, or the errno name."""
    try:
        return "ok:" + read(path).decode(errors="replace")
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def try_list(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def leaks(top, marker):
    """As the caller: every file below top (every directory it can list) whose content holds
    marker."""
    found = []
    for d, _, files in os.walk(top, onerror=lambda e: None):
        for f in files:
            try:
                if marker in read(os.path.join(d, f)):
                    found.append(os.path.join(d, f))
            except OSError:
                pass
    return found


def root_finds(top, name, content):
    """As root: the files called name below top holding content."""
    return [os.path.join(d, name) for d, _, files in os.walk(top)
            if name in files and read(os.path.join(d, name)) == content]


def rewrite(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------
# point 2: a new directory at an old path gets none of the old one's history

def test_2_sticky_dir_recreated_by_another_user(mounter, workdir, team):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)

    def setup(d):
        os.chmod(d, 0o755)
        os.mkdir(os.path.join(d, "s"))
        os.chmod(os.path.join(d, "s"), 0o1777)

    m = mounter(setup=setup)
    d, notes = m.p("s", "d"), m.p("s", "d", "notes")

    def alice():
        os.mkdir(d, 0o700)
        write(notes, ALICE, 0o644)
        rewrite(notes, b"alice v2\n")  # v1 becomes notes.~1~
        os.unlink(notes)  # v2 becomes notes.~2~
        os.rmdir(d)
    as_actor(al, alice)
    assert root_finds(m.p(".versions", "s"), "notes.~1~", ALICE)

    def mallory():
        os.mkdir(d, 0o755)
        write(os.path.join(d, "x"), b"mine\n")
        os.unlink(os.path.join(d, "x"))  # keeps a version: walks the mirror of s/d
        vd = m.p(".versions", "s", "d")
        return {"direct": try_read(os.path.join(vd, "notes.~1~")), "list": try_list(vd),
                "leaks": leaks(m.p(".versions"), b"alice")}
    got = as_actor(mal, mallory)
    assert got["direct"] == "ENOENT", got
    assert got["list"] == ["x.~1~"], got  # a mirror of her own
    assert got["leaks"] == [], got
    # alice's history still exists, for root, and for alice herself
    found = root_finds(m.p(".versions", "s"), "notes.~1~", ALICE)
    assert found and all(os.path.dirname(p) != m.p(".versions", "s", "d") for p in found)
    assert as_actor(al, lambda: [try_read(p) for p in found]) == ["ok:" + ALICE.decode()]


def test_2_shared_dir_moved_away_and_recreated(mounter, workdir, team):
    al, mal, gid = team["alice"], team["mallory"], team["gid"]
    open_world(workdir)

    def setup(d):
        os.chmod(d, 0o755)
        sh = os.path.join(d, "shared")
        os.mkdir(sh)
        os.chown(sh, 0, gid)
        os.chmod(sh, 0o775)

    m = mounter(setup=setup)
    proj = m.p("shared", "proj")

    def alice():
        os.mkdir(proj, 0o700)
        write(os.path.join(proj, "notes"), ALICE, 0o644)
        rewrite(os.path.join(proj, "notes"), b"alice v2\n")
    as_actor(al, alice)
    assert root_finds(m.p(".versions"), "notes.~1~", ALICE)

    def mallory():
        os.rename(proj, proj + ".old")
        os.mkdir(proj, 0o755)
        write(os.path.join(proj, "x"), b"mine\n")
        os.unlink(os.path.join(proj, "x"))
        vd = m.p(".versions", "shared", "proj")
        return {"direct": try_read(os.path.join(vd, "notes.~1~")), "list": try_list(vd),
                "leaks": leaks(m.p(".versions"), b"alice")}
    got = as_actor(mal, mallory)
    assert got["direct"] in ("ENOENT", "EACCES"), got
    assert got["list"] == ["x.~1~"], got
    assert got["leaks"] == [], got
    assert root_finds(m.p(".versions"), "notes.~1~", ALICE)


# ---------------------------------------------------------------------------------------------
# point 3: tightening permissions closes history at once

def alice_home(team, mode=0o755):
    """setup(d): d/home/a, alice's directory (mode), below a 0755 root directory."""
    al = team["alice"]

    def setup(d):
        os.chmod(d, 0o755)
        a = os.path.join(d, "home", "a")
        os.makedirs(a)
        os.chmod(os.path.join(d, "home"), 0o755)
        os.chown(a, al.uid, al.gid)
        os.chmod(a, mode)
    return setup


def test_3_chmod_600_closes_versions_at_once(mounter, workdir, team):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    doc, v1 = m.p("home", "a", "doc"), m.p(".versions", "home", "a", "doc.~1~")

    def alice():
        write(doc, ALICE, 0o644)
        rewrite(doc, b"alice v2\n")
    as_actor(al, alice)
    assert as_actor(mal, lambda: try_read(v1)) == "ok:" + ALICE.decode()  # public when kept
    as_actor(al, lambda: os.chmod(doc, 0o600))
    assert as_actor(mal, lambda: [try_read(v1) for _ in range(5)]) == ["EACCES"] * 5
    assert as_actor(al, lambda: try_read(v1)) == "ok:" + ALICE.decode()


def test_3_fchmod_by_a_writer_closes_versions_at_once(mounter, workdir, team):
    """The same through a writer's fd that writes nothing (`install -m 600` over a file, an
    editor keeping the content): the chmod applies in place (handle.c, apply_own_meta) and the
    versions follow."""
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    doc, v1 = m.p("home", "a", "doc"), m.p(".versions", "home", "a", "doc.~1~")

    def alice():
        write(doc, ALICE, 0o644)
        rewrite(doc, b"alice v2\n")
        fd = os.open(doc, os.O_WRONLY)
        os.fchmod(fd, 0o600)
        os.close(fd)
    as_actor(al, alice)
    assert oct(os.stat(doc).st_mode & 0o777) == oct(0o600)
    assert as_actor(mal, lambda: try_read(v1)) == "EACCES"
    assert as_actor(al, lambda: try_read(v1)) == "ok:" + ALICE.decode()


def test_3_chmod_700_dir_closes_its_mirror_at_once(mounter, workdir, team):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)

    def setup(d):
        os.chmod(d, 0o755)
        os.mkdir(os.path.join(d, "pub"))
        os.chown(os.path.join(d, "pub"), al.uid, al.gid)

    m = mounter(setup=setup)
    f, vd = m.p("pub", "f"), m.p(".versions", "pub")

    def alice():
        write(f, ALICE, 0o644)
        rewrite(f, b"alice v2\n")
    as_actor(al, alice)

    def mallory_reads():
        r = try_read(os.path.join(vd, "f.~1~"))
        return [try_list(vd), "ok" if r.startswith("ok:") else r]

    def mallory_tries():
        return [mallory_reads() for _ in range(5)]
    for i in range(3):
        if i:
            # opened again: the closed mirror goes aside at the next walk, a new one is made
            os.chmod(m.p("pub"), 0o755)
            as_actor(al, lambda: rewrite(f, f"round {i}\n".encode()))
        # mallory's reads fill the kernel's caches (dentries, attributes); then pub is closed
        # and mallory tries at once (a fork later), each try a fresh walk of the path
        assert as_actor(mal, mallory_reads) == [["f.~1~"], "ok"]
        os.chmod(m.p("pub"), 0o700)  # root, through the mount, as alice could
        got = as_actor(mal, mallory_tries)
        assert got == [["EACCES", "EACCES"]] * 5, got


def test_3_mv_then_chmod_closes_the_old_mirror(mounter, workdir, team):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    pub, old = m.p("home", "a", "pub"), m.p(".versions", "home", "a", "pub")

    def alice():
        os.mkdir(pub, 0o755)
        write(os.path.join(pub, "f"), ALICE, 0o644)
        rewrite(os.path.join(pub, "f"), b"alice v2\n")
    as_actor(al, alice)
    assert as_actor(mal, lambda: try_read(os.path.join(old, "f.~1~"))) == "ok:" + ALICE.decode()

    def alice_closes():
        os.rename(pub, pub + "2")
        os.chmod(pub + "2", 0o700)
    as_actor(al, alice_closes)
    got = as_actor(mal, lambda: [try_list(old), try_read(os.path.join(old, "f.~1~")),
                                 leaks(m.p(".versions"), b"alice")])
    assert got == ["EACCES", "EACCES", []], got
    # alice keeps her history
    assert as_actor(al, lambda: try_read(os.path.join(old, "f.~1~"))) == "ok:" + ALICE.decode()


# ---------------------------------------------------------------------------------------------
# chown: a new owner or group gets nothing it could not read when the version was kept

def test_chown_to_a_new_owner_opens_no_old_version(mounter, workdir, team):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team, 0o700))
    doc, v1 = m.p("home", "a", "doc"), m.p(".versions", "home", "a", "doc.~1~")

    def alice():
        write(doc, ALICE, 0o644)
        rewrite(doc, b"alice v2\n")
    as_actor(al, alice)
    # root hands the directory and the file over to mallory
    os.chown(m.p("home", "a"), mal.uid, mal.gid)
    os.chown(doc, mal.uid, mal.gid)
    got = as_actor(mal, lambda: [try_read(doc), try_read(v1), leaks(m.p(".versions"), b"alice")])
    assert got[0] == "ok:alice v2\n" and got[1] in ("EACCES", "ENOENT") and got[2] == [], got
    assert root_finds(m.p(".versions"), "doc.~1~", ALICE)  # kept, out of her reach


def test_chgrp_closes_versions_to_the_old_group(mounter, workdir, team):
    al, mal, gid = team["alice"], team["mallory"], team["gid"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    doc, v1 = m.p("home", "a", "doc"), m.p(".versions", "home", "a", "doc.~1~")

    def alice():
        write(doc, ALICE, 0o640)
        os.chown(doc, -1, gid)
        rewrite(doc, b"alice v2\n")
    as_actor(al, alice)
    assert as_actor(mal, lambda: try_read(v1)) == "ok:" + ALICE.decode()  # team could read
    as_actor(al, lambda: os.chown(doc, -1, al.gid))
    assert as_actor(mal, lambda: [try_read(doc), try_read(v1)]) == ["EACCES", "EACCES"]
    assert as_actor(al, lambda: try_read(v1)) == "ok:" + ALICE.decode()


# ---------------------------------------------------------------------------------------------
# what the owner and the group could read stays readable

def test_group_and_owner_keep_what_they_could_read(mounter, workdir, team):
    al, mal, gid = team["alice"], team["mallory"], team["gid"]
    open_world(workdir)

    def setup(d):
        os.chmod(d, 0o755)
        p = os.path.join(d, "proj")
        os.mkdir(p)
        os.chown(p, al.uid, gid)
        os.chmod(p, 0o750)

    m = mounter(setup=setup)
    doc = m.p("proj", "doc")

    def alice():
        write(doc, ALICE, 0o644)
        os.chown(doc, -1, gid)
        rewrite(doc, b"alice v2\n")
        os.unlink(doc)
    as_actor(al, alice)
    vs = [m.p(".versions", "proj", n) for n in ("doc.~1~", "doc.~2~")]
    assert as_actor(mal, lambda: [try_read(v) for v in vs]) == ["ok:" + ALICE.decode(),
                                                                "ok:alice v2\n"]
    assert as_actor(al, lambda: [try_read(v) for v in vs]) == ["ok:" + ALICE.decode(),
                                                               "ok:alice v2\n"]
    # others could not search proj, and cannot now
    assert as_actor(Actor("nobody", NOBODY, NOBODY), lambda: [try_read(v) for v in vs]) == \
        ["EACCES", "EACCES"]


def test_opening_a_directory_does_not_open_what_was_kept_closed(mounter, workdir, team):
    """A version kept while its directory was 0700 stays closed when the directory opens: the
    mirror only ever closes; opening it moves it aside, and later versions go to a new one."""
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    proj = m.p("home", "a", "proj")

    def alice():
        os.mkdir(proj, 0o700)
        write(os.path.join(proj, "doc"), ALICE, 0o644)
        rewrite(os.path.join(proj, "doc"), b"alice v2\n")  # v1 kept while proj was 0700
        os.chmod(proj, 0o755)
        rewrite(os.path.join(proj, "doc"), b"public v3\n")  # v2 kept while proj was 0755
    as_actor(al, alice)
    got = as_actor(mal, lambda: [leaks(m.p(".versions"), b"alice private"),
                                 try_list(m.p(".versions", "home", "a", "proj"))])
    assert got == [[], ["doc.~1~"]], got  # the numbering restarts in the new mirror
    assert as_actor(mal, lambda: try_read(m.p(".versions", "home", "a", "proj", "doc.~1~"))) \
        == "ok:alice v2\n"
    assert as_actor(al, lambda: leaks(m.p(".versions"), b"alice private"))


# ---------------------------------------------------------------------------------------------
# ACL entries (the kernel checks them with FUSE_POSIX_ACL): an entry that shuts a user out of a
# file or a directory shuts her out of its history too, at once

def setfacl(*args):
    subprocess.run(["setfacl", *args], check=True)


@pytest.fixture
def acl_tools():
    if not shutil.which("setfacl"):
        pytest.skip("setfacl is missing (scripts/deps --test installs acl)")


def test_acl_entry_on_a_directory_closes_its_history(mounter, workdir, team, acl_tools):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    f, v1 = m.p("home", "a", "f"), m.p(".versions", "home", "a", "f.~1~")

    def alice():
        write(f, ALICE, 0o644)
        rewrite(f, b"alice v2\n")
    as_actor(al, alice)
    assert as_actor(mal, lambda: try_read(v1)) == "ok:" + ALICE.decode()  # open when kept
    as_actor(al, lambda: setfacl("-m", f"u:{mal.uid}:---", m.p("home", "a")))
    assert as_actor(mal, lambda: try_read(f)) == "EACCES"  # the kernel checks the entry
    # the mirror moved aside at the setfacl (an ACL that changed counts as opening)
    assert as_actor(mal, lambda: try_read(v1)) in ("EACCES", "ENOENT")
    assert as_actor(mal, lambda: leaks(m.p(".versions"), ALICE)) == []
    assert as_actor(al, lambda: leaks(m.p(".versions"), ALICE))  # hers to read
    assert root_finds(m.p(".versions"), "f.~1~", ALICE)


def test_acl_entry_on_a_file_closes_its_versions(mounter, workdir, team, acl_tools):
    al, mal = team["alice"], team["mallory"]
    open_world(workdir)
    m = mounter(setup=alice_home(team))
    doc, v1 = m.p("home", "a", "doc"), m.p(".versions", "home", "a", "doc.~1~")

    def alice():
        write(doc, ALICE, 0o644)
        rewrite(doc, b"alice v2\n")
    as_actor(al, alice)
    assert as_actor(mal, lambda: try_read(v1)) == "ok:" + ALICE.decode()
    as_actor(al, lambda: setfacl("-m", f"u:{mal.uid}:---", doc))
    assert as_actor(mal, lambda: try_read(doc)) == "EACCES"
    assert as_actor(mal, lambda: try_read(v1)) == "EACCES"
    assert as_actor(al, lambda: try_read(v1)) == "ok:" + ALICE.decode()
