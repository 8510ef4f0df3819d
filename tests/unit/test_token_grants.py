"""One-time grants (skiff.fleet.token with dest): written once to a 0600 file, listed
for the router with their window and limit, kept and updated without re-issue, and
redeemed by skiff.fleet.link from a file (token_file) whose mode is checked."""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils import pki
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.link import link_set, read_token_file
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import (
    TokenParams,
    TokenRunner,
    run_token,
)
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import decode

NOW = datetime.datetime(2026, 12, 4, 9, 0, tzinfo=datetime.UTC)


def grant(east, tmp_path, **terms) -> TokenParams:
    dest = str(tmp_path / "partner.grant")
    return TokenParams(
        site="east",
        name="partner",
        base_dir=east.base_dir,
        grants={"partner": {"dest": dest, **terms}},
    )


def clients(east) -> list[dict]:
    return json.loads(SitePaths.for_site(east.base_dir, "east").config.read_text())["link_clients"]


def test_a_grant_is_written_once_with_its_terms_for_the_router(east, tmp_path, services):
    dest = tmp_path / "partner.grant"
    check = run_token(grant(east, tmp_path), True, now=NOW, **services)
    assert check.changed and not dest.exists()
    assert check.actions[0] == f"issue grant 'partner' to {dest}, 1 redemption within 15 minutes"
    first = run_token(grant(east, tmp_path), False, now=NOW, **services)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    token = decode(dest.read_text())
    assert token.grant and token.name == "partner" and token.site == "east"
    assert first.values["token"] == dest.read_text().strip()
    redeem_by = int(NOW.timestamp()) + 15 * 60
    # The grant's certificate and the next one, on the same terms (a renewal keeps
    # the redemptions: the router keeps them by name and window).
    assert clients(east) == [
        {
            "name": "partner",
            "sha256": pki.describe(pem.encode())["sha256_fingerprint"],
            "grant": {"redeem_by": redeem_by, "redemptions": 1},
        }
        for pem in (token.cert, token.next_cert)
    ]
    info = first.values["token_info"]["grant"]
    assert info == {"dest": str(dest), "redemptions": 1, "redeem_by": "2026-12-04T09:15:00+00:00"}
    assert "PRIVATE" not in json.dumps(first.diff) + json.dumps(first.actions)
    # Idempotent; the file handed over and deleted is not written again.
    dest.unlink()
    later = NOW + datetime.timedelta(hours=2)
    assert not run_token(grant(east, tmp_path), True, now=later, **services).changed
    again = run_token(grant(east, tmp_path), False, now=later, **services)
    assert not again.changed and not dest.exists()
    assert again.values["token"] == first.values["token"]


def test_new_terms_apply_to_the_grant_kept(east, tmp_path, services):
    first = run_token(grant(east, tmp_path), False, now=NOW, **services)
    more = grant(east, tmp_path, redemptions=3, redeem_within=60)
    check = run_token(more, True, now=NOW, **services)
    assert check.actions[0] == (
        "update grant 'partner': 3 redemptions within 60 minutes, 1 router(s) of each site at once"
    )
    updated = run_token(more, False, now=NOW, **services)
    assert updated.values["token"] == first.values["token"]  # the same certificate
    assert clients(east)[0]["grant"] == {
        "redeem_by": int(NOW.timestamp()) + 3600,
        "redemptions": 3,
    }
    assert not run_token(more, False, now=NOW, **services).changed


def test_a_token_turned_into_a_grant_or_back_is_issued_again(east, tmp_path, services):
    plain = TokenParams(site="east", name="partner", base_dir=east.base_dir)
    first = run_token(plain, False, now=NOW, **services)
    as_grant = run_token(grant(east, tmp_path), False, now=NOW, **services)
    assert "(the previous one: it becomes a grant)" in as_grant.actions[0]
    assert as_grant.values["token"] != first.values["token"]
    back = run_token(plain, False, now=NOW, **services)
    assert back.actions[0] == "issue token 'partner' (the previous one: it is no longer a grant)"
    # The grant superseded keeps linking a day on its terms (its redeemers only).
    listed = clients(east)
    assert "grant" not in listed[0] and "grant" not in listed[1]
    grace = int((NOW + datetime.timedelta(days=1)).timestamp())
    assert [(c["grant"]["redemptions"], c["not_after"]) for c in listed[2:]] == [(1, grace)] * 2


