"""Flows (sans-I/O): ends, credit, retry and replay.

A flow inside one router joins two *ends*. An end is either a link end (a
link and the flow id on it) or a local end (a TCP socket of a listener or
connector, known by a local id). Data entering one end leaves through the
other. Per direction, credit bounds what is in flight: a link peer may send
only what we granted (WINDOW frames), and we grant more only when the bytes
have left through the other end (sent on the next link, or written and
drained to the local socket). So one slow receiver stalls its own flow, never
the link, and a flow holds at most INITIAL_WINDOW bytes per direction in any
router.

The router where a flow starts (its listener's) keeps what the client sent
until the destination's connector took the connection (ACCEPT), so a flow
refused by one site moves to another with its bytes (retry and replay).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from skiff_router.actions import (
    CloseLocal,
    ConnectLocal,
    Deliver,
    DeliverEof,
    Outbox,
    ResumeRead,
)
from skiff_router.codec import (
    HEADER,
    HEADER_SIZE,
    MAX_DATA,
    MAX_HOPS,
    FrameType,
    Open,
    ProtocolError,
    decode_open,
    decode_reason,
    decode_window,
    encode_open,
    encode_window,
)
from skiff_router.config import Distribution
from skiff_router.link import LinkPhase
from skiff_router.targets import SiteChoice
from skiff_router.topology import Link, Topology

flog = logging.getLogger("flow")

INITIAL_WINDOW = 512 * 1024  # per flow and direction
GRANT_THRESHOLD = INITIAL_WINDOW // 4  # batch WINDOW frames
MAX_CREDIT = 1 << 31
MAX_ATTEMPTS = 3  # targets tried for one flow before the client is reset
# Open flows one peer may have on one link: each costs a connection to a
# backend here, so a peer cannot open without bound.
MAX_LINK_FLOWS = 50_000
_DATA = FrameType.DATA
_CLOSED = LinkPhase.CLOSED


class Clock:
    """The core's notion of now (set by the core on every input)."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


@dataclass(eq=False, slots=True)
class End:
    flow: Flow
    link: Link | None  # None: a local socket
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


@dataclass(eq=False, slots=True)
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
    # Came from another worker of this router, which counts it: each flow is counted
    # by the worker it entered the router at, so the workers' figures add up.
    via_worker: bool = False
    active: float = 0.0  # when a byte last went through, either way (or it opened)
    half_closed_at: float | None = None  # when the first side finished

    def other(self, end: End) -> End:
        return self.ends[1] if end is self.ends[0] else self.ends[0]


