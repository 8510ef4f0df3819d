"""Tier 2: router cores back to back over a fake network (no sockets, no asyncio)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from skiff_router.actions import (
    Action,
    CloseLink,
    CloseLocal,
    ConnectLocal,
    Deliver,
    DeliverEof,
    LinkEstablished,
    ResumeRead,
)
from skiff_router.codec import HEADER_SIZE, FrameType, encode_frame
from skiff_router.config import FlowTimeouts, Mode
from skiff_router.core import RouterCore
from skiff_router.flows import INITIAL_WINDOW
from skiff_router.link import (
    DEAD_AFTER,
    TRANSITIONS,
    LinkClosed,
    LinkPhase,
    LinkProtocol,
    LinkUp,
)


@dataclass
class Net:
    now: float = 0.0
    cores: dict[str, RouterCore] = field(default_factory=dict)
    wires: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    actions: dict[str, list[Action]] = field(default_factory=dict)

    def add(self, name: str, site: str = "") -> RouterCore:
        core = RouterCore(name, self.now, seq=0, site=site)
        self.cores[name] = core
        self.actions[name] = []
        return core

    def connect(
        self,
        dialer: str,
        acceptor: str,
        cost: int = 1,
        expected: str | None = None,
        replaces: tuple[int, ...] = (),
    ) -> tuple[int, int]:
        """The dialer expects the acceptor's site (its link's peer); the acceptor the
        dialer's site (what the client certificate names)."""
        d, a = self.cores[dialer], self.cores[acceptor]
        hd = d.link_connected(
            acceptor, "outgoing", self.now, expected or a.site, cost, replaces=replaces
        )
        ha = a.link_connected("in", "incoming", self.now, d.site)
        self.wires[(dialer, hd)] = (acceptor, ha)
        self.wires[(acceptor, ha)] = (dialer, hd)
        self.run()
        return hd, ha

    def cut(self, name: str, handle: int) -> None:
        other, oh = self.wires.pop((name, handle))
        self.wires.pop((other, oh))
        self.cores[name].link_lost(handle, "cut")
        self.cores[other].link_lost(oh, "cut")
        self.run()

    def run(self, max_rounds: int = 1000) -> None:
        for _round in range(max_rounds):
            moved = False
            for name, core in self.cores.items():
                self.actions[name] += core.outbox.take_actions()
                for h, data in core.outbox.take_writes():
                    dest = self.wires.get((name, h))
                    if dest is not None:
                        moved = True
                        self.cores[dest[0]].link_data(dest[1], b"".join(data), self.now)
            if not moved:
                for name, core in self.cores.items():
                    self.actions[name] += core.outbox.take_actions()
                return
        raise AssertionError("network did not settle")

    def tick(self, dt: float) -> None:
        self.now += dt
        for core in self.cores.values():
            core.tick(self.now)
        self.run()

    def take(self, name: str, kind: type | None = None) -> list[Action]:
        acts = self.actions[name]
        if kind is None:
            self.actions[name] = []
            return acts
        self.actions[name] = [a for a in acts if not isinstance(a, kind)]
        return [a for a in acts if isinstance(a, kind)]


def pair() -> tuple[Net, RouterCore, RouterCore]:
    net = Net()
    a, b = net.add("a"), net.add("b")
    a.topology.set_services({"k"}, set())
    b.topology.set_services(set(), {"k"})
    net.connect("a", "b")
    return net, a, b


def send(core: RouterCore, lid: int, data: bytes) -> None:
    """A local socket read ``data`` (the I/O layer's one way in: a read buffer with
    room for a frame header in front)."""
    buf = memoryview(bytearray(HEADER_SIZE + len(data)))
    buf[HEADER_SIZE:] = data
    core.flows.local_read(lid, buf, len(data))


def out(proto: LinkProtocol) -> bytes:
    return b"".join(proto.take_output())


def delivered(actions: list[Action], lid: int) -> bytes:
    return b"".join(x.data for x in actions if isinstance(x, Deliver) and x.lid == lid)


