"""Executable names cached while nobody runs them (design.md §2, "Caching executable names").

An idle version of an executable name is answered with a cached alias nodeid; the first exec
that opens it is sent back (ESTALE) and runs the version's own nodeid, so no exec ever holds the
alias. These tests race a deploy against the FIRST exec of an idle binary, under CPU hogs on
both cores: the writer never gets ETXTBSY, the exec never fails, and it runs a whole version.
Not timed. BINVFS_EXEC_CACHE_ROUNDS sets the rounds (default 2000)."""
import errno
import os
import shutil
import subprocess
import sys

import pytest

from conftest import program
from util import write

ROUNDS = int(os.environ.get("BINVFS_EXEC_CACHE_ROUNDS", "2000"))


def padded(cbuild, version, workdir, size=256 << 10):
    """Program `version` (prints "version N"), padded to `size` bytes with its own number, so
    that a mix of two versions is seen (a wrong byte count, or an ELF that does not run)."""
    src = program(cbuild, version)
    out = os.path.join(workdir, f"padded{version}")
    data = open(src, "rb").read()
    with open(out, "wb") as f:
        f.write(data + bytes([version]) * (size - len(data)))
    os.chmod(out, 0o755)
    return out


@pytest.fixture
def hogs(procs):
    """One busy loop per CPU, started and killed by pid (the procs fixture)."""
    for _ in range(os.cpu_count() or 2):
        procs.start([sys.executable, "-c", "while True: pass"])
    yield


def lookups(m):
    return m.logtext().count("opcode: LOOKUP")


def test_idle_executable_name_is_cached_until_run(mounter, cbuild, workdir):
    """stat of an idle 0755 name asks once; after an exec it is looked up every time."""
    m = mounter(opts=("nosync", "debug"))
    app = m.p("app")
    subprocess.run(["cp", padded(cbuild, 1, workdir), app], check=True)  # created 0755
    os.stat(app)
    before = lookups(m)
    for _ in range(5):
        os.stat(app)
    assert lookups(m) == before, "an idle executable name was looked up again"
    r = subprocess.run([app], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "version 1\n")
    before = lookups(m)
    for _ in range(3):
        os.stat(app)
    assert lookups(m) >= before + 3, "a name that runs must be looked up every time"
    # a new version starts idle again
    subprocess.run(["cp", padded(cbuild, 2, workdir), app], check=True)
    os.stat(app)
    before = lookups(m)
    os.stat(app)
    assert lookups(m) == before
    r = subprocess.run([app], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "version 2\n")


