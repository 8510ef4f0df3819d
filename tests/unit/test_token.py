from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import stat
import time

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils import pki
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import (
    Token,
    decode,
)


@pytest.fixture(scope="module")
def material():
    ca = pki.create_ca("east")
    return ca, pki.issue_client_cert(ca, "west")


def make_token(material, **overrides) -> Token:
    ca, client = material
    values = dict(
        site="east",
        name="west",
        endpoints=[{"host": "127.0.0.1", "port": 55671}],
        ca=ca.cert_pem.decode(),
        cert=client.cert_pem.decode(),
        key=client.key_pem.decode(),
    )
    values.update(overrides)
    return Token(**values)


def raw_token(payload: dict) -> str:
    return "skiff1." + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_round_trip(material):
    token = make_token(material)
    text = token.encode()
    assert text.startswith("skiff1.") and "=" not in text
    assert decode(text) == token
    assert decode(f"  {text}\n") == token
    assert "PRIVATE" not in repr(token) and "PRIVATE" not in str(token.public_info())


def payload_of(material) -> dict:
    text = make_token(material).encode()[len("skiff1.") :]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: None, "not a skiff token (expected a string starting with 'skiff1.')"),
        (lambda p: "hello", "not a skiff token"),
        (lambda p: "skiff1.***", "damaged"),
        (lambda p: "skiff1." + base64.urlsafe_b64encode(b"[1]").decode(), "not a JSON object"),
        (lambda p: raw_token(dict(p, v=2)), "version 2 is not supported"),
        (lambda p: raw_token({k: v for k, v in p.items() if k != "key"}), "field 'key' is missing"),
        (lambda p: raw_token(dict(p, site="East!")), "site: 'East!' is not a valid site name"),
        (lambda p: raw_token(dict(p, endpoints=[])), "lists no endpoints"),
        (lambda p: raw_token(dict(p, endpoints=[{"host": "h", "port": 0}])), "port: 0 is out"),
        (lambda p: raw_token(dict(p, cert="not pem")), "not valid PEM"),
        (lambda p: raw_token(dict(p, ca="not pem")), "CA certificate in it is not valid PEM"),
    ],
)
def test_malformed_tokens_fail_clearly_without_quoting(material, mutate, message):
    text = mutate(payload_of(material))
    with pytest.raises(SkiffError) as err:
        decode(text)
    assert err.value.field == "token"
    assert message in err.value.message
    assert "issue one with skiff.fleet.token at the site that accepts links" in err.value.message
    assert "PRIVATE" not in str(err.value) and "skiff1.ey" not in str(err.value)


def test_token_signed_by_another_ca_is_refused(material):
    other = pki.create_ca("other")
    token = make_token(material, ca=other.cert_pem.decode())
    with pytest.raises(SkiffError, match="not signed by the CA in the token"):
        decode(token.encode())


def test_key_of_another_cert_is_refused(material):
    ca, _issued = material
    stranger = pki.issue_client_cert(ca, "x")
    with pytest.raises(SkiffError, match="key does not match"):
        decode(make_token(material, key=stranger.key_pem.decode()).encode())


# -- the token module's logic ------------------------------------------------


def tparams(east, **kw) -> TokenParams:
    return TokenParams(**dict(dict(site="east", name="west", base_dir=east.base_dir), **kw))


