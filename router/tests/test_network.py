"""Tier 3: routers in-process on loopback with real TLS links."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from router_testkit import Ca, Site, echo_handler, http_get, run, tcp_server, wait_for

from skiff_router.config import load
from skiff_router.runtime import Router

pytestmark = pytest.mark.integration

TIMEOUT = 30


@contextlib.asynccontextmanager
async def routers(*sites: Site) -> AsyncIterator[dict[str, Router]]:
    started: dict[str, Router] = {}
    try:
        for s in sites:
            r = Router(load(s.write()))
            await r.start()
            started[s.router_id or s.name] = r
        yield started
    finally:
        for r in started.values():
            await r.stop()


def reachable(r: Router, key: str) -> bool:
    return r.status()["routing_keys"].get(key, {}).get("reachable", False)


def link_up(r: Router, name: str) -> bool:
    return any(lk["name"] == name and lk["state"] == "up" for lk in r.status()["links"])


async def echo_roundtrip(port: int, payload: bytes) -> bytes:
    """Send payload, half-close, read everything back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(payload), 256 * 1024):
            writer.write(view[i : i + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    chunks = []
    while data := await reader.read(1 << 20):
        chunks.append(data)
    await sender
    writer.close()
    return b"".join(chunks)


def two_sites(tmp_path: Path) -> tuple[Site, Site]:
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    return east, west


def test_two_router_flow_bytes_and_status(tmp_path: Path) -> None:
    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server() as echo_port:
            east.connect("backend", echo_port)
            lport = west.listen("backend")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "backend"), TIMEOUT, "key reachable")
                payload = os.urandom(5 * 1024 * 1024)
                got = await asyncio.wait_for(echo_roundtrip(lport, payload), TIMEOUT)
                assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
                await wait_for(lambda: rs["west"].status()["flows"]["open"] == 0, 10, "flow closed")
                await wait_for(lambda: rs["east"].status()["flows"]["open"] == 0, 10, "flow closed")

                code, body = await http_get(west.admin_url + "/healthz")
                assert (code, body) == (200, b"ok")
                code, body = await http_get(west.admin_url + "/v1/status")
                assert code == 200
                st = json.loads(body)
                assert st["site"] == "west"
                assert st["version"] == "0.1.0"
                cfg_path = west.dir / "router.json"
                assert st["config"] == {
                    "path": str(cfg_path.resolve()),
                    "sha256": hashlib.sha256(cfg_path.read_bytes()).hexdigest(),
                    "error": None,
                }
                assert st["links"] == [
                    {
                        "name": "east",
                        "direction": "outgoing",
                        "peer": "east",
                        "cost": 1,
                        "state": "up",
                        "endpoint": f"127.0.0.1:{east.link_port}",
                        "error": None,
                        "peer_router": "east",
                        "source": "config",
                        "draining": 0,
                        "renewed": False,
                    }
                ]
                assert st["routers"] == [
                    {
                        "id": "east",
                        "site": "east",
                        "reachable": True,
                        "cost": 1,
                        "next_hop": "east",
                        "mode": "interior",
                    },
                    {
                        "id": "west",
                        "site": "west",
                        "reachable": True,
                        "cost": 0,
                        "next_hop": None,
                        "mode": "interior",
                    },
                ]
                assert st["listeners"] == [
                    {
                        "name": "backend",
                        "routing_key": "backend",
                        "host": "127.0.0.1",
                        "port": lport,
                        "state": "listening",
                        "error": None,
                        "distribution": "balanced",
                        "renewed": False,
                        "source": "config",
                        "routing_keys": [{"key": "backend", "weight": 1, "flows": 1}],
                        "strategy": None,
                        "keys_in_use": ["backend"],
                    }
                ]
                assert st["connectors"] == []
                bk = st["routing_keys"]["backend"]
                assert list(st["routing_keys"]) == ["backend"]
                assert (bk["connectors"], bk["listeners"], bk["reachable"]) == (
                    ["east"],
                    ["west"],
                    True,
                )
                assert bk["bytes"] == {"out": len(payload), "back": len(payload)}
                assert st["flows"]["open"] == 0 and st["flows"]["total"] == 1
                est = rs["east"].status()
                (inc,) = est["links"]
                assert (
                    inc["direction"] == "incoming"
                    and inc["peer"] == "west"
                    and inc["state"] == "up"
                )
                assert est["connectors"] == [
                    {
                        "name": "backend",
                        "routing_key": "backend",
                        "host": "127.0.0.1",
                        "port": echo_port,
                        "flows": 0,
                        "down": False,
                        "error": None,
                        "source": "config",
                    }
                ]

    run(main())


