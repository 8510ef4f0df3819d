"""Router configuration: load JSON or YAML, validate into frozen dataclasses.

Every error names the field path (``listeners[1].port``) so a typo in a
generated config is found by ``check-config`` before a router runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # PyYAML is optional: JSON configs (what skiff writes) need nothing
    yaml = None  # type: ignore[assignment]

SITE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("interior", "edge")
DISTRIBUTIONS = ("balanced", "closest")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class Admin:
    host: str = "127.0.0.1"
    port: int = 9191


@dataclass(frozen=True)
class LinkAccess:
    host: str
    port: int
    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class LinkConfig:
    name: str
    peer: str
    cost: int
    endpoints: tuple[Endpoint, ...]
    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    routing_key: str
    host: str
    port: int
    distribution: str = "balanced"


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    routing_key: str
    host: str
    port: int


@dataclass(frozen=True)
class Config:
    site: str
    log_level: str = "info"
    mode: str = "interior"
    admin: Admin = Admin()
    link_access: LinkAccess | None = None
    links: tuple[LinkConfig, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
    connectors: tuple[ConnectorConfig, ...] = ()


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config together with where it came from."""

    config: Config
    path: str
    sha256: str


class ConfigError(Exception):
    """Invalid configuration; ``errors`` holds (field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))

    def lines(self) -> list[str]:
        return [f"{p}: {m}" for p, m in self.errors]


class _Checker:
    """Collects errors instead of stopping at the first one."""

    def __init__(self, base_dir: Path) -> None:
        self.errors: list[tuple[str, str]] = []
        self.base_dir = base_dir

    def err(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))

    def obj(self, value: Any, path: str, required: set[str], optional: set[str]) -> dict | None:
        if not isinstance(value, dict):
            self.err(path, "must be a mapping")
            return None
        for key in value:
            if not isinstance(key, str) or key not in required | optional:
                self.err(_join(path, str(key)), "unknown key")
        for key in sorted(required):
            if key not in value:
                self.err(_join(path, key), "is required")
        return value

    def string(self, d: dict, key: str, path: str, default: str | None = None) -> str:
        p = _join(path, key)
        if key not in d:
            return default if default is not None else ""
        v = d[key]
        if not isinstance(v, str) or not v:
            self.err(p, "must be a non-empty string")
            return ""
        return v

    def port(self, d: dict, key: str, path: str, default: int | None = None) -> int:
        p = _join(path, key)
        if key not in d:
            return default if default is not None else 0
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            self.err(p, "must be an integer 1..65535")
            return 0
        return v

    def file(self, d: dict, key: str, path: str) -> str:
        v = self.string(d, key, path)
        if not v:
            return ""
        # Relative paths are relative to the directory holding the config file.
        return os.path.normpath(self.base_dir / Path(v).expanduser())

    def items(self, value: Any, path: str) -> list[tuple[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.err(path, "must be a list")
            return []
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def validate(data: Any, base_dir: str | Path = ".") -> Config:
    """Validate parsed config data; raise ConfigError listing every problem."""
    c = _Checker(Path(base_dir))
    top = c.obj(
        data,
        "",
        {"site"},
        {"log_level", "mode", "admin", "link_access", "links", "listeners", "connectors"},
    )
    if top is None:
        c.errors = [("(document)", "must be a mapping")]
        raise ConfigError(c.errors)

    site = c.string(top, "site", "")
    if site and not SITE_RE.match(site):
        c.err("site", "must match [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

    log_level = "info"
    if "log_level" in top:
        v = top["log_level"]
        if v not in LOG_LEVELS:
            c.err("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        else:
            log_level = v

    mode = "interior"
    if "mode" in top:
        if top["mode"] not in MODES:
            c.err("mode", f"must be one of {', '.join(MODES)}")
        else:
            mode = top["mode"]

    admin = Admin()
    if top.get("admin") is not None:
        d = c.obj(top["admin"], "admin", set(), {"host", "port"})
        if d is not None:
            admin = Admin(
                host=c.string(d, "host", "admin", "127.0.0.1"),
                port=c.port(d, "port", "admin", 9191),
            )

    link_access = None
    if top.get("link_access") is not None:
        keys = {"host", "port", "ca", "cert", "key"}
        d = c.obj(top["link_access"], "link_access", keys, set())
        if d is not None:
            link_access = LinkAccess(
                host=c.string(d, "host", "link_access"),
                port=c.port(d, "port", "link_access"),
                ca=c.file(d, "ca", "link_access"),
                cert=c.file(d, "cert", "link_access"),
                key=c.file(d, "key", "link_access"),
            )

    links: list[LinkConfig] = []
    for path, item in c.items(top.get("links"), "links"):
        d = c.obj(item, path, {"name", "peer", "endpoints", "ca", "cert", "key"}, {"cost"})
        if d is None:
            continue
        peer = c.string(d, "peer", path)
        if peer and not SITE_RE.match(peer):
            c.err(f"{path}.peer", "must be a valid site name")
        cost = d.get("cost", 1)
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= 1_000_000:
            c.err(f"{path}.cost", "must be an integer >= 1")
            cost = 1
        endpoints: list[Endpoint] = []
        eps = d.get("endpoints")
        if "endpoints" in d and (not isinstance(eps, list) or not eps):
            c.err(f"{path}.endpoints", "must be a non-empty list")
        else:
            for epath, ep in c.items(eps, f"{path}.endpoints"):
                e = c.obj(ep, epath, {"host", "port"}, set())
                if e is not None:
                    endpoints.append(Endpoint(c.string(e, "host", epath), c.port(e, "port", epath)))
        links.append(
            LinkConfig(
                name=c.string(d, "name", path),
                peer=peer,
                cost=cost,
                endpoints=tuple(endpoints),
                ca=c.file(d, "ca", path),
                cert=c.file(d, "cert", path),
                key=c.file(d, "key", path),
            )
        )
    _unique(c, "links", [(f"links[{i}].name", lk.name) for i, lk in enumerate(links)])

    listeners: list[ListenerConfig] = []
    for path, item in c.items(top.get("listeners"), "listeners"):
        d = c.obj(item, path, {"name", "routing_key", "host", "port"}, {"distribution"})
        if d is not None:
            dist = d.get("distribution", "balanced")
            if dist not in DISTRIBUTIONS:
                c.err(f"{path}.distribution", f"must be one of {', '.join(DISTRIBUTIONS)}")
                dist = "balanced"
            listeners.append(
                ListenerConfig(
                    name=c.string(d, "name", path),
                    routing_key=c.string(d, "routing_key", path),
                    host=c.string(d, "host", path),
                    port=c.port(d, "port", path),
                    distribution=dist,
                )
            )
    _unique(c, "listeners", [(f"listeners[{i}].name", x.name) for i, x in enumerate(listeners)])
    _unique(
        c,
        "listeners",
        [(f"listeners[{i}].port", (x.host, x.port)) for i, x in enumerate(listeners)],
        what="host and port",
    )

    connectors: list[ConnectorConfig] = []
    for path, item in c.items(top.get("connectors"), "connectors"):
        d = c.obj(item, path, {"name", "routing_key", "host", "port"}, set())
        if d is not None:
            connectors.append(
                ConnectorConfig(
                    name=c.string(d, "name", path),
                    routing_key=c.string(d, "routing_key", path),
                    host=c.string(d, "host", path),
                    port=c.port(d, "port", path),
                )
            )
    _unique(c, "connectors", [(f"connectors[{i}].name", x.name) for i, x in enumerate(connectors)])

    if c.errors:
        raise ConfigError(c.errors)
    return Config(
        site=site,
        log_level=log_level,
        mode=mode,
        admin=admin,
        link_access=link_access,
        links=tuple(links),
        listeners=tuple(listeners),
        connectors=tuple(connectors),
    )


def _unique(c: _Checker, what_list: str, values: list[tuple[str, Any]], what: str = "name") -> None:
    seen: dict[Any, str] = {}
    for path, value in values:
        if value in ("", ("", 0)) or (isinstance(value, tuple) and 0 in value):
            continue  # already reported as invalid
        if value in seen:
            c.err(path, f"duplicate {what} in {what_list} (also {seen[value]})")
        else:
            seen[value] = path


def parse(text: bytes, filename: str) -> Any:
    """Parse JSON (``.json`` files) or YAML (anything else)."""
    if not filename.endswith(".json") and yaml is None:
        raise ConfigError([("(document)", "YAML configs need PyYAML; install it or use JSON")])
    try:
        if filename.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, getattr(yaml, "YAMLError", ValueError)) as exc:
        kind = "JSON" if filename.endswith(".json") else "YAML"
        # The first line of the parser message is enough; it never quotes secrets
        # because key files are referenced by path, not embedded.
        raise ConfigError([("(document)", f"invalid {kind}: {str(exc).splitlines()[0]}")]) from None


def load(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a config file."""
    p = Path(path).expanduser().resolve()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([("(document)", f"cannot read: {exc.strerror or exc}")]) from None
    config = validate(parse(raw, p.name), p.parent)
    return LoadedConfig(config=config, path=str(p), sha256=hashlib.sha256(raw).hexdigest())
