"""Tier 2 (cores over a fake network): balanced/closest, retries, multicast, edges."""

from __future__ import annotations

from collections import Counter

from test_core import Net, delivered, send

from skiff_router.actions import CloseLocal, ConnectLocal, McastDeliver
from skiff_router.codec import FrameType, encode_frame
from skiff_router.config import Mode
from skiff_router.core import RouterCore


def star(n_targets: int = 3, costs: list[int] | None = None) -> tuple[Net, RouterCore]:
    """Origin ``o`` linked to targets t0..tN-1, each with a connector for ``k``."""
    net = Net()
    o = net.add("o")
    o.topology.set_services({"k"}, set())
    for i in range(n_targets):
        net.add(f"t{i}").topology.set_services(set(), {"k"})
        net.connect("o", f"t{i}", cost=(costs or [1] * n_targets)[i])
    return net, o


def open_and_accept(net: Net, o: RouterCore, dist: str = "balanced") -> tuple[int, str]:
    """Open a flow from o; the chosen target's connector takes it. Returns (lid, target)."""
    lid = o.flows.open("k", dist)
    assert lid is not None
    net.run()
    hits = [(n, a) for n in net.cores if n != "o" for a in net.take(n, ConnectLocal)]
    ((target, conn),) = hits
    assert net.cores[target].flows.local_connected(conn.lid)  # type: ignore[attr-defined]
    net.run()
    return lid, target


def close_flow(net: Net, o: RouterCore, lid: int) -> None:
    o.flows.local_reset(lid)
    net.run()


def test_balanced_spreads_short_flows_evenly() -> None:
    net, o = star(3)
    counts: Counter[str] = Counter()
    for _round in range(200):
        lid, target = open_and_accept(net, o)
        counts[target] += 1
        close_flow(net, o, lid)
    assert set(counts) == {"t0", "t1", "t2"}
    assert all(50 <= c <= 84 for c in counts.values()), counts


def test_balanced_avoids_a_loaded_target() -> None:
    net, o = star(3)
    # Load every target with long-lived flows, then end those on t1 and t2.
    held = [open_and_accept(net, o) for _round in range(30)]
    for lid, target in held:
        if target != "t0":
            close_flow(net, o, lid)
    assert o.sites.outstanding["k"] == {"t0": 10}
    counts: Counter[str] = Counter()
    for _round in range(60):
        lid, target = open_and_accept(net, o)
        counts[target] += 1
        close_flow(net, o, lid)
    assert counts["t0"] == 0 and counts["t1"] >= 20 and counts["t2"] >= 20, counts


def test_balanced_prefers_local_until_loaded() -> None:
    net, o = star(2)
    o.topology.set_services({"k"}, {"k"})  # o has a connector too (cost 0)
    lid = o.flows.open("k")
    net.run()
    (conn,) = net.take("o", ConnectLocal)
    assert isinstance(conn, ConnectLocal)
    o.flows.local_connected(conn.lid)
    net.run()
    # One flow outstanding locally: now local (0 + 1) ties with the remotes (1 + 0).
    picks = set()
    for _unused in range(6):
        lid2 = o.flows.open("k")
        net.run()
        for n in net.cores:
            for a in net.take(n, ConnectLocal):
                picks.add(n)
                net.cores[n].flows.local_connect_failed(a.lid)  # type: ignore[attr-defined]
        net.run()
        del lid2
    assert {"t0", "t1"} <= picks
    assert lid is not None


def test_closest_picks_least_cost_and_spreads_ties() -> None:
    net, o = star(3, costs=[5, 2, 2])
    counts: Counter[str] = Counter()
    for _round in range(20):
        _unused, target = open_and_accept(net, o, "closest")
        counts[target] += 1  # kept open: closest ignores load
    assert counts == {"t1": 10, "t2": 10}


def test_refused_target_is_retried_elsewhere_with_the_data() -> None:
    net, o = star(2, costs=[1, 2])
    lid = o.flows.open("k", "closest")
    assert lid is not None
    send(o, lid, b"hello ")
    send(o, lid, b"world")
    o.flows.local_eof(lid)
    net.run()
    (c0,) = net.take("t0", ConnectLocal)
    net.cores["t0"].flows.local_connect_failed(c0.lid)  # type: ignore[attr-defined]
    net.run()
    # The client was not reset: the flow moved to t1 with everything it sent.
    assert CloseLocal(lid, abort=True) not in net.take("o")
    (c1,) = net.take("t1", ConnectLocal)
    t1 = net.cores["t1"]
    assert t1.flows.local_connected(c1.lid)  # type: ignore[attr-defined]
    net.run()
    acts = net.take("t1")
    assert delivered(acts, c1.lid) == b"hello world"  # type: ignore[attr-defined]
    assert o.flows.retries == 1
    assert o.keys_status()["k"]["targets"][0] == {
        "router": "t0",
        "cost": 1,
        "outstanding": 0,
        "down": True,
    }
    # While t0 is down, new flows go to t1 even under "closest".
    lid2, target = open_and_accept(net, o, "closest")
    assert target == "t1"
    # After the backoff t0 is used again.
    net.tick(3.0)
    _unused, target = open_and_accept(net, o, "closest")
    assert target == "t0"
    del lid2


def test_no_other_target_resets_the_client() -> None:
    net, o = star(1)
    lid = o.flows.open("k")
    net.run()
    (c0,) = net.take("t0", ConnectLocal)
    net.cores["t0"].flows.local_connect_failed(c0.lid)  # type: ignore[attr-defined]
    net.run()
    assert CloseLocal(lid, abort=True) in net.take("o")  # type: ignore[arg-type]
    assert not o.flows.by_id and o.sites.outstanding.get("k", {}) == {}


