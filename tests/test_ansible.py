"""The Ansible modules in contrib/ansible, run by Debian's ansible-core against localhost on a
real binvfs mount: binvfs_rollback (check mode, diff mode, idempotence), binvfs_outdated
(facts per path, with units), and the example playbook (deploy with copy, restart the
services that still run the old build, roll back when the health check fails).

Services are processes in real cgroups (the `cgroups` fixture); `systemctl` is the recording
script of the `recorder` fixture.
"""
import json
import os

import pytest

from conftest import ROOT, ctl_path, program
from util import cp, read, run, write

ANSIBLE = os.path.join(ROOT, "contrib", "ansible")
MODULES = os.path.join(ANSIBLE, "plugins", "modules")
PLAYBOOK = os.path.join(ANSIBLE, "playbooks", "deploy.yml")


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

    def call(tool, *args, as_json=True):
        e = dict(env)
        if as_json:
            e.update(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
        r = run([f"/usr/bin/{tool}", *args], env=e, cwd=workdir)
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
    """ansible-doc reads DOCUMENTATION, EXAMPLES and RETURN of both modules."""
    for name in ("binvfs_rollback", "binvfs_outdated"):
        r = ansible("ansible-doc", "-M", MODULES, "--json", name, as_json=False)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)[name]
        assert doc["doc"]["module"] == name and doc["examples"] and doc["return"], doc
