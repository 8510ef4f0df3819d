"""Tier 3: router identity (several routers of one site) and the overlay file,
with real routers over mutual TLS on loopback (docs/design.md, "Kubernetes sites")."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from router_testkit import Site, free_port, http_get, run, tcp_server, wait_for
from test_network import TIMEOUT, echo_roundtrip, link_up, reachable, routers

pytestmark = pytest.mark.integration


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def roundtrip_ok(port: int, size: int = 300_000) -> None:
    payload = os.urandom(size)
    got = await asyncio.wait_for(echo_roundtrip(port, payload), TIMEOUT)
    assert sha(got) == sha(payload)


def test_two_routers_of_one_site(tmp_path: Path) -> None:
    """east.a and east.b share site east (and its CA); each is a router of its own,
    they are linked to each other, and west links to both."""

    async def main() -> None:
        east_a = Site.create(tmp_path, "east", router_id="east.a", accept=True)
        east_b = Site.create(tmp_path, "east", router_id="east.b", ca=east_a.ca)
        west = Site.create(tmp_path, "west")
        west.link_to(east_a)
        west.link_to(east_b)
        # The replica dials its sibling with a client certificate naming site east.
        east_b.link_to(east_a)
        async with tcp_server() as echo:
            east_b.connect("k", echo)
            west_port = west.listen("k")
            a_port = east_a.listen("k")
            async with routers(east_a, east_b, west) as rs:
                ra = rs["east.a"]
                await wait_for(lambda: reachable(rs["west"], "k"), TIMEOUT, "k from west")
                await wait_for(lambda: reachable(ra, "k"), TIMEOUT, "k from east.a")
                await wait_for(
                    lambda: link_up(rs["west"], "east.a") and link_up(rs["west"], "east.b"),
                    TIMEOUT,
                    "both links of west",
                )
                st = rs["west"].status()
                assert {r["id"]: r["site"] for r in st["routers"]} == {
                    "east.a": "east",
                    "east.b": "east",
                    "west": "west",
                }
                assert st["routing_keys"]["k"]["connectors"] == ["east.b"]
                # Outgoing links: the far *site* is the link's peer, its router id aside.
                peers = {lk["name"]: (lk["peer"], lk["peer_router"]) for lk in st["links"]}
                assert peers == {"east.a": ("east", "east.a"), "east.b": ("east", "east.b")}
                sa = ra.status()
                assert (sa["site"], sa["router_id"]) == ("east", "east.a")
                incoming = {
                    lk["peer_router"]: lk["peer"]
                    for lk in sa["links"]
                    if lk["direction"] == "incoming"
                }
                assert incoming == {"east.b": "east", "west": "west"}
                await roundtrip_ok(west_port)
                # east.a's own listener reaches its sibling's connector over their link.
                await roundtrip_ok(a_port)
                code, body = await http_get(east_a.admin_url + "/v1/status")
                assert code == 200 and json.loads(body)["router_id"] == "east.a"

    run(main())


def test_a_router_cannot_join_as_another_site(tmp_path: Path) -> None:
    """The acceptor binds a link to the site its client certificate names: a router of
    another site holding west's credential is refused, whatever router id it picks."""

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        mallory = Site.create(tmp_path, "mallory")
        mallory.link_to(east)
        assert east.ca is not None
        cert, key = east.ca.issue("west", server=False)  # west's token, in mallory's hands
        (mallory.dir / "links" / "east" / "tls.crt").write_bytes(cert)
        (mallory.dir / "links" / "east" / "tls.key").write_bytes(key)
        async with routers(east, mallory) as rs:
            await wait_for(
                lambda: rs["mallory"].status()["links"][0]["error"] is not None,
                TIMEOUT,
                "refused",
            )
            await asyncio.sleep(0.5)
            assert rs["mallory"].status()["links"][0]["state"] != "up"
            assert "unexpected site" in (rs["mallory"].status()["links"][0]["error"] or "")
            assert [r["id"] for r in rs["east"].status()["routers"]] == ["east"]

    run(main())


def write_atomically(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)


def listener(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "routing_key": name, "host": "127.0.0.1", "port": port}


