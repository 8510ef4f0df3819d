"""Tier 4: the real router processes on each event loop: uvloop (what a default
install runs) and plain asyncio (the fallback), with bulk and many short,
half-closed flows (the pattern that once crashed uvloop in a relay)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from router_testkit import Site, echo_handler, http_get, run, tcp_server, wait_for
from test_cli import process
from test_network import echo_roundtrip

pytestmark = pytest.mark.integration

SHORT_FLOWS = 300  # per kind; bounded
PARALLEL = 16


async def status(site: Site) -> dict:
    code, body = await http_get(site.admin_url + "/v1/status")
    assert code == 200
    return json.loads(body)


async def poll_status(site: Site, cond, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    last: dict = {}

    async def probe() -> bool:
        nonlocal last
        try:
            last = await status(site)
        except OSError:
            return False
        return bool(cond(last))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {last}")
        await asyncio.sleep(0.1)


async def server_closes_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Says hello and half-closes at once, then reads the client until its EOF."""
    try:
        writer.write(b"hello")
        writer.write_eof()
        data = await reader.read()
        assert len(data) == 1000
    except OSError:
        pass
    finally:
        writer.close()


async def client_closes_first(port: int, i: int) -> None:
    payload = os.urandom(1000) + i.to_bytes(4, "big")
    assert await asyncio.wait_for(echo_roundtrip(port, payload), 20) == payload


async def client_reads_eof_first(port: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r.read(), 20) == b"hello"  # the server's EOF came first
    w.write(os.urandom(1000))
    w.write_eof()
    await w.drain()
    w.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.timeout(180)
def test_router_processes_on_each_event_loop(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIFF_ROUTER_LOOP", loop)
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    east.log_level = west.log_level = "info"

    async def main() -> None:
        async with tcp_server(echo_handler) as echo, tcp_server(server_closes_first) as first:
            east.connect("echo", echo)
            east.connect("first", first)
            p_echo, p_first = west.listen("echo"), west.listen("first")
            cmd = [sys.executable, "-m", "skiff_router", "run", "--config"]
            with (
                process([*cmd, str(east.write())], tmp_path / "east.log") as pe,
                process([*cmd, str(west.write())], tmp_path / "west.log") as pw,
            ):
                await poll_status(
                    west,
                    lambda s: s["routing_keys"].get("first", {}).get("reachable"),
                    "keys reachable",
                )
                for site in (east, west):
                    st = await status(site)
                    assert st["event_loop"] == loop, st["event_loop"]
                    assert st["event_loop_version"]
                payload = os.urandom(4 * 1024 * 1024)
                got = await asyncio.wait_for(echo_roundtrip(p_echo, payload), 60)
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

                sem = asyncio.Semaphore(PARALLEL)

                async def bounded(coro) -> None:  # type: ignore[no-untyped-def]
                    async with sem:
                        await coro

                await asyncio.wait_for(
                    asyncio.gather(
                        *(bounded(client_closes_first(p_echo, i)) for i in range(SHORT_FLOWS)),
                        *(
                            bounded(client_reads_eof_first(p_first))
                            for _unused in range(SHORT_FLOWS)
                        ),
                    ),
                    120,
                )
                # Every flow closed once EOF passed both ways: nothing lingers.
                for site in (west, east):
                    await poll_status(site, lambda s: s["flows"]["open"] == 0, "flows closed")
                st = await status(west)
                assert st["flows"]["total"] == 1 + 2 * SHORT_FLOWS
                assert pe.poll() is None and pw.poll() is None
                for p in (pw, pe):
                    p.send_signal(signal.SIGTERM)
                await wait_for(lambda: pw.poll() is not None and pe.poll() is not None, 20, "exit")
                assert (pw.returncode, pe.returncode) == (0, 0)
        for name in ("east", "west"):
            log = (tmp_path / f"{name}.log").read_text()
            assert f"on {loop} " in log
            for bad in ("Traceback", "Fatal Python error", "double free", "Segmentation"):
                assert bad not in log, (name, bad)

    run(main())
