"""The agent's config file (``skiff-router kube-agent --config FILE``, JSON).

Written by the platform next to the router config (same ConfigMap). The
router config itself stays the router's: the agent never reads it. Every
error names the field so a bad file is found at start, before any API call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from skiff_router.kube.selector import LabelSelector, SelectorError
from skiff_router.kube.selector import parse as parse_selector

SITE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # as in the router config
NAMESPACE_RE = SITE_RE  # a DNS-1123 label
CONNECTOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # as the modules' names
ANNOUNCE_INTERVAL = 10.0  # docs/design.md: announcements repeated every 10 s
ANNOUNCE_TTL = 30
# What a running agent takes from a changed config file; the rest waits for a restart
# (the platform changes only these between rollouts).
LIVE_FIELDS = ("connectors",)


class AgentConfigError(Exception):
    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))

    def lines(self) -> list[str]:
        return [f"{p}: {m}" for p, m in self.errors]


@dataclass(frozen=True)
class SelectorConnector:
    """A connector whose targets are the ready pods matching ``selector``."""

    name: str
    routing_key: str
    selector: LabelSelector
    port: int


@dataclass(frozen=True)
class Siblings:
    """How this pod's router links to the other router pods of its site (replicas):
    their pod addresses, the link port, the name the server certificate carries and
    the site's sibling client certificate (paths in the router container)."""

    port: int
    server_name: str
    ca: str
    cert: str
    key: str
    next_cert: str = ""  # the certificate that follows ``cert`` (same key), if any


@dataclass(frozen=True)
class AgentConfig:
    site: str
    namespace: str
    overlay: str
    router_admin: str = "http://127.0.0.1:9191"
    # The router's admin token (its admin.token_file, the same Secret): "" when it has none.
    router_admin_token_file: str = ""
    health_host: str = "0.0.0.0"
    health_port: int = 9192
    router_pod_labels: dict[str, str] = field(default_factory=dict)
    proxy_host: str = "0.0.0.0"
    proxy_ports: tuple[int, int] = (20000, 20999)
    expose: bool = True
    connectors: tuple[SelectorConnector, ...] = ()
    siblings: Siblings | None = None
    announce_interval: float = ANNOUNCE_INTERVAL
    ttl: int = ANNOUNCE_TTL


def default_router_pod_labels(site: str) -> dict[str, str]:
    # The Deployment's selector (docs/design.md): what a proxy Service selects.
    return {"app.kubernetes.io/name": "skiff-router", "app.kubernetes.io/instance": site}


