"""Races: exec loops against writers on the same binary; readers never see a torn file and
writers never get ETXTBSY. `scripts/soak --minutes N` runs the same race for longer."""
import errno
import hashlib
import os
import subprocess
import threading
import time

from conftest import program

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