def test_half_close_both_ways(tmp_path: Path) -> None:
    """The client half-closes first; then the server half-closes first."""

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(5)
        if first == b"srv-1":
            # Server closes its direction first, then keeps reading the client.
            writer.write(b"bye")
            writer.write_eof()
            rest = await reader.read()
            assert rest == b"more data"
        else:
            # Client closed its direction: we can still answer.
            rest = await reader.read()
            writer.write(b"got:" + first + rest)
            writer.write_eof()
        writer.close()

    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server(server) as port:
            east.connect("svc", port)
            lport = west.listen("svc")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "svc"), TIMEOUT, "key reachable")
                # 1: client half-closes, server answers after EOF.
                r, w = await asyncio.open_connection("127.0.0.1", lport)
                w.write(b"cli-1hello")
                w.write_eof()
                assert await asyncio.wait_for(r.read(), 10) == b"got:cli-1hello"
                w.close()
                # 2: server half-closes first; client keeps sending afterwards.
                r, w = await asyncio.open_connection("127.0.0.1", lport)
                w.write(b"srv-1")
                assert await asyncio.wait_for(r.read(), 10) == b"bye"  # EOF seen by client
                w.write(b"more data")
                w.write_eof()
                await w.drain()
                w.close()
                for name in ("west", "east"):
                    await wait_for(
                        lambda n=name: rs[n].status()["flows"]["open"] == 0, 10, "flows closed"
                    )

    run(main())


def test_three_router_chain(tmp_path: Path) -> None:
    """north -> west -> east: the flow crosses two links."""

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west", accept=True)
        north = Site.create(tmp_path, "north")
        west.link_to(east)
        north.link_to(west)
        async with tcp_server() as echo_port:
            east.connect("backend", echo_port)
            lport = north.listen("backend")
            async with routers(east, west, north) as rs:
                await wait_for(lambda: reachable(rs["north"], "backend"), TIMEOUT, "key reachable")
                st = rs["north"].status()
                routes = {r["id"]: r for r in st["routers"]}
                assert routes["east"] == {
                    "id": "east",
                    "site": "east",
                    "reachable": True,
                    "cost": 2,
                    "next_hop": "west",
                    "mode": "interior",
                }
                payload = os.urandom(1024 * 1024)
                got = await asyncio.wait_for(echo_roundtrip(lport, payload), TIMEOUT)
                assert got == payload
                assert rs["west"].status()["flows"]["total"] == 1  # it relayed the flow
                # Several flows at once over the same links.
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(echo_roundtrip(lport, os.urandom(100_000) + bytes([i])) for i in range(8))
                    ),
                    TIMEOUT,
                )
                assert all(len(x) == 100_001 for x in results)
                for name in ("north", "west", "east"):
                    await wait_for(
                        lambda n=name: rs[n].status()["flows"]["open"] == 0, 10, "flows closed"
                    )

    run(main())


def test_listener_without_connector_closes_promptly(tmp_path: Path) -> None:
    async def main() -> None:
        east, west = two_sites(tmp_path)
        lport = west.listen("nobody")
        async with routers(east, west) as rs:
            await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "link up")
            r, w = await asyncio.open_connection("127.0.0.1", lport)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            assert rs["west"].status()["routing_keys"]["nobody"]["reachable"] is False

    run(main())


def test_connector_refusing_closes_client(tmp_path: Path) -> None:
    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server() as dead_port:
            pass  # closed again: nothing listens on dead_port now
        east.connect("dead", dead_port)
        lport = west.listen("dead")
        async with routers(east, west) as rs:
            await wait_for(lambda: reachable(rs["west"], "dead"), TIMEOUT, "key reachable")
            r, w = await asyncio.open_connection("127.0.0.1", lport)
            w.write(b"hello?")
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()
            await wait_for(lambda: rs["west"].status()["flows"]["open"] == 0, 10, "flow reset")

    run(main())


def test_client_cert_from_other_ca_refused(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east, client_ca=Ca.create("mallory"))
        async with routers(east, west) as rs:
            await wait_for(
                lambda: rs["west"].status()["links"][0]["error"] is not None, TIMEOUT, "link error"
            )
            await asyncio.sleep(0.5)
            assert rs["west"].status()["links"][0]["state"] != "up"
            assert rs["east"].status()["links"] == []
            assert [r["id"] for r in rs["east"].status()["routers"]] == ["east"]

    run(main())


