"""asyncio layer: sockets, TLS, timers. It feeds the sans-I/O core and carries
out the core's actions; routing and flow logic live in core.py.

Sockets are driven by asyncio Protocols, not Streams: a flow costs two small
protocol objects and no Task, and credit maps onto pause_reading /
resume_reading. Local reads go into one shared buffer per router
(BufferedProtocol), sized by the flow's credit, so a read never exceeds what
the core may accept and one DATA frame carries one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import ssl
from dataclasses import dataclass, field
from typing import Any, cast

from skiff_router import __version__, tls
from skiff_router.admin import AdminServer
from skiff_router.codec import HEADER_SIZE, MAX_DATA, Mcast
from skiff_router.config import (
    Config,
    ConfigError,
    ConnectorConfig,
    LinkConfig,
    ListenerConfig,
    LoadedConfig,
    Overlay,
    load,
    load_overlay,
    merge_overlay,
    overlay_clashes,
)
from skiff_router.core import (
    CloseLink,
    CloseLocal,
    ConnectLocal,
    Deliver,
    DeliverEof,
    LinkEstablished,
    McastDeliver,
    ResumeRead,
    RouterCore,
)
from skiff_router.log import set_level

log = logging.getLogger("router")
llog = logging.getLogger("link")
flog = logging.getLogger("flow")

TICK = 0.25  # keepalive / dead-neighbour timer resolution
BACKOFF_MIN = 0.25
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 10.0
TLS_HANDSHAKE_TIMEOUT = 5.0
RETRY_BIND = 2.0  # retry listeners / link access that could not bind
WATCH_INTERVAL = 1.0  # poll the config file and TLS files for changes
CONNECTOR_BACKOFF = 2.0  # a connector that refused gets no new flows for this long
SUBSCRIBER_QUEUE = 1024  # multicast messages buffered per subscriber before it is dropped
EVENTS_ADDRESS = "skiff.events"  # network-wide router events (multicast)
MAX_PUMP_ROUNDS = 64


class LocalConn(asyncio.BufferedProtocol):
    """One TCP socket of a flow (listener client or connector connection)."""

    __slots__ = (
        "connector",
        "core",
        "done",
        "lid",
        "listener",
        "owed",
        "router",
        "rpaused",
        "transport",
        "wpaused",
    )

    def __init__(
        self,
        router: Router,
        lid: int = 0,
        listener: ListenerRt | None = None,
        connector: ConnectorRt | None = None,
    ) -> None:
        self.router = router
        self.core = router.core
        self.lid = lid
        self.transport: asyncio.Transport | None = None
        self.listener = listener
        self.connector = connector
        self.rpaused = False
        self.wpaused = False
        self.owed = 0  # bytes written but not yet handed back to the core as consumed
        self.done = False  # we closed or aborted it on purpose

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        router, core = self.router, self.core
        if router.core is not core:
            self.done = True
            transport.abort()
            return
        # Every byte written is reported consumed only once it left our buffer.
        transport.set_write_buffer_limits(high=0)
        if self.listener is not None:
            rt = self.listener
            lid = core.open_flow(rt.cfg.routing_key, rt.cfg.distribution)
            if lid is None:
                # Nobody reachable serves the key: refuse at once rather than hang.
                flog.debug(
                    "listener %s: no reachable connector for %s", rt.cfg.name, rt.cfg.routing_key
                )
                self.done = True
                transport.abort()
                return
            self.lid = lid
            router.locals[lid] = self
        else:
            router.locals[self.lid] = self
            if self.connector is not None:
                self.connector.flows += 1
            if not core.local_connected(self.lid):
                router.locals.pop(self.lid, None)
                self.done = True
                transport.abort()
                return
        router.pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        allow = self.core.read_allowance(self.lid)
        buf = self.router.rbuf
        if allow is None or allow <= 0:
            return buf  # the flow is gone (or paused a moment late): data is dropped
        # Read behind room for a frame header: the core frames it in place.
        return buf[HEADER_SIZE : HEADER_SIZE + min(allow, MAX_DATA)]

    def buffer_updated(self, nbytes: int) -> None:
        core = self.core
        lid = self.lid
        allow = core.read_allowance(lid)
        if allow is None or allow <= 0:
            return
        core.local_read(lid, self.router.rbuf, nbytes)
        if nbytes >= allow and not self.rpaused and self.transport is not None:
            # Credit exhausted: stop reading so TCP pushes back on the sender.
            self.rpaused = True
            self.transport.pause_reading()
        self.router.pump()

    def eof_received(self) -> bool:
        self.core.local_eof(self.lid)
        self.router.pump()
        return True  # keep the write side open (half-close)

    def pause_writing(self) -> None:
        self.wpaused = True

    def resume_writing(self) -> None:
        self.wpaused = False
        if self.owed:
            n, self.owed = self.owed, 0
            self.core.local_consumed(self.lid, n)
            self.router.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        router = self.router
        if router.locals.get(self.lid) is self:
            del router.locals[self.lid]
        if self.connector is not None:
            self.connector.flows -= 1
            self.connector = None
        if self.done or router.core is not self.core:
            return
        if exc is not None:
            flog.debug("local %d: %s", self.lid, tls.describe(exc))
        # Not closed by us: whatever is left of the flow is reset.
        self.core.local_reset(self.lid)
        router.pump()

    # -- actions from the core -------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        self.owed += len(data)
        t.write(data)
        if not self.wpaused:
            n, self.owed = self.owed, 0
            self.core.local_consumed(self.lid, n)

    def resume(self) -> None:
        if self.rpaused and self.transport is not None:
            self.rpaused = False
            self.transport.resume_reading()

    def write_eof(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            with contextlib.suppress(OSError):
                t.write_eof()

    def close(self) -> None:
        """EOF has passed both ways: close after the buffered bytes are sent."""
        self.done = True
        self.router.locals.pop(self.lid, None)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Reset now: do not wait behind queued data for a client that may never read."""
        self.done = True
        self.router.locals.pop(self.lid, None)
        if self.transport is not None:
            self.transport.abort()


