"""binvfsctl outdated names the systemd unit of each process; restart restarts the services.

The processes are real, in real cgroups: without systemd as PID 1, root may make cgroups in
the cgroup v1 `name=systemd` hierarchy and in the v2 one, and a process placed under
`system.slice/NAME.service` there looks to binvfsctl exactly as one that systemd started.
Each test makes its own cgroups (names carry the test runner's pid), puts only processes it
started there, kills them by pid and removes the cgroups again (the `cgroups` fixture in
conftest.py). `systemctl` itself is replaced by a recording script through
BINVFSCTL_SYSTEMCTL where a restart must really run (the `recorder` fixture).
"""
import os

import pytest

from conftest import program
from util import cp, write


def need(cg, tree):
    if tree not in cg.roots:
        pytest.skip(f"no cgroup {tree} hierarchy mounted")


@pytest.fixture
def deployed(mnt, cbuild):
    """A mount with app at version 1; deploy() puts version 2 in place."""
    cp(program(cbuild, 1), mnt.p("app"))

    def deploy():
        cp(program(cbuild, 2), mnt.p("app"))

    return mnt, deploy


# ---------------------------------------------------------------------------------------------
# outdated: the unit of each process

@pytest.mark.parametrize("tree", ["v1", "v2"])
def test_outdated_names_the_service_of_each_process(deployed, cgroups, ctl, ctlj, cbuild, tree):
    mnt, deploy = deployed
    need(cgroups, tree)
    app = cgroups.unit("app.service")
    a1 = cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{app}")
    a2 = cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{app}")
    loose = cgroups.start([mnt.p("app"), "60"], tree, "/")
    deploy()
    fresh = cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{cgroups.unit('new.service')}")

    rows = ctlj("outdated", mnt.path)
    got = {r["pid"]: (r["unit"], r["manager"], r["cgroup"], r["running"], r["current"])
           for r in rows}
    assert got == {
        a1.pid: (app, None, f"/system.slice/{app}", 1, 2),
        a2.pid: (app, None, f"/system.slice/{app}", 1, 2),
        loose.pid: (None, None, "/", 1, 2),
    }
    assert fresh.pid not in got  # runs the current version: neither listed nor its unit
    # the table has a UNIT column, "-" for none
    lines = ctl("outdated", mnt.path).stdout.splitlines()
    assert lines[0].split() == ["PID", "USER", "COMMAND", "UNIT", "FILE", "RUNNING", "CURRENT",
                                "HOW"]
    table = {int(line.split()[0]): line.split()[3] for line in lines[1:]}
    assert table == {a1.pid: app, a2.pid: app, loose.pid: "-"}


def test_outdated_units_groups_by_unit(deployed, cgroups, ctl, ctlj, workdir):
    mnt, deploy = deployed
    tree = "v1" if "v1" in cgroups.roots else "v2"
    app, worker = cgroups.unit("app.service"), cgroups.unit("worker@2.service")
    session = "session-4242.scope"
    a1 = cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{app}")
    w = cgroups.start([mnt.p("app"), "60"], tree,
                      f"system.slice/system-{cgroups.tag}\\x2dworker.slice/{worker}")
    a2 = cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{app}")
    shell = cgroups.start([mnt.p("app"), "60"], tree,
                          f"user.slice/user-0.slice/{cgroups.tag}-{session}")
    user = cgroups.start([mnt.p("app"), "60"], tree,
                         f"user.slice/user-1000.slice/user@1000.service/app.slice/{app}")
    loose = cgroups.start([mnt.p("app"), "60"], tree, "/")
    deploy()

    groups = ctlj("outdated", "--units", mnt.path)
    got = {(g["unit"], g["manager"]): (g["restart"], g["not_restarted"],
                                       sorted(p["pid"] for p in g["processes"]))
           for g in groups}
    assert got == {
        (app, None): (True, None, sorted([a1.pid, a2.pid])),
        (worker, None): (True, None, [w.pid]),
        (f"{cgroups.tag}-{session}", None):
            (False, "in a scope (a login session or a transient group), not a service",
             [shell.pid]),
        (app, "user@1000.service"):
            (False, "a user unit (restart it with systemctl --user as that user)", [user.pid]),
        (None, None): (False, "in no unit", [loose.pid]),
    }
    assert len(groups) == 5
    for g in groups:
        for p in g["processes"]:
            assert (p["unit"], p["manager"], p["file"]) == (g["unit"], g["manager"], mnt.p("app"))
    lines = ctl("outdated", "--units", mnt.path).stdout.splitlines()
    assert lines[0].split() == ["UNIT", "RESTART", "PIDS", "FILES"]
    rows = sorted(line.split() for line in lines[1:])
    assert rows == sorted([
        [app, "yes"] + [str(p) for p in sorted([a1.pid, a2.pid])] + [mnt.p("app")],
        [worker, "yes", str(w.pid), mnt.p("app")],
        [f"{cgroups.tag}-{session}", "no", str(shell.pid), mnt.p("app")],
        [f"user@1000.service/{app}", "no", str(user.pid), mnt.p("app")],
        ["-", "no", str(loose.pid), mnt.p("app")],
    ])


