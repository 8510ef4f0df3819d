"""Make before break: a link whose credential (or cost, or endpoint) changes is
dialed anew while the old link keeps its flows; once the new link is up the old
one drains (no new flows, either way) and closes when its last flow ends.
Routers on loopback with real TLS and the accepting site's list of credentials."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from router_testkit import Site, free_port, run, tcp_server, wait_for
from test_link_clients import fingerprint
from test_network import TIMEOUT, echo_roundtrip, reachable, routers

from skiff_router.cli import format_status
from skiff_router.runtime import Router

pytestmark = pytest.mark.integration


def west_link(west: Router) -> dict[str, Any]:
    (lk,) = [x for x in west.status()["links"] if x["name"] == "east"]
    return lk


def incoming_states(east: Router) -> list[str]:
    return sorted(x["state"] for x in east.status()["links"] if x["direction"] == "incoming")


def new_credential(west: Site, east: Site) -> str:
    """East issues west a new client certificate (a re-issued token); west's link
    files now hold it. Returns its fingerprint."""
    assert east.ca is not None
    cert, key = east.ca.issue("west", server=False)
    ld = west.dir / "links" / "east"
    (ld / "tls.crt").write_bytes(cert)
    (ld / "tls.key").write_bytes(key)
    return fingerprint(ld / "tls.crt")


@dataclass
class Pair:
    """West linked to east (east serves ``backend``), with a flow open across."""

    east: Site
    west: Site
    e: Router
    w: Router
    port: int  # west's listener for backend
    flow: Stream


@contextlib.asynccontextmanager
async def linked(tmp_path: Path, listed: bool = False) -> AsyncIterator[Pair]:
    """``listed``: east accepts exactly west's current certificate (link_clients)."""
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    if listed:
        old_fp = fingerprint(west.dir / "links" / "east" / "tls.crt")
        east.extra["link_clients"] = [{"name": "west", "sha256": old_fp}]
    async with tcp_server() as echo_port:
        east.connect("backend", echo_port)
        port = west.listen("backend")
        async with routers(east, west) as rs:
            e, w = rs["east"], rs["west"]
            await wait_for(lambda: reachable(w, "backend"), TIMEOUT, "west linked")
            flow = await Stream.open(port)
            await flow.roundtrip()
            yield Pair(east, west, e, w, port, flow)


