"""GET /v1/network and the network console, in a real headless chromium driven over
the DevTools protocol: a three-site network is drawn whole (every site, every
link) and its per-key counts follow real traffic without a page reload. The
screenshot is kept under the test's tmp dir and tests/output/ (git-ignored)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from router_testkit import Site, free_port, http_get, run, tcp_server, wait_for
from test_network import TIMEOUT, echo_roundtrip, link_up, reachable, routers

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
OUTPUT = Path(__file__).resolve().parents[2] / "tests" / "output"


def three_sites(tmp_path: Path) -> tuple[Site, Site, Site, int]:
    """west -> east -> north in a line plus west -> north (cost 5); a connector at
    east and at north, west listens for both (north's key crosses a link either way)."""
    west = Site.create(tmp_path, "west")
    east = Site.create(tmp_path, "east", accept=True)
    north = Site.create(tmp_path, "north", accept=True)
    west.link_to(east)
    east.link_to(north)
    west.link_to(north, cost=5)
    return west, east, north, west.listen("svc-east")


def test_network_document(tmp_path: Path) -> None:
    async def main() -> None:
        west, east, north, lport = three_sites(tmp_path)
        async with tcp_server() as backend:
            east.connect("svc-east", backend)
            async with routers(north, east, west) as rs:
                w = rs["west"]
                await wait_for(lambda: reachable(w, "svc-east"), TIMEOUT, "svc-east served")
                payload = os.urandom(100_000)
                for _n in range(3):
                    got = await echo_roundtrip(lport, payload)
                    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                code, body = await http_get(west.admin_url + "/v1/network")
                assert code == 200
                net = json.loads(body)
                assert net["router_id"] == "west"
                by_id = {r["id"]: r for r in net["routers"]}
                assert set(by_id) == {"west", "east", "north"}
                assert all(r["reachable"] for r in by_id.values())
                assert by_id["west"]["here"] and not by_id["east"]["here"]
                assert by_id["north"]["cost"] == 2  # via east, not the cost-5 link
                links = {
                    (r["id"], lk["to"], lk["cost"], lk["state"])
                    for r in by_id.values()
                    for lk in r["links"]
                }
                assert {("west", "east", 1, "up"), ("east", "north", 1, "up")} <= links
                assert ("west", "north", 5, "up") in links
                assert by_id["east"]["connectors"] == ["svc-east"]
                assert by_id["west"]["listeners"] == ["svc-east"]
                key = net["routing_keys"]["svc-east"]
                assert key["listeners"] == ["west"] and key["connectors"] == ["east"]
                assert key["reachable"] is True
                assert key["flows_total"] == 3 and key["flows_open"] == 0
                assert key["bytes_out"] == key["bytes_back"] == 3 * len(payload)

                await rs["north"].stop()
                await wait_for(lambda: not link_up(rs["east"], "north"), TIMEOUT, "north gone")
                await wait_for(
                    lambda: not any(
                        r["reachable"] for r in w.network()["routers"] if r["id"] == "north"
                    ),
                    TIMEOUT,
                    "north unreachable from west",
                )

    run(main())


# -- the console in a real browser -----------------------------------------------------------


class DevTools:
    """A minimal DevTools-protocol client: one page, commands answered in order."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client, pinned in requirements-dev.txt

        self.ws = websocket.create_connection(ws_url, timeout=20)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        for _message in range(10_000):  # events may come first; bounded
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise AssertionError(f"{method}: no answer")

    def js(self, expression: str) -> Any:
        got = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in got:
            raise AssertionError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",  # the test runs as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}",
            "--window-size=1000,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tools = None
    try:
        targets: list[dict[str, Any]] = []
        for _attempt in range(200):  # up to ~20 s for the browser to come up
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            if proc.poll() is not None:
                raise AssertionError("chromium exited at start")
            subprocess.run(["sleep", "0.1"], check=True)
        assert targets, "chromium did not open its DevTools port"
        tools = DevTools(targets[0]["webSocketDebuggerUrl"])
        yield tools
    finally:
        if tools is not None:
            tools.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def page_until(tools: DevTools, expression: str, what: str) -> Any:
    """Evaluate in the page (off the event loop, the routers keep running) until truthy."""
    for _attempt in range(300):  # ~30 s
        value = await asyncio.to_thread(tools.js, expression)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"the page never showed {what}")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")
def test_console_draws_the_network_and_follows_traffic(tmp_path: Path) -> None:
    async def main() -> None:
        west, east, north, lport = three_sites(tmp_path)
        # West asks for its admin token: the page is open, its requests send the
        # token given in the address's fragment.
        token = "console-token-" + os.urandom(8).hex()
        (west.dir / "admin").mkdir()
        (west.dir / "admin" / "token").write_text(token)
        (west.dir / "admin" / "token").chmod(0o600)
        west.extra["admin"] = {
            "host": "127.0.0.1",
            "port": west.admin_port,
            "token_file": "admin/token",
        }
        async with tcp_server() as backend_east, tcp_server() as backend_north:
            east.connect("svc-east", backend_east)
            north.connect("svc-north", backend_north)
            nport = west.listen("svc-north")
            async with routers(north, east, west) as rs:
                w = rs["west"]
                await wait_for(
                    lambda: reachable(w, "svc-east") and reachable(w, "svc-north"),
                    TIMEOUT,
                    "both keys served",
                )
                code, page = await http_get(west.admin_url + "/console")
                assert code == 200 and b"<svg" in page
                assert b"http://" not in page.replace(b"http://www.w3.org/2000/svg", b"")
                with chromium(tmp_path / "profile") as tools:
                    await asyncio.to_thread(tools.call, "Page.enable")
                    await asyncio.to_thread(
                        tools.call, "Page.navigate", url=west.admin_url + "/console"
                    )
                    await page_until(
                        tools,
                        "document.getElementById('meta')?.textContent.includes('admin token')",
                        "that the token is needed",
                    )
                    await asyncio.to_thread(
                        tools.call,
                        "Page.navigate",
                        url=west.admin_url + "/console#token=" + token,
                    )
                    await page_until(
                        tools, "location.href.endsWith('/console')", "the token off the address"
                    )
                    await page_until(
                        tools, "document.querySelectorAll('g.node').length === 3", "3 sites"
                    )
                    sites = await asyncio.to_thread(
                        tools.js,
                        "[...document.querySelectorAll('g.node')].map(g => g.dataset.site).sort()",
                    )
                    assert sites == ["east", "north", "west"]
                    links = await asyncio.to_thread(
                        tools.js,
                        "[...document.querySelectorAll('line.link.up')]"
                        ".map(l => [l.dataset.from, l.dataset.to].sort().join('-')).sort()",
                    )
                    assert links == ["east-north", "east-west", "north-west"]
                    labels = await asyncio.to_thread(
                        tools.js,
                        "[...document.querySelectorAll('text.linklabel')].map(t => t.textContent)",
                    )
                    assert sorted(labels) == ["cost 1 · up", "cost 1 · up", "cost 5 · up"]
                    # A marker a reload would wipe: the counts below must change without one.
                    await asyncio.to_thread(tools.js, "window.__noReload = 1")
                    cell = "document.querySelector('tr[data-key=\"{key}\"] .{col}')?.textContent"
                    assert await page_until(
                        tools, cell.format(key="svc-east", col="flows-total") + " === '0'", "0"
                    )
                    payload = os.urandom(64_000)
                    for port in (lport, lport, lport, nport):
                        got = await echo_roundtrip(port, payload)
                        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                    await page_until(
                        tools,
                        cell.format(key="svc-east", col="flows-total")
                        + " === '3' && "
                        + cell.format(key="svc-north", col="flows-total")
                        + " === '1'",
                        "the new flow counts",
                    )
                    shown = await asyncio.to_thread(
                        tools.js, cell.format(key="svc-east", col="bytes-back")
                    )
                    assert shown == str(3 * len(payload))
                    assert await asyncio.to_thread(tools.js, "window.__noReload") == 1
                    polls = await asyncio.to_thread(
                        tools.js, "document.getElementById('meta').dataset.polls"
                    )
                    assert int(polls) >= 2
                    shot = await asyncio.to_thread(
                        tools.call, "Page.captureScreenshot", format="png"
                    )
                    png = base64.b64decode(shot["data"])
                    assert png.startswith(b"\x89PNG")
                    (tmp_path / "console.png").write_bytes(png)
                    OUTPUT.mkdir(parents=True, exist_ok=True)
                    (OUTPUT / "console.png").write_bytes(png)

    run(main())