def routing_key_problem(value: Any) -> str | None:
    """The modules' rule for routing keys (non-empty, no whitespace), plus a length bound."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if any(c.isspace() for c in value) or not value.isprintable():
        return f"{value!r} must not contain spaces or control characters"
    if len(value) > 200:
        return "must be at most 200 characters"
    return None


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def validate(data: Any) -> AgentConfig:
    errors: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        raise AgentConfigError([("(document)", "must be a mapping")])
    known = {
        "site",
        "namespace",
        "overlay",
        "router_admin",
        "router_admin_token_file",
        "health",
        "router_pod_labels",
        "proxy_host",
        "proxy_ports",
        "expose",
        "connectors",
        "siblings",
        "announce_interval",
        "ttl",
    }
    for key in data:
        if key not in known:
            errors.append((str(key), "unknown key"))
    for key in ("site", "namespace", "overlay"):
        if key not in data:
            errors.append((key, "is required"))

    site = data.get("site", "")
    if "site" in data and (not isinstance(site, str) or not SITE_RE.match(site)):
        errors.append(("site", "must match [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"))
    namespace = data.get("namespace", "")
    if "namespace" in data and (
        not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace)
    ):
        errors.append(("namespace", "must be a DNS-1123 label"))
    overlay = data.get("overlay", "")
    if "overlay" in data and (not isinstance(overlay, str) or not overlay.startswith("/")):
        errors.append(("overlay", "must be an absolute path"))
    admin = data.get("router_admin", "http://127.0.0.1:9191")
    if not isinstance(admin, str) or not re.match(r"^http://[^/\s]+:\d+/?$", admin):
        errors.append(("router_admin", "must be http://HOST:PORT (the router's admin endpoint)"))

    token_file = data.get("router_admin_token_file", "")
    if not isinstance(token_file, str) or (token_file and not token_file.startswith("/")):
        errors.append(("router_admin_token_file", "must be an absolute path"))

    health = data.get("health") or {}
    health_host, health_port = "0.0.0.0", 9192
    if not isinstance(health, dict) or set(health) - {"host", "port"}:
        errors.append(("health", "must be a mapping with host and port"))
    else:
        health_host = health.get("host", health_host)
        health_port = health.get("port", health_port)
        if not isinstance(health_host, str) or not health_host:
            errors.append(("health.host", "must be a non-empty string"))
        if not _port(health_port):
            errors.append(("health.port", "must be an integer 1..65535"))

    labels = data.get("router_pod_labels")
    if labels is None:
        labels = default_router_pod_labels(site if isinstance(site, str) else "")
    elif (
        not isinstance(labels, dict)
        or not labels
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        errors.append(("router_pod_labels", "must be a non-empty mapping of label to value"))

    proxy_host = data.get("proxy_host", "0.0.0.0")
    if not isinstance(proxy_host, str) or not proxy_host:
        errors.append(("proxy_host", "must be a non-empty string"))
    ports = data.get("proxy_ports", {"first": 20000, "last": 20999})
    proxy_ports = (20000, 20999)
    if not isinstance(ports, dict) or set(ports) != {"first", "last"}:
        errors.append(("proxy_ports", "must be a mapping with first and last"))
    elif not _port(ports["first"]) or not _port(ports["last"]):
        errors.append(("proxy_ports", "first and last must be integers 1..65535"))
    elif ports["first"] > ports["last"]:
        errors.append(("proxy_ports", "first must not be greater than last"))
    else:
        proxy_ports = (ports["first"], ports["last"])
        if proxy_ports[0] <= health_port <= proxy_ports[1]:
            errors.append(("proxy_ports", f"must not include the health port {health_port}"))

    expose = data.get("expose", True)
    if not isinstance(expose, bool):
        errors.append(("expose", "must be true or false"))

    interval = data.get("announce_interval", ANNOUNCE_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        errors.append(("announce_interval", "must be a number of seconds > 0"))
    ttl = data.get("ttl", ANNOUNCE_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 3600:
        errors.append(("ttl", "must be an integer number of seconds 1..3600"))
    elif not errors and ttl <= interval:
        errors.append(("ttl", "must be longer than announce_interval"))

    connectors: list[SelectorConnector] = []
    items = data.get("connectors") or []
    if not isinstance(items, list):
        errors.append(("connectors", "must be a list"))
        items = []
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"connectors[{i}]"
        if not isinstance(item, dict):
            errors.append((path, "must be a mapping with name, routing_key, selector and port"))
            continue
        for key in item:
            if key not in ("name", "routing_key", "selector", "port"):
                hint = " (a selector connector has no host: its hosts are the pods)"
                errors.append((f"{path}.{key}", "unknown key" + (hint if key == "host" else "")))
        name = item.get("name")
        if not isinstance(name, str) or not CONNECTOR_NAME_RE.match(name):
            errors.append((f"{path}.name", "must be 1-63 letters, digits, '.', '_' or '-'"))
            name = ""
        elif name in seen:
            errors.append((f"{path}.name", f"duplicate name (also {seen[name]})"))
        else:
            seen[name] = path
        key = item.get("routing_key", name)
        problem = routing_key_problem(key)
        if problem:
            errors.append((f"{path}.routing_key", problem))
        if not _port(item.get("port")):
            errors.append((f"{path}.port", "must be an integer 1..65535"))
        try:
            selector = parse_selector(item.get("selector"), f"{path}.selector")
        except SelectorError as exc:
            errors.append((exc.field, str(exc).split(": ", 1)[1]))
            continue
        if not errors:
            connectors.append(SelectorConnector(name, key, selector, item["port"]))

    siblings = _siblings(data.get("siblings"), errors)

    if errors:
        raise AgentConfigError(errors)
    return AgentConfig(
        site=site,
        namespace=namespace,
        overlay=overlay,
        router_admin=admin.rstrip("/"),
        router_admin_token_file=token_file,
        health_host=health_host,
        health_port=health_port,
        router_pod_labels=dict(labels),
        proxy_host=proxy_host,
        proxy_ports=proxy_ports,
        expose=expose,
        connectors=tuple(connectors),
        siblings=siblings,
        announce_interval=float(interval),
        ttl=ttl,
    )


def _siblings(value: Any, errors: list[tuple[str, str]]) -> Siblings | None:
    if value is None:
        return None
    keys = {"port", "server_name", "ca", "cert", "key"}
    if not isinstance(value, dict) or not keys <= set(value) <= keys | {"next_cert"}:
        errors.append(
            ("siblings", f"must be a mapping with {', '.join(sorted(keys))} (and next_cert)")
        )
        return None
    found = len(errors)
    if not _port(value["port"]):
        errors.append(("siblings.port", "must be an integer 1..65535"))
    if not isinstance(value["server_name"], str) or not value["server_name"]:
        errors.append(("siblings.server_name", "must be a non-empty string"))
    for key in ("ca", "cert", "key", *(["next_cert"] if "next_cert" in value else [])):
        if not isinstance(value[key], str) or not value[key].startswith("/"):
            errors.append((f"siblings.{key}", "must be an absolute path in the router container"))
    if len(errors) > found:
        return None
    return Siblings(**value)


def parse(raw: bytes) -> AgentConfig:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise AgentConfigError([("(document)", f"invalid JSON: {exc}")]) from None
    return validate(data)


def load(path: str | Path) -> AgentConfig:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise AgentConfigError([("(document)", f"cannot read: {exc.strerror or exc}")]) from None
    return parse(raw)


def live_update(running: AgentConfig, new: AgentConfig) -> tuple[AgentConfig, list[str]]:
    """The running config with ``new``'s live fields, and the fields that differ
    but wait for a restart."""
    waiting = [
        f.name
        for f in fields(AgentConfig)
        if f.name not in LIVE_FIELDS and getattr(running, f.name) != getattr(new, f.name)
    ]
    return replace(running, **{name: getattr(new, name) for name in LIVE_FIELDS}), waiting
