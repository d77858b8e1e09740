"""Security soak (issue 18): two real unprivileged users, alice and mallory (one shared group),
race each other and root for BINVFS_HOSTILE_SECONDS (default 50: the plain and ASan runs
take ~2 min together; `scripts/soak-hostile --minutes N` runs it longer):

- mallory (two processes): renames in the shared directory and into her own, symlink and FIFO
  swaps onto any name she can replace (pointing at a canary file outside the mount and at
  root's and alice's private files), hard links, chmods, a writer's fchmod/fchown with a file
  or directory renamed onto its name, takeovers of alice's directory names (`mv d d.old;
  mkdir d`, in the shared and in a sticky directory), deploys (cp, also over a running
  program), removes;
- alice: deploys in her own directory (cp, also over her running program), rewrites of her
  0600 file and of the notes in her 0700 directories (versions of secret content), chmods,
  hard links, notes in a 0700 directory under the sticky directory that she removes again,
  and deploys into the shared directory written the way a careful user does (O_NOFOLLOW, the
  owner checked on the fd);
- root: deploys with cp and cp+mv into its own directories (also over a running program),
  rewrites of its 0600 secrets, careful deploys into the shared directory, and binvfsctl
  log, diff, prune --keep N, rollback, outdated and status on any path, mallory's included.

Every action of alice and root is safe on a plain directory, so whatever mallory gains is the
daemon's or binvfsctl's doing. At the end:
- files and directories of root and alice that existed before (held by O_PATH fds, so no inode
  number is reused) did not change owner, gain mode bits or change content;
- each name in a directory only its owner writes holds a content, mode and owner its owner put
  there (their deploys, rollbacks of them), and no other name appeared there;
- nothing outside the mount changed (a canary file and directory that the symlinks point at,
  and every other file of the test's directory);
- mallory reads every file under the mount and under .versions/: none holds secret bytes;
- binvfsctl never hung, crashed or reported a sanitizer error, and the daemon exits 0.
A failure lists every finding, each saying exactly what changed or leaked.
"""
import errno
import json
import os
import random
import secrets
import shutil
import signal
import stat
import subprocess
import time
import traceback

from conftest import ctl_path, program
from util import Actor, open_world, sha, write

SECONDS = float(os.environ.get("BINVFS_HOSTILE_SECONDS", "50"))
ROOT = Actor("root", 0, 0)
NVER = 3  # contents per deployed name


def sha_of(path):
    with open(path, "rb") as f:
        return sha(f.read())


