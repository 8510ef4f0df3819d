"""Router configuration: load JSON or YAML, validate into frozen dataclasses.

Every error names the field path (``listeners[1].port``) so a typo in a
generated config is found by ``check-config`` before a router runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from skiff_router.grants import Grant

try:
    import yaml
except ImportError:  # PyYAML is optional: JSON configs (what skiff writes) need nothing
    yaml = None  # type: ignore[assignment]

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
SITE_RE = re.compile(rf"^{_LABEL}$")
# A router id is a site name, or a site name, one dot and a replica suffix
# ("east.7f9c2"): two routers of one site (replicas) announce distinct ids.
ROUTER_ID_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})?$")
# On the wire a router id may also name a worker process of that router
# ("east/w1", workers.py): worker 0 keeps the router's own id.
WIRE_ROUTER_ID_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})?(/w[1-9][0-9]?)?$")
MAX_WORKERS = 64


def worker_router_id(router_id: str, index: int) -> str:
    """The id of worker ``index`` of a router (worker 0 is the router's own id)."""
    return router_id if index == 0 else f"{router_id}/w{index}"


def router_of_worker(router_id: str) -> str:
    """The router a worker's id belongs to (a router's own id is itself)."""
    return router_id.partition("/")[0]


# A replica's router id comes from its environment when the shared config names
# none: a Kubernetes Deployment sets the pod name here (the downward API).
ROUTER_ID_SUFFIX_ENV = "SKIFF_ROUTER_ID_SUFFIX"


def router_of_site(router_id: str, site: str) -> bool:
    """A router id names its site: the site itself, or ``<site>.<suffix>`` (either
    with a worker's ``/w<k>``)."""
    base = router_of_worker(router_id)
    return base == site or base.startswith(site + ".")


LOG_LEVELS = ("debug", "info", "warning", "error")


class Mode(StrEnum):
    """A router's role in the network (docs/design.md, ``mode``)."""

    INTERIOR = "interior"  # takes part in routing, forwards transit traffic
    EDGE = "edge"  # hangs off interiors, advertised by them, never transit


class Distribution(StrEnum):
    """How a listener's new flows pick a connector site."""

    BALANCED = "balanced"  # least (path cost + flows outstanding), ties round-robin
    CLOSEST = "closest"  # least path cost, ties round-robin


class Strategy(StrEnum):
    """How a multi-key listener picks the routing key of a new flow."""

    PRIORITY = "priority"  # the first key with a reachable connector
    WEIGHTED = "weighted"  # spread by weight over the keys with a reachable connector


MODES = tuple(m.value for m in Mode)
DISTRIBUTIONS = tuple(d.value for d in Distribution)
STRATEGIES = tuple(s.value for s in Strategy)
MAX_WEIGHT = 1000
# Every routing key a router serves or listens for goes into its link-state
# updates: a key, and all of them together, are bounded so an update always fits
# a frame (a 70,000-byte key used to break every link at the next change).
MAX_ROUTING_KEY = 253
MAX_ROUTING_KEYS_BYTES = 48 * 1024


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    # The name the server certificate must carry, when ``host`` is an address it
    # does not name (a sibling replica dialed at its pod address).
    server_name: str | None = None


@dataclass(frozen=True)
class Admin:
    host: str = "127.0.0.1"
    port: int = 9191
    # A file holding the bearer token every endpoint but health, readiness, metrics and
    # the console page asks for (read_admin_token). None: those endpoints are open.
    token_file: str | None = None


ADMIN_TOKEN_MIN_LENGTH = 16


class AdminTokenError(Exception):
    """The admin token file is missing, too short or readable by others. The message
    names the file, never its content."""


def read_admin_token(path: str) -> str:
    """The token in ``path``: at least ADMIN_TOKEN_MIN_LENGTH characters, in a file
    that others may not read (like an SSH key), nor its group unless that is the
    router's own group (a Kubernetes Secret volume: root's file, the pod's fsGroup)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(4096)
    except OSError as exc:
        raise AdminTokenError(f"admin token file {path}: {exc.strerror}") from None
    mode = st.st_mode
    loose = 0o007 if st.st_gid == os.getgid() else 0o077
    if mode & loose:
        raise AdminTokenError(
            f"admin token file {path} is mode {mode & 0o777:04o}: others may read it; chmod 0600"
        )
    token = raw.decode("utf-8", "replace").strip()
    if len(token) < ADMIN_TOKEN_MIN_LENGTH:
        raise AdminTokenError(
            f"admin token file {path} holds fewer than {ADMIN_TOKEN_MIN_LENGTH} characters"
        )
    return token


@dataclass(frozen=True)
class FlowTimeouts:
    """Seconds after which a flow is closed (0 = never): one side closed and the other
    still open (``half_closed``), or no byte either way (``idle``). Without them a
    server that never closes keeps every finished client's flow and socket."""

    half_closed: int = 60
    idle: int = 3600


MAX_FLOW_TIMEOUT = 7 * 24 * 3600


@dataclass(frozen=True)
class LinkAccess:
    host: str
    port: int
    ca: str
    cert: str
    key: str
    # The client certificate the site's own replicas link to each other with: it
    # is accepted beside ``link_clients`` (every replica holds it already), and so
    # is the one that follows it (the replicas renew their links with it).
    sibling_cert: str | None = None
    sibling_next_cert: str | None = None


@dataclass(frozen=True)
class LinkClient:
    """A client certificate this site issued (a token) and still accepts on its links:
    its SHA-256 fingerprint, and until when (unix seconds; None = its own expiry).
    A re-issued token's previous certificate gets a ``not_after`` so the dialing site
    keeps its link until it has the new one."""

    name: str
    sha256: str
    not_after: int | None = None
    # Routers that may hold a link with it at once (credentials.py): the dialing
    # site's replicas, and one more for a rollout's extra pod.
    routers: int = 1
    # A one-time grant (grants.py): redeemed by the first sites that link with it.
    grant: Grant | None = None

    def accepts(self, fingerprint: str, now: float) -> bool:
        return self.sha256 == fingerprint and (self.not_after is None or now < self.not_after)


SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_CREDENTIAL_ROUTERS = 64
MAX_GRANT_REDEMPTIONS = 100


@dataclass(frozen=True)
class LinkConfig:
    name: str
    peer: str
    cost: int
    endpoints: tuple[Endpoint, ...]
    ca: str
    cert: str
    key: str
    # The certificate that follows ``cert`` (same key, valid from shortly before
    # ``cert`` expires): the dialer switches to it on its own, make before break.
    next_cert: str | None = None


@dataclass(frozen=True)
class ListenerTls:
    """A listener terminates TLS towards its clients with this certificate and key."""

    cert: str
    key: str
    # The certificate that follows ``cert`` (same key): loaded in its place once valid.
    next_cert: str | None = None


@dataclass(frozen=True)
class ConnectorTls:
    """A connector originates TLS to its server, verified against ``ca`` and
    ``server_name`` (default: the connector's host), with an optional client cert."""

    ca: str
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class KeyWeight:
    key: str
    weight: int = 1


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    routing_key: str  # a multi-key listener: its first key
    host: str
    port: int
    distribution: Distribution = Distribution.BALANCED
    # A multi-key listener's keys in order (``routing_keys`` in the file); () = one key.
    routing_keys: tuple[KeyWeight, ...] = ()
    strategy: Strategy = Strategy.PRIORITY
    tls: ListenerTls | None = None

    def key_names(self) -> tuple[str, ...]:
        """Every routing key this listener may send a flow to, in order."""
        if self.routing_keys:
            return tuple(k.key for k in self.routing_keys)
        return (self.routing_key,)


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    routing_key: str
    host: str
    port: int
    tls: ConnectorTls | None = None


@dataclass(frozen=True)
class Config:
    site: str
    router_id: str = ""  # names this router in the network; "" = the site name
    log_level: str = "info"
    mode: Mode = Mode.INTERIOR
    admin: Admin = Admin()
    flow_timeouts: FlowTimeouts = FlowTimeouts()
    link_access: LinkAccess | None = None
    # None: any client certificate the site CA signed links here (routers run by hand);
    # a tuple: only these, so deleting a token revokes its certificate.
    link_clients: tuple[LinkClient, ...] | None = None
    links: tuple[LinkConfig, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
    connectors: tuple[ConnectorConfig, ...] = ()
    overlay: str | None = None  # path of the overlay file (extra listeners, connectors, links)
    workers: int | None = None  # worker processes; None: one per CPU this router may use
    # Where the router keeps what it must remember across restarts (the grants'
    # redemptions); None: nowhere, so no grant may be accepted.
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.router_id:
            object.__setattr__(self, "router_id", self.site)


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

    def seconds(self, d: dict, key: str, path: str, default: int) -> int:
        if key not in d:
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_FLOW_TIMEOUT:
            self.err(_join(path, key), f"must be whole seconds, 0 (never) to {MAX_FLOW_TIMEOUT}")
            return default
        return v

    def routing_key(self, d: dict, key: str, path: str) -> str:
        p = _join(path, key)
        if key not in d:
            return ""
        v = d[key]
        if not isinstance(v, str) or not v.strip():
            self.err(p, "must be a non-empty string")
            return ""
        if any(ch.isspace() for ch in v) or not v.isprintable():
            self.err(p, "must not contain spaces or control characters")
            return ""
        size = len(v.encode("utf-8", "replace"))
        if size > MAX_ROUTING_KEY:
            self.err(p, f"is {size} bytes long; at most {MAX_ROUTING_KEY} (UTF-8)")
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


def validate(data: Any, base_dir: str | Path = ".", router_id_suffix: str | None = None) -> Config:
    """Validate parsed config data; raise ConfigError listing every problem.
    ``router_id_suffix`` (a replica's, from its environment) makes the router id
    ``<site>.<suffix>`` when the config names none."""
    c = _Checker(Path(base_dir))
    top = c.obj(
        data,
        "",
        {"site"},
        {
            "router_id",
            "log_level",
            "mode",
            "admin",
            "flow_timeouts",
            "link_access",
            "link_clients",
            "links",
            "listeners",
            "connectors",
            "overlay",
            "workers",
            "state_dir",
        },
    )
    if top is None:
        c.errors = [("(document)", "must be a mapping")]
        raise ConfigError(c.errors)

    site = c.string(top, "site", "")
    if site and not SITE_RE.match(site):
        c.err("site", "must match [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

    router_id = c.string(top, "router_id", "", site)
    valid_id = bool(ROUTER_ID_RE.match(router_id)) and router_of_site(router_id, site)
    if "router_id" in top and router_id and not valid_id:
        c.err("router_id", "must be the site name or '<site>.<suffix>' (suffix like a site name)")
    elif "router_id" not in top and router_id_suffix and site:
        router_id = f"{site}.{router_id_suffix}"
        if not ROUTER_ID_RE.match(router_id):
            c.err(
                "router_id",
                f"{site}.{router_id_suffix} (from ${ROUTER_ID_SUFFIX_ENV}) is not a valid "
                "router id: the suffix must be like a site name",
            )

    log_level = "info"
    if "log_level" in top:
        v = top["log_level"]
        if v not in LOG_LEVELS:
            c.err("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        else:
            log_level = v

    mode = Mode.INTERIOR
    if "mode" in top:
        if top["mode"] not in MODES:
            c.err("mode", f"must be one of {', '.join(MODES)}")
        else:
            mode = Mode(top["mode"])

    admin = Admin()
    if top.get("admin") is not None:
        d = c.obj(top["admin"], "admin", set(), {"host", "port", "token_file"})
        if d is not None:
            admin = Admin(
                host=c.string(d, "host", "admin", "127.0.0.1"),
                port=c.port(d, "port", "admin", 9191),
                token_file=c.file(d, "token_file", "admin") or None,
            )

    flow_timeouts = FlowTimeouts()
    if top.get("flow_timeouts") is not None:
        d = c.obj(top["flow_timeouts"], "flow_timeouts", set(), {"half_closed", "idle"})
        if d is not None:
            flow_timeouts = FlowTimeouts(
                half_closed=c.seconds(d, "half_closed", "flow_timeouts", FlowTimeouts.half_closed),
                idle=c.seconds(d, "idle", "flow_timeouts", FlowTimeouts.idle),
            )

    link_access = None
    if top.get("link_access") is not None:
        keys = {"host", "port", "ca", "cert", "key"}
        d = c.obj(top["link_access"], "link_access", keys, {"sibling_cert", "sibling_next_cert"})
        if d is not None:
            link_access = LinkAccess(
                host=c.string(d, "host", "link_access"),
                port=c.port(d, "port", "link_access"),
                ca=c.file(d, "ca", "link_access"),
                cert=c.file(d, "cert", "link_access"),
                key=c.file(d, "key", "link_access"),
                sibling_cert=c.file(d, "sibling_cert", "link_access") or None,
                sibling_next_cert=c.file(d, "sibling_next_cert", "link_access") or None,
            )

    workers = None
    if top.get("workers") is not None:
        v = top["workers"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WORKERS:
            c.err(
                "workers",
                f"must be a whole number from 1 to {MAX_WORKERS} (or absent: one per CPU)",
            )
        else:
            workers = v

    link_clients = _link_clients(c, top["link_clients"]) if "link_clients" in top else None
    state_dir = c.file(top, "state_dir", "") if top.get("state_dir") is not None else None
    for i, client in enumerate(link_clients or ()):
        if client.grant is not None and not state_dir:
            c.err(
                f"link_clients[{i}].grant",
                "a grant needs state_dir (a directory the router may write), where its "
                "redemptions are kept across restarts",
            )
    overlay = c.file(top, "overlay", "") if top.get("overlay") is not None else None
    links = _links(c, top.get("links"))
    listeners = _listeners(c, top.get("listeners"))
    connectors = _connectors(c, top.get("connectors"))
    _key_budget(c, listeners, connectors)
    if c.errors:
        raise ConfigError(c.errors)
    return Config(
        site=site,
        router_id=router_id,
        log_level=log_level,
        mode=mode,
        admin=admin,
        flow_timeouts=flow_timeouts,
        link_access=link_access,
        link_clients=link_clients,
        links=links,
        listeners=listeners,
        connectors=connectors,
        workers=workers,
        overlay=overlay or None,
        state_dir=state_dir or None,
    )


def _link_clients(c: _Checker, value: Any) -> tuple[LinkClient, ...]:
    out: list[LinkClient] = []
    for path, item in c.items(value, "link_clients"):
        d = c.obj(item, path, {"name", "sha256"}, {"not_after", "routers", "grant"})
        if d is None:
            continue
        sha = d.get("sha256")
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            c.err(f"{path}.sha256", "must be 64 lowercase hex digits (the certificate's SHA-256)")
            continue
        not_after = d.get("not_after")
        if not_after is not None and (
            isinstance(not_after, bool) or not isinstance(not_after, int)
        ):
            c.err(f"{path}.not_after", "must be unix seconds (an integer)")
            continue
        routers = d.get("routers", 1)
        if isinstance(routers, bool) or not isinstance(routers, int):
            routers = 0
        if not 1 <= routers <= MAX_CREDENTIAL_ROUTERS:
            c.err(
                f"{path}.routers",
                f"must be an integer 1..{MAX_CREDENTIAL_ROUTERS} (routers that may link "
                "with this certificate at once)",
            )
            continue
        grant = _grant(c, d["grant"], f"{path}.grant") if "grant" in d else None
        out.append(LinkClient(c.string(d, "name", path), sha, not_after, routers, grant))
    return tuple(out)


def _grant(c: _Checker, value: Any, path: str) -> Grant | None:
    d = c.obj(value, path, {"redeem_by", "redemptions"}, set())
    if d is None:
        return None
    redeem_by, redemptions = d.get("redeem_by"), d.get("redemptions")
    if isinstance(redeem_by, bool) or not isinstance(redeem_by, int) or redeem_by < 0:
        c.err(f"{path}.redeem_by", "must be unix seconds (an integer): the end of its window")
        return None
    if (
        isinstance(redemptions, bool)
        or not isinstance(redemptions, int)
        or not 1 <= redemptions <= MAX_GRANT_REDEMPTIONS
    ):
        c.err(
            f"{path}.redemptions",
            f"must be an integer 1..{MAX_GRANT_REDEMPTIONS} (sites that may redeem it)",
        )
        return None
    return Grant(redeem_by, redemptions)


# -- the three lists (the config's, and the overlay's in the same schema) ------------------


def _links(c: _Checker, value: Any) -> tuple[LinkConfig, ...]:
    links: list[LinkConfig] = []
    for path, item in c.items(value, "links"):
        d = c.obj(
            item, path, {"name", "peer", "endpoints", "ca", "cert", "key"}, {"cost", "next_cert"}
        )
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
                e = c.obj(ep, epath, {"host", "port"}, {"server_name"})
                if e is not None:
                    endpoints.append(
                        Endpoint(
                            c.string(e, "host", epath),
                            c.port(e, "port", epath),
                            c.string(e, "server_name", epath) if "server_name" in e else None,
                        )
                    )
        links.append(
            LinkConfig(
                name=c.string(d, "name", path),
                peer=peer,
                cost=cost,
                endpoints=tuple(endpoints),
                ca=c.file(d, "ca", path),
                cert=c.file(d, "cert", path),
                key=c.file(d, "key", path),
                next_cert=c.file(d, "next_cert", path) or None,
            )
        )
    _unique(c, "links", [(f"links[{i}].name", lk.name) for i, lk in enumerate(links)])
    return tuple(links)


def _listeners(c: _Checker, value: Any) -> tuple[ListenerConfig, ...]:
    listeners: list[ListenerConfig] = []
    for path, item in c.items(value, "listeners"):
        d = c.obj(
            item,
            path,
            {"name", "host", "port"},
            {"routing_key", "routing_keys", "strategy", "distribution", "tls"},
        )
        if d is not None:
            dist = d.get("distribution", Distribution.BALANCED.value)
            if dist not in DISTRIBUTIONS:
                c.err(f"{path}.distribution", f"must be one of {', '.join(DISTRIBUTIONS)}")
                dist = Distribution.BALANCED.value
            keys, strategy = _listener_keys(c, d, path)
            listeners.append(
                ListenerConfig(
                    name=c.string(d, "name", path),
                    routing_key=keys[0].key if keys else c.routing_key(d, "routing_key", path),
                    host=c.string(d, "host", path),
                    port=c.port(d, "port", path),
                    distribution=Distribution(dist),
                    routing_keys=keys,
                    strategy=strategy,
                    tls=_listener_tls(c, d, path),
                )
            )
    _unique(c, "listeners", [(f"listeners[{i}].name", x.name) for i, x in enumerate(listeners)])
    _unique(
        c,
        "listeners",
        [(f"listeners[{i}].port", (x.host, x.port)) for i, x in enumerate(listeners)],
        what="host and port",
    )
    return tuple(listeners)


def _pem_file(c: _Checker, d: dict, key: str, path: str, what: str, owner: str) -> str:
    """A TLS file named in the config: readable, and holding a PEM ``what``
    (CERTIFICATE or PRIVATE KEY). Messages name the owner and the field, never
    the file's content."""
    p = c.file(d, key, path)
    if not p:
        return ""
    try:
        text = Path(p).read_bytes()
    except OSError as exc:
        c.err(f"{path}.{key}", f"{owner}: cannot read {p}: {exc.strerror or exc}")
        return p
    if f"-----BEGIN {what}".encode() not in text and not (
        what == "PRIVATE KEY" and b"PRIVATE KEY-----" in text
    ):
        noun = "certificate" if what == "CERTIFICATE" else "private key"
        c.err(f"{path}.{key}", f"{owner}: {p} is not a PEM {noun}")
    return p


def _listener_tls(c: _Checker, d: dict, path: str) -> ListenerTls | None:
    if d.get("tls") is None:
        return None
    tpath = f"{path}.tls"
    t = c.obj(d["tls"], tpath, {"cert", "key"}, {"next_cert"})
    if t is None:
        return None
    owner = f"listener {d.get('name')!r}"
    following = (
        _pem_file(c, t, "next_cert", tpath, "CERTIFICATE", owner) if "next_cert" in t else ""
    )
    return ListenerTls(
        cert=_pem_file(c, t, "cert", tpath, "CERTIFICATE", owner),
        key=_pem_file(c, t, "key", tpath, "PRIVATE KEY", owner),
        next_cert=following or None,
    )


def _connector_tls(c: _Checker, d: dict, path: str) -> ConnectorTls | None:
    if d.get("tls") is None:
        return None
    tpath = f"{path}.tls"
    t = c.obj(d["tls"], tpath, {"ca"}, {"server_name", "cert", "key"})
    if t is None:
        return None
    owner = f"connector {d.get('name')!r}"
    if ("cert" in t) != ("key" in t):
        c.err(f"{tpath}.cert", f"{owner}: a client certificate needs both cert and key")
    return ConnectorTls(
        ca=_pem_file(c, t, "ca", tpath, "CERTIFICATE", owner),
        server_name=c.string(t, "server_name", tpath) or None,
        cert=_pem_file(c, t, "cert", tpath, "CERTIFICATE", owner) or None,
        key=_pem_file(c, t, "key", tpath, "PRIVATE KEY", owner) or None,
    )


def _listener_keys(c: _Checker, d: dict, path: str) -> tuple[tuple[KeyWeight, ...], Strategy]:
    """A listener's ``routing_keys`` and ``strategy`` (multi-key), or ((), default)."""
    strategy = Strategy.PRIORITY
    if "strategy" in d:
        if d["strategy"] not in STRATEGIES:
            c.err(f"{path}.strategy", f"must be one of {', '.join(STRATEGIES)}")
        else:
            strategy = Strategy(d["strategy"])
    if "routing_keys" not in d:
        if "routing_key" not in d:
            c.err(f"{path}.routing_key", "is required (or routing_keys)")
        elif "strategy" in d:
            c.err(f"{path}.strategy", "needs routing_keys (a listener with several keys)")
        return (), strategy
    kpath = f"{path}.routing_keys"
    if "routing_key" in d:
        c.err(kpath, "give routing_key or routing_keys, not both")
    value = d["routing_keys"]
    if not isinstance(value, list) or not value:
        c.err(kpath, "must be a non-empty list of {key, weight}")
        return (), strategy
    keys: list[KeyWeight] = []
    seen: dict[str, str] = {}
    for ipath, item in c.items(value, kpath):
        e = c.obj(item, ipath, {"key"}, {"weight"})
        if e is None:
            continue
        key = c.routing_key(e, "key", ipath)
        weight = e.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            c.err(f"{ipath}.weight", f"must be a positive integer (1..{MAX_WEIGHT})")
            weight = 1
        if key in seen:
            c.err(f"{ipath}.key", f"duplicate key {key!r} in routing_keys (also {seen[key]})")
        elif key:
            seen[key] = ipath
            keys.append(KeyWeight(key, weight))
    return tuple(keys), strategy


def _key_budget(
    c: _Checker, listeners: tuple[ListenerConfig, ...], connectors: tuple[ConnectorConfig, ...]
) -> None:
    keys = {k for x in listeners for k in x.key_names()} | {x.routing_key for x in connectors}
    size = sum(len(k.encode("utf-8", "replace")) for k in keys)
    if size > MAX_ROUTING_KEYS_BYTES:
        c.err(
            "listeners",
            f"the routing keys of listeners and connectors take {size} bytes of link state; "
            f"at most {MAX_ROUTING_KEYS_BYTES}: use shorter keys or fewer of them",
        )


def _connectors(c: _Checker, value: Any) -> tuple[ConnectorConfig, ...]:
    connectors: list[ConnectorConfig] = []
    for path, item in c.items(value, "connectors"):
        d = c.obj(item, path, {"name", "routing_key", "host", "port"}, {"tls"})
        if d is not None:
            connectors.append(
                ConnectorConfig(
                    name=c.string(d, "name", path),
                    routing_key=c.routing_key(d, "routing_key", path),
                    host=c.string(d, "host", path),
                    port=c.port(d, "port", path),
                    tls=_connector_tls(c, d, path),
                )
            )
    _unique(c, "connectors", [(f"connectors[{i}].name", x.name) for i, x in enumerate(connectors)])
    return tuple(connectors)


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
    config = validate(parse(raw, p.name), p.parent, os.environ.get(ROUTER_ID_SUFFIX_ENV) or None)
    if config.admin.token_file is not None:
        # Checked here too, so a reload to a config whose token file is unusable is
        # refused and the admin endpoint keeps the token in force.
        try:
            read_admin_token(config.admin.token_file)
        except AdminTokenError as exc:
            raise ConfigError([("admin.token_file", str(exc))]) from None
    return LoadedConfig(config=config, path=str(p), sha256=hashlib.sha256(raw).hexdigest())


# -- overlay: extra listeners, connectors and links from a second file ---------------------


@dataclass(frozen=True)
class Overlay:
    """Entries merged over the config (written by the Kubernetes agent)."""

    listeners: tuple[ListenerConfig, ...] = ()
    connectors: tuple[ConnectorConfig, ...] = ()
    links: tuple[LinkConfig, ...] = ()
    sha256: str | None = None  # of the file's bytes; None = no file (an empty overlay)

    def counts(self) -> dict[str, int]:
        return {
            "listeners": len(self.listeners),
            "connectors": len(self.connectors),
            "links": len(self.links),
        }


def load_overlay(path: str) -> Overlay:
    """Read an overlay file; a missing file is an empty overlay. Relative paths in it
    are relative to its directory. Raises ConfigError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return Overlay()
    except OSError as exc:
        raise ConfigError([("(document)", f"cannot read: {exc.strerror or exc}")]) from None
    data = parse(raw, p.name)
    c = _Checker(p.parent)
    top = c.obj(data, "", set(), {"listeners", "connectors", "links"})
    if top is None:
        raise ConfigError([("(document)", "must be a mapping")])
    overlay = Overlay(
        listeners=_listeners(c, top.get("listeners")),
        connectors=_connectors(c, top.get("connectors")),
        links=_links(c, top.get("links")),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    _key_budget(c, overlay.listeners, overlay.connectors)
    if c.errors:
        raise ConfigError(c.errors)
    return overlay


def overlay_clashes(config: Config, overlay: Overlay) -> list[tuple[str, str]]:
    """Overlay entries that collide with the config's own: (field path, message)."""
    out: list[tuple[str, str]] = []
    names = {x.name for x in config.listeners}
    ports = {(x.host, x.port) for x in config.listeners}
    for i, x in enumerate(overlay.listeners):
        if x.name in names:
            out.append((f"listeners[{i}].name", f"{x.name!r} is a listener of the config"))
        elif (x.host, x.port) in ports:
            out.append((f"listeners[{i}].port", f"{x.host}:{x.port} is used by the config"))
    names = {x.name for x in config.connectors}
    for i, c in enumerate(overlay.connectors):
        if c.name in names:
            out.append((f"connectors[{i}].name", f"{c.name!r} is a connector of the config"))
    names = {x.name for x in config.links}
    for i, lk in enumerate(overlay.links):
        if lk.name in names:
            out.append((f"links[{i}].name", f"{lk.name!r} is a link of the config"))
    return out


def merge_overlay(config: Config, overlay: Overlay) -> Config:
    """The config with the overlay's entries added. Entries that clash with the
    config (possible only after the config changed) are left out: the config wins."""
    lnames = {x.name for x in config.listeners}
    ports = {(x.host, x.port) for x in config.listeners}
    cnames = {x.name for x in config.connectors}
    knames = {x.name for x in config.links}
    return replace(
        config,
        listeners=config.listeners
        + tuple(
            x for x in overlay.listeners if x.name not in lnames and (x.host, x.port) not in ports
        ),
        connectors=config.connectors + tuple(x for x in overlay.connectors if x.name not in cnames),
        links=config.links + tuple(x for x in overlay.links if x.name not in knames),
    )
