"""The Ansible modules in contrib/ansible, run by Debian's ansible-core against localhost on a
real binvfs mount: binvfs_rollback (check mode, diff mode, idempotence), binvfs_outdated
(facts per path, with units), and the example playbook (deploy with copy, restart the
services that still run the old build, roll back when the health check fails).

Services are processes in real cgroups (the `cgroups` fixture); `systemctl` is the recording
script of the `recorder` fixture.
"""
import json
import os
import tempfile

import pytest

from conftest import ROOT, ctl_path, program
from util import cp, read, run, write

ANSIBLE = os.path.join(ROOT, "contrib", "ansible")
MODULES = os.path.join(ANSIBLE, "plugins", "modules")
PLAYBOOK = os.path.join(ANSIBLE, "playbooks", "deploy-file.yml")
RELEASE_PLAYBOOK = os.path.join(ANSIBLE, "playbooks", "deploy.yml")


@pytest.fixture
def ansible(binary, workdir):
    """ansible(args..., json=True) -> CompletedProcess of /usr/bin/ansible or ansible-playbook
    (the first argument says which), with its state and temp files in workdir."""
    if not os.path.exists("/usr/bin/ansible"):
        pytest.skip("ansible-core is not installed (scripts/deps --test installs it)")
    home = os.path.join(workdir, "ansible-home")
    os.makedirs(home)
    env = dict(os.environ, ANSIBLE_HOME=home, ANSIBLE_LOCAL_TEMP=os.path.join(home, "tmp"),
               ANSIBLE_REMOTE_TEMP=os.path.join(home, "rtmp"), ANSIBLE_LIBRARY=MODULES,
               ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_RETRY_FILES_ENABLED="false",
               PATH="/usr/bin:/bin:/usr/sbin:/sbin")

    def call(tool, *args, as_json=True, timeout=60):
        e = dict(env)
        if as_json:
            e.update(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
        r = run([f"/usr/bin/{tool}", *args], env=e, cwd=workdir, timeout=timeout)
        if as_json:
            assert r.stdout.lstrip().startswith("{"), r.stdout + r.stderr
            r.json = json.loads(r.stdout)
        return r

    return call


def module(ansible, binary, name, args, *flags):
    """Run one module against localhost: (exit status, its result)."""
    args = dict(args, binvfsctl=ctl_path(binary))
    r = ansible("ansible", "localhost", "-c", "local", "-M", MODULES, "-m", name,
                "-a", json.dumps(args), *flags)
    [task] = r.json["plays"][0]["tasks"]
    return r.returncode, task["hosts"]["localhost"]


def history(ctlj, path):
    log = ctlj("log", path)
    return log["current"], [v["n"] for v in log["versions"]]


def test_rollback_check_diff_and_idempotence(mnt, binary, ansible, ctlj):
    app = mnt.p("app.conf")
    for text in ("port=1\n", "port=2\n", "port=3\n"):
        write(app, text)
    assert history(ctlj, app) == (3, [3, 2, 1])

    # check mode with diff: says what would change, changes nothing
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 1},
                     "--check", "--diff")
    assert rc == 0 and res["changed"] is True, res
    assert (res["version"], res["previous"], res["current"]) == (1, 3, 4)
    assert res["diff"] == {"before_header": f"{app} (version 3)",
                           "after_header": f"{app} (version 1)",
                           "before": "port=3\n", "after": "port=1\n"}
    assert read(app) == b"port=3\n" and history(ctlj, app) == (3, [3, 2, 1])

    # the rollback: a new version 4 with the content of 1
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 1}, "--diff")
    assert rc == 0 and res["changed"] is True, res
    assert (res["version"], res["previous"], res["current"]) == (1, 3, 4)
    assert res["diff"]["after"] == "port=1\n"
    assert read(app) == b"port=1\n" and history(ctlj, app) == (4, [4, 3, 2, 1])

    # again, in check mode and for real: the content is current, nothing changes
    for flags in (("--check",), ()):
        rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 1},
                         *flags)
        assert rc == 0 and res["changed"] is False, res
        assert (res["current"], res["previous"]) == (4, 4)
    # the current version itself, too
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 4})
    assert rc == 0 and res["changed"] is False, res
    assert history(ctlj, app) == (4, [4, 3, 2, 1])

    # a version that does not exist, and a path that is not in a binvfs mount
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 9})
    assert rc != 0 and res["msg"] == f"{app}: no such version 9 (versions: 1 2 3 4)", res
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": "/etc/hostname", "version": 1})
    assert rc != 0 and "not in a binvfs mount" in res["msg"], res
    assert history(ctlj, app) == (4, [4, 3, 2, 1])