def test_peer_id_mismatch_keeps_link_down(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        west.links[0]["peer"] = "south"
        async with routers(east, west) as rs:
            await wait_for(
                lambda: "expected 'south'" in (rs["west"].status()["links"][0]["error"] or ""),
                TIMEOUT,
                "mismatch error",
            )
            assert rs["west"].status()["links"][0]["state"] != "up"

    run(main())


def test_token_for_another_site_cannot_announce_this_one(tmp_path: Path) -> None:
    """A client cert issued to 'north' must not let its holder join as 'west'."""

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        assert east.ca is not None
        cert, key = east.ca.issue("north", server=False)
        (west.dir / "links" / "east" / "tls.crt").write_bytes(cert)
        (west.dir / "links" / "east" / "tls.key").write_bytes(key)
        async with routers(east, west) as rs:
            await wait_for(
                lambda: rs["west"].status()["links"][0]["error"] is not None, TIMEOUT, "refused"
            )
            await asyncio.sleep(0.5)
            assert rs["west"].status()["links"][0]["state"] != "up"
            assert [r["id"] for r in rs["east"].status()["routers"]] == ["east"]

    run(main())


def test_reload_adds_listener_while_flow_continues(tmp_path: Path) -> None:
    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server() as echo_port:
            east.connect("one", echo_port)
            east.connect("two", echo_port)
            port_one = west.listen("one")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "one"), TIMEOUT, "key one")
                r, w = await asyncio.open_connection("127.0.0.1", port_one)
                w.write(b"before")
                assert await asyncio.wait_for(r.readexactly(6), 10) == b"before"
                old_sha = rs["west"].status()["config"]["sha256"]

                # Invalid config first: the old one stays in force.
                cfg_path = west.dir / "router.json"
                good = cfg_path.read_text()
                cfg_path.write_text('{"site": "west", "bogus": 1}')
                assert await rs["west"].reload() is False
                st = rs["west"].status()
                assert "bogus: unknown key" in st["config"]["error"]
                assert st["config"]["sha256"] == old_sha
                cfg_path.write_text(good)

                # A flow on key "one" keeps streaming while the reload happens.
                sent = bytearray()

                async def stream() -> None:
                    for i in range(40):
                        chunk = os.urandom(1000) + bytes([i])
                        sent.extend(chunk)
                        w.write(chunk)
                        await w.drain()
                        await asyncio.sleep(0.01)

                streamer = asyncio.create_task(stream())
                await asyncio.sleep(0.1)
                port_two = west.listen("two")
                west.write()
                assert await rs["west"].reload() is True
                await streamer
                assert await asyncio.wait_for(r.readexactly(len(sent)), 10) == bytes(sent)
                st = rs["west"].status()
                assert st["config"]["error"] is None and st["config"]["sha256"] != old_sha
                assert [x["name"] for x in st["listeners"]] == ["one", "two"]
                # The old flow kept its sockets.
                w.write(b"after")
                assert await asyncio.wait_for(r.readexactly(5), 10) == b"after"
                got = await asyncio.wait_for(echo_roundtrip(port_two, b"x" * 70000), 10)
                assert got == b"x" * 70000
                # Removing the link and adding it back under a new cost reconnects.
                w.write_eof()
                assert await asyncio.wait_for(r.read(), 10) == b""
                w.close()

    run(main())


def test_link_loss_and_reconnect(tmp_path: Path) -> None:
    """A router that goes away is routed around; it comes back without restarts."""

    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server() as echo_port:
            east.connect("backend", echo_port)
            lport = west.listen("backend")
            async with routers(west) as rs:
                r_east = Router(load(east.write()))
                await r_east.start()
                try:
                    await wait_for(lambda: reachable(rs["west"], "backend"), TIMEOUT, "reachable")
                finally:
                    await r_east.stop()
                await wait_for(lambda: not reachable(rs["west"], "backend"), 10, "unreachable")
                r_east = Router(load(east.dir / "router.json"))
                await r_east.start()
                try:
                    await wait_for(
                        lambda: reachable(rs["west"], "backend"), TIMEOUT, "reachable again"
                    )
                    assert await asyncio.wait_for(echo_roundtrip(lport, b"again"), 10) == b"again"
                finally:
                    await r_east.stop()

    run(main())


def test_slow_reader_does_not_stall_other_flows(tmp_path: Path) -> None:
    """A client that never reads is held by credit; another flow keeps moving."""

    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server(echo_handler) as echo_port:
            east.connect("svc", echo_port)
            lport = west.listen("svc")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "svc"), TIMEOUT, "reachable")
                # Flow 1 writes a lot and never reads: the echo comes back and fills
                # all buffers, then credit stops it.
                r1, w1 = await asyncio.open_connection("127.0.0.1", lport)
                blob = b"z" * (8 * 1024 * 1024)
                w1.write(blob)  # not drained on purpose
                await asyncio.sleep(1.0)
                # Flow 2 still works.
                payload = os.urandom(512 * 1024)
                assert await asyncio.wait_for(echo_roundtrip(lport, payload), TIMEOUT) == payload
                # Memory per flow stays bounded: queued bytes in the cores are at most
                # a window per direction.
                from skiff_router.flows import INITIAL_WINDOW

                for r in rs.values():
                    for flow in r.core.flows.by_id.values():
                        for end in flow.ends:
                            assert sum(map(len, end.queue)) <= INITIAL_WINDOW
                w1.transport.abort()
                del r1

    run(main())


