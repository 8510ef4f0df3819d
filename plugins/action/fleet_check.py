# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Action for skiff.fleet.fleet_check: runs on the controller, reads the inventory, changes nothing."""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase

from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    fleet_findings,
    plain_hostvars,
    problems_by_host,
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("hosts",))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        hosts = self._task.args.get("hosts")
        if hosts is None:
            hosts = task_vars.get("groups", {}).get("skiff_sites", [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            result.update(failed=True, msg="hosts: must be a list of inventory host names")
            return result
        missing = [h for h in hosts if h not in task_vars["hostvars"]]
        if missing:
            result.update(failed=True, msg=f"hosts: not in the inventory: {', '.join(missing)}")
            return result
        plain = plain_hostvars(task_vars["hostvars"], hosts)
        problems = problems_by_host(plain, hosts)
        # The network checks need a valid inventory: a broken link would only echo as noise.
        findings = [] if any(problems.values()) else fleet_findings(plain, hosts)
        for finding in findings:
            if not finding.intended:
                problems[finding.host].append(finding.text)
        result.update(
            changed=False,
            problems=problems,
            findings=[
                {
                    "host": f.host,
                    "check": f.check,
                    "field": f.field,
                    "message": f.message,
                    "intended": f.intended,
                }
                for f in findings
            ],
        )
        intended = [f"{f.text} (marked intended)" for f in findings if f.intended]
        if intended:
            result["warnings"] = intended
        return result