class Flows:
    def __init__(
        self,
        topology: Topology,
        sites: SiteChoice,
        outbox: Outbox,
        clock: Clock,
        max_local: int = MAX_LINK_FLOWS,
    ) -> None:
        # Flows with a socket here, and those one link may hold, stay below the
        # file-descriptor limit (limits.py): one peer cannot starve the others.
        self.max_local = max_local
        self.max_link_flows = min(MAX_LINK_FLOWS, max(8, max_local // 2))
        self.by_id: dict[int, Flow] = {}
        self.locals: dict[int, End] = {}
        self.total = 0
        self.retries = 0
        self.expired = 0
        self.key_bytes: dict[str, list[int]] = {}  # finished flows: key -> [out, back]
        self.key_flows: dict[str, int] = {}  # flows through here per key, ever
        self._next_lid = 1
        self._next_flow = 1
        self._topo = topology
        self._sites = sites
        self._out = outbox
        self._clock = clock

    # -- local sockets (the I/O layer) ---------------------------------------------------

    def open(self, key: str, distribution: Distribution = Distribution.BALANCED) -> int | None:
        """A client connected to a listener for ``key``. Returns its local id, or
        None when no reachable router serves the key (close the client)."""
        topo = self._topo
        dest = self._sites.choose(topo.db, key, Distribution(distribution), self._clock.now)
        if dest is None or (dest != topo.id and topo.next_link(dest) is None):
            return None
        flow = self._new_flow(key, topo.id, dest)
        flow.origin = True
        flow.replay = []
        flow.tried.append(dest)
        a = self._local_end(flow)
        self._sites.count(key, dest, +1)
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

    def local_read(self, lid: int, buf: memoryview, n: int) -> None:
        """The local socket read ``n`` bytes into buf[HEADER_SIZE:HEADER_SIZE + n];
        buf[:HEADER_SIZE] is scratch space for a frame header, so a read that can go
        straight out on a link becomes one DATA frame with a single copy."""
        end = self.locals.get(lid)
        if end is None or end.eof_received or not n:
            return
        if n > end.allowance:
            raise ValueError("local reader read beyond its allowance")
        flow = end.flow
        ends = flow.ends
        first = end is ends[0]
        out = ends[1] if first else ends[0]
        link = out.link
        if link is None or out.queue or out.credit < n or link.proto.phase is _CLOSED:
            self._data_in(end, bytes(buf[HEADER_SIZE : HEADER_SIZE + n]))
            return
        HEADER.pack_into(buf, 0, _DATA, 0, out.ident, n)
        frame = bytes(buf[: HEADER_SIZE + n])
        end.allowance -= n
        flow.active = self._clock.now
        if first:
            flow.bytes_out += n
            if flow.replay is not None:
                self._keep(flow, memoryview(frame)[HEADER_SIZE:])  # type: ignore[arg-type]
        else:
            flow.bytes_back += n
        self._out.send_frame(link, frame)
        out.credit -= n
        self._release(end, n)

    def local_eof(self, lid: int) -> None:
        end = self.locals.get(lid)
        if end is not None and not end.eof_received:
            self._eof_in(end)

    def local_consumed(self, lid: int, n: int) -> None:
        """``n`` bytes delivered to the local socket have left our buffers."""
        end = self.locals.get(lid)
        if end is not None:
            ends = end.flow.ends
            self._release(ends[1] if end is ends[0] else ends[0], n)

    def local_reset(self, lid: int) -> None:
        end = self.locals.get(lid)
        if end is not None:
            self._reset(end.flow, end, "connection reset")

    # -- flow frames from links ------------------------------------------------------------

    def on_open(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        op = decode_open(payload)  # type: ignore[arg-type]
        topo = self._topo
        flow = self._new_flow(op.key, op.src, op.dest, via_worker=link.worker)
        self._link_end(flow, link, fid)
        # The cap is per peer. A link to another worker of this router carries the
        # flows of every peer that came in at that worker, each capped there already:
        # it has only the absolute bound.
        cap = MAX_LINK_FLOWS if link.worker else self.max_link_flows
        if len(link.flows) > cap:
            self._reset(flow, None, "too many flows")
            return
        if op.dest == topo.id:
            if op.key not in topo.connector_keys:
                # Refused here: the RESET must go back to the sender (no origin to spare).
                self._reset(flow, None, "no connector")
                return
            if len(self.locals) >= self.max_local:
                self._reset(flow, None, "too many flows")
                return
            b = self._local_end(flow, connected=False)
            self._out.actions.append(ConnectLocal(b.ident, op.key))
        else:
            out = topo.next_link(op.dest)
            # An edge never forwards transit traffic.
            if out is None or out is link or op.hops + 1 >= MAX_HOPS or topo.edge:
                self._reset(flow, None, "no route")
                return
            b = self._link_end(flow, out, out.proto.allocate_flow_id())
            fwd = Open(op.key, op.dest, op.src, op.hops + 1)
            self._out.send(out, FrameType.OPEN, b.ident, encode_open(fwd))
        flog.debug("flow %d %s: %s -> %s via %s", flow.id, op.key, op.src, op.dest, link.peer)

    def on_data(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        end = link.flows.get(fid)
        if end is None:
            return  # a flow that closed or was reset: frames may still be on the wire
        if end.eof_received:
            raise ProtocolError(f"DATA after END on flow {fid}")
        if len(payload) > end.allowance:
            raise ProtocolError(f"flow {fid} exceeded its window")
        if payload:
            self._data_in(end, payload)  # type: ignore[arg-type]

    def on_end(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        end = link.flows.get(fid)
        if end is None:
            return
        if end.eof_received:
            raise ProtocolError(f"second END on flow {fid}")
        self._eof_in(end)

    def on_window(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        n = decode_window(bytes(payload))
        end = link.flows.get(fid)
        if end is None:
            return
        end.credit += n
        if end.credit > MAX_CREDIT:
            raise ProtocolError(f"flow {fid} credit overflow")
        self._flush(end)

    def on_accept(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        if payload:
            raise ProtocolError(f"ACCEPT with a payload on flow {fid}")
        end = link.flows.get(fid)
        if end is not None:
            self._accepted(end.flow)

    def on_reset(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        end = link.flows.get(fid)
        if end is None:
            return
        reason = decode_reason(bytes(payload))
        flog.debug("flow %d reset by %s: %s", end.flow.id, link.peer, reason)
        if not self._retry(end.flow, end, reason):
            self._reset(end.flow, end, reason)

    def link_lost(self, link: Link) -> None:
        """The link closed: its flows move elsewhere (not yet accepted) or reset."""
        for end in list(link.flows.values()):
            if not self._retry(end.flow, end, "link lost"):
                self._reset(end.flow, end, "link lost")
        link.flows.clear()

    # -- moving data -------------------------------------------------------------------------

    def _data_in(self, end: End, data: bytes) -> None:
        n = len(data)
        end.allowance -= n
        flow = end.flow
        flow.active = self._clock.now
        ends = flow.ends
        if end is ends[0]:
            flow.bytes_out += n
            out = ends[1]
            if flow.replay is not None:
                self._keep(flow, data)
        else:
            flow.bytes_back += n
            out = ends[0]
        out.queue.append(data)
        self._flush(out)

    @staticmethod
    def _keep(flow: Flow, data: bytes) -> None:
        """Keep what the client sent until the destination accepts (for a retry)."""
        assert flow.replay is not None
        if flow.replay_len + len(data) <= INITIAL_WINDOW:
            flow.replay.append(data)
            flow.replay_len += len(data)
        else:
            flow.replay = None  # too much to keep: no retry for this flow

    def _eof_in(self, end: End) -> None:
        end.eof_received = True
        if end.flow.half_closed_at is None:
            end.flow.half_closed_at = self._clock.now
        out = end.flow.other(end)
        out.eof_pending = True
        self._flush(out)

    def _flush(self, out: End) -> None:
        """Move queued data out through ``out`` as far as credit allows."""
        flow = out.flow
        if flow.id not in self.by_id:
            return
        released = 0
        link = out.link
        if link is not None:
            q = out.queue
            while q and out.credit > 0:
                chunk = q[0]
                n = min(len(chunk), out.credit, MAX_DATA)
                if n < len(chunk):
                    q[0] = chunk[n:]
                    chunk = chunk[:n]
                else:
                    q.popleft()
                self._out.send(link, FrameType.DATA, out.ident, chunk)
                out.credit -= n
                released += n
            if not q and out.eof_pending and not out.eof_sent:
                self._out.send(link, FrameType.END, out.ident)
                out.eof_sent = True
        elif out.connected:
            actions = self._out.actions
            while out.queue:
                # Released when the I/O layer reports the bytes drained.
                actions.append(Deliver(out.ident, out.queue.popleft()))
            if out.eof_pending and not out.eof_sent:
                actions.append(DeliverEof(out.ident))
                out.eof_sent = True
        if released:
            self._release(flow.other(out), released)
        if out.eof_sent:
            self._maybe_finish(flow)

    def _release(self, inn: End, n: int) -> None:
        """``n`` bytes that entered through ``inn`` have left: let more in."""
        if inn.flow.id not in self.by_id or inn.eof_received:
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
                grant = encode_window(inn.to_grant)
                self._out.send_urgent(inn.link, FrameType.WINDOW, inn.ident, grant)
                inn.allowance += inn.to_grant
                inn.to_grant = 0
        else:
            was = inn.allowance
            inn.allowance += n
            if was <= 0 < inn.allowance:
                self._out.actions.append(ResumeRead(inn.ident))

    # -- opening, retrying, ending -------------------------------------------------------

    def _new_flow(self, key: str, src: str, dest: str, via_worker: bool = False) -> Flow:
        flow = Flow(self._next_flow, key, src, dest, active=self._clock.now, via_worker=via_worker)
        self._next_flow += 1
        self.by_id[flow.id] = flow
        if not via_worker:
            self.total += 1
            self.key_flows[key] = self.key_flows.get(key, 0) + 1
        return flow

    def _link_end(self, flow: Flow, link: Link, fid: int) -> End:
        end = End(flow, link, fid)
        flow.ends.append(end)
        link.flows[fid] = end
        return end

    def _local_end(self, flow: Flow, connected: bool = True) -> End:
        lid = self._next_lid
        self._next_lid += 1
        end = End(flow, None, lid, connected=connected)
        flow.ends.append(end)
        self.locals[lid] = end
        return end

    def _connect_end(self, flow: Flow, dest: str) -> End | None:
        """Create the connector-side end of an origin flow toward ``dest``."""
        topo = self._topo
        if dest == topo.id:
            b = self._local_end(flow, connected=False)
            self._out.actions.append(ConnectLocal(b.ident, flow.key))
            return b
        out = topo.next_link(dest)
        if out is None:
            return None
        b = self._link_end(flow, out, out.proto.allocate_flow_id())
        self._out.send(out, FrameType.OPEN, b.ident, encode_open(Open(flow.key, dest, topo.id)))
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
            self._out.send(a.link, FrameType.ACCEPT, a.ident)

    def _retry(self, flow: Flow, failed: End, reason: str) -> bool:
        """The connector side of an origin flow failed before the destination took it:
        mark that target down for a while and move the flow to another target, resending
        what the client sent so far. False when the flow cannot be retried."""
        if flow.id not in self.by_id or not flow.origin or flow.accepted:
            return False
        if len(flow.ends) != 2 or failed is not flow.ends[1]:
            return False
        now = self._clock.now
        self._sites.refused(flow.key, flow.dest, now)
        if flow.replay is None or len(flow.tried) >= MAX_ATTEMPTS:
            return False
        dest = self._sites.choose(
            self._topo.db, flow.key, Distribution.BALANCED, now, exclude=flow.tried
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
        self._sites.count(flow.key, flow.dest, -1)
        flow.dest = dest
        flow.tried.append(dest)
        self._sites.count(flow.key, dest, +1)
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

    def _maybe_finish(self, flow: Flow) -> None:
        # EOF has passed in both directions: close deterministically (half-closed
        # leftovers are what crashed uvloop here before).
        if not all(e.eof_sent for e in flow.ends):
            return
        self._drop(flow)
        for e in flow.ends:
            if e.link is None:
                self._out.actions.append(CloseLocal(e.ident, abort=False))
        flow.ends.clear()  # no flow <-> end cycle left for the garbage collector
        flog.debug("flow %d finished", flow.id)

    def _reset(self, flow: Flow, origin: End | None, reason: str) -> None:
        """Abort the flow; ``origin`` is the end the reset came from (told nothing)."""
        if flow.id not in self.by_id:
            return
        self._drop(flow)
        links = self._topo.links
        for e in flow.ends:
            if e.link is None:
                # The origin's socket failed or closed already: abort it all the same.
                self._out.actions.append(CloseLocal(e.ident, abort=True))
            elif e is not origin and e.link.handle in links:
                payload = reason.encode("ascii", "replace")[:64]
                self._out.send(e.link, FrameType.RESET, e.ident, payload)
        flow.ends.clear()  # no flow <-> end cycle left for the garbage collector
        flog.debug("flow %d reset: %s", flow.id, reason)

    def expire(self, now: float, half_closed: float, idle: float) -> int:
        """Reset flows half-closed longer than ``half_closed`` seconds or without a
        byte for ``idle`` seconds (0: never); returns how many."""
        expired = 0
        for flow in list(self.by_id.values()):
            half = flow.half_closed_at
            if half_closed and half is not None and now - half >= half_closed:
                self._reset(flow, None, "half-closed too long")
                expired += 1
                continue
            if idle and now - flow.active >= idle:
                self._reset(flow, None, "idle too long")
                expired += 1
        self.expired += expired
        return expired

    def _drop(self, flow: Flow) -> None:
        del self.by_id[flow.id]
        if flow.origin:
            self._sites.count(flow.key, flow.dest, -1)
        if not flow.via_worker:
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

    # -- status ------------------------------------------------------------------------------

    def counted(self) -> list[Flow]:
        """The open flows this router counts (not those another worker counts)."""
        return [f for f in self.by_id.values() if not f.via_worker]

    def bytes_by_key(self) -> dict[str, tuple[int, int]]:
        """Bytes through this router per routing key (finished and open flows):
        (client -> connector, connector -> client)."""
        acc = {k: [v[0], v[1]] for k, v in self.key_bytes.items()}
        for f in self.counted():
            kb = acc.setdefault(f.key, [0, 0])
            kb[0] += f.bytes_out
            kb[1] += f.bytes_back
        return {k: (v[0], v[1]) for k, v in acc.items()}

    def key_counts(self) -> dict[str, dict[str, int]]:
        """Per routing key: flows open and ever, bytes each way (what the console shows)."""
        open_now: dict[str, int] = {}
        for f in self.counted():
            open_now[f.key] = open_now.get(f.key, 0) + 1
        by_key = self.bytes_by_key()
        return {
            k: {
                "flows_open": open_now.get(k, 0),
                "flows_total": self.key_flows.get(k, 0),
                "bytes_out": by_key.get(k, (0, 0))[0],
                "bytes_back": by_key.get(k, (0, 0))[1],
            }
            for k in sorted(set(self.key_flows) | set(by_key))
        }

    def status(self) -> list[dict[str, Any]]:
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
            for f in self.counted()
        ]
