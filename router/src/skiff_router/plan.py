"""The reload diff, as a pure function: (config in force, new config, TLS files
whose content changed) -> the operations that turn one into the other.

The runtime carries the operations out in order. Removals come before
additions (a port moved between two listeners can be bound again), and
anything unchanged is left alone, so flows of unchanged services and links
survive a reload.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, replace

from skiff_router.config import (
    Admin,
    Config,
    ConnectorConfig,
    LinkAccess,
    LinkConfig,
    ListenerConfig,
)


@dataclass(frozen=True)
class SetLogLevel:
    level: str


@dataclass(frozen=True)
class RestartAdmin:
    """The admin endpoint's settings changed: a new token file applies to the next
    request; only a new address (``rebind``) closes and reopens the port."""

    admin: Admin
    rebind: bool


@dataclass(frozen=True)
class RestartNetwork:
    """A new router id, site or mode: everything restarts under the new identity."""


@dataclass(frozen=True)
class StopListener:
    name: str


@dataclass(frozen=True)
class StartListener:
    cfg: ListenerConfig


@dataclass(frozen=True)
class SetConnectors:
    connectors: tuple[ConnectorConfig, ...]


@dataclass(frozen=True)
class SetServices:
    """The routing keys this router advertises (listeners, connectors)."""

    listener_keys: frozenset[str]
    connector_keys: frozenset[str]


@dataclass(frozen=True)
class RestartAccess:
    """Link access added, removed or moved: rebind. Removed, its incoming links close;
    moved (``keep_links``), the links up stay until their dialers replace them with
    links to the new address (make before break)."""

    keep_links: bool = False


@dataclass(frozen=True)
class ReloadAccessTls:
    """New server certificate or CA: new handshakes use them, links up stay."""


@dataclass(frozen=True)
class ReloadListenerTls:
    """The listener's certificate or key changed on disk (a renewal): new handshakes
    use them; the socket stays bound and open flows stay."""

    name: str


@dataclass(frozen=True)
class ReloadConnectorTls:
    """A connector's CA bundle or client certificate changed on disk: new flows
    verify with them."""

    name: str


@dataclass(frozen=True)
class StopDialer:
    name: str


@dataclass(frozen=True)
class StartDialer:
    cfg: LinkConfig


@dataclass(frozen=True)
class ReplaceDialer:
    """A link's settings or TLS files changed: make before break. The new link is
    dialed while the old one keeps its flows; once the new one is up the old one
    drains (no new flows) and closes when its last flow ends."""

    cfg: LinkConfig


@dataclass(frozen=True)
class CheckLinkClients:
    """The accepted client certificates changed: incoming links whose certificate is
    no longer among them close (a deleted token is revoked)."""


Operation = (
    SetLogLevel
    | RestartAdmin
    | RestartNetwork
    | StopListener
    | StartListener
    | SetConnectors
    | SetServices
    | RestartAccess
    | ReloadAccessTls
    | ReloadListenerTls
    | ReloadConnectorTls
    | StopDialer
    | StartDialer
    | ReplaceDialer
    | CheckLinkClients
)


def services(cfg: Config) -> SetServices:
    return SetServices(
        frozenset(k for x in cfg.listeners for k in x.key_names()),
        frozenset(x.routing_key for x in cfg.connectors),
    )


def _tls_files(cfg: ConnectorConfig) -> set[str]:
    t = cfg.tls
    return {p for p in (t.ca, t.cert, t.key) if p} if t is not None else set()


def reload_plan(old: Config, new: Config, changed_files: Set[str]) -> list[Operation]:
    """What to do to go from ``old`` to ``new``; ``changed_files`` are the TLS files
    (paths) whose content differs from what is in use."""
    ops: list[Operation] = []
    if new.log_level != old.log_level:
        ops.append(SetLogLevel(new.log_level))
    if new.admin != old.admin:
        rebind = (new.admin.host, new.admin.port) != (old.admin.host, old.admin.port)
        ops.append(RestartAdmin(new.admin, rebind))
    if (new.site, new.router_id, new.mode) != (old.site, old.router_id, old.mode):
        ops.append(RestartNetwork())
        return ops

    was = {x.name: x for x in old.listeners}
    want = {x.name: x for x in new.listeners}
    ops += [StopListener(n) for n, x in was.items() if want.get(n) != x]
    ops += [StartListener(x) for n, x in want.items() if was.get(n) != x]
    ops += [
        ReloadListenerTls(n)
        for n, x in want.items()
        if was.get(n) == x
        and x.tls is not None
        and changed_files & {x.tls.cert, x.tls.key, x.tls.next_cert}
    ]
    if new.connectors != old.connectors:
        ops.append(SetConnectors(new.connectors))
    ops += [ReloadConnectorTls(x.name) for x in new.connectors if changed_files & _tls_files(x)]
    if services(new) != services(old):
        ops.append(services(new))

    acc = new.link_access
    if _socket_of(acc) != _socket_of(old.link_access):
        ops.append(RestartAccess(keep_links=acc is not None and old.link_access is not None))
    elif acc is not None and changed_files & {acc.ca, acc.cert, acc.key}:
        ops.append(ReloadAccessTls())
    # Who may link is read at each accept; links made before are checked once more.
    siblings_changed = acc is not None and (acc.sibling_cert, acc.sibling_next_cert) != (
        getattr(old.link_access, "sibling_cert", None),
        getattr(old.link_access, "sibling_next_cert", None),
    )
    if new.link_clients is not None and (new.link_clients != old.link_clients or siblings_changed):
        ops.append(CheckLinkClients())

    was_k = {x.name: x for x in old.links}
    want_k = {x.name: x for x in new.links}

    def redial(lk: LinkConfig) -> bool:
        return bool(changed_files & {lk.ca, lk.cert, lk.key, lk.next_cert})

    ops += [StopDialer(n) for n in was_k if n not in want_k]
    ops += [StartDialer(x) for n, x in want_k.items() if n not in was_k]
    ops += [
        ReplaceDialer(x)
        for n, x in want_k.items()
        if n in was_k and (was_k[n] != x or redial(was_k[n]))
    ]
    return ops


def _socket_of(access: LinkAccess | None) -> LinkAccess | None:
    """What the link port's socket and TLS context are made of (not who is accepted)."""
    return None if access is None else replace(access, sibling_cert=None, sibling_next_cert=None)
