"""Tier 4: a router with worker processes (workers.py), as real processes on
loopback: every worker carries flows, the admin port answers for the whole
router, and a worker killed mid-transfer ends only its own flows while the
others keep carrying theirs and the killed one comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from router_testkit import Site, echo_handler, http_get, run, tcp_server, wait_for
from test_cli import process
from test_event_loops import poll_status, status
from test_network import echo_roundtrip

pytestmark = pytest.mark.integration

WORKERS = 2
LONG_FLOWS = 24  # open at once across the workers; bounded
CHUNK = 256 * 1024


def _cmd(site: Site) -> list[str]:
    return [sys.executable, "-m", "skiff_router", "run", "--config", str(site.write())]


def _all_up(st: dict) -> bool:
    """Every worker up and ready, and linked to the others."""
    ws = st.get("workers") or []
    return (
        len(ws) == WORKERS
        and all(w["state"] == "up" and w["ready"] for w in ws)
        and all(lk["state"] == "up" for w in ws for lk in w["worker_links"])
        and len(ws[0]["worker_links"]) == WORKERS - 1
    )


def _processes_with(text: str) -> list[int]:
    """Pids whose command line mentions ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


async def flows_on_every_worker(site: Site, port: int) -> dict:
    """Echo flows through ``port`` until every worker of ``site`` carried some (the
    kernel spreads new connections over the shared port; bounded). Its last status."""
    for i in range(200):
        payload = os.urandom(1000) + i.to_bytes(4, "big")
        assert await asyncio.wait_for(echo_roundtrip(port, payload), 20) == payload
        st = await status(site)
        if i >= 8 and all(w["flows_total"] > 0 for w in st["workers"]):
            break
    assert all(w["flows_total"] > 0 for w in st["workers"]), st["workers"]
    return st