def test_v1_name_systemd_counts_before_v2(deployed, cgroups, ctlj):
    """In the hybrid layout both trees exist and systemd keeps them alike; where they differ,
    the v1 name=systemd one is systemd's own. The v2 one counts when v1 places a process in
    no unit."""
    mnt, deploy = deployed
    need(cgroups, "v1")
    need(cgroups, "v2")
    one, two = cgroups.unit("one.service"), cgroups.unit("two.service")
    p = cgroups.start([mnt.p("app"), "60"], "v1", f"system.slice/{one}")
    cgroups.make("v2", f"system.slice/{two}")
    with open(os.path.join(cgroups.roots["v2"], "system.slice", two, "cgroup.procs"), "w") as f:
        f.write(str(p.pid))
    deploy()
    [r] = ctlj("outdated", mnt.path)
    assert (r["pid"], r["unit"], r["cgroup"]) == (p.pid, one, f"/system.slice/{one}")


# ---------------------------------------------------------------------------------------------
# restart

def services(cgroups, mnt, tree):
    """app.service with two processes, one in a login session's scope, one in no unit."""
    app = cgroups.unit("app.service")
    ps = [cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{app}") for _ in range(2)]
    shell = cgroups.start([mnt.p("app"), "60"], tree,
                          f"user.slice/user-0.slice/{cgroups.tag}-session-7.scope")
    loose = cgroups.start([mnt.p("app"), "60"], tree, "/")
    return app, ps, shell, loose


def test_restart_dry_run_prints_the_commands(deployed, cgroups, ctl, ctlj, recorder):
    mnt, deploy = deployed
    tree = "v1" if "v1" in cgroups.roots else "v2"
    app, ps, shell, loose = services(cgroups, mnt, tree)
    other = cgroups.unit("other.service")
    cgroups.start([mnt.p("app"), "60"], tree, f"system.slice/{other}")
    # nothing replaced yet: nothing to restart
    assert ctl("restart", "--dry-run", mnt.path).stdout == \
        "# no process runs or maps a replaced version\n"
    deploy()
    out = ctl("restart", "--dry-run", mnt.path).stdout.splitlines()
    pids = " ".join(str(p) for p in sorted(p.pid for p in ps))
    assert out[0] == f"systemctl try-restart {app}  # pid {pids}"
    assert out[1].startswith(f"systemctl try-restart {other}  # pid ")
    assert sorted(out[2:]) == sorted([
        f"# not restarted: pid {shell.pid} (app, {cgroups.tag}-session-7.scope) uses "
        f"{mnt.p('app')} version 1 (current 2): in a scope (a login session or a transient "
        f"group), not a service",
        f"# not restarted: pid {loose.pid} (app) uses {mnt.p('app')} version 1 (current 2): "
        f"in no unit",
    ])
    # --reload; --json
    out = ctl("restart", "--reload", "--dry-run", mnt.p("app")).stdout.splitlines()
    assert out[0] == f"systemctl try-reload-or-restart {app}  # pid {pids}"
    j = ctlj("restart", "--dry-run", mnt.path)
    assert j["dry_run"] is True and j["action"] == "try-restart"
    assert [(u["unit"], u["command"], u["pids"], u["status"]) for u in j["units"]][0] == \
        (app, ["systemctl", "try-restart", app], sorted(p.pid for p in ps), None)
    assert sorted(s["pid"] for s in j["not_restarted"]) == sorted([shell.pid, loose.pid])
    # a dry run never runs systemctl, even one named by BINVFSCTL_SYSTEMCTL
    script, calls = recorder
    ctl("restart", "--dry-run", mnt.path, env=dict(os.environ, BINVFSCTL_SYSTEMCTL=script))
    assert calls() == []
    # every process is still there
    assert all(p.poll() is None for p in ps + [shell, loose])


def test_restart_without_systemd_is_a_clear_error(deployed, cgroups, ctl):
    mnt, deploy = deployed
    tree = "v1" if "v1" in cgroups.roots else "v2"
    services(cgroups, mnt, tree)
    deploy()
    env = {k: v for k, v in os.environ.items() if k != "BINVFSCTL_SYSTEMCTL"}
    r = ctl("restart", mnt.path, rc=1, env=env)
    assert r.stdout == ""
    assert r.stderr == ("binvfsctl: systemd is not running here (no /run/systemd/system): "
                        "there is no unit to restart; binvfsctl restart --dry-run prints the "
                        "commands\n")


def test_restart_runs_systemctl_for_each_service_only(deployed, cgroups, ctl, ctlj, recorder,
                                                      workdir):
    mnt, deploy = deployed
    tree = "v1" if "v1" in cgroups.roots else "v2"
    app, ps, shell, loose = services(cgroups, mnt, tree)
    deploy()
    script, calls = recorder
    env = dict(os.environ, BINVFSCTL_SYSTEMCTL=script)
    r = ctl("restart", mnt.path, env=env)
    assert calls() == [f"try-restart {app}"]
    assert r.stdout.splitlines()[0] == f"{script} try-restart {app}  # pid " + \
        " ".join(str(p) for p in sorted(p.pid for p in ps))
    assert "systemctl output on stdout" in r.stderr  # its stdout is kept off ours
    # --json stays parseable; the status is systemctl's
    j = ctlj("restart", "--reload", mnt.path, env=env)
    assert calls()[1:] == [f"try-reload-or-restart {app}"]
    assert [(u["unit"], u["status"]) for u in j["units"]] == [(app, 0)]
    # a failing systemctl: exit 1, one line that names the unit
    write(os.path.join(workdir, "rc"), "5\n")
    r = ctl("restart", mnt.path, rc=1, env=env)
    assert f"binvfsctl: {script} try-restart {app} failed (exit status 5)" in r.stderr
    # a restart does not end the processes by itself: that is systemd's job
    assert all(p.poll() is None for p in ps + [shell, loose])


def test_restart_only_services_under_the_dirs_given(mounter, cgroups, ctl, cbuild, recorder):
    a = mounter(name="a")
    b = mounter(name="b")
    tree = "v1" if "v1" in cgroups.roots else "v2"
    for m in (a, b):
        cp(program(cbuild, 1), m.p("app"))
    ua, ub = cgroups.unit("a.service"), cgroups.unit("b.service")
    cgroups.start([a.p("app"), "60"], tree, f"system.slice/{ua}")
    cgroups.start([b.p("app"), "60"], tree, f"system.slice/{ub}")
    for m in (a, b):
        cp(program(cbuild, 2), m.p("app"))
    script, calls = recorder
    env = dict(os.environ, BINVFSCTL_SYSTEMCTL=script)
    ctl("restart", a.path, env=env)
    assert calls() == [f"try-restart {ua}"]
    ctl("restart", a.path, b.p("app"), env=env)
    assert calls()[1:] == [f"try-restart {ua}", f"try-restart {ub}"]
    # bad input
    r = ctl("restart", "--frob", rc=1)
    assert r.stderr == ("binvfsctl: unknown option --frob; usage: binvfsctl restart [--dry-run] "
                        "[--reload] [DIR...]\n")
    r = ctl("restart", "--dry-run", a.p("nope"), rc=1)
    assert r.stderr == f"binvfsctl: {a.p('nope')}: no such file or directory\n"
    assert len(calls()) == 3
