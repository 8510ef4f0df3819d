# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Action for skiff.fleet.plan: builds the fleet's plan from this run's results, on the controller."""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.action import ActionBase

from ansible_collections.skiff.fleet.plugins.module_utils.plan import (
    SiteReport,
    build_plan,
    render_plan,
)
from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    inventory_network,
    plain_hostvars,
)

# What the plan reads of a registered result; never `token`/`tokens` (secrets).
RESULT_KEYS = ("changed", "failed", "unreachable", "skipped", "msg", "actions", "diff", "changes")


def _plain(value: Any) -> Any:
    """A registered result as plain JSON data, without anything the plan does not read."""
    if not isinstance(value, dict):
        return None
    return json.loads(json.dumps({k: value[k] for k in RESULT_KEYS if k in value}, default=str))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("hosts", "dest"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        hostvars = task_vars["hostvars"]
        fleet = list(task_vars.get("groups", {}).get("skiff_sites", []))
        hosts = self._task.args.get("hosts")
        if hosts is None:
            hosts = fleet
        every = fleet + [h for h in hosts if h not in fleet]
        network = inventory_network(plain_hostvars(hostvars, every), every)
        reports = []
        for host in hosts:
            values = hostvars[host]
            name = str(values.get("skiff_site_name") or host)
            tokens = values.get("skiff_token_results") or {}
            reports.append(
                SiteReport(
                    host=host,
                    name=name,
                    mode=network[name].mode,
                    site=_plain(values.get("skiff_site_result")),
                    tokens=[
                        _plain(t) for t in tokens.get("results") or [tokens] if not t.get("skipped")
                    ],
                    config=_plain(values.get("skiff_config_result")),
                    wanted=network[name],
                )
            )
        planned = {report.name for report in reports}
        plan = build_plan(
            reports, {name: site for name, site in network.items() if name not in planned}
        )
        self._display.display(render_plan(plan, sites=len(hosts)))
        dest = self._task.args.get("dest")
        if dest:
            path = os.path.abspath(os.path.expanduser(str(dest)))
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(plan, handle, indent=2, sort_keys=True)
                handle.write("\n")
            result["dest"] = path
        result.update(changed=False, plan=plan)
        return result
