#!/usr/bin/python3
# -*- coding: utf-8 -*-
# binvfs_rollback: make an old version of a file in a binvfs mount current again, through
# `binvfsctl --json log` (what would change) and `binvfsctl --json rollback` (the change).
# GPL-2.0-or-later, like binvfs.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: binvfs_rollback
short_description: Make an old version of a file in a binvfs mount current again
description:
  - Writes version I(version) of I(path) over I(path) through the binvfs mount with
    C(binvfsctl rollback), which binvfs publishes atomically as a new version; the version
    that was current is kept, so a rollback can be rolled back.
  - Idempotent by content. When version I(version) has the same SHA-256 as the current file
    (it is the current version, or an earlier rollback already put its content back), nothing
    is written and the task reports no change.
  - Running programs keep the version they run; restart them (see binvfs_outdated and
    C(binvfsctl restart)).
options:
  path:
    description: The file, in a binvfs mount (the current name, not a path in .versions/).
    type: path
    required: true
  version:
    description: The version to make current again (1 is the oldest; C(binvfsctl log PATH)
      lists them).
    type: int
    required: true
  binvfsctl:
    description: The binvfsctl program; by default found in PATH, /usr/sbin and
      /usr/local/sbin.
    type: path
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
author: binvfs maintainers
"""

EXAMPLES = r"""
- name: Roll the app back to version 3
  binvfs_rollback:
    path: /opt/app/bin/app
    version: 3
"""

RETURN = r"""
path: {description: The file., type: str, returned: always}
version: {description: The version whose content is now current., type: int,
          returned: always}
current: {description: The number of the current version after the task (a rollback makes
          a new one; in check mode, the one it would make)., type: int, returned: always}
previous: {description: The version that was current before (null for a removed file).,
           type: int, returned: always}
sha256: {description: The SHA-256 of the content that is current after the task., type: str,
         returned: always}
"""

import json

from ansible.module_utils.basic import AnsibleModule

TEXT_LIMIT = 256 * 1024  # larger files are summarised in the diff, not shown


def binvfsctl(module, *args):
    cmd = [module.params["binvfsctl"] or module.get_bin_path(
        "binvfsctl", required=True, opt_dirs=["/usr/sbin", "/usr/local/sbin"]), "--json"]
    rc, out, err = module.run_command(cmd + list(args))
    if rc != 0:
        module.fail_json(msg=err.strip() or "binvfsctl %s failed (exit %d)" % (args[0], rc),
                         cmd=cmd + list(args), rc=rc)
    return json.loads(out)


def describe(v):
    """A version as diff text: its content if it is text, otherwise what identifies it."""
    if v is None:
        return ""
    if v["size"] <= TEXT_LIMIT:
        try:
            with open(v["path"], "rb") as f:
                data = f.read(TEXT_LIMIT + 1)
            if b"\0" not in data:
                return data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            pass
    return "binary, %d bytes\nsha256 %s\nbuild-id %s\n" % (
        v["size"], v["sha256"], v["build_id"] or "-")


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True),
                           version=dict(type="int", required=True),
                           binvfsctl=dict(type="path")),
        supports_check_mode=True)
    path, n = module.params["path"], module.params["version"]
    if n < 1:
        module.fail_json(msg="version must be 1 or more, not %d" % n)
    log = binvfsctl(module, "log", path)
    versions = {v["n"]: v for v in log["versions"]}
    if n not in versions:
        module.fail_json(msg="%s: no such version %d (versions: %s)" % (
            log["path"], n, " ".join(str(k) for k in sorted(versions)) or "none"))
    target = versions[n]
    cur = versions.get(log["current"]) if log["current"] else None
    result = dict(path=log["path"], version=n, previous=log["current"],
                  sha256=target["sha256"], changed=False)
    if cur is not None and cur["sha256"] == target["sha256"]:
        result["current"] = log["current"]  # already this content: nothing to write
        module.exit_json(**result)

    result["changed"] = True
    if module._diff:
        result["diff"] = dict(
            before_header="%s (version %s)" % (log["path"], log["current"] or "removed"),
            after_header="%s (version %d)" % (log["path"], n),
            before=describe(cur), after=describe(target))
    if module.check_mode:
        # the next version number: one past the highest, old or current
        result["current"] = max(versions) + 1
        module.exit_json(**result)
    done = binvfsctl(module, "rollback", path, str(n))
    result["current"] = done["version"]
    result["changed"] = done["changed"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