def test_several_links_between_one_pair() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    b.topology.set_services(set(), {"k"})
    h1, _unused = net.connect("a", "b", cost=5)
    h2, _unused = net.connect("a", "b", cost=2)
    assert a.topology.db.routes["b"].cost == 2
    lid = a.flows.open("k")
    net.run()
    assert lid is not None
    (flow,) = list(a.flows.by_id.values())
    assert flow.ends[1].link is not None and flow.ends[1].link.handle == h2
    # Losing the cheap link keeps the pair connected over the other one.
    net.cut("a", h2)
    assert a.topology.db.routes["b"].cost == 5
    assert b.keys_status()["k"]["reachable"]
    assert a.keys_status()["k"]["reachable"]
    del h1


# -- multicast ---------------------------------------------------------------------------


def mesh_with_cycles() -> Net:
    net = Net()
    for n in ("a", "b", "c", "d", "e"):
        net.add(n)
    for x, y in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "b")):
        net.connect(x, y)
    return net


def test_multicast_reaches_each_router_exactly_once_in_order() -> None:
    net = mesh_with_cycles()
    for name in net.cores:
        net.take(name)
    n = 50
    for i in range(n):
        net.cores["a"].multicast.publish("news", f"a{i}".encode())
        net.cores["d"].multicast.publish("news", f"d{i}".encode())
        if i % 7 == 0:
            net.run()
    net.run()
    for name in net.cores:
        got = [a.message for a in net.take(name, McastDeliver)]  # type: ignore[attr-defined]
        for origin in ("a", "d"):
            mine = [m.payload for m in got if m.origin == origin]
            assert mine == [f"{origin}{i}".encode() for i in range(n)], (name, origin)


def test_malformed_multicast_closes_only_that_link() -> None:
    net = mesh_with_cycles()
    a = net.cores["a"]
    (h, _unused) = next((h, d) for (src, h), d in net.wires.items() if src == "a")
    a.link_data(h, encode_frame(FrameType.MCAST, 0, b"\x05ab"), net.now)
    assert h not in a.topology.links
    assert len(a.topology.links) == 1  # the other link of a is untouched


# -- edges -------------------------------------------------------------------------------


def edge_net() -> Net:
    """i1 - i2 interiors; edge e linked to both; o (interior) linked to i1."""
    net = Net()
    net.add("i1")
    net.add("i2")
    net.add("o").topology.set_services({"k"}, set())
    e = RouterCore("e", net.now, seq=0, mode=Mode.EDGE)
    net.cores["e"] = e
    net.actions["e"] = []
    e.topology.set_services({"k2"}, {"k"})
    net.connect("i1", "i2")
    net.connect("o", "i1")
    net.connect("e", "i1")
    net.connect("e", "i2", cost=3)
    return net


def test_edge_is_advertised_by_its_interiors_and_reached_through_them() -> None:
    net = edge_net()
    o, e = net.cores["o"], net.cores["e"]
    assert o.keys_status()["k"]["connectors"] == ["e"]
    assert o.topology.db.routes["e"].next_hop == "i1" and o.topology.db.routes["e"].cost == 2
    assert "e" not in net.cores["i1"].topology.db.lsas  # no LSA of its own in the network
    assert {r["id"]: r["mode"] for r in o.topology.routers_status()}["e"] == "edge"
    # The edge routes to everything through its interiors.
    assert e.topology.db.routes["o"].next_hop == "i1"
    assert e.keys_status()["k2"]["listeners"] == ["e"]
    lid, target = None, None
    lid = o.flows.open("k")
    net.run()
    (conn,) = net.take("e", ConnectLocal)
    assert e.flows.local_connected(conn.lid)  # type: ignore[attr-defined]
    send(o, lid, b"via edge")  # type: ignore[arg-type]
    net.run()
    assert delivered(net.take("e"), conn.lid) == b"via edge"  # type: ignore[attr-defined]
    del target


def test_edge_never_transit_and_survives_losing_one_interior() -> None:
    net = edge_net()
    o = net.cores["o"]
    # Nobody routes through the edge, even when it is the only way round.
    i2 = net.cores["i2"]
    cut = next(h for (src, h), (dst, _unused) in net.wires.items() if src == "i2" and dst == "i1")
    net.cut("i2", cut)
    assert "i2" not in o.topology.db.routes  # i2 is reachable only through e: not a path
    assert "o" not in i2.topology.db.routes
    # e lost i1: still reachable through i2? Only if i2 connects to the rest; relink.
    net.connect("i2", "i1")
    h_e_i1 = next(h for (src, h), (dst, _unused) in net.wires.items() if src == "e" and dst == "i1")
    net.cut("e", h_e_i1)
    assert o.keys_status()["k"]["connectors"] == ["e"]
    assert o.topology.db.routes["e"].cost == 1 + 1 + 3
    lid = o.flows.open("k")
    net.run()
    assert lid is not None and net.take("e", ConnectLocal)


def test_edge_does_not_forward_transit_opens_or_multicast() -> None:
    net = edge_net()
    e = net.cores["e"]
    net.take("i2")
    net.cores["i1"].multicast.publish("x", b"1")
    net.run()
    got = list(net.take("i2", McastDeliver))
    assert len(got) == 1  # via i1 directly; e did not echo it
    assert len(list(net.take("e", McastDeliver))) == 1
    assert e.mode == "edge"
