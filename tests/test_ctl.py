"""binvfsctl against a real mount: status, log, diff, rollback, prune, outdated; --json; bad
input; binvfsctl(8) against --help; the fstab route (mount -t fuse.binvfs, umount) and the
systemd unit.

binvfsctl is the one built next to the binvfs under test (build/ or build-asan/).
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, ctl_path, program
from util import cp, is_mounted, read, run, sha, versions, wait_for, write


def start(procs, path, version):
    """Run path (a program(cbuild, N)) for 30 s; returns once it has started."""
    p = procs.start([path, "30"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == f"version {version}\n"
    return p


def build_id(path):
    if not shutil.which("readelf"):
        return None
    m = re.search(r"Build ID: ([0-9a-f]+)", run(["readelf", "-n", path]).stdout)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# outdated

def test_outdated_lists_a_process_on_version_1_only_after_cp_of_version_2(mnt, procs, cbuild,
                                                                           ctl, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    p1 = start(procs, app, 1)
    # running the current version: never listed
    assert not [r for r in ctlj("outdated", mnt.path) if r["pid"] == p1.pid]
    assert str(p1.pid) not in ctl("outdated", mnt.path).stdout

    cp(program(cbuild, 2), app)
    p2 = start(procs, app, 2)
    rows = ctlj("outdated", mnt.path)
    assert [(r["pid"], r["file"], r["running"], r["current"]) for r in rows] == [
        (p1.pid, app, 1, 2)]
    assert "exe" in rows[0]["how"] and rows[0]["user"] == "root"
    assert rows[0]["command"] == "app"
    assert not [r for r in rows if r["pid"] == p2.pid]
    lines = ctl("outdated", mnt.path).stdout.splitlines()
    assert lines[0].split() == ["PID", "USER", "COMMAND", "UNIT", "FILE", "RUNNING", "CURRENT",
                                "HOW"]
    fields = lines[1].split()  # the UNIT column: test_services.py
    assert fields[:3] + fields[4:7] == [str(p1.pid), "root", "app", app, "1", "2"]
    assert len(lines) == 2
    # a DIR or file below the mount narrows it; the whole mount's list has it too
    os.mkdir(mnt.p("sub"))
    assert ctlj("outdated", mnt.p("sub")) == []
    assert [r["pid"] for r in ctlj("outdated", app)] == [p1.pid]
    assert p1.pid in [r["pid"] for r in ctlj("outdated")]
    # once it exits it is gone from the list
    p1.kill()
    p1.wait()
    assert ctlj("outdated", mnt.path) == []
    assert "no process" in ctl("outdated", mnt.path).stdout


def test_outdated_sees_a_mapped_library_version(mnt, procs, workdir, ctlj):
    """A process that only maps an old version (no exe on the mount) is listed as "map"."""
    lib = mnt.p("data.bin")
    write(lib, b"\0" * 8192)
    holder = procs.start(
        ["/usr/bin/python3", "-c",
         "import mmap, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "m = mmap.mmap(fd, 0, prot=mmap.PROT_READ); os.close(fd)\n"
         "print('ok', flush=True); sys.stdin.read()\n", lib],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "ok\n"
    assert ctlj("outdated", mnt.path) == []
    write(os.path.join(workdir, "new"), b"\1" * 8192)
    cp(os.path.join(workdir, "new"), lib)
    rows = ctlj("outdated", mnt.path)
    assert [(r["pid"], r["running"], r["current"]) for r in rows] == [(holder.pid, 1, 2)]
    assert "map" in rows[0]["how"] and "exe" not in rows[0]["how"]  # (python's mmap keeps
    # a dup of the fd: "open" too)


# ---------------------------------------------------------------------------------------------
# log

def test_log_shows_every_version_with_the_right_pid(mnt, procs, cbuild, ctl, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    p1 = start(procs, app, 1)
    cp(program(cbuild, 2), app)
    p2 = start(procs, app, 2)
    cp(program(cbuild, 3), app)
    p3 = start(procs, app, 3)

    j = ctlj("log", app)
    assert j["path"] == app and j["mountpoint"] == mnt.path and j["current"] == 3
    vs = j["versions"]
    assert [v["n"] for v in vs] == [3, 2, 1]
    assert [v["current"] for v in vs] == [True, False, False]
    assert vs[0]["replaced"] is None and vs[1]["replaced"] and vs[2]["replaced"]
    assert vs[0]["path"] == app
    assert vs[2]["path"] == mnt.p(".versions", "app.~1~")
    pids = {v["n"]: [p["pid"] for p in v["pids"]] for v in vs}
    assert pids == {1: [p1.pid], 2: [p2.pid], 3: [p3.pid]}
    assert all("exe" in p["how"] for v in vs for p in v["pids"])
    for v in vs:
        prog = program(cbuild, v["n"])
        assert v["sha256"] == sha(read(prog))
        assert v["size"] == os.path.getsize(prog)
        assert v["inode"] == os.stat(v["path"]).st_ino
        if build_id(prog):
            assert v["build_id"] == build_id(prog)

    out = ctl("log", app).stdout.splitlines()
    assert out[0] == f"{app}: 3 versions, current 3"
    assert out[1].split() == ["N", "REPLACED", "SIZE", "SHA256", "BUILD-ID", "PIDS"]
    rows = {line.split()[0]: line for line in out[2:]}
    assert list(rows) == ["3", "2", "1"]
    assert "current" in rows["3"]
    for n, p in (("1", p1), ("2", p2), ("3", p3)):
        assert f"{p.pid}(app)" in rows[n]
        assert sha(read(program(cbuild, int(n))))[:12] in rows[n]
    p2.kill()
    p2.wait()
    assert [v["pids"] for v in ctlj("log", app)["versions"] if v["n"] == 2] == [[]]


def test_log_of_a_version_path_and_of_a_removed_file(mnt, ctlj):
    write(mnt.p("f"), "one\n")
    write(mnt.p("f"), "two\n")
    assert [v["n"] for v in ctlj("log", mnt.p(".versions", "f.~1~"))["versions"]] == [2, 1]
    os.unlink(mnt.p("f"))
    j = ctlj("log", mnt.p("f"))
    assert j["current"] is None
    assert [(v["n"], v["current"]) for v in j["versions"]] == [(2, False), (1, False)]


# ---------------------------------------------------------------------------------------------
# rollback

def test_rollback_makes_the_next_exec_run_the_old_build(mnt, procs, cbuild, ctl, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    assert run([app]).stdout == "version 2\n"
    running2 = start(procs, app, 2)

    out = ctl("rollback", app).stdout
    assert "rolled back to version 1" in out and "version 3" in out
    assert run([app]).stdout == "version 1\n"
    assert versions(mnt) == ["app.~1~", "app.~2~"]
    # a process on the replaced build goes on, and is now outdated
    assert running2.poll() is None
    assert [(r["pid"], r["running"], r["current"]) for r in ctlj("outdated", mnt.path)] == [
        (running2.pid, 2, 3)]

    # a rollback is itself a version, and can be rolled back
    j = ctlj("rollback", app)
    assert j == {"path": app, "from": 2, "version": 4, "previous": 3, "changed": True}
    assert run([app]).stdout == "version 2\n"
    ctl("rollback", app, "1")
    assert run([app]).stdout == "version 1\n"
    assert sha(read(app)) == sha(read(program(cbuild, 1)))
    assert [v["n"] for v in ctlj("log", app)["versions"]] == [5, 4, 3, 2, 1]
    # rolling back to what is already current changes nothing
    j = ctlj("rollback", app, "3")
    assert j["changed"] is False and j["version"] == 5
    assert versions(mnt) == ["app.~1~", "app.~2~", "app.~3~", "app.~4~"]


def test_rollback_restores_a_removed_file(mnt, ctl):
    write(mnt.p("conf"), "a=1\n")
    os.chmod(mnt.p("conf"), 0o640)
    os.unlink(mnt.p("conf"))
    assert "restored version 1" in ctl("rollback", mnt.p("conf")).stdout
    assert read(mnt.p("conf")) == b"a=1\n"
    assert os.stat(mnt.p("conf")).st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------
# diff

def test_diff_text_is_a_unified_diff(mnt, ctl, ctlj):
    conf = mnt.p("conf")
    write(conf, "a=1\nb=2\n")
    write(conf, "a=1\nb=3\n")
    write(conf, "a=2\nb=3\n")
    out = ctl("diff", conf).stdout
    assert f"--- {conf} (version 2)\n+++ {conf} (version 3, current)\n" in out
    assert "-a=1\n+a=2\n" in out
    out = ctl("diff", conf, "1").stdout
    assert "-b=2\n" in out and "+a=2\n" in out
    out = ctl("diff", conf, "1", "2").stdout
    assert f"+++ {conf} (version 2)\n" in out and "-b=2\n+b=3\n" in out
    j = ctlj("diff", conf, "1", "3")
    assert j["binary"] is False and j["identical"] is False
    assert (j["a"]["n"], j["b"]["n"], j["b"]["current"]) == (1, 3, True)
    assert "-a=1\n" in j["diff"]
    assert "identical" in ctl("diff", conf, "3", "3").stdout


def test_diff_binary_summary(mnt, cbuild, ctl, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    out = ctl("diff", app).stdout
    assert f"{app}: version 1 -> version 2 (current), binary" in out
    assert sha(read(program(cbuild, 1))) in out and sha(read(program(cbuild, 2))) in out
    if build_id(program(cbuild, 1)):
        assert f"build-id:  {build_id(program(cbuild, 1))} -> " in out
    assert re.search(r"changed:   \d+ bytes in \d+ ranges?", out)
    j = ctlj("diff", app)
    assert j["binary"] is True and j["identical"] is False
    assert j["a"]["sha256"] == sha(read(program(cbuild, 1)))
    a, b = read(program(cbuild, 1)), read(program(cbuild, 2))
    diffs = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    assert j["changed_bytes"] == len(diffs) + abs(len(a) - len(b))
    assert j["range_count"] == len(j["ranges"]) >= 1
    assert j["ranges"][0]["offset"] == diffs[0]
    covered = set()
    for r in j["ranges"]:
        covered.update(range(r["offset"], r["offset"] + r["length"]))
    assert set(diffs) <= covered


# ---------------------------------------------------------------------------------------------
# prune

def test_prune_keep1_removes_older_versions_but_not_one_in_use(mnt, procs, cbuild, ctl, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    p1 = start(procs, app, 1)
    for v in (2, 3, 4):
        cp(program(cbuild, v), app)
    assert versions(mnt) == ["app.~1~", "app.~2~", "app.~3~"]

    j = ctlj("prune", "--keep", "1", app)
    assert (j["before"], j["removed"], j["after"], j["in_use"], j["held_by_kernel"]) == \
        (3, 1, 2, 1, 0)
    assert versions(mnt) == ["app.~1~", "app.~3~"]
    assert p1.poll() is None
    assert run([mnt.p(".versions", "app.~3~")]).stdout == "version 3\n"
    assert run([app]).stdout == "version 4\n"

    # a DIR: every directory below it, one request each
    os.makedirs(mnt.p("etc", "app"))
    for i in range(4):
        write(mnt.p("etc", "app", "conf"), f"{i}\n")
        write(mnt.p("etc", "motd"), f"{i}\n")
    out = ctl("prune", "--keep=1", mnt.p("etc")).stdout
    assert out == f"{mnt.p('etc')}: keep 1: 4 old versions removed, 2 left\n"
    assert versions(mnt, "etc") == ["app", "motd.~3~"]
    assert versions(mnt, "etc/app") == ["conf.~3~"]
    assert versions(mnt) == ["app.~1~", "app.~3~", "etc"]

    # the version in use goes once its last user has
    p1.kill()
    p1.wait()
    wait_for(lambda: "app.~1~" not in versions(mnt), timeout=10, what="app.~1~ to go")
    assert ctlj("prune", "--keep", "1", mnt.path)["after"] == 3


def test_prune_defaults_to_the_mounts_keep(mounter, ctl):
    m = mounter(opts=("nosync", "keep=0"))
    for i in range(5):
        write(m.p("f"), f"{i}\n")
    assert "keeps every version" in ctl("prune", m.path).stdout
    assert versions(m) == [f"f.~{n}~" for n in range(1, 5)]
    ctl("prune", "--keep", "2", m.path)
    assert versions(m) == ["f.~3~", "f.~4~"]


def test_prune_removes_versions_that_were_only_looked_at(mnt, ctl, ctlj):
    """A version only stat'ed (binvfsctl log, ls -l) is not in use: the kernel's cached entry
    for it must not make the daemon defer its removal."""
    for i in range(4):
        write(mnt.p("f"), f"{i}\n")
    ctl("log", mnt.p("f"))  # stats every version
    os.stat(mnt.p(".versions", "f.~1~"))
    j = ctlj("prune", "--keep", "1", mnt.p("f"))
    assert (j["removed"], j["held_by_kernel"]) == (2, 0)
    assert versions(mnt) == ["f.~3~"]


# ---------------------------------------------------------------------------------------------
# status

def test_status(mounter, ctl, ctlj):
    m = mounter(opts=("nosync", "keep=3"))
    os.mkdir(m.p("d"))
    write(m.p("a"), "1\n")
    write(m.p("a"), "22\n")
    write(m.p("d", "b"), "333\n")
    write(m.p("d", "b"), "4444\n")
    [s] = ctlj("status", m.p("d"))
    assert s["mountpoint"] == m.path and s["source"] == m.src
    assert s["daemon_pid"] == m.proc.pid and s["keep"] == 3
    assert "keep=3" in s["options"] and "nosync" in s["options"]
    assert (s["files"], s["versions"], s["version_bytes"], s["staging"]) == (2, 2, 2 + 4, 0)
    assert m.path in [x["mountpoint"] for x in ctlj("status")]

    # a writer's staging copy in progress
    with open(m.p("a"), "r+b") as f:
        f.write(b"x")
        f.flush()
        assert ctlj("status", m.path)[0]["staging"] == 1
        text = ctl("status", m.path).stdout
        assert "staging   1 in progress" in text
    assert ctlj("status", m.path)[0]["staging"] == 0
    assert f"daemon    pid {m.proc.pid}, keep=3, nosync\n" in text
    assert "versions  2, 6 bytes in .versions/\n" in text


# ---------------------------------------------------------------------------------------------
# directories whose mirror in .versions/ has an escaped name (docs/format.md)

ESCAPED = [("x.~1~", "x.~1~.~~"), ("x.~1~/.binvfs-staging", "x.~1~.~~/.binvfs-staging.~~"),
           ("a.~~", "a.~~.~~")]


def test_commands_in_directories_whose_mirror_name_is_escaped(mnt, procs, cbuild, ctl, ctlj):
    """A tree directory named like a version, like a store entry, or ending in ".~~" keeps
    its versions in a mirror named with ".~~" appended: every command finds them there."""
    for d, mirror in ESCAPED:
        os.mkdir(mnt.p(d))
        f = mnt.p(d, "f")
        for text in ("one\n", "two\n", "three\n"):
            write(f, text)
        assert versions(mnt, mirror) == ["f.~1~", "f.~2~"]
        assert [v["n"] for v in ctlj("log", f)["versions"]] == [3, 2, 1]
        assert ctlj("log", mnt.p(".versions", mirror, "f.~1~"))["path"] == f
        assert "-two\n+three\n" in ctl("diff", f).stdout
        assert ctlj("rollback", f, "1")["version"] == 4
        assert read(f) == b"one\n"
        j = ctlj("prune", "--keep", "1", f)
        assert (j["before"], j["removed"], j["after"]) == (3, 2, 1)
        assert versions(mnt, mirror) == ["f.~3~"]

    [s] = ctlj("status", mnt.path)
    assert (s["files"], s["versions"], s["version_bytes"]) == (3, 3, 3 * len("three\n"))

    # a process running an old version there is outdated, under its tree path
    app = mnt.p("x.~1~", "app")
    cp(program(cbuild, 1), app)
    p1 = start(procs, app, 1)
    cp(program(cbuild, 2), app)
    rows = ctlj("outdated", mnt.p("x.~1~"))
    assert [(r["pid"], r["file"], r["running"], r["current"]) for r in rows] == [
        (p1.pid, app, 1, 2)]
    j = ctlj("prune", "--keep", "0", mnt.p("x.~1~"))
    assert (j["before"], j["removed"], j["in_use"]) == (3, 2, 1)


# ---------------------------------------------------------------------------------------------
# --json and bad input

def test_json_parses_for_every_command(mnt, workdir, cbuild, ctl, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    write(mnt.p("t"), "1\n")
    write(mnt.p("t"), "2\n")
    assert isinstance(ctlj("status", mnt.path), list)
    assert isinstance(ctlj("log", app), dict)
    assert ctlj("diff", app)["binary"] is True
    assert ctlj("diff", mnt.p("t"))["binary"] is False
    assert ctlj("rollback", app)["from"] == 1
    assert ctlj("prune", "--keep", "5", mnt.path)["removed"] == 0
    assert ctlj("outdated", mnt.path) == []
    # --json anywhere on the line; odd names survive
    odd = mnt.p('we"ird\\ name\t\u00e9')
    write(odd, "x")
    write(odd, "y")
    assert json.loads(ctl("log", odd, "--json").stdout)["path"] == odd


def test_json_names_that_are_not_utf8_round_trip(mnt, ctl):
    """A name's bytes that are not well-formed UTF-8 come out as \\udcNN, as Python's
    surrogateescape decodes them: the output is UTF-8, os.fsencode() gives every name back,
    and a name holding the text "\\xff" or "\\udcff" stays apart from the byte 0xff."""
    names = [b"raw\xff\xfe", b"raw\\xff", b"text\\udcff", b"e\xc3\xa9", b"cut\xe2\x82",
             b"overlong\xc0\xaf", b"surrogate\xed\xa0\x80", b"big\xf4\x90\x80\x80"]
    for name in names:
        path = os.path.join(os.fsencode(mnt.path), name)
        write(path, "1\n")
        write(path, "2\n")
        out = ctl("--json", "log", path).stdout
        assert "\ufffd" not in out  # (run decodes with errors="replace")
        assert os.fsencode(json.loads(out)["path"]) == path
    assert sorted(os.fsencode(v) for v in versions(mnt)) == sorted(n + b".~1~" for n in names)


def bad(ctl, *args, msg):
    r = ctl(*args, rc=1)
    assert r.stdout == "", r.stdout
    assert r.stderr.startswith("binvfsctl: ") and r.stderr.count("\n") == 1, r.stderr
    assert msg in r.stderr, r.stderr


def test_bad_input_exits_1_with_one_line(mnt, workdir, cbuild, ctl):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    write(mnt.p("new"), "x")
    plain = os.path.join(workdir, "plain")
    os.mkdir(plain)
    write(os.path.join(plain, "f"), "x")
    for json_flag in ((), ("--json",)):
        for args in (("status", plain), ("log", os.path.join(plain, "f")),
                     ("diff", os.path.join(plain, "f")), ("rollback", os.path.join(plain, "f")),
                     ("prune", "--keep", "1", plain), ("outdated", plain)):
            bad(ctl, *json_flag, *args, msg="not in a binvfs mount")
        bad(ctl, *json_flag, "log", mnt.p("nope"), msg="no such file")
        bad(ctl, *json_flag, "log", os.path.join(plain, "nope", "x"), msg="No such file")
        bad(ctl, *json_flag, "diff", mnt.p("nope"), msg="no such file")
        bad(ctl, *json_flag, "rollback", mnt.p("nope"), msg="no such file")
        bad(ctl, *json_flag, "prune", mnt.p("nope"), msg="no such file")
        bad(ctl, *json_flag, "status", mnt.p("nope"), msg="no such file")
        bad(ctl, *json_flag, "outdated", mnt.p("nope"), msg="no such file")
        bad(ctl, *json_flag, "log", mnt.path, msg="is a directory")
        bad(ctl, *json_flag, "diff", app, "9", msg="no such version 9")
        bad(ctl, *json_flag, "diff", app, "1", "7", msg="no such version 7")
        bad(ctl, *json_flag, "diff", app, "x", msg="not a version number")
        bad(ctl, *json_flag, "diff", app, "0", msg="not a version number")
        bad(ctl, *json_flag, "diff", mnt.p("new"), msg="no old version")
        bad(ctl, *json_flag, "rollback", app, "9", msg="no such version 9")
        bad(ctl, *json_flag, "rollback", app, "2", msg="is the current one")
        bad(ctl, *json_flag, "rollback", mnt.p("new"), msg="no old version")
        bad(ctl, *json_flag, "prune", "--keep", "x", app, msg="--keep x")
        bad(ctl, *json_flag, "prune", "--keep", "-1", app, msg="--keep -1")
        bad(ctl, *json_flag, "prune", app, "--keep", msg="--keep needs a number")
        bad(ctl, *json_flag, "prune", mnt.p(".versions"), msg="inside .versions/")
        bad(ctl, *json_flag, "bogus", msg="unknown command bogus")
        bad(ctl, *json_flag, msg="missing command")
        bad(ctl, *json_flag, "log", msg="usage: binvfsctl log PATH")
        bad(ctl, *json_flag, "log", app, app, msg="too many arguments")
        bad(ctl, *json_flag, "status", "--frob", msg="unknown option --frob")
        bad(ctl, *json_flag, "--frob", msg="unknown option --frob")
    # nothing changed
    assert versions(mnt) == ["app.~1~"]


# ---------------------------------------------------------------------------------------------
# help and man page

def roff_text(path):
    """The words of a roff page, without requests' names, font escapes and \\- escapes."""
    words = []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith(".\\\""):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            if parts[0] in (".TH", ".SH", ".SS"):
                continue
            line = parts[1] if len(parts) > 1 else ""
            line = line.replace('"', "")
        line = re.sub(r"\\f[BIRP]", "", line)
        line = line.replace("\\-", "-").replace("\\(aq", "'").replace("\\e", "\\")
        line = line.replace("\\&", "").replace("\\ ", " ")
        words += line.split()
    return " ".join(words)