class Tree:
    """The layout, the contents everyone may deploy and the secret marker of this run."""

    def __init__(self, workdir, team, cbuild):
        self.workdir = workdir
        self.team = team
        self.al, self.mal, self.gid = team["alice"], team["mallory"], team["gid"]
        self.mark = f"S3CR3T-{secrets.token_hex(6)}-".encode()
        self.outside = os.path.join(workdir, "outside")
        self.canary = os.path.join(self.outside, "canary")
        self.payload = os.path.join(workdir, "payload")
        os.mkdir(self.outside)
        os.mkdir(os.path.join(self.outside, "cdir"))
        write(self.canary, "canary: nobody writes here\n", 0o644)
        os.mkdir(self.payload)
        # programs: root's r1..r3, alice's a1..a3, mallory's m1..m3
        self.progs = {}
        for who in "ram":
            for v in range(1, NVER + 1):
                name = f"{who}{v}"
                out = os.path.join(self.payload, name)
                shutil.copyfile(program(cbuild, f"{who}{v}"), out)
                os.chmod(out, 0o755)
                self.progs[name] = out
        for who in ("root", "alice", "mallory"):
            for v in range(NVER):
                write(os.path.join(self.payload, f"{who}-lib{v}"),
                      f"{who} library {v}\n" * 50, 0o644)

    def secret(self, what, i):
        return self.mark + f"{what}-{i}\n".encode()

    def lib(self, who, v):
        return os.path.join(self.payload, f"{who}-lib{v}")

    def setup(self, src):
        """The tree under SOURCE, before the mount."""
        al, mal, gid = self.al, self.mal, self.gid

        def d(rel, uid, g, mode):
            p = os.path.join(src, rel)
            os.makedirs(p, exist_ok=True)
            os.chown(p, uid, g)
            os.chmod(p, mode)

        def f(rel, data, uid, g, mode):
            p = os.path.join(src, rel)
            write(p, data)
            os.chown(p, uid, g)
            os.chmod(p, mode)

        def prog(rel, name, uid, g):
            f(rel, open(self.progs[name], "rb").read(), uid, g, 0o755)

        os.chmod(src, 0o755)
        d("rootbin", 0, 0, 0o755)
        prog("rootbin/app1", "r1", 0, 0)
        prog("rootbin/app2", "r1", 0, 0)
        f("rootbin/lib.so", open(self.lib("root", 0), "rb").read(), 0, 0, 0o644)
        d("secret", 0, 0, 0o700)
        f("secret/key", self.secret("root-key", 0), 0, 0, 0o600)
        f("rootsecret2", self.secret("root-top", 0), 0, 0, 0o600)
        d("shared", 0, gid, 0o775)
        f("shared/rootsecret", self.secret("root-shared", 0), 0, 0, 0o600)
        prog("shared/rtool", "r1", 0, 0)
        prog("shared/atool", "a1", al.uid, al.gid)
        f("shared/anotes", self.secret("alice-shared", 0), al.uid, al.gid, 0o600)
        d("shared/aprivate", al.uid, al.gid, 0o700)
        f("shared/aprivate/notes", self.secret("alice-aprivate", 0), al.uid, al.gid, 0o644)
        prog("shared/mtool", "m1", mal.uid, mal.gid)
        f("shared/mfile", "mallory's file\n", mal.uid, mal.gid, 0o644)
        d("tmp", 0, 0, 0o1777)
        d("alice", al.uid, al.gid, 0o755)
        prog("alice/app", "a1", al.uid, al.gid)
        f("alice/lib.so", open(self.lib("alice", 0), "rb").read(), al.uid, al.gid, 0o644)
        f("alice/doc", "alice's public doc\n", al.uid, al.gid, 0o644)
        f("alice/doc2", self.secret("alice-doc2", 0), al.uid, al.gid, 0o600)
        d("alice/private", al.uid, al.gid, 0o700)
        f("alice/private/notes", self.secret("alice-private", 0), al.uid, al.gid, 0o644)
        d("alice/pub", al.uid, al.gid, 0o755)
        f("alice/pub/f", "alice pub 0\n", al.uid, al.gid, 0o644)
        d("mal", mal.uid, mal.gid, 0o755)
        f("mal/x", "mallory x\n", mal.uid, mal.gid, 0o600)
        prog("mal/prog", "m1", mal.uid, mal.gid)
        for i in range(3):
            f(f"mal/f{i}", f"mallory f{i}\n", mal.uid, mal.gid, 0o644)

    def protected(self):
        """{name: (allowed content hashes, allowed modes, owner uid)}: the files in
        directories that only their owner (and root) writes; and {dir: its names}."""
        al = self.al
        progs = {who: {sha_of(self.progs[f"{who}{v}"]) for v in range(1, NVER + 1)}
                 for who in "ra"}
        libs = {who: {sha_of(self.lib(who, v)) for v in range(NVER)}
                for who in ("root", "alice")}

        def secrets_of(what):
            return {sha(self.secret(what, i)) for i in range(NVER + 1)}

        pub = {sha(f"alice pub {i}\n".encode()) for i in range(NVER + 1)}
        files = {
            "rootbin/app1": (progs["r"], {0o755}, 0),
            "rootbin/app2": (progs["r"], {0o755}, 0),
            "rootbin/lib.so": (libs["root"], {0o644}, 0),
            "secret/key": (secrets_of("root-key"), {0o600}, 0),
            "rootsecret2": (secrets_of("root-top"), {0o600}, 0),
            "alice/app": (progs["a"], {0o755}, al.uid),
            "alice/lib.so": (libs["alice"], {0o644}, al.uid),
            "alice/doc": ({sha(b"alice's public doc\n")}, {0o644, 0o600}, al.uid),
            "alice/doc2": (secrets_of("alice-doc2"), {0o600}, al.uid),
            "alice/private/notes": (secrets_of("alice-private"), {0o644}, al.uid),
            "alice/pub/f": (pub | secrets_of("alice-pub"), {0o644}, al.uid),
        }
        dirs = {"": {"rootbin", "secret", "rootsecret2", "shared", "tmp", "alice", "mal"},
                "rootbin": {"app1", "app2", "lib.so"}, "secret": {"key"},
                "alice": {"app", "lib.so", "doc", "doc2", "private", "pub"},
                "alice/private": {"notes"}, "alice/pub": {"f"}}
        return files, dirs


