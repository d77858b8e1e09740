"""Promise: node identity holds without an fd per node.

Beyond a quarter of its fd limit the daemon keeps a file handle per node instead of an fd
(design §3). Nothing then pins a node's inode: it can be freed behind the node and its number
reused by a new file, which must never be answered with the old node. These tests lower the
daemon's fd limit so that every new node is handle-only, and run the races that depend on
node identity (they run under TSan too).
"""
import os

import pytest

import test_races
from test_limits import lower_nofile
from util import read, write


def handle_only(m, limit=256):
    """Lower the daemon's fd limit and spend its fd budget on names the kernel keeps (no x bit:
    cached), so that every node made from now on holds a handle, not an fd."""
    lower_nofile(m, limit)
    os.mkdir(m.p("pins"))
    for i in range(limit // 4 + 16):
        write(m.p("pins", f"p{i}"), "p")
        os.stat(m.p("pins", f"p{i}"))
    assert "new nodes keep file handles" in m.logtext()


def test_reused_inode_number_is_not_taken_for_the_old_node(loopfs):
    """A file removed behind the mount while the kernel still knows its name: its number is
    reused by a new file, whose LOOKUP must get a new node with the new content."""
    keep = {}

    def setup(src):  # SOURCE itself, below the mount: changes the kernel does not see
        keep["fd"] = os.open(src, os.O_RDONLY | os.O_DIRECTORY)

    m = loopfs("ext4", 64, setup=setup)
    src = keep["fd"]
    try:
        handle_only(m)
        fd = os.open("a", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=src)
        os.write(fd, b"A" * 5000)
        os.close(fd)
        assert read(m.p("a")) == b"A" * 5000  # looked up: its node holds a handle
        # (no stat through the mount: a GETATTR would leave an fd of it in a thread's ring)
        ino = os.stat("a", dir_fd=src).st_ino
        os.unlink("a", dir_fd=src)
        for i in range(200):
            name, data = f"b{i}", b"B%d\n" % i
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=src)
            os.write(fd, data)
            os.close(fd)
            if os.stat(name, dir_fd=src).st_ino == ino:
                break
        else:
            pytest.fail("the inode number of a was never reused: something still holds it")
        st = os.stat(m.p(name))
        assert st.st_ino == ino and st.st_size == len(data)
        assert read(m.p(name)) == data
    finally:
        os.close(src)


RACES = {
    "writers_rm_mv": test_races.test_writers_and_rm_mv_on_same_name,
    "dir_renamed": test_races.test_directory_renamed_while_files_written,
}


@pytest.mark.parametrize("race", sorted(RACES))
def test_races_on_handle_only_nodes(mounter, race):
    m = mounter()
    handle_only(m)
    RACES[race](m)


def test_exec_write_race_on_handle_only_nodes(mounter, cbuild, workdir):
    m = mounter(opts=("nosync", "keep=5"))
    handle_only(m)
    stats, complete = test_races.exec_write_race(m, cbuild, workdir, 8)
    assert stats["etxtbsy"] == 0
    assert stats["bad"] == []
    assert stats["write_fail"] == []
    assert stats["execs"] > 10 and stats["writes"] > 2
    assert complete