class LinkConn(asyncio.Protocol):
    """The TLS transport of one link."""

    def __init__(
        self,
        router: Router,
        owner: Dialer | Incoming,
        name: str,
        direction: str,
        expected_site: str | None = None,
        cost: int = 1,
    ) -> None:
        self.router = router
        self.core = router.core
        self.owner = owner
        self.name = name
        self.direction = direction
        self.expected_site = expected_site
        self.cost = cost
        self.handle = 0
        self.peer: str | None = None  # once the link is up
        self.transport: asyncio.Transport | None = None
        self.close_reason: str | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        router = self.router
        if router.core is not self.core:
            transport.abort()
            return
        if isinstance(self.owner, Incoming):
            peer = transport.get_extra_info("peername")
            self.owner.endpoint = f"{peer[0]}:{peer[1]}" if peer else "?"
            self.name = f"incoming {self.owner.endpoint}"
            # A token's client certificate names the site it was issued to: routers
            # of that site, and no other, may announce themselves over this link.
            self.expected_site = tls.peer_common_name(transport)
        self.handle = self.core.link_connected(
            self.name, self.direction, self._loop.time(), self.expected_site, self.cost
        )
        router.links[self.handle] = self
        router.owners[self.handle] = self.owner
        router.pump()

    def data_received(self, data: bytes) -> None:
        if self.router.core is self.core:
            self.core.link_data(self.handle, data, self._loop.time())
            self.router.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = tls.describe(exc) if exc is not None else "connection closed by peer"
        router = self.router
        if self.handle:
            if router.core is self.core:
                self.core.link_lost(self.handle, reason)
                router.pump()
            router.links.pop(self.handle, None)
            router.owners.pop(self.handle, None)
        if not self.closed.done():
            self.closed.set_result(self.close_reason or reason)
        if self.peer is not None and router.core is self.core:
            router.event("link-down", peer=self.peer)
        if isinstance(self.owner, Incoming):
            llog.debug("incoming link from %s ended: %s", self.owner.endpoint, reason)

    def write(self, pieces: list[bytes]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            # One join, one TLS write: pieces written one by one would each become
            # a TLS record.
            t.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def close(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        if self.transport is not None:
            self.transport.close()  # after the pending frames (CLOSE included)


@dataclass
class Dialer:
    cfg: LinkConfig
    task: asyncio.Task[None] | None = None
    state: str = "connecting"
    peer_router: str | None = None  # the far router's id while up
    endpoint: str | None = None
    error: str | None = None
    stopped: bool = False
    conn: LinkConn | None = None


@dataclass
class Incoming:
    endpoint: str = "?"
    peer: str | None = None  # the dialing router's id, once its HELLO arrived
    peer_site: str | None = None
    cost: int = 1
    mode: str = "interior"


@dataclass
class ListenerRt:
    cfg: ListenerConfig
    server: asyncio.Server | None = None
    state: str = "starting"
    error: str | None = None


@dataclass
class ConnectorRt:
    cfg: ConnectorConfig
    flows: int = 0  # open connections
    down_until: float = 0.0
    error: str | None = None


class Subscriber:
    """A local multicast subscriber (the admin endpoint's streaming GET)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queue: asyncio.Queue[Mcast | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.dropped = False

    def offer(self, msg: Mcast) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            # Too slow: end its stream rather than buffer without bound.
            self.dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.get_nowait()
                self.queue.put_nowait(None)


def _file_sha(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


@dataclass
class OverlayState:
    """The overlay file (config field ``overlay``): what is in force and the last error."""

    path: str
    in_force: Overlay = field(default_factory=Overlay)
    error: str | None = None

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

    def status(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.in_force.sha256,
            "error": self.error,
            **self.in_force.counts(),
        }


def _tls_files(cfg: Config) -> list[str]:
    out = []
    if cfg.link_access is not None:
        out += [cfg.link_access.ca, cfg.link_access.cert, cfg.link_access.key]
    for lk in cfg.links:
        out += [lk.ca, lk.cert, lk.key]
    return out


@dataclass
class Router:
    loaded: LoadedConfig
    config_error: str | None = None
    overlay: OverlayState | None = None
    # The config in force with the overlay merged in (what the router runs).
    effective: Config | None = None
    # The config whose every change has been carried out. Status reports its
    # sha256, so a caller that sees the new sha256 also sees the new
    # listeners' bind results, never a half-applied state.
    in_force: LoadedConfig | None = None
    core: RouterCore = field(init=False)
    locals: dict[int, LocalConn] = field(default_factory=dict)
    links: dict[int, LinkConn] = field(default_factory=dict)
    owners: dict[int, Dialer | Incoming] = field(default_factory=dict)
    dialers: dict[str, Dialer] = field(default_factory=dict)
    listeners: dict[str, ListenerRt] = field(default_factory=dict)
    connectors: dict[str, ConnectorRt] = field(default_factory=dict)
    access_server: asyncio.Server | None = None
    access_error: str | None = None
    admin: AdminServer | None = None
    subscribers: dict[str, set[Subscriber]] = field(default_factory=dict)
    reloads: int = 0
    rbuf: memoryview = field(default_factory=lambda: memoryview(bytearray(HEADER_SIZE + MAX_DATA)))
    _tls_sha: dict[str, str | None] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _ticker: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None
    _rr: dict[str, int] = field(default_factory=dict)
    # Connectors per routing key, rebuilt whenever self.connectors is replaced.
    _by_key: dict[str, list[ConnectorRt]] = field(default_factory=dict)
    _by_key_src: dict[str, ConnectorRt] | None = None
    _stopped: asyncio.Event | None = None
    _reload_lock: asyncio.Lock | None = None
    _pumping: bool = False

    @property
    def cfg(self) -> Config:
        return self.effective or self.loaded.config

    def _merged(self, config: Config) -> Config:
        """``config`` with the overlay in force merged in (the overlay re-read first)."""
        if config.overlay is None:
            self.overlay = None
            return config
        if self.overlay is None or self.overlay.path != config.overlay:
            self.overlay = OverlayState(config.overlay)
        self.overlay.refresh(config)
        return merge_overlay(config, self.overlay.in_force)

    def _from_overlay(self, kind: str, name: str) -> bool:
        if self.overlay is None:
            return False
        entries = getattr(self.overlay.in_force, kind)
        return any(x.name == name for x in entries) and not any(
            x.name == name for x in getattr(self.loaded.config, kind)
        )

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.effective = self._merged(self.loaded.config)
        set_level(self.cfg.log_level)
        self.admin = AdminServer(self)
        await self.admin.start(self.cfg.admin.host, self.cfg.admin.port)
        await self._start_network()
        self.in_force = self.loaded
        self._ticker = asyncio.create_task(self._tick())
        self._watcher = asyncio.create_task(self._watch())
        log.info(
            "router %s of site %s (%s) started (skiff-router %s)",
            self.cfg.router_id,
            self.cfg.site,
            self.cfg.mode,
            __version__,
        )
        self.event("router-started")

    async def _start_network(self) -> None:
        loop = asyncio.get_running_loop()
        self.core = RouterCore(
            self.cfg.router_id, loop.time(), mode=self.cfg.mode, site=self.cfg.site
        )
        self.connectors = {c.name: ConnectorRt(c) for c in self.cfg.connectors}
        self._tls_sha = {p: _file_sha(p) for p in _tls_files(self.cfg)}
        for lc in self.cfg.listeners:
            await self._start_listener(lc)
        self._apply_services()
        await self._start_access()
        for lk in self.cfg.links:
            self._start_dialer(lk)
        self.pump()

    async def stop(self) -> None:
        for t in (self._ticker, self._watcher):
            if t is not None:
                t.cancel()
        await self._stop_network()
        if self.admin is not None:
            await self.admin.stop()
        for subs in self.subscribers.values():
            for sub in subs:
                sub.dropped = True
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(None)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._stopped is not None:
            self._stopped.set()
        log.info("router %s stopped", self.cfg.router_id)

    async def _stop_network(self) -> None:
        for name in list(self.listeners):
            await self._stop_listener(name)
        for name in list(self.dialers):
            await self._stop_dialer(name)
        await self._stop_access()
        for h in list(self.core.links):
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

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

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
            if loop.time() >= retry_at:
                retry_at = loop.time() + RETRY_BIND
                await self._retry_binds()

    async def _retry_binds(self) -> None:
        for rt in list(self.listeners.values()):
            if rt.server is None and self.listeners.get(rt.cfg.name) is rt:
                await self._bind_listener(rt)
        if self.cfg.link_access is not None and self.access_server is None:
            await self._start_access()

    # -- config and TLS file watch -------------------------------------------------------

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
        """Reload when the config file or a TLS file in use changes (mtime, size or
        inode first; a reload happens only if the content differs)."""
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
        """Carry out what the core asked for; call after every core input."""
        if self._pumping:
            return  # the running pump picks the new work up
        self._pumping = True
        try:
            core = self.core
            for _round in range(MAX_PUMP_ROUNDS):
                writes = core.pending_writes()
                actions = core.take_actions()
                if not writes and not actions:
                    return
                for h, pieces in writes:
                    lc = self.links.get(h)
                    if lc is not None:
                        lc.write(pieces)
                for a in actions:
                    self._act(a)
            asyncio.get_running_loop().call_soon(self.pump)
        finally:
            self._pumping = False

    def _act(self, a: Any) -> None:
        cls = type(a)
        if cls is Deliver:
            conn = self.locals.get(a.lid)
            if conn is not None:
                conn.deliver(a.data)
        elif cls is ResumeRead:
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
            owner = self.owners.get(a.link)
            lc = self.links.get(a.link)
            if lc is not None:
                lc.peer = a.peer
            if isinstance(owner, Dialer):
                owner.state, owner.error, owner.peer_router = "up", None, a.peer
            elif isinstance(owner, Incoming):
                owner.peer, owner.peer_site, owner.cost = a.peer, a.site, a.cost
                ls = self.core.links.get(a.link)
                owner.mode = ls.proto.peer_mode if ls else "interior"
            self.event("link-up", peer=a.peer)
        elif cls is CloseLink:
            lc = self.links.get(a.link)
            if lc is not None:
                lc.close(a.reason)

    # -- multicast -----------------------------------------------------------------------------

    def publish(self, address: str, payload: bytes) -> int:
        seq = self.core.publish(address, payload)
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
        self.core.publish(EVENTS_ADDRESS, json.dumps(body, sort_keys=True).encode())
        if not self._pumping:
            self.pump()

    # -- links -------------------------------------------------------------------------------

    def _start_dialer(self, cfg: LinkConfig) -> None:
        d = Dialer(cfg)
        self.dialers[cfg.name] = d
        d.task = self.spawn(self._dial(d))

    async def _stop_dialer(self, name: str) -> None:
        d = self.dialers.pop(name, None)
        if d is None or d.task is None:
            return
        d.stopped = True
        conns = []
        for h, owner in list(self.owners.items()):
            if owner is d:
                self.core.close_link(h, "link removed")
                conns.append(self.links[h])
        self.pump()
        d.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await d.task
        await self._wait_links(conns)

    async def _dial(self, d: Dialer) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        cfg = d.cfg
        while not d.stopped:
            for ep in cfg.endpoints:
                if d.stopped:
                    return
                d.state = "connecting"
                d.endpoint = f"{ep.host}:{ep.port}"
                conn = LinkConn(self, d, cfg.name, "outgoing", cfg.peer, cfg.cost)
                try:
                    ctx = tls.client_context(cfg)
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with a failed connect.
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await loop.create_connection(
                            lambda c=conn: c,  # type: ignore[misc]
                            ep.host,
                            ep.port,
                            ssl=ctx,
                            server_hostname=ep.host,
                            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                        )
                except (TimeoutError, OSError, ssl.SSLError) as exc:
                    d.error = tls.describe(exc)
                    llog.warning("link %s: cannot connect to %s: %s", cfg.name, d.endpoint, d.error)
                    continue
                d.conn = conn
                started = loop.time()
                try:
                    reason = await asyncio.shield(conn.closed)
                except asyncio.CancelledError:
                    if conn.transport is not None and not conn.closed.done():
                        conn.transport.close()
                    raise
                finally:
                    d.conn = None
                d.state, d.error, d.peer_router = "down", reason, None
                if loop.time() - started > 10:
                    backoff = BACKOFF_MIN  # it ran for a while: retry quickly
                break
            d.state = "down"
            # Jitter keeps routers that lost each other from redialing in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _start_access(self) -> None:
        acc = self.cfg.link_access
        if acc is None:
            return
        loop = asyncio.get_running_loop()
        try:
            ctx = tls.server_context(acc)
            self.access_server = await loop.create_server(
                lambda: LinkConn(self, Incoming(), "incoming", "incoming"),
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
            self.access_server.close()
            self.access_server = None
        if keep_links:
            return
        conns = []
        for h, owner in list(self.owners.items()):
            if isinstance(owner, Incoming):
                self.core.close_link(h, "link access changed")
                conns.append(self.links[h])
        self.pump()
        await self._wait_links(conns)

    # -- listeners and connectors ---------------------------------------------------------

    async def _start_listener(self, cfg: ListenerConfig) -> None:
        rt = ListenerRt(cfg)
        self.listeners[cfg.name] = rt
        await self._bind_listener(rt)

    async def _bind_listener(self, rt: ListenerRt) -> None:
        cfg = rt.cfg
        loop = asyncio.get_running_loop()
        try:
            rt.server = await loop.create_server(
                lambda: LocalConn(self, listener=rt), cfg.host, cfg.port, backlog=1024
            )
        except OSError as exc:
            err = tls.describe(exc)
            if err != rt.error:
                log.error("listener %s on %s:%d: %s", cfg.name, cfg.host, cfg.port, err)
            rt.state, rt.error = "error", err
            return
        rt.state, rt.error = "listening", None
        log.info("listener %s on %s:%d for %s", cfg.name, cfg.host, cfg.port, cfg.routing_key)

    async def _stop_listener(self, name: str) -> None:
        rt = self.listeners.pop(name, None)
        if rt is not None and rt.server is not None:
            rt.server.close()
            rt.server = None

    def _connector_order(self, key: str) -> list[ConnectorRt]:
        """Connectors for ``key``: up ones first, fewest open flows first, ties
        round-robin; connectors in backoff last (tried when nothing else is left)."""
        if self._by_key_src is not self.connectors:
            by_key: dict[str, list[ConnectorRt]] = {}
            for c in self.connectors.values():
                by_key.setdefault(c.cfg.routing_key, []).append(c)
            self._by_key, self._by_key_src = by_key, self.connectors
        matching = self._by_key.get(key)
        if not matching:
            return []
        n = self._rr.get(key, 0)
        self._rr[key] = n + 1
        if len(matching) == 1:
            return matching
        k = n % len(matching)
        rotated = matching[k:] + matching[:k]
        now = asyncio.get_running_loop().time()
        return sorted(rotated, key=lambda c: (c.down_until > now, c.flows))

    async def _connect(self, lid: int, key: str) -> None:
        core = self.core
        loop = asyncio.get_running_loop()
        for rt in self._connector_order(key):
            cc = rt.cfg
            conn = LocalConn(self, lid, connector=rt)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.create_connection(lambda c=conn: c, cc.host, cc.port)  # type: ignore[misc]
            except (TimeoutError, OSError) as exc:
                rt.error = tls.describe(exc)
                rt.down_until = loop.time() + CONNECTOR_BACKOFF
                flog.info("connector %s (%s:%d): %s", cc.name, cc.host, cc.port, rt.error)
                if self.core is not core or lid not in core.locals:
                    return
                continue
            rt.error, rt.down_until = None, 0.0
            return
        if self.core is core:
            core.local_connect_failed(lid)
            self.pump()

    def _apply_services(self) -> None:
        self.core.set_services(
            {rt.cfg.routing_key for rt in self.listeners.values()},
            {c.cfg.routing_key for c in self.connectors.values()},
        )

    # -- reload -------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file and apply the difference. False if it is invalid."""
        assert self._reload_lock is not None
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
        assert self._reload_lock is not None
        async with self._reload_lock:
            await self._apply(self.loaded, self._merged(self.loaded.config))

    async def _apply(self, new: LoadedConfig, cfg: Config) -> None:
        old = self.cfg
        self.loaded = new
        self.effective = cfg
        set_level(cfg.log_level)
        if cfg.admin != old.admin and self.admin is not None:
            await self.admin.stop()
            await self.admin.start(cfg.admin.host, cfg.admin.port)
        if (cfg.site, cfg.router_id, cfg.mode) != (old.site, old.router_id, old.mode):
            # A new router id or role: everything restarts under the new name.
            await self._stop_network()
            await self._start_network()
            self.in_force = new
            log.info("reloaded config %s (router %s -> %s)", new.path, old.router_id, cfg.router_id)
            return
        old_sha, new_sha = self._tls_sha, {p: _file_sha(p) for p in _tls_files(cfg)}
        self._tls_sha = new_sha

        def files_changed(*paths: str) -> bool:
            return any(old_sha.get(p) != new_sha.get(p) for p in paths)

        # Removals first, so a port moved between entries can be bound again.
        want_l = {x.name: x for x in cfg.listeners}
        for name, rt in list(self.listeners.items()):
            if want_l.get(name) != rt.cfg:
                await self._stop_listener(name)
        for name, lc in want_l.items():
            if name not in self.listeners:
                await self._start_listener(lc)
        self.connectors = {
            c.name: self.connectors[c.name]
            if c.name in self.connectors and self.connectors[c.name].cfg == c
            else ConnectorRt(c)
            for c in cfg.connectors
        }
        self._apply_services()
        acc = cfg.link_access
        if acc != old.link_access:
            await self._stop_access()
            await self._start_access()
        elif acc is not None and files_changed(acc.ca, acc.cert, acc.key):
            # New server cert or CA: new handshakes use them; links already up stay.
            llog.info("link access TLS files changed: reloading them")
            await self._stop_access(keep_links=True)
            await self._start_access()
        want_k = {x.name: x for x in cfg.links}
        for name, d in list(self.dialers.items()):
            lk = want_k.get(name)
            if lk != d.cfg or (lk is not None and files_changed(lk.ca, lk.cert, lk.key)):
                await self._stop_dialer(name)
        for name, lk in want_k.items():
            if name not in self.dialers:
                self._start_dialer(lk)
        self.pump()
        if self.in_force is None or self.in_force.sha256 != new.sha256:
            log.info("reloaded config %s", new.path)
        self.in_force = new

    # -- status -------------------------------------------------------------------------------

    @property
    def ready(self) -> tuple[bool, list[str]]:
        """Ready = a config in force, every listener bound, link access bound."""
        why = []
        if self.in_force is None:
            why.append("no config in force")
        for rt in self.listeners.values():
            # The overlay never makes the router unready (its writer reads status).
            if rt.state != "listening" and not self._from_overlay("listeners", rt.cfg.name):
                why.append(f"listener {rt.cfg.name}: {rt.error or rt.state}")
        if self.cfg.link_access is not None and self.access_server is None:
            why.append(f"link access: {self.access_error or 'not bound'}")
        return not why, why

    def status_links(self) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = []
        for d in self.dialers.values():
            links.append(
                {
                    "name": d.cfg.name,
                    "direction": "outgoing",
                    "peer": d.cfg.peer,
                    "cost": d.cfg.cost,
                    "state": d.state,
                    "endpoint": d.endpoint,
                    "error": d.error,
                    "peer_router": d.peer_router,
                    "source": "overlay" if self._from_overlay("links", d.cfg.name) else "config",
                }
            )
        for owner in self.owners.values():
            if isinstance(owner, Incoming) and owner.peer is not None:
                links.append(
                    {
                        "name": owner.peer,
                        "direction": "incoming",
                        "peer": owner.peer_site or owner.peer,
                        "cost": owner.cost,
                        "state": "up",
                        "endpoint": owner.endpoint,
                        "error": None,
                        "peer_mode": owner.mode,
                        "peer_router": owner.peer,
                    }
                )
        return links

    def status(self) -> dict[str, Any]:
        cfg = self.cfg
        links = self.status_links()
        acc = cfg.link_access
        now = asyncio.get_running_loop().time()
        ready, why = self.ready
        return {
            "site": cfg.site,
            "router_id": cfg.router_id,
            "mode": cfg.mode,
            "version": __version__,
            "ready": ready,
            "not_ready": why,
            "config": {
                "path": self.loaded.path,
                "sha256": self.in_force.sha256 if self.in_force else None,
                "error": self.config_error,
            },
            "overlay": None if self.overlay is None else self.overlay.status(),
            "link_access": None
            if acc is None
            else {
                "host": acc.host,
                "port": acc.port,
                "state": "listening" if self.access_server is not None else "error",
                "error": self.access_error,
            },
            "links": links,
            "routers": self.core.routers_status(),
            "listeners": [
                {
                    "name": rt.cfg.name,
                    "routing_key": rt.cfg.routing_key,
                    "host": rt.cfg.host,
                    "port": rt.cfg.port,
                    "state": rt.state,
                    "error": rt.error,
                    "distribution": rt.cfg.distribution,
                    "source": "overlay"
                    if self._from_overlay("listeners", rt.cfg.name)
                    else "config",
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
                    "source": "overlay"
                    if self._from_overlay("connectors", c.cfg.name)
                    else "config",
                }
                for c in self.connectors.values()
            ],
            "routing_keys": self.core.keys_status(),
            "flows": {
                "open": len(self.core.flows),
                "total": self.core.flows_total,
                "retried": self.core.retries,
            },
            "multicast": {
                "received": self.core.mcast_in,
                "subscribers": {a: len(s) for a, s in sorted(self.subscribers.items())},
            },
        }