# -- link state machine alone -------------------------------------------------------------


def test_hello_exchange_and_id_check() -> None:
    d = LinkProtocol("west", dialer=True, now=0, expected_site="east", cost=3)
    a = LinkProtocol("east", dialer=False, now=0)
    assert a.receive_data(out(d), 0) == [LinkUp("west", 3, Mode.INTERIOR, "west")]
    assert d.receive_data(out(a), 0) == [LinkUp("east", 3, Mode.INTERIOR, "east")]
    assert d.allocate_flow_id() % 2 == 1 and a.allocate_flow_id() % 2 == 0


def test_id_mismatch_closes_with_public_reason_only() -> None:
    d = LinkProtocol("west", dialer=True, now=0, expected_site="south")
    a = LinkProtocol("east", dialer=False, now=0)
    a.receive_data(out(d), 0)
    (ev,) = d.receive_data(out(a), 0)
    assert isinstance(ev, LinkClosed) and "expected 'south'" in ev.reason
    (ev2,) = a.receive_data(out(d), 0)
    assert ev2 == LinkClosed("closed by peer: unexpected site")


def test_link_phases_follow_the_table() -> None:
    # CLOSED is final and nothing leads back to HELLO.
    assert TRANSITIONS[LinkPhase.CLOSED] == frozenset()
    assert all(LinkPhase.HELLO not in to for to in TRANSITIONS.values())
    d = LinkProtocol("west", dialer=True, now=0)
    a = LinkProtocol("east", dialer=False, now=0)
    assert d.phase is LinkPhase.HELLO
    a.receive_data(out(d), 0)
    d.receive_data(out(a), 0)
    assert d.phase is LinkPhase.UP and d.up
    assert d.fail("going away", "closing") == LinkClosed("going away")
    assert d.phase is LinkPhase.CLOSED
    with pytest.raises(RuntimeError, match="from closed to up"):
        d._to(LinkPhase.UP)
    # A closed link reads and sends nothing more.
    assert d.receive_data(encode_frame(FrameType.PING), 1) == []
    d.send(FrameType.PING)
    assert out(d) == encode_frame(FrameType.CLOSE, 0, b"closing")


def test_frames_before_hello_and_garbage_close_the_link() -> None:
    a = LinkProtocol("east", dialer=False, now=0)
    (ev,) = a.receive_data(encode_frame(FrameType.PING), 0)
    assert isinstance(ev, LinkClosed) and "before HELLO" in ev.reason
    b = LinkProtocol("east", dialer=False, now=0)
    out(b)
    (ev,) = b.receive_data(b"\xff" * 20, 0)
    assert isinstance(ev, LinkClosed)
    # Only the generic code goes to the peer, never the internal detail.
    assert out(b) == encode_frame(FrameType.CLOSE, 0, b"protocol error")


def test_keepalive_and_dead_neighbour() -> None:
    net, a, b = pair()
    for _round in range(10):
        net.tick(0.5)  # pings flow, links stay up
    assert a.topology.neighbours() == {"b": 1}
    # Stop delivering: the neighbour is declared dead within DEAD_AFTER + a tick.
    net.wires.clear()
    for _round in range(int(DEAD_AFTER / 0.5) + 2):
        net.tick(0.5)
    assert a.topology.neighbours() == {} and b.topology.neighbours() == {}
    assert net.take("a", CloseLink)