# ---------------------------------------------------------------------------------------------
# the actors: each runs in a forked child as its user until the deadline

class Stats(dict):
    def count(self, op, result):
        k = f"{op}:{result}"
        self[k] = self.get(k, 0) + 1


def errname(e):
    if isinstance(e, subprocess.TimeoutExpired):
        return "timeout"
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) else repr(e)


def attempt(stats, op, fn, *args):
    try:
        r = fn(*args)
        stats.count(op, "ok")
        return r
    except (OSError, subprocess.SubprocessError) as e:
        stats.count(op, errname(e))
        return None


def entries(d):
    try:
        return os.listdir(d)
    except OSError:
        return []


def run_and_replace(prog, replace, stats, op):
    """Start prog (it sleeps 1 s), replace it while it runs, wait for it."""
    try:
        p = subprocess.Popen([prog, "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        stats.count(op + "-exec", errname(e))
        return
    try:
        time.sleep(0.05)
        attempt(stats, op, replace)
    finally:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cp(src, dst, timeout=60):
    """cp src dst; mallory gives up after a few seconds (she may have made dst a FIFO)."""
    r = subprocess.run(["cp", src, dst], capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise OSError(errno.EIO, r.stderr.strip()[-200:])


def careful_write(path, data, uid, dirfd=None, private=False):
    """Overwrite path as a careful user does in a directory others write: no symlink followed,
    no FIFO blocking, and only if the file opened is her own regular file (private: that
    nobody else may read)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or (
                private and st.st_mode & 0o077):
            raise OSError(errno.EPERM, "not her own private file")
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)


def careful_replace(d, name, data, mode):
    """A new file under a fresh name in d (O_EXCL: nobody's file), renamed over d/name."""
    tmp = os.path.join(d, f".new{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, os.path.join(d, name))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def mwrite(path, data, mode=0o644):
    """mallory writes a file: never stuck on a FIFO (hers or anyone's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_NOFOLLOW,
                 mode)
    try:
        os.write(fd, data if isinstance(data, bytes) else data.encode())
    finally:
        os.close(fd)


def mallory_loop(t, m, rng, deadline):
    mal = t.mal
    shared, own, tmp = m.p("shared"), m.p("mal"), m.p("tmp")
    targets = [t.canary, os.path.join(t.outside, "cdir"), os.path.join(t.outside, "cdir", "new"),
               m.p("secret", "key"), m.p("alice", "private", "notes"), m.p("rootbin", "app1"),
               "../rootbin/app2", "../alice/doc2", "../secret/key", m.p("rootsecret2")]
    names = {shared: ["n0", "n1", "n2", "n3", "aprivate", "anotes", "rtool", "atool", "mtool",
                      "mfile", "rootsecret"],
             own: ["x", "prog", "f0", "f1", "f2", "y0", "y1"]}
    stats = Stats()

    def pick_dir():
        return rng.choice((shared, shared, own))

    def pick_existing(d):
        e = entries(d)
        return os.path.join(d, rng.choice(e)) if e else os.path.join(d, "n0")

    def pick_name(d):
        return os.path.join(d, rng.choice(names[d] + entries(d)[:8]))

    def own_file():
        p = os.path.join(own, rng.choice(["x", "f0", "f1", "f2"]))
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_uid == mal.uid:
                return p
            os.unlink(p) if not stat.S_ISDIR(st.st_mode) else None
        except OSError:
            pass
        mwrite(p, "mallory's own\n", 0o600)
        return p

    def swap(make):
        d = pick_dir()
        tmpn = os.path.join(d, f".s{rng.randrange(1 << 30)}")
        make(tmpn)
        try:
            os.rename(tmpn, pick_name(d))
        except OSError:
            os.unlink(tmpn)
            raise

    def meta_trick():
        # the point-1 attack: metadata set through her write fd, another object renamed
        # onto the name before the close
        if rng.random() < 0.5:
            x, victim = own_file(), pick_existing(shared)
        else:
            x = os.path.join(shared, rng.choice(["mfile", "n0", "n1"]))
            mwrite(x, "mallory's\n", 0o600)
            victim = pick_existing(shared)
        fd = os.open(x, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        try:
            if rng.random() < 0.7:
                os.fchmod(fd, rng.choice((0o644, 0o666, 0o777, 0o4755)))
            if rng.random() < 0.5:
                os.fchown(fd, mal.uid, -1)
            if os.path.isdir(victim):
                os.unlink(x)
            os.rename(victim, x)
        finally:
            os.close(fd)

    def takeover():
        # issue point 2: mv d d.old; mkdir d (shared), or mkdir of a removed name (sticky tmp)
        if rng.random() < 0.5:
            d = os.path.join(shared, rng.choice(["aprivate", "n2"]))
            if os.path.exists(d):
                os.rename(d, d + f".old{rng.randrange(100)}")
        else:
            d = os.path.join(tmp, f"anotes{rng.randrange(3)}")
        os.mkdir(d, 0o777)
        os.chmod(d, 0o777)
        mwrite(os.path.join(d, "notes"), "mallory's notes\n")
        os.unlink(os.path.join(d, "notes"))
        if d.startswith(tmp) and rng.random() < 0.7:
            os.rmdir(d)  # alice may take the name again

    def run_deploy():
        prog = rng.choice([os.path.join(own, "prog"), os.path.join(shared, "mtool"),
                           os.path.join(shared, "atool"), os.path.join(shared, "rtool")])
        run_and_replace(prog, lambda: cp(t.progs[f"m{rng.randint(1, NVER)}"], prog, 5), stats,
                        "run-deploy")

    def rm():
        p = pick_existing(pick_dir())
        if os.path.isdir(p) and not os.path.islink(p):
            for e in entries(p):
                os.unlink(os.path.join(p, e))
            os.rmdir(p)
        else:
            os.unlink(p)

    def versions_write():
        v = m.p(".versions", rng.choice(["shared", "mal", "alice", ""]))
        e = entries(v)
        if e:
            os.rename(os.path.join(v, rng.choice(e)), os.path.join(own, "stolen"))

    ops = [
        ("rename", 6, lambda: os.rename(pick_existing(pick_dir()), pick_name(pick_dir()))),
        ("symlink-swap", 5, lambda: swap(lambda p: os.symlink(rng.choice(targets), p))),
        ("fifo-swap", 3, lambda: swap(lambda p: os.mkfifo(p, 0o666))),
        ("hardlink", 3, lambda: os.link(pick_existing(pick_dir()), pick_name(pick_dir()))),
        ("chmod", 3, lambda: os.chmod(pick_existing(pick_dir()),
                                      rng.choice((0o644, 0o600, 0o755, 0o4755, 0o777)))),
        ("meta-trick", 5, meta_trick),
        ("takeover", 2, takeover),
        ("deploy", 4, lambda: cp(t.progs[f"m{rng.randint(1, NVER)}"], pick_name(pick_dir()),
                                 5)),
        ("run-deploy", 1, run_deploy),
        ("write", 2, lambda: mwrite(own_file(), os.urandom(rng.randrange(1, 5000)))),
        ("rm", 3, rm),
        ("versions-write", 1, versions_write),
    ]
    weights = [w for _, w, _ in ops]
    while time.monotonic() < deadline:
        name, _, fn = rng.choices(ops, weights)[0]
        if name == "run-deploy":
            fn()
        else:
            attempt(stats, name, fn)
        time.sleep(rng.random() * 0.01)
    return stats


def flip_loop(t, m, rng, deadline):
    """mallory swaps shared/flip between a file of hers (it has history), a symlink to the
    canary or to root's secret, and a FIFO, as fast as she can: the name root's binvfsctl is
    pointed at most (ctl_loop)."""
    stats = Stats()
    flip = m.p("shared", "flip")
    for i in range(3):
        attempt(stats, "history", mwrite, flip, f"mallory flip {i}\n")
    while time.monotonic() < deadline:
        kind = rng.choice(("file", "link", "link", "fifo"))
        tmpn = m.p("shared", f".f{rng.randrange(1 << 30)}")
        try:
            if kind == "file":
                mwrite(tmpn, f"mallory flip {rng.randrange(3)}\n")
            elif kind == "link":
                os.symlink(rng.choice((t.canary, m.p("secret", "key"), "../alice/doc2")), tmpn)
            else:
                os.mkfifo(tmpn, 0o666)
            os.rename(tmpn, flip)
            stats.count("flip-" + kind, "ok")
        except OSError as e:
            stats.count("flip-" + kind, errname(e))
            try:
                os.unlink(tmpn)
            except OSError:
                pass
        time.sleep(rng.random() * 0.002)
    return stats


def alice_loop(t, m, rng, deadline):
    al = t.al
    stats = Stats()
    shared = m.p("shared")
    tick = [0]

    def secret(what):
        tick[0] += 1
        return t.secret(what, rng.randint(1, NVER))

    def deploy_app():
        src = t.progs[f"a{rng.randint(1, NVER)}"]
        cp(src, m.p("alice", "app"))

    def rewrite(path, data):
        with open(path, "r+b") as f:  # the path is hers alone: nobody can swap it
            f.truncate(0)
            f.write(data)

    def pub_cycle():
        d, f = m.p("alice", "pub"), m.p("alice", "pub", "f")
        if stat.S_IMODE(os.stat(d).st_mode) == 0o755:
            os.chmod(d, 0o700)
            rewrite(f, secret("alice-pub"))
        else:
            rewrite(f, f"alice pub {rng.randint(1, NVER)}\n".encode())
            os.chmod(d, 0o755)

    def doc_cycle():
        doc = m.p("alice", "doc")
        os.chmod(doc, rng.choice((0o644, 0o600)))
        if os.path.lexists(m.p("alice", "doc.lnk")):
            os.unlink(m.p("alice", "doc.lnk"))
        os.link(doc, m.p("alice", "doc.lnk"))
        os.unlink(m.p("alice", "doc.lnk"))

    def shared_deploy():
        if rng.random() < 0.5:
            careful_write(os.path.join(shared, "atool"),
                          open(t.progs[f"a{rng.randint(1, NVER)}"], "rb").read(), al.uid)
        else:
            careful_write(os.path.join(shared, "anotes"), secret("alice-shared"), al.uid,
                          private=True)

    def aprivate_rewrite():
        dfd = os.open(os.path.join(shared, "aprivate"),
                      os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(dfd)
            if st.st_uid != al.uid or stat.S_IMODE(st.st_mode) != 0o700:
                raise OSError(errno.EPERM, "not her private dir")
            careful_write("notes", secret("alice-aprivate"), al.uid, dirfd=dfd)
        finally:
            os.close(dfd)

    def sticky_notes():
        d = m.p("tmp", f"anotes{rng.randrange(3)}")
        os.mkdir(d, 0o700)  # EEXIST if mallory holds the name: then nothing
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(dfd)
            if st.st_uid != al.uid or stat.S_IMODE(st.st_mode) != 0o700:
                raise OSError(errno.EPERM, "not her dir")
            for i in range(2):  # the second write keeps a version of the first
                fd = os.open("notes", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o644, dir_fd=dfd)
                os.write(fd, secret("alice-sticky"))
                os.close(fd)
            os.unlink("notes", dir_fd=dfd)
        finally:
            os.close(dfd)
        os.rmdir(d)

    def run_deploy():
        run_and_replace(m.p("alice", "app"), deploy_app, stats, "run-deploy")

    ops = [
        ("deploy-app", 3, deploy_app),
        ("deploy-lib", 2, lambda: cp(t.lib("alice", rng.randrange(NVER)),
                                     m.p("alice", "lib.so"))),
        ("doc2", 2, lambda: rewrite(m.p("alice", "doc2"), secret("alice-doc2"))),
        ("private", 2, lambda: rewrite(m.p("alice", "private", "notes"),
                                       secret("alice-private"))),
        ("pub", 2, pub_cycle),
        ("doc", 1, doc_cycle),
        ("shared-deploy", 3, shared_deploy),
        ("aprivate", 2, aprivate_rewrite),
        ("sticky", 2, sticky_notes),
        ("run-deploy", 1, run_deploy),
    ]
    weights = [w for _, w, _ in ops]
    while time.monotonic() < deadline:
        name, _, fn = rng.choices(ops, weights)[0]
        if name == "run-deploy":
            fn()
        else:
            attempt(stats, name, fn)
        time.sleep(rng.random() * 0.02)
    # leave pub closed or open with public content only (pub_cycle's invariant)
    return stats


def root_loop(t, m, rng, deadline):
    stats = Stats()
    rootbin = m.p("rootbin")

    def deploy_cp():
        cp(t.progs[f"r{rng.randint(1, NVER)}"], os.path.join(rootbin, "app1"))

    def deploy_mv():
        tmp = os.path.join(rootbin, ".new.app2")
        try:
            cp(t.progs[f"r{rng.randint(1, NVER)}"], tmp)
            os.rename(tmp, os.path.join(rootbin, "app2"))
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def rewrite(path, what):
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(t.secret(what, rng.randint(1, NVER)))

    def shared_deploy():
        data = open(t.progs[f"r{rng.randint(1, NVER)}"], "rb").read()
        if rng.random() < 0.5:
            careful_write(m.p("shared", "rtool"), data, 0)
        else:
            careful_replace(m.p("shared"), rng.choice(["rtool2", "n3"]), data, 0o755)

    def run_deploy():
        run_and_replace(os.path.join(rootbin, "app1"), deploy_cp, stats, "run-deploy")

    ops = [
        ("deploy-cp", 3, deploy_cp),
        ("deploy-mv", 2, deploy_mv),
        ("deploy-lib", 1, lambda: cp(t.lib("root", rng.randrange(NVER)),
                                     os.path.join(rootbin, "lib.so"))),
        ("key", 1, lambda: rewrite(m.p("secret", "key"), "root-key")),
        ("top", 1, lambda: rewrite(m.p("rootsecret2"), "root-top")),
        ("shared-deploy", 3, shared_deploy),
        ("run-deploy", 1, run_deploy),
    ]
    weights = [w for _, w, _ in ops]
    while time.monotonic() < deadline:
        name, _, fn = rng.choices(ops, weights)[0]
        if name == "run-deploy":
            fn()
        else:
            attempt(stats, name, fn)
        time.sleep(rng.random() * 0.03)
    return stats


def start_actor(actor, loop, args, seed, deadline):
    """loop(*args, rng, deadline) in a forked child (its own process group) as actor; (pid, the
    read end of the pipe that brings its stats)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.closerange(3, w)  # nothing of the test's (the held fds, SOURCE's fd)
            os.closerange(w + 1, 1 << 16)
            os.setpgid(0, 0)
            os.setgroups(actor.groups)
            os.setresgid(actor.gid, actor.gid, actor.gid)
            os.setresuid(actor.uid, actor.uid, actor.uid)
            out = {"stats": loop(*args, random.Random(seed), deadline)}
        except BaseException:  # noqa: B902 - reported to the parent
            out = {"error": traceback.format_exc()[-3000:]}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def stuck_in(pgid):
    """What the processes of group pgid wait in: [(pid, command, wchan, kernel stack)]."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            wchan = open(f"/proc/{pid}/wchan").read()
            try:
                stack = " < ".join(x.split()[1].split("+")[0]
                                   for x in open(f"/proc/{pid}/stack").read().splitlines())
            except OSError:
                stack = "?"
            out.append((int(pid), cmd[:200], wchan, stack[:400]))
        except (OSError, ValueError, IndexError):
            continue
    return out


def collect(actors, timeout):
    """Each actor's result ({name: stats or error}); an actor still running after `timeout`
    has its process group killed."""
    out = {}
    end = time.monotonic() + timeout
    for name, (pid, r) in actors.items():
        while True:
            done = os.waitpid(pid, os.WNOHANG)[0] != 0
            if done or time.monotonic() > end:
                break
            time.sleep(0.1)
        if not done:
            stuck = stuck_in(pid)
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            out[name] = {"error": f"did not finish within {timeout} s: killed; {stuck}"}
        data = b""
        while True:
            b = os.read(r, 1 << 16)
            if not b:
                break
            data += b
        os.close(r)
        out.setdefault(name, json.loads(data or b'{"error": "no answer"}'))
    return out


# ---------------------------------------------------------------------------------------------
# root's binvfsctl, from the test process

def ctl_loop(binary, m, rng, deadline):
    """Random binvfsctl commands on random paths until the deadline: {"calls", "problems",
    "rollbacks": [path]}."""
    ctl = ctl_path(binary)
    calls, problems, rollbacks = Stats(), [], []

    def any_path():
        d = rng.choice(["shared", "shared", "mal", "rootbin", "alice", "tmp", "alice/pub"])
        e = entries(m.p(d))
        return m.p(d, rng.choice(e)) if e else m.p(d)

    while time.monotonic() < deadline:
        p = m.p("shared", "flip") if rng.random() < 0.3 else any_path()
        cmd = rng.choice(["log", "log", "diff", "prune", "rollback", "rollback", "outdated",
                          "status"])
        if cmd == "rollback" and p.startswith(m.p("alice", "pub")):
            # alice opens pub only once its file is public: a rollback behind her back
            # would publish her secret itself, which is no daemon's fault
            cmd = "log"
        args = {"log": [p], "diff": [p], "rollback": [p], "outdated": [m.p()],
                "status": [m.p()],
                "prune": ["--keep", str(rng.randint(1, 3)),
                          rng.choice([p, os.path.dirname(p), m.p()])]}[cmd]
        if rng.random() < 0.3:
            args = ["--json", cmd] + args
        else:
            args = [cmd] + args
        t0 = time.monotonic()
        try:
            r = subprocess.run([ctl] + args, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            problems.append(f"binvfsctl {' '.join(args)}: hung (killed after 30 s)")
            calls.count(cmd, "hung")
            continue
        calls.count(cmd, r.returncode)
        err = r.stderr.decode(errors="replace")
        if cmd == "rollback" and r.returncode == 0:
            rollbacks.append(os.path.relpath(p, m.p()))
        if r.returncode not in (0, 1) or any(
                w in err for w in ("AddressSanitizer", "LeakSanitizer", "runtime error")):
            problems.append(f"binvfsctl {' '.join(args)}: exit {r.returncode}, "
                            f"{time.monotonic() - t0:.1f} s: {err[-1500:]}")
        time.sleep(rng.random() * 0.05)
    return {"calls": calls, "problems": problems, "rollbacks": rollbacks}


# ---------------------------------------------------------------------------------------------
# what is recorded before, and checked after

def snapshot_outside(workdir, mount_rel):
    """{path: (type, mode, uid, gid, content hash or link target)} of everything in workdir
    but the mount."""
    out = {}
    for d, dirs, files in os.walk(workdir):
        if d == workdir:
            dirs[:] = [x for x in dirs if x != mount_rel]
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            what = sha_of(p) if stat.S_ISREG(st.st_mode) else (
                os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
            out[p] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      what)
    return out


def hold_inodes(src, not_uid):
    """O_PATH fds on every file and directory under SOURCE (backing, .versions/ included)
    whose owner is not `not_uid`, with what they are now: {fd: (rel, uid, gid, mode, hash)}."""
    held = {}
    for d, dirs, files in os.walk(src):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if st.st_uid == not_uid or stat.S_ISLNK(st.st_mode):
                continue
            fd = os.open(p, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            h = sha_of(p) if stat.S_ISREG(st.st_mode) else None
            held[fd] = (os.path.relpath(p, src), st.st_uid, st.st_gid, st.st_mode, h)
    return held


def check_inodes(held, users):
    problems = []
    for fd, (rel, uid, gid, mode, h) in held.items():
        st = os.fstat(fd)
        what = f"{users.get(uid, uid)}'s {'dir' if stat.S_ISDIR(mode) else 'file'} {rel} " \
               f"(uid {uid}, {oct(stat.S_IMODE(mode))})"
        if st.st_uid not in (uid, 0) or st.st_gid not in (gid, 0):
            problems.append(f"{what}: owner is now uid {st.st_uid} "
                            f"({users.get(st.st_uid, '?')}) gid {st.st_gid}")
        added = stat.S_IMODE(st.st_mode) & ~stat.S_IMODE(mode)
        if added:
            problems.append(f"{what}: mode is now {oct(stat.S_IMODE(st.st_mode))} "
                            f"(gained {oct(added)})")
        if h and sha_of(f"/proc/self/fd/{fd}") != h:
            problems.append(f"{what}: content changed in place")
    return problems


def check_protected(t, under, users):
    """The names in directories only their owner writes (`under`: SOURCE itself)."""
    files, dirs = t.protected()
    problems = []
    for rel, (hashes, modes, uid) in files.items():
        p = os.path.join(under, rel)
        try:
            st = os.lstat(p)
        except OSError as e:
            problems.append(f"{rel}: {errname(e)} (only its owner may remove it)")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel}: now a {stat.S_IFMT(st.st_mode):o} (not a file)")
            continue
        if st.st_uid != uid or stat.S_IMODE(st.st_mode) not in modes:
            problems.append(f"{rel}: owner {users.get(st.st_uid, st.st_uid)} mode "
                            f"{oct(stat.S_IMODE(st.st_mode))}, expected {users[uid]} "
                            f"{sorted(oct(x) for x in modes)}")
        data = open(p, "rb").read()
        if sha(data) not in hashes:
            problems.append(f"{rel}: content its owner never put there: {data[:80]!r} "
                            f"({len(data)} bytes)")
    for rel, names in dirs.items():
        got = {e for e in os.listdir(os.path.join(under, rel))
               if not (rel == "" and e == ".versions")}
        if got != names:
            problems.append(f"{rel or 'the mount root'}/: names {sorted(got - names)} appeared, "
                            f"{sorted(names - got)} went")
    return problems


def scan_as_mallory(m, mark):
    """As mallory: every regular file under the mount and under .versions/ that she can open
    and that holds secret bytes: [(path, the secret line, mode, uid)]."""
    def fn():
        hits, seen = [], 0
        for top in (m.p(), m.p(".versions")):
            for d, dirs, files in os.walk(top, onerror=lambda e: None):
                for name in files + dirs:
                    p = os.path.join(d, name)
                    try:
                        st = os.lstat(p)
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    except OSError:
                        continue
                    try:
                        data = b""
                        while True:
                            b = os.read(fd, 1 << 20)
                            if not b:
                                break
                            data += b
                    except OSError:
                        continue
                    finally:
                        os.close(fd)
                    seen += 1
                    i = data.find(mark)
                    if i >= 0:
                        line = data[i:data.find(b"\n", i)].decode(errors="replace")
                        hits.append([os.path.relpath(p, m.p()), line,
                                     oct(stat.S_IMODE(st.st_mode)), st.st_uid])
        return {"hits": hits, "seen": seen}
    return fn


def test_hostile_soak(binary, mounter, workdir, team, cbuild):
    import security_daemon as tsd  # its as_user: a child that reports JSON

    open_world(workdir)
    t = Tree(workdir, team, cbuild)
    al, mal = team["alice"], team["mallory"]
    users = {0: "root", al.uid: "alice", mal.uid: "mallory"}
    fds = []

    def setup(src):
        t.setup(src)
        fds.append(os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    actors, held = {}, {}
    try:
        m = mounter(setup=setup)
        under = f"/proc/self/fd/{fds[0]}"  # SOURCE itself, under the mount
        outside_before = snapshot_outside(workdir, "bin")
        held = hold_inodes(under, mal.uid)
        seed = int(os.environ.get("BINVFS_HOSTILE_SEED", secrets.randbelow(1 << 30)))
        deadline = time.monotonic() + SECONDS
        try:
            actors["mallory-1"] = start_actor(mal, mallory_loop, (t, m), seed + 1, deadline)
            actors["mallory-2"] = start_actor(mal, mallory_loop, (t, m), seed + 2, deadline)
            actors["mallory-flip"] = start_actor(mal, flip_loop, (t, m), seed + 5, deadline)
            actors["alice"] = start_actor(al, alice_loop, (t, m), seed + 3, deadline)
            actors["root"] = start_actor(ROOT, root_loop, (t, m), seed + 4, deadline)
            ctl = ctl_loop(binary, m, random.Random(seed), deadline)
        finally:
            results = collect(actors, 90)
        problems = [f"{name} failed: {r['error']}" for name, r in results.items()
                    if "error" in r]
        problems += ctl["problems"]
        problems += check_inodes(held, users)
        problems += check_protected(t, under, users)
        before, after = outside_before, snapshot_outside(workdir, "bin")
        for p in sorted(set(before) | set(after)):
            if before.get(p) != after.get(p):
                problems.append(f"outside the mount: {p} was {before.get(p)}, "
                                f"now {after.get(p)}")
        scan = tsd.as_user(mal, scan_as_mallory(m, t.mark))
        for rel, line, mode, uid in scan["hits"]:
            why = [r for r in ctl["rollbacks"] if r == rel]
            problems.append(f"mallory read secret bytes {line!r} in {rel} ({mode}, owner "
                            f"{users.get(uid, uid)})"
                            + (f" (root ran binvfsctl rollback {rel})" if why else ""))
    finally:
        for fd in list(held) + fds:
            os.close(fd)
    summary = json.dumps({"seed": seed, "seconds": SECONDS, "mallory read": scan["seen"],
                          "ctl": ctl["calls"],
                          **{k: r.get("stats") for k, r in results.items()}}, sort_keys=True)
    print(summary)
    assert not problems, f"{len(problems)} findings (seed {seed}):\n" + "\n".join(
        problems[:80]) + f"\n\nsummary: {summary}"
