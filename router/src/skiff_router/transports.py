"""The asyncio protocols of the data path: one per TCP socket of a flow
(``LocalConn``) and one per TLS link (``LinkConn``). They hand what they read
to the core and carry out what it asks of their socket; the router (runtime.py)
owns them and pumps the core's output.

Sockets are driven by asyncio Protocols, not Streams: a flow costs two small
protocol objects and no Task, and credit maps onto pause_reading /
resume_reading. Local reads go into one shared buffer per router
(BufferedProtocol), sized by the flow's credit, so a read never exceeds what
the core may accept and one DATA frame carries one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from skiff_router import tls
from skiff_router.actions import Direction
from skiff_router.codec import HEADER_SIZE, MAX_DATA
from skiff_router.dialers import Incoming
from skiff_router.targets import Connector, ConnectorChoice

if TYPE_CHECKING:
    from skiff_router.dialers import Dialer
    from skiff_router.runtime import ListenerRt, Router

llog = logging.getLogger("link")
flog = logging.getLogger("flow")


class LocalConn(asyncio.BufferedProtocol):
    """One TCP socket of a flow (listener client or connector connection)."""

    __slots__ = (
        "allow",
        "connector",
        "core",
        "done",
        "flows",
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
        connector: Connector | None = None,
    ) -> None:
        self.router = router
        self.core = router.core
        self.flows = router.core.flows
        self.lid = lid
        self.transport: asyncio.Transport | None = None
        self.listener = listener
        self.connector = connector
        self.rpaused = False
        self.wpaused = False
        self.owed = 0  # bytes written but not yet handed back to the core as consumed
        self.allow = 0  # what the flow accepted when the read buffer was handed out
        self.done = False  # we closed or aborted it on purpose

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = tr = cast(asyncio.Transport, transport)
        router = self.router
        if router.core is not self.core:
            self.done = True
            tr.abort()
            return
        # Every byte written is reported consumed only once it left our buffer.
        tr.set_write_buffer_limits(high=0)
        if self.listener is not None:
            cfg = self.listener.cfg
            key = self.listener.keys.choose(cfg, self.core.topology.db)
            lid = None if key is None else self.flows.open(key, cfg.distribution)
            if lid is None:
                # Nobody reachable serves the key: refuse at once rather than hang.
                flog.debug("listener %s: no reachable connector for %s", cfg.name, cfg.key_names())
                self.done = True
                tr.abort()
                return
            self.lid = lid
            router.locals[lid] = self
        else:
            router.locals[self.lid] = self
            if self.connector is not None:
                ConnectorChoice.connected(self.connector)
            if not self.flows.local_connected(self.lid):
                router.locals.pop(self.lid, None)
                self.done = True
                tr.abort()
                return
        router.pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        allow = self.flows.read_allowance(self.lid)
        self.allow = allow or 0  # buffer_updated follows at once, with nothing in between
        buf = self.router.rbuf
        if not allow or allow < 0:
            return buf  # the flow is gone (or paused a moment late): data is dropped
        # Read behind room for a frame header: the core frames it in place.
        return buf[HEADER_SIZE : HEADER_SIZE + min(allow, MAX_DATA)]

    def buffer_updated(self, nbytes: int) -> None:
        allow = self.allow
        if allow <= 0:
            return
        self.flows.local_read(self.lid, self.router.rbuf, nbytes)
        if nbytes >= allow and not self.rpaused and self.transport is not None:
            # Credit exhausted: stop reading so TCP pushes back on the sender.
            self.rpaused = True
            self.transport.pause_reading()
        self.router.pump()

    def eof_received(self) -> bool:
        self.flows.local_eof(self.lid)
        self.router.pump()
        return True  # keep the write side open (half-close)

    def pause_writing(self) -> None:
        self.wpaused = True

    def resume_writing(self) -> None:
        self.wpaused = False
        if self.owed:
            n, self.owed = self.owed, 0
            self.flows.local_consumed(self.lid, n)
            self.router.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        router = self.router
        self.transport = None  # no protocol <-> transport cycle left behind
        if router.locals.get(self.lid) is self:
            del router.locals[self.lid]
        if self.connector is not None:
            ConnectorChoice.closed(self.connector)
            self.connector = None
        if self.done or router.core is not self.core:
            return
        if exc is not None:
            flog.debug("local %d: %s", self.lid, tls.describe(exc))
        # Not closed by us: whatever is left of the flow is reset.
        self.flows.local_reset(self.lid)
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
            self.flows.local_consumed(self.lid, n)

    def resume(self) -> None:
        if self.rpaused and self.transport is not None:
            self.rpaused = False
            self.transport.resume_reading()

    def write_eof(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            with contextlib.suppress(OSError):
                t.write_eof()
        else:
            # TLS cannot half-close (close_notify ends the session): the other
            # side finishing ends this one too, once what is queued is sent.
            self.flows.local_eof(self.lid)
            self.router.pump()

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
        direction: Direction,
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
        self.fingerprint: str | None = None  # of the client certificate (incoming links)
        self.transport: asyncio.Transport | None = None
        self.close_reason: str | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = tr = cast(asyncio.Transport, transport)
        router = self.router
        if router.core is not self.core:
            tr.abort()
            return
        owner = self.owner
        worker = owner.worker if isinstance(owner, Incoming) else owner.worker_socket is not None
        if worker:
            # Another worker of this router, over a private socket: both ends check
            # that the other is a process of this router's own worker group.
            if not router.accepts_worker(tr.get_extra_info("socket")):
                llog.warning("worker socket: the other end is not a worker of this router")
                tr.abort()
                return
            owner.endpoint = "worker socket"
            self.expected_site = router.cfg.site
        elif self.direction is Direction.INCOMING:
            peer = tr.get_extra_info("peername")
            self.owner.endpoint = f"{peer[0]}:{peer[1]}" if peer else "?"
            self.name = f"incoming {self.owner.endpoint}"
            # A token's client certificate names the site it was issued to: routers
            # of that site, and no other, may announce themselves over this link.
            self.expected_site = tls.peer_common_name(tr)
            self.fingerprint = tls.peer_fingerprint(tr)
        replaces = () if isinstance(owner, Incoming) else router.replaced_links(owner)
        bound = (
            None
            if worker or self.direction is not Direction.INCOMING
            else (router.credential_of(self.fingerprint))
        )
        if bound is not None and bound.grant is not None:
            # A grant names no site: the sites that redeem it are recorded (grants.py).
            self.expected_site = None
        self.handle = self.core.link_connected(
            self.name,
            self.direction,
            self._loop.time(),
            self.expected_site,
            self.cost,
            worker,
            replaces,
            bound,
        )
        router.links[self.handle] = self
        if self.direction is Direction.INCOMING and not worker:
            # Refused after the handshake, with a CLOSE the dialer shows, not a reset.
            router.refuse_if_not_accepted(self)
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
        if not self.closed.done():
            self.closed.set_result(self.close_reason or reason)
        if self.peer is not None and router.core is self.core:
            router.event("link-down", peer=self.peer)
        if self.direction is Direction.INCOMING:
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
