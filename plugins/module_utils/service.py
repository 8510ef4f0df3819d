"""Listeners and connectors: the kinds, and the logic of their modules (private to skiff.fleet).

Both are entries of a list in `router.json` (`listeners` or `connectors`),
found by name. What differs is the list, the noun, the default host and one
rule (listeners bind, so two on one address cannot both work); the
reconciler (`reconcile.py`) does the rest for both, and for links.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import validation, vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.config_runner import (
    SiteConfigRunner,
    wanted_from_items,
)
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.reconcile import Entry, Kind, Wanted
from ansible_collections.skiff.fleet.plugins.module_utils.service_tls import ListenerCertificates
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    issued_listener_tls_paths,
)


def _normalize(item: Mapping[str, Any], default_host: str | None, listener: bool) -> Entry:
    name = validation.object_name(item.get("name"), "name")
    host = item.get("host")
    if host is None:
        host = default_host
    if host is None:
        raise SkiffError("is required when state is present", field="host")
    if item.get("port") is None:
        raise SkiffError("is required when state is present", field="port")
    key = item.get("routing_key")
    keys = item.get("routing_keys")
    entry: Entry = {"name": name}
    if keys is None:
        entry["routing_key"] = validation.routing_key(key if key is not None else name)
    entry["host"] = validation.host(host, "host")
    entry["port"] = validation.port(item["port"], "port")
    tls = item.get("tls")
    if tls is not None:
        entry["tls"] = _tls(name, tls, listener)
    distribution = item.get("distribution")
    strategy = item.get("strategy")
    if not listener:
        for option in ("distribution", "routing_keys", "strategy"):
            if item.get(option) is not None:
                raise SkiffError("is an option of listeners only", field=option)
        return entry
    if keys is not None:
        _multi_key(entry, key, keys, strategy)
    elif strategy not in (None, vocabulary.DEFAULT_STRATEGY):
        raise SkiffError("needs routing_keys (a listener with several keys)", field="strategy")
    # The router's default is left implicit, so entries written before the
    # option existed compare equal and stay unchanged.
    if distribution not in (None, vocabulary.DEFAULT_DISTRIBUTION):
        if distribution not in vocabulary.DISTRIBUTIONS:
            raise SkiffError(
                f"must be one of {', '.join(vocabulary.DISTRIBUTIONS)}, got {distribution!r}",
                field="distribution",
            )
        entry["distribution"] = distribution
    return entry


def _tls(name: str, tls: Mapping[str, Any], listener: bool) -> dict[str, Any]:
    """Paths only (the router reads the files; check-config refuses a missing or
    non-PEM one naming this entry and field): never a key's content. A listener's
    `issue` names the certificate the service CA issues for it (service_tls.py)."""
    given = {k: v for k, v in dict(tls).items() if v is not None}
    issue = bool(given.pop("issue", False))
    names = given.pop("names", None)
    if issue and not listener:
        raise SkiffError("is an option of listeners only", field="tls.issue")
    if not issue:
        if names is not None:
            raise SkiffError(
                "needs tls.issue (names go into an issued certificate)", field="tls.names"
            )
        return given
    if given:
        fields = ", ".join(f"tls.{k}" for k in sorted(given))
        raise SkiffError(
            f"give tls.issue or {fields}, not both (an issued certificate replaces the files)",
            field="tls.issue",
        )
    return issued_listener_tls_paths(name)


def _multi_key(entry: Entry, key: Any, keys: Any, strategy: Any) -> None:
    """A listener with several routing keys: ``routing_keys`` and ``strategy`` checked
    and written as the router reads them (weight and the default strategy implicit)."""
    if key is not None:
        raise SkiffError("give routing_key or routing_keys, not both", field="routing_keys")
    problem = vocabulary.routing_keys_problem(keys)
    if problem is not None:
        raise SkiffError(problem[1], field=problem[0])
    entry["routing_keys"] = [
        {"key": k["key"]}
        if k.get("weight") in (None, vocabulary.DEFAULT_WEIGHT)
        else {"key": k["key"], "weight": k["weight"]}
        for k in keys
    ]
    if strategy not in (None, vocabulary.DEFAULT_STRATEGY):
        if strategy not in vocabulary.STRATEGIES:
            raise SkiffError(
                f"must be one of {', '.join(vocabulary.STRATEGIES)}, got {strategy!r}",
                field="strategy",
            )
        entry["strategy"] = strategy


def _describe(entry: Entry) -> str:
    keys = ", ".join(vocabulary.listener_keys(entry))
    return f"routing key '{keys}', {entry['host']}:{entry['port']}"


def _check_listener_addresses(entries: list[Entry]) -> None:
    """Two listeners that could not both bind: the later one is at fault."""
    for index, entry in enumerate(entries):
        for other in entries[:index]:
            if validation.addresses_overlap(
                entry["host"], entry["port"], str(other.get("host")), int(other.get("port") or 0)
            ):
                raise SkiffError(
                    f"{entry['host']}:{entry['port']} is already used by listener "
                    f"'{other.get('name')}' of this site; choose another host or port",
                    field=f"listener '{entry['name']}': port",
                )


LISTENER = Kind(
    section="listeners",
    noun="listener",
    normalize=lambda item: _normalize(item, vocabulary.DEFAULT_LISTENER_HOST, listener=True),
    describe=_describe,
    check=_check_listener_addresses,
)
CONNECTOR = Kind(
    section="connectors",
    noun="connector",
    normalize=lambda item: _normalize(item, None, listener=False),
    describe=_describe,
)


def listener_verifier(names: list[str]) -> Callable[[dict[str, Any]], str | None]:
    """After the reload: a listener the router could not bind is a failed change."""

    def verify(status: dict[str, Any]) -> str | None:
        for listener in status.get("listeners") or []:
            if listener.get("name") in names and listener.get("state") == "error":
                return (
                    f"listener '{listener.get('name')}': cannot listen on {listener.get('host')}:"
                    f"{listener.get('port')} ({listener.get('error') or 'unknown error'}); "
                    "choose a free port or stop what holds it"
                )
        return None

    return verify


ITEM_FIELDS = (
    "name",
    "routing_key",
    "host",
    "port",
    "distribution",
    "routing_keys",
    "strategy",
    "tls",
    "state",
)


@dataclass(frozen=True)
class ServiceParams:
    """Options of skiff.fleet.listener / skiff.fleet.connector: one item, or `items` and `prune`."""

    site: str
    name: str | None = None
    base_dir: str = DEFAULT_BASE_DIR
    routing_key: str | None = None
    host: str | None = None
    port: int | None = None
    state: str = "present"
    # Listeners only: how new flows pick among the key's connectors.
    distribution: str | None = None
    # Listeners only: several routing keys ({key, weight}) and how new flows pick one.
    routing_keys: tuple[Mapping[str, Any], ...] | None = None
    strategy: str | None = None
    # TLS towards clients (listener: cert, key) or the server (connector: ca, ...): paths.
    tls: Mapping[str, Any] | None = None
    # The list form: every item as above; `prune` removes entries not listed.
    items: tuple[Mapping[str, Any], ...] | None = None
    prune: bool = False

    @classmethod
    def from_module(cls, kind: Kind, params: dict[str, Any]) -> ServiceParams:
        values = {
            k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None
        }
        items = params.get(kind.section)
        if items is not None:
            values["items"] = tuple(
                {k: v for k, v in item.items() if v is not None} for item in items
            )
        if "routing_keys" in values:
            values["routing_keys"] = tuple(values["routing_keys"])
        return cls(**values)

    def wanted(self) -> Wanted:
        if self.items is not None:
            return wanted_from_items(self.items, prune=self.prune)
        item = {k: getattr(self, k) for k in ITEM_FIELDS if getattr(self, k) is not None}
        if self.routing_keys is not None:
            item["routing_keys"] = [dict(k) for k in self.routing_keys]
        return wanted_from_items([item], prune=False)


def listener_certificates(runner: SiteConfigRunner, wanted: Wanted) -> ListenerCertificates:
    """The service CA and the certificates of listeners with `tls.issue` (and those of
    listeners that had one)."""
    return ListenerCertificates(runner.secrets(), runner.site, wanted)


def run_service(kind: Kind, params: ServiceParams, check_mode: bool, **services: Any) -> Result:
    """One listener or connector (`name` ...), or a list of them (`items`), in one change."""
    if params.items is None and params.name is None:
        raise SkiffError(f"name or {kind.section} is required", site=params.site, field=kind.noun)
    wanted = params.wanted()
    present_names = [str(item.get("name")) for item in wanted.present]
    verify = listener_verifier(present_names) if kind is LISTENER and present_names else None
    runner = SiteConfigRunner(params.site, params.base_dir, check_mode=check_mode, **services)
    context = f"{kind.noun} '{params.name}'" if params.items is None else None
    certificates = listener_certificates(runner, wanted) if kind is LISTENER else None
    result = runner.run({kind: wanted}, verify=verify, credentials=certificates, context=context)
    entries = result.values.get("after", {}).get(kind.section, [])
    values: dict[str, Any] = {"changes": result.values.get("changes", [])}
    if certificates is not None and certificates.ca_pem:
        values["service_ca"] = certificates.ca_pem.decode()
    if params.items is None:
        entry = next((e for e in entries if e.get("name") == params.name), None)
        values[kind.noun] = entry if params.state == "present" else None
    else:
        values[kind.section] = entries
    result.values = values
    return result
