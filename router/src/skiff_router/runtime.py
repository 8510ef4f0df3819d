"""asyncio layer: sockets, TLS, timers. It feeds the sans-I/O core and carries
out the core's actions; routing and flow logic live in core.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from skiff_router import __version__, tls
from skiff_router.admin import AdminServer
from skiff_router.codec import MAX_DATA
from skiff_router.config import (
    Config,
    ConfigError,
    ConnectorConfig,
    LinkConfig,
    ListenerConfig,
    LoadedConfig,
    load,
)
from skiff_router.core import (
    CloseLink,
    CloseLocal,
    ConnectLocal,
    Deliver,
    DeliverEof,
    LinkEstablished,
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
LINK_READ = 256 * 1024
RETRY_BIND = 2.0  # retry listeners / link access that could not bind

_EOF = object()
_CLOSE = object()


class LocalConn:
    """One TCP socket of a flow (listener client or connector connection)."""

    def __init__(
        self, router: Router, lid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.router = router
        self.lid = lid
        self.reader = reader
        self.writer = writer
        self.items: deque[Any] = deque()
        self.wake = asyncio.Event()
        self.resume = asyncio.Event()
        self.rtask: asyncio.Task[None] | None = None
        self.wtask: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.rtask = asyncio.create_task(self._read())
        self.wtask = asyncio.create_task(self._write())

    def push(self, item: Any) -> None:
        self.items.append(item)
        self.wake.set()

    def abort(self) -> None:
        """Reset now: do not wait behind queued data for a client that may never read."""
        self.items.clear()
        if self.wtask is not None and not self.wtask.done():
            self.wtask.cancel()  # its finally aborts the transport
        else:
            self.router.locals.pop(self.lid, None)
            self.writer.transport.abort()

    async def _read(self) -> None:
        core = self.router.core
        lid = self.lid
        try:
            while True:
                allow = core.read_allowance(lid)
                if allow is None:
                    return
                if allow <= 0:
                    # Credit exhausted: stop reading so TCP pushes back on the client.
                    self.resume.clear()
                    await self.resume.wait()
                    continue
                data = await self.reader.read(min(allow, MAX_DATA))
                if self.router.core is not core:
                    return
                if not data:
                    core.local_eof(lid)
                    self.router.pump()
                    return
                core.local_data(lid, data)
                self.router.pump()
        except (OSError, ssl.SSLError) as exc:
            flog.debug("local %d read error: %s", lid, tls.describe(exc))
            core.local_reset(lid)
            self.router.pump()

    async def _write(self) -> None:
        core = self.router.core
        writer = self.writer
        broken = False
        abort = True  # also when cancelled
        try:
            while True:
                while not self.items:
                    self.wake.clear()
                    await self.wake.wait()
                item = self.items.popleft()
                if isinstance(item, bytes):
                    if broken:
                        continue
                    try:
                        writer.write(item)
                        await writer.drain()
                    except (OSError, ssl.SSLError):
                        broken = True
                        core.local_reset(self.lid)
                        self.router.pump()
                        continue
                    # Credit goes back only once the bytes left our buffers.
                    core.local_consumed(self.lid, len(item))
                    self.router.pump()
                elif item is _EOF:
                    if not broken and writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                else:
                    abort = False  # _CLOSE: EOF has passed both ways
                    break
        finally:
            await self._close(abort)

    async def _close(self, abort: bool) -> None:
        self.router.locals.pop(self.lid, None)
        if self.rtask is not None and not self.rtask.done() and abort:
            self.rtask.cancel()
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
                await asyncio.wait_for(self.writer.wait_closed(), 5)
        if self.rtask is not None and not self.rtask.done():
            self.rtask.cancel()


class LinkConn:
    """The transport of one link; writes go through a task that awaits drain()."""

    def __init__(self, handle: int, writer: asyncio.StreamWriter) -> None:
        self.handle = handle
        self.writer = writer
        self.buf: list[bytes] = []
        self.wake = asyncio.Event()
        self.closing = False
        self.close_reason: str | None = None
        self.task = asyncio.create_task(self._write())

    def send(self, data: bytes) -> None:
        self.buf.append(data)
        self.wake.set()

    def close(self, reason: str) -> None:
        self.closing = True
        self.close_reason = reason
        self.wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if self.buf:
                    data = b"".join(self.buf)
                    self.buf.clear()
                    self.writer.write(data)
                    await self.writer.drain()
                if self.closing and not self.buf:
                    break
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.writer.close()


@dataclass
class Dialer:
    cfg: LinkConfig
    task: asyncio.Task[None] | None = None
    state: str = "connecting"
    endpoint: str | None = None
    error: str | None = None
    stopped: bool = False


@dataclass
class Incoming:
    endpoint: str
    peer: str | None = None
    cost: int = 1


@dataclass
class ListenerRt:
    cfg: ListenerConfig
    server: asyncio.Server | None = None
    state: str = "starting"
    error: str | None = None


@dataclass
class Router:
    loaded: LoadedConfig
    config_error: str | None = None
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
    connectors: tuple[ConnectorConfig, ...] = ()
    access_server: asyncio.Server | None = None
    access_error: str | None = None
    admin: AdminServer | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _ticker: asyncio.Task[None] | None = None
    _rr: dict[str, int] = field(default_factory=dict)
    _stopped: asyncio.Event | None = None
    _reload_lock: asyncio.Lock | None = None

    @property
    def cfg(self) -> Config:
        return self.loaded.config

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        set_level(self.cfg.log_level)
        self.admin = AdminServer(self)
        await self.admin.start(self.cfg.admin.host, self.cfg.admin.port)
        await self._start_network()
        self.in_force = self.loaded
        self._ticker = asyncio.create_task(self._tick())
        log.info("router %s started (skiff-router %s)", self.cfg.site, __version__)

    async def _start_network(self) -> None:
        loop = asyncio.get_running_loop()
        self.core = RouterCore(self.cfg.site, loop.time())
        self.connectors = self.cfg.connectors
        for lc in self.cfg.listeners:
            await self._start_listener(lc)
        self._apply_services()
        await self._start_access()
        for lk in self.cfg.links:
            self._start_dialer(lk)
        self.pump()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self._stop_network()
        if self.admin is not None:
            await self.admin.stop()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._stopped is not None:
            self._stopped.set()
        log.info("router %s stopped", self.cfg.site)

    async def _stop_network(self) -> None:
        for name in list(self.listeners):
            await self._stop_listener(name)
        for name in list(self.dialers):
            await self._stop_dialer(name)
        await self._stop_access()
        for h in list(self.core.links):
            self.core.close_link(h, "router stopping")
        self.pump()
        conns = list(self.locals.values())
        for conn in conns:
            conn.abort()
        pending = [c.task for c in self.links.values()] + [
            t for c in conns for t in (c.wtask, c.rtask) if t is not None
        ]
        if pending:
            await asyncio.wait(pending, timeout=2)

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

    # -- core actions ----------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out what the core asked for; call after every core input."""
        core = self.core
        for h, data in core.pending_writes():
            lc = self.links.get(h)
            if lc is not None:
                lc.send(data)
        for a in core.take_actions():
            if isinstance(a, Deliver):
                conn = self.locals.get(a.lid)
                if conn is not None:
                    conn.push(a.data)
            elif isinstance(a, ResumeRead):
                conn = self.locals.get(a.lid)
                if conn is not None:
                    conn.resume.set()
            elif isinstance(a, DeliverEof):
                conn = self.locals.get(a.lid)
                if conn is not None:
                    conn.push(_EOF)
            elif isinstance(a, CloseLocal):
                conn = self.locals.get(a.lid)
                if conn is not None:
                    if a.abort:
                        conn.abort()
                    else:
                        conn.push(_CLOSE)
            elif isinstance(a, ConnectLocal):
                self.spawn(self._connect(a.lid, a.key))
            elif isinstance(a, LinkEstablished):
                owner = self.owners.get(a.link)
                if isinstance(owner, Dialer):
                    owner.state, owner.error = "up", None
                elif isinstance(owner, Incoming):
                    owner.peer, owner.cost = a.peer, a.cost
            elif isinstance(a, CloseLink):
                lc = self.links.get(a.link)
                if lc is not None:
                    lc.close(a.reason)

    # -- links -------------------------------------------------------------------------------

    async def _run_link(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        owner: Dialer | Incoming,
        name: str,
        direction: str,
        expected_peer: str | None = None,
        cost: int = 1,
    ) -> str:
        loop = asyncio.get_running_loop()
        core = self.core
        h = core.link_connected(name, direction, loop.time(), expected_peer, cost)
        lc = LinkConn(h, writer)
        self.links[h] = lc
        self.owners[h] = owner
        self.pump()
        reason = "connection closed by peer"
        try:
            while True:
                data = await reader.read(LINK_READ)
                if not data or self.core is not core:
                    break
                core.link_data(h, data, loop.time())
                self.pump()
        except (OSError, ssl.SSLError) as exc:
            reason = tls.describe(exc)
        finally:
            if self.core is core:
                core.link_lost(h, reason)
                self.pump()
            lc.close(lc.close_reason or reason)
            try:
                # Let the writer send the CLOSE frame; never swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(lc.task), 2)
            finally:
                if not lc.task.done():
                    lc.task.cancel()
                    writer.transport.abort()
                self.links.pop(h, None)
                self.owners.pop(h, None)
        return lc.close_reason or reason

    def _start_dialer(self, cfg: LinkConfig) -> None:
        d = Dialer(cfg)
        self.dialers[cfg.name] = d
        d.task = self.spawn(self._dial(d))

    async def _stop_dialer(self, name: str) -> None:
        d = self.dialers.pop(name, None)
        if d is None or d.task is None:
            return
        d.stopped = True
        for h, owner in list(self.owners.items()):
            if owner is d:
                self.core.close_link(h, "link removed")
        self.pump()
        d.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await d.task

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
                try:
                    ctx = tls.client_context(cfg)
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with a failed connect.
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        reader, writer = await asyncio.open_connection(
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
                started = loop.time()
                reason = await self._run_link(
                    reader, writer, d, cfg.name, "outgoing", cfg.peer, cfg.cost
                )
                d.state, d.error = "down", reason
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
        try:
            ctx = tls.server_context(acc)
            self.access_server = await asyncio.start_server(
                self._accept_link,
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

    async def _stop_access(self) -> None:
        if self.access_server is not None:
            self.access_server.close()
            self.access_server = None
        for h, owner in list(self.owners.items()):
            if isinstance(owner, Incoming):
                self.core.close_link(h, "link access changed")
        self.pump()

    async def _accept_link(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        endpoint = f"{peer[0]}:{peer[1]}" if peer else "?"
        inc = Incoming(endpoint)
        reason = await self._run_link(reader, writer, inc, f"incoming {endpoint}", "incoming")
        llog.debug("incoming link from %s ended: %s", endpoint, reason)

    # -- listeners and connectors ---------------------------------------------------------

    async def _start_listener(self, cfg: ListenerConfig) -> None:
        rt = ListenerRt(cfg)
        self.listeners[cfg.name] = rt
        await self._bind_listener(rt)

    async def _bind_listener(self, rt: ListenerRt) -> None:
        cfg = rt.cfg
        try:
            rt.server = await asyncio.start_server(
                functools.partial(self._accept_client, rt), cfg.host, cfg.port
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

    async def _accept_client(
        self, rt: ListenerRt, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lid = self.core.open_flow(rt.cfg.routing_key)
        if lid is None:
            # Nobody reachable serves the key: refuse at once rather than hang.
            flog.debug(
                "listener %s: no reachable connector for %s", rt.cfg.name, rt.cfg.routing_key
            )
            writer.transport.abort()
            return
        conn = LocalConn(self, lid, reader, writer)
        self.locals[lid] = conn
        conn.start()
        self.pump()

    def _pick_connector(self, key: str) -> ConnectorConfig | None:
        matching = [c for c in self.connectors if c.routing_key == key]
        if not matching:
            return None
        n = self._rr.get(key, 0)
        self._rr[key] = n + 1
        return matching[n % len(matching)]

    async def _connect(self, lid: int, key: str) -> None:
        core = self.core
        cc = self._pick_connector(key)
        if cc is None:
            core.local_connect_failed(lid)
            self.pump()
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(cc.host, cc.port)
        except (TimeoutError, OSError) as exc:
            flog.info("connector %s (%s:%d): %s", cc.name, cc.host, cc.port, tls.describe(exc))
            if self.core is core:
                core.local_connect_failed(lid)
                self.pump()
            return
        conn = LocalConn(self, lid, reader, writer)
        self.locals[lid] = conn
        if self.core is not core or not core.local_connected(lid):
            self.locals.pop(lid, None)
            writer.transport.abort()
            return
        conn.start()
        self.pump()

    def _apply_services(self) -> None:
        self.core.set_services(
            {rt.cfg.routing_key for rt in self.listeners.values()},
            {c.routing_key for c in self.connectors},
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
                return False
            await self._apply(new)
            return True

    async def _apply(self, new: LoadedConfig) -> None:
        old = self.cfg
        cfg = new.config
        self.loaded = new
        self.config_error = None
        set_level(cfg.log_level)
        if cfg.admin != old.admin and self.admin is not None:
            await self.admin.stop()
            await self.admin.start(cfg.admin.host, cfg.admin.port)
        if cfg.site != old.site:
            # A new router id: everything restarts under the new name.
            await self._stop_network()
            await self._start_network()
            self.in_force = new
            log.info("reloaded config %s (site renamed %s -> %s)", new.path, old.site, cfg.site)
            return
        # Removals first, so a port moved between entries can be bound again.
        want_l = {x.name: x for x in cfg.listeners}
        for name, rt in list(self.listeners.items()):
            if want_l.get(name) != rt.cfg:
                await self._stop_listener(name)
        for name, lc in want_l.items():
            if name not in self.listeners:
                await self._start_listener(lc)
        self.connectors = cfg.connectors
        self._apply_services()
        if cfg.link_access != old.link_access:
            await self._stop_access()
            await self._start_access()
        want_k = {x.name: x for x in cfg.links}
        for name, d in list(self.dialers.items()):
            if want_k.get(name) != d.cfg:
                await self._stop_dialer(name)
        for name, lk in want_k.items():
            if name not in self.dialers:
                self._start_dialer(lk)
        self.pump()
        self.in_force = new
        log.info("reloaded config %s", new.path)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cfg = self.cfg
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
                }
            )
        for owner in self.owners.values():
            if isinstance(owner, Incoming) and owner.peer is not None:
                links.append(
                    {
                        "name": owner.peer,
                        "direction": "incoming",
                        "peer": owner.peer,
                        "cost": owner.cost,
                        "state": "up",
                        "endpoint": owner.endpoint,
                        "error": None,
                    }
                )
        acc = cfg.link_access
        return {
            "site": cfg.site,
            "version": __version__,
            "config": {
                "path": self.loaded.path,
                "sha256": self.in_force.sha256 if self.in_force else None,
                "error": self.config_error,
            },
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
                }
                for rt in self.listeners.values()
            ],
            "connectors": [
                {"name": c.name, "routing_key": c.routing_key, "host": c.host, "port": c.port}
                for c in self.connectors
            ],
            "routing_keys": self.core.keys_status(),
            "flows": {"open": len(self.core.flows), "total": self.core.flows_total},
        }
