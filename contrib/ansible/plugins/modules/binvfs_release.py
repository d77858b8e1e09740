#!/usr/bin/python3
# -*- coding: utf-8 -*-
# binvfs_release: begin, commit or abort a release on a directory of a binvfs mount, through
# the extended attribute user.binvfs.release on the directory (what `binvfsctl release` sets):
# the target needs no binvfsctl.
# GPL-2.0-or-later, like binvfs.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: binvfs_release
short_description: Make many changes under a directory of a binvfs mount current at once
description:
  - A release on I(path) (a directory in a binvfs mount) holds every publish, new file, rm
    and mv under it, by any writer, from C(begin) until C(commit) makes all of them current
    at one instant; C(abort) drops them. Nobody sees a held change before the commit (a new
    file only its creator's session does), so programs never start with half a deploy.
  - Works through the extended attribute C(user.binvfs.release) on I(path), as
    C(binvfsctl release) does; the target needs no binvfsctl. Who may begin, commit or abort
    follows the permissions of I(path) (write access).
  - Held changes do not survive a restart of the binvfs daemon; a C(commit) after one fails
    (no release is open).
  - Idempotent. C(begin) when a release of that I(name) is open already changes nothing (one
    of another name fails, one release per directory tree); C(abort) when none is open changes
    nothing. C(commit) when none is open fails, since the changes it was to make are not
    there.
  - In check mode nothing is set; the result says what would be done.
options:
  path:
    description: The release's directory, in a binvfs mount.
    type: path
    required: true
  state:
    description: C(begun) opens a release, C(committed) commits the open one, C(aborted)
      drops it.
    type: str
    required: true
    choices: [begun, committed, aborted]
  name:
    description: The release's name at C(begun) (letters, digits, C(.), C(_), C(-); at most
      64), shown by C(binvfsctl releases). Default (or empty), one the daemon makes up. With
      C(committed) or C(aborted), the open release must have this name.
    type: str
attributes:
  check_mode: {support: full}
  diff_mode: {support: none}
author: binvfs maintainers
"""

EXAMPLES = r"""
- name: Open a release on /opt/app
  binvfs_release:
    path: /opt/app
    state: begun
    name: "app-{{ version }}"

- name: Copy the new build (held until the commit)
  ansible.builtin.copy:
    src: build/
    dest: /opt/app/

- name: Make it all current at once
  binvfs_release:
    path: /opt/app
    state: committed
"""

RETURN = r"""
path: {description: The directory., type: str, returned: always}
name: {description: The release's name (null when none is or was open)., type: str,
       returned: always}
held: {description: "What the open release held before the task: {place: N, remove: M}
       (null when none was open).", type: dict, returned: always}
release: {description: "After a commit, its id in the history (binvfsctl releases, diff
          --release, rollback --release); null otherwise or when not found.", type: int,
          returned: always}
status: {description: The daemon's description of the open release after the task (null
         when none is open)., type: str, returned: always}
"""

import errno
import os
import re

from ansible.module_utils.basic import AnsibleModule

XATTR = "user.binvfs.release"
STATUS_RE = re.compile(r"^open (\S+) since (\d+) by uid (\d+): (\d+) to place, (\d+) to remove")


def mount_of(path):
    """The binvfs mount point path is in (the longest match in the mount table), or None."""
    best = None
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), left.split()[4])
            if right.split()[0] != "fuse.binvfs":
                continue
            if real == point or real.startswith(point.rstrip("/") + "/"):
                if best is None or len(point) > len(best):
                    best = point
    return best


def status(path):
    """(the daemon's status line, its match) of the release open on path, or (None, None)."""
    try:
        text = os.getxattr(path, XATTR).decode("utf-8", "replace").strip()
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None, None
        raise
    return text, STATUS_RE.match(text)


def newest_record(mount, name):
    """The id of the newest release of that name in the mount's history, or None."""
    rdir = os.path.join(mount, ".versions", ".binvfs-releases")
    try:
        ids = sorted((int(x) for x in os.listdir(rdir) if x.isdigit()), reverse=True)
    except OSError:
        return None
    for i in ids:
        try:
            with open(os.path.join(rdir, str(i)), "rb") as f:
                fields = f.read().split(b"\0")
        except OSError:
            continue
        # "binvfs release record 1\n" ID, then NAME (docs/format.md, Releases)
        if len(fields) > 1 and fields[1].decode("utf-8", "replace") == name:
            return i
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True),
                           state=dict(type="str", required=True,
                                      choices=["begun", "committed", "aborted"]),
                           name=dict(type="str")),
        supports_check_mode=True)
    path, state = module.params["path"], module.params["state"]
    name = module.params["name"] or None
    mount = mount_of(path)
    if mount is None:
        module.fail_json(msg="%s: not in a binvfs mount" % path)
    if not os.path.isdir(path):
        module.fail_json(msg="%s: not a directory" % path)
    result = dict(path=path, name=None, held=None, release=None, status=None, changed=False)
    try:
        text, m = status(path)
    except OSError as e:
        module.fail_json(msg="%s: %s" % (path, os.strerror(e.errno)))
    if m:
        result["name"] = m.group(1)
        result["held"] = dict(place=int(m.group(4)), remove=int(m.group(5)))
        result["status"] = text
    open_name = m.group(1) if m else None

    def setx(value):
        try:
            os.setxattr(path, XATTR, value.encode())
        except OSError as e:
            why = {errno.EBUSY: "a release is open on it, above or below it, or one of that "
                                "name elsewhere",
                   errno.ENOENT: "no release is open on it",
                   errno.EINVAL: "invalid name, or the open release is on another "
                                 "directory" if value.startswith("begin") else
                                 "the open release is on another directory",
                   errno.EACCES: "permission denied (write access to the directory is "
                                 "needed)"}.get(e.errno, os.strerror(e.errno))
            module.fail_json(msg="%s: release %s: %s" % (path, value.split(":")[0], why),
                             **result)

    if state == "begun":
        if open_name is not None:
            if name is None or name == open_name:
                module.exit_json(**result)  # open already
            module.fail_json(msg="%s: release %s is open, not %s" % (path, open_name, name),
                             **result)
        result["changed"] = True
        result["name"] = name
        if not module.check_mode:
            setx("begin:%s" % name if name else "begin")
            text, m = status(path)
            result["status"] = text
            result["name"] = m.group(1) if m else name
        module.exit_json(**result)

    if open_name is None:
        if state == "aborted":
            module.exit_json(**result)  # nothing open: nothing to drop
        module.fail_json(msg="%s: no release is open on it (committed or aborted already, "
                         "never begun, or dropped by a restart of the daemon)" % path,
                         **result)
    if name is not None and name != open_name:
        module.fail_json(msg="%s: the open release is %s, not %s" % (path, open_name, name),
                         **result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)
    setx("commit" if state == "committed" else "abort")
    result["status"] = None
    if state == "committed":
        result["release"] = newest_record(mount, open_name)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
