"""Topology (sans-I/O): the registry of links to other routers, the link-state
advertisement this router originates, and the LSAs it learns and floods.
Routes are computed by the link-state database (routing.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skiff_router.actions import CloseLink, Direction, LinkEstablished, Outbox
from skiff_router.codec import EdgeInfo, FrameType, Lsa, ProtocolError, decode_lsa, encode_lsa
from skiff_router.config import Mode, router_of_worker
from skiff_router.link import LinkProtocol
from skiff_router.routing import LinkStateDb

if TYPE_CHECKING:
    from skiff_router.credentials import Credential
    from skiff_router.flows import End

log = logging.getLogger("core")

# Sequence numbers start from the origin's wall clock (milliseconds). One further
# ahead of ours than this is forged or from a broken clock: accepting it would let
# a peer outbid a router's own updates for good (or push its next number past
# what the decoder accepts), so it is dropped, never stored or flooded.
SEQ_AHEAD_MS = 60_000
# Routers known from link state: new ones past this are dropped (a peer flooding
# updates for made-up routers fills no memory; unreachable ones age out anyway).
MAX_ROUTERS = 4096


def seq_ceiling(wall: Callable[[], float]) -> int:
    """The highest link-state sequence number an origin can have by now."""
    return int(wall() * 1000) + SEQ_AHEAD_MS


@dataclass(eq=False, slots=True)
class Link:
    """One connection to a neighbour router, by handle (the I/O layer's key)."""

    handle: int
    name: str
    direction: Direction
    proto: LinkProtocol
    flows: dict[int, End] = field(default_factory=dict)  # flow id on this link -> end
    worker: bool = False  # to another worker process of this router (workers.py)
    replaces: tuple[int, ...] = ()  # older links it drains once the peer accepted it
    # Incoming: what its client certificate binds it to (credentials.py); None: not
    # bound (no list of accepted certificates, the replicas' certificate).
    credential: Credential | None = None

    @property
    def up(self) -> bool:
        return self.proto.up

    @property
    def peer(self) -> str | None:
        return self.proto.peer

    @property
    def cost(self) -> int:
        return self.proto.cost

    @property
    def rank(self) -> tuple[bool, int]:
        """Lower is preferred: a draining link only while no other link joins the pair."""
        return self.proto.draining, self.proto.cost

    @property
    def to_edge(self) -> bool:
        return self.proto.peer_mode is Mode.EDGE


class Topology:
    def __init__(
        self,
        router_id: str,
        site: str,
        mode: Mode,
        seq: int,
        outbox: Outbox,
        wall: Callable[[], float] = time.time,
        instance: str = "",
    ) -> None:
        self.id = router_id
        self.instance = instance  # this run of the router, in every HELLO
        self.site = site
        self.mode = mode
        self.edge = mode is Mode.EDGE
        self.db = LinkStateDb(router_id)
        self.links: dict[int, Link] = {}
        self.listener_keys: frozenset[str] = frozenset()
        self.connector_keys: frozenset[str] = frozenset()
        # A restarted router must supersede its old LSA still held by others:
        # the caller starts the sequence from the wall clock.
        self._seq = seq
        self._next_handle = 1
        # Edges attached to us (interior): their own LSAs, which we advertise for them.
        self._edge_lsas: dict[str, Lsa] = {}
        self._out = outbox
        self.wall = wall
        # Route computation waits until a batch of frames is handled (settle()):
        # a burst of updates costs one computation, not one each.
        self._stale = False
        self.refused_lsas = 0
        self.originate()

    # -- the link registry -------------------------------------------------------------

    def add(
        self,
        name: str,
        direction: Direction,
        now: float,
        expected_site: str | None,
        cost: int,
        worker: bool = False,
    ) -> Link:
        h = self._next_handle
        self._next_handle += 1
        proto = LinkProtocol(
            self.id,
            dialer=direction is Direction.OUTGOING,
            now=now,
            expected_site=expected_site,
            cost=cost,
            mode=self.mode,
            site=self.site,
            instance=self.instance,
        )
        link = Link(h, name, direction, proto, worker=worker)
        self.links[h] = link
        self._out.dirty[h] = link  # our HELLO
        return link

    def link_up(self, link: Link) -> None:
        log.info(
            "link %s (%s) up: peer %s of site %s, cost %d",
            link.name,
            link.direction,
            link.peer,
            link.proto.peer_site,
            link.cost,
        )
        proto = link.proto
        self._out.actions.append(
            LinkEstablished(
                link.handle, proto.peer or "", proto.cost, proto.peer_site or "", proto.peer_mode
            )
        )
        if not self.edge:
            # Give the new neighbour (interior or edge) the whole database; an edge
            # only ever sends its own LSA, to its interiors.
            for lsa in self.db.lsas.values():
                if lsa.router != self.id:
                    self._out.send(link, FrameType.LSA, 0, encode_lsa(lsa))
        self.originate()

    def remove(self, link: Link, reason: str, notify: bool) -> bool:
        """Take a closed link out of the registry; True if it was in. Its flows
        are the caller's to settle before the new LSA goes out (``link_removed``)."""
        if self.links.pop(link.handle, None) is None:
            return False
        self._out.dirty[link.handle] = link  # its CLOSE frame, if any
        log.log(
            logging.INFO if link.peer is not None else logging.WARNING,
            "link %s (%s) closed: %s",
            link.name,
            link.direction,
            reason,
        )
        if notify:
            self._out.actions.append(CloseLink(link.handle, reason))
        return True

    def link_removed(self, link: Link) -> None:
        if link.peer is None:
            return  # never up: nobody was told about it
        if link.to_edge and self.link_to(link.peer) is None:
            self._edge_lsas.pop(link.peer, None)
        self.originate()

    def link_draining(self, link: Link, why: str) -> None:
        log.info("link %s (%s) to %s draining: %s", link.name, link.direction, link.peer, why)
        self.originate()  # the cost to the peer may now be another link's

    def neighbours(self, edges: bool = False) -> dict[str, int]:
        """Up neighbours and the cost of the link each is reached by (``link_to``);
        interior routers list interiors only, edges separately (``edges=True``)."""
        best: dict[str, Link] = {}
        for link in self.links.values():
            peer = link.peer
            if link.up and peer and (self.edge or link.to_edge == edges):
                held = best.get(peer)
                if held is None or link.rank < held.rank:
                    best[peer] = link
        return {peer: link.cost for peer, link in best.items()}

    def link_to(self, router: str) -> Link | None:
        """The link new flows to a neighbour take: the cheapest up link, a draining
        one (replaced by a newer link) only if no other is up."""
        best: Link | None = None
        for link in self.links.values():
            if link.up and link.peer == router and (best is None or link.rank < best.rank):
                best = link
        return best

    def next_link(self, dest: str) -> Link | None:
        """The link toward ``dest`` (another router) on its least-cost path."""
        route = self.db.routes.get(dest)
        if route is None or route.next_hop is None:
            return None
        return self.link_to(route.next_hop)

    def up_links(self) -> list[Link]:
        return [link for link in self.links.values() if link.up]

    # -- link-state advertisements -------------------------------------------------------

    def set_services(self, listener_keys: Iterable[str], connector_keys: Iterable[str]) -> None:
        lk, ck = frozenset(listener_keys), frozenset(connector_keys)
        if (lk, ck) != (self.listener_keys, self.connector_keys):
            self.listener_keys, self.connector_keys = lk, ck
            self.originate()

    def originate(self) -> None:
        """(Re)advertise our own state to every neighbour."""
        self._seq += 1
        edges: tuple[EdgeInfo, ...] = ()
        if not self.edge:
            edges = tuple(
                EdgeInfo(e, cost, lsa.connectors, lsa.listeners, lsa.site)
                for e, cost in sorted(self.neighbours(edges=True).items())
                if (lsa := self._edge_lsas.get(e)) is not None
            )
        lsa = Lsa(
            router=self.id,
            seq=self._seq,
            links=tuple(sorted(self.neighbours().items())),
            connectors=self.connector_keys,
            listeners=self.listener_keys,
            edges=edges,
            site=self.site,
        )
        self.db.update(lsa)
        self.db.compute()
        payload = encode_lsa(lsa)
        for link in self.up_links():
            self._out.send(link, FrameType.LSA, 0, payload)

    def settle(self) -> None:
        """Compute routes if updates arrived since the last computation."""
        if self._stale:
            self._stale = False
            self.db.compute()

    def _refuse(self, link: Link, lsa: Lsa, why: str) -> None:
        self.refused_lsas += 1
        # Counted always, logged sparingly: a flood of these must not flood the log.
        if self.refused_lsas & (self.refused_lsas - 1) == 0:
            log.warning(
                "link %s: dropped link-state update for %s from %s: %s (%d dropped so far)",
                link.name,
                lsa.router,
                link.peer,
                why,
                self.refused_lsas,
            )

    def on_lsa(self, link: Link, fid: int, payload: bytes | memoryview) -> None:
        data = bytes(payload)
        lsa = decode_lsa(data)
        if lsa.seq > seq_ceiling(self.wall):
            self._refuse(link, lsa, "sequence number ahead of the clock")
            return
        if link.to_edge:
            # An edge speaks only for itself; we advertise it on its behalf.
            if lsa.router != link.peer:
                raise ProtocolError("edge sent an LSA for another router")
            old = self._edge_lsas.get(lsa.router)
            if old is None or lsa.seq > old.seq:
                self._edge_lsas[lsa.router] = lsa
                if old is None or (old.connectors, old.listeners) != (
                    lsa.connectors,
                    lsa.listeners,
                ):
                    self.originate()
            return
        if lsa.router == self.id:
            # An older incarnation of ourselves is still advertised: outbid it. Our
            # own current LSA coming back (several links to one neighbour) is not.
            mine = self.db.lsas.get(self.id)
            if lsa.seq > self._seq or (lsa.seq == self._seq and lsa != mine):
                self._seq = lsa.seq
                self.originate()
            return
        if lsa.router not in self.db.lsas and len(self.db.lsas) >= MAX_ROUTERS:
            self._refuse(link, lsa, f"already {MAX_ROUTERS} routers known")
            return
        if not self.db.update(lsa):
            return
        if not self.edge:
            for other in self.up_links():
                if other is not link:
                    self._out.send(other, FrameType.LSA, 0, data)
        self._stale = True

    def tick(self, now: float) -> None:
        if self.db.purge(now):
            self.db.compute()

    # -- status ----------------------------------------------------------------------------

    def routers_status(self) -> list[dict[str, Any]]:
        """Every router known, the worker processes of one router as one entry
        (reached through the closest of them)."""
        db = self.db
        out: dict[str, dict[str, Any]] = {}
        for rid in sorted(set(db.lsas) | db.edges):
            route = db.routes.get(rid)
            edge = rid in db.edges or (rid == self.id and self.edge)
            base = router_of_worker(rid)
            entry = {
                "id": base,
                "site": db.sites.get(rid, rid),
                "reachable": route is not None,
                "cost": route.cost if route else None,
                "next_hop": router_of_worker(route.next_hop) if route and route.next_hop else None,
                "mode": (Mode.EDGE if edge else Mode.INTERIOR).value,
            }
            have = out.get(base)
            if have is None or (
                route is not None and (have["cost"] is None or route.cost < have["cost"])
            ):
                out[base] = entry
        return list(out.values())
