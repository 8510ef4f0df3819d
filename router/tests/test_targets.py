"""Tier 1: routing key -> target (site choice and connector choice), no sockets."""

from __future__ import annotations

from collections import Counter

from skiff_router.codec import Lsa
from skiff_router.config import ConnectorConfig, Distribution
from skiff_router.routing import LinkStateDb
from skiff_router.targets import DOWN_BACKOFF, RESOLVE_TTL, ConnectorChoice, SiteChoice


def conn(name: str, key: str = "k", port: int = 1) -> ConnectorConfig:
    return ConnectorConfig(name, key, "127.0.0.1", port)


def test_connectors_spread_least_loaded_first_refusing_last() -> None:
    cc = ConnectorChoice()
    cc.configure([conn("a"), conn("b"), conn("c"), conn("x", key="other")])
    firsts = Counter(cc.order("k", 0.0)[0].cfg.name for _unused in range(30))
    assert firsts == {"a": 10, "b": 10, "c": 10}  # ties round-robin
    a, b, c = (cc.by_name[n] for n in "abc")
    ConnectorChoice.connected(a)
    ConnectorChoice.connected(a)
    ConnectorChoice.connected(b)
    assert [x.cfg.name for x in cc.order("k", 0.0)] == ["c", "b", "a"]
    ConnectorChoice.refused(c, "Connection refused", 10.0)
    assert cc.order("k", 10.0)[-1] is c and c.error == "Connection refused"
    # After the backoff it is up for new flows again.
    assert cc.order("k", 10.0 + DOWN_BACKOFF)[0] is c
    ConnectorChoice.connected(c)
    assert c.error is None and c.down_until == 0.0
    assert cc.order("missing", 0.0) == []
    assert [x.cfg.name for x in cc.order("other", 0.0)] == ["x"]


def test_reconfigure_keeps_the_counters_of_unchanged_connectors() -> None:
    cc = ConnectorChoice()
    cc.configure([conn("a"), conn("b")])
    a = cc.by_name["a"]
    ConnectorChoice.connected(a)
    cc.configure([conn("a"), conn("b", port=2), conn("c", key="k2")])
    assert cc.by_name["a"] is a and a.flows == 1
    assert cc.by_name["b"].cfg.port == 2
    assert cc.keys() == {"k", "k2"}
    ConnectorChoice.closed(a)
    assert a.flows == 0


def star_db() -> LinkStateDb:
    """o linked to t1 (cost 1) and t2 (cost 3), both serving k."""
    db = LinkStateDb("o")
    db.update(Lsa("o", 1, (("t1", 1), ("t2", 3)), frozenset(), frozenset({"k"})))
    db.update(Lsa("t1", 1, (("o", 1),), frozenset({"k"}), frozenset()))
    db.update(Lsa("t2", 1, (("o", 3),), frozenset({"k"}), frozenset()))
    db.compute()
    return db


def test_sites_closest_balanced_refused_and_excluded() -> None:
    db, sites = star_db(), SiteChoice()
    assert {sites.choose(db, "k", Distribution.CLOSEST, 0.0) for _unused in range(4)} == {"t1"}
    # Balanced weighs the flows already open: three on t1 make t2 (3 + 0) win.
    for _unused in range(3):
        sites.count("k", "t1", +1)
    assert sites.choose(db, "k", Distribution.BALANCED, 0.0) == "t2"
    assert sites.choose(db, "k", Distribution.CLOSEST, 0.0) == "t1"
    # A refusing site is avoided for the backoff, unless nothing else serves the key.
    sites.refused("k", "t1", 5.0)
    assert sites.status(db, "k", 5.0) == [
        {"router": "t1", "cost": 1, "outstanding": 3, "down": True},
        {"router": "t2", "cost": 3, "outstanding": 0, "down": False},
    ]
    assert sites.choose(db, "k", Distribution.CLOSEST, 5.0) == "t2"
    assert sites.choose(db, "k", Distribution.CLOSEST, 5.0, exclude=["t2"]) == "t1"
    assert sites.choose(db, "k", Distribution.CLOSEST, 5.0 + DOWN_BACKOFF) == "t1"
    assert sites.choose(db, "k", Distribution.CLOSEST, 0.0, exclude=["t1", "t2"]) is None
    for _unused in range(3):
        sites.count("k", "t1", -1)
    assert sites.outstanding["k"] == {}


def test_connector_addresses_are_cached_best_first_and_dropped_on_refusal() -> None:
    cc = ConnectorChoice()
    cc.configure([ConnectorConfig("web", "web", "web.internal", 80)])
    c = cc.by_name["web"]
    assert ConnectorChoice.cached_addresses(c, 0.0) == ()
    assert ConnectorChoice.resolved(c, ["::1", "127.0.0.1", "::1"], 0.0) == ("::1", "127.0.0.1")
    ConnectorChoice.worked(c, "127.0.0.1")  # the second address took the connection
    assert ConnectorChoice.cached_addresses(c, RESOLVE_TTL - 0.1) == ("127.0.0.1", "::1")
    assert ConnectorChoice.cached_addresses(c, RESOLVE_TTL) == ()  # looked up again
    ConnectorChoice.resolved(c, ["10.0.0.7"], 10.0)
    ConnectorChoice.refused(c, "Connection refused", 11.0)
    assert ConnectorChoice.cached_addresses(c, 11.0) == ()  # it may have moved
