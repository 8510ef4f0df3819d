"""Link connection state machine (sans-I/O).

One instance per TLS connection between two routers. It owns the frame
decoder, the HELLO exchange, keepalive, and flow id bookkeeping; everything
above (routing, flows) is the router core's business.

States: ``hello`` (our HELLO sent, waiting for the peer's) -> ``up`` -> ``closed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skiff_router.codec import (
    HEADER,
    MAX_FLOW_ID,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    ProtocolError,
    decode_hello,
    decode_reason,
    encode_hello,
)

PING_INTERVAL = 1.0  # seconds between keepalives when the link is otherwise idle
DEAD_AFTER = 3.0  # nothing heard for this long: the neighbour is gone
HELLO_TIMEOUT = 5.0
_DATA = FrameType.DATA


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer: str  # the peer's router id
    cost: int
    mode: str = "interior"  # the peer's mode
    site: str = ""  # the peer's site ("" = its router id)


@dataclass(frozen=True, slots=True)
class LinkClosed:
    reason: str  # detailed, for our log and status only


@dataclass(frozen=True, slots=True)
class FrameIn:
    frame: Frame


LinkEvent = LinkUp | LinkClosed | FrameIn


class LinkProtocol:
    def __init__(
        self,
        local_id: str,
        *,
        dialer: bool,
        now: float,
        expected_site: str | None = None,
        cost: int = 1,
        mode: str = "interior",
        site: str = "",
    ) -> None:
        self.local_id = local_id  # our router id
        self.site = site or local_id
        self.mode = mode
        self.peer_mode = "interior"
        self.dialer = dialer
        # The site the far router must belong to: for a dialer the link's peer,
        # for an acceptor the site named by the client certificate.
        self.expected_site = expected_site
        self.cost = cost
        self.state = "hello"
        self.peer: str | None = None  # the peer's router id, once up
        self.peer_site: str | None = None
        self.close_reason: str | None = None
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []  # header and payload pieces, joined once per write
        self._last_rx = now
        self._last_tx = now
        self._started = now
        # Flow ids: the dialer allocates odd ids, the acceptor even ones, so the
        # two sides never collide. Ids only grow; a link carries < 2**31 flows.
        self._next_id = 1 if dialer else 2
        self._peer_max = 0  # highest flow id the peer has opened
        hello = Hello(PROTOCOL_VERSION, local_id, self.site, cost, mode)
        self.send(FrameType.HELLO, 0, encode_hello(hello))

    # -- output -----------------------------------------------------------------------

    def send(self, ftype: FrameType, flow: int = 0, payload: bytes = b"") -> None:
        if self.state == "closed":
            return
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise ValueError("payload too large")
        self._out.append(HEADER.pack(ftype, 0, flow, n))
        if n:
            self._out.append(payload)

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete, already encoded frame (header included)."""
        if self.state != "closed":
            self._out.append(frame)

    def take_output(self) -> list[bytes]:
        """Pending output as pieces (no copy); the I/O layer joins or writelines them."""
        out, self._out = self._out, []
        return out

    def data_to_send(self) -> bytes:
        return b"".join(self.take_output())

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def allocate_flow_id(self) -> int:
        fid = self._next_id
        if fid > MAX_FLOW_ID:
            raise RuntimeError("flow ids exhausted on this link")
        self._next_id += 2
        return fid

    def is_own_id(self, fid: int) -> bool:
        return (fid % 2 == 1) == self.dialer

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[LinkEvent]:
        out: list[LinkEvent] = []
        for ev in self.receive(data, now):
            if isinstance(ev, tuple):
                out.append(FrameIn(Frame(ev[0], ev[1], bytes(ev[2]))))
            else:
                out.append(ev)
        return out

    def receive(self, data: bytes, now: float) -> list[Any]:
        """Like receive_data, but frames for the core come as (type, flow id,
        payload) tuples (a DATA payload may be a read-only memoryview)."""
        if self.state == "closed":
            return []
        self._last_rx = now
        try:
            frames = self._decoder.feed_raw(data)
            events: list[Any] = []
            up = self.state == "up"
            for frame in frames:
                t, fid = frame[0], frame[1]
                if up and t is _DATA:
                    # The hot path: DATA on an up link; only the flow id to check.
                    if (fid % 2 == 1) == self.dialer:
                        if fid >= self._next_id:
                            raise ProtocolError(f"DATA for flow {fid} that was never opened")
                    elif fid > self._peer_max:
                        raise ProtocolError(f"DATA for flow {fid} that was never opened")
                    events.append(frame)
                    continue
                ev = self._handle(frame)
                if ev is not None:
                    events.append(ev)
                if self.state == "closed":
                    break
                up = self.state == "up"
            return events
        except ProtocolError as exc:
            return [self.fail(f"protocol error: {exc.reason}", "protocol error")]

    def _handle(self, frame: tuple[FrameType, int, Any]) -> Any:
        t, fid, payload = frame
        if t is FrameType.CLOSE:
            reason = decode_reason(payload)
            self.state = "closed"
            self.close_reason = f"closed by peer: {reason}"
            return LinkClosed(self.close_reason)
        if self.state == "hello":
            if t is not FrameType.HELLO:
                raise ProtocolError(f"{t.name} before HELLO")
            hello = decode_hello(payload)
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
            if hello.mode == "edge" and self.mode == "edge":
                return self.fail(
                    f"peer {hello.router!r} is an edge router like us: edges link to interiors",
                    "edge to edge link",
                )
            self.peer = hello.router
            self.peer_site = site
            self.peer_mode = hello.mode
            if not self.dialer:
                self.cost = hello.cost
            self.state = "up"
            return LinkUp(hello.router, self.cost, hello.mode, site)
        if t is FrameType.HELLO:
            raise ProtocolError("second HELLO")
        if t is FrameType.PING:
            if len(payload) > 8:
                raise ProtocolError("PING payload too large")
            self.send(FrameType.PONG, 0, payload)
            return None
        if t is FrameType.PONG:
            return None
        if t is FrameType.LSA or t is FrameType.MCAST:
            return frame
        # Flow frames: the id must belong to a flow that was opened at some point.
        own = self.is_own_id(fid)
        if t is FrameType.OPEN:
            if own or fid <= self._peer_max:
                raise ProtocolError(f"OPEN with out-of-order flow id {fid}")
            self._peer_max = fid
        elif (own and fid >= self._next_id) or (not own and fid > self._peer_max):
            raise ProtocolError(f"{t.name} for flow {fid} that was never opened")
        return frame

    # -- time -------------------------------------------------------------------------

    def tick(self, now: float) -> list[LinkEvent]:
        if self.state == "closed":
            return []
        if self.state == "hello" and now - self._started > HELLO_TIMEOUT:
            return [self.fail("no HELLO from peer in time", "timeout")]
        if now - self._last_rx > DEAD_AFTER:
            return [self.fail(f"no traffic from peer for {now - self._last_rx:.1f}s", "timeout")]
        if self.state == "up" and now - self._last_tx >= PING_INTERVAL:
            self.send(FrameType.PING)
            self._last_tx = now
        return []

    def note_sent(self, now: float) -> None:
        """The I/O layer wrote something: an explicit PING is not needed yet."""
        self._last_tx = now

    def fail(self, reason: str, public: str) -> LinkClosed:
        """Close the link: the peer gets only the short public code."""
        if self.state != "closed":
            self.send(FrameType.CLOSE, 0, public.encode("ascii"))
            self.state = "closed"
            self.close_reason = reason
        return LinkClosed(self.close_reason or reason)