def test_issue_once_then_read_back(services, east):
    check = run_token(tparams(east), True, **services)
    assert check.changed and "token" not in check.values
    folder = SitePaths.for_site(east.base_dir, "east").token_dir("west")
    assert not folder.exists()
    first = run_token(tparams(east), False, **services)
    assert first.changed and first.actions == [
        "issue token 'west'",
        "accept links only with the client certificates of the tokens kept",
    ]
    token = decode(first.values["token"])
    assert token.site == "east" and token.name == "west"
    assert token.endpoints == [{"host": "127.0.0.1", "port": 55671}]
    for name in ("tls.key", "token.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    info = first.values["token_info"]
    assert info["name"] == "west" and "key" not in info
    assert "PRIVATE" not in json.dumps(first.diff) + json.dumps(info) + json.dumps(first.actions)
    second = run_token(tparams(east), True, **services)
    assert not second.changed and second.values["token"] == first.values["token"]
    assert not run_token(tparams(east), False, **services).changed


def test_reissued_when_endpoints_change(east, services):
    first = run_token(tparams(east), False, **services)
    moved = SiteParams(**dict(vars(east), link_endpoint={"host": "east.example", "port": 55671}))
    run_site(moved, False, **services)
    again = run_token(tparams(east), False, **services)
    assert again.changed and "endpoints changed" in again.actions[0]
    assert again.values["token"] != first.values["token"]
    assert decode(again.values["token"]).endpoints[0]["host"] == "east.example"


def test_reissued_when_expiring(services, east):
    run_token(tparams(east, valid_days=20), False, **services)
    result = run_token(tparams(east), False, **services)
    assert result.changed and "expires within 30 days" in result.actions[0]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert run_token(tparams(east), False, now=later, **services).changed


def test_reissued_when_ca_replaced(east, services):
    run_token(tparams(east), False, **services)
    paths = SitePaths.for_site(east.base_dir, "east")
    paths.ca_key.unlink()
    run_site(east, False, **services)
    result = run_token(tparams(east), False, **services)
    assert "not signed by the current CA" in result.actions[0]


def test_absent(services, east):
    run_token(tparams(east), False, **services)
    assert run_token(tparams(east, state="absent"), True, **services).changed
    assert run_token(tparams(east, state="absent"), False, **services).changed
    assert not run_token(tparams(east, state="absent"), False, **services).changed


def test_site_that_accepts_no_links(tmp_path, services):
    run_site(SiteParams(name="west", base_dir=str(tmp_path), router_python="py"), False, **services)
    with pytest.raises(SkiffError) as err:
        run_token(TokenParams(site="west", name="x", base_dir=str(tmp_path)), False)
    assert str(err.value).startswith("site 'west': token 'x': this site does not accept links")


def test_missing_site(tmp_path):
    with pytest.raises(
        SkiffError, match=r"site 'east': token 'west': no site at .*skiff.fleet.site"
    ):
        run_token(TokenParams(site="east", name="west", base_dir=str(tmp_path)), True)


# -- properties ---------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

site_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.ip_addresses().map(str), st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True)
)
endpoints = st.lists(
    st.fixed_dictionaries({"host": hosts, "port": st.integers(1, 65535)}), min_size=1, max_size=3
)


@settings(max_examples=50, deadline=None)
@given(site=site_names, name=site_names, eps=endpoints)
def test_round_trip_property(material, site, name, eps):
    token = make_token(material, site=site, name=name, endpoints=eps)
    assert decode(token.encode()) == token


@settings(max_examples=200, deadline=None)
@given(
    text=st.one_of(
        st.text(),
        st.text().map(lambda t: "skiff1." + t),
        st.binary().map(lambda b: "skiff1." + base64.urlsafe_b64encode(b).decode()),
    )
)
def test_garbage_fails_only_with_a_clear_error(text):
    with pytest.raises(SkiffError) as err:
        decode(text)
    assert err.value.field == "token"
    assert "issue one with skiff.fleet.token" in err.value.message
    if len(text) > 12:
        assert text not in str(err.value)


def config_of(east) -> dict:
    return json.loads(SitePaths.for_site(east.base_dir, "east").config.read_text())


def test_the_router_accepts_exactly_the_certificates_of_the_tokens_kept(east, services, fleet):
    paths = SitePaths.for_site(east.base_dir, "east")
    west = decode(run_token(tparams(east), False, **services).values["token"])
    north = decode(run_token(tparams(east, name="north"), False, **services).values["token"])

    def fingerprint(token, following=False):
        pem = token.next_cert if following else token.cert
        return pki.describe(pem.encode())["sha256_fingerprint"]

    # Each token's certificate and the next one (its router renews the link with it).
    listed_north = [
        {"name": "north", "sha256": fingerprint(north)},
        {"name": "north", "sha256": fingerprint(north, following=True)},
    ]
    assert config_of(east)["link_clients"] == [
        *listed_north,
        {"name": "west", "sha256": fingerprint(west)},
        {"name": "west", "sha256": fingerprint(west, following=True)},
    ]
    assert fleet[paths.root].calls.count("reload") == 2
    # Deleting a token revokes it: check mode predicts it, the run writes and reloads.
    check = run_token(tparams(east, state="absent"), True, **services)
    assert check.actions[-1] == "accept links only with the client certificates of the tokens kept"
    assert check.diff["after"]["link_clients"] == listed_north
    assert len(config_of(east)["link_clients"]) == 4
    gone = run_token(tparams(east, state="absent"), False, **services)
    assert gone.actions == [
        "remove token 'west' (its certificate no longer links here)",
        "accept links only with the client certificates of the tokens kept",
    ]
    assert config_of(east)["link_clients"] == listed_north
    assert fleet[paths.root].calls.count("reload") == 3
    # Read back: nothing to write.
    assert not run_token(tparams(east, name="north"), False, **services).changed