def test_rollback_of_a_binary_shows_hashes_and_restores_a_removed_file(mnt, binary, ansible,
                                                                       ctlj, cbuild):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    cp(program(cbuild, 2), app)
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 1},
                     "--check", "--diff")
    v = {x["n"]: x for x in ctlj("log", app)["versions"]}
    assert res["diff"]["before"].startswith(f"binary, {v[2]['size']} bytes\n"
                                            f"sha256 {v[2]['sha256']}\n")
    assert f"sha256 {v[1]['sha256']}\n" in res["diff"]["after"]
    os.unlink(app)
    rc, res = module(ansible, binary, "binvfs_rollback", {"path": app, "version": 1})
    assert rc == 0 and res["changed"] is True and res["previous"] is None, res
    assert run([app]).stdout == "version 1\n"


def test_outdated_facts_per_path(mnt, binary, ansible, cgroups, cbuild):
    app = mnt.p("app")
    os.mkdir(mnt.p("sub"))
    cp(program(cbuild, 1), app)
    tree = "v1" if "v1" in cgroups.roots else "v2"
    unit = cgroups.unit("app.service")
    svc = cgroups.start([app, "60"], tree, f"system.slice/{unit}")
    loose = cgroups.start([app, "60"], tree, "/")
    rc, res = module(ansible, binary, "binvfs_outdated", {"path": [mnt.path]})
    assert rc == 0 and res["changed"] is False and res["outdated"] is False, res
    assert res["ansible_facts"]["binvfs_outdated"] == {
        mnt.path: {"processes": [], "units": [], "restart": [], "not_restarted": []}}

    cp(program(cbuild, 2), app)
    rc, res = module(ansible, binary, "binvfs_outdated", {"path": [mnt.path, mnt.p("sub")]},
                     "--check")
    assert rc == 0 and res["changed"] is False and res["outdated"] is True, res
    facts = res["ansible_facts"]["binvfs_outdated"]
    assert facts[mnt.p("sub")] == {"processes": [], "units": [], "restart": [],
                                   "not_restarted": []}
    f = facts[mnt.path]
    assert [(p["pid"], p["unit"], p["file"], p["running"], p["current"])
            for p in f["processes"]] == [(svc.pid, unit, app, 1, 2), (loose.pid, None, app, 1, 2)]
    assert f["restart"] == [unit] and res["restart"] == [unit]
    assert f["not_restarted"] == [loose.pid]
    assert {u["unit"]: (u["restart"], u["pids"], u["files"]) for u in f["units"]} == {
        unit: (True, [svc.pid], [app]), None: (False, [loose.pid], [app])}


