"""scripts/xfstests against a stand-in for xfstests' `check` (xfstests itself is not in the
repo): the stand-in takes the steps of xfstests' FUSE mode that depend on the script's glue,
`mount -t fuse.binvfs $TEST_FS_MOUNT_OPTS TAG DIR` through the mount helper, the fs type from
$DF_PROG compared with $FSTYP (old xfstests), a write through the mount, a scratch mount,
`mount -o remount,ro` by mount point and `umount TAG`; then prints check's summary lines.
The script must turn them into the side-by-side table and leave nothing mounted."""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""#!/bin/bash
. "$HOST_OPTIONS"
DF_PROG="${DF_PROG:-df -T -P}"
fail=() notrun=()
mnt() { mount -t $FSTYP$FUSE_SUBTYP "$@"; }
if ! findmnt -rncv -S "$TEST_DEV" -o SOURCE,TARGET | grep -qx "$TEST_DEV $TEST_DIR"; then
	mnt $TEST_FS_MOUNT_OPTS $TEST_DEV $TEST_DIR || { echo "mount of TEST_DEV failed"; exit 1; }
fi
type=$($DF_PROG 2>/dev/null | awk -v w=$TEST_DEV '$1 == w { print $2 }')
[ "$type" = "$FSTYP" ] || { echo "TEST_DEV=$TEST_DEV is not a type $FSTYP filesystem ($type)"; exit 1; }
for t in "$@"; do
	case $t in
	generic/001) echo a > $TEST_DIR/f && echo b > $TEST_DIR/f && [ "$(cat $TEST_DIR/f)" = b ] || fail+=($t) ;;
	generic/003)
		[ $FSTYP = ext4 ] && mkfs.ext4 -q -F $SCRATCH_DEV
		mnt $MOUNT_OPTIONS $SCRATCH_DEV $SCRATCH_MNT && echo x > $SCRATCH_MNT/x &&
		mount -o remount,ro $SCRATCH_MNT && ! touch $SCRATCH_MNT/y 2>/dev/null &&
		umount $SCRATCH_DEV || fail+=($t) ;;
	generic/004) [ $FSTYP = ext4 ] || fail+=($t) ;;
	*) notrun+=($t) ;;
	esac
done
ran=(); for t in "$@"; do [[ " ${notrun[*]} " == *" $t "* ]] || ran+=($t); done
echo "Ran: ${ran[*]}"
[ ${#notrun[@]} -gt 0 ] && echo "Not run: ${notrun[*]}"
[ ${#fail[@]} -gt 0 ] && echo "Failures: ${fail[*]}"
exit 0
"""


@pytest.fixture
def fake_xfstests(tmp_path):
    x = tmp_path / "xfstests"
    for d in ("common", "ltp", "tests/generic"):
        (x / d).mkdir(parents=True)
    (x / "ltp/fsstress").write_text("#!/bin/true\n")
    (x / "common/rc").write_text("_check_mounted_on TEST_DEV $TEST_DEV TEST_DIR $TEST_DIR $FSTYP\n")
    (x / "tests/generic/group.list").write_text(
        "001 auto quick\n002 auto\n003 auto quick rw\n004 quick\n")
    (x / "check").write_text(CHECK)
    for f in ("ltp/fsstress", "check"):
        os.chmod(x / f, 0o755)
    return x


def test_table_side_by_side_and_nothing_left_mounted(fake_xfstests, tmp_path, binary):
    work = tmp_path / "work"
    env = dict(os.environ, BINVFS=binary, XFST_WORK=str(work), XFST_SIZE="256M")
    r = subprocess.run([os.path.join(REPO, "scripts/xfstests"), str(fake_xfstests)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines() if line.strip()}
    # the default list: the generic tests of group quick
    assert rows["generic/001"] == ["passed", "passed"]
    assert rows["generic/003"] == ["passed", "passed"]  # helper, remount by tag, umount TAG
    assert rows["generic/004"] == ["failed", "passed"]
    assert "generic/002" not in rows
    assert rows["binvfs"] == ["2", "1", "0"] and rows["ext4"] == ["3", "0", "0"]
    mounts = open("/proc/self/mountinfo").read()
    assert str(work) not in mounts
    assert str(work) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                           text=True).stdout
    assert not os.path.exists("/usr/sbin/mount.fuse.binvfs")  # only in the run's namespace