def test_overlay_is_merged_watched_and_kept_when_bad(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        north = Site.create(tmp_path, "north", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        overlay = west.dir / "run" / "overlay.json"  # missing at start
        overlay.parent.mkdir()
        west.overlay = str(overlay)
        base_port = west.listen("base")
        async with tcp_server() as echo:
            east.connect("base", echo)
            east.connect("svc", echo)
            north.connect("far", echo)
            async with routers(east, north, west) as rs:
                r = rs["west"]
                await wait_for(lambda: reachable(r, "base"), TIMEOUT, "base reachable")
                st = r.status()
                cfg_sha = st["config"]["sha256"]
                assert st["overlay"] == {
                    "path": str(overlay),
                    "sha256": None,
                    "error": None,
                    "listeners": 0,
                    "connectors": 0,
                    "links": 0,
                }
                assert st["ready"]

                # An overlay listener comes in force without a signal.
                svc_port = free_port()
                doc = {"listeners": [listener("svc", svc_port)]}
                write_atomically(overlay, doc)
                await wait_for(
                    lambda: r.status()["overlay"]["listeners"] == 1, 10, "overlay in force"
                )
                st = r.status()
                assert st["overlay"]["sha256"] == sha(overlay.read_bytes())
                assert st["config"]["sha256"] == cfg_sha
                svc = next(x for x in st["listeners"] if x["name"] == "svc")
                assert (svc["source"], svc["state"]) == ("overlay", "listening")
                await roundtrip_ok(svc_port)
                good_sha = st["overlay"]["sha256"]

                # A flow through the overlay listener outlives later overlay changes.
                rd, wr = await asyncio.open_connection("127.0.0.1", svc_port)
                wr.write(b"ping")
                assert await asyncio.wait_for(rd.readexactly(4), 10) == b"ping"

                # A clash with the config: error, the last good overlay stays in force.
                write_atomically(overlay, {"listeners": [listener("base", free_port())]})
                await wait_for(lambda: r.status()["overlay"]["error"], 10, "clash reported")
                st = r.status()
                assert (
                    "listeners[0].name: 'base' is a listener of the config"
                    in (st["overlay"]["error"])
                )
                assert st["overlay"]["sha256"] == good_sha
                assert st["config"] == {
                    "path": st["config"]["path"],
                    "sha256": cfg_sha,
                    "error": None,
                }
                assert st["ready"]
                await roundtrip_ok(svc_port)

                # Not JSON: the same.
                write_atomically(overlay, "{nope")
                await wait_for(
                    lambda: "invalid JSON" in (r.status()["overlay"]["error"] or ""),
                    10,
                    "invalid overlay reported",
                )
                await roundtrip_ok(svc_port)

                # A listener that cannot bind and a link: readiness is the config's alone.
                north_link = Site.create(tmp_path / "scratch", "west")
                north_link.link_to(north)
                (link,) = north_link.links
                for f in ("ca", "cert", "key"):
                    link[f] = str(north_link.dir / link[f])
                doc = {
                    "listeners": [listener("svc", svc_port), listener("far", west.admin_port)],
                    "links": [link],
                }
                write_atomically(overlay, doc)
                await wait_for(lambda: reachable(r, "far"), TIMEOUT, "overlay link up")
                st = r.status()
                assert st["overlay"]["error"] is None and st["overlay"]["links"] == 1
                (lk,) = [x for x in st["links"] if x["name"] == "north"]
                assert (lk["source"], lk["state"]) == ("overlay", "up")
                far = next(x for x in st["listeners"] if x["name"] == "far")
                assert far["state"] == "error"
                assert st["ready"] and (await http_get(west.admin_url + "/readyz"))[0] == 200
                assert st["config"]["sha256"] == cfg_sha

                # The config gains an entry the overlay has: the config wins, the
                # overlay's clashing entry is left out and reported.
                west.listeners.append(listener("svc", free_port()))
                west.write()
                await wait_for(
                    lambda: r.status()["config"]["sha256"] != cfg_sha, 10, "config reloaded"
                )
                st = r.status()
                svc = next(x for x in st["listeners"] if x["name"] == "svc")
                assert svc["source"] == "config" and svc["port"] != svc_port
                assert "'svc' is a listener of the config" in st["overlay"]["error"]
                with contextlib.suppress(ConnectionError):
                    # The overlay's old port is closed (the flow on it stays).
                    _unused, w2 = await asyncio.open_connection("127.0.0.1", svc_port)
                    w2.close()
                    raise AssertionError("overlay listener still bound")
                west.listeners.pop()
                west.write()
                await wait_for(
                    lambda: r.status()["config"]["sha256"] == cfg_sha
                    and r.status()["overlay"]["error"] is None,
                    10,
                    "config back, overlay whole again",
                )
                await roundtrip_ok(svc_port)

                # The flow opened before all this is intact.
                wr.write(b"pong")
                assert await asyncio.wait_for(rd.readexactly(4), 10) == b"pong"
                wr.close()

                # A removed file is an empty overlay.
                overlay.unlink()
                await wait_for(
                    lambda: r.status()["overlay"]["sha256"] is None, 10, "overlay emptied"
                )
                st = r.status()
                assert [x["name"] for x in st["listeners"]] == ["base"]
                assert [x["name"] for x in st["links"]] == ["east"]
                await wait_for(lambda: not reachable(r, "far"), TIMEOUT, "far gone")
                await roundtrip_ok(base_port)

    run(main())


def test_overlay_connectors_at_the_serving_site(tmp_path: Path) -> None:
    """An agent's connectors (``<name>@<pod>``) in east's overlay serve west's listener."""

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        overlay = east.dir / "overlay.json"
        east.overlay = "overlay.json"  # relative to the config's directory
        port = west.listen("api")
        async with tcp_server() as echo, routers(east, west) as rs:
            assert rs["east"].status()["overlay"]["path"] == str(overlay)
            await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "link up")
            assert not reachable(rs["west"], "api")
            c = {"routing_key": "api", "host": "127.0.0.1", "port": echo}
            write_atomically(overlay, {"connectors": [dict(c, name="api@pod-1")]})
            await wait_for(lambda: reachable(rs["west"], "api"), TIMEOUT, "api reachable")
            (conn,) = rs["east"].status()["connectors"]
            assert (conn["name"], conn["source"]) == ("api@pod-1", "overlay")
            await roundtrip_ok(port)

    run(main())


def test_a_replica_gone_mid_transfer_leaves_new_flows_to_the_other(tmp_path: Path) -> None:
    """HA at router level (skiff_router_replicas: 2): two routers of site east serve
    the same key; one stops while flows through the site are open; new flows from
    west are all carried by the other."""

    async def main() -> None:
        east_a = Site.create(tmp_path, "east", router_id="east.a", accept=True)
        east_b = Site.create(tmp_path, "east", router_id="east.b", ca=east_a.ca)
        west = Site.create(tmp_path, "west")
        west.link_to(east_a)
        west.link_to(east_b)
        east_b.link_to(east_a)
        async with tcp_server() as echo:
            east_a.connect("k", echo)
            east_b.connect("k", echo)
            west_port = west.listen("k")
            async with routers(east_a, east_b, west) as rs:
                rw = rs["west"]
                await wait_for(
                    lambda: sorted(rw.status()["routing_keys"].get("k", {}).get("connectors", []))
                    == ["east.a", "east.b"],
                    TIMEOUT,
                    "k served by both routers of east",
                )
                # Flows in the middle of a transfer, spread over both routers.
                held = []
                for _flow in range(4):
                    reader, writer = await asyncio.open_connection("127.0.0.1", west_port)
                    writer.write(os.urandom(64_000))
                    await writer.drain()
                    held.append((reader, writer))
                await wait_for(
                    lambda: rw.status()["flows"]["open"] == 4, TIMEOUT, "the held flows open"
                )
                # Each router of east carries some of them (ties go round-robin).
                assert rs["east.a"].status()["flows"]["open"] > 0
                assert rs["east.b"].status()["flows"]["open"] > 0
                gone = rs.pop("east.a")  # popped: the context must not stop it twice
                await gone.stop()
                await wait_for(
                    lambda: rw.status()["routing_keys"]["k"]["connectors"] == ["east.b"],
                    TIMEOUT,
                    "west routes k to east.b only",
                )
                for _flow in range(8):
                    await roundtrip_ok(west_port, 200_000)
                for _reader, writer in held:
                    writer.close()

    run(main())