def test_two_routers_of_one_site_are_two_routers() -> None:
    """Replicas: distinct router ids, one site; linked to each other and to another site."""
    net = Net()
    ea, eb, w = net.add("east.a", "east"), net.add("east.b", "east"), net.add("west")
    eb.topology.set_services(set(), {"k"})
    w.topology.set_services({"k"}, set())
    net.connect("east.b", "east.a")  # one site's routers linked to each other
    net.connect("west", "east.a")
    assert ea.topology.neighbours() == {"east.b": 1, "west": 1}
    assert {r["id"]: r["site"] for r in w.topology.routers_status()} == {
        "east.a": "east",
        "east.b": "east",
        "west": "west",
    }
    assert w.topology.db.routes["east.b"].next_hop == "east.a"
    la = w.flows.open("k")
    assert la is not None
    net.run()
    (conn,) = net.take("east.b", ConnectLocal)
    assert eb.flows.local_connected(conn.lid)  # type: ignore[attr-defined]
    send(w, la, b"to the second replica")
    net.run()
    assert delivered(net.take("east.b"), conn.lid) == b"to the second replica"  # type: ignore[attr-defined]
    # A router announcing another site than its link expects is refused.
    net.add("south")
    net.connect("south", "east.b", expected="west")
    assert (
        "south" not in eb.topology.neighbours()
        and "east.b" not in net.cores["south"].topology.neighbours()
    )


# -- routing over cores --------------------------------------------------------------------


def test_lsa_exchange() -> None:
    net, a, b = pair()
    assert isinstance(net.take("a", LinkEstablished)[0], LinkEstablished)
    ks = a.keys_status()
    assert {k: (v["connectors"], v["listeners"], v["reachable"]) for k, v in ks.items()} == {
        "k": (["b"], ["a"], True)
    }
    assert ks["k"]["targets"] == [{"router": "b", "cost": 1, "outstanding": 0, "down": False}]
    assert [r["id"] for r in b.topology.routers_status()] == ["a", "b"]


def test_multi_hop_and_convergence() -> None:
    net = Net()
    for n in ("north", "west", "east", "south"):
        net.add(n)
    net.cores["east"].topology.set_services(set(), {"k"})
    net.connect("north", "west")
    hwe, _unused = net.connect("west", "east")
    net.connect("north", "south", cost=5)
    net.connect("south", "east", cost=5)
    north = net.cores["north"]
    assert (
        north.topology.db.routes["east"].cost == 2
        and north.topology.db.routes["east"].next_hop == "west"
    )
    # Lose west-east: north converges to the expensive path through south.
    net.cut("west", hwe)
    assert (
        north.topology.db.routes["east"].cost == 10
        and north.topology.db.routes["east"].next_hop == "south"
    )
    assert north.keys_status()["k"]["reachable"]


# -- flows ----------------------------------------------------------------------------------


def open_flow(net: Net, a: RouterCore, b: RouterCore) -> tuple[int, int]:
    lid = a.flows.open("k")
    assert lid is not None
    net.run()
    (conn,) = net.take("b", ConnectLocal)
    assert isinstance(conn, ConnectLocal) and conn.key == "k"
    assert b.flows.local_connected(conn.lid)
    net.run()
    return lid, conn.lid


def test_flow_open_data_half_close_both_ways() -> None:
    net, a, b = pair()
    la, lb = open_flow(net, a, b)
    send(a, la, b"hello")
    net.run()
    acts = net.take("b")
    assert delivered(acts, lb) == b"hello"
    b.flows.local_consumed(lb, 5)
    # Client half-closes; server still answers.
    a.flows.local_eof(la)
    net.run()
    assert DeliverEof(lb) in net.take("b")
    send(b, lb, b"world")
    b.flows.local_eof(lb)
    net.run()
    acts = net.take("a")
    assert delivered(acts, la) == b"world"
    assert acts[-2:] == [DeliverEof(la), CloseLocal(la, abort=False)]
    assert CloseLocal(lb, abort=False) in net.take("b")
    assert not a.flows.by_id and not b.flows.by_id
    assert a.flows.total == 1


def test_connect_failure_resets_listener_side() -> None:
    net, a, b = pair()
    la = a.flows.open("k")
    net.run()
    (conn,) = net.take("b", ConnectLocal)
    b.flows.local_connect_failed(conn.lid)  # type: ignore[attr-defined]
    net.run()
    assert CloseLocal(la, abort=True) in net.take("a")  # type: ignore[arg-type]
    assert not a.flows.by_id and not b.flows.by_id


