# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Action for skiff.fleet.token: the module's result carries a credential, so it is never shown.

A module cannot mark its own return value no_log (Ansible strips that key
from module output); an action plugin can. A failure carries no token, so its
message stays visible.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        result.update(
            self._execute_module(
                module_name="skiff.fleet.token",
                module_args=self._task.args,
                task_vars=task_vars,
            )
        )
        if "token" in result or "tokens" in result:
            result["_ansible_no_log"] = True
        return result
