from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils import pki
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.link import LinkParams, run_link
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.site_config import (
    SiteConfigParams,
    run_reconcile,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import decode


@pytest.fixture
def pair(tmp_path, services):
    """Site east accepts links; site west dials. Returns (west paths, a token from east)."""
    base = str(tmp_path)
    east = SiteParams(
        name="east",
        base_dir=base,
        router_python="py",
        link_access=True,
        link_endpoint={"host": "127.0.0.1", "port": 55671},
    )
    run_site(east, False, **services)
    run_site(
        SiteParams(name="west", base_dir=base, router_python="py", admin_port=9192),
        False,
        **services,
    )
    token = run_token(
        TokenParams(site="east", name="west", base_dir=base), False, **services
    ).values["token"]
    return SitePaths(tmp_path / "west"), token


def lparams(paths, **kw) -> LinkParams:
    return LinkParams(**dict(dict(site="west", base_dir=str(paths.root.parent)), **kw))


def test_link_four_steps(pair, services, fleet):
    west, token = pair
    check = run_link(lparams(west, token=token), True, **services)
    assert check.changed
    assert check.actions[:2] == [
        "add link 'east' (to site 'east', cost 1, endpoints 127.0.0.1:55671)",
        "write the credentials of link 'east' from the token",
    ]
    assert not west.link_dir("east").exists()
    entry = {
        "name": "east",
        "peer": "east",
        "cost": 1,
        "endpoints": [{"host": "127.0.0.1", "port": 55671}],
        "ca": "links/east/ca.crt",
        "cert": "links/east/tls.crt",
        "key": "links/east/tls.key",
        # The token's next certificate: the router renews the link with it on its own.
        "next_cert": "links/east/tls.next.crt",
    }
    assert check.diff == {"before": {"links": []}, "after": {"links": [entry]}}
    applied = run_link(lparams(west, token=token), False, **services)
    assert applied.changed
    assert json.loads(west.config.read_text())["links"] == [entry]
    assert stat.S_IMODE((west.link_dir("east") / "tls.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(west.link_dir("east").stat().st_mode) == 0o700
    following = (west.link_dir("east") / "tls.next.crt").read_text()
    assert following == decode(token).next_cert and "PRIVATE" not in following
    assert fleet[west.root].calls[-1] == "reload"
    everything = json.dumps([applied.as_module_result(), check.as_module_result()])
    assert "PRIVATE KEY" not in everything and token not in everything
    assert not run_link(lparams(west, token=token), True, **services).changed
    assert not run_link(lparams(west, token=token), False, **services).changed


def test_cost_change_updates_entry(pair, services):
    west, token = pair
    run_link(lparams(west, token=token), False, **services)
    result = run_link(lparams(west, token=token, cost=5), False, **services)
    assert result.actions == [
        "update link 'east' (to site 'east', cost 5, endpoints 127.0.0.1:55671)",
        "reload the router",
    ]
    assert result.diff["before"]["links"][0]["cost"] == 1
    assert result.diff["after"]["links"][0]["cost"] == 5


def test_new_token_rewrites_credentials_with_one_reload(pair, services, fleet, tmp_path):
    west, token = pair
    run_link(lparams(west, token=token), False, **services)
    run_token(
        TokenParams(site="east", name="west", base_dir=str(tmp_path), state="absent"),
        False,
        **services,
    )
    fresh = run_token(
        TokenParams(site="east", name="west", base_dir=str(tmp_path)), False, **services
    )
    calls = len(fleet[west.root].calls)
    result = run_link(lparams(west, token=fresh.values["token"]), False, **services)
    assert result.actions[0] == "write the credentials of link 'east' from the token"
    assert result.changed
    # No remove-then-add: a failure half way could otherwise lose the link.
    assert fleet[west.root].calls[calls:].count("reload") == 1
    assert json.loads(west.config.read_text())["links"][0]["name"] == "east"
    assert (west.link_dir("east") / "tls.crt").read_text() == decode(fresh.values["token"]).cert


def test_failed_reload_restores_credentials(pair, services, fleet, tmp_path):
    west, token = pair
    fleet[west.root].reject_reloads = True
    with pytest.raises(SkiffError, match="previous config was restored"):
        run_link(lparams(west, token=token), False, **services)
    assert not (west.link_dir("east") / "tls.key").exists()
    assert "links" not in json.loads(west.config.read_text())


def test_absent(pair, services):
    west, token = pair
    run_link(lparams(west, token=token), False, **services)
    check = run_link(lparams(west, name="east", state="absent"), True, **services)
    assert check.changed and west.link_dir("east").exists()
    gone = run_link(lparams(west, name="east", state="absent"), False, **services)
    assert gone.actions[:2] == ["remove link 'east'", "remove the credentials of link 'east'"]
    assert not west.link_dir("east").exists()
    assert "links" not in json.loads(west.config.read_text())
    assert not run_link(lparams(west, name="east", state="absent"), False, **services).changed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            dict(name="east", token="nope"),
            "site 'west': link 'east': token: not a skiff token (expected a string starting with "
            "'skiff1.'); issue one with skiff.fleet.token at the site that accepts links",
        ),
        (dict(token=None), "site 'west': link: token: is required when state is present"),
        (dict(cost=0), "site 'west': link 'east': cost: 0 must be an integer >= 1"),
        (dict(name="a/b"), "name: 'a/b' is not a valid name"),
    ],
)
def test_bad_input(pair, services, overrides, message):
    west, token = pair
    with pytest.raises(SkiffError) as err:
        run_link(lparams(west, **dict(dict(token=token), **overrides)), False, **services)
    assert message in str(err.value)
    assert "PRIVATE" not in str(err.value)


