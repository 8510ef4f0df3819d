"""Logic of skiff.fleet.reconcile (private to skiff.fleet; not a public API).

A site's links, listeners and connectors in one call: one reconcile, so at
most one `check-config`, one write and one reload for all three lists, and
none of them when nothing changes. The role calls it once per site per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.config_runner import (
    CredentialSet,
    SiteConfigRunner,
    wanted_from_items,
)
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.link import (
    LINK,
    LinkSecrets,
    link_expiry_warnings,
    link_peers,
    link_set,
)
from ansible_collections.skiff.fleet.plugins.module_utils.reconcile import Kind, Wanted
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    CONNECTOR,
    LISTENER,
    listener_certificates,
    listener_verifier,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import DEFAULT_BASE_DIR


@dataclass(frozen=True)
class SiteConfigParams:
    site: str
    base_dir: str = DEFAULT_BASE_DIR
    # None: leave that list as it is; a list (even empty): what the site should hold.
    links: tuple[Mapping[str, Any], ...] | None = None
    listeners: tuple[Mapping[str, Any], ...] | None = None
    connectors: tuple[Mapping[str, Any], ...] | None = None
    prune: bool = False

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> SiteConfigParams:
        values: dict[str, Any] = {
            "site": params["site"],
            "base_dir": params.get("base_dir") or DEFAULT_BASE_DIR,
            "prune": bool(params.get("prune")),
        }
        for section in ("links", "listeners", "connectors"):
            if params.get(section) is not None:
                values[section] = tuple(
                    {k: v for k, v in item.items() if v is not None} for item in params[section]
                )
        return cls(**values)

    def __repr__(self) -> str:  # link items carry tokens
        return f"SiteConfigParams(site={self.site!r}, prune={self.prune!r})"


def run_reconcile(params: SiteConfigParams, check_mode: bool, **services: Any) -> Result:
    wanted: dict[Kind, Wanted] = {}
    credentials = None
    runner = SiteConfigRunner(params.site, params.base_dir, check_mode=check_mode, **services)
    if params.links is not None:
        secrets = runner.secrets()
        try:
            links = link_set(
                params.site,
                list(params.links),
                prune=params.prune,
                check_mode=check_mode,
                link_paths=secrets.link_paths,
                current_peers=link_peers(runner),
            )
        except SkiffError as exc:
            raise exc.with_context(site=params.site) from None
        wanted[LINK] = links.wanted
        credentials = LinkSecrets(secrets, links)
    for kind, items in ((LISTENER, params.listeners), (CONNECTOR, params.connectors)):
        if items is not None:
            wanted[kind] = wanted_from_items(items, prune=params.prune)
    listening = [str(item.get("name")) for item in wanted.get(LISTENER, Wanted()).present]
    certificates = listener_certificates(runner, wanted[LISTENER]) if LISTENER in wanted else None
    result = runner.run(
        wanted,
        verify=listener_verifier(listening) if listening else None,
        credentials=CredentialSet(credentials, certificates),
    )
    after = result.values.get("after", {})
    result.values = {"changes": result.values.get("changes", []), **after}
    if params.links is not None:
        result.warnings += link_expiry_warnings(params.site, links.tokens)
    if certificates is not None and certificates.ca_pem:
        result.values["service_ca"] = certificates.ca_pem.decode()
    return result
