"""A big prune runs in batches of the store lock (docs/design.md §6, §9): publishes elsewhere on
the mount, and in the pruned directory itself, complete while it runs; its result is exact and
the history index stays right (the next publish gets the next number); a version in use is
deferred as before; retention after a publish removes at most one batch.

These check order and outcome, not time: a publish that completes while the prune still has
versions left to remove could not have waited for the whole prune.
"""
import os
import re
import threading

import util
from util import versions, wait_for, write

NAMES, NVER, KEEP = 250, 200, 5  # 50,000 versions in one directory; 48,750 go
BATCH = 512  # PRUNE_BATCH (src/retention.h)


def names():
    return ["f%04d" % i for i in range(NAMES)]


def big_store(src):
    util.make_store(src, [("d000", "d000")], NVER, names())
    os.makedirs(os.path.join(src, "other"))
    write(os.path.join(src, "other", "g"), "g0\n")


def pruned_lines(m):
    return m.logtext().count("prune .versions/d000/")


def prune_in_thread(path, value):
    res = {}

    def run():
        try:
            os.setxattr(path, "user.binvfs.prune", value)
            res["ok"] = True
        except OSError as e:
            res["err"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, res


def test_publishes_complete_while_a_big_prune_runs_and_its_result_is_exact(mounter):
    m = mounter(big_store, opts=("nosync", "keep=0"))
    victims = NAMES * (NVER - KEEP)
    t, res = prune_in_thread(m.p("d000"), str(KEEP).encode())
    try:
        wait_for(lambda: pruned_lines(m) > 0 or not t.is_alive(), timeout=60,
                 what="the prune to start removing", poll=0.001)
        # publish into another directory and into the pruned one while it runs; note how far
        # the prune was each time a publish had completed
        seen, other, mine = [], 0, 0
        while t.is_alive():
            other += 1
            write(m.p("other", "g"), f"g{other}\n")
            seen.append(pruned_lines(m))
            mine += 1
            write(m.p("d000", "f0007"), f"new {mine}\n")
            seen.append(pruned_lines(m))
    finally:
        t.join()
    assert res.get("ok"), res
    assert re.search(rf"prune request \(keep {KEEP}\): {victims} versions removed in \d+ ms",
                     m.logtext())
    # the prune had versions left to remove when a publish completed: publishes did not wait
    # for the whole prune (one store lock hold for all of it: every publish here completes
    # after the last removal)
    assert seen and min(seen) < victims, (min(seen), victims)

    # exact: the newest KEEP of every name as they were, plus what was published meanwhile
    want = {f"{n}.~{k}~" for n in names() for k in range(NVER - KEEP + 1, NVER + 1)}
    want |= {f"f0007.~{NVER + k}~" for k in range(1, mine + 1)}  # each kept the one before
    assert set(versions(m, "d000")) == want
    assert versions(m, "other") == sorted(f"g.~{k}~" for k in range(1, other + 1))
    # the index is right: the next publish of a pruned name gets the next number
    write(m.p("d000", "f0000"), "after\n")
    assert f"f0000.~{NVER + 1}~" in versions(m, "d000")
    assert util.read(m.p(".versions", "d000", f"f0000.~{NVER + 1}~")) == b"current\n"
    # a second prune removes only what came since: f0000's oldest, f0007's `mine` oldest
    os.setxattr(m.p("d000"), "user.binvfs.prune", str(KEEP).encode())
    assert re.search(rf"prune request \(keep {KEEP}\): {1 + mine} versions removed in \d+ ms\n$",
                     m.logtext())
    assert len(versions(m, "d000")) == NAMES * KEEP


def test_a_version_in_use_is_deferred_by_a_batched_prune(mounter):
    """Several batches (3 x 2000 versions); one victim open for reading stays until closed."""
    def setup(src):
        util.make_store(src, [("d000", "d000")], 2000, ["a", "b", "c"])
        held = os.path.join(src, ".versions", "d000", "b.~3~")
        os.unlink(held)  # an inode of its own (make_store links versions to a few inodes)
        write(held, "old\n")

    m = mounter(setup, opts=("nosync", "keep=0"))
    held = open(m.p(".versions", "d000", "b.~3~"), "rb")
    try:
        os.setxattr(m.p("d000"), "user.binvfs.prune", b"2")
        assert "removed when its last user is gone" in m.logtext()
        assert set(versions(m, "d000")) == {"b.~3~"} | {
            f"{n}.~{k}~" for n in "abc" for k in (1999, 2000)}
        assert held.read() == b"old\n"
    finally:
        held.close()
    wait_for(lambda: "b.~3~" not in versions(m, "d000"), timeout=10, what="b.~3~ to go")
    write(m.p("d000", "b"), "new\n")
    assert versions(m, "d000") == sorted(
        [f"{n}.~{k}~" for n in "abc" for k in (1999, 2000)] + ["b.~2001~"])


def test_retention_after_a_publish_removes_at_most_one_batch(mounter):
    """keep=2 over a path with 1500 versions: each publish removes at most BATCH of the
    backlog (the publish holds the store lock), the oldest first, until 2 are left."""
    m = mounter(lambda src: util.make_store(src, [("d000", "d000")], 1500, ["f"]),
                opts=("nosync", "keep=2"))
    left = []
    for i in range(3):
        write(m.p("d000", "f"), f"{i}\n")
        left.append(versions(m, "d000"))
    nums = [sorted(int(v.split("~")[1]) for v in vs) for vs in left]
    assert (nums[0][0], len(nums[0])) == (BATCH + 1, 1501 - BATCH)
    assert (nums[1][0], len(nums[1])) == (2 * BATCH + 1, 1502 - 2 * BATCH)
    assert nums[2] == [1502, 1503]
    assert "more versions beyond keep=2" in m.logtext()
