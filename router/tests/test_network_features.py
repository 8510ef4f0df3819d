"""Tier 3/4: balanced and closest routing, retries, multicast, edges, metrics,
readiness, reloads on file change, TLS rotation and a router killed mid-transfer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from router_testkit import Ca, Site, http_get, run, tcp_server, wait_for
from test_network import TIMEOUT, echo_roundtrip, link_up, reachable, routers

from skiff_router.config import load
from skiff_router.runtime import Router

pytestmark = pytest.mark.integration


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


async def ask(port: int) -> bytes:
    """Connect, half-close, return everything the server said."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write_eof()
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data


async def http(method: str, url: str, body: bytes = b"") -> tuple[int, bytes]:
    hostport, _sep, path = url[len("http://") :].partition("/")
    host, _sep, port = hostport.partition(":")
    r, w = await asyncio.open_connection(host, int(port))
    w.write(
        f"{method} /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _sep, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


@contextlib.asynccontextmanager
async def subscription(url: str) -> AsyncIterator[asyncio.StreamReader]:
    hostport, _sep, path = url[len("http://") :].partition("/")
    host, _sep, port = hostport.partition(":")
    r, w = await asyncio.open_connection(host, int(port))
    w.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
    await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    first = json.loads(await asyncio.wait_for(r.readline(), 5))
    assert "subscribed" in first
    try:
        yield r
    finally:
        w.close()


def test_balanced_spreads_over_sites_and_local_connectors(tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        east = Site.create(tmp_path, "east", accept=True)
        north = Site.create(tmp_path, "north", accept=True)
        west.link_to(east)
        west.link_to(north)
        async with (
            tcp_server(tagged(b"E1")) as e1,
            tcp_server(tagged(b"E2")) as e2,
            tcp_server(tagged(b"N1")) as n1,
        ):
            east.connect("k", e1, name="k1")
            east.connect("k", e2, name="k2")
            north.connect("k", n1)
            lport = west.listen("k")
            async with routers(east, north, west) as rs:
                await wait_for(
                    lambda: len(
                        rs["west"].status()["routing_keys"].get("k", {}).get("connectors", [])
                    )
                    == 2,
                    TIMEOUT,
                    "both sites serve k",
                )
                counts = Counter([(await ask(lport))[:2] for _round in range(60)])
                assert counts[b"E1"] + counts[b"E2"] >= 20 and counts[b"N1"] >= 20, counts
                assert counts[b"E1"] >= 8 and counts[b"E2"] >= 8, counts

    run(main())


def test_closest_and_refused_connector_retried_elsewhere(tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        east = Site.create(tmp_path, "east", accept=True)
        north = Site.create(tmp_path, "north", accept=True)
        west.link_to(east, cost=1)
        west.link_to(north, cost=5)
        async with tcp_server() as dead:
            pass  # nothing listens there any more
        async with tcp_server(tagged(b"N1")) as n1:
            east.connect("k", dead)
            north.connect("k", n1)
            lport = west.listen("k")
            west.listeners[0]["distribution"] = "closest"
            async with routers(east, north, west) as rs:
                await wait_for(
                    lambda: len(
                        rs["west"].status()["routing_keys"].get("k", {}).get("connectors", [])
                    )
                    == 2,
                    TIMEOUT,
                    "both sites serve k",
                )
                # east is closest but refuses: the client is served by north anyway.
                for _round in range(5):
                    assert (await ask(lport)).startswith(b"N1")
                st = rs["west"].status()
                assert st["flows"]["retried"] >= 1
                assert st["listeners"][0]["distribution"] == "closest"
                east_conn = rs["east"].status()["connectors"][0]
                assert east_conn["error"] is not None

    run(main())


def test_multicast_exactly_once_over_a_cycle(tmp_path: Path) -> None:
    async def main() -> None:
        a = Site.create(tmp_path, "a", accept=True)
        b = Site.create(tmp_path, "b", accept=True)
        c = Site.create(tmp_path, "c", accept=True)
        b.link_to(a)
        c.link_to(b)
        a.link_to(c)
        async with routers(a, b, c) as rs:
            for s in ("a", "b", "c"):
                await wait_for(
                    lambda s=s: len(rs[s].core.topology.db.routes) == 3, TIMEOUT, "full mesh routes"
                )
            n = 20
            async with (
                subscription(a.admin_url + "/v1/multicast/news") as sa,
                subscription(c.admin_url + "/v1/multicast/news") as sc1,
                subscription(c.admin_url + "/v1/multicast/news") as sc2,
                subscription(c.admin_url + "/v1/multicast/other") as so,
            ):
                for i in range(n):
                    for site in (a, b):
                        code, body = await http(
                            "POST",
                            site.admin_url + "/v1/multicast/news",
                            f"{site.name}{i}".encode(),
                        )
                        assert code == 200 and json.loads(body)["address"] == "news"
                for sub in (sa, sc1, sc2):
                    got = [
                        json.loads(await asyncio.wait_for(sub.readline(), 10))
                        for _round in range(2 * n)
                    ]
                    for origin in ("a", "b"):
                        mine = [
                            base64.b64decode(m["payload"]) for m in got if m["origin"] == origin
                        ]
                        assert mine == [f"{origin}{i}".encode() for i in range(n)]
                    # Nothing more (no duplicate) arrives.
                    with contextlib.suppress(TimeoutError):
                        extra = await asyncio.wait_for(sub.readline(), 0.3)
                        assert extra == b"", extra
                # Another address saw none of it; router events flow on their own address.
                with contextlib.suppress(TimeoutError):
                    assert await asyncio.wait_for(so.readline(), 0.2) == b""
            code, body = await http("POST", a.admin_url + "/v1/multicast/bad%20addr", b"x")
            assert code == 400

    run(main())


def test_edge_reached_via_interiors_and_survives_losing_one(tmp_path: Path) -> None:
    async def main() -> None:
        i1 = Site.create(tmp_path, "i1", accept=True)
        i2 = Site.create(tmp_path, "i2", accept=True)
        o = Site.create(tmp_path, "o")
        e = Site.create(tmp_path, "e")
        o.link_to(i1)
        o.link_to(i2)
        e.link_to(i1)
        e.link_to(i2)
        async with tcp_server() as echo:
            e.connect("k", echo)
            lport = o.listen("k")
            e_lport = e.listen("back")
            o.connect("back", echo)
            cfg = e.config()
            cfg["mode"] = "edge"
            (e.dir / "router.json").write_text(json.dumps(cfg))
            async with routers(i1, i2, o) as rs:
                r_e = Router(load(e.dir / "router.json"))
                await r_e.start()
                try:
                    await wait_for(lambda: reachable(rs["o"], "k"), TIMEOUT, "edge key reachable")
                    await wait_for(lambda: reachable(r_e, "back"), TIMEOUT, "edge sees o's key")
                    st = rs["o"].status()
                    assert {r["id"]: r["mode"] for r in st["routers"]}["e"] == "edge"
                    assert r_e.status()["mode"] == "edge"
                    assert await echo_roundtrip(lport, b"to edge") == b"to edge"
                    assert await echo_roundtrip(e_lport, b"from edge") == b"from edge"
                    # Lose one interior: the edge stays reachable through the other.
                    await rs["i1"].stop()
                    del rs["i1"]
                    await wait_for(
                        lambda: "i1" not in rs["o"].core.topology.db.routes, TIMEOUT, "i1 gone"
                    )
                    assert reachable(rs["o"], "k")
                    assert await echo_roundtrip(lport, b"still") == b"still"
                    assert await echo_roundtrip(e_lport, b"back too") == b"back too"
                finally:
                    await r_e.stop()

    run(main())


def test_metrics_readyz_flows_endpoints(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        async with tcp_server() as echo:
            east.connect("backend", echo)
            lport = west.listen("backend")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "backend"), TIMEOUT, "reachable")
                assert await echo_roundtrip(lport, b"x" * 1000) == b"x" * 1000
                code, body = await http_get(west.admin_url + "/readyz")
                assert (code, body) == (200, b"ready\n")
                code, body = await http_get(west.admin_url + "/metrics")
                text = body.decode()
                assert code == 200
                me = 'router="west",site="west"'
                assert f"skiff_flows_total{{{me}}} 1.0" in text
                assert f"skiff_flows_open{{{me}}} 0.0" in text
                bytes_out = (
                    'skiff_bytes_total{direction="out",router="west",routing_key="backend",'
                    'site="west"} 1000.0'
                )
                assert bytes_out in text
                assert re.search(r'skiff_link_up\{[^}]*link="east"[^}]*\} 1\.0', text)
                assert re.search(r'skiff_route_computations_total\{[^}]*site="west"\} [1-9]', text)
                # Per-flow byte counters while a flow is open.
                r, w = await asyncio.open_connection("127.0.0.1", lport)
                w.write(b"12345")
                assert await r.readexactly(5) == b"12345"
                code, body = await http_get(west.admin_url + "/v1/flows")
                (flow,) = json.loads(body)
                assert flow["routing_key"] == "backend" and flow["dest"] == "east"
                assert flow["bytes_out"] == 5 and flow["bytes_back"] == 5
                w.close()
                # A listener that cannot bind makes the router not ready.
                west.listeners.append(
                    {
                        "name": "busy",
                        "routing_key": "x",
                        "host": "127.0.0.1",
                        "port": east.link_port,
                    }
                )
                west.write()
                assert await rs["west"].reload()
                code, body = await http_get(west.admin_url + "/readyz")
                assert code == 503 and b"listener busy" in body

    run(main())


def test_config_file_change_is_picked_up_without_signal(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        async with tcp_server() as echo:
            east.connect("one", echo)
            east.connect("two", echo)
            p1 = west.listen("one")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "one"), TIMEOUT, "reachable")
                r, w = await asyncio.open_connection("127.0.0.1", p1)
                w.write(b"a")
                assert await r.readexactly(1) == b"a"
                p2 = west.listen("two")
                west.write()  # no SIGHUP, no reload() call
                await wait_for(
                    lambda: [x["name"] for x in rs["west"].status()["listeners"]] == ["one", "two"],
                    10,
                    "reload on file change",
                )
                assert await echo_roundtrip(p2, b"two") == b"two"
                w.write(b"b")  # the unrelated flow is intact
                assert await r.readexactly(1) == b"b"
                w.close()

    run(main())


def test_tls_files_changed_are_used_after_reload(tmp_path: Path) -> None:
    """Rotate east's CA and server cert and west's link material: after a reload
    both sides use the new files; the old link stays up until then."""

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        async with routers(east, west) as rs:
            await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "link up")
            new_ca = Ca.create("east2")
            cert, key = new_ca.issue("east router", server=True)
            (east.dir / "ca" / "ca.crt").write_bytes(new_ca.pem)
            (east.dir / "tls" / "server.crt").write_bytes(cert)
            (east.dir / "tls" / "server.key").write_bytes(key)
            ccert, ckey = new_ca.issue("west", server=False)
            ld = west.dir / "links" / "east"
            (ld / "ca.crt").write_bytes(new_ca.pem)
            (ld / "tls.crt").write_bytes(ccert)
            (ld / "tls.key").write_bytes(ckey)
            await asyncio.sleep(0.2)
            assert link_up(rs["west"], "east")  # untouched until a reload
            assert await rs["east"].reload()
            assert link_up(rs["west"], "east")  # east's incoming link survived its reload
            assert await rs["west"].reload()
            # The link was redialed with the new material and accepted with the new CA.
            await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "link up again")
            assert rs["west"].status()["links"][0]["error"] is None

    run(main())


