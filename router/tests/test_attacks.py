"""Attacks by a peer that holds a valid link credential (issue 8), each against
live routers over mutual TLS: the peer must not speak for another router, and
what it sends is bounded. Every test checks the rest of the network keeps
carrying real bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rogue_peer import RoguePeer
from router_testkit import Site, http_get, run, tcp_server, wait_for
from test_network import TIMEOUT, echo_roundtrip, link_up, reachable, routers

import skiff_router.topology as topology_module
from skiff_router.codec import (
    FrameType,
    Lsa,
    Mcast,
    Open,
    encode_frame,
    encode_lsa,
    encode_mcast,
    encode_open,
)

pytestmark = pytest.mark.integration


def network(tmp_path: Path) -> tuple[Site, Site, int]:
    """west (serving 'svc') dials east (listening for it); the attacker dials east."""
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    return west, east, east.listen("svc")


async def carries_bytes(port: int) -> None:
    payload = os.urandom(200_000)
    got = await echo_roundtrip(port, payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def stays_up(rs: dict, seconds: float) -> None:
    """Bounded: for ``seconds``, west stays linked and 'svc' stays reachable at east."""
    for _poll in range(int(seconds / 0.1)):
        assert link_up(rs["west"], "east"), rs["west"].status()["links"]
        assert reachable(rs["east"], "svc"), rs["east"].status()["routers"]
        await asyncio.sleep(0.1)


def test_a_forged_sequence_number_cannot_isolate_another_router(tmp_path: Path) -> None:
    """The issue's attack: an LSA in west's name with sequence number 2**63-1. Stored
    and flooded, west outbid it with 2**63, past what the decoder accepts, and every
    neighbour closed west's link on each redial. Now it is dropped as ahead of the
    clock, by the first router it reaches."""

    async def main() -> None:
        west, east, port = network(tmp_path)
        async with tcp_server() as backend:
            west.connect("svc", backend)
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["east"], "svc"), TIMEOUT, "svc served")
                rogue = await RoguePeer.dial(east, "mallory", tmp_path / "mallory")
                try:
                    forged = Lsa("west", (1 << 63) - 1, (("mallory", 1),), frozenset(), frozenset())
                    await rogue.send(FrameType.LSA, encode_lsa(forged))
                    await stays_up(rs, 3.0)
                    await carries_bytes(port)
                    assert rs["east"].core.topology.refused_lsas >= 1
                    assert rs["east"].core.topology.db.lsas["west"].seq < (1 << 62)
                finally:
                    rogue.close()

    run(main())


def test_a_forged_multicast_sequence_number_cannot_silence_another_router(
    tmp_path: Path,
) -> None:
    """A message in west's name with the highest sequence number there is: recorded,
    it made every router drop west's messages as old ones, across west's restarts.
    Now it is dropped; one a little ahead of the clock is outbid by west itself."""

    async def main() -> None:
        west, east, _port = network(tmp_path)
        async with routers(east, west) as rs:
            await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "west linked")
            sub = rs["east"].subscribe("news")
            rogue = await RoguePeer.dial(east, "mallory", tmp_path / "mallory")
            try:
                ahead = (int(time.time() * 1000) + 30_000) * 1000
                for seq in ((1 << 64) - 1, ahead):
                    forged = Mcast("west", seq, "news", b"forged")
                    await rogue.send(FrameType.MCAST, encode_mcast(forged))
                    await asyncio.sleep(0.3)  # east took it in and flooded it to west
                    while not sub.queue.empty():  # the forged copy within the window
                        assert sub.queue.get_nowait().payload == b"forged"
                    sent = os.urandom(32)
                    rs["west"].publish("news", sent)
                    got = await asyncio.wait_for(sub.queue.get(), 10)
                    assert got is not None and got.origin == "west" and got.payload == sent
                assert rs["east"].core.multicast.refused == 1
            finally:
                rogue.close()
                rs["east"].unsubscribe(sub)

    run(main())


def test_a_flood_of_made_up_routers_is_bounded_and_costs_few_route_computations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of link-state updates for routers that do not exist, in one burst:
    the routers known stay capped, routes are computed once per batch of frames
    rather than once per update, and the real links keep carrying flows."""
    monkeypatch.setattr(topology_module, "MAX_ROUTERS", 100, raising=False)

    async def main() -> None:
        west, east, port = network(tmp_path)
        async with tcp_server() as backend:
            west.connect("svc", backend)
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["east"], "svc"), TIMEOUT, "svc served")
                topo = rs["east"].core.topology
                before = topo.db.computations
                rogue = await RoguePeer.dial(east, "mallory", tmp_path / "mallory")
                try:
                    burst = b"".join(
                        _lsa_frame(Lsa(f"p{i}", 1, (("mallory", 1),), frozenset(), frozenset()))
                        for i in range(400)
                    )
                    rogue.writer.write(burst)
                    await rogue.writer.drain()
                    await wait_for(lambda: topo.refused_lsas >= 300, TIMEOUT, "the flood taken in")
                    assert len(topo.db.lsas) <= 100
                    # The burst arrives in a handful of reads; one computation each
                    # (plus the attacker's own link coming up), not 400.
                    assert topo.db.computations - before <= 40, topo.db.computations - before
                    await stays_up(rs, 1.0)
                    await carries_bytes(port)
                finally:
                    rogue.close()

    run(main())


