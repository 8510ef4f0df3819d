"""The pure reconciler: current config + wanted lists -> new config, changes, diff."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.reconcile import Wanted, reconcile
from ansible_collections.skiff.fleet.plugins.module_utils.service import CONNECTOR, LISTENER

SITE = {"site": "west", "admin": {"host": "127.0.0.1", "port": 9192}}


def entry(name, port, key=None, host="127.0.0.1"):
    return {"name": name, "routing_key": key or name, "host": host, "port": port}


def test_nothing_wanted_changes_nothing_and_keeps_other_sections():
    current = dict(SITE, listeners=[entry("a", 1001)], links=[{"name": "east"}])
    done = reconcile(current, {LISTENER: Wanted(present=({"name": "a", "port": 1001},))})
    assert not done.changed and done.actions == []
    assert done.config == current
    assert list(done.config) == ["site", "admin", "links", "listeners"]


def test_add_update_remove_keep_order():
    current = dict(SITE, listeners=[entry("a", 1001), entry("b", 1002), entry("c", 1003)])
    wanted = Wanted(
        present=({"name": "d", "port": 1004}, {"name": "b", "port": 2002}), absent=("a",)
    )
    done = reconcile(current, {LISTENER: wanted})
    assert [(e["name"], e["port"]) for e in done.config["listeners"]] == [
        ("b", 2002),
        ("c", 1003),
        ("d", 1004),
    ]
    # Changes come in the order of the current list, then the additions.
    assert done.actions == [
        "remove listener 'a'",
        "update listener 'b' (routing key 'b', 127.0.0.1:2002)",
        "add listener 'd' (routing key 'd', 127.0.0.1:1004)",
    ]
    assert [(c.action, c.name) for c in done.changes] == [
        ("remove", "a"),
        ("update", "b"),
        ("add", "d"),
    ]
    assert done.diff["before"]["listeners"] == current["listeners"]
    assert done.diff["after"]["listeners"] == done.config["listeners"]
    # The input is not mutated.
    assert current["listeners"][0]["name"] == "a"


def test_prune_removes_what_is_not_named_and_empty_lists_disappear():
    current = dict(SITE, connectors=[entry("a", 1), entry("b", 2)])
    done = reconcile(current, {CONNECTOR: Wanted(prune=True)})
    assert "connectors" not in done.config
    assert done.actions == ["remove connector 'a'", "remove connector 'b'"]
    kept = reconcile(current, {CONNECTOR: Wanted(present=({**entry("b", 2)},), prune=True)})
    assert kept.config["connectors"] == [entry("b", 2)]
    assert kept.actions == ["remove connector 'a'"]


def test_kinds_not_wanted_are_untouched_even_with_prune():
    current = dict(SITE, listeners=[entry("a", 1)], connectors=[entry("c", 2)])
    done = reconcile(current, {LISTENER: Wanted(prune=True)})
    assert done.config["connectors"] == [entry("c", 2)]
    assert "connectors" not in done.diff["before"]


def test_defaults_are_normalized_so_equal_entries_compare_equal():
    current = dict(SITE, listeners=[entry("a", 1001)])
    same = {"name": "a", "port": "1001", "distribution": "balanced", "routing_key": "a"}
    assert not reconcile(current, {LISTENER: Wanted(present=(same,))}).changed
    closest = reconcile(
        current,
        {LISTENER: Wanted(present=({"name": "a", "port": 1001, "distribution": "closest"},))},
    )
    assert closest.config["listeners"][0]["distribution"] == "closest"


def test_pending_entries_are_reported_never_written_never_pruned():
    current = dict(SITE, listeners=[entry("east", 5)])
    done = reconcile(
        current,
        {
            CONNECTOR: Wanted(),
            LISTENER: Wanted(
                pending={
                    "east": ({"name": "east"}, "its token comes later"),
                    "south": ({"name": "south"}, "later"),
                },
                prune=True,
            ),
        },
    )
    assert done.actions == ["add listener 'south' (later)"]
    assert done.changes[0].pending and done.changes[0].after == {"name": "south"}
    assert done.changes[0].as_dict()["pending"] is True
    assert done.config["listeners"] == [entry("east", 5)]


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        (
            Wanted(present=({"name": "a", "port": 1}, {"name": "a", "port": 2})),
            "listener 'a': name: is listed twice",
        ),
        (
            Wanted(present=({"name": "a", "port": 1},), absent=("a",)),
            "listener 'a': state: is listed both",
        ),
        (
            Wanted(present=({"name": "a", "port": 0},)),
            "listener 'a': port: 0 is out of range (1..65535)",
        ),
        (
            Wanted(present=({"name": "a b", "port": 1},)),
            "listener 'a b': name: 'a b' is not a valid name",
        ),
        (Wanted(present=({"name": "a"},)), "listener 'a': port: is required when state is present"),
        (
            Wanted(present=({"name": "a", "port": 1}, {"name": "b", "port": 1, "host": "0.0.0.0"})),
            "listener 'b': port: 0.0.0.0:1 is already used by listener 'a' of this site",
        ),
    ],
    ids=["twice", "present-and-absent", "port", "name", "no-port", "address"],
)
def test_bad_wanted_lists_name_the_entry_and_field(wanted, message):
    with pytest.raises(SkiffError) as err:
        reconcile(SITE, {LISTENER: wanted})
    assert message in str(err.value)


def test_a_section_that_is_not_a_list_is_an_error():
    with pytest.raises(SkiffError, match=r"listeners: the site.s router\.json holds something"):
        reconcile(dict(SITE, listeners={"a": 1}), {LISTENER: Wanted()})


names = st.sampled_from(["a", "b", "c", "d", "e"])
items = st.lists(
    st.tuples(names, st.integers(min_value=1, max_value=6)), unique_by=lambda t: t[0], max_size=5
)


@given(current=items, wanted=items, prune=st.booleans())
def test_reconcile_is_idempotent_and_converges(current, wanted, prune):
    """Applying the result again changes nothing; the wanted entries are all there."""
    config = dict(SITE, connectors=[entry(n, p) for n, p in current]) if current else dict(SITE)
    want = Wanted(
        present=tuple({"name": n, "port": p, "host": "h"} for n, p in wanted), prune=prune
    )
    before = copy.deepcopy(config)
    first = reconcile(config, {CONNECTOR: want})
    assert config == before
    again = reconcile(first.config, {CONNECTOR: want})
    assert not again.changed and again.config == first.config
    got = {e["name"]: e["port"] for e in first.config.get("connectors", [])}
    for n, p in wanted:
        assert got[n] == p
    if prune:
        assert set(got) == {n for n, _unused in wanted}
    else:
        assert set(got) == {n for n, _unused in wanted} | {n for n, _unused in current}
    # Every change is reported once, and only changes are.
    assert len(first.changes) == len({c.name for c in first.changes})