def test_reset_propagates_both_ways_over_three_hops() -> None:
    net = Net()
    for n in ("n", "w", "e"):
        net.add(n)
    net.cores["e"].topology.set_services(set(), {"k"})
    net.connect("n", "w")
    net.connect("w", "e")
    n, w, e = net.cores["n"], net.cores["w"], net.cores["e"]
    la = n.flows.open("k")
    assert la is not None
    net.run()
    (conn,) = net.take("e", ConnectLocal)
    e.flows.local_connected(conn.lid)  # type: ignore[attr-defined]
    send(n, la, b"x")
    net.run()
    assert delivered(net.take("e"), conn.lid) == b"x"  # type: ignore[attr-defined]
    assert len(w.flows.by_id) == 1
    e.flows.local_reset(conn.lid)  # type: ignore[attr-defined]
    net.run()
    assert CloseLocal(la, abort=True) in net.take("n")
    assert not n.flows.by_id and not w.flows.by_id and not e.flows.by_id


def test_link_loss_resets_flows() -> None:
    net, a, b = pair()
    la, lb = open_flow(net, a, b)
    (h,) = list(a.topology.links)
    net.cut("a", h)
    assert CloseLocal(la, abort=True) in net.take("a")
    assert CloseLocal(lb, abort=True) in net.take("b")


def test_no_connector_means_no_flow() -> None:
    net, a, b = pair()
    assert a.flows.open("missing") is None
    b.topology.set_services(set(), set())
    net.run()
    assert a.flows.open("k") is None


def test_local_connector_is_used_directly() -> None:
    net = Net()
    a = net.add("a")
    a.topology.set_services({"k"}, {"k"})
    la = a.flows.open("k")
    assert la is not None
    net.run()
    (conn,) = net.take("a", ConnectLocal)
    a.flows.local_connected(conn.lid)  # type: ignore[attr-defined]
    send(a, la, b"ping")
    net.run()
    assert delivered(net.take("a"), conn.lid) == b"ping"  # type: ignore[attr-defined]


def test_credit_bounds_a_flow_without_stalling_others() -> None:
    net, a, b = pair()
    la1, lb1 = open_flow(net, a, b)
    la2, lb2 = open_flow(net, a, b)
    chunk = b"z" * 65536
    read = 0
    # The client of flow 1 writes as long as the router lets it read.
    while (allow := a.flows.read_allowance(la1)) and read < 10 * INITIAL_WINDOW:
        n = min(allow, len(chunk))
        send(a, la1, chunk[:n])
        read += n
        net.run()
    # Flow 1's receiver never drains: at most link window + queue in flight.
    assert read == 2 * INITIAL_WINDOW
    assert len(delivered(net.take("b"), lb1)) == INITIAL_WINDOW
    # Flow 2 still flows.
    send(a, la2, b"other")
    net.run()
    assert delivered(net.take("b"), lb2) == b"other"
    # Draining flow 1 grants credit back, a frame the I/O layer writes at once,
    # and the reader resumes.
    b.flows.local_consumed(lb1, INITIAL_WINDOW)
    assert b.outbox.urgent and b.outbox.queued > 0
    net.run()
    assert ResumeRead(la1) in net.take("a")
    assert a.flows.read_allowance(la1)