def _lsa_frame(lsa: Lsa) -> bytes:
    return encode_frame(FrameType.LSA, 0, encode_lsa(lsa))


def test_a_flood_of_opens_is_capped_below_the_file_descriptor_limit(tmp_path: Path) -> None:
    """The issue's attack: 1,100 OPEN frames for a connector against a router whose
    file-descriptor limit is 1,024. It used to spend a descriptor on each until it
    could accept, read and answer nothing. Now flows with a socket here stay below
    the limit (the rest are refused frame by frame), /healthz answers, another link
    keeps carrying flows and the log does not grow by a line per refusal."""

    def limit_fds() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    async def main() -> None:
        west, east, port = network(tmp_path)
        hold = asyncio.Event()

        async def holding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hold.wait()  # the attacker's flows stay open at the backend
            writer.close()

        async with tcp_server() as echo, tcp_server(holding) as sink:
            west.connect("svc", echo)
            east.connect("sink", sink)
            east.log_level = "info"  # what a site runs with
            cfg = east.write()
            log_file = tmp_path / "east.log"
            with log_file.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "skiff_router", "run", "--config", str(cfg)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=limit_fds,
                )
            rogue = None
            try:
                async with routers(west) as rs:
                    await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "west linked")
                    rogue = await RoguePeer.dial(east, "mallory", tmp_path / "mallory")
                    opens = b"".join(
                        encode_frame(
                            FrameType.OPEN, 2 * i + 1, encode_open(Open("sink", "east", "mallory"))
                        )
                        for i in range(1100)
                    )
                    rogue.writer.write(opens)
                    await rogue.writer.drain()
                    await asyncio.sleep(2.0)
                    assert proc.poll() is None
                    status, body = await http_get(f"{east.admin_url}/healthz")
                    assert (status, body) == (200, b"ok")
                    assert link_up(rs["west"], "east")
                    # west -> east: a flow the other way round, through east's listener.
                    await carries_bytes(port)
                    lines = log_file.read_bytes().count(b"\n")
                    assert lines < 200, lines
            finally:
                hold.set()
                if rogue is not None:
                    rogue.close()
                proc.terminate()
                proc.wait(15)

    run(main())


def test_finished_clients_of_a_server_that_never_closes_do_not_pile_up(tmp_path: Path) -> None:
    """The issue's case, scaled down: clients send a request and close; the server
    reads it and never closes. Each flow stayed half-closed for good (a flow and
    a CLOSE-WAIT socket per client). With ``flow_timeouts.half_closed`` they are
    closed, while a flow still in use in both directions stays."""

    async def main() -> None:
        west, east, port = network(tmp_path)
        for site in (west, east):
            site.extra = {"flow_timeouts": {"half_closed": 2}}

        async def never_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                pass
            await asyncio.sleep(3600)  # the server never answers the client's close

        async with tcp_server(never_closes) as backend:
            west.connect("svc", backend)
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["east"], "svc"), TIMEOUT, "svc served")
                for _client in range(300):
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"request")
                    writer.write_eof()
                    await writer.drain()
                    writer.close()
                await wait_for(
                    lambda: len(rs["east"].core.flows.by_id) == 300, TIMEOUT, "300 flows open"
                )
                await wait_for(
                    lambda: not rs["east"].core.flows.by_id and not rs["west"].core.flows.by_id,
                    TIMEOUT,
                    "half-closed flows closed on both routers",
                )
                assert rs["east"].core.flows.expired + rs["west"].core.flows.expired >= 300

    run(main())
