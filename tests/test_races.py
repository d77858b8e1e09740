"""Races: exec loops against writers on the same binary; readers never see a torn file and
writers never get ETXTBSY. `scripts/soak --minutes N` runs the same race for longer."""
import errno
import hashlib
import os
import subprocess
import threading
import time

from conftest import program
from util import Mount, make_store, read, write

RACE_SECONDS = float(os.environ.get("BINVFS_RACE_SECONDS", "15"))


def padded(cbuild, version, size, workdir):
    """Program `version`, padded to `size` bytes (appended bytes do not change an ELF)."""
    src = program(cbuild, version)
    out = os.path.join(workdir, f"padded{version}")
    data = open(src, "rb").read()
    assert len(data) < size
    with open(out, "wb") as f:
        f.write(data + bytes([version]) * (size - len(data)))
    os.chmod(out, 0o755)
    return out


def exec_write_race(m, cbuild, workdir, seconds):
    size = 1 << 20
    vers = {1: padded(cbuild, 1, size, workdir), 2: padded(cbuild, 2, size, workdir)}
    sha = {hashlib.sha256(open(p, "rb").read()).hexdigest(): v for v, p in vers.items()}
    app = m.p("app")
    subprocess.run(["cp", vers[1], app], check=True)
    stop = time.monotonic() + seconds
    stats = {"execs": 0, "etxtbsy": 0, "bad": [], "writes": 0, "write_fail": []}
    lock = threading.Lock()

    def exec_loop():
        while time.monotonic() < stop:
            try:
                r = subprocess.run([app], capture_output=True, text=True, timeout=30)
                ok = r.returncode == 0 and r.stdout in ("version 1\n", "version 2\n")
                with lock:
                    stats["execs"] += 1
                    if not ok:
                        stats["bad"].append((r.returncode, r.stdout[:80], r.stderr[:80]))
            except OSError as e:
                with lock:
                    stats["execs"] += 1
                    if e.errno == errno.ETXTBSY:
                        stats["etxtbsy"] += 1
                    else:
                        stats["bad"].append(str(e))

    def writer(cmd):
        i = 0
        while time.monotonic() < stop:
            i += 1
            r = subprocess.run(cmd(vers[1 + i % 2]), capture_output=True, text=True,
                               timeout=30)
            with lock:
                stats["writes"] += 1
                if r.returncode != 0:
                    stats["write_fail"].append(r.stderr[:200])

    threads = [threading.Thread(target=exec_loop) for _ in range(4)]
    threads.append(threading.Thread(target=writer, args=(lambda s: ["cp", s, app],)))
    threads.append(threading.Thread(target=writer, args=(
        lambda s: ["dd", f"if={s}", f"of={app}", "conv=notrunc", "bs=64k", "status=none"],)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = hashlib.sha256(open(app, "rb").read()).hexdigest()
    return stats, final in sha


def test_exec_write_race(mounter, cbuild, workdir):
    seconds = RACE_SECONDS
    m = mounter(opts=("nosync", "keep=5"))
    stats, complete = exec_write_race(m, cbuild, workdir, seconds)
    print(f"race: {stats['execs']} execs, {stats['writes']} writes in {seconds:.0f} s")
    assert stats["etxtbsy"] == 0
    assert stats["bad"] == []
    assert stats["write_fail"] == []
    assert stats["execs"] > 20 and stats["writes"] > 4
    assert complete
    publishes = m.logtext().count("publish app")
    # versions still in use when pruned go when their last user does
    end = time.monotonic() + 10
    while True:
        versions = [n for n in os.listdir(m.p(".versions")) if n.startswith("app.~")]
        if len(versions) == min(5, publishes) or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert len(versions) == min(5, publishes), (versions, publishes)


def known_contents(n, size=256 * 1024):
    return [bytes([65 + i]) * size + os.urandom(64) for i in range(n)]


def run_threads(fns, seconds):
    stop = time.monotonic() + seconds
    errors = []

    def wrap(fn):
        try:
            while time.monotonic() < stop:
                fn()
        except Exception as e:  # reported, not swallowed
            errors.append(repr(e))

    threads = [threading.Thread(target=wrap, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_writers_same_file(mounter):
    m = mounter(opts=("nosync", "keep=0"))
    path = m.p("f")
    contents = known_contents(2)
    open(path, "wb").write(contents[0])

    def writer(c):
        def fn():
            with open(path, "wb") as f:
                f.write(c[: len(c) // 2])
                f.write(c[len(c) // 2:])
        return fn

    assert run_threads([writer(contents[0]), writer(contents[1])], 4) == []
    assert open(path, "rb").read() in contents
    versions = os.listdir(m.p(".versions"))
    assert versions
    for v in versions:
        assert open(m.p(".versions", v), "rb").read() in contents, v


def test_mmap_readers_across_publishes(mnt, procs):
    path = mnt.p("lib.so")
    contents = known_contents(21)
    open(path, "wb").write(contents[0])
    reader = procs.start(["/usr/bin/python3", "-c", f"""
import mmap, sys
f = open({path!r}, 'rb')
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
first = bytes(m[:])
print('ready', flush=True)
for line in sys.stdin:
    print('same' if bytes(m[:]) == first else 'changed', flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline() == "ready\n"
    for c in contents[1:]:
        with open(path, "wb") as f:
            f.write(c)
        reader.stdin.write("check\n")
        reader.stdin.flush()
        assert reader.stdout.readline() == "same\n"
    assert open(path, "rb").read() == contents[-1]


def test_dlopen_loop_while_library_replaced(mnt, cbuild, workdir, procs):
    libs = []
    for v in range(2):
        src = os.path.join(workdir, f"v{v}.c")
        open(src, "w").write(f"int value(void) {{ return {v + 1}; }}\nchar pad[200000] = {{1}};\n")
        out = os.path.join(workdir, f"v{v}.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-o", out, src], check=True)
        libs.append(out)
    # dlopen, call, dlclose in a loop until the stop file appears, while cp replaces the
    # library 30 times (a count, not a race against the loop's speed: on a loaded machine
    # 3000 dlopens once ended before the second cp)
    loop = cbuild("dlloop_until", r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int c, char **v) { long n = 0, bad = 0;
  while (access(v[2], F_OK) != 0 || n < 100) { void *h = dlopen(v[1], RTLD_NOW | RTLD_LOCAL);
    n++;
    if (!h) { fprintf(stderr, "%s\n", dlerror()); bad++; continue; }
    int (*f)(void) = (int (*)(void))dlsym(h, "value"); int r = f ? f() : -1;
    if (r != 1 && r != 2) bad++; dlclose(h); }
  printf("%ld %ld\n", bad, n); return 0; }""", "-ldl")
    so, stop = mnt.p("libv.so"), os.path.join(workdir, "stop")
    subprocess.run(["cp", libs[0], so], check=True)
    p = procs.start([loop, so, stop], stdout=subprocess.PIPE, text=True)
    for i in range(1, 31):
        subprocess.run(["cp", libs[i % 2], so], check=True)
    open(stop, "w").close()
    bad, n = map(int, p.communicate(timeout=60)[0].split())
    assert (bad, p.returncode) == (0, 0), f"{bad} of {n} dlopens failed"


def test_writers_and_rm_mv_on_same_name(mnt):
    path = mnt.p("app")
    contents = known_contents(3)
    tmp = [mnt.p(f"tmp{i}") for i in range(2)]

    def cp():
        with open(path, "wb") as f:
            f.write(contents[0])

    def rm():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def mv():
        open(tmp[0], "wb").write(contents[1])
        os.rename(tmp[0], path)

    def inplace():
        try:
            with open(path, "r+b") as f:
                f.write(contents[2])
        except FileNotFoundError:
            pass

    assert run_threads([cp, rm, mv, inplace], 4) == []
    if os.path.exists(path):
        assert open(path, "rb").read() in contents
    for v in os.listdir(mnt.p(".versions")):
        assert open(mnt.p(".versions", v), "rb").read() in contents, v


def test_directory_renamed_while_files_written(mnt):
    os.makedirs(mnt.p("lib"))
    contents = known_contents(2)
    names = ["lib", "lib2"]

    def writer():
        for d in names:
            try:
                with open(mnt.p(d, "x"), "wb") as f:
                    f.write(contents[0])
                    f.write(contents[1])
            except FileNotFoundError:
                pass

    def renamer():
        for a, b in (names, names[::-1]):
            try:
                os.rename(mnt.p(a), mnt.p(b))
            except FileNotFoundError:
                pass

    assert run_threads([writer, renamer], 4) == []
    d = [n for n in names if os.path.isdir(mnt.p(n))]
    assert len(d) == 1
    assert open(mnt.p(d[0], "x"), "rb").read() == contents[0] + contents[1]


def test_publishes_racing_the_indexer_number_and_prune_right(binary, workdir):
    """Publishes right at the mount, while the indexer still reads the same big versions dir
    (100k entries): whichever of the two read the dir first, the numbers follow the highest
    version and keep=10 keeps exactly the newest 10 (an older reading of the dir that won
    would miss the new versions and leave them unpruned)."""
    src = os.path.join(workdir, "src")
    names = [f"f{i:04}" for i in range(10000)]
    make_store(src, [("d", "d")], 10, names)
    vd = os.path.join(src, ".versions", "d")
    top = 10
    for rep in range(3):
        m = Mount(binary, src).start()
        try:
            for k in range(3):
                write(m.p("d", "f0000"), f"{rep} {k}\n")
            mine = sorted(n for n in os.listdir(m.p(".versions", "d")) if n.startswith("f0000."))
        finally:
            text = m.stop()
        assert "indexed" in text, text
        top += 3
        assert mine == sorted(f"f0000.~{k}~" for k in range(top - 9, top + 1)), text
        assert read(os.path.join(vd, f"f0000.~{top}~")) == f"{rep} 1\n".encode()
        assert len(os.listdir(vd)) == 100000


NLINK_LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
/* stat PATH in a loop for SECONDS; count how often st_nlink differs from WANT */
int main(int argc, char **argv) {
  long want = atol(argv[2]), n = 0, bad = 0, missing = 0;
  time_t end = time(NULL) + atoi(argv[3]);
  struct stat st;
  while (time(NULL) < end) {
    for (int i = 0; i < 1000; i++, n++) {
      if (stat(argv[1], &st) < 0) missing++;
      else if ((long)st.st_nlink != want) bad++;
    }
  }
  printf("%ld %ld %ld\n", n, bad, missing);
  return 0;
}
"""


def test_link_count_while_publishing(mnt, cbuild, procs):
    """A name that is published over and over always shows one link, and a hard-linked pair
    beside it two: a version link and its count change together (links.c), so no stat sees
    the kept version's link without it being discounted, or the other way round."""
    loop = cbuild("nlinkloop", NLINK_LOOP_C)
    seconds = max(3, int(RACE_SECONDS / 3))
    write(mnt.p("f"), "0", 0o755)
    write(mnt.p("g"), "g", 0o755)
    os.link(mnt.p("g"), mnt.p("h"))
    stats = [procs.start([loop, mnt.p(name), want, str(seconds)], stdout=subprocess.PIPE,
                         text=True) for name, want in (("f", "1"), ("f", "1"), ("h", "2"))]
    publishes, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        publishes += 1
        with open(mnt.p("f"), "w") as f:  # each close publishes: f.~N~ links the old inode
            f.write(str(publishes))
    outs = [p.communicate(timeout=60)[0].split() for p in stats]
    print(f"{publishes} publishes; stat calls, wrong counts, failed: {outs}")
    assert publishes > 50
    for n, bad, missing in outs:
        assert int(n) > 1000 and int(bad) == 0 and int(missing) == 0, outs
