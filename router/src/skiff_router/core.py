"""Router core (sans-I/O): one router's state, fed by the I/O layer.

The I/O layer reports link bytes, link and socket events and the time; the
core answers through its ``outbox``: frames per link (``take_writes``) and
actions (``take_actions``). Nothing here blocks or touches a socket, so whole
networks of cores are tested over a fake network.

The work is split by job, each component in its own module:

- ``topology`` (topology.py): the link registry, the LSA this router
  originates and the ones it floods; routes come from routing.py;
- ``flows`` (flows.py): flow ends, credit, retry and replay;
- ``multicast`` (multicast.py): flooded messages, delivered once;
- ``sites`` (targets.py): which router a new flow for a key goes to.

This class only wires them together: it owns the link life cycle and sends
every frame a link delivers to the one component that handles its type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from skiff_router.actions import Direction, Outbox
from skiff_router.codec import FrameType, ProtocolError
from skiff_router.config import FlowTimeouts, Mode, router_of_worker
from skiff_router.credentials import Credential, CredentialUse
from skiff_router.flows import MAX_LINK_FLOWS, Clock, Flows
from skiff_router.grants import GrantLedger, Refusal
from skiff_router.link import LinkClosed, LinkDraining, LinkUp
from skiff_router.multicast import Multicast
from skiff_router.targets import SiteChoice
from skiff_router.topology import Link, Topology

FrameHandler = Callable[[Link, int, Any], None]
_LSA = FrameType.LSA
EXPIRE_EVERY = 1.0  # seconds between looks for half-closed and idle flows


class RouterCore:
    def __init__(
        self,
        router_id: str,
        now: float,
        seq: int | None = None,
        mode: Mode = Mode.INTERIOR,
        site: str = "",
        wall: Callable[[], float] = time.time,
        max_local_flows: int = MAX_LINK_FLOWS,
        instance: str = "",
    ) -> None:
        self.id = router_id
        self.site = site or router_id  # several routers (replicas) may share a site
        self.mode = mode = Mode(mode)
        # A restarted router must supersede what others still hold of its old
        # incarnation: sequence numbers start from the wall clock.
        seq = seq if seq is not None else int(time.time() * 1000)
        self.clock = Clock(now)
        self.flow_timeouts = FlowTimeouts()  # the runtime sets the config's
        self._expired_at = now
        self.outbox = Outbox()
        self.topology = Topology(
            router_id, self.site, mode, seq, self.outbox, wall, instance=instance
        )
        self.credentials = CredentialUse(self.outbox)
        # Where one-time grants are redeemed (the runtime sets it from state_dir).
        self.grants: GrantLedger | None = None
        self._wall = wall
        self.sites = SiteChoice()
        self.flows = Flows(
            self.topology, self.sites, self.outbox, self.clock, max_local=max_local_flows
        )
        self.multicast = Multicast(self.topology, seq * 1000, self.outbox, wall)
        t, f, m = self.topology, self.flows, self.multicast
        self._handlers: dict[FrameType, FrameHandler] = {
            FrameType.DATA: f.on_data,
            FrameType.OPEN: f.on_open,
            FrameType.END: f.on_end,
            FrameType.WINDOW: f.on_window,
            FrameType.RESET: f.on_reset,
            FrameType.ACCEPT: f.on_accept,
            FrameType.LSA: t.on_lsa,
            FrameType.MCAST: m.on_mcast,
        }

    # -- links -----------------------------------------------------------------------------

    def link_connected(
        self,
        name: str,
        direction: Direction,
        now: float,
        expected_site: str | None = None,
        cost: int = 1,
        worker: bool = False,
        replaces: tuple[int, ...] = (),
        credential: Credential | None = None,
    ) -> int:
        """A transport to another router (or to another worker of this router) is
        up; returns the link handle. It ``replaces`` older links (make before
        break): they drain once the peer accepted this one. An incoming link's
        ``credential`` is bound at its HELLO (credentials.py)."""
        self.clock.now = now
        topo = self.topology
        link = topo.add(name, Direction(direction), now, expected_site, cost, worker)
        link.replaces = replaces
        link.credential = credential
        return link.handle

    def link_data(self, handle: int, data: bytes, now: float) -> None:
        self.clock.now = now
        link = self.topology.links.get(handle)
        if link is None:
            return
        handlers = self._handlers
        topology = self.topology
        for ev in link.proto.receive_data(data, now):
            if isinstance(ev, tuple):
                if ev[0] is not _LSA:
                    topology.settle()  # frames after updates see their routes
                elif link.replaces:
                    # The peer's first update: it took our HELLO, so the link is
                    # accepted (a refusal is a CLOSE instead). The old links drain.
                    for old in link.replaces:
                        self.drain_link(old)
                    link.replaces = ()
                try:
                    handlers[ev[0]](link, ev[1], ev[2])
                except ProtocolError as exc:
                    reason = f"protocol error: {exc.reason}"
                    self._close(link, link.proto.fail(reason, "protocol error"), notify=True)
                    break
            elif isinstance(ev, LinkUp):
                refusal = self._bind(link, ev)
                if refusal is not None:
                    self._close(link, link.proto.fail(refusal.detail, refusal.public), notify=True)
                    break
                self.topology.link_up(link)
            elif isinstance(ev, LinkDraining):
                self.topology.link_draining(link, "the peer replaced it")
            else:
                assert isinstance(ev, LinkClosed)
                self._close(link, ev, notify=True)
                break
        topology.settle()
        if link.proto.has_output:
            self.outbox.dirty[handle] = link

    def link_lost(self, handle: int, reason: str) -> None:
        """The transport closed or failed."""
        link = self.topology.links.get(handle)
        if link is not None:
            self._close(link, link.proto.lost(reason), notify=False)

    def close_link(
        self, handle: int, reason: str = "link removed", public: str = "closing"
    ) -> None:
        """Close a link on purpose (config change, shutdown, a refused credential); the
        peer gets the short ``public`` code in a CLOSE frame."""
        link = self.topology.links.get(handle)
        if link is not None:
            self._close(link, link.proto.fail(reason, public), notify=True)

    def drain_link(self, handle: int) -> None:
        """A newer link to the same peer is up: this one takes no new flow and ends
        when its last flow does (the peer closes it then; it knows every flow). A
        peer that does not understand DRAIN gets the link closed at once."""
        link = self.topology.links.get(handle)
        if link is None or link.proto.draining:
            return
        if link.proto.drain():
            self.outbox.dirty[handle] = link
            self.topology.link_draining(link, "replaced by a newer link")
        else:
            self.close_link(handle, "replaced by a newer link", public="replaced")

    def _bind(self, link: Link, up: LinkUp) -> Refusal | None:
        """Before anything is sent to the peer beyond its HELLO: may its site use the
        link's client certificate (a grant it redeemed, grants.py), and is its router
        one of those the certificate may serve (credentials.py)?"""
        if link.credential is None:
            return None
        c = link.credential
        if c.grant is not None:
            if self.grants is None:
                return Refusal("grant unavailable", f"grant '{c.name}': no state_dir here")
            refused = self.grants.redeem(c.name, c.grant, up.site, self._wall())
            if refused is not None:
                return refused
        in_use = self.credentials.admit(
            c.fingerprint, c.allowed, up.instance, up.peer, link.handle, c.elsewhere
        )
        return None if in_use is None else Refusal("credential in use", in_use)

    def _close(self, link: Link, ev: LinkClosed, notify: bool) -> None:
        if link.credential is not None:
            self.credentials.release(link.credential.fingerprint, link.handle)
        if self.topology.remove(link, ev.reason, notify):
            self.flows.link_lost(link)
            self.topology.link_removed(link)

    def tick(self, now: float) -> None:
        self.clock.now = now
        for link in list(self.topology.links.values()):
            closed = link.proto.tick(now)
            if closed is None and link.proto.drained_by_peer and not link.flows:
                # Its flows have ended; none can start (both ends know it drains).
                closed = link.proto.fail("replaced by a newer link, its flows ended", "replaced")
            if closed is not None:
                self._close(link, closed, notify=True)
            elif link.proto.has_output:
                self.outbox.dirty[link.handle] = link
        self.topology.tick(now)
        if now - self._expired_at >= EXPIRE_EVERY:
            self._expired_at = now
            t = self.flow_timeouts
            self.flows.expire(now, t.half_closed, t.idle)

    # -- status ----------------------------------------------------------------------------

    def keys_status(self) -> dict[str, dict[str, Any]]:
        topo, db = self.topology, self.topology.db
        keys = db.keys() | topo.listener_keys | topo.connector_keys
        by_key = self.flows.bytes_by_key()
        out = {}
        for k in sorted(keys):
            conns = list(db.serving(k))
            kb = by_key.get(k, (0, 0))
            out[k] = {
                # By router: a router's worker processes count as that router.
                "connectors": _routers(conns),
                "listeners": _routers(db.listening(k)),
                "reachable": bool(conns),
                "targets": self.sites.status(db, k, self.clock.now),
                "bytes": {"out": kb[0], "back": kb[1]},
            }
        return out


def _routers(ids: Iterable[str]) -> list[str]:
    return sorted({router_of_worker(r) for r in ids})
