"""A silent partition: a transit router stops (SIGSTOP), its sockets open and mute.
Its neighbours find out by keepalive and new flows take the other path; flows
through the stopped router are not waited on forever. Real processes on loopback.

    west --cost 1-- fast --cost 1-- east (connector)
      \\--cost 5-- slow --cost 5--/

How fast is a benchmark figure (`bench/run.py --only convergence`,
partition_convergence, target 5 s); this test checks that it happens at all,
within a bound far above it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from router_testkit import Site, echo_handler, run, tcp_server
from test_cli import process
from test_event_loops import poll_status, status
from test_network import echo_roundtrip
from test_workers import _cmd

pytestmark = pytest.mark.integration

BOUND = 30.0  # seconds: a guard for a loaded machine, not a measurement


def _next_hop(st: dict, router: str) -> str | None:
    return next((r["next_hop"] for r in st["routers"] if r["id"] == router), None)


@pytest.mark.timeout(120)
def test_new_flows_take_the_other_path_when_a_transit_router_goes_silent(
    tmp_path: Path,
) -> None:
    fast = Site.create(tmp_path, "fast", accept=True)
    slow = Site.create(tmp_path, "slow", accept=True)
    west, east = Site.create(tmp_path, "west"), Site.create(tmp_path, "east")
    west.link_to(fast, cost=1)
    west.link_to(slow, cost=5)
    east.link_to(fast, cost=1)
    east.link_to(slow, cost=5)
    for site in (fast, slow, west, east):
        site.log_level = "info"
        site.extra["workers"] = 1

    async def main() -> None:
        async with tcp_server(echo_handler) as echo:
            east.connect("echo", echo)
            port = west.listen("echo")
            with (
                process(_cmd(fast), tmp_path / "fast.log") as pf,
                process(_cmd(slow), tmp_path / "slow.log"),
                process(_cmd(east), tmp_path / "east.log"),
                process(_cmd(west), tmp_path / "west.log"),
            ):
                await poll_status(
                    west,
                    lambda s: _next_hop(s, "east") == "fast"
                    and s["routing_keys"].get("echo", {}).get("reachable"),
                    "west reaches east through fast",
                )
                payload = os.urandom(100_000)
                assert await asyncio.wait_for(echo_roundtrip(port, payload), 20) == payload
                # A flow open through fast when it goes silent.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"before")
                assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"

                os.killpg(pf.pid, signal.SIGSTOP)
                try:
                    stopped = time.monotonic()
                    # New flows get through (by slow) once the keepalive found fast mute.
                    while True:
                        assert time.monotonic() - stopped < BOUND, "no other path taken"
                        try:
                            got = await asyncio.wait_for(echo_roundtrip(port, payload), 3)
                        except (TimeoutError, OSError):
                            got = b""
                        if got == payload:
                            break
                        await asyncio.sleep(0.2)
                    took = time.monotonic() - stopped
                    st = await status(west)
                    assert _next_hop(st, "east") == "slow", st["routers"]
                    # The flow through fast ended (reset), not left hanging.
                    try:
                        end = await asyncio.wait_for(reader.read(), BOUND)
                    except ConnectionResetError:
                        end = b""
                    assert end == b""
                    writer.close()
                    print(f"new flows took the other path {took:.1f} s after SIGSTOP")
                finally:
                    os.killpg(pf.pid, signal.SIGCONT)
                # Back: fast is the cheaper path again.
                await poll_status(
                    west, lambda s: _next_hop(s, "east") == "fast", "fast back", timeout=BOUND
                )
                assert await asyncio.wait_for(echo_roundtrip(port, payload), 20) == payload

    run(main())
