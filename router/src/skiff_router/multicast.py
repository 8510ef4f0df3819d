"""Multicast (sans-I/O): messages flooded to every router, delivered once each.

Over FIFO links the first copy of each message reaches a router in origin
order, so "highest sequence number seen per origin" drops every later copy
and keeps per-origin order.

Sequence numbers follow the origin's wall clock (microseconds), so a number
further ahead of ours than a clock skew allows is forged: dropped, never
recorded (recorded, it would silence the origin until its clock caught up).
An origin that sees a copy of a message in its name with a higher number than
its own jumps past it, so a forged number within the window costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from skiff_router.actions import McastDeliver, Outbox
from skiff_router.codec import FrameType, Mcast, decode_mcast, encode_mcast
from skiff_router.topology import SEQ_AHEAD_MS, Link, Topology


def mcast_seq_ceiling(wall: Callable[[], float]) -> int:
    return (int(wall() * 1000) + SEQ_AHEAD_MS) * 1000


class Multicast:
    def __init__(
        self,
        topology: Topology,
        seq: int,
        outbox: Outbox,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.received = 0
        self.refused = 0
        self._wall = wall
        self._topo = topology
        self._seq = seq
        self._seen: dict[str, int] = {}  # origin -> highest seq delivered
        self._out = outbox

    def publish(self, address: str, payload: bytes) -> int:
        """Send a message to every subscriber of ``address`` in the network (local
        ones included). Returns its sequence number."""
        self._seq = max(self._seq + 1, int(self._wall() * 1_000_000))
        msg = Mcast(self._topo.id, self._seq, address, payload)
        self._out.actions.append(McastDeliver(msg))
        data = encode_mcast(msg)
        for link in self._topo.up_links():
            self._out.send(link, FrameType.MCAST, 0, data)
        return msg.seq

    def on_mcast(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        data = bytes(payload)
        msg = decode_mcast(data)
        if msg.seq > mcast_seq_ceiling(self._wall):
            self.refused += 1
            return
        if msg.origin == self._topo.id:
            # Ours, but a number we never used: somebody spoke in our name. Our
            # next message must outbid it or everyone would drop it as old.
            self._seq = max(self._seq, msg.seq)
            return
        if msg.seq <= self._seen.get(msg.origin, -1):
            return
        self._seen[msg.origin] = msg.seq
        self.received += 1
        self._out.actions.append(McastDeliver(msg))
        if self._topo.edge:
            return  # edges never forward
        for other in self._topo.up_links():
            if other is not link:
                self._out.send(other, FrameType.MCAST, 0, data)
