"""Routing table unit tests."""

from __future__ import annotations

from skiff_router.codec import Lsa
from skiff_router.config import Distribution
from skiff_router.routing import STALE_AFTER, LinkStateDb, Route, shortest_paths
from skiff_router.targets import SiteChoice


def lsa(
    rid: str,
    links: dict[str, int],
    conn: set[str] = frozenset(),
    lis: set[str] = frozenset(),
    seq: int = 1,
) -> Lsa:  # type: ignore[assignment]
    return Lsa(rid, seq, tuple(sorted(links.items())), frozenset(conn), frozenset(lis))


def db_of(self_id: str, *lsas: Lsa) -> LinkStateDb:
    db = LinkStateDb(self_id)
    for x in lsas:
        db.update(x)
    db.compute()
    return db


def test_multi_hop_next_hop() -> None:
    routes = shortest_paths(
        "north",
        {
            "north": lsa("north", {"west": 1}),
            "west": lsa("west", {"north": 1, "east": 1}),
            "east": lsa("east", {"west": 1}),
        },
    )
    assert routes == {"north": Route(0, None), "west": Route(1, "west"), "east": Route(2, "west")}


def test_least_cost_beats_fewer_hops() -> None:
    routes = shortest_paths(
        "a",
        {
            "a": lsa("a", {"b": 10, "c": 1}),
            "b": lsa("b", {"a": 10, "c": 1}),
            "c": lsa("c", {"a": 1, "b": 1}),
        },
    )
    assert routes["b"] == Route(2, "c")


def test_one_sided_edge_is_ignored() -> None:
    # b still advertises a, but a no longer lists b: the link is gone.
    routes = shortest_paths(
        "c", {"a": lsa("a", {}), "b": lsa("b", {"a": 1, "c": 1}), "c": lsa("c", {"b": 1})}
    )
    assert "a" not in routes
    assert routes["b"] == Route(1, "b")


def test_tie_spread_round_robin_and_local_preferred() -> None:
    db = db_of(
        "a",
        lsa("a", {"b": 1, "c": 1}),
        lsa("b", {"a": 1}, conn={"k"}),
        lsa("c", {"a": 1}, conn={"k"}),
    )
    sites = SiteChoice()

    def choose(key: str) -> str | None:
        return sites.choose(db, key, Distribution.BALANCED, 0.0)

    picks = [choose("k") for _unused in range(4)]
    assert sorted(picks) == ["b", "b", "c", "c"]  # type: ignore[type-var]
    assert picks[0] != picks[1]
    # A local connector (cost 0) wins.
    db.update(lsa("a", {"b": 1, "c": 1}, conn={"k"}, seq=2))
    db.compute()
    assert {choose("k") for _unused in range(4)} == {"a"}
    assert choose("other") is None


def test_link_loss_converges_and_stale_purged() -> None:
    db = db_of(
        "a",
        lsa("a", {"b": 1}),
        lsa("b", {"a": 1, "c": 1}),
        lsa("c", {"b": 1}, conn={"k"}),
    )
    sites = SiteChoice()
    assert sites.choose(db, "k", Distribution.BALANCED, 0.0) == "c"
    db.update(lsa("b", {"a": 1}, seq=2))  # b lost c
    db.compute()
    assert "c" not in db.routes
    assert sites.choose(db, "k", Distribution.BALANCED, 0.0) is None
    assert db.serving("k") == ()
    assert not db.purge(100.0)
    assert db.purge(100.0 + STALE_AFTER)
    assert "c" not in db.lsas


def test_old_sequence_ignored() -> None:
    db = LinkStateDb("a")
    assert db.update(lsa("b", {}, seq=5))
    assert not db.update(lsa("b", {"x": 1}, seq=5))
    assert not db.update(lsa("b", {"x": 1}, seq=4))
    assert db.lsas["b"].links == ()
