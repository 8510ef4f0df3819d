"""Logic of skiff.fleet.network_info (private to skiff.fleet; not a public API).

The live network as data, read from the routers' admin APIs (`/v1/status`)
and, for sites on the host the module runs on, the certificates in their
site directories. `site_view()` turns one status into one site's view;
`merge()` joins views (of one host, or of many hosts through the
`skiff.fleet.merge_networks` filter) into the network: sites, links with
state and cost, routing keys with their listeners and connectors, keys a
listener cannot reach, certificate expiries. Both are pure and tested with
canned status documents; `read_network()` does the reading.
"""

from __future__ import annotations

import datetime
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import get_platform
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    SecretStore,
    SitePaths,
    SiteStore,
    validate_site_name,
)

STATUS_TIMEOUT = 5.0


def site_view(
    status: dict[str, Any] | None,
    *,
    name: str | None = None,
    source: str = "",
    error: str | None = None,
    certificates: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One site as its own router reports it (or why it could not be read)."""
    status = status or {}
    site = status.get("site") or name
    return {
        "site": site,
        "source": source,
        "error": error if error else (None if status else "no status"),
        "status": status,
        "certificates": certificates or [],
    }


def merge(
    views: Iterable[dict[str, Any]], *, now: datetime.datetime | None = None
) -> dict[str, Any]:
    """The network as the views together show it."""
    views = [v for v in views if v]
    read = {v["site"]: v for v in views if not v.get("error")}
    sites: dict[str, dict[str, Any]] = {}
    links: dict[tuple[str, str, str], dict[str, Any]] = {}
    keys: dict[str, dict[str, Any]] = {}
    certificates: list[dict[str, Any]] = []
    unreadable = [
        {"site": v["site"], "source": v.get("source"), "why": v["error"]}
        for v in views
        if v.get("error")
    ]

    for view in views:
        certificates.extend(dict(c, site=view["site"]) for c in view.get("certificates") or [])
    for name, view in read.items():
        status = view["status"]
        config = status.get("config") or {}
        sites[name] = {
            "mode": status.get("mode", "interior"),
            "version": status.get("version"),
            "ready": status.get("ready"),
            "not_ready": status.get("not_ready") or [],
            "config_sha256": config.get("sha256"),
            "config_error": config.get("error"),
            "read": True,
            "source": view.get("source"),
            "listeners": [_service(x) for x in status.get("listeners") or []],
            "connectors": [_service(x) for x in status.get("connectors") or []],
            "flows_open": (status.get("flows") or {}).get("open"),
        }
        for entry in status.get("links") or []:
            if entry.get("direction") == "outgoing":
                key = (name, str(entry.get("peer")), str(entry.get("name")))
                links[key] = {
                    "from": name,
                    "to": entry.get("peer"),
                    "name": entry.get("name"),
                    "cost": entry.get("cost"),
                    "state": entry.get("state"),
                    "error": entry.get("error"),
                    "seen_by": name,
                }
    # Incoming links fill in what a dialer that could not be read would have said.
    for name, view in read.items():
        for entry in view["status"].get("links") or []:
            if entry.get("direction") != "incoming":
                continue
            peer = str(entry.get("peer"))
            if peer in read:
                continue
            key = (peer, name, name)
            links.setdefault(
                key,
                {
                    "from": peer,
                    "to": name,
                    "name": name,
                    "cost": entry.get("cost"),
                    "state": entry.get("state"),
                    "error": entry.get("error"),
                    "seen_by": name,
                },
            )
    # Routers known to any view but not read: a site this run could not ask itself.
    for name, view in read.items():
        for router in view["status"].get("routers") or []:
            rid = str(router.get("id"))
            entry = sites.setdefault(rid, {"mode": router.get("mode", "interior"), "read": False})
            if not entry["read"]:
                entry.setdefault("reachable_from", [])
                if router.get("reachable"):
                    entry["reachable_from"].append(name)
    for name, view in read.items():
        for key, info in (view["status"].get("routing_keys") or {}).items():
            merged = keys.setdefault(
                key, {"listeners": set(), "connectors": set(), "unreachable_at": set()}
            )
            merged["listeners"].update(info.get("listeners") or [])
            merged["connectors"].update(info.get("connectors") or [])
        # A listener's own router says whether its key is reachable from there.
        status_keys = view["status"].get("routing_keys") or {}
        for listener in view["status"].get("listeners") or []:
            for listened in vocabulary.listener_keys(listener):
                merged = keys.setdefault(
                    listened, {"listeners": set(), "connectors": set(), "unreachable_at": set()}
                )
                merged["listeners"].add(name)
                if not (status_keys.get(listened) or {}).get("reachable"):
                    merged["unreachable_at"].add(name)
    routing_keys = {
        key: {
            "listeners": sorted(info["listeners"]),
            "connectors": sorted(info["connectors"]),
            "unreachable_at": sorted(info["unreachable_at"]),
            "reachable": not info["unreachable_at"] and bool(info["connectors"]),
        }
        for key, info in sorted(keys.items())
    }
    when = now or datetime.datetime.now(datetime.UTC)
    for cert in certificates:
        if cert.get("not_after"):
            not_after = datetime.datetime.fromisoformat(cert["not_after"])
            cert["days_left"] = (not_after - when).days
        else:
            cert["days_left"] = None
    certificates.sort(key=lambda c: (c["not_after"] or "", c["site"], c["what"]))
    return {
        "sites": dict(sorted(sites.items())),
        "links": [links[k] for k in sorted(links)],
        "routing_keys": routing_keys,
        "unreachable_keys": sorted(k for k, v in routing_keys.items() if v["unreachable_at"]),
        "certificates": certificates,
        "unreadable": unreadable,
    }


def _service(entry: dict[str, Any]) -> dict[str, Any]:
    shown = {k: entry.get(k) for k in ("name", "routing_key", "host", "port")}
    for extra in ("state", "error", "distribution", "flows", "down", "strategy", "keys_in_use"):
        if extra in entry:
            shown[extra] = entry[extra]
    return shown


# -- reading ----------------------------------------------------------------------------------


def site_certificates(secrets: SecretStore, links: list[str]) -> list[dict[str, Any]]:
    """Expiry of a site's certificates (public facts only, never a key), from its secret store.

    The site CA, the server certificate and each link's client certificate
    (the one its token carried; the issuing site's copy expires with it).
    """
    from ansible_collections.skiff.fleet.plugins.module_utils import pki

    found = [("site CA", secrets.ca().cert_pem), ("server certificate", secrets.server().cert_pem)]
    found += [(f"link '{name}' client certificate", secrets.link(name).cert) for name in links]
    out: list[dict[str, Any]] = []
    for what, pem in found:
        if pem is None:
            continue
        try:
            info = pki.describe(pem)
        except ValueError:
            out.append({"what": what, "not_after": None, "error": "unreadable"})
            continue
        out.append({"what": what, "not_after": info["not_after"]})
    return out


def http_status(
    url: str, timeout: float = STATUS_TIMEOUT, token: str | None = None
) -> dict[str, Any]:
    """GET <url>/v1/status (with the admin token when given); raises OSError/ValueError
    when it cannot be read."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url.rstrip("/") + "/v1/status", headers=headers)
    with opener.open(request, timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict):
        raise ValueError("the status is not a JSON object")
    return data


@dataclass(frozen=True)
class NetworkInfoParams:
    base_dir: str = DEFAULT_BASE_DIR
    sites: tuple[str, ...] | None = None
    admin_urls: tuple[str, ...] = ()
    admin_token: str | None = None
    timeout: float = STATUS_TIMEOUT
    certificates: bool = True

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> NetworkInfoParams:
        return cls(
            base_dir=params.get("base_dir") or DEFAULT_BASE_DIR,
            sites=tuple(params["sites"]) if params.get("sites") is not None else None,
            admin_urls=tuple(params.get("admin_urls") or ()),
            admin_token=params.get("admin_token") or None,
            timeout=float(params.get("timeout") or STATUS_TIMEOUT),
            certificates=bool(params.get("certificates", True)),
        )


@dataclass
class NetworkReader:
    params: NetworkInfoParams
    platform_factory: Callable[..., Any] = get_platform
    fetch: Callable[[str, float, str | None], dict[str, Any]] = http_status
    views: list[dict[str, Any]] = field(default_factory=list)

    def local_sites(self) -> list[str]:
        if self.params.sites is not None:
            for name in self.params.sites:
                validate_site_name(name, field_name="sites")
            return list(self.params.sites)
        root = Path(os.path.expanduser(self.params.base_dir)).absolute()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if SiteStore(SitePaths(p), p.name).exists())

    def read(self) -> list[dict[str, Any]]:
        for name in self.local_sites():
            store = SiteStore.open(self.params.base_dir, name, field_name="sites")
            if not store.exists():
                self.views.append(
                    site_view(None, name=name, error=f"no site at {store.paths.root}")
                )
                continue
            metadata = store.read_metadata()
            platform = self.platform_factory(metadata.platform, store.paths, metadata)
            store.config = platform.config
            status = platform.status()
            links = [str(e.get("name")) for e in store.read_config().get("links") or []]
            certs = site_certificates(platform.secrets, links) if self.params.certificates else []
            error = (
                None if status else "its admin endpoint does not answer (is the router running?)"
            )
            self.views.append(
                site_view(
                    status, name=name, source=str(store.paths.root), error=error, certificates=certs
                )
            )
        for url in self.params.admin_urls:
            try:
                status = self.fetch(url, self.params.timeout, self.params.admin_token)
            except urllib.error.HTTPError as exc:
                hint = "; give admin_token" if exc.code == 401 else ""
                why = f"cannot read {url}: HTTP {exc.code} {exc.reason}{hint}"
                self.views.append(site_view(None, name=url, source=url, error=why))
                continue
            except (OSError, ValueError, urllib.error.URLError) as exc:
                reason = getattr(exc, "reason", None) or exc
                self.views.append(
                    site_view(None, name=url, source=url, error=f"cannot read {url}: {reason}")
                )
                continue
            self.views.append(site_view(status, source=url))
        return self.views


def run_network_info(params: NetworkInfoParams, check_mode: bool, **services: Any) -> Result:
    """Reads only; check mode runs the same."""
    if params.timeout <= 0:
        raise SkiffError(f"{params.timeout} must be > 0", field="timeout")
    views = NetworkReader(params, **services).read()
    return Result(values={"network": merge(views), "views": views})