class LongFlow:
    """A client that sends a chunk, reads its echo, waits, then finishes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.go_on = asyncio.Event()
        self.first = os.urandom(CHUNK)
        self.second = os.urandom(CHUNK)
        self.started = asyncio.Event()

    async def run(self) -> bool:
        """True when every byte came back, False when the flow was cut."""
        try:
            r, w = await asyncio.open_connection("127.0.0.1", self.port)
            w.write(self.first)
            await w.drain()
            got = await r.readexactly(CHUNK)
            assert got == self.first
            self.started.set()
            await self.go_on.wait()
            w.write(self.second)
            w.write_eof()
            await w.drain()
            rest = await r.read()
            w.close()
            return rest == self.second
        except (OSError, asyncio.IncompleteReadError):
            self.started.set()
            return False


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.timeout(180)
def test_workers_share_ports_carry_flows_each_and_survive_a_killed_worker(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIFF_ROUTER_LOOP", loop)  # the workers inherit it
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    for site in (east, west):
        site.log_level = "info"
        site.extra["workers"] = WORKERS

    async def main() -> None:
        async with tcp_server(echo_handler) as echo:
            east.connect("echo", echo)
            port = west.listen("echo")
            with (
                process(_cmd(east), tmp_path / "east.log") as pe,
                process(_cmd(west), tmp_path / "west.log") as pw,
            ):
                for site in (east, west):
                    await poll_status(site, _all_up, f"{site.name}: every worker up")
                await poll_status(
                    west, lambda s: s["routing_keys"].get("echo", {}).get("reachable"), "key"
                )
                st = await status(west)
                assert st["event_loop"] == loop
                ids = [w["router_id"] for w in st["workers"]]
                assert ids == ["west", "west/w1"]
                # The workers are linked to each other over their private sockets.
                assert st["workers"][1]["worker_links"] == [
                    {"worker": 0, "direction": "outgoing", "state": "up"}
                ]

                # Every worker dials the peer: the peer sees a link from each.
                def peers(st: dict) -> set[str]:
                    return {lk["peer_router"] for lk in st["links"] if lk["state"] == "up"}

                await poll_status(east, lambda s: {"west", "west/w1"} <= peers(s), "both links")
                # ... and shows one router for them, as does the network view.
                est = await status(east)
                assert [r["id"] for r in est["routers"]] == ["east", "west"]
                code, body = await http_get(east.admin_url + "/v1/network")
                network = json.loads(body)
                assert [(r["id"], r["workers"]) for r in network["routers"]] == [
                    ("east", 2),
                    ("west", 2),
                ]

                out = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "skiff_router", "status", "--admin", west.admin_url],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert out.returncode == 0, out.stderr
                assert "workers:" in out.stdout and "west/w1" in out.stdout, out.stdout

                # The workers' private link socket takes no other process, even one of
                # the same user on the same host: it would be a link without TLS.
                stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                stranger.connect(f"\0skiff-{pw.pid}-link-0".encode())
                stranger.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert stranger.recv(100) == b""  # closed without a HELLO
                stranger.close()

                # A flow on each worker: the kernel spreads new connections over the
                # shared listener port (bounded number of tries).
                st = await flows_on_every_worker(west, port)
                assert st["flows"]["total"] == sum(w["flows_total"] for w in st["workers"])

                # Long flows over both workers, then worker 1 is killed mid-transfer.
                flows = [LongFlow(port) for _unused in range(LONG_FLOWS)]
                tasks = [asyncio.create_task(f.run()) for f in flows]
                await asyncio.wait_for(asyncio.gather(*(f.started.wait() for f in flows)), 30)
                code, body = await http_get(west.admin_url + "/v1/flows")
                assert code == 200
                open_flows = json.loads(body)
                on = {k: sum(1 for f in open_flows if f["worker"] == k) for k in range(WORKERS)}
                assert sum(on.values()) == LONG_FLOWS, open_flows
                assert on[0] and on[1], on  # both workers carry some (24 flows: 1 in 2**23 not)
                st = await status(west)
                victim = st["workers"][1]["pid"]
                os.kill(victim, signal.SIGKILL)
                await wait_for(lambda: not os.path.exists(f"/proc/{victim}"), 10, "killed")
                for f in flows:
                    f.go_on.set()
                done = await asyncio.wait_for(asyncio.gather(*tasks), 60)
                # Worker 0's flows finished with every byte; only worker 1's ended.
                assert sum(done) == on[0], (done, on)

                # Worker 1 is started again and the router carries new flows.
                await poll_status(
                    west,
                    lambda s: _all_up(s) and s["workers"][1]["pid"] != victim,
                    "worker 1 back",
                )
                for i in range(20):
                    payload = os.urandom(2000) + i.to_bytes(4, "big")
                    assert await asyncio.wait_for(echo_roundtrip(port, payload), 20) == payload

                assert pe.poll() is None and pw.poll() is None
                for p in (pw, pe):
                    p.send_signal(signal.SIGTERM)
                await wait_for(lambda: pw.poll() is not None and pe.poll() is not None, 30, "exit")
                assert (pw.returncode, pe.returncode) == (0, 0)
        log = (tmp_path / "west.log").read_text()
        assert "worker 1 ended" in log
        assert "the other end is not a worker of this router" in log
        for bad in ("Traceback", "Fatal Python error"):
            assert bad not in log
        # No worker outlives its router.
        assert _processes_with(str(west.dir)) == []

    run(main())


@pytest.mark.timeout(120)
def test_edge_workers_each_use_their_own_uplink(tmp_path: Path) -> None:
    """An edge router's workers are not linked to each other (an edge carries no
    flows for others): each dials the interior itself and its flows take its own
    uplink."""
    hub = Site.create(tmp_path, "hub", accept=True)
    edge = Site.create(tmp_path, "edge")
    edge.link_to(hub)
    edge.extra.update(mode="edge", workers=WORKERS)
    hub.extra["workers"] = 1

    async def main() -> None:
        async with tcp_server(echo_handler) as echo:
            hub.connect("echo", echo)
            port = edge.listen("echo")
            with (
                process(_cmd(hub), tmp_path / "hub.log"),
                process(_cmd(edge), tmp_path / "edge.log"),
            ):

                def uplinks_up(st: dict) -> bool:
                    ws = st.get("workers") or []
                    return len(ws) == WORKERS and all(w.get("links_up") == 1 for w in ws)

                await poll_status(edge, uplinks_up, "every edge worker's uplink")
                st = await status(edge)
                assert all(w["worker_links"] == [] for w in st["workers"])
                hst = await status(hub)
                peers = {lk["peer_router"] for lk in hst["links"]}
                assert peers == {"edge", "edge/w1"}, hst["links"]
                await flows_on_every_worker(edge, port)

    run(main())


@pytest.mark.timeout(120)
def test_two_routers_with_workers_never_share_a_port(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second router of the same user bind the first one's
    ports (and take its connections): the port claim refuses it as a taken port."""
    first = Site.create(tmp_path, "first", accept=True)
    second = Site.create(tmp_path, "second", accept=True)
    port = first.listen("k")
    second.listen("k", port=port)
    second.link_port = first.link_port
    for site in (first, second):
        site.extra["workers"] = WORKERS
        site.connect("k", 9)

    async def main() -> None:
        with process(_cmd(first), tmp_path / "first.log"):
            await poll_status(first, _all_up, "first: every worker up")
            with process(_cmd(second), tmp_path / "second.log"):

                def refused(st: dict) -> bool:
                    listener = st["listeners"][0]
                    return listener["state"] == "error" and st["link_access"]["state"] == "error"

                await poll_status(second, refused, "second: refused both ports")
                st = await status(second)
                for error in (st["listeners"][0]["error"], st["link_access"]["error"]):
                    assert "address already in use" in error.lower(), error
                    assert "another router" in error, error
                # The first router still has both ports, all its workers up and ready.
                fst = await status(first)
                assert _all_up(fst) and fst["listeners"][0]["state"] == "listening"

    run(main())
