# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Filter joining skiff.fleet.network_info results of several hosts into one network."""

from __future__ import annotations

from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.network import merge


def skiff_merge_networks(results: list[Any]) -> dict[str, Any]:
    """Registered network_info results (one per host) -> the network they show together."""
    views = [
        view for result in results if isinstance(result, dict) for view in result.get("views") or []
    ]
    return merge(views)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"merge_networks": skiff_merge_networks}