def test_a_reissued_token_keeps_its_previous_certificate_for_a_day(east, services):
    short = run_token(tparams(east, valid_days=20), False, **services)  # re-issued next run
    first = decode(short.values["token"])
    now = datetime.datetime.now(datetime.UTC)
    second = decode(run_token(tparams(east), False, now=now, **services).values["token"])
    old, new, old_next, new_next = (
        pki.describe(pem.encode())["sha256_fingerprint"]
        for pem in (first.cert, second.cert, first.next_cert, second.next_cert)
    )
    grace = int((now + datetime.timedelta(days=1)).timestamp())
    # Both previous certificates link a day: the dialer may hold either.
    assert config_of(east)["link_clients"] == [
        {"name": "west", "sha256": new},
        {"name": "west", "sha256": new_next},
        {"name": "west", "sha256": old, "not_after": grace},
        {"name": "west", "sha256": old_next, "not_after": grace},
    ]
    # A run after the grace period drops the superseded certificates.
    after = now + datetime.timedelta(days=2)
    result = run_token(tparams(east), False, now=after, **services)
    assert result.actions == ["accept links only with the client certificates of the tokens kept"]
    assert config_of(east)["link_clients"] == [
        {"name": "west", "sha256": new},
        {"name": "west", "sha256": new_next},
    ]


def test_rotate_before_issues_again_once_and_keeps_the_old_certificate_a_day(east, services):
    """skiff_rotate: a token issued before the rotation time is issued again (the
    previous certificate still links for a day, so the dialer's make-before-break
    has time); a later run with the same time keeps the new one; `now` rotates."""
    first = run_token(tparams(east), False, **services)
    time.sleep(1.1)  # the rotation time has whole seconds: one after the issue
    at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    check = run_token(tparams(east, rotate_before=at), True, **services)
    assert check.changed and "issued before the rotation time" in check.actions[0]
    rotated = run_token(tparams(east, rotate_before=at), False, **services)
    assert rotated.changed and rotated.values["token"] != first.values["token"]
    old = first.values["token_info"]["sha256_fingerprint"]
    assert [c["sha256"] for c in config_of(east)["link_clients"]][2] == old
    later = run_token(tparams(east, rotate_before=at), False, **services)
    assert not later.changed and later.values["token"] == rotated.values["token"]
    assert run_token(tparams(east, rotate_before="now"), False, **services).changed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tomorrow", "neither 'now' nor an ISO 8601 time"),
        ("2026-12-04T09:00:00", "no time zone"),
        ("2999-01-01T00:00:00Z", "is in the future"),
    ],
)
def test_bad_rotate_before_names_the_field(east, services, value, message):
    with pytest.raises(SkiffError) as err:
        run_token(tparams(east, rotate_before=value), False, **services)
    assert "rotate_before" in str(err.value)
    assert message in err.value.message


