"""Router core (sans-I/O): links, link-state routing and flows.

The I/O layer feeds it bytes and socket events and carries out the actions it
returns; nothing here blocks or touches a socket, so whole networks of cores
can be tested with a fake network.

A flow inside one router joins two *ends*. An end is either a link end
(link handle, flow id on that link) or a local end (a TCP socket of a
listener or connector, known by a local id). Data entering one end leaves
through the other. Per direction, credit bounds what is in flight: a link
peer may send only what we granted (WINDOW frames), and we grant more only
when the bytes have left through the other end (sent on the next link, or
written and drained to the local socket). So one slow receiver stalls its own
flow, never the link, and a flow holds at most INITIAL_WINDOW bytes per
direction in any router.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from skiff_router.codec import (
    HEADER,
    HEADER_SIZE,
    MAX_DATA,
    MAX_HOPS,
    EdgeInfo,
    FrameType,
    Lsa,
    Mcast,
    Open,
    ProtocolError,
    decode_lsa,
    decode_mcast,
    decode_open,
    decode_reason,
    decode_window,
    encode_lsa,
    encode_mcast,
    encode_open,
    encode_window,
)
from skiff_router.link import LinkClosed, LinkProtocol, LinkUp
from skiff_router.routing import LinkStateDb

log = logging.getLogger("core")
flog = logging.getLogger("flow")

INITIAL_WINDOW = 512 * 1024  # per flow and direction
GRANT_THRESHOLD = INITIAL_WINDOW // 4  # batch WINDOW frames
MAX_CREDIT = 1 << 31
DOWN_BACKOFF = 2.0  # a target that refused a flow gets no new flows for this long
MAX_ATTEMPTS = 3  # targets tried for one flow before the client is reset
# Open flows one peer may have on one link: each costs a connection to a
# backend here, so a peer cannot open without bound.
MAX_LINK_FLOWS = 50_000
_DATA = FrameType.DATA

# -- actions for the I/O layer ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectLocal:
    """Open a connection to a local connector for ``key``; report back with
    local_connected / local_connect_failed."""

    lid: int
    key: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Write ``data`` to the local socket, then call local_consumed(lid, len)."""

    lid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DeliverEof:
    lid: int


@dataclass(frozen=True, slots=True)
class CloseLocal:
    """Close the local socket once earlier actions for it are done; abort = reset."""

    lid: int
    abort: bool


