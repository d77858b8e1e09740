"""The daemon's layering, checked on the objects the build made: the FUSE operation files
(ops_*.c) call down to the modules below them and never each other, and the modules below
them (everything but ops_*.c, main.c, passthrough.c, inval.c, locks.c) take no FUSE request.
locks.c parks a blocked F_SETLKW or flock request and answers it when the range frees or an
interrupt comes: the request is the waiter (design.md §12). Each header declares the functions
of its namesake only (node.h: node.c's), so a reader finds a function's file by its header.
Only inval.c notifies the kernel (design.md §10). The modules' calls form no cycle: where a
lower module must reach a higher one, it goes through a pointer main.c sets, and the
declaration names the implementer (store.busy, store.dir_path, store.in_use,
node_inval_hook)."""
import glob
import os
import re
import subprocess

import pytest

from conftest import BINS, ROOT

OBJDIR = os.path.join(os.path.dirname(BINS[0]), "binvfs.p")
OPS = ("ops_entry", "ops_file", "ops_dir")


def symbols(obj, kind):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.split()[-2:-1] == [kind]}


@pytest.fixture(scope="module")
def objects():
    objs = {os.path.basename(o)[len("src_"):-len(".c.o")]: o
            for o in glob.glob(os.path.join(OBJDIR, "src_*.c.o"))}
    if not all(op in objs for op in OPS):
        pytest.skip(f"no objects of the daemon in {OBJDIR}")
    return objs


@pytest.mark.parametrize("op", OPS)
def test_an_ops_file_calls_no_other_ops_file(objects, op):
    used = symbols(objects[op], "U")
    for other in OPS:
        if other != op:
            across = used & symbols(objects[other], "T")
            assert not across, f"{op}.c calls {other}.c: {sorted(across)}"


def test_no_fuse_request_below_the_ops_files():
    below = [f for f in glob.glob(os.path.join(ROOT, "src", "*.c"))
             if not re.search(r"/(ops_\w+|main|passthrough|inval|locks)\.c$", f)]
    assert len(below) > 10
    for f in below:
        with open(f) as fh:
            text = fh.read()
        assert "fuse_req_t" not in text, f"{os.path.basename(f)} takes a FUSE request"


def header_declarations(path):
    """The functions a header declares: comments, preprocessor lines and every {...} (struct
    bodies, inline functions) removed, then the name before the first "(" of a statement."""
    with open(path) as fh:
        text = fh.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"^\s*#(?:[^\n]*\\\n)*[^\n]*", " ", text, flags=re.M)
    while True:
        flat = re.sub(r"\{[^{}]*\}", ";", text)
        if flat == text:
            break
        text = flat
    return {m.group(1) for st in text.split(";")
            if (m := re.match(r"[^()]*?\b(\w+)\s*\(", st))}


def test_a_header_declares_its_own_module_only(objects):
    defined = {}
    for mod, obj in objects.items():
        for name in symbols(obj, "T"):
            defined[name] = mod
    headers = glob.glob(os.path.join(ROOT, "src", "*.h"))
    assert "node_get" in header_declarations(os.path.join(ROOT, "src", "node.h"))
    wrong = []
    for h in headers:
        mod = os.path.basename(h)[:-len(".h")]
        for name in sorted(header_declarations(h)):
            if name in defined and defined[name] != mod:
                wrong.append(f"{mod}.h declares {defined[name]}.c's {name}")
    assert not wrong, "\n".join(wrong)


def test_only_inval_c_notifies_the_kernel(objects):
    """Every notification (FUSE_NOTIFY_*) and the fs.gen bump that goes with them are sent from
    inval.c, as the kernel keeps them in notify.c."""
    assert any(s.startswith("fuse_lowlevel_notify_") for s in symbols(objects["inval"], "U"))
    for mod, obj in objects.items():
        notify = sorted(s for s in symbols(obj, "U") if s.startswith("fuse_lowlevel_notify_"))
        assert mod == "inval" or not notify, f"{mod}.c notifies the kernel: {notify}"
    for f in glob.glob(os.path.join(ROOT, "src", "*.c")):
        if os.path.basename(f) != "inval.c":
            with open(f) as fh:
                assert not re.search(r"(add|sub|fetch|store)\w*\(\s*&fs\.gen\b", fh.read()), \
                    f"{os.path.basename(f)} bumps fs.gen"


# Known cycles, each with its reason (none: nodeid.c's file-handle lookups, which call node.c
# back, live in export.c).
CYCLES_KNOWN = []


def test_the_modules_calls_form_no_cycle(objects):
    """A module calls another when its object uses a function the other defines; that graph
    has no cycle (a strongly connected component of more than one module) but the known ones."""
    defined = {}
    for mod, obj in objects.items():
        for name in symbols(obj, "T"):
            defined[name] = mod
    calls = {mod: {defined[s] for s in symbols(obj, "U") if s in defined} - {mod}
             for mod, obj in objects.items()}
    assert "retention" in calls["node"] and "node" in calls["inval"]
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(calls[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(calls):
        if v not in index:
            visit(v)
    cycles = [c for c in cycles if c not in CYCLES_KNOWN]
    assert not cycles, f"modules that call each other round: {cycles}"


# The store's names on disk (docs/format.md) and the names composed from them are written in
# names.c and names.h only; the other files use their macros and functions. A message may
# mention a name in prose (a literal with a space in it); a literal without one builds a name.
STORE_NAMES = (".versions", ".binvfs-format", ".binvfs-staging", ".binvfs-nodeids",
               "binvfs store format", "binvfs nodeids", ".~~", ".~gone-", "trusted.binvfs.",
               "user.binvfs.", ".~%")


def literals(text):
    """The string literals of C source text, comments left out."""
    out = []
    for m in re.finditer(r'/\*.*?\*/|//[^\n]*|"((?:[^"\\\n]|\\.)*)"|\'(?:[^\'\\\n]|\\.)*\'',
                         text, re.S):
        if m.group(1) is not None:
            out.append(m.group(1))
    return out


def test_literals_sees_names_and_skips_comments():
    text = '/* ".versions" */ x = "%s/.~~"; // ".~gone-"\n c = \'"\'; y = "a \\" b";'
    assert literals(text) == ["%s/.~~", 'a \\" b']


def test_no_store_name_outside_names_c():
    files = [f for f in glob.glob(os.path.join(ROOT, "src", "**", "*.[ch]"), recursive=True)
             if not re.search(r"/src/names\.[ch]$", f)]
    assert len(files) > 20
    found = []
    for f in files:
        with open(f) as fh:
            for lit in literals(fh.read()):
                if " " not in lit and \
                        any(n in lit for n in STORE_NAMES):
                    found.append(f"{os.path.relpath(f, ROOT)}: \"{lit}\"")
    assert not found, "store names written outside names.c/names.h:\n" + "\n".join(found)
