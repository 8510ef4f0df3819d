"""Link connection state machine (sans-I/O).

One instance per TLS connection between two routers. It owns the frame
decoder, the HELLO exchange, keepalive and flow id bookkeeping; what the
frames mean (routing, flows, multicast) is the router core's business.

The link's phases and the moves between them are the table below; nothing
else changes ``phase``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from skiff_router.codec import (
    HEADER,
    MAX_FLOW_ID,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameType,
    Hello,
    ProtocolError,
    RawFrame,
    decode_hello,
    decode_reason,
    encode_hello,
)
from skiff_router.config import Mode

PING_INTERVAL = 1.0  # seconds between keepalives
DEAD_AFTER = 3.0  # nothing heard for this long: the neighbour is gone
HELLO_TIMEOUT = 5.0


class LinkPhase(Enum):
    HELLO = "hello"  # our HELLO sent, waiting for the peer's
    UP = "up"  # HELLOs exchanged: frames of every kind flow
    # A newer link between the same routers replaced this one (make-before-break):
    # its flows run to their end, no new flow starts on it.
    DRAINING = "draining"
    CLOSED = "closed"  # closed by either side; nothing more is sent or read


TRANSITIONS: dict[LinkPhase, frozenset[LinkPhase]] = {
    LinkPhase.HELLO: frozenset({LinkPhase.UP, LinkPhase.CLOSED}),
    LinkPhase.UP: frozenset({LinkPhase.DRAINING, LinkPhase.CLOSED}),
    LinkPhase.DRAINING: frozenset({LinkPhase.CLOSED}),
    LinkPhase.CLOSED: frozenset(),
}

# Frames the core sees (everything else is the link's own business).
_TO_CORE = frozenset(FrameType) - {
    FrameType.HELLO,
    FrameType.PING,
    FrameType.PONG,
    FrameType.CLOSE,
    FrameType.DRAIN,
}
_DATA = FrameType.DATA
_OPEN = FrameType.OPEN
_UP = LinkPhase.UP
_DRAINING = LinkPhase.DRAINING
_CLOSED = LinkPhase.CLOSED


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer: str  # the peer's router id
    cost: int
    mode: Mode  # the peer's mode
    site: str  # the peer's site
    instance: str = ""  # the peer router's run (its HELLO's; "" from older routers)


@dataclass(frozen=True, slots=True)
class LinkClosed:
    reason: str  # detailed, for our log and status only


@dataclass(frozen=True, slots=True)
class LinkDraining:
    """The peer replaced this link with a newer one (it sent DRAIN)."""


# What receive_data returns: frames for the core as (type, flow id, payload)
# tuples, in order with the link's own events.
LinkEvent = LinkUp | LinkClosed | LinkDraining | RawFrame


class LinkProtocol:
    def __init__(
        self,
        local_id: str,
        *,
        dialer: bool,
        now: float,
        expected_site: str | None = None,
        cost: int = 1,
        mode: Mode = Mode.INTERIOR,
        site: str = "",
        instance: str = "",
    ) -> None:
        self.local_id = local_id  # our router id
        self.site = site or local_id
        self.mode = mode
        self.dialer = dialer
        # The site the far router must belong to: for a dialer the link's peer,
        # for an acceptor the site named by the client certificate.
        self.expected_site = expected_site
        self.cost = cost
        self.phase = LinkPhase.HELLO
        self.peer: str | None = None  # the peer's router id, once up
        self.peer_site: str | None = None
        self.peer_mode = Mode.INTERIOR
        self.close_reason: str | None = None
        self.peer_drains = False  # the peer understands DRAIN (its HELLO says so)
        self.drained_by_peer = False  # DRAIN received: closing it when empty is ours
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []  # header and payload pieces, joined once per write
        self._last_rx = now
        self._last_ping = now
        self._started = now
        # Flow ids: the dialer allocates odd ids, the acceptor even ones, so the
        # two sides never collide. Ids only grow; a link carries < 2**31 flows.
        self._next_id = 1 if dialer else 2
        self._peer_max = 0  # highest flow id the peer has opened
        hello = Hello(PROTOCOL_VERSION, local_id, self.site, cost, mode, instance=instance)
        self.send(FrameType.HELLO, 0, encode_hello(hello))

    def _to(self, phase: LinkPhase) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"link cannot go from {self.phase.value} to {phase.value}")
        self.phase = phase

    @property
    def up(self) -> bool:
        """HELLOs exchanged and not closed: it carries frames (draining too)."""
        return self.phase is _UP or self.phase is _DRAINING

    @property
    def draining(self) -> bool:
        return self.phase is _DRAINING

    def drain(self) -> bool:
        """A newer link replaces this one: no new flow starts on it from either side.
        False if the peer does not understand DRAIN (the caller closes the link)."""
        if self.phase is not _UP or not self.peer_drains:
            return False
        self.send(FrameType.DRAIN)
        self._to(_DRAINING)
        return True

    @property
    def closed(self) -> bool:
        return self.phase is _CLOSED

    # -- output -----------------------------------------------------------------------

    def send(self, ftype: FrameType, flow: int = 0, payload: bytes = b"") -> None:
        if self.phase is _CLOSED:
            return
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise ValueError("payload too large")
        self._out.append(HEADER.pack(ftype, 0, flow, n))
        if n:
            self._out.append(payload)

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete, already encoded frame (header included)."""
        if self.phase is not _CLOSED:
            self._out.append(frame)

    def take_output(self) -> list[bytes]:
        """Pending output as pieces (no copy); the I/O layer joins them per write."""
        out, self._out = self._out, []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def allocate_flow_id(self) -> int:
        fid = self._next_id
        if fid > MAX_FLOW_ID:
            raise RuntimeError("flow ids exhausted on this link")
        self._next_id += 2
        return fid

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[LinkEvent]:
        """Bytes from the peer -> events (a DATA payload may be a read-only memoryview)."""
        if self.phase is _CLOSED:
            return []
        self._last_rx = now
        events: list[LinkEvent] = []
        try:
            for frame in self._decoder.feed(data):
                t, fid = frame[0], frame[1]
                if (self.phase is _UP or self.phase is _DRAINING) and t in _TO_CORE:
                    if fid:
                        self._check_flow_id(t, fid)
                    events.append(frame)
                    continue
                ev = self._link_frame(t, frame[2])
                if ev is not None:
                    events.append(ev)
                if self.phase is _CLOSED:
                    break
        except ProtocolError as exc:
            events.append(self.fail(f"protocol error: {exc.reason}", "protocol error"))
        return events

    def _check_flow_id(self, t: FrameType, fid: int) -> None:
        """A flow frame's id must belong to a flow that was opened at some point."""
        if (fid & 1 == 1) == self.dialer:  # one of ours
            if t is _OPEN or fid >= self._next_id:
                raise ProtocolError(f"{t.name} for flow {fid} that was never opened")
        elif t is _OPEN:
            if fid <= self._peer_max:
                raise ProtocolError(f"OPEN with out-of-order flow id {fid}")
            self._peer_max = fid
        elif fid > self._peer_max:
            raise ProtocolError(f"{t.name} for flow {fid} that was never opened")

    def _link_frame(self, t: FrameType, payload: bytes | memoryview) -> LinkEvent | None:
        if t is FrameType.CLOSE:
            self.close_reason = f"closed by peer: {decode_reason(bytes(payload))}"
            self._to(_CLOSED)
            return LinkClosed(self.close_reason)
        if self.phase is LinkPhase.HELLO:
            if t is not FrameType.HELLO:
                raise ProtocolError(f"{t.name} before HELLO")
            return self._hello(decode_hello(bytes(payload)))
        if t is FrameType.HELLO:
            raise ProtocolError("second HELLO")
        if t is FrameType.PING:
            if len(payload) > 8:
                raise ProtocolError("PING payload too large")
            self.send(FrameType.PONG, 0, bytes(payload))
        elif t is FrameType.DRAIN:
            if payload:
                raise ProtocolError("DRAIN with a payload")
            if self.phase is _UP:  # a second DRAIN changes nothing
                self._to(_DRAINING)
                self.drained_by_peer = True
                return LinkDraining()
        return None  # PONG: the time of arrival was all it carried

    def _hello(self, hello: Hello) -> LinkEvent:
        site = hello.site
        if self.expected_site is not None and site != self.expected_site:
            return self.fail(
                f"peer router {hello.router!r} announced site {site!r}, "
                f"expected {self.expected_site!r}",
                "unexpected site",
            )
        if hello.router == self.local_id:
            return self.fail(
                f"peer announced our own router id {hello.router!r}", "duplicate router id"
            )
        peer_mode = hello.mode
        if peer_mode is Mode.EDGE and self.mode is Mode.EDGE:
            return self.fail(
                f"peer {hello.router!r} is an edge router like us: edges link to interiors",
                "edge to edge link",
            )
        self.peer, self.peer_site, self.peer_mode = hello.router, site, peer_mode
        self.peer_drains = hello.drain
        if not self.dialer:
            self.cost = hello.cost
        self._to(_UP)
        return LinkUp(hello.router, self.cost, peer_mode, site, hello.instance)

    # -- time -------------------------------------------------------------------------

    def tick(self, now: float) -> LinkClosed | None:
        if self.phase is _CLOSED:
            return None
        if self.phase is LinkPhase.HELLO and now - self._started > HELLO_TIMEOUT:
            return self.fail("no HELLO from peer in time", "timeout")
        if now - self._last_rx > DEAD_AFTER:
            return self.fail(f"no traffic from peer for {now - self._last_rx:.1f}s", "timeout")
        if self.up and now - self._last_ping >= PING_INTERVAL:
            self.send(FrameType.PING)
            self._last_ping = now
        return None

    def fail(self, reason: str, public: str) -> LinkClosed:
        """Close the link: the peer gets only the short public code."""
        if self.phase is not _CLOSED:
            self.send(FrameType.CLOSE, 0, public.encode("ascii"))
            self._to(_CLOSED)
            self.close_reason = reason
        return LinkClosed(self.close_reason or reason)

    def lost(self, reason: str) -> LinkClosed:
        """The transport is gone: nothing can be sent any more."""
        if self.phase is not _CLOSED:
            self._to(_CLOSED)
            self.close_reason = reason
        return LinkClosed(self.close_reason or reason)
