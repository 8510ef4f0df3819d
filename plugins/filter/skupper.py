# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Filter turning Skupper v2 YAML documents into a skiff inventory (see module_utils/skupper.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.skiff.fleet.plugins.module_utils.skupper import (
    SkupperImportError,
    convert,
)


def skiff_skupper_import(
    documents: list[Any],
    platform: str = "kubernetes",
    endpoints: dict[str, Any] | None = None,
    source: str = "input",
) -> dict[str, Any]:
    """`documents` (e.g. `lookup('file', 'west.yaml') | from_yaml_all`) -> {inventory, notes}."""
    try:
        done = convert([(source, list(documents))], platform=platform, endpoints=endpoints)
    except SkupperImportError as exc:
        raise AnsibleFilterError(f"skupper_import: {exc}") from None
    return {"inventory": done.inventory, "notes": done.notes}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"skupper_import": skiff_skupper_import}