class Stream:
    """A long flow through west's listener: chunks written now and then, every
    byte checked when it comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = bytearray()

    @classmethod
    async def open(cls, port: int) -> Stream:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def roundtrip(self, n: int = 20_000) -> None:
        chunk = os.urandom(n)
        self.sent += chunk
        self.writer.write(chunk)
        await self.writer.drain()
        assert await asyncio.wait_for(self.reader.readexactly(n), 10) == chunk

    async def finish(self) -> None:
        self.writer.write_eof()
        assert await asyncio.wait_for(self.reader.read(), 10) == b""
        self.writer.close()


def test_rotated_credential_replaces_the_link_without_dropping_its_flow(tmp_path: Path) -> None:
    async def main() -> None:
        async with linked(tmp_path, listed=True) as p:
            east, west, e, w, lport, old_flow = p.east, p.west, p.e, p.w, p.port, p.flow
            # East accepts the new credential beside the old (a re-issued token's
            # day of overlap); west's link gets it and reloads.
            new_fp = new_credential(west, east)
            east.extra["link_clients"] += [{"name": "west", "sha256": new_fp}]
            east.write()
            assert await e.reload()
            assert await w.reload()
            await wait_for(lambda: incoming_states(e) == ["draining", "up"], TIMEOUT, "new link up")
            lk = west_link(w)
            assert (lk["state"], lk["draining"]) == ("up", 1)
            assert "up (+1 draining)" in format_status(w.status())
            # The key never stopped being reachable, and new flows take the new link.
            assert reachable(w, "backend")
            assert await echo_roundtrip(lport, b"n" * 300_000) == b"n" * 300_000
            by_state = {
                ("draining" if x.proto.draining else "up"): len(x.flows)
                for x in e.core.topology.links.values()
            }
            assert by_state == {"draining": 1, "up": 0}
            # The old flow still carries bytes both ways over the old link.
            await old_flow.roundtrip()
            await old_flow.roundtrip()
            assert incoming_states(e) == ["draining", "up"]
            await old_flow.finish()
            # Its last flow ended: the old link closes, the new one stays.
            await wait_for(lambda: incoming_states(e) == ["up"], TIMEOUT, "old link closed")
            await wait_for(lambda: west_link(w)["draining"] == 0, TIMEOUT, "west: drained")
            assert west_link(w)["state"] == "up"
            # The old credential is revoked now; nothing in use depended on it.
            steady = await Stream.open(lport)
            await steady.roundtrip()
            east.extra["link_clients"] = [{"name": "west", "sha256": new_fp}]
            east.write()
            assert await e.reload()
            await asyncio.sleep(0.5)
            await steady.roundtrip()
            await steady.finish()
            assert incoming_states(e) == ["up"]
            assert e.status()["link_access"]["refused_credentials"] == 0

    run(main())


def test_refused_new_credential_keeps_the_old_link_and_its_flows(tmp_path: Path) -> None:
    """Bad input never tears down what runs: a new credential the peer refuses leaves
    the old link carrying old and new flows, and the link's status says why."""

    async def main() -> None:
        async with linked(tmp_path, listed=True) as p:
            east, west, e, w, lport, flow = p.east, p.west, p.e, p.w, p.port, p.flow
            new_credential(west, east)  # never listed at east
            assert await w.reload()
            await wait_for(
                lambda: "credential refused" in (west_link(w)["error"] or ""),
                TIMEOUT,
                "the new link refused",
            )
            assert west_link(w)["draining"] == 1
            assert incoming_states(e) == ["up"]
            await flow.roundtrip()
            assert await echo_roundtrip(lport, b"m" * 100_000) == b"m" * 100_000
            await flow.finish()
            # No flow left, but the old link is the only way to east: it stays.
            await asyncio.sleep(1.5)
            assert incoming_states(e) == ["up"] and reachable(w, "backend")

    run(main())


def test_changed_cost_moves_new_flows_and_keeps_the_open_one(tmp_path: Path) -> None:
    """Not only credentials: any change of a link (here its cost) is make before
    break, and the peer learns the new cost from the new link."""

    async def main() -> None:
        async with linked(tmp_path) as p:
            west, e, w, lport, flow = p.west, p.e, p.w, p.port, p.flow
            west.links[0]["cost"] = 7
            west.write()
            assert await w.reload()
            await wait_for(lambda: e.core.topology.neighbours() == {"west": 7}, TIMEOUT, "cost 7")
            await flow.roundtrip()
            assert await echo_roundtrip(lport, b"c" * 100_000) == b"c" * 100_000
            await flow.finish()
            await wait_for(lambda: incoming_states(e) == ["up"], TIMEOUT, "old link closed")
            assert [x["cost"] for x in e.status()["links"]] == [7]

    run(main())


def test_a_moved_link_port_keeps_its_links_until_the_dialers_move(tmp_path: Path) -> None:
    """The accepting site moves its link port: the links up stay (the new port takes
    new links), and each dialer, once its config names the new port, replaces its
    link make before break. The open flow never notices."""

    async def main() -> None:
        async with linked(tmp_path) as p:
            east, west, e, w, lport, flow = p.east, p.west, p.e, p.w, p.port, p.flow
            east.link_port = free_port()
            east.write()
            assert await e.reload()
            await wait_for(
                lambda: e.status()["link_access"]["state"] == "listening", TIMEOUT, "moved"
            )
            assert incoming_states(e) == ["up"]  # the link up stayed
            await flow.roundtrip()
            west.links[0]["endpoints"] = [{"host": "127.0.0.1", "port": east.link_port}]
            west.write()
            assert await w.reload()
            await wait_for(lambda: incoming_states(e) == ["draining", "up"], TIMEOUT, "new link up")
            assert west_link(w)["endpoint"] == f"127.0.0.1:{east.link_port}"
            assert await echo_roundtrip(lport, b"p" * 100_000) == b"p" * 100_000
            await flow.roundtrip()
            await flow.finish()
            await wait_for(lambda: incoming_states(e) == ["up"], TIMEOUT, "old link closed")

    run(main())