def test_window_violation_and_unknown_flow_close_link() -> None:
    net, a, b = pair()
    open_flow(net, a, b)
    (ha,) = list(a.topology.links)
    (hb,) = list(b.topology.links)
    fid = next(iter(a.topology.links[ha].flows))
    # A misbehaving peer sends beyond the window: only that link closes.
    big = b"".join(
        encode_frame(FrameType.DATA, fid, b"x" * 65536)
        for _round in range(INITIAL_WINDOW // 65536 + 1)
    )
    b.link_data(hb, big, net.now)
    assert hb not in b.topology.links
    assert any(
        isinstance(x, CloseLink) and "exceeded its window" in x.reason
        for x in b.outbox.take_actions()
    )
    # DATA for a flow id that was never opened is a protocol error too.
    net2, _unused, d = pair()
    (hd,) = list(d.topology.links)
    d.link_data(hd, encode_frame(FrameType.DATA, 99, b"x"), net2.now)
    assert hd not in d.topology.links


def test_open_refused_downstream_resets_the_sender() -> None:
    """A router that cannot serve an OPEN (connector gone, route gone) must say so."""
    # The connector is withdrawn while the OPEN is on the wire.
    net, a, b = pair()
    a.flows.open("k")
    b.topology.set_services(set(), set())
    net.run()
    assert a.flows.by_id == {} and b.flows.by_id == {}
    assert any(isinstance(x, CloseLocal) and x.abort for x in net.take("a"))

    # The next hop is lost while the OPEN is on the wire.
    net = Net()
    for name in ("n", "w", "e"):
        net.add(name)
    net.cores["e"].topology.set_services(set(), {"k"})
    net.connect("n", "w")
    w_end, e_end = net.connect("w", "e")
    net.run()
    net.take("n")
    n, w = net.cores["n"], net.cores["w"]
    n.flows.open("k")
    far = net.wires.pop(("w", w_end))
    net.wires.pop(far)
    w.link_lost(w_end, "cut")
    net.cores["e"].link_lost(e_end, "cut")
    net.run()
    assert n.flows.by_id == {} and w.flows.by_id == {}
    assert any(isinstance(x, CloseLocal) and x.abort for x in net.take("n"))


def test_open_flows_per_link_are_capped(monkeypatch) -> None:
    import skiff_router.flows as flows_module

    monkeypatch.setattr(flows_module, "MAX_LINK_FLOWS", 3)
    net, a, b = pair()
    for _unused in range(5):
        a.flows.open("k")
    net.run()
    # Three flows reach the connector side; the rest are refused, not queued.
    assert len(b.flows.by_id) == 3
    assert len(a.flows.by_id) == 3
    assert sum(isinstance(x, CloseLocal) and x.abort for x in net.take("a")) == 2


def test_half_closed_and_idle_flows_expire_active_ones_stay() -> None:
    """A client that finished while its server never does, and a flow nobody uses:
    both are reset on both routers after their timeouts (the sockets closed, the
    far side told); a flow carrying bytes stays."""
    net, a, b = pair()
    for core in (a, b):
        core.flow_timeouts = FlowTimeouts(half_closed=5, idle=30)
    half_a, half_b = open_flow(net, a, b)
    idle_a, idle_b = open_flow(net, a, b)
    busy_a, busy_b = open_flow(net, a, b)
    a.flows.local_eof(half_a)  # the client is done; the server never closes
    net.run()
    net.take("a")
    net.take("b")
    for _second in range(4):
        net.tick(1.0)
    assert len(a.flows.by_id) == len(b.flows.by_id) == 3  # not yet
    for _second in range(2):
        net.tick(1.0)
    assert CloseLocal(half_a, abort=True) in net.take("a")
    assert CloseLocal(half_b, abort=True) in net.take("b")
    assert len(a.flows.by_id) == len(b.flows.by_id) == 2
    for _second in range(26):
        send(a, busy_a, b"x")
        net.tick(1.0)
        b.flows.local_consumed(busy_b, 1)
    assert CloseLocal(idle_a, abort=True) in net.take("a", CloseLocal)
    assert CloseLocal(idle_b, abort=True) in net.take("b", CloseLocal)
    assert [f.key for f in a.flows.by_id.values()] == ["k"]
    assert a.flows.expired == 2 and b.flows.expired == 2
    # Never, when the timeouts are 0.
    for core in (a, b):
        core.flow_timeouts = FlowTimeouts(half_closed=0, idle=0)
    for _second in range(100):
        net.tick(1.0)
    assert len(a.flows.by_id) == len(b.flows.by_id) == 1


# -- make before break ----------------------------------------------------------------------


def test_replaced_link_drains_its_flows_then_the_peer_closes_it() -> None:
    """A newer link between the same routers takes every new flow, both ways; the old
    one carries its flows to their end, and the peer, which saw DRAIN after every flow
    the other side opened, closes it once it is empty."""
    net, a, b = pair()
    (old_a,) = list(a.topology.links)
    old_b = net.wires[("a", old_a)][1]
    la, lb = open_flow(net, a, b)
    # The old link drains once the peer accepted the new one (its first update).
    new_a, new_b = net.connect("a", "b", cost=5, replaces=(old_a,))
    assert a.topology.links[old_a].proto.phase is LinkPhase.DRAINING
    assert b.topology.links[old_b].proto.phase is LinkPhase.DRAINING
    # Routes follow the link that stays: its cost is advertised now.
    assert a.topology.neighbours() == {"b": 5}
    assert b.topology.db.lsas["a"].links == (("b", 5),)
    assert a.topology.link_to("b").handle == new_a  # type: ignore[union-attr]
    assert b.topology.link_to("a").handle == new_b  # type: ignore[union-attr]
    la2, lb2 = open_flow(net, a, b)
    assert set(a.topology.links[new_a].flows) and set(a.topology.links[old_a].flows)
    # The old flow still carries bytes both ways, and keepalives keep the link up.
    for _tick in range(int(DEAD_AFTER) + 2):
        net.tick(1.0)
    send(a, la, b"old link")
    send(b, lb, b"still here")
    net.run()
    assert delivered(net.take("b"), lb) == b"old link"
    assert delivered(net.take("a"), la) == b"still here"
    assert old_b in b.topology.links
    a.flows.local_eof(la)
    b.flows.local_eof(lb)
    net.run()
    net.tick(1.0)
    assert old_a not in a.topology.links and old_b not in b.topology.links
    assert a.topology.neighbours() == {"b": 5}
    send(a, la2, b"new link")
    net.run()
    assert delivered(net.take("b"), lb2) == b"new link"


def test_a_refused_new_link_drains_nothing() -> None:
    """A peer that refuses the new link (here: it is not the site expected) closes it
    before any update: the old link keeps taking new flows."""
    net, a, b = pair()
    (old_a,) = list(a.topology.links)
    net.connect("a", "b", expected="elsewhere", replaces=(old_a,))
    assert list(a.topology.links) == [old_a]
    assert not a.topology.links[old_a].proto.draining
    open_flow(net, a, b)


def test_drain_to_a_peer_without_it_closes_the_old_link() -> None:
    """A router from before DRAIN would close the link on the unknown frame: it is
    not sent; the old link closes at once instead (break after make)."""
    net, a, _b = pair()
    (old_a,) = list(a.topology.links)
    net.connect("a", "b")
    a.topology.links[old_a].proto.peer_drains = False
    a.drain_link(old_a)
    net.run()
    assert old_a not in a.topology.links
    assert list(a.topology.neighbours()) == ["b"]


def test_drain_frame_rules() -> None:
    d = LinkProtocol("west", dialer=True, now=0)
    a = LinkProtocol("east", dialer=False, now=0)
    # Before HELLO, DRAIN is a protocol error like any frame.
    (ev,) = a.receive_data(encode_frame(FrameType.DRAIN), 0)
    assert isinstance(ev, LinkClosed) and "before HELLO" in ev.reason
    a = LinkProtocol("east", dialer=False, now=0)
    a.receive_data(out(d), 0)
    d.receive_data(out(a), 0)
    assert d.peer_drains and a.peer_drains
    assert d.drain() and d.phase is LinkPhase.DRAINING and not d.drain()
    evs = a.receive_data(out(d), 0)
    assert a.phase is LinkPhase.DRAINING and a.drained_by_peer and len(evs) == 1
    assert a.receive_data(encode_frame(FrameType.DRAIN), 0) == []  # a second: nothing
    (ev,) = a.receive_data(encode_frame(FrameType.DRAIN, 0, b"x"), 0)
    assert isinstance(ev, LinkClosed) and "DRAIN with a payload" in ev.reason