def test_link_to_itself_is_refused(pair, services, tmp_path):
    _west, token = pair
    east = SitePaths(tmp_path / "east")
    with pytest.raises(SkiffError, match="a site cannot link to itself"):
        run_link(
            LinkParams(site="east", base_dir=str(east.root.parent), token=token), False, **services
        )


def test_params_repr_hides_token(pair):
    west, token = pair
    assert token not in repr(lparams(west, token=token))


def test_token_issued_to_another_site_is_refused(pair, services, tmp_path):
    west, _token = pair
    for_north = run_token(
        TokenParams(site="east", name="north", base_dir=str(tmp_path)), False, **services
    )
    with pytest.raises(SkiffError) as err:
        run_link(lparams(west, token=for_north.values["token"]), False, **services)
    assert "the token was issued to site 'north', not 'west'" in str(err.value)
    assert for_north.values["token"] not in str(err.value)
    assert not west.link_dir("east").exists()


def test_a_link_is_never_re_pointed_at_another_site(pair, services, fleet, tmp_path):
    """`name: east` given south's token used to rewrite link east to lead to south."""
    west, token = pair
    run_link(lparams(west, token=token), False, **services)
    before = west.config.read_bytes()
    credentials = (west.link_dir("east") / "tls.crt").read_bytes()
    south = SiteParams(
        name="south",
        base_dir=str(tmp_path),
        router_python="py",
        admin_port=9193,
        link_access=True,
        link_endpoint={"host": "127.0.0.1", "port": 55672},
    )
    run_site(south, False, **services)
    from_south = run_token(
        TokenParams(site="south", name="west", base_dir=str(tmp_path)), False, **services
    )
    south_token = from_south.values["token"]
    for check_mode in (True, False):
        with pytest.raises(SkiffError) as err:
            run_link(lparams(west, name="east", token=south_token), check_mode, **services)
        message = str(err.value)
        assert message.startswith("site 'west': link 'east': token: this link leads to site")
        assert "'east' and the token is from site 'south'" in message
        assert "remove it first (state: absent)" in message and south_token not in message
    assert west.config.read_bytes() == before
    assert (west.link_dir("east") / "tls.crt").read_bytes() == credentials
    # Its own name, or the old link removed first: both fine.
    assert run_link(lparams(west, name="south", token=south_token), False, **services).changed
    run_link(lparams(west, name="east", state="absent"), False, **services)
    assert run_link(lparams(west, name="east", token=south_token), False, **services).changed
    peers = {e["name"]: e["peer"] for e in json.loads(west.config.read_text())["links"]}
    assert peers == {"south": "south", "east": "south"}


def short_lived(token: str, days: int, base_dir: Path) -> str:
    """The same token with a client certificate that lapses in `days` days (as one
    issued long ago by a site outside this run would)."""
    decoded = decode(token)
    ca_dir = SitePaths.for_site(str(base_dir), decoded.site).root / "ca"
    ca = pki.Issued((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes())
    client = pki.issue_client_cert(ca, decoded.name, valid_days=days)
    return dataclasses.replace(
        decoded, cert=client.cert_pem.decode(), key=client.key_pem.decode(), next_cert=""
    ).encode()


def test_a_link_whose_credential_lapses_within_30_days_warns(pair, services, tmp_path):
    """Nothing in this run can renew a token another site issued: the link module and
    the reconcile step both say when it lapses and what to do; a fresh one is quiet."""
    west, token = pair
    assert run_link(lparams(west, token=token), False, **services).warnings == []
    lapsing = short_lived(token, 12, tmp_path)
    linked = run_link(lparams(west, token=lapsing), False, **services)
    (warning,) = linked.warnings
    assert warning.startswith(
        "site west: the credential of link east (a token of site east) expires on "
    )
    assert "(in 11 days)" in warning or "(in 12 days)" in warning
    assert warning.endswith(
        "get a new token from site east (skiff.fleet.token there) and run again"
    )
    assert linked.as_module_result()["warnings"] == [warning]
    reconciled = run_reconcile(
        SiteConfigParams(site="west", base_dir=str(tmp_path), links=({"token": lapsing},)),
        True,
        **services,
    )
    assert reconciled.warnings == [warning]
    assert "PRIVATE KEY" not in warning
