"""One-time grants (grants.py): a client certificate in ``link_clients`` with a window
and a redemption limit. The rule and the ledger alone, then workers racing for the
last redemption in separate processes, then routers on loopback with real TLS: the
first site redeems (whatever the certificate's name), a copy at another site is told
``grant used``, a site after the window ``grant expired``, and a restart of the
accepting router forgets nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from router_testkit import Site, run, tcp_server, wait_for
from test_link_clients import fingerprint, link_error
from test_network import TIMEOUT, echo_roundtrip, link_up, routers

from skiff_router.config import ConfigError, validate
from skiff_router.grants import Grant, GrantLedger, grant_id, refusal

FP = "ab" * 32


def test_the_rule_says_which_refusal() -> None:
    grant = Grant(redeem_by=1000, redemptions=1)
    assert refusal(grant, "partner", [], "west", 999) is None  # in the window: redeems
    assert refusal(grant, "partner", ["west"], "west", 5000) is None  # its redeemer, later
    used = refusal(grant, "partner", ["west"], "north", 999)
    assert used is not None and used.public == "grant used"
    assert "already redeemed by site west" in used.detail and "site north" in used.detail
    expired = refusal(grant, "partner", [], "west", 1000)
    assert expired is not None and expired.public == "grant expired"
    assert "1970-01-01 00:16:40 UTC" in expired.detail
    # Used up and past its window: "used" says more than "expired".
    late = refusal(grant, "partner", ["west"], "north", 1000)
    assert late is not None and late.public == "grant used"
    two = Grant(redeem_by=1000, redemptions=2)
    assert refusal(two, "partner", ["west"], "north", 999) is None
    assert refusal(two, "partner", ["west"], "north", 1000).public == "grant expired"  # type: ignore[union-attr]


def test_the_ledger_records_once_and_survives_a_new_instance(tmp_path: Path) -> None:
    grant = Grant(int(time.time()) + 60, 1)
    ledger = GrantLedger(str(tmp_path / "state"))
    assert ledger.redeem("partner", grant, "west", time.time()) is None
    assert ledger.redeem("partner", grant, "west", time.time()) is None  # again: no change
    again = GrantLedger(str(tmp_path / "state"))  # a restarted router
    assert again.redeemers() == {grant_id("partner", grant): ["west"]}
    refused = again.redeem("partner", grant, "north", time.time())
    assert refused is not None and refused.public == "grant used" and again.refused == 1
    path = tmp_path / "state" / "grants.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_a_damaged_ledger_refuses_instead_of_opening_the_grant(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "grants.json").write_text("{not json")
    ledger = GrantLedger(str(state))
    refused = ledger.redeem("partner", Grant(int(time.time()) + 60, 5), "west", time.time())
    assert refused is not None and refused.public == "grant unavailable"
    assert "not valid JSON" in refused.detail and str(state) in refused.detail


def _redeem(state: str, site: str, start: float) -> bool:
    while time.time() < start:  # all children ask at once
        time.sleep(0.001)
    return GrantLedger(state).redeem("partner", _racing(start), site, time.time()) is None


def _racing(start: float) -> Grant:
    return Grant(int(start) + 60, 1)


def test_processes_racing_spend_the_last_redemption_once(tmp_path: Path) -> None:
    """Workers are processes: the lock lets exactly one of them redeem."""
    state = str(tmp_path / "state")
    start = time.time() + 0.5
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(6) as pool:
        admitted = pool.starmap(_redeem, [(state, f"site{i}", start) for i in range(6)])
    assert sum(admitted) == 1
    assert len(GrantLedger(state).redeemers()[grant_id("partner", _racing(start))]) == 1


def test_config_checks_grants(tmp_path: Path) -> None:
    base = {"site": "east", "link_clients": [{"name": "p", "sha256": FP}]}
    client = base["link_clients"][0]
    client["grant"] = {"redeem_by": 1, "redemptions": 1}
    with pytest.raises(ConfigError) as err:
        validate(base, tmp_path)
    assert err.value.errors == [
        (
            "link_clients[0].grant",
            "a grant needs state_dir (a directory the router may write), where its "
            "redemptions are kept across restarts",
        )
    ]
    client["grant"] = {"redeem_by": "soon", "redemptions": 0}
    with pytest.raises(ConfigError) as err:
        validate({**base, "state_dir": "state"}, tmp_path)
    assert [p for p, _m in err.value.errors] == ["link_clients[0].grant.redeem_by"]
    client["grant"] = {"redeem_by": 5, "redemptions": 101}
    with pytest.raises(ConfigError) as err:
        validate({**base, "state_dir": "state"}, tmp_path)
    assert [p for p, _m in err.value.errors] == ["link_clients[0].grant.redemptions"]
    client["grant"] = {"redeem_by": 5, "redemptions": 3}
    cfg = validate({**base, "state_dir": "state"}, tmp_path)
    assert cfg.state_dir == str(tmp_path / "state")
    assert cfg.link_clients is not None and cfg.link_clients[0].grant == Grant(5, 3)


def _grant_of(site: Site, dialer: Site, name: str, redeem_by: int) -> dict[str, object]:
    fp = fingerprint(dialer.dir / "links" / site.name / "tls.crt")
    return {"name": name, "sha256": fp, "grant": {"redeem_by": redeem_by, "redemptions": 1}}


@pytest.mark.integration
def test_a_grant_is_redeemed_once_and_kept_across_a_restart(tmp_path: Path) -> None:
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    # A copy of west's grant at another site: the file a partner forwarded.
    north = Site.create(tmp_path, "north")
    shutil.copytree(west.dir / "links", north.dir / "links")
    north.links = [dict(x) for x in west.links]
    # Another grant whose window has closed before anyone used it.
    south = Site.create(tmp_path, "south")
    south.link_to(east)
    east.extra["state_dir"] = "state"
    east.extra["link_clients"] = [
        _grant_of(east, west, "partner", int(time.time()) + 600),
        _grant_of(east, south, "late", int(time.time()) - 1),
    ]

    async def main() -> None:
        async with tcp_server() as echo_port:
            east.connect("backend", echo_port)
            lport = west.listen("backend")
            async with routers(east, west) as rs:
                await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "west redeems")
                assert await echo_roundtrip(lport, b"g" * 50_000) == b"g" * 50_000
                grants = rs["east"].status()["link_access"]["grants"]
                assert grants["partner"]["redeemed_by"] == ["west"]
                assert grants["partner"]["state"] == "redeemed"
                assert grants["late"]["state"] == "expired"
            ledger = json.loads((east.dir / "state" / "grants.json").read_text())
            redeem_by = east.extra["link_clients"][0]["grant"]["redeem_by"]
            assert ledger["grants"] == {f"partner@{redeem_by}": ["west"]}
            # A restarted east remembers: west links again, the copy and the late one not.
            async with routers(east, west, north, south) as rs:
                await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "west again")
                await wait_for(
                    lambda: link_error(rs["north"], "east") == "closed by peer: grant used",
                    TIMEOUT,
                    "north told the grant is used",
                )
                await wait_for(
                    lambda: link_error(rs["south"], "east") == "closed by peer: grant expired",
                    TIMEOUT,
                    "south told the grant expired",
                )
                assert not link_up(rs["north"], "east") and not link_up(rs["south"], "east")
                assert await echo_roundtrip(lport, b"h" * 50_000) == b"h" * 50_000
                access = rs["east"].status()["link_access"]
                assert access["grants_refused"] >= 2
                assert access["grants"]["partner"]["redeemed_by"] == ["west"]
                peers = {lk["peer"] for lk in rs["east"].status()["links"]}
                assert peers == {"west"}

    run(main())
    # Nothing secret in the ledger: sites and fingerprints only, owner-only.
    assert oct(os.stat(east.dir / "state" / "grants.json").st_mode & 0o777) == "0o600"
