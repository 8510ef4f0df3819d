"""asyncio layer: the router process. It owns the core, the sockets
(transports.py), the timers, the files it watches and the admin endpoint;
routing and flow logic live in the sans-I/O core (core.py), the reload diff
in plan.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from skiff_router import __version__, eventloop, grants, limits, tls
from skiff_router.actions import (
    CloseLink,
    CloseLocal,
    ConnectLocal,
    CredentialHeld,
    Deliver,
    DeliverEof,
    Direction,
    LinkEstablished,
    McastDeliver,
    ResumeRead,
)
from skiff_router.admin import AdminServer
from skiff_router.codec import HEADER_SIZE, MAX_DATA
from skiff_router.config import (
    Config,
    ConfigError,
    ConnectorConfig,
    LinkConfig,
    ListenerConfig,
    LoadedConfig,
    Mode,
    Overlay,
    load,
    load_overlay,
    merge_overlay,
    overlay_clashes,
)
from skiff_router.core import RouterCore
from skiff_router.credentials import Credential
from skiff_router.dialers import Dialer, DialerState, Incoming
from skiff_router.grants import GrantLedger
from skiff_router.log import set_level
from skiff_router.netgraph import network_graph
from skiff_router.plan import (
    CheckLinkClients,
    Operation,
    ReloadAccessTls,
    ReloadConnectorTls,
    ReloadListenerTls,
    ReplaceDialer,
    RestartAccess,
    RestartAdmin,
    RestartNetwork,
    SetConnectors,
    SetLogLevel,
    SetServices,
    StartDialer,
    StartListener,
    StopDialer,
    StopListener,
    reload_plan,
    services,
)
from skiff_router.siblings import Workers, whole_router, whole_router_flows
from skiff_router.targets import Connector, ConnectorChoice, KeyChoice
from skiff_router.transports import LinkConn, LocalConn
from skiff_router.view import Subscriber
from skiff_router.workers import (
    INSTANCE_ENV,
    CredentialMarks,
    PortClaims,
    Seat,
    connected_socket,
    is_sibling,
    wait_for_worker0,
)

log = logging.getLogger("router")
llog = logging.getLogger("link")
flog = logging.getLogger("flow")

TICK = 0.25  # keepalive / dead-neighbour timer resolution
BACKOFF_MIN = 0.25
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 10.0
TLS_HANDSHAKE_TIMEOUT = 5.0
RETRY_BIND = 2.0  # retry listeners / link access that could not bind
WORKER0_WAIT = 10.0  # seconds another worker waits for worker 0 before it starts anyway
WATCH_INTERVAL = 1.0  # poll the config, overlay and TLS files for changes
EVENTS_ADDRESS = "skiff.events"  # network-wide router events (multicast)
MAX_PUMP_ROUNDS = 64
WRITE_AT = 32 * 1024  # link bytes queued that are written at once, not at the end of the turn


class BindState(StrEnum):
    STARTING = "starting"
    LISTENING = "listening"
    ERROR = "error"


@dataclass(eq=False)
class ListenerRt:
    cfg: ListenerConfig
    server: asyncio.Server | None = None
    # The server's TLS context: a renewed certificate is loaded into it in place
    # (the bound socket keeps it), so renewal needs no rebind.
    tls: ssl.SSLContext | None = None
    state: BindState = BindState.STARTING
    error: str | None = None
    keys: KeyChoice = field(default_factory=KeyChoice)
    # When the certificate that follows the configured one becomes valid (read when
    # the context is made), and whether the context holds it.
    successor_from: int | None = None
    on_successor: bool = False

    def successor_due(self, now: float) -> bool:
        return self.successor_from is not None and now >= self.successor_from


@dataclass
class OverlayState:
    """The overlay file (config field ``overlay``): what is in force and the last error."""

    path: str
    in_force: Overlay = field(default_factory=Overlay)
    error: str | None = None
    # What status reports: the overlay once every change it brought is carried out
    # (as the config's sha256), so a caller that sees it sees its listeners bound.
    applied: Overlay = field(default_factory=Overlay)

    def refresh(self, config: Config) -> None:
        """Re-read the file against ``config``. A valid overlay that does not clash
        with the config comes in force; otherwise the last good one stays."""
        try:
            candidate = load_overlay(self.path)
        except ConfigError as exc:
            self._fail(str(exc))
            return
        clashes = overlay_clashes(config, candidate)
        if clashes:
            self._fail("; ".join(f"{p}: {m}" for p, m in clashes))
            return
        if candidate != self.in_force:
            log.info("overlay %s in force: %s", self.path, candidate.counts())
        self.in_force, self.error = candidate, None

    def _fail(self, error: str) -> None:
        if error != self.error:
            log.error("overlay %s: %s; keeping the last good overlay", self.path, error)
        self.error = error

    def names(self, kind: str) -> set[str]:
        return {x.name for x in getattr(self.in_force, kind)}

    def status(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.applied.sha256,
            "error": self.error,
            **self.applied.counts(),
        }


@functools.lru_cache(maxsize=1024)
def _is_address(host: str) -> bool:
    """An IP address literal (connected to as is), not a name to look up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _file_sha(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _tls_files(cfg: Config) -> list[str]:
    out = []
    if cfg.link_access is not None:
        out += [cfg.link_access.ca, cfg.link_access.cert, cfg.link_access.key]
    for lk in cfg.links:
        out += [lk.ca, lk.cert, lk.key, *([lk.next_cert] if lk.next_cert else [])]
    for ls in cfg.listeners:
        if ls.tls is not None:
            out += [ls.tls.cert, ls.tls.key, *([ls.tls.next_cert] if ls.tls.next_cert else [])]
    for c in cfg.connectors:
        if c.tls is not None:
            out += [p for p in (c.tls.ca, c.tls.cert, c.tls.key) if p]
    return out


class Router:
    """One router process: the core, its sockets, its files and its admin endpoint.
    Implements RouterView and MulticastPort (view.py) for the admin endpoint."""

    def __init__(self, loaded: LoadedConfig, seat: Seat | None = None) -> None:
        self.seat = seat  # which worker process of its router this is (None: the only one)
        self.workers: Workers | None = None
        # Workers share their ports; the claims keep other routers off them.
        self.claims = PortClaims(seat.group) if seat is not None and seat.count > 1 else None
        self._claimed: dict[asyncio.Server, int] = {}
        self.credential_marks = (
            CredentialMarks(seat) if seat is not None and seat.count > 1 else None
        )
        self.loaded = loaded  # the config file as last read successfully
        self.config_error: str | None = None
        self.overlay: OverlayState | None = None
        # The config with the overlay merged in (what the router runs).
        self.effective: Config = loaded.config
        # The config file whose every change has been carried out. Status reports
        # its sha256, so a caller that sees the new sha256 also sees the new
        # listeners' bind results, never a half-applied state.
        self.in_force: LoadedConfig | None = None
        self.instance = os.environ.get(INSTANCE_ENV) or secrets.token_hex(8)
        self.core = RouterCore(loaded.config.router_id, 0.0, mode=loaded.config.mode)
        self.locals: dict[int, LocalConn] = {}
        self.links: dict[int, LinkConn] = {}  # by core link handle
        self.dialers: dict[str, Dialer] = {}
        # By link name: dialers a newer one replaced (make before break), kept until
        # their link ends; they never redial.
        self.replaced: dict[str, list[Dialer]] = {}
        self.listeners: dict[str, ListenerRt] = {}
        self._app_tls: dict[ConnectorConfig, ssl.SSLContext] = {}
        self.connectors = ConnectorChoice()
        self.access_server: asyncio.Server | None = None
        self.access_error: str | None = None
        self.refused_credentials = 0  # incoming links whose certificate is not accepted
        self.admin: AdminServer | None = None
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.reloads = 0
        self.rbuf = memoryview(bytearray(HEADER_SIZE + MAX_DATA))
        self._tls_sha: dict[str, str | None] = {}
        self._expiry: dict[str, tuple[str, int | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._renewing: set[str] = set()  # links being renewed (_renew)
        self._pumping = False
        self._write_scheduled = False
        self._loop = asyncio.get_running_loop()

    @property
    def cfg(self) -> Config:
        return self.effective

    @property
    def router_id(self) -> str:
        return self.effective.router_id

    def _merged(self, config: Config) -> Config:
        """``config`` with the overlay in force merged in (the overlay re-read first)."""
        if self.seat is not None:
            config = replace(config, router_id=self.seat.router_id(config.router_id))
        if config.overlay is None:
            self.overlay = None
            return config
        if self.overlay is None or self.overlay.path != config.overlay:
            self.overlay = OverlayState(config.overlay)
        self.overlay.refresh(config)
        return merge_overlay(config, self.overlay.in_force)

    def _source(self, kind: str, name: str) -> str:
        """Where a listener, connector or link in force comes from."""
        if self.overlay is None or name in {x.name for x in getattr(self.loaded.config, kind)}:
            return "config"
        return "overlay" if name in self.overlay.names(kind) else "config"

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.effective = self._merged(self.loaded.config)
        set_level(self.cfg.log_level)
        self.admin = AdminServer(self, self, self.cfg.admin.token_file)
        await self._start_admin()
        if self.seat is not None and not self.seat.primary and self.cfg.mode is Mode.INTERIOR:
            # Worker 0 first: until its admin port answers for the router, no other
            # worker takes links or clients (a peer would learn of this router from a
            # worker before its status can be read).
            await wait_for_worker0(self.seat, WORKER0_WAIT)
        await self._start_network()
        self.in_force = self.loaded
        if self.overlay is not None:
            self.overlay.applied = self.overlay.in_force
        self._ticker = asyncio.create_task(self._tick())
        self._watcher = asyncio.create_task(self._watch())
        log.info(
            "router %s of site %s (%s) started (skiff-router %s on %s %s)",
            self.cfg.router_id,
            self.cfg.site,
            self.cfg.mode,
            __version__,
            *eventloop.describe(asyncio.get_running_loop()),
        )
        self.event("router-started")

    async def _start_admin(self) -> None:
        """The admin port, or for a worker other than worker 0 its private socket
        (worker 0 answers at the port for the whole router)."""
        assert self.admin is not None
        if self.seat is not None and not self.seat.primary:
            await self.admin.start_unix(self.seat.admin_socket(self.seat.index))
        else:
            await self.admin.start(self.cfg.admin.host, self.cfg.admin.port)

    async def _serve(self, factory: Any, host: str, port: int, **kw: Any) -> asyncio.Server:
        """A listening socket: a lone router's alone (a second process on the port is
        an error), the workers' shared (SO_REUSEPORT) once their group holds the port."""
        loop = asyncio.get_running_loop()
        if self.claims is None:
            return await loop.create_server(factory, host, port, **kw)
        await self.claims.acquire(port)
        try:
            server = await loop.create_server(factory, host, port, reuse_port=True, **kw)
        except BaseException:
            self.claims.release(port)
            raise
        self._claimed[server] = port
        return server

    def _unserve(self, server: asyncio.Server) -> None:
        server.close()
        port = self._claimed.pop(server, None)
        if port is not None and self.claims is not None:
            self.claims.release(port)

    async def _start_network(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.core = RouterCore(
            cfg.router_id,
            loop.time(),
            mode=cfg.mode,
            site=cfg.site,
            max_local_flows=limits.local_flow_budget(limits.raise_fd_limit()),
            instance=self.instance,
        )
        self.core.flow_timeouts = cfg.flow_timeouts
        self.core.grants = GrantLedger(cfg.state_dir) if cfg.state_dir else None
        self.connectors = ConnectorChoice()
        self.connectors.configure(cfg.connectors)
        self._tls_sha = {p: _file_sha(p) for p in _tls_files(cfg)}
        for lc in cfg.listeners:
            await self._start_listener(lc)
        self._set_services(services(cfg))
        await self._start_access()
        for lk in cfg.links:
            self._start_dialer(lk)
        if self.seat is not None and self.seat.count > 1:
            self.workers = Workers(self, self.seat)
            await self.workers.start()
        self.pump()

    async def stop(self) -> None:
        for t in (self._ticker, self._watcher):
            if t is not None:
                t.cancel()
        await self._stop_network()
        if self.credential_marks is not None:
            self.credential_marks.close()
        if self.admin is not None:
            await self.admin.stop()
        for subs in self.subscribers.values():
            for sub in subs:
                sub.end()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        log.info("router %s stopped", self.cfg.router_id)

    async def _stop_network(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
            self.workers = None
        for name in list(self.listeners):
            await self._stop_listener(name)
        for name in {*self.dialers, *self.replaced}:
            await self._stop_dialer(name)
        await self._stop_access()
        for h in list(self.core.topology.links):
            self.core.close_link(h, "router stopping")
        self.pump()
        for conn in list(self.locals.values()):
            conn.abort()
        self.locals.clear()
        await self._wait_links(list(self.links.values()))

    async def _wait_links(self, conns: list[LinkConn]) -> None:
        """Wait (bounded) for closing links to finish, then abort the stragglers."""
        pending = [c.closed for c in conns if not c.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=2)
        for c in conns:
            if not c.closed.done() and c.transport is not None:
                c.transport.abort()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        retry_at = loop.time() + RETRY_BIND
        while True:
            await asyncio.sleep(TICK)
            self.core.tick(loop.time())
            self.pump()
            self._renew()
            if loop.time() >= retry_at:
                retry_at = loop.time() + RETRY_BIND
                await self._retry_binds()

    async def _retry_binds(self) -> None:
        if self.claims is not None:
            self.claims.reclaim()
        for rt in list(self.listeners.values()):
            if rt.server is None and self.listeners.get(rt.cfg.name) is rt:
                await self._bind_listener(rt)
        if self.cfg.link_access is not None and self.access_server is None:
            await self._start_access()

    # -- config, overlay and TLS file watch ----------------------------------------------------

    def _watched(self) -> list[str]:
        overlay = [self.overlay.path] if self.overlay is not None else []
        return [self.loaded.path, *overlay, *_tls_files(self.cfg)]

    def _fingerprint(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in self._watched():
            try:
                st = os.stat(p)
                out.append((p, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((p, None))
        return tuple(out)

    async def _watch(self) -> None:
        """Reload when the config file, the overlay or a TLS file in use changes
        (mtime, size or inode first; a reload happens only if the content differs)."""
        seen = self._fingerprint()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            fp = self._fingerprint()
            if fp == seen:
                continue
            seen = fp
            cfg_sha = _file_sha(self.loaded.path)
            in_force = self.in_force.sha256 if self.in_force else None
            tls_changed = any(_file_sha(p) != sha for p, sha in self._tls_sha.items())
            if cfg_sha != in_force or tls_changed:
                # ``seen`` was taken before reading: a write still in progress (a
                # half-written file fails to load) shows up as another change.
                log.info("config or TLS files changed on disk: reloading")
                await self.reload()
            elif self.overlay is not None:
                await self.reload_overlay()

    # -- core actions ----------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out what the core asked for; call after every core input.

        Small link frames are written once per event-loop turn (``_write_links``):
        what the sockets ready in one turn produce for a link leaves as one TLS
        write, not one per socket. Bulk data (WRITE_AT bytes queued) and credit
        go at once: a sender waits for them."""
        if self._pumping:
            return  # the running pump picks the new work up
        self._pumping = True
        try:
            outbox = self.core.outbox
            local = self.locals
            for _unused in range(MAX_PUMP_ROUNDS):
                if outbox.urgent or outbox.queued >= WRITE_AT:
                    self._write_links()
                elif outbox.dirty and not self._write_scheduled:
                    self._write_scheduled = True
                    self._loop.call_soon(self._write_links_soon)
                if not outbox.actions:
                    return
                for a in outbox.take_actions():
                    if isinstance(a, Deliver):  # the common case, without a dispatch
                        conn = local.get(a.lid)
                        if conn is not None:
                            conn.deliver(a.data)
                    else:
                        self._act(a)
            self._loop.call_soon(self.pump)
        finally:
            self._pumping = False

    def _write_links_soon(self) -> None:
        self._write_scheduled = False
        self._write_links()

    def _write_links(self) -> None:
        links = self.links
        for h, pieces in self.core.outbox.take_writes():
            lc = links.get(h)
            if lc is not None:
                lc.write(pieces)

    def _act(self, a: Any) -> None:
        cls = type(a)
        if cls is ResumeRead:
            conn = self.locals.get(a.lid)
            if conn is not None:
                conn.resume()
        elif cls is DeliverEof:
            conn = self.locals.get(a.lid)
            if conn is not None:
                conn.write_eof()
        elif cls is CloseLocal:
            conn = self.locals.get(a.lid)
            if conn is not None:
                if a.abort:
                    conn.abort()
                else:
                    conn.close()
        elif cls is ConnectLocal:
            self.spawn(self._connect(a.lid, a.key))
        elif cls is McastDeliver:
            for sub in self.subscribers.get(a.message.address, ()):
                sub.offer(a.message)
        elif cls is LinkEstablished:
            self._link_established(a)
        elif cls is CredentialHeld:
            if self.credential_marks is not None:
                self.credential_marks.mark(a.fingerprint, a.holder, a.held)
        elif cls is CloseLink:
            lc = self.links.get(a.link)
            if lc is not None:
                self._write_links()  # the link's last frames (its CLOSE) go first
                lc.close(a.reason)

    def _link_established(self, a: LinkEstablished) -> None:
        lc = self.links.get(a.link)
        if lc is None:
            return
        lc.peer = a.peer
        owner = lc.owner
        if isinstance(owner, Dialer):
            owner.to(DialerState.UP)
            owner.peer_router = a.peer
        else:
            owner.peer, owner.peer_site, owner.cost, owner.mode = a.peer, a.site, a.cost, a.mode
        self.event("link-up", peer=a.peer)

    # -- multicast (MulticastPort) ---------------------------------------------------------------

    def publish(self, address: str, payload: bytes) -> int:
        seq = self.core.multicast.publish(address, payload)
        self.pump()
        return seq

    def subscribe(self, address: str) -> Subscriber:
        sub = Subscriber(address)
        self.subscribers.setdefault(address, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.subscribers.get(sub.address)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.address]

    def event(self, kind: str, **fields: Any) -> None:
        """Announce a router event network-wide (multicast on EVENTS_ADDRESS)."""
        body = {"event": kind, "router": self.cfg.router_id, **fields}
        self.core.multicast.publish(EVENTS_ADDRESS, json.dumps(body, sort_keys=True).encode())
        if not self._pumping:
            self.pump()

    # -- links -------------------------------------------------------------------------------

    def _start_dialer(self, cfg: LinkConfig) -> None:
        d = Dialer(cfg, successor_from=tls.valid_from(cfg.next_cert))
        self.dialers[cfg.name] = d
        d.task = self.spawn(self.run_dialer(d))

    async def _stop_dialer(self, name: str) -> None:
        d = self.dialers.pop(name, None)
        await self.end_dialers(self.replaced.pop(name, []) + ([d] if d is not None else []))

    async def end_dialers(self, dialers: list[Dialer], reason: str = "link removed") -> None:
        """Stop dialers for good: close their links, end their tasks."""
        for d in dialers:
            d.stopped = True
        conns = [lc for lc in self.links.values() if lc.owner in dialers]
        for lc in conns:
            self.core.close_link(lc.handle, reason)
        self.pump()
        for d in dialers:
            if d.task is not None:
                d.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await d.task
        await self._wait_links(conns)

    async def _replace_dialer(self, cfg: LinkConfig) -> None:
        """Make before break: the old link keeps its flows until the peer accepted the
        new one (the core drains it then, ``replaced_links``); an old dialer without
        a link up has nothing to keep and stops now."""
        old = self.dialers.pop(cfg.name, None)
        if old is not None and old.state is DialerState.UP:
            old.stopped = True
            self.replaced.setdefault(cfg.name, []).append(old)
            llog.info("link %s changed: the old link stays until the new one is up", cfg.name)
        elif old is not None:
            await self.end_dialers([old], "link changed")
        self._start_dialer(cfg)

    def _renew(self) -> None:
        """Renewal without a playbook run, 30 days before a certificate expires: a
        listener whose next certificate became valid loads it (new handshakes use
        it); a link is replaced by one made with it, make before break (the issuing
        site lists both)."""
        now = time.time()
        for rt in self.listeners.values():
            if rt.tls is not None and not rt.on_successor and rt.successor_due(now):
                self._reload_listener_tls(rt.cfg.name)  # loads the next certificate
        for name, d in self.dialers.items():
            due = d.successor_from is not None and now >= d.successor_from
            up = d.state is DialerState.UP and not d.on_successor and d.worker_socket is None
            if due and up and name not in self._renewing:
                self._renewing.add(name)
                self.spawn(self._renew_link(d))

    async def _renew_link(self, d: Dialer) -> None:
        try:
            async with self._reload_lock:
                if self.dialers.get(d.cfg.name) is d and d.state is DialerState.UP:
                    llog.info("link %s: its next certificate is valid: renewing", d.cfg.name)
                    await self._replace_dialer(d.cfg)
        finally:
            self._renewing.discard(d.cfg.name)

    def replaced_links(self, d: Dialer) -> tuple[int, ...]:
        """The links a new connection of dialer ``d`` replaces (core handles)."""
        if d.stopped or d.worker_socket is not None:
            return ()
        return tuple(o.conn.handle for o in self.replaced.get(d.cfg.name, ()) if o.conn)

    async def run_dialer(self, d: Dialer) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        cfg = d.cfg
        while not d.stopped:
            for ep in cfg.endpoints:
                if d.stopped:
                    return
                d.endpoint = "worker socket" if d.worker_socket else f"{ep.host}:{ep.port}"
                conn = LinkConn(self, d, cfg.name, Direction.OUTGOING, cfg.peer, cfg.cost)
                # Its next certificate once that is valid (the same key; renewal).
                successor = (
                    d.worker_socket is None
                    and d.successor_from is not None
                    and time.time() >= d.successor_from
                )
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with a failed connect.
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        if d.worker_socket is not None:
                            await loop.create_unix_connection(
                                lambda c=conn: c,  # type: ignore[misc]
                                sock=connected_socket(d.worker_socket),
                            )
                        else:
                            await loop.create_connection(
                                lambda c=conn: c,  # type: ignore[misc]
                                ep.host,
                                ep.port,
                                ssl=tls.client_context(cfg, successor),
                                server_hostname=ep.server_name or ep.host,
                                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                            )
                except (TimeoutError, OSError, ssl.SSLError) as exc:
                    d.error = tls.describe(exc)
                    llog.warning("link %s: cannot connect to %s: %s", cfg.name, d.endpoint, d.error)
                    continue
                d.conn = conn
                d.on_successor = successor
                started = loop.time()
                try:
                    reason = await asyncio.shield(conn.closed)
                except asyncio.CancelledError:
                    if conn.transport is not None and not conn.closed.done():
                        conn.transport.close()
                    raise
                finally:
                    d.conn = None
                d.to(DialerState.DOWN, reason)
                if d.stopped:  # replaced by a newer dialer: its link has ended
                    kept = self.replaced.get(cfg.name, [])
                    if d in kept:
                        kept.remove(d)
                    if not kept:
                        self.replaced.pop(cfg.name, None)
                    return
                if loop.time() - started > 10:
                    backoff = BACKOFF_MIN  # it ran for a while: retry quickly
                break
            else:
                d.to(DialerState.DOWN)
            # Jitter keeps routers that lost each other from redialing in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX)
            d.to(DialerState.CONNECTING)

    def credential_of(self, fingerprint: str | None) -> Credential | None:
        """What an incoming link's client certificate binds it to (None: not bound,
        as without a list or for the replicas' certificate)."""
        clients = self.cfg.link_clients
        if fingerprint is None or clients is None:
            return None
        now = time.time()
        matching = [c for c in clients if c.accepts(fingerprint, now)]
        if not matching:
            return None
        marks = self.credential_marks
        elsewhere = marks.elsewhere(fingerprint) if marks is not None else frozenset()
        # A certificate is listed once; a grant's terms come with its entry.
        client = max(matching, key=lambda c: c.routers)
        grant = client.grant
        # Each site that redeems a grant may hold it with as many routers as a token's.
        allowed = client.routers * (grant.redemptions if grant is not None else 1)
        return Credential(fingerprint, allowed, elsewhere, client.name, grant)

    def client_refusal(self, fingerprint: str | None) -> str | None:
        """Why an incoming link with this client certificate is refused (None: it is
        accepted): the site keeps the list of certificates it issued and has not revoked."""
        clients = self.cfg.link_clients
        if clients is None:
            return None
        now = time.time()
        if fingerprint is not None and any(c.accepts(fingerprint, now) for c in clients):
            return None
        access = self.cfg.link_access
        siblings = (access.sibling_cert, access.sibling_next_cert) if access else ()
        if fingerprint is not None and any(
            path and fingerprint == tls.file_fingerprint(path) for path in siblings
        ):
            return None  # a replica of this site (read at each accept: it may be renewed)
        short = (fingerprint or "none")[:16]
        return f"client certificate sha256 {short}... was revoked, superseded or never issued here"

    def accepts_worker(self, sock: socket.socket | None) -> bool:
        """The other end of a worker socket is a worker of this router."""
        return self.seat is not None and is_sibling(sock, self.seat.group)

    def refuse_if_not_accepted(self, conn: LinkConn) -> bool:
        """Close an incoming link whose client certificate this site does not (or no
        longer) accept; the dialer is told `credential refused`. True if closed."""
        refusal = self.client_refusal(conn.fingerprint)
        if refusal is None:
            return False
        self.refused_credentials += 1
        llog.warning("link %s refused: %s", conn.name, refusal)
        self.core.close_link(conn.handle, f"refused: {refusal}", public="credential refused")
        return True

    def _check_link_clients(self) -> None:
        for conn in list(self.links.values()):
            if conn.direction is Direction.INCOMING:
                self.refuse_if_not_accepted(conn)

    async def _start_access(self) -> None:
        acc = self.cfg.link_access
        if acc is None:
            return
        try:
            ctx = tls.server_context(acc)
            self.access_server = await self._serve(
                lambda: LinkConn(self, Incoming(), "incoming", Direction.INCOMING),
                acc.host,
                acc.port,
                ssl=ctx,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError) as exc:
            err = tls.describe(exc)
            if err != self.access_error:
                llog.error("link access %s:%d: %s", acc.host, acc.port, err)
            self.access_error = err
            return
        self.access_error = None
        llog.info("accepting links on %s:%d", acc.host, acc.port)

    async def _stop_access(self, keep_links: bool = False) -> None:
        if self.access_server is not None:
            self._unserve(self.access_server)
            self.access_server = None
        if keep_links:
            return
        conns = [
            lc
            for lc in self.links.values()
            if isinstance(lc.owner, Incoming) and not lc.owner.worker
        ]
        for lc in conns:
            self.core.close_link(lc.handle, "link access changed")
        self.pump()
        await self._wait_links(conns)

    # -- listeners and connectors ---------------------------------------------------------

    async def _start_listener(self, cfg: ListenerConfig) -> None:
        rt = ListenerRt(cfg)
        self.listeners[cfg.name] = rt
        await self._bind_listener(rt)

    async def _bind_listener(self, rt: ListenerRt) -> None:
        cfg = rt.cfg
        try:
            rt.successor_from = tls.valid_from(cfg.tls.next_cert) if cfg.tls else None
            successor = rt.successor_due(time.time())
            ctx = rt.tls = tls.app_server_context(cfg.tls, successor) if cfg.tls else None
            rt.on_successor = successor
            rt.server = await self._serve(
                lambda: LocalConn(self, listener=rt), cfg.host, cfg.port, backlog=1024, ssl=ctx
            )
        except (OSError, ssl.SSLError) as exc:
            err = tls.describe(exc)
            if err != rt.error:
                log.error("listener %s on %s:%d: %s", cfg.name, cfg.host, cfg.port, err)
            rt.state, rt.error = BindState.ERROR, err
            return
        rt.state, rt.error = BindState.LISTENING, None
        log.info(
            "listener %s on %s:%d for %s", cfg.name, cfg.host, cfg.port, ", ".join(cfg.key_names())
        )

    def _reload_listener_tls(self, name: str) -> None:
        rt = self.listeners.get(name)
        if rt is None or rt.cfg.tls is None or rt.server is None or rt.tls is None:
            return  # not bound: binding again builds a fresh context
        t = rt.cfg.tls
        rt.successor_from = tls.valid_from(t.next_cert)
        successor = rt.successor_due(time.time())
        try:
            # Checked on a scratch context first: a half-renewed pair (new cert, old
            # key) must not leave the live context with a mismatched pair.
            tls.app_server_context(t, successor)
            rt.tls.load_cert_chain(tls.listener_cert(t, successor), t.key)
        except (OSError, ssl.SSLError) as exc:
            # The previous pair stays in use; the next change on disk is tried again.
            log.error("listener %s: keeping the previous certificate: %s", name, tls.describe(exc))
            rt.successor_from = None if successor else rt.successor_from
            return
        rt.on_successor = successor
        log.info("listener %s: certificate reloaded: new handshakes use it", name)

    async def _stop_listener(self, name: str) -> None:
        rt = self.listeners.pop(name, None)
        if rt is not None and rt.server is not None:
            self._unserve(rt.server)
            rt.server = None

    async def _connect(self, lid: int, key: str) -> None:
        """Connect a flow that arrived for ``key`` to one of our connectors."""
        core = self.core
        loop = self._loop
        for c in self.connectors.order(key, loop.time()):
            cc = c.cfg
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await self._connect_to(c, lid)
            except (TimeoutError, OSError) as exc:
                ConnectorChoice.refused(c, tls.describe(exc), loop.time())
                flog.info("connector %s (%s:%d): %s", cc.name, cc.host, cc.port, c.error)
                if self.core is not core or lid not in core.flows.locals:
                    return
                continue
            return
        if self.core is core:
            core.flows.local_connect_failed(lid)
            self.pump()

    async def _connect_to(self, c: Connector, lid: int) -> None:
        """Connect to one connector: its host's addresses in turn (a host name is
        looked up once per RESOLVE_TTL, not per flow)."""
        loop = self._loop
        host, port = c.cfg.host, c.cfg.port
        if _is_address(host):
            addresses: tuple[str, ...] = (host,)
        else:
            addresses = ConnectorChoice.cached_addresses(c, loop.time())
            if not addresses:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = ConnectorChoice.resolved(c, (str(i[4][0]) for i in infos), loop.time())
        error: OSError = OSError(f"{host}: no address")
        ctx = self._connector_tls(c.cfg)
        for address in addresses:
            conn = LocalConn(self, lid, connector=c)
            try:
                await loop.create_connection(
                    lambda c=conn: c,
                    address,
                    port,
                    ssl=ctx,
                    server_hostname=(c.cfg.tls.server_name or host) if c.cfg.tls else None,
                )
            except OSError as exc:
                error = exc
                continue
            ConnectorChoice.worked(c, address)
            return
        raise error

    def _connector_tls(self, cfg: ConnectorConfig) -> ssl.SSLContext | None:
        """The connector's TLS context, built once per connector config (not per flow)."""
        if cfg.tls is None:
            return None
        got = self._app_tls.get(cfg)
        if got is None:
            got = self._app_tls[cfg] = tls.app_client_context(cfg.tls)
        return got

    def _set_services(self, op: SetServices) -> None:
        self.core.topology.set_services(op.listener_keys, op.connector_keys)

    # -- reload -------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file (and the overlay) and apply the difference.
        False if the config file is invalid (the one in force stays)."""
        async with self._reload_lock:
            try:
                new = load(self.loaded.path)
            except ConfigError as exc:
                self.config_error = str(exc)
                log.error("reload: invalid config, keeping the old one: %s", exc)
                # The overlay is independent of the config file's troubles.
                await self._apply(self.loaded, self._merged(self.loaded.config))
                return False
            self.config_error = None
            await self._apply(new, self._merged(new.config))
            self.reloads += 1
            return True

    async def reload_overlay(self) -> None:
        """Re-read the overlay file and apply the difference (the config stays)."""
        async with self._reload_lock:
            await self._apply(self.loaded, self._merged(self.loaded.config))

    async def _apply(self, new: LoadedConfig, cfg: Config) -> None:
        old = self.effective
        old_sha, new_sha = self._tls_sha, {p: _file_sha(p) for p in _tls_files(cfg)}
        changed = {p for p, sha in new_sha.items() if old_sha.get(p) != sha}
        self.loaded, self.effective, self._tls_sha = new, cfg, new_sha
        self.core.flow_timeouts = cfg.flow_timeouts  # read at the next look, nothing to restart
        if cfg.state_dir != old.state_dir:
            self.core.grants = GrantLedger(cfg.state_dir) if cfg.state_dir else None
        if cfg.workers != old.workers:
            # The processes are started with the router; a reload cannot add or end one.
            log.warning("workers: %s takes effect when the router restarts", cfg.workers or "auto")
        for op in reload_plan(old, cfg, changed):
            await self._carry_out(op)
        if self.overlay is not None:
            self.overlay.applied = self.overlay.in_force
        self.pump()
        if self.in_force is None or self.in_force.sha256 != new.sha256:
            log.info("reloaded config %s", new.path)
        self.in_force = new

    async def _carry_out(self, op: Operation) -> None:
        if isinstance(op, SetLogLevel):
            set_level(op.level)
        elif isinstance(op, RestartAdmin):
            if self.admin is not None:
                self.admin.token_file = op.admin.token_file
                if op.rebind and (self.seat is None or self.seat.primary):
                    await self.admin.stop()
                    await self._start_admin()
        elif isinstance(op, CheckLinkClients):
            self._check_link_clients()
        elif isinstance(op, RestartNetwork):
            await self._stop_network()
            await self._start_network()
        elif isinstance(op, StopListener):
            await self._stop_listener(op.name)
        elif isinstance(op, StartListener):
            await self._start_listener(op.cfg)
        elif isinstance(op, SetConnectors):
            self.connectors.configure(op.connectors)
        elif isinstance(op, SetServices):
            self._set_services(op)
        elif isinstance(op, RestartAccess):
            await self._stop_access(keep_links=op.keep_links)
            await self._start_access()
        elif isinstance(op, ReloadAccessTls):
            llog.info("link access TLS files changed: reloading them")
            await self._stop_access(keep_links=True)
            await self._start_access()
        elif isinstance(op, ReloadListenerTls):
            self._reload_listener_tls(op.name)
        elif isinstance(op, ReloadConnectorTls):
            for cfg in [c for c in self._app_tls if c.name == op.name]:
                del self._app_tls[cfg]
            log.info("connector %s: TLS files changed: new flows use them", op.name)
        elif isinstance(op, StopDialer):
            await self._stop_dialer(op.name)
        elif isinstance(op, StartDialer):
            self._start_dialer(op.cfg)
        elif isinstance(op, ReplaceDialer):
            await self._replace_dialer(op.cfg)

    # -- status (RouterView) ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready = a config in force, every listener of the config bound, link access
        bound. The overlay never makes the router unready (its writer reads status)."""
        why = []
        if self.in_force is None:
            why.append("no config in force")
        for rt in self.listeners.values():
            from_config = self._source("listeners", rt.cfg.name) == "config"
            if rt.state is not BindState.LISTENING and from_config:
                why.append(f"listener {rt.cfg.name}: {rt.error or rt.state}")
        if self.cfg.link_access is not None and self.access_server is None:
            why.append(f"link access: {self.access_error or 'not bound'}")
        return not why, why

    def counters(self) -> dict[str, int]:
        return {
            "route_computations": self.core.topology.db.computations,
            "config_reloads": self.reloads,
        }

    async def refresh(self, flows: bool = False) -> None:
        if self.workers is not None:
            await self.workers.gather(flows)

    def flows_status(self) -> list[dict[str, Any]]:
        own = self.core.flows.status()
        if self.workers is not None and self.workers.seat.primary:
            return whole_router_flows(own, self.workers.reports)
        return own

    def certificates(self) -> list[tuple[str, str, int | None]]:
        cfg = self.cfg
        files: list[tuple[str, str, str]] = []
        if cfg.link_access is not None:
            files += [("server", "link-access", cfg.link_access.cert)]
            files += [("site-ca", "link-access", cfg.link_access.ca)]
            if cfg.link_access.sibling_cert:
                files += [("sibling", "link-access", cfg.link_access.sibling_cert)]
        for lk in cfg.links:
            files += [("link-client", lk.name, lk.cert), ("link-ca", lk.name, lk.ca)]
            # The certificate the link renews itself with: the link lapses when it does.
            files += [("link-client-next", lk.name, lk.next_cert)] if lk.next_cert else []
        for ls in cfg.listeners:
            if ls.tls is not None:
                files.append(("listener", ls.name, ls.tls.cert))
                files += [("listener-next", ls.name, ls.tls.next_cert)] if ls.tls.next_cert else []
        for c in cfg.connectors:
            if c.tls is not None:
                files += [("connector-ca", c.name, c.tls.ca)]
                files += [("connector-client", c.name, c.tls.cert)] if c.tls.cert else []
        return [(kind, name, self._not_after(path)) for kind, name, path in files]

    def _not_after(self, path: str) -> int | None:
        """Parsed again only when the content changed (a scrape is every few seconds;
        a rewrite within one file-timestamp tick keeps mtime and size, so the bytes decide)."""
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except OSError:
            return None
        sha = hashlib.sha256(pem).hexdigest()
        cached = self._expiry.get(path)
        if cached is not None and cached[0] == sha:
            return cached[1]
        try:
            value: int | None = tls.not_after(pem)
        except (ValueError, IndexError):
            value = None
        self._expiry[path] = (sha, value)
        return value

    def links_status(self) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = []
        for d in self.dialers.values():
            links.append(
                {
                    "name": d.cfg.name,
                    "direction": Direction.OUTGOING.value,
                    "peer": d.cfg.peer,
                    "cost": d.cfg.cost,
                    "state": d.state.value,
                    "endpoint": d.endpoint,
                    "error": d.error,
                    "peer_router": d.peer_router,
                    "source": self._source("links", d.cfg.name),
                    # Older links of this name a change replaced, still carrying flows.
                    "draining": len(self.replaced.get(d.cfg.name, ())),
                    # Up with the certificate that follows the token's (renewed).
                    "renewed": d.on_successor and d.state is DialerState.UP,
                }
            )
        for lc in self.links.values():
            owner = lc.owner
            if isinstance(owner, Incoming) and owner.peer is not None and not owner.worker:
                links.append(
                    {
                        "name": owner.peer,
                        "direction": Direction.INCOMING.value,
                        "peer": owner.peer_site or owner.peer,
                        "cost": owner.cost,
                        "state": self._incoming_state(lc),
                        "endpoint": owner.endpoint,
                        "error": None,
                        "peer_mode": owner.mode.value,
                        "peer_router": owner.peer,
                    }
                )
        return links

    def _incoming_state(self, lc: LinkConn) -> str:
        link = self.core.topology.links.get(lc.handle)
        return link.proto.phase.value if link is not None else DialerState.UP.value

    def network(self) -> dict[str, Any]:
        """GET /v1/network: the whole network from link state (netgraph.py)."""
        core = self.core
        topo = core.topology
        return network_graph(topo.db, topo.id, topo.edge, core.flows.key_counts())

    def _listener_keys_status(self, rt: ListenerRt) -> dict[str, Any]:
        """A listener's keys: which take new flows now, and how many each got."""
        cfg = rt.cfg
        return {
            "routing_keys": [
                {"key": k, "weight": w, "flows": rt.keys.flows.get(k, 0)}
                for k, w in (
                    [(x.key, x.weight) for x in cfg.routing_keys] or [(cfg.routing_key, 1)]
                )
            ],
            "strategy": cfg.strategy.value if cfg.routing_keys else None,
            "keys_in_use": KeyChoice.in_use(cfg, self.core.topology.db),
        }

    def status(self) -> dict[str, Any]:
        cfg = self.cfg
        core = self.core
        acc = cfg.link_access
        now = asyncio.get_running_loop().time()
        ready, why = self.readiness()
        loop_name, loop_version = eventloop.describe(asyncio.get_running_loop())
        own = {
            "site": cfg.site,
            "router_id": cfg.router_id,
            "pid": os.getpid(),
            "mode": cfg.mode.value,
            "version": __version__,
            "event_loop": loop_name,
            "event_loop_version": loop_version,
            "ready": ready,
            "not_ready": why,
            "config": {
                "path": self.loaded.path,
                "sha256": self.in_force.sha256 if self.in_force else None,
                "error": self.config_error,
            },
            "overlay": None if self.overlay is None else self.overlay.status(),
            "admin": {
                "token": cfg.admin.token_file is not None,
                "refused": self.admin.refused if self.admin is not None else 0,
            },
            "link_access": None
            if acc is None
            else {
                "host": acc.host,
                "port": acc.port,
                # Between closing and reopening the port on a reload it is "starting",
                # not "error": a caller polling then must not see a failure.
                "state": (
                    BindState.LISTENING
                    if self.access_server is not None
                    else BindState.ERROR
                    if self.access_error
                    else BindState.STARTING
                ).value,
                "error": self.access_error,
                "clients": None if cfg.link_clients is None else len(cfg.link_clients),
                "refused_credentials": self.refused_credentials,
                # A certificate presented by more routers than it may serve at once.
                "credentials_in_use": core.credentials.refused,
                # One-time grants by name: window, limit, redeeming sites and state.
                "grants": grants.status(core.grants, cfg.link_clients, time.time()),
                "grants_refused": core.grants.refused if core.grants is not None else 0,
            },
            "links": self.links_status(),
            "routers": core.topology.routers_status(),
            "listeners": [
                {
                    "name": rt.cfg.name,
                    "routing_key": rt.cfg.routing_key,
                    "host": rt.cfg.host,
                    "port": rt.cfg.port,
                    "state": rt.state.value,
                    "error": rt.error,
                    "distribution": rt.cfg.distribution.value,
                    # Serving the certificate that follows the configured one (renewed).
                    "renewed": rt.on_successor,
                    "source": self._source("listeners", rt.cfg.name),
                    **self._listener_keys_status(rt),
                }
                for rt in self.listeners.values()
            ],
            "connectors": [
                {
                    "name": c.cfg.name,
                    "routing_key": c.cfg.routing_key,
                    "host": c.cfg.host,
                    "port": c.cfg.port,
                    "flows": c.flows,
                    "down": c.down_until > now,
                    "error": c.error,
                    "source": self._source("connectors", c.cfg.name),
                }
                for c in self.connectors.by_name.values()
            ],
            "routing_keys": core.keys_status(),
            "flows": {
                "open": len(core.flows.counted()),
                "total": core.flows.total,
                "retried": core.flows.retries,
            },
            "multicast": {
                "received": core.multicast.received,
                "subscribers": {a: len(s) for a, s in sorted(self.subscribers.items())},
            },
        }
        workers = self.workers
        if workers is None:
            return own
        if not workers.seat.primary:
            return {**own, "worker_links": workers.links_status()}
        return whole_router(own, workers.links_status(), workers.reports)
