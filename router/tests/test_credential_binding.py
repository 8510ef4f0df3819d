"""A token's client certificate serves the routers it is bound to (credentials.py):
one router (one run of it, whatever its workers and links) unless the list gives it
more; another router presenting it while they hold a link is refused and logged.
Sans-I/O cores first, then real routers with workers on loopback."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest
from router_testkit import Site, echo_handler, run, tcp_server
from test_cli import process
from test_core import Net
from test_event_loops import poll_status, status
from test_link_clients import fingerprint
from test_network import echo_roundtrip
from test_workers import WORKERS, _all_up, _cmd

from skiff_router.actions import CredentialHeld, LinkEstablished
from skiff_router.core import RouterCore
from skiff_router.credentials import Credential

FP = "ab" * 32


def connect(
    net: Net, dialer: str, acceptor: str, allowed: int = 1, elsewhere: frozenset[str] = frozenset()
) -> tuple[int, int]:
    """Like Net.connect, the acceptor binding the dialer's certificate FP."""
    d, a = net.cores[dialer], net.cores[acceptor]
    hd = d.link_connected(acceptor, "outgoing", net.now, a.site)
    ha = a.link_connected(
        "in", "incoming", net.now, d.site, credential=Credential(FP, allowed, elsewhere)
    )
    net.wires[(dialer, hd)] = (acceptor, ha)
    net.wires[(acceptor, ha)] = (dialer, hd)
    net.run()
    return hd, ha


def add(net: Net, name: str, instance: str, site: str = "west") -> RouterCore:
    core = RouterCore(name, net.now, seq=0, site=site, instance=instance)
    net.cores[name], net.actions[name] = core, []
    return core


def up(core: RouterCore) -> set[str]:
    return {lk.peer for lk in core.topology.links.values() if lk.up and lk.peer}


def test_a_second_router_with_the_same_certificate_is_refused() -> None:
    net = Net()
    hub = net.add("hub")
    add(net, "west", "aa" * 8)
    add(net, "west.copy", "bb" * 8)  # a copied token: another router of "site west"
    connect(net, "west", "hub")
    connect(net, "west", "hub")  # a second link of the same router: admitted
    assert up(hub) == {"west"} and len(hub.topology.links) == 2
    held = net.take("hub", CredentialHeld)
    assert held == [CredentialHeld(FP, "aa" * 8, True)]  # announced once per holder
    _hd, ha = connect(net, "west.copy", "hub")
    assert ha not in hub.topology.links and up(hub) == {"west"}
    assert hub.credentials.refused == 1
    thief = net.cores["west.copy"]
    assert not thief.topology.links  # it got a CLOSE, never an update
    assert "west.copy" not in {r["id"] for r in hub.topology.routers_status()}
    # The holder leaves: the certificate is free, another run of west may use it.
    for h in list(net.cores["west"].topology.links):
        net.cut("west", h)
    assert net.take("hub", CredentialHeld) == [CredentialHeld(FP, "aa" * 8, False)]
    connect(net, "west.copy", "hub")
    assert up(hub) == {"west.copy"}


def test_allowed_routers_and_holders_on_other_workers_count() -> None:
    net = Net()
    hub = net.add("hub")
    add(net, "west.a", "aa" * 8)
    add(net, "west.b", "bb" * 8)
    add(net, "west.c", "cc" * 8)
    connect(net, "west.a", "hub", allowed=2)
    connect(net, "west.b", "hub", allowed=2)  # replicas: two routers may hold it
    connect(net, "west.c", "hub", allowed=2)
    assert up(hub) == {"west.a", "west.b"}
    # Another worker of the hub holds a link of run "dd..": it counts, and a link of
    # that same run is admitted here too (the workers are one router).
    net2 = Net()
    hub2 = net2.add("hub")
    add(net2, "west", "dd" * 8)
    add(net2, "west.x", "ee" * 8)
    connect(net2, "west.x", "hub", elsewhere=frozenset({"dd" * 8}))
    connect(net2, "west", "hub", elsewhere=frozenset({"dd" * 8}))
    assert up(hub2) == {"west"}
    assert hub2.credentials.refused == 1


def test_routers_of_older_releases_count_by_router_id() -> None:
    net = Net()
    hub = net.add("hub")
    add(net, "west", "")
    connect(net, "west", "hub")
    assert [a for a in net.take("hub") if isinstance(a, CredentialHeld)] == [
        CredentialHeld(FP, "id:west", True)
    ]
    assert any(isinstance(a, LinkEstablished) for a in net.actions["west"] + net.take("west"))
    assert up(hub) == {"west"}


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_copied_token_is_refused_by_every_worker_while_its_site_is_linked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """East and west run two workers each: west's four links are one router's and
    all admitted; a copy of west's token in another router (same site, same id even)
    is refused whichever of east's workers it reaches, and west's flows go on."""
    caplog.set_level(logging.WARNING)
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    copy = Site.create(tmp_path / "elsewhere", "west")
    shutil.copytree(west.dir / "links", copy.dir / "links")
    copy.links = [dict(x) for x in west.links]
    fp = fingerprint(west.dir / "links" / "east" / "tls.crt")
    east.extra["link_clients"] = [{"name": "west", "sha256": fp}]
    for site in (east, west, copy):
        site.log_level = "info"
        site.extra["workers"] = WORKERS

    async def main() -> None:
        async with tcp_server(echo_handler) as echo:
            east.connect("echo", echo)
            port = west.listen("echo")
            with (
                process(_cmd(east), tmp_path / "east.log"),
                process(_cmd(west), tmp_path / "west.log"),
            ):
                for site in (east, west):
                    await poll_status(site, _all_up, f"{site.name}: every worker up")
                # Every worker of west dials east: all admitted, whichever worker.
                await poll_status(
                    east,
                    lambda s: sum(lk["direction"] == "incoming" for lk in s["links"]) == WORKERS,
                    "west's links",
                )
                with process(_cmd(copy), tmp_path / "copy.log"):
                    await poll_status(copy, _all_up, "the copy's workers up")
                    # Each of its workers is refused, redial after redial, whichever
                    # worker of east its connection lands on.
                    await poll_status(
                        copy,
                        lambda s: len(s["links"]) == WORKERS
                        and all("credential in use" in (lk["error"] or "") for lk in s["links"]),
                        "the copy refused",
                    )
                    for _round in range(4):
                        payload = b"w" * 200_000
                        assert await asyncio.wait_for(echo_roundtrip(port, payload), 20) == payload
                    est = await status(east)
                    incoming = [lk for lk in est["links"] if lk["direction"] == "incoming"]
                    assert len(incoming) == WORKERS, incoming
                    assert {lk["peer_router"] for lk in incoming} == {"west", "west/w1"}
                log = (tmp_path / "east.log").read_text()
                assert "is in use by" in log and "a copied token?" in log

    run(main())
