"""Multi-key listeners: config checks, the key choice (sans-I/O) and real bytes
through a network of routers (failover to a standby site and back, weighted spread)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from router_testkit import Site, run, tcp_server, wait_for
from test_network import TIMEOUT, reachable, routers

from skiff_router.config import ConfigError, KeyWeight, ListenerConfig, Strategy, load, validate
from skiff_router.routing import LinkStateDb
from skiff_router.runtime import Router
from skiff_router.targets import KeyChoice


def _config(listener: dict[str, Any]) -> dict[str, Any]:
    base = {"name": "db", "host": "127.0.0.1", "port": 5432}
    return {"site": "west", "listeners": [{**base, **listener}]}


def _errors(listener: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(_config(listener))
    return info.value.lines()


def test_multi_key_listener_config() -> None:
    cfg = validate(
        _config(
            {
                "routing_keys": [{"key": "db-a", "weight": 3}, {"key": "db-b"}],
                "strategy": "weighted",
            }
        )
    )
    lc = cfg.listeners[0]
    assert lc.routing_keys == (KeyWeight("db-a", 3), KeyWeight("db-b", 1))
    assert lc.strategy is Strategy.WEIGHTED
    assert lc.key_names() == ("db-a", "db-b")
    assert lc.routing_key == "db-a"
    one = validate(_config({"routing_key": "db"})).listeners[0]
    assert one.key_names() == ("db",) and one.routing_keys == ()


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        ({"routing_keys": []}, "listeners[0].routing_keys: must be a non-empty list"),
        ({"routing_keys": "db"}, "listeners[0].routing_keys: must be a non-empty list"),
        (
            {"routing_keys": [{"key": "a"}, {"key": "a"}]},
            "listeners[0].routing_keys[1].key: duplicate key 'a' in routing_keys "
            "(also listeners[0].routing_keys[0])",
        ),
        (
            {"routing_keys": [{"key": "a", "weight": 0}]},
            "listeners[0].routing_keys[0].weight: must be a positive integer",
        ),
        (
            {"routing_keys": [{"key": "a", "weight": "2"}]},
            "listeners[0].routing_keys[0].weight: must be a positive integer",
        ),
        (
            {"routing_keys": [{"key": "a", "weight": True}]},
            "listeners[0].routing_keys[0].weight: must be a positive integer",
        ),
        (
            {"routing_keys": [{"key": "a", "weight": 1.5}]},
            "listeners[0].routing_keys[0].weight: must be a positive integer",
        ),
        ({"routing_keys": [{"key": "a"}], "strategy": "random"}, "listeners[0].strategy: must be"),
        ({"routing_key": "a", "strategy": "priority"}, "listeners[0].strategy: needs routing_keys"),
        (
            {"routing_key": "a", "routing_keys": [{"key": "b"}]},
            "listeners[0].routing_keys: give routing_key or routing_keys",
        ),
        ({}, "listeners[0].routing_key: is required (or routing_keys)"),
        ({"routing_keys": [{"name": "a"}]}, "listeners[0].routing_keys[0].key: is required"),
    ],
)
def test_multi_key_listener_bad_input(listener: dict[str, Any], expected: str) -> None:
    lines = _errors(listener)
    assert any(line.startswith(expected) for line in lines), lines


def _db(serving: dict[str, set[str]]) -> LinkStateDb:
    """A link-state database where router r serves the keys given."""
    db = LinkStateDb("west")
    db.services = {r: (frozenset(keys), frozenset()) for r, keys in serving.items()}
    return db


def _listener(strategy: Strategy, *keys: tuple[str, int]) -> ListenerConfig:
    return ListenerConfig(
        name="db",
        routing_key=keys[0][0],
        host="127.0.0.1",
        port=1,
        routing_keys=tuple(KeyWeight(k, w) for k, w in keys),
        strategy=strategy,
    )


def test_priority_takes_the_first_served_key() -> None:
    lc = _listener(Strategy.PRIORITY, ("a", 1), ("b", 1), ("c", 1))
    choice = KeyChoice()
    both = _db({"east": {"a"}, "north": {"b", "c"}})
    assert [choice.choose(lc, both) for _n in range(3)] == ["a", "a", "a"]
    only_b = _db({"north": {"b", "c"}})
    assert choice.choose(lc, only_b) == "b"
    assert KeyChoice.in_use(lc, only_b) == ["b"]
    assert choice.choose(lc, both) == "a"  # back as soon as a is served again
    assert choice.choose(lc, _db({})) is None
    assert choice.flows == {"a": 4, "b": 1}


def test_weighted_spreads_exactly_by_weight_over_served_keys() -> None:
    lc = _listener(Strategy.WEIGHTED, ("a", 3), ("b", 1), ("c", 2))
    choice = KeyChoice()
    db = _db({"east": {"a"}, "north": {"b"}, "south": {"c"}})
    seq = [choice.choose(lc, db) for _n in range(60)]
    assert Counter(seq) == {"a": 30, "b": 10, "c": 20}
    # Smooth: every run of six flows holds each key its weight's share.
    assert all(Counter(seq[i : i + 6]) == {"a": 3, "b": 1, "c": 2} for i in range(0, 60, 6))
    without_a = _db({"north": {"b"}, "south": {"c"}})
    assert KeyChoice.in_use(lc, without_a) == ["b", "c"]
    got = Counter(choice.choose(lc, without_a) for _n in range(30))
    assert got == {"b": 10, "c": 20}


# -- real routers, real bytes ------------------------------------------------------------------


def tagged(tag: bytes):
    """A server that answers each connection with its tag, then echoes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(tag)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except OSError:
            pass
        finally:
            writer.close()

    return handler


