"""The module edge: argument specs shared by all modules and `run_module()` (private).

A module's `main()` is its argument spec and one call to `run_module()` with
the logic to run. Here, and only here, domain errors become `fail_json`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.store import DEFAULT_BASE_DIR

# Matches the doc fragment skiff.fleet.site_dir (BASE_DIR part).
BASE_DIR_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "base_dir": {"type": "path", "default": DEFAULT_BASE_DIR},
}
# Matches the doc fragment skiff.fleet.site_dir (DOCUMENTATION part).
SITE_DIR_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "site": {"type": "str", "required": True},
    **BASE_DIR_ARGUMENT_SPEC,
}

Logic = Callable[[dict[str, Any], bool], Result]


def run_module(
    argument_spec: dict[str, Any],
    logic: Logic,
    *,
    needs_cryptography: bool = True,
    **module_kwargs: Any,
) -> None:
    """Build the AnsibleModule, run `logic(params, check_mode)`, exit or fail."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **module_kwargs)
    if needs_cryptography:
        # Imported only here: modules that need no certificates skip its import time.
        from ansible_collections.skiff.fleet.plugins.module_utils import pki

        if not pki.HAS_CRYPTOGRAPHY:
            module.fail_json(
                msg=missing_required_lib("cryptography"), exception=pki.CRYPTOGRAPHY_IMPORT_ERROR
            )
    try:
        result = logic(module.params, module.check_mode)
    except SkiffError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    except OSError as exc:
        # Permissions, full disks: say which file, never its contents.
        where = f" ({exc.filename})" if exc.filename else ""
        module.fail_json(msg=f"{exc.strerror or exc}{where}")
    module.exit_json(**result.as_module_result())