FEXEC = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
extern char **environ;
int main(int c, char **v) {
  int fd = open(v[1], O_RDONLY | O_CLOEXEC);
  if (fd < 0) { perror("open"); return 2; }
  char *args[] = {v[1], NULL};
  if (!strcmp(v[2], "fexecve")) fexecve(fd, args, environ);
  else if (!strcmp(v[2], "execveat")) syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
  else { char p[64]; snprintf(p, sizeof p, "/proc/self/fd/%d", fd); execve(p, args, environ); }
  perror("exec");
  return 3;
}
"""


@pytest.mark.parametrize("made", ["cp", "chmod"])
@pytest.mark.parametrize("how", ["fexecve", "execveat", "procfd"])
def test_exec_of_a_cached_name_by_its_fd(mounter, cbuild, workdir, how, made):
    """fexecve / execveat(AT_EMPTY_PATH) / execve(/proc/self/fd/N) of a cached name: no name
    walk, so no second chance after ESTALE: it runs the node it has (semantics.md). made=cp:
    created 0755, its idle alias cached; made=chmod: created 0600, looked up and cached
    without an x bit, then chmod +x (shutil.copy does this)."""
    fexec = cbuild("fexec", FEXEC)
    m = mounter()
    app = m.p("app")
    if made == "cp":
        subprocess.run(["cp", padded(cbuild, 1, workdir), app], check=True)
    else:
        shutil.copy(padded(cbuild, 1, workdir), app)
    os.stat(app)  # cached
    r = subprocess.run([fexec, app, how], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "version 1\n", "")
    # and the name now runs by name, and takes a new version while it is running
    r = subprocess.run([app], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "version 1\n")
    run = subprocess.Popen([app, "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "version 1\n"
        subprocess.run(["cp", padded(cbuild, 2, workdir), app], check=True)
        r = subprocess.run([fexec, app, how], capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (0, "version 2\n")
    finally:
        run.kill()
        run.wait()


WRITERS = {
    "cp": lambda src, dst: ["cp", src, dst],
    "rsync": lambda src, dst: ["rsync", "--inplace", "--no-whole-file", "-I", src, dst],
    "dd": lambda src, dst: ["dd", f"if={src}", f"of={dst}", "bs=64k", "status=none"],
}


def deploy_race(m, cbuild, workdir, writer_cmds, rounds):
    vers = {v: padded(cbuild, v, workdir) for v in (1, 2)}
    want = {f"version {v}\n" for v in vers}
    app = m.p("app")
    st = {"rounds": 0, "etxtbsy_writer": 0, "writer_fail": [], "exec_fail": [], "runs": 0}
    for i in range(rounds):
        old, new = (1, 2) if i % 2 == 0 else (2, 1)
        # a fresh version at the name: idle, and its alias cached by a stat
        r = subprocess.run(["cp", vers[old], app], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        os.stat(app)
        wcmd = writer_cmds[i % len(writer_cmds)](vers[new], app)
        procs = []
        try:
            # the first exec of the idle version, and a deploy of the other one, in an
            # order that alternates
            starts = [lambda: subprocess.Popen([app], stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True),
                      lambda: subprocess.Popen(wcmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True)]
            if (i // 2) % 2:
                starts.reverse()
            ex = wr = None
            for s in starts:
                try:
                    p = s()
                except OSError as e:  # the exec itself failed
                    st["exec_fail"].append((i, errno.errorcode.get(e.errno, e.errno)))
                    p = None
                procs.append(p)
            ex, wr = procs if not (i // 2) % 2 else procs[::-1]
            wrote = False
            if wr is not None:
                out, err = wr.communicate(timeout=60)
                wrote = wr.returncode == 0
                if wr.returncode != 0:
                    if "Text file busy" in err:
                        st["etxtbsy_writer"] += 1
                    st["writer_fail"].append((i, wcmd[0], err[:200]))
            if ex is not None:
                out, err = ex.communicate(timeout=60)
                st["runs"] += 1
                if ex.returncode != 0 or out not in want:
                    st["exec_fail"].append((i, ex.returncode, out[:80], err[:200]))
        finally:
            for p in procs:
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        st["rounds"] += 1
        if wrote:
            with open(app, "rb") as f:
                assert f.read() == open(vers[new], "rb").read(), f"round {i}: not deployed"
    return st


def rounds_for(binary, rounds):
    """The ThreadSanitizer build runs these races too (conftest TSAN_MODULES), 20 x slower:
    fewer rounds there."""
    return max(rounds // 20, 10) if "tsan" in binary else rounds


def test_deploy_racing_the_first_exec_of_an_idle_binary(mounter, binary, cbuild, workdir, hogs):
    """cp, rsync --inplace and dd over an idle cached binary while its first exec starts:
    no writer gets ETXTBSY, no exec fails, each exec prints a whole version."""
    m = mounter(opts=("nosync", "keep=2"))
    cmds = [WRITERS["cp"], WRITERS["dd"]]
    if shutil.which("rsync"):
        cmds.append(WRITERS["rsync"])
    rounds = rounds_for(binary, ROUNDS)
    st = deploy_race(m, cbuild, workdir, cmds, rounds)
    print(st["rounds"], "rounds,", st["runs"], "execs,", st["etxtbsy_writer"], "writers with ETXTBSY,",
          len(st["writer_fail"]), "writers failed,", len(st["exec_fail"]), "execs failed")
    assert st["rounds"] == rounds
    assert st["etxtbsy_writer"] == 0 and not st["writer_fail"], st["writer_fail"][:5]
    assert not st["exec_fail"], (len(st["exec_fail"]), st["exec_fail"][:5])


def test_install_racing_the_first_exec(mounter, binary, cbuild, workdir, hogs):
    """install removes the name and creates a new file mode 0600, writes it and chmods it
    (natively too): an exec in between may find no file (ENOENT), one without an x bit yet
    (EACCES), an empty one (ENOEXEC) or one being written (ETXTBSY), as natively; the writer
    never fails and every exec that runs prints a whole version."""
    m = mounter(opts=("nosync", "keep=2"))
    rounds = rounds_for(binary, max(ROUNDS // 4, 10))
    st = deploy_race(m, cbuild, workdir, [lambda s, d: ["install", "-m", "0755", s, d]], rounds)
    assert not st["writer_fail"], st["writer_fail"][:5]
    natively = {"ENOENT", "EACCES", "ENOEXEC", "ETXTBSY"}
    bad = [f for f in st["exec_fail"] if not (len(f) == 2 and f[1] in natively)]
    assert not bad, bad[:5]