def test_the_list_form_takes_grants_by_name(east, tmp_path, services):
    dest = str(tmp_path / "p.grant")
    params = TokenParams(
        site="east",
        base_dir=east.base_dir,
        names=("west", "partner"),
        grants={"partner": {"dest": dest, "redemptions": 2}},
    )
    result = run_token(params, False, now=NOW, **services)
    assert decode(Path(dest).read_text()).grant
    assert not decode(result.values["tokens"]["west"]).grant
    by_name = {c["name"]: c for c in clients(east)}
    assert "grant" not in by_name["west"] and by_name["partner"]["grant"]["redemptions"] == 2


@pytest.mark.parametrize(
    ("terms", "field", "message"),
    [
        ({"dest": "partner.grant"}, "dest", "must be an absolute path on this host"),
        ({"redemptions": 0}, "redemptions", "must be an integer 1..100, got 0"),
        ({"redeem_within": 50000}, "redeem_within", "must be an integer 1..43200, got 50000"),
        ({"dest": "/nonexistent/dir/p.grant"}, "dest", "does not exist on this host"),
    ],
)
def test_bad_terms_name_site_and_field_and_issue_nothing(
    east, tmp_path, services, terms, field, message
):
    params = grant(east, tmp_path)
    params.grants["partner"].update(terms)
    with pytest.raises(SkiffError) as err:
        run_token(params, False, now=NOW, **services)
    assert err.value.site == "east" and field in err.value.field and message in err.value.message
    assert not SitePaths.for_site(east.base_dir, "east").token_dir("partner").exists()
    assert (
        "link_clients"
        not in json.loads(SitePaths.for_site(east.base_dir, "east").config.read_text())
        or clients(east) == []
    )


def test_a_site_without_state_refuses_grants_and_says_why(east, tmp_path, services):
    runner = TokenRunner(grant(east, tmp_path), check_mode=True)
    kube = SiteMetadata(name="east", platform="kubernetes", link_endpoints=[])
    with pytest.raises(SkiffError) as err:
        runner._grant_terms(kube, {"site": "east"})
    assert "kubernetes site cannot issue grants yet" in err.value.message
    local = SiteMetadata(name="east", platform="local", link_endpoints=[])
    with pytest.raises(SkiffError) as err:
        runner._grant_terms(local, {"site": "east"})
    assert "run skiff.fleet.site for it first" in err.value.message


# -- redeeming: skiff.fleet.link with token_file -------------------------------------------


def test_a_token_file_others_may_read_is_refused(tmp_path):
    path = tmp_path / "east.grant"
    path.write_text("skiff1.x\n")
    os.chmod(path, 0o644)
    with pytest.raises(SkiffError) as err:
        read_token_file(str(path))
    assert err.value.field == "token_file" and "mode 0644" in err.value.message
    assert "chmod 600" in err.value.message and "skiff1" not in err.value.message
    os.chmod(path, 0o600)
    assert read_token_file(str(path)) == "skiff1.x"
    with pytest.raises(SkiffError, match="cannot be read: No such file"):
        read_token_file(str(tmp_path / "missing"))


def test_a_grant_links_from_any_site_a_token_only_from_its_own(east, tmp_path, services):
    run_token(grant(east, tmp_path), False, now=NOW, **services)
    dest = str(tmp_path / "partner.grant")

    def paths(_name):
        return {"ca": "c", "cert": "t", "key": "k"}

    wanted = link_set(
        "acme", [{"token_file": dest}], prune=False, check_mode=False, link_paths=paths
    )
    assert list(wanted.tokens) == ["east"]  # named after the issuing site
    plain = TokenParams(site="east", name="west", base_dir=east.base_dir)
    token = run_token(plain, False, now=NOW, **services).values["token"]
    with pytest.raises(SkiffError, match="issued to site 'west', not 'acme'"):
        link_set("acme", [{"token": token}], prune=False, check_mode=False, link_paths=paths)
    with pytest.raises(SkiffError, match="give token or token_file, not both"):
        link_set(
            "acme", [{"token": token, "token_file": dest}], prune=False, check_mode=False,
            link_paths=paths,
        )  # fmt: skip


def test_a_renewed_grant_keeps_its_window_and_so_its_redemptions(east, tmp_path, services):
    """The router keeps redemptions by grant name and window: a renewal near expiry
    (the next certificate becomes the grant's) must keep the window."""
    first = decode(run_token(grant(east, tmp_path), False, now=NOW, **services).values["token"])
    window = clients(east)[0]["grant"]
    late = NOW + datetime.timedelta(days=345)
    renewed = run_token(grant(east, tmp_path), False, now=late, **services)
    assert renewed.actions[0].startswith("renew grant 'partner' with its next certificate")
    token = decode(renewed.values["token"])
    assert token.cert == first.next_cert and token.grant
    assert [c["grant"] for c in clients(east)] == [window] * 3  # current, next, superseded