def test_reload_removes_and_restores_link(tmp_path: Path) -> None:
    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server() as echo_port:
            east.connect("k", echo_port)
            lport = west.listen("k")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "k"), TIMEOUT, "reachable")
                links = west.links
                west.links = []
                west.write()
                assert await rs["west"].reload()
                assert rs["west"].status()["links"] == []
                await wait_for(lambda: not reachable(rs["west"], "k"), 10, "unreachable")
                await wait_for(lambda: rs["east"].status()["links"] == [], 10, "east saw link go")
                west.links = links
                west.links[0]["cost"] = 7
                west.write()
                assert await rs["west"].reload()
                await wait_for(lambda: reachable(rs["west"], "k"), TIMEOUT, "reachable again")
                assert rs["east"].status()["links"][0]["cost"] == 7
                assert await asyncio.wait_for(echo_roundtrip(lport, b"back"), 10) == b"back"

    run(main())


def test_server_reset_reaches_client(tmp_path: Path) -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        writer.transport.abort()  # RST

    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server(rude) as port:
            east.connect("k", port)
            lport = west.listen("k")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "k"), TIMEOUT, "reachable")
                r, w = await asyncio.open_connection("127.0.0.1", lport)
                w.write(b"abc")
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(r.read(), 10) == b""
                w.close()
                for name in ("west", "east"):
                    await wait_for(
                        lambda n=name: rs[n].status()["flows"]["open"] == 0, 10, "flows closed"
                    )

    run(main())


def test_status_reports_new_config_only_once_fully_applied(tmp_path: Path) -> None:
    """A caller polling for the new sha256 must also see the new listeners' bind results."""

    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with routers(east, west) as rs:
            router = rs["west"]
            old_sha = router.status()["config"]["sha256"]
            bind = router._bind_listener
            seen_mid_reload: list[dict] = []

            async def slow_bind(rt) -> None:
                # Sample the status while the reload is half done.
                seen_mid_reload.append(router.status())
                await asyncio.sleep(0.2)
                await bind(rt)

            router._bind_listener = slow_bind  # type: ignore[method-assign]
            # The admin port is taken, so this listener must end in error.
            west.listeners.append(
                {
                    "name": "busy",
                    "routing_key": "busy",
                    "host": "127.0.0.1",
                    "port": west.admin_port,
                }
            )
            west.write()
            assert await router.reload()
            assert seen_mid_reload and seen_mid_reload[0]["config"]["sha256"] == old_sha
            after = router.status()
            assert after["config"]["sha256"] != old_sha
            (busy,) = [x for x in after["listeners"] if x["name"] == "busy"]
            assert busy["state"] == "error"

    run(main())


def test_connector_by_host_name_is_looked_up_once_and_falls_back(tmp_path: Path) -> None:
    """A connector's host name is resolved once per RESOLVE_TTL, not per flow; of its
    addresses, the one that takes connections is tried first from then on."""

    async def main() -> None:
        east, west = two_sites(tmp_path)
        async with tcp_server() as echo_port:
            east.connectors.append(
                {"name": "k", "routing_key": "k", "host": "localhost", "port": echo_port}
            )
            lport = west.listen("k")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "k"), TIMEOUT, "reachable")
                assert await asyncio.wait_for(echo_roundtrip(lport, b"one"), 10) == b"one"
                c = rs["east"].connectors.by_name["k"]
                assert c.addresses == ("127.0.0.1",)
                # Two addresses, the first refusing (nothing listens on 127.0.0.2).
                c.addresses = ("127.0.0.2", "127.0.0.1")
                assert await asyncio.wait_for(echo_roundtrip(lport, b"two"), 10) == b"two"
                assert c.addresses == ("127.0.0.1", "127.0.0.2")
                assert rs["east"].status()["connectors"][0]["error"] is None

    run(main())


def test_link_access_is_starting_not_failed_while_a_reload_reopens_it(tmp_path: Path) -> None:
    """A status read between closing and reopening the link port (a reload of renewed
    TLS files) said "error" with no error, which failed a site.yml run."""

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        async with routers(east) as rs:
            r = rs["east"]
            assert r.status()["link_access"]["state"] == "listening"
            await r._stop_access(keep_links=True)  # what ReloadAccessTls does first
            assert r.status()["link_access"]["state"] == "starting"
            await r._start_access()
            assert r.status()["link_access"]["state"] == "listening"
            # A port someone else holds is an error, with the reason.
            await r._stop_access(keep_links=True)
            assert east.link_port is not None
            holder = await asyncio.start_server(lambda _r, _w: None, "0.0.0.0", east.link_port)
            try:
                await r._start_access()
                access = r.status()["link_access"]
                assert access["state"] == "error" and access["error"]
            finally:
                holder.close()

    run(main())