def test_playbook_deploys_restarts_and_rolls_back(mnt, binary, ansible, cgroups, cbuild,
                                                 recorder, workdir, ctlj):
    app = mnt.p("app")
    cp(program(cbuild, 1), app)
    tree = "v1" if "v1" in cgroups.roots else "v2"
    unit = cgroups.unit("app.service")
    svc = cgroups.start([app, "60"], tree, f"system.slice/{unit}")
    systemctl, calls = recorder
    broken = os.path.join(workdir, "broken")
    write(broken, "#!/bin/sh\necho broken >&2\nexit 3\n", 0o755)

    def play(src, name="app"):
        extra = {"bin_dir": mnt.path, "app": name, "src": src, "health_cmd": [mnt.p(name)],
                 "systemctl": systemctl, "binvfsctl": ctl_path(binary)}
        r = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                    json.dumps(extra), PLAYBOOK)
        tasks = {t["task"]["name"]: t["hosts"].get("localhost", {})
                 for t in r.json["plays"][0]["tasks"]}
        return r.returncode, tasks

    # a healthy build: copied, the service that ran version 1 restarted, no rollback
    rc, tasks = play(program(cbuild, 2))
    assert rc == 0, tasks
    assert tasks["Copy the new build (a temp file and a rename; binvfs keeps the old file)"][
        "changed"] is True
    assert calls() == [f"try-restart {unit}"]
    assert "Roll back to the version that was current" not in tasks
    assert read(app) == read(program(cbuild, 2)) and ctlj("log", app)["current"] == 2
    # the same build again: nothing copied, nothing restarted, no new version
    rc, tasks = play(program(cbuild, 2))
    assert rc == 0 and calls() == [f"try-restart {unit}"], tasks
    assert ctlj("log", app)["current"] == 2

    # a build that fails its health check: rolled back to version 2, services restarted again
    rc, tasks = play(broken)
    assert rc == 2, tasks
    rb = tasks["Roll back to the version that was current"]
    assert (rb["changed"], rb["version"], rb["previous"], rb["current"]) == (True, 2, 3, 4)
    assert tasks["Fail the deploy"]["msg"] == (
        f"{app} failed its health check; rolled back to version 2, now current as version 4")
    assert read(app) == read(program(cbuild, 2))
    assert run([app]).stdout == "version 2\n"
    assert calls() == [f"try-restart {unit}"] * 3
    assert read(mnt.p(".versions", "app.~3~")) == read(broken)
    assert svc.poll() is None  # the recorder restarts nothing: the process is still there

    # a first deploy that fails: there is nothing to roll back to, and the play says so
    rc, tasks = play(broken, "new")
    assert rc == 2, tasks
    assert tasks["Roll back to the version that was current"].get("skipped") is True
    assert tasks["Fail the deploy"]["msg"] == (
        f"{mnt.p('new')} failed its health check; no earlier version to roll back to")


def test_modules_document_themselves(ansible):
    """ansible-doc reads DOCUMENTATION, EXAMPLES and RETURN of each module."""
    for name in ("binvfs_rollback", "binvfs_outdated", "binvfs_release"):
        r = ansible("ansible-doc", "-M", MODULES, "--json", name, as_json=False)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)[name]
        assert doc["doc"]["module"] == name and doc["examples"] and doc["return"], doc


def release_tree(root, version, broken=False):
    """A small build: bin/app (checks that every lib file is of its own version) and 4 lib
    files (Ansible copies a tree one module run per file: slow on a loaded machine)."""
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "lib"))
    for i in range(4):
        write(os.path.join(root, "lib", f"part{i}"), f"{version}\n")
    body = "exit 3" if broken else (
        'd=$(dirname "$0")/../lib; for f in "$d"/part*; do '
        f'[ "$(cat "$f")" = {version} ] || exit 4; done; echo "app {version}"')
    write(os.path.join(root, "bin", "app"), f"#!/bin/sh\n{body}\n", 0o755)


