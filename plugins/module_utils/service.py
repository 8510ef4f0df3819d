"""Logic of skiff.fleet.listener and skiff.fleet.connector (private to skiff.fleet).

Both edit one entry of a list in `router.json` (`listeners` or `connectors`),
found by name; they differ only in the list, the noun and a few checks, which
`ServiceKind` holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import validation
from ansible_collections.skiff.fleet.plugins.module_utils.apply import ConfigApplier, Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    get_platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    SiteMetadata,
    SitePaths,
    SiteStore,
    canonical_order,
)

PlatformFactory = Callable[[str, SitePaths, SiteMetadata], Platform]


@dataclass(frozen=True)
class ServiceKind:
    section: str
    noun: str
    default_host: str | None
    # Listeners bind: two on one address cannot both work, and a bind error is a failed change.
    binds: bool


DISTRIBUTIONS = ("balanced", "closest")
DEFAULT_DISTRIBUTION = "balanced"

LISTENER = ServiceKind(section="listeners", noun="listener", default_host="127.0.0.1", binds=True)
CONNECTOR = ServiceKind(section="connectors", noun="connector", default_host=None, binds=False)


@dataclass(frozen=True)
class ServiceParams:
    site: str
    name: str
    base_dir: str = DEFAULT_BASE_DIR
    routing_key: str | None = None
    host: str | None = None
    port: int | None = None
    state: str = "present"
    # Listeners only: how new flows pick among the key's connectors.
    distribution: str | None = None

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> ServiceParams:
        return cls(
            **{k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None}
        )


def normalize(kind: ServiceKind, params: ServiceParams) -> dict[str, Any]:
    """The entry as it must appear in router.json."""
    name = validation.object_name(params.name, "name")
    host = params.host if params.host is not None else kind.default_host
    if host is None:
        raise SkiffError("is required when state is present", field="host")
    if params.port is None:
        raise SkiffError("is required when state is present", field="port")
    entry = {
        "name": name,
        "routing_key": validation.routing_key(
            params.routing_key if params.routing_key is not None else name
        ),
        "host": validation.host(host, "host"),
        "port": validation.port(params.port, "port"),
    }
    # The router's default is left implicit, so entries written before the
    # option existed compare equal and stay unchanged.
    if params.distribution not in (None, DEFAULT_DISTRIBUTION):
        if params.distribution not in DISTRIBUTIONS:
            raise SkiffError(
                f"must be one of {', '.join(DISTRIBUTIONS)}, got {params.distribution!r}",
                field="distribution",
            )
        entry["distribution"] = params.distribution
    return entry


def check_conflicts(
    kind: ServiceKind, entry: dict[str, Any], entries: list[dict[str, Any]]
) -> None:
    if not kind.binds:
        return
    for other in entries:
        if other.get("name") == entry["name"]:
            continue
        if validation.addresses_overlap(
            entry["host"], entry["port"], str(other.get("host")), int(other.get("port") or 0)
        ):
            raise SkiffError(
                f"{entry['host']}:{entry['port']} is already used by {kind.noun} "
                f"'{other.get('name')}' of this site; choose another host or port",
                field="port",
            )


def replace_entry(
    entries: list[dict[str, Any]], name: str, entry: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The list with `name` replaced in place (or appended, or removed when entry is None)."""
    out, placed = [], False
    for item in entries:
        if item.get("name") == name:
            if entry is not None and not placed:
                out.append(entry)
                placed = True
            continue
        out.append(item)
    if entry is not None and not placed:
        out.append(entry)
    return out


def listener_verifier(name: str) -> Callable[[dict[str, Any]], str | None]:
    def verify(status: dict[str, Any]) -> str | None:
        for listener in status.get("listeners") or []:
            if listener.get("name") == name and listener.get("state") == "error":
                return (
                    f"cannot listen on {listener.get('host')}:"
                    f"{listener.get('port')} ({listener.get('error') or 'unknown error'}); "
                    "choose a free port or stop what holds it"
                )
        return None

    return verify


class ServiceRunner:
    def __init__(
        self,
        kind: ServiceKind,
        params: ServiceParams,
        *,
        check_mode: bool,
        platform_factory: PlatformFactory = get_platform,
        wait: Callable[..., dict[str, Any]] = wait_for_config,
    ):
        self.kind = kind
        self.params = params
        self.check_mode = check_mode
        self.platform_factory = platform_factory
        self.wait = wait
        self.store = SiteStore.open(params.base_dir, params.site)

    def run(self) -> Result:
        try:
            return self._run()
        except SkiffError as exc:
            field = f"{self.kind.noun} '{self.params.name}'"
            raise exc.with_context(site=self.params.site, field=field) from None

    def _run(self) -> Result:
        kind, params, result = self.kind, self.params, Result()
        entry = normalize(kind, params) if params.state == "present" else None
        if entry is None:
            validation.object_name(params.name, "name")
        result.values = {kind.noun: entry}

        if not self.store.exists():
            if self.check_mode and entry is not None:
                # A check run of a whole play: the site task before this one did not create it.
                result.act(f"add {kind.noun} '{params.name}' (site does not exist yet)")
                result.diff = {"before": {kind.section: []}, "after": {kind.section: [entry]}}
                return result
            if entry is None:
                return result
            self.store.require()

        metadata = self.store.read_metadata()
        config = self.store.read_config()
        entries = list(config.get(kind.section) or [])
        current = next((e for e in entries if e.get("name") == params.name), None)
        if entry is not None:
            check_conflicts(kind, entry, entries)
        new_entries = replace_entry(entries, params.name, entry)
        result.diff = {"before": {kind.section: entries}, "after": {kind.section: new_entries}}
        if current == entry:
            return result
        if entry is None:
            result.act(f"remove {kind.noun} '{params.name}'")
        elif current is None:
            result.act(f"add {kind.noun} '{params.name}' ({self._describe(entry)})")
        else:
            result.act(f"update {kind.noun} '{params.name}' ({self._describe(entry)})")

        new_config = dict(config)
        if new_entries:
            new_config[kind.section] = new_entries
        else:
            new_config.pop(kind.section, None)
        platform = self.platform_factory(metadata.platform, self.store.paths, metadata)
        if platform.is_running():
            result.note("reload the router")
        if self.check_mode:
            return result
        verify = listener_verifier(params.name) if kind.binds and entry else None
        ConfigApplier(self.store, platform, wait=self.wait).apply(
            canonical_order(new_config), result, verify=verify
        )
        return result

    @staticmethod
    def _describe(entry: dict[str, Any]) -> str:
        return f"routing key '{entry['routing_key']}', {entry['host']}:{entry['port']}"


def run_service(
    kind: ServiceKind, params: ServiceParams, check_mode: bool, **services: Any
) -> Result:
    return ServiceRunner(kind, params, check_mode=check_mode, **services).run()