def test_routers_per_token_reach_the_router_and_survive_a_reissue(east, services):
    """`routers`: how many routers of the dialing site may hold its token at once
    (a kubernetes site's replicas and surge). Kept in token.json: a call that does not
    name the token keeps it; the router's list carries it."""
    first = run_token(tparams(east), False, **services)
    assert "routers" not in config_of(east)["link_clients"][0]
    check = run_token(tparams(east, routers={"west": 3}), True, **services)
    assert (
        check.changed and check.actions[0] == "let 3 routers of site 'west' hold its token at once"
    )
    assert "routers" not in config_of(east)["link_clients"][0]
    more = run_token(tparams(east, routers={"west": 3}), False, **services)
    assert more.changed and more.values["token"] == first.values["token"]  # not re-issued
    assert more.diff["before"]["routers"] == 1 and more.diff["after"]["routers"] == 3
    assert config_of(east)["link_clients"][0]["routers"] == 3
    assert not run_token(tparams(east, routers={"west": 3}), False, **services).changed
    assert not run_token(tparams(east), False, **services).changed  # not named: kept
    rotated = run_token(tparams(east, rotate_before="now"), False, **services)
    assert rotated.values["token"] != first.values["token"]
    assert [c.get("routers") for c in config_of(east)["link_clients"]] == [3, 3, 3, 3]
    assert run_token(tparams(east, routers={"west": 1}), False, **services).changed
    assert "routers" not in config_of(east)["link_clients"][0]
    for bad in (0, 18, True, "2"):
        with pytest.raises(SkiffError, match=r"routers of 'west': must be an integer 1..17"):
            run_token(tparams(east, routers={"west": bad}), False, **services)


# -- renewal without a playbook run: each token carries its next certificate --------------


def test_a_token_carries_its_next_certificate_for_the_same_key(east, services):
    token = decode(run_token(tparams(east), False, **services).values["token"])
    current, following = (pki.describe(pem.encode()) for pem in (token.cert, token.next_cert))
    assert current["subject"] == following["subject"]
    expires = datetime.datetime.fromisoformat(current["not_after"])
    starts = datetime.datetime.fromisoformat(following["not_before"])
    assert expires - starts == pki.RENEW_BEFORE  # the router switches 30 days ahead
    assert pki.successor_problem(token.cert.encode(), token.next_cert.encode(),
                                 token.ca.encode()) is None  # fmt: skip
    # A next certificate for another key is refused when the token is read.
    ca_dir = SitePaths.for_site(east.base_dir, "east").root / "ca"
    ca = pki.Issued((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes())
    other = pki.issue_client_cert(ca, "west")
    forged = dataclasses.replace(token, next_cert=other.cert_pem.decode()).encode()
    with pytest.raises(SkiffError, match="its next certificate is not for the same key"):
        decode(forged)


def test_a_token_kept_from_before_gets_its_next_certificate(east, services):
    first = decode(run_token(tparams(east), False, **services).values["token"])
    info = SitePaths.for_site(east.base_dir, "east").token_dir("west") / "token.json"
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items()
                                if k != "successor"}))  # fmt: skip
    check = run_token(tparams(east), True, **services)
    assert check.changed and check.actions[0].startswith(
        "issue the next certificate of token 'west' (the dialing router renews its link"
    )
    done = run_token(tparams(east), False, **services)
    token = decode(done.values["token"])
    assert token.cert == first.cert and token.key == first.key and token.next_cert
    assert token.next_cert != first.next_cert
    assert len(config_of(east)["link_clients"]) == 2
    assert not run_token(tparams(east), False, **services).changed


def test_near_expiry_the_next_certificate_becomes_the_token_and_gets_one_of_its_own(east, services):
    """What the dialing router did on its own 30 days ahead, the next run records: the
    token's next certificate is its certificate now (same key), with a new next one;
    the old certificate links until it expires, for a router that has not switched."""
    first = decode(run_token(tparams(east), False, **services).values["token"])
    late = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=345)
    renewed = run_token(tparams(east), False, now=late, **services)
    assert renewed.actions[0] == (
        "renew token 'west' with its next certificate (the previous one: expires within 30 days)"
    )
    token = decode(renewed.values["token"])
    assert token.cert == first.next_cert and token.key == first.key
    assert token.next_cert not in ("", first.next_cert)

    def fp(pem):
        return pki.describe(pem.encode())["sha256_fingerprint"]

    expires = datetime.datetime.fromisoformat(pki.describe(first.cert.encode())["not_after"])
    assert config_of(east)["link_clients"] == [
        {"name": "west", "sha256": fp(token.cert)},
        {"name": "west", "sha256": fp(token.next_cert)},
        {"name": "west", "sha256": fp(first.cert), "not_after": int(expires.timestamp())},
    ]
    assert not run_token(tparams(east), False, now=late, **services).changed