def test_release_module_begin_commit_abort_check_mode(mnt, binary, ansible, ctlj, workdir):
    d = mnt.p("app")
    os.mkdir(d)
    write(os.path.join(d, "f"), "1")

    def bare(*flags, **args):  # no binvfsctl argument: the module needs none
        r = ansible("ansible", "localhost", "-c", "local", "-M", MODULES, "-m",
                    "binvfs_release", "-a", json.dumps(dict({"path": d}, **args)), *flags)
        [task] = r.json["plays"][0]["tasks"]
        return r.returncode, task["hosts"]["localhost"]

    rc, res = bare("--check", state="begun", name="r1")
    assert rc == 0 and res["changed"] is True and res["status"] is None, res
    assert "no release open" in run([ctl_path(binary), "release", "status", d]).stdout
    rc, res = bare(state="begun", name="r1")
    assert rc == 0 and res["changed"] is True and res["name"] == "r1", res
    assert res["status"].startswith("open r1 since"), res
    rc, res = bare(state="begun", name="r1")  # open already: no change
    assert rc == 0 and res["changed"] is False, res
    rc, res = bare(state="begun", name="other")
    assert rc != 0 and res["msg"] == f"{d}: release r1 is open, not other", res
    write(os.path.join(d, "f"), "2")
    write(os.path.join(d, "g"), "new")
    rc, res = bare("--check", state="committed")
    assert rc == 0 and res["changed"] is True and res["held"] == {"place": 1, "remove": 0}, res
    assert read(os.path.join(d, "f")) == b"1"  # check mode: still held
    rc, res = bare(state="committed")
    assert rc == 0 and res["changed"] is True and res["release"] == 1, res
    assert read(os.path.join(d, "f")) == b"2" and read(os.path.join(d, "g")) == b"new"
    [r] = ctlj("releases", d)
    assert (r["id"], r["name"], r["changed"], r["added"]) == (1, "r1", 1, 1), r
    rc, res = bare(state="committed")
    assert rc != 0 and "no release is open" in res["msg"], res
    rc, res = bare(state="aborted")  # nothing open: nothing to drop
    assert rc == 0 and res["changed"] is False, res
    rc, res = bare(state="begun")
    assert rc == 0 and res["changed"] is True and res["name"], res
    write(os.path.join(d, "f"), "3")
    rc, res = bare("--check", state="aborted")
    assert rc == 0 and res["changed"] is True, res
    rc, res = bare(state="aborted")
    assert rc == 0 and res["changed"] is True and read(os.path.join(d, "f")) == b"2", res
    def bare_at(path):
        r = ansible("ansible", "localhost", "-c", "local", "-M", MODULES, "-m",
                    "binvfs_release", "-a", json.dumps({"path": path, "state": "begun"}))
        [task] = r.json["plays"][0]["tasks"]
        return r.returncode, task["hosts"]["localhost"]
    rc, res = bare_at(workdir)
    assert rc != 0 and "not in a binvfs mount" in res["msg"], res


def test_release_playbook_deploys_a_tree_at_once_and_aborts_a_broken_one(mnt, binary, ansible,
                                                                         workdir, ctlj):
    app = mnt.p("app")
    release_tree(app, 1)
    b2, b3 = os.path.join(workdir, "b2"), os.path.join(workdir, "b3")
    release_tree(b2, 2)
    release_tree(b3, 3, broken=True)
    write(os.path.join(b3, "lib", "extra"), "only in 3\n")
    assert run([os.path.join(app, "bin", "app")]).stdout == "app 1\n"

    def stages():
        return {x for x in os.listdir(tempfile.gettempdir()) if x.endswith(".binvfs-stage")}
    stages_before = stages()

    def play(src, name):
        extra = {"app_dir": app, "src": src + "/", "release": name}
        r = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                    json.dumps(extra), RELEASE_PLAYBOOK, timeout=300)
        tasks = {t["task"]["name"]: t["hosts"].get("localhost", {})
                 for t in r.json["plays"][0]["tasks"]}
        return r.returncode, tasks

    rc, tasks = play(b2, "v2")
    assert rc == 0, tasks
    assert tasks["Commit the release (every file current at one instant)"]["release"] == 1
    assert run([os.path.join(app, "bin", "app")]).stdout == "app 2\n"
    [r] = ctlj("releases", app)
    assert (r["name"], r["changed"], r["added"], r["removed"]) == ("v2", 5, 0, 0), r
    versions = sorted(os.walk(mnt.p(".versions")))

    # a build that fails its health check: aborted, nothing of it visible, nothing kept
    rc, tasks = play(b3, "v3")
    assert rc == 2, tasks
    assert tasks["Abort the release (drop every held change)"]["changed"] is True
    assert "release v3 aborted" in tasks["Fail the deploy"]["msg"], tasks["Fail the deploy"]
    assert run([os.path.join(app, "bin", "app")]).stdout == "app 2\n"
    assert not os.path.exists(os.path.join(app, "lib", "extra"))
    assert sorted(os.walk(mnt.p(".versions"))) == versions
    assert [x["name"] for x in ctlj("releases", app)] == ["v2"]
    assert "no release open" in run([ctl_path(binary), "release", "status", app]).stdout
    assert stages() == stages_before  # the staging copies are gone
