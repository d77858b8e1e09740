#!/usr/bin/python3
# -*- coding: utf-8 -*-
# binvfs_outdated: which processes and systemd units still run a replaced version of a file
# in a binvfs mount, as facts, from `binvfsctl --json outdated --units`.
# GPL-2.0-or-later, like binvfs.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: binvfs_outdated
short_description: Facts on the processes and units that run replaced versions in binvfs
description:
  - For each I(path) (a binvfs mount, a directory in one, or a file), the processes that run,
    map or hold open a replaced version of a file at or below it, matched by inode number
    (C(binvfsctl outdated)), and the systemd unit each process belongs to.
  - Sets the fact C(binvfs_outdated), a dictionary keyed by each I(path) as given. Never
    changes anything.
options:
  path:
    description: One or more paths in binvfs mounts.
    type: list
    elements: path
    required: true
  binvfsctl:
    description: The binvfsctl program; by default found in PATH, /usr/sbin and
      /usr/local/sbin.
    type: path
attributes:
  check_mode: {support: full}
  diff_mode: {support: none}
author: binvfs maintainers
"""

EXAMPLES = r"""
- name: What still runs the old build
  binvfs_outdated:
    path: /opt/app/bin

- name: Restart those services
  ansible.builtin.command:
    argv: [systemctl, try-restart, "{{ item }}"]
  loop: "{{ ansible_facts.binvfs_outdated['/opt/app/bin'].restart }}"
"""

RETURN = r"""
ansible_facts:
  description: binvfs_outdated, per path given.
  returned: always
  type: dict
  contains:
    binvfs_outdated:
      description: >
        PATH -> processes (each as binvfsctl --json outdated gives it: pid, user, command,
        cmdline, unit, manager, cgroup, file, running, current, how), units (each: unit,
        manager, restart, not_restarted, pids, files), restart (the names of the services that
        `binvfsctl restart` would restart), not_restarted (the pids it would leave alone).
      type: dict
outdated:
  description: Whether any process runs a replaced version under any path.
  type: bool
  returned: always
restart:
  description: The services to restart for all paths, each once.
  type: list
  returned: always
"""

import json

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="list", elements="path", required=True),
                           binvfsctl=dict(type="path")),
        supports_check_mode=True)
    ctl = module.params["binvfsctl"] or module.get_bin_path(
        "binvfsctl", required=True, opt_dirs=["/usr/sbin", "/usr/local/sbin"])
    facts, restart = {}, []
    for path in module.params["path"]:
        cmd = [ctl, "--json", "outdated", "--units", path]
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            module.fail_json(msg=err.strip() or "binvfsctl outdated failed (exit %d)" % rc,
                             cmd=cmd, rc=rc)
        groups = json.loads(out)
        units, processes, skipped = [], [], []
        for g in groups:
            pids = sorted(set(p["pid"] for p in g["processes"]))
            units.append(dict(unit=g["unit"], manager=g["manager"], restart=g["restart"],
                              not_restarted=g["not_restarted"], pids=pids,
                              files=sorted(set(p["file"] for p in g["processes"]))))
            processes.extend(g["processes"])
            if g["restart"]:
                if g["unit"] not in restart:
                    restart.append(g["unit"])
            else:
                skipped.extend(pids)
        processes.sort(key=lambda p: (p["pid"], p["file"]))
        facts[path] = dict(processes=processes, units=units,
                           restart=[u["unit"] for u in units if u["restart"]],
                           not_restarted=sorted(set(skipped)))
    module.exit_json(changed=False, ansible_facts=dict(binvfs_outdated=facts),
                     outdated=any(f["processes"] for f in facts.values()), restart=restart)


if __name__ == "__main__":
    main()