async def exchange(port: int, payload: bytes) -> bytes:
    """Send payload through the listener; return the server's tag after checking
    that the echo came back whole (sha256)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    w.write_eof()
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    tag, echoed = data[:2], data[2:]
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest(), tag
    return tag


def _multi_key(site: Site, strategy: str, *keys: dict[str, Any]) -> int:
    port = site.listen("unused", name="svc")
    site.listeners[-1].pop("routing_key")
    site.listeners[-1].update(routing_keys=list(keys), strategy=strategy)
    return port


def _listener_status(r: Router) -> dict[str, Any]:
    return r.status()["listeners"][0]


@pytest.mark.integration
def test_priority_fails_over_to_standby_site_and_back(tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        east = Site.create(tmp_path, "east", accept=True)
        north = Site.create(tmp_path, "north", accept=True)
        west.link_to(east)
        west.link_to(north)
        payload = os.urandom(200_000)
        async with tcp_server(tagged(b"P1")) as primary, tcp_server(tagged(b"S1")) as standby:
            east.connect("db-primary", primary)
            north.connect("db-standby", standby)
            lport = _multi_key(west, "priority", {"key": "db-primary"}, {"key": "db-standby"})
            async with routers(east, north, west) as rs:
                w = rs["west"]
                await wait_for(
                    lambda: reachable(w, "db-primary") and reachable(w, "db-standby"),
                    TIMEOUT,
                    "both keys served",
                )
                assert _listener_status(w)["keys_in_use"] == ["db-primary"]
                before = Counter([await exchange(lport, payload) for _n in range(10)])
                assert before == {b"P1": 10}

                await rs["east"].stop()  # the primary site goes away
                await wait_for(lambda: not reachable(w, "db-primary"), TIMEOUT, "primary gone")
                assert _listener_status(w)["keys_in_use"] == ["db-standby"]
                during = Counter([await exchange(lport, payload) for _n in range(10)])
                assert during == {b"S1": 10}

                back = Router(load(east.write()))  # the primary site returns
                await back.start()
                rs["east"] = back
                await wait_for(lambda: reachable(w, "db-primary"), TIMEOUT, "primary back")
                after = Counter([await exchange(lport, payload) for _n in range(10)])
                assert after == {b"P1": 10}
                st = _listener_status(w)
                assert st["keys_in_use"] == ["db-primary"]
                assert st["strategy"] == "priority"
                assert {k["key"]: k["flows"] for k in st["routing_keys"]} == {
                    "db-primary": 20,
                    "db-standby": 10,
                }

    run(main())


@pytest.mark.integration
def test_weighted_spreads_flows_over_sites(tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        east = Site.create(tmp_path, "east", accept=True)
        north = Site.create(tmp_path, "north", accept=True)
        west.link_to(east)
        west.link_to(north)
        payload = os.urandom(50_000)
        async with tcp_server(tagged(b"E1")) as e1, tcp_server(tagged(b"N1")) as n1:
            east.connect("api-east", e1)
            north.connect("api-north", n1)
            lport = _multi_key(
                west,
                "weighted",
                {"key": "api-east", "weight": 3},
                {"key": "api-north", "weight": 1},
            )
            async with routers(east, north, west) as rs:
                w = rs["west"]
                await wait_for(
                    lambda: reachable(w, "api-east") and reachable(w, "api-north"),
                    TIMEOUT,
                    "both keys served",
                )
                got = Counter([await exchange(lport, payload) for _n in range(40)])
                assert got == {b"E1": 30, b"N1": 10}
                st = _listener_status(w)
                assert st["keys_in_use"] == ["api-east", "api-north"]

    run(main())
