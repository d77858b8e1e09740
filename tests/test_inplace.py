"""A file its creator still writes is written in place by everyone, as natively: no write may
end up only in a version (xfstests generic/313, issue 22).

A new file is written in place by its creator (design §4). If, while the creator still has it
open, someone truncates it by path or opens it for writing, that goes to the file itself too
(`node_written_in_place`): copy-on-write would publish a copy and turn the inode the creator
writes into an old version, so the creator's later writes would be lost to the current file.
Each sequence runs on a plain directory and in the mount; the results must be the same.
Once the creator has closed, a write is copy-on-write again and keeps a version."""
import os
import subprocess

from util import same_on_both, versions


def test_truncate_by_path_while_the_creator_writes(both):
    def seq(p):
        fd = os.open(p("f"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"a" * 100)
        os.truncate(p("f"), 0)
        os.pwrite(fd, b"b" * 50, 0)
        os.truncate(p("f"), 20)
        os.pwrite(fd, b"c" * 5, 30)
        os.close(fd)
        with open(p("f"), "rb") as f:
            return f.read()
    assert same_on_both(both, seq) == b"b" * 20 + b"\0" * 10 + b"c" * 5


def test_truncate_of_an_executable_while_the_creator_writes(both):
    """An x bit makes LOOKUP read the requester's syscall and route a truncate (design §2):
    not while the file is written in place."""
    def seq(p):
        fd = os.open(p("run.sh"), os.O_WRONLY | os.O_CREAT, 0o755)
        os.write(fd, b"#!/bin/sh\necho one\n")
        subprocess.run(["truncate", "-s", "0", p("run.sh")], check=True)
        os.pwrite(fd, b"#!/bin/sh\necho two\n", 0)
        os.close(fd)
        with open(p("run.sh"), "rb") as f:
            return f.read()
    assert same_on_both(both, seq) == b"#!/bin/sh\necho two\n"


def test_second_writer_joins_the_creator(both):
    def seq(p):
        fd = os.open(p("log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, b"creator 1\n")
        with open(p("log"), "r+b") as g:  # another open for writing, no truncation
            g.seek(0, os.SEEK_END)
            g.write(b"joiner\n")
        os.write(fd, b"creator 2\n")
        out = [open(p("log"), "rb").read()]
        # and one with O_TRUNC, from another process
        subprocess.run(["sh", "-c", f"echo replaced > '{p('log')}'"], check=True)
        os.write(fd, b"creator 3\n")
        os.close(fd)
        out.append(open(p("log"), "rb").read())
        return out
    assert same_on_both(both, seq) == [b"creator 1\njoiner\ncreator 2\n",
                                       b"replaced\ncreator 3\n"]


def test_after_the_creator_closes_a_write_is_copy_on_write_again(mnt):
    p = mnt.p("f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"one\n")
    os.truncate(p, 2)  # in place: no version
    os.close(fd)
    assert versions(mnt) == []
    with open(p, "wb") as f:
        f.write(b"two\n")
    assert open(p, "rb").read() == b"two\n"
    assert [open(mnt.p(".versions", v), "rb").read() for v in versions(mnt)] == [b"on"]