def test_router_killed_mid_transfer(tmp_path: Path) -> None:
    """west reaches key k through b1 -> e1 and b2 -> e2. b2 is a real process and is
    SIGKILLed while flows run: flows through b1 finish byte-exact, new flows work."""

    async def paced(port: int, size: int) -> bytes:
        payload = os.urandom(size)
        r, w = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            for i in range(0, size, 32768):
                w.write(payload[i : i + 32768])
                await w.drain()
                await asyncio.sleep(0.02)
            w.write_eof()

        sender = asyncio.create_task(send())
        chunks = []
        try:
            while data := await r.read(1 << 20):
                chunks.append(data)
            await sender
        except (OSError, RuntimeError):
            # uvloop before 0.18 raises RuntimeError for a write to a reset socket.
            sender.cancel()
            return b"failed"
        finally:
            w.close()
        got = b"".join(chunks)
        return b"ok" if got == payload else b"corrupt" if len(got) == size else b"short"

    async def main() -> None:
        e1 = Site.create(tmp_path, "e1", accept=True)
        e2 = Site.create(tmp_path, "e2", accept=True)
        b1 = Site.create(tmp_path, "b1", accept=True)
        b2 = Site.create(tmp_path, "b2", accept=True)
        west = Site.create(tmp_path, "west")
        b1.link_to(e1)
        b2.link_to(e2)
        west.link_to(b1)
        west.link_to(b2)
        b2.log_level = "info"
        async with tcp_server() as echo1, tcp_server() as echo2:
            e1.connect("k", echo1)
            e2.connect("k", echo2)
            lport = west.listen("k")
            cfg = b2.write()
            with (tmp_path / "b2.log").open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "skiff_router", "run", "--config", str(cfg)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                async with routers(e1, e2, b1, west) as rs:
                    wr = rs["west"]
                    await wait_for(
                        lambda: wr.status()["routing_keys"].get("k", {}).get("connectors")
                        == ["e1", "e2"],
                        TIMEOUT,
                        "both paths",
                    )
                    tasks = [asyncio.create_task(paced(lport, 1_500_000)) for _unused in range(6)]
                    await wait_for(lambda: len(wr.core.flows.by_id) == 6, 10, "flows open")
                    dests = Counter(f.dest for f in wr.core.flows.by_id.values())
                    assert dests["e1"] >= 1 and dests["e2"] >= 1, dests
                    await asyncio.sleep(0.3)
                    proc.send_signal(signal.SIGKILL)
                    results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
                    assert results.count(b"ok") >= dests["e1"], results
                    assert b"corrupt" not in results
                    # New flows take the surviving path.
                    await wait_for(lambda: "b2" not in wr.core.topology.db.routes, 10, "b2 gone")
                    for _unused in range(5):
                        assert await echo_roundtrip(lport, b"after") == b"after"
                    assert rs["b1"].status()["flows"]["total"] >= dests["e1"] + 5
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)

    run(main())