def test_man_page_matches_help(binary):
    helptext = run([ctl_path(binary), "--help"]).stdout
    man = roff_text(os.path.join(ROOT, "docs", "binvfsctl.8"))
    # every description of --help, word for word
    entries, cur = [], None
    for line in helptext.splitlines():
        m = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m and not line.startswith(" " * 29):
            # a synopsis too long for its column has the description on the next lines
            cur = [m.group(1), m.group(2) or ""]
            entries.append(cur)
        elif line.startswith(" " * 29) and cur:
            cur[1] += " " + line.strip()
        else:
            cur = None
    assert len(entries) == 14
    assert all(text for _, text in entries), entries
    for synopsis, text in entries:
        assert " ".join(text.split()) in man, text
        for word in re.split(r"[\s,|\[\]]+", synopsis):
            assert word in man, word
    for line in helptext.splitlines()[1:3] + helptext.splitlines()[-1:]:
        assert " ".join(line.split()) in man, line
    assert run([ctl_path(binary), "-h"]).stdout == helptext


# ---------------------------------------------------------------------------------------------
# fstab and systemd

def test_fstab_line_mounts_and_unmounts(binary, workdir):
    """mount -t fuse.binvfs (mount.fuse3 runs `binvfs SRC MNT -o ...`), then umount.

    mount(8) drops PATH from the environment of its helpers (util-linux sanitize_env), so
    mount.fuse3's `sh -c binvfs ...` looks in sh's default PATH: the test installs binvfs as
    /usr/local/sbin/binvfs with a bind mount in a private mount namespace, and puts it first
    on PATH too. The mount lives in that namespace, so the checks run there."""
    if not shutil.which("mount.fuse3") or not shutil.which("unshare"):
        pytest.skip("needs mount.fuse3 and unshare")
    bindir = os.path.join(workdir, "path")
    src = os.path.join(workdir, "opt-app-bin")
    os.makedirs(bindir)
    os.makedirs(src)
    os.symlink(os.path.abspath(binary), os.path.join(bindir, "binvfs"))
    write(os.path.join(src, "app"), "v1\n")
    script = f"""
set -u
trap 'umount -l {src} 2>/dev/null' EXIT
mount --bind {bindir} /usr/local/sbin || exit 90
mount -t fuse.binvfs -o keep=3,x-systemd.automount {src} {src} || exit 91
grep -q " {src} .* - fuse.binvfs {src} " /proc/self/mountinfo || exit 92
echo v2 > {src}/app
test "$(cat {src}/.versions/app.~1~)" = v1 || exit 93
{ctl_path(binary)} --json status {src} || exit 94
umount {src} || exit 95
! grep -q " {src} " /proc/self/mountinfo || exit 96
"""
    env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=50, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    [s] = json.loads(r.stdout)
    assert s["keep"] == 3 and s["source"] == src and s["versions"] == 1
    assert not is_mounted(src)
    # the daemon exits after the umount
    wait_for(lambda: not os.path.exists(f"/proc/{s['daemon_pid']}"), timeout=30,
             what="binvfs to exit after umount")
    assert read(os.path.join(src, "app")) == b"v2\n"
    assert read(os.path.join(src, ".versions", "app.~1~")) == b"v1\n"


def test_systemd_unit_verifies(binary, workdir):
    unit = os.path.join(os.path.dirname(binary), "binvfs@.service")
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    if not os.path.exists(unit):
        pytest.skip("no built unit")
    # an instance, with ExecStart at the binary under test (the installed path may not
    # exist here) and binvfs(8) where `man` finds it
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={os.path.abspath(binary)}", open(unit).read(),
                  flags=re.M)
    inst = os.path.join(workdir, "binvfs@opt-app-bin.service")
    write(inst, text)
    man8 = os.path.join(workdir, "man", "man8")
    os.makedirs(man8)
    for page in ("binvfs.8", "binvfsctl.8"):
        shutil.copy(os.path.join(ROOT, "docs", page), man8)
    r = run(["systemd-analyze", "verify", inst],
            env=dict(os.environ, MANPATH=os.path.join(workdir, "man")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Type=notify" in text and "umount -l" in text
