"""Restart under load, as the systemd unit does it: `umount -l DIR; binvfs DIR` while programs
run from the mount. The old daemon serves its detached mount until its last user is gone; the
new one serves DIR. Two daemons on one store never hurt each other: each has its own staging,
version numbers never collide, a publish through either is a proper version, the old daemon's
exit leaves the new one working, and binvfsctl status names the live daemon."""
import json
import os
import subprocess

from conftest import program
from util import Mount, is_mounted, read, run, sha, wait_for

RESTARTS = int(os.environ.get("BINVFS_RESTARTS", "6"))  # more for a soak


def test_restart_loop_under_exec_and_write_load(binary, workdir, procs, cbuild):
    progs = [program(cbuild, v) for v in (1, 2, 3)]
    known = {sha(read(p)) for p in progs}
    outputs = {f"version {v}" for v in (1, 2, 3)}
    src = os.path.join(workdir, "bin")
    os.mkdir(src)
    subprocess.run(["cp", progs[0], os.path.join(src, "app")], check=True)
    app = os.path.join(src, "app")
    ctl = os.path.join(os.path.dirname(binary), "binvfsctl")
    # execs by absolute path all along: each walks whichever mount is at DIR
    # (into a file: a pipe nobody reads fills up and leaves an exec blocked in write(),
    # holding the old mount)
    exec_log = open(os.path.join(workdir, "execs.log"), "w+")
    execs = procs.start(["sh", "-c", 'while :; do "$1" || echo FAIL; done', "sh", app],
                        stdout=exec_log, stderr=subprocess.STDOUT)
    live = Mount(binary, src).start()
    writes = 0
    try:
        for i in range(RESTARTS):
            # a program running from the mount keeps the old daemon serving after umount -l,
            # and a shell in the mount writes through the old daemon after the restart
            holder = procs.start([app, "2"], stdout=subprocess.PIPE)
            assert holder.stdout.readline().startswith(b"version")
            shell = procs.start(["sh", "-c", 'read go; cp "$1" app && echo ok', "sh",
                                 progs[i % 3]], cwd=src, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            old = live
            assert run(["umount", "-l", src]).returncode == 0
            live = Mount(binary, src).start()
            st = run([ctl, "--json", "status", src])
            assert json.loads(st.stdout)[0]["daemon_pid"] == live.proc.pid, st.stdout
            # writes through the new daemon while the old one still serves its users
            for k in range(3):
                r = run(["cp", progs[(i + k + 1) % 3], app])
                assert r.returncode == 0, f"restart {i}: {r.stderr}"
                writes += 1
            # and one through the old daemon, into the same store
            out, _ = shell.communicate("go\n", timeout=60)
            # (dash may say its getcwd() fails: the detached mount has no path any more)
            assert out.endswith("ok\n"), f"restart {i}: the old daemon's publish failed: {out}"
            holder.wait(timeout=30)
            old.stop(unmount=False)  # its last user is gone: it exits 0, and cleans up
            # ... without taking the new daemon's staging with it
            for k in range(3):
                r = run(["cp", progs[(i + k) % 3], app])
                assert r.returncode == 0, f"restart {i}, after the old daemon left: {r.stderr}"
                writes += 1
            assert sha(read(app)) in known
        vdir = os.path.join(src, ".versions")
        names = [e for e in os.listdir(vdir) if e.startswith("app.~")]
        assert len(names) >= 10  # keep=10 of the 6 * 7 publishes, plus any still in use
        for e in names:
            try:
                assert sha(read(os.path.join(vdir, e))) in known, e
            except FileNotFoundError:
                pass  # a deferred prune took it meanwhile (its last user, a holder, is gone)
    finally:
        execs.kill()
        execs.wait()
        live.stop()
    exec_log.seek(0)
    lines = exec_log.read().splitlines()
    exec_log.close()
    assert len(lines) > 50, "the exec loop hardly ran"
    assert set(lines) <= outputs, {l for l in lines if l not in outputs}
    assert writes == RESTARTS * 6


def test_old_daemon_stopped_by_a_signal_leaves_the_new_mount(binary, workdir, procs):
    """libfuse unmounts by path: the old daemon, stopped with SIGTERM while it still serves its
    detached mount, must not detach the new daemon's mount at the same path."""
    src = os.path.join(workdir, "bin")
    os.mkdir(src)
    with open(os.path.join(src, "f"), "w") as f:
        f.write("one\n")
    old = Mount(binary, src).start()
    user = procs.start(["sleep", "60"], cwd=src)  # keeps the old mount alive after umount -l
    wait_for(lambda: os.path.exists(f"/proc/{user.pid}/cwd"))
    assert run(["umount", "-l", src]).returncode == 0
    new = Mount(binary, src).start()
    try:
        old.proc.terminate()
        old.proc.wait(timeout=30)
        text = old.stop(check=False, unmount=False)
        assert is_mounted(src), "the old daemon detached the new mount"
        assert read(os.path.join(src, "f")) == b"one\n"
        assert "is not our mount any more (another binvfs serves it now)" in text, text
    finally:
        user.kill()
        new.stop()
