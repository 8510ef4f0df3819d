"""skiff.fleet.token's list form: a hub's tokens for all its dialers in one call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import decode


@pytest.fixture
def hub(tmp_path, services):
    params = SiteParams(
        name="hub",
        base_dir=str(tmp_path),
        router_python="py",
        link_access=True,
        link_endpoint={"host": "127.0.0.1", "port": 55671},
    )
    run_site(params, False, **services)
    return str(tmp_path)


def test_names_four_steps_and_the_same_tokens_as_one_by_one(hub, services):
    names = ("a", "b", "c")
    params = TokenParams(site="hub", base_dir=hub, names=names)
    check = run_token(params, True, platform_factory=services["platform_factory"])
    assert check.changed and check.values["tokens"] == {}
    assert check.actions == [
        "issue token 'a'",
        "issue token 'b'",
        "issue token 'c'",
        "accept links only with the client certificates of the tokens kept",
    ]
    issued = run_token(params, False, platform_factory=services["platform_factory"])
    assert issued.changed and sorted(issued.values["tokens"]) == list(names)
    for name, token in issued.values["tokens"].items():
        assert decode(token).name == name and decode(token).site == "hub"
    again_check = run_token(params, True, platform_factory=services["platform_factory"])
    again = run_token(params, False, platform_factory=services["platform_factory"])
    assert not again_check.changed and not again.changed
    assert again.values["tokens"] == issued.values["tokens"]
    one = run_token(TokenParams(site="hub", base_dir=hub, name="b"), False, **services)
    assert one.values["token"] == issued.values["tokens"]["b"]
    # The result carries tokens only under `tokens`; facts about them carry no key.
    facts = json.dumps(issued.values["token_info"])
    assert "PRIVATE" not in facts and sorted(issued.values["token_info"]) == list(names)


def test_a_bad_name_in_the_list_is_named_and_nothing_is_issued(hub):
    with pytest.raises(SkiffError) as err:
        run_token(TokenParams(site="hub", base_dir=hub, names=("ok", "no/slash")), False)
    assert "site 'hub': token 'no/slash': name: 'no/slash' is not a valid name" in str(err.value)
    assert not (Path(hub) / "hub" / "tokens" / "ok").exists()


def test_prune_revokes_the_tokens_not_named(hub, services):
    paths = SitePaths.for_site(hub, "hub")
    run_token(TokenParams(site="hub", base_dir=hub, names=("a", "b", "c")), False, **services)
    pruning = TokenParams(site="hub", base_dir=hub, names=("a",), prune=True)
    check = run_token(pruning, True, **services)
    assert check.actions == [
        "remove token 'b' (its certificate no longer links here)",
        "remove token 'c' (its certificate no longer links here)",
        "accept links only with the client certificates of the tokens kept",
    ]
    assert [c["name"] for c in check.diff["after"]["link_clients"]] == ["a", "a"]
    assert sorted(p.name for p in paths.tokens_dir.iterdir()) == ["a", "b", "c"]
    done = run_token(pruning, False, **services)
    assert done.values["removed"] == ["b", "c"] and done.actions == check.actions
    assert sorted(p.name for p in paths.tokens_dir.iterdir()) == ["a"]
    config = json.loads(paths.config.read_text())
    assert [c["name"] for c in config["link_clients"]] == ["a", "a"]
    assert not run_token(pruning, True, **services).changed
    assert not run_token(pruning, False, **services).changed
    # Without prune, tokens not named stay.
    run_token(TokenParams(site="hub", base_dir=hub, names=("a", "d")), False, **services)
    assert sorted(p.name for p in paths.tokens_dir.iterdir()) == ["a", "d"]


def test_a_token_for_a_peer_outside_the_inventory_warns_when_issued_again(hub, services):
    """Nobody in the run hands an outside peer its new token: the re-issue says so,
    with the time its previous certificate stops linking; inventory dialers do not."""
    names = ("west", "partner")
    short = TokenParams(site="hub", names=names, base_dir=hub, valid_days=20, outside=("partner",))
    first = run_token(short, False, **services)
    assert first.warnings == []  # a first issue replaces nothing
    again = TokenParams(site="hub", names=names, base_dir=hub, outside=("partner",))
    check = run_token(again, True, **services)
    (warning,) = check.warnings
    assert warning.startswith(
        "site hub: token 'partner' goes to a peer outside the inventory and would be issued "
        "again (expires within 30 days); its previous certificate links until "
    )
    assert warning.endswith("UTC: hand 'partner' the new token before then")
    applied = run_token(again, False, **services)
    (done,) = applied.warnings
    assert (
        done.replace(" was issued", " would be issued").split(" until ")[0]
        == (warning.split(" until ")[0])
    )
    assert applied.as_module_result()["warnings"] == applied.warnings
    assert "west" not in " ".join(applied.warnings)
    assert not run_token(again, False, **services).warnings  # renewed: quiet again