@dataclass(frozen=True, slots=True)
class ResumeRead:
    lid: int


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    link: int
    peer: str  # router id
    cost: int
    site: str = ""  # the peer's site


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Send what is pending for the link, then close its transport."""

    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class McastDeliver:
    """A multicast message for local subscribers of ``message.address``."""

    message: Mcast


Action = (
    ConnectLocal
    | Deliver
    | DeliverEof
    | CloseLocal
    | ResumeRead
    | LinkEstablished
    | CloseLink
    | McastDeliver
)

# -- state ---------------------------------------------------------------------------------


@dataclass(eq=False)
class End:
    flow: Flow
    link: LinkState | None  # None: a local socket
    ident: int  # flow id on the link, or local id
    # Outbound: data leaving the router through this end.
    credit: int = INITIAL_WINDOW  # link: bytes the peer still accepts
    queue: deque[bytes] = field(default_factory=deque)
    eof_pending: bool = False
    eof_sent: bool = False
    connected: bool = True  # local connector end: False until connected
    # Inbound: data entering the router through this end.
    allowance: int = INITIAL_WINDOW  # bytes that may still arrive before more credit
    to_grant: int = 0  # link: released bytes not yet granted back
    eof_received: bool = False
    skip_release: int = 0  # bytes already released once (a retried flow resends them)


@dataclass(eq=False)
class Flow:
    """ends[0] faces the client (listener side), ends[1] the connector side."""

    id: int
    key: str
    src: str
    dest: str
    ends: list[End] = field(default_factory=list)
    bytes_out: int = 0  # client -> connector
    bytes_back: int = 0  # connector -> client
    origin: bool = False  # opened here by a listener client
    accepted: bool = False  # the destination's connector took the connection
    # Origin only, until accepted: what the client sent, for a retry on another target.
    replay: list[bytes] | None = None
    replay_len: int = 0
    tried: list[str] = field(default_factory=list)

    def other(self, end: End) -> End:
        return self.ends[1] if end is self.ends[0] else self.ends[0]


@dataclass(eq=False)
class LinkState:
    handle: int
    name: str
    direction: str  # "outgoing" | "incoming"
    proto: LinkProtocol
    flows: dict[int, End] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.proto.state == "up"

    @property
    def peer(self) -> str | None:
        return self.proto.peer

    @property
    def cost(self) -> int:
        return self.proto.cost

    @property
    def to_edge(self) -> bool:
        return self.proto.peer_mode == "edge"


class RouterCore:
    def __init__(
        self,
        router_id: str,
        now: float,
        seq: int | None = None,
        mode: str = "interior",
        site: str = "",
    ) -> None:
        self.id = router_id
        self.site = site or router_id  # several routers (replicas) may share a site
        self.mode = mode
        self.edge = mode == "edge"
        self.db = LinkStateDb(router_id)
        self.links: dict[int, LinkState] = {}
        self.locals: dict[int, End] = {}
        self.flows: dict[int, Flow] = {}
        self.flows_total = 0
        self.listener_keys: frozenset[str] = frozenset()
        self.connector_keys: frozenset[str] = frozenset()
        # A restarted router must supersede its old LSA still held by others:
        # start the sequence from the wall clock in milliseconds.
        self._seq = seq if seq is not None else int(time.time() * 1000)
        self._next_handle = 1
        self._next_lid = 1
        self._next_flow = 1
        self._actions: list[Action] = []
        self._dirty: set[int] = set()
        self._closing: dict[int, LinkState] = {}  # closed links whose CLOSE frame is unsent
        self._now = now
        # Balanced routing: flows opened here and still open, per key and target.
        self.outstanding: dict[str, dict[str, int]] = {}
        self._down: dict[str, dict[str, float]] = {}  # key -> target -> until
        self.key_bytes: dict[str, list[int]] = {}  # finished flows: key -> [out, back]
        self.retries = 0
        # Edges attached to us (interior): id -> (seq, their LSA) from their own links.
        self._edge_lsas: dict[str, Lsa] = {}
        self._mc_seq = (seq if seq is not None else int(time.time() * 1000)) * 1000
        self._mc_seen: dict[str, int] = {}
        self.mcast_in = 0
        self._originate()

    # -- plumbing ----------------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def pending_writes(self) -> list[tuple[int, list[bytes]]]:
        """Output pieces per link handle (including a closed link's CLOSE frame)."""
        out = []
        for h in self._dirty:
            ls = self.links.get(h) or self._closing.get(h)
            if ls is not None:
                data = ls.proto.take_output()
                if data:
                    out.append((h, data))
        self._dirty.clear()
        self._closing.clear()
        return out

    def _send(self, ls: LinkState, ftype: FrameType, flow: int = 0, payload: bytes = b"") -> None:
        ls.proto.send(ftype, flow, payload)
        self._dirty.add(ls.handle)

    # -- services ----------------------------------------------------------------------

    def set_services(
        self, listener_keys: set[str] | frozenset[str], connector_keys: set[str] | frozenset[str]
    ) -> None:
        lk, ck = frozenset(listener_keys), frozenset(connector_keys)
        if (lk, ck) != (self.listener_keys, self.connector_keys):
            self.listener_keys, self.connector_keys = lk, ck
            self._originate()

    # -- links -------------------------------------------------------------------------

    def link_connected(
        self, name: str, direction: str, now: float, expected_site: str | None = None, cost: int = 1
    ) -> int:
        """A transport to another router is up; returns the link handle."""
        self._now = now
        h = self._next_handle
        self._next_handle += 1
        proto = LinkProtocol(
            self.id,
            dialer=direction == "outgoing",
            now=now,
            expected_site=expected_site,
            cost=cost,
            mode=self.mode,
            site=self.site,
        )
        self.links[h] = LinkState(h, name, direction, proto)
        self._dirty.add(h)
        return h

    def link_data(self, handle: int, data: bytes, now: float) -> None:
        self._now = now
        ls = self.links.get(handle)
        if ls is None:
            return
        links = self.links
        frame = self._frame
        for ev in ls.proto.receive(data, now):
            if isinstance(ev, tuple):
                try:
                    frame(ls, ev[0], ev[1], ev[2])
                except ProtocolError as exc:
                    self._close_link(
                        ls, ls.proto.fail(f"protocol error: {exc.reason}", "protocol error")
                    )
            elif isinstance(ev, LinkUp):
                self._link_up(ls)
            elif isinstance(ev, LinkClosed):
                self._close_link(ls, ev)
            if handle not in links:
                break
        if ls.proto.has_output:
            self._dirty.add(handle)

    def link_lost(self, handle: int, reason: str) -> None:
        """The transport closed or failed."""
        ls = self.links.get(handle)
        if ls is not None:
            ls.proto.state = "closed"
            self._close_link(ls, LinkClosed(reason), notify=False)

    def close_link(self, handle: int, reason: str = "link removed") -> None:
        """Close a link on purpose (config change, shutdown)."""
        ls = self.links.get(handle)
        if ls is not None:
            self._close_link(ls, ls.proto.fail(reason, "closing"))

    def tick(self, now: float) -> None:
        self._now = now
        for ls in list(self.links.values()):
            for ev in ls.proto.tick(now):
                if isinstance(ev, LinkClosed):
                    self._close_link(ls, ev)
            if ls.handle in self.links and ls.proto.has_output:
                self._dirty.add(ls.handle)
        if self.db.purge(now):
            self.db.compute()

    def _link_up(self, ls: LinkState) -> None:
        log.info("link %s (%s) up: peer %s, cost %d", ls.name, ls.direction, ls.peer, ls.cost)
        self._actions.append(
            LinkEstablished(ls.handle, ls.peer or "", ls.cost, ls.proto.peer_site or "")
        )
        if not self.edge:
            # Give the new neighbour (interior or edge) the whole database; an edge
            # only ever sends its own LSA, to its interiors.
            for lsa in self.db.lsas.values():
                if lsa.router != self.id:
                    self._send(ls, FrameType.LSA, 0, encode_lsa(lsa))
        self._originate()

    def _close_link(self, ls: LinkState, ev: LinkClosed, notify: bool = True) -> None:
        if ls.handle not in self.links:
            return
        was_up = ls.peer is not None
        del self.links[ls.handle]
        self._closing[ls.handle] = ls
        self._dirty.add(ls.handle)
        log.log(
            logging.INFO if was_up else logging.WARNING,
            "link %s (%s) closed: %s",
            ls.name,
            ls.direction,
            ev.reason,
        )
        for end in list(ls.flows.values()):
            if not self._retry(end.flow, end, "link lost"):
                self._reset(end.flow, end, "link lost")
        ls.flows.clear()
        if notify:
            self._actions.append(CloseLink(ls.handle, ev.reason))
        if was_up:
            if ls.to_edge and ls.peer and self._link_to(ls.peer) is None:
                self._edge_lsas.pop(ls.peer, None)
            self._originate()

    def neighbours(self, edges: bool = False) -> dict[str, int]:
        """Up neighbours and the least cost to each (several links may join a pair);
        interior routers list interiors only, edges separately (``edges=True``)."""
        out: dict[str, int] = {}
        for ls in self.links.values():
            if ls.up and ls.peer and (self.edge or ls.to_edge == edges):
                out[ls.peer] = min(ls.cost, out.get(ls.peer, ls.cost))
        return out

    def _link_to(self, router: str) -> LinkState | None:
        best: LinkState | None = None
        for ls in self.links.values():
            if ls.up and ls.peer == router and (best is None or ls.cost < best.cost):
                best = ls
        return best

    # -- routing -----------------------------------------------------------------------

    def _originate(self) -> None:
        """(Re)advertise our own state to every neighbour."""
        self._seq += 1
        edges: tuple[EdgeInfo, ...] = ()
        if not self.edge:
            edges = tuple(
                EdgeInfo(
                    e,
                    cost,
                    self._edge_lsas[e].connectors,
                    self._edge_lsas[e].listeners,
                    self._edge_lsas[e].site,
                )
                for e, cost in sorted(self.neighbours(edges=True).items())
                if e in self._edge_lsas
            )
        lsa = Lsa(
            site=self.site,
            router=self.id,
            seq=self._seq,
            links=tuple(sorted(self.neighbours().items())),
            connectors=self.connector_keys,
            listeners=self.listener_keys,
            edges=edges,
        )
        self.db.update(lsa)
        self.db.compute()
        payload = encode_lsa(lsa)
        for ls in self.links.values():
            if ls.up:
                self._send(ls, FrameType.LSA, 0, payload)

    def _lsa(self, ls: LinkState, payload: bytes) -> None:
        lsa = decode_lsa(payload)
        if ls.to_edge:
            # An edge speaks only for itself; we advertise it on its behalf.
            if lsa.router != ls.peer:
                raise ProtocolError("edge sent an LSA for another router")
            old = self._edge_lsas.get(lsa.router)
            if old is None or lsa.seq > old.seq:
                self._edge_lsas[lsa.router] = lsa
                if old is None or (old.connectors, old.listeners) != (
                    lsa.connectors,
                    lsa.listeners,
                ):
                    self._originate()
            return
        if lsa.router == self.id:
            # An older incarnation of ourselves is still advertised: outbid it. Our
            # own current LSA coming back (several links to one neighbour) is not.
            mine = self.db.lsas.get(self.id)
            if lsa.seq > self._seq or (lsa.seq == self._seq and lsa != mine):
                self._seq = lsa.seq
                self._originate()
            return
        if not self.db.update(lsa):
            return
        if not self.edge:
            for other in self.links.values():
                if other is not ls and other.up:
                    self._send(other, FrameType.LSA, 0, payload)
        self.db.compute()

    # -- multicast ---------------------------------------------------------------------

    def publish(self, address: str, payload: bytes) -> int:
        """Send a multicast message to every subscriber of ``address`` in the network
        (local ones included). Returns its sequence number."""
        self._mc_seq += 1
        msg = Mcast(self.id, self._mc_seq, address, payload)
        self._actions.append(McastDeliver(msg))
        data = encode_mcast(msg)
        for ls in self.links.values():
            if ls.up:
                self._send(ls, FrameType.MCAST, 0, data)
        return msg.seq

    def _mcast(self, ls: LinkState, payload: bytes) -> None:
        # Flooded with de-duplication: over FIFO links the first copy of each message
        # reaches a router in origin order, so "highest seq seen per origin" drops
        # every later copy and keeps per-origin order.
        msg = decode_mcast(payload)
        if msg.origin == self.id or msg.seq <= self._mc_seen.get(msg.origin, -1):
            return
        self._mc_seen[msg.origin] = msg.seq
        self.mcast_in += 1
        self._actions.append(McastDeliver(msg))
        if self.edge:
            return  # edges never forward
        for other in self.links.values():
            if other is not ls and other.up:
                self._send(other, FrameType.MCAST, 0, payload)

    # -- frames ------------------------------------------------------------------------

    def _frame(self, ls: LinkState, t: FrameType, fid: int, payload: bytes) -> None:
        if t is _DATA:
            end = ls.flows.get(fid)
            if end is None:
                return  # a flow that closed or was reset: frames may still be on the wire
            if end.eof_received:
                raise ProtocolError(f"DATA after END on flow {fid}")
            if len(payload) > end.allowance:
                raise ProtocolError(f"flow {fid} exceeded its window")
            if payload:
                self._data_in(end, payload)
            return
        if t is FrameType.LSA:
            self._lsa(ls, payload)
            return
        if t is FrameType.MCAST:
            self._mcast(ls, payload)
            return
        if t is FrameType.OPEN:
            self._open_in(ls, fid, decode_open(payload))
            return
        end = ls.flows.get(fid)
        if end is None:
            # A flow that closed or was reset: frames may still be on the wire.
            if t is FrameType.WINDOW:
                decode_window(payload)
            return
        if t is FrameType.DATA:
            if end.eof_received:
                raise ProtocolError(f"DATA after END on flow {fid}")
            if len(payload) > end.allowance:
                raise ProtocolError(f"flow {fid} exceeded its window")
            if payload:
                self._data_in(end, payload)
        elif t is FrameType.ACCEPT:
            if payload:
                raise ProtocolError(f"ACCEPT with a payload on flow {fid}")
            self._accepted(end.flow)
        elif t is FrameType.END:
            if end.eof_received:
                raise ProtocolError(f"second END on flow {fid}")
            self._eof_in(end)
        elif t is FrameType.WINDOW:
            end.credit += decode_window(payload)
            if end.credit > MAX_CREDIT:
                raise ProtocolError(f"flow {fid} credit overflow")
            self._flush(end)
        elif t is FrameType.RESET:
            reason = decode_reason(payload)
            flog.debug("flow %d reset by %s: %s", end.flow.id, ls.peer, reason)
            if not self._retry(end.flow, end, reason):
                self._reset(end.flow, end, reason)

    def _open_in(self, ls: LinkState, fid: int, op: Open) -> None:
        flow = self._new_flow(op.key, op.src, op.dest)
        self._link_end(flow, ls, fid)
        if len(ls.flows) > MAX_LINK_FLOWS:
            self._reset(flow, None, "too many flows")
            return
        if op.dest == self.id:
            if op.key not in self.connector_keys:
                # Refused here: the RESET must go back to the sender (no origin to spare).
                self._reset(flow, None, "no connector")
                return
            b = self._local_end(flow, connected=False)
            self._actions.append(ConnectLocal(b.ident, op.key))
        else:
            route = self.db.routes.get(op.dest)
            out = self._link_to(route.next_hop) if route and route.next_hop else None
            # An edge never forwards transit traffic.
            if out is None or out is ls or op.hops + 1 >= MAX_HOPS or self.edge:
                self._reset(flow, None, "no route")
                return
            b = self._link_end(flow, out, out.proto.allocate_flow_id())
            fwd = Open(op.key, op.dest, op.src, op.hops + 1)
            self._send(out, FrameType.OPEN, b.ident, encode_open(fwd))
        flog.debug("flow %d %s: %s -> %s via %s", flow.id, op.key, op.src, op.dest, ls.peer)

    # -- flows ---------------------------------------------------------------------------

    def _new_flow(self, key: str, src: str, dest: str) -> Flow:
        flow = Flow(self._next_flow, key, src, dest)
        self._next_flow += 1
        self.flows[flow.id] = flow
        self.flows_total += 1
        return flow

    def _avoid(self, key: str) -> set[str]:
        down = self._down.get(key)
        if not down:
            return set()
        now = self._now
        for r in [r for r, until in down.items() if until <= now]:
            del down[r]
        return set(down)

    def _connect_end(self, flow: Flow, dest: str) -> End | None:
        """Create the connector-side end of an origin flow toward ``dest``."""
        if dest == self.id:
            b = self._local_end(flow, connected=False)
            self._actions.append(ConnectLocal(b.ident, flow.key))
            return b
        route = self.db.routes.get(dest)
        out = self._link_to(route.next_hop) if route and route.next_hop else None
        if out is None:
            return None
        b = self._link_end(flow, out, out.proto.allocate_flow_id())
        self._send(out, FrameType.OPEN, b.ident, encode_open(Open(flow.key, dest, self.id)))
        flog.debug("flow %d %s: open to %s via %s", flow.id, flow.key, dest, out.peer)
        return b

    def _accepted(self, flow: Flow) -> None:
        """The destination took the flow: pass that back toward the origin."""
        if flow.accepted:
            return
        flow.accepted = True
        flow.replay = None
        a = flow.ends[0]
        if a.link is not None:
            self._send(a.link, FrameType.ACCEPT, a.ident)

    def _retry(self, flow: Flow, failed: End, reason: str) -> bool:
        """The connector side of an origin flow failed before the destination took it:
        mark that target down for a while and move the flow to another target, resending
        what the client sent so far. False when the flow cannot be retried."""
        if flow.id not in self.flows or not flow.origin or flow.accepted:
            return False
        if len(flow.ends) != 2 or failed is not flow.ends[1]:
            return False
        self._down.setdefault(flow.key, {})[flow.dest] = self._now + DOWN_BACKOFF
        if flow.replay is None or len(flow.tried) >= MAX_ATTEMPTS:
            return False
        dest = self.db.choose(
            flow.key,
            "balanced",
            self.outstanding.get(flow.key),
            self._avoid(flow.key),
            set(flow.tried),
        )
        if dest is None:
            return False
        a = flow.ends[0]
        unsent = sum(map(len, failed.queue))
        # Detach the failed end (its link, if any, is gone or reset it already).
        flow.ends.pop()
        if failed.link is not None:
            failed.link.flows.pop(failed.ident, None)
        else:
            self.locals.pop(failed.ident, None)
        self._count(flow, -1)
        flow.dest = dest
        flow.tried.append(dest)
        self._count(flow, +1)
        b = self._connect_end(flow, dest)
        if b is None:
            return False
        a.skip_release += flow.replay_len - unsent
        b.queue.extend(flow.replay)
        b.eof_pending = a.eof_received
        self.retries += 1
        flog.info("flow %d %s: %s, retrying on %s", flow.id, flow.key, reason, dest)
        self._flush(b)
        return True

    def _count(self, flow: Flow, n: int) -> None:
        per = self.outstanding.setdefault(flow.key, {})
        v = per.get(flow.dest, 0) + n
        if v > 0:
            per[flow.dest] = v
        else:
            per.pop(flow.dest, None)

    def _link_end(self, flow: Flow, ls: LinkState, fid: int) -> End:
        end = End(flow, ls, fid)
        flow.ends.append(end)
        ls.flows[fid] = end
        return end

    def _local_end(self, flow: Flow, connected: bool = True) -> End:
        lid = self._next_lid
        self._next_lid += 1
        end = End(flow, None, lid, connected=connected)
        flow.ends.append(end)
        self.locals[lid] = end
        return end

    def open_flow(self, key: str, distribution: str = "balanced") -> int | None:
        """A client connected to a listener for ``key``. Returns its local id, or
        None when no reachable router serves the key (close the client)."""
        dest = self.db.choose(key, distribution, self.outstanding.get(key), self._avoid(key))
        if dest is None:
            return None
        if dest != self.id:
            route = self.db.routes[dest]
            if route.next_hop is None or self._link_to(route.next_hop) is None:
                return None
        flow = self._new_flow(key, self.id, dest)
        flow.origin = True
        flow.replay = []
        flow.tried.append(dest)
        a = self._local_end(flow)
        self._count(flow, +1)
        self._connect_end(flow, dest)
        return a.ident

    def read_allowance(self, lid: int) -> int | None:
        """How much the local reader may read now; None once the flow is gone."""
        end = self.locals.get(lid)
        if end is None or end.eof_received:
            return None
        return end.allowance

    def local_connected(self, lid: int) -> bool:
        end = self.locals.get(lid)
        if end is None:
            return False  # reset while connecting: the caller closes the socket
        end.connected = True
        self._accepted(end.flow)
        self._flush(end)
        return True

    def local_connect_failed(self, lid: int) -> None:
        end = self.locals.get(lid)
        if end is not None and not self._retry(end.flow, end, "connect failed"):
            self._reset(end.flow, end, "connect failed")

    def local_data(self, lid: int, data: bytes) -> None:
        end = self.locals.get(lid)
        if end is None or end.eof_received:
            return
        if len(data) > end.allowance:
            raise ValueError("local reader read beyond its allowance")
        self._data_in(end, data)

    def local_read(self, lid: int, buf: memoryview, n: int) -> None:
        """Like local_data for the ``n`` bytes at buf[HEADER_SIZE:HEADER_SIZE + n];
        buf[:HEADER_SIZE] is scratch space for a frame header, so a read that can go
        straight out on a link becomes one DATA frame with a single copy."""
        end = self.locals.get(lid)
        if end is None or end.eof_received:
            return
        if n > end.allowance:
            raise ValueError("local reader read beyond its allowance")
        flow = end.flow
        ends = flow.ends
        first = end is ends[0]
        out = ends[1] if first else ends[0]
        ls = out.link
        if ls is None or not n or out.queue or out.credit < n or ls.proto.state == "closed":
            self._data_in(end, bytes(buf[HEADER_SIZE : HEADER_SIZE + n]))
            return
        HEADER.pack_into(buf, 0, _DATA, 0, out.ident, n)
        frame = bytes(buf[: HEADER_SIZE + n])
        end.allowance -= n
        if first:
            flow.bytes_out += n
            if flow.replay is not None:
                if flow.replay_len + n <= INITIAL_WINDOW:
                    flow.replay.append(memoryview(frame)[HEADER_SIZE:])  # type: ignore[arg-type]
                    flow.replay_len += n
                else:
                    flow.replay = None  # too much to keep: no retry for this flow
        else:
            flow.bytes_back += n
        ls.proto.send_frame(frame)
        self._dirty.add(ls.handle)
        out.credit -= n
        self._release(end, n)

    def local_eof(self, lid: int) -> None:
        end = self.locals.get(lid)
        if end is not None and not end.eof_received:
            self._eof_in(end)

    def local_consumed(self, lid: int, n: int) -> None:
        end = self.locals.get(lid)
        if end is not None:
            self._release(end.flow.other(end), n)

    def local_reset(self, lid: int) -> None:
        end = self.locals.get(lid)
        if end is not None:
            self._reset(end.flow, end, "connection reset")

    def _data_in(self, end: End, data: bytes) -> None:
        n = len(data)
        end.allowance -= n
        flow = end.flow
        ends = flow.ends
        if end is ends[0]:
            flow.bytes_out += n
            out = ends[1]
            if flow.replay is not None:
                if flow.replay_len + n <= INITIAL_WINDOW:
                    flow.replay.append(data)
                    flow.replay_len += n
                else:
                    flow.replay = None  # too much to keep: no retry for this flow
        else:
            flow.bytes_back += n
            out = ends[0]
        out.queue.append(data)
        self._flush(out)

    def _eof_in(self, end: End) -> None:
        end.eof_received = True
        out = end.flow.other(end)
        out.eof_pending = True
        self._flush(out)

    def _flush(self, out: End) -> None:
        """Move queued data out through ``out`` as far as credit allows."""
        flow = out.flow
        if flow.id not in self.flows:
            return
        released = 0
        if out.link is not None:
            q = out.queue
            while q and out.credit > 0:
                chunk = q[0]
                n = min(len(chunk), out.credit, MAX_DATA)
                if n < len(chunk):
                    q[0] = chunk[n:]
                    chunk = chunk[:n]
                else:
                    q.popleft()
                self._send(out.link, FrameType.DATA, out.ident, chunk)
                out.credit -= n
                released += n
            if not q and out.eof_pending and not out.eof_sent:
                self._send(out.link, FrameType.END, out.ident)
                out.eof_sent = True
        elif out.connected:
            while out.queue:
                # Released when the I/O layer reports the bytes drained.
                self._actions.append(Deliver(out.ident, out.queue.popleft()))
            if out.eof_pending and not out.eof_sent:
                self._actions.append(DeliverEof(out.ident))
                out.eof_sent = True
        if released:
            self._release(flow.other(out), released)
        if out.eof_sent:
            self._maybe_finish(flow)

    def _release(self, inn: End, n: int) -> None:
        """``n`` bytes that entered through ``inn`` have left: let more in."""
        if inn.flow.id not in self.flows or inn.eof_received:
            return
        if inn.skip_release:
            k = min(n, inn.skip_release)
            inn.skip_release -= k
            n -= k
            if not n:
                return
        if inn.link is not None:
            inn.to_grant += n
            if inn.to_grant >= GRANT_THRESHOLD:
                self._send(inn.link, FrameType.WINDOW, inn.ident, encode_window(inn.to_grant))
                inn.allowance += inn.to_grant
                inn.to_grant = 0
        else:
            was = inn.allowance
            inn.allowance += n
            if was <= 0 < inn.allowance:
                self._actions.append(ResumeRead(inn.ident))

    def _maybe_finish(self, flow: Flow) -> None:
        # EOF has passed in both directions: close deterministically (half-closed
        # leftovers are what crashed uvloop here before).
        if not all(e.eof_sent for e in flow.ends):
            return
        self._drop(flow)
        for e in flow.ends:
            if e.link is None:
                self._actions.append(CloseLocal(e.ident, abort=False))
        flog.debug("flow %d finished", flow.id)

    def _reset(self, flow: Flow, origin: End | None, reason: str) -> None:
        if flow.id not in self.flows:
            return
        self._drop(flow)
        for e in flow.ends:
            if e is origin:
                if e.link is None:
                    self._actions.append(CloseLocal(e.ident, abort=True))
                continue
            if e.link is not None:
                if e.link.handle in self.links:
                    self._send(
                        e.link, FrameType.RESET, e.ident, reason.encode("ascii", "replace")[:64]
                    )
            else:
                self._actions.append(CloseLocal(e.ident, abort=True))
        flog.debug("flow %d reset: %s", flow.id, reason)

    def _drop(self, flow: Flow) -> None:
        del self.flows[flow.id]
        if flow.origin:
            self._count(flow, -1)
        kb = self.key_bytes.get(flow.key)
        if kb is None:
            kb = self.key_bytes[flow.key] = [0, 0]
        kb[0] += flow.bytes_out
        kb[1] += flow.bytes_back
        for e in flow.ends:
            if e.link is not None:
                e.link.flows.pop(e.ident, None)
            else:
                self.locals.pop(e.ident, None)

    # -- status --------------------------------------------------------------------------

    def routers_status(self) -> list[dict]:
        out = []
        for rid in sorted(set(self.db.lsas) | self.db.edges):
            route = self.db.routes.get(rid)
            edge = rid in self.db.edges or (rid == self.id and self.edge)
            out.append(
                {
                    "id": rid,
                    "site": self.db.sites.get(rid, rid),
                    "reachable": route is not None,
                    "cost": route.cost if route else None,
                    "next_hop": route.next_hop if route else None,
                    "mode": "edge" if edge else "interior",
                }
            )
        return out

    def keys_status(self) -> dict[str, dict]:
        keys = self.db.keys() | self.listener_keys | self.connector_keys
        out = {}
        for k in sorted(keys):
            conns = self.db.serving(k)
            load = self.outstanding.get(k, {})
            down = self._avoid(k)
            kb = self.bytes_by_key().get(k, (0, 0))
            out[k] = {
                "connectors": conns,
                "listeners": self.db.listening(k),
                "reachable": bool(conns),
                "targets": [
                    {
                        "router": r,
                        "cost": self.db.routes[r].cost,
                        "outstanding": load.get(r, 0),
                        "down": r in down,
                    }
                    for r in conns
                ],
                "bytes": {"out": kb[0], "back": kb[1]},
            }
        return out

    def bytes_by_key(self) -> dict[str, tuple[int, int]]:
        """Bytes through this router per routing key (finished and open flows):
        (client -> connector, connector -> client)."""
        acc = {k: [v[0], v[1]] for k, v in self.key_bytes.items()}
        for f in self.flows.values():
            kb = acc.setdefault(f.key, [0, 0])
            kb[0] += f.bytes_out
            kb[1] += f.bytes_back
        return {k: (v[0], v[1]) for k, v in acc.items()}

    def flows_status(self) -> list[dict]:
        return [
            {
                "id": f.id,
                "routing_key": f.key,
                "src": f.src,
                "dest": f.dest,
                "bytes_out": f.bytes_out,
                "bytes_back": f.bytes_back,
                "accepted": f.accepted or not f.origin,
            }
            for f in self.flows.values()
        ]
