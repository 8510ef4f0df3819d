"""List forms and skiff.fleet.reconcile: one check, one write, one reload per site, none if converged."""

from __future__ import annotations

import json
import stat

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.link import LinkParams, run_link
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    CONNECTOR,
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.site_config import (
    SiteConfigParams,
    run_reconcile,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token


@pytest.fixture
def sites(tmp_path, services):
    """east and south accept links; west dials both. Returns (west paths, {site: token})."""
    base = str(tmp_path)
    for name, port in (("east", 55671), ("south", 55672)):
        run_site(
            SiteParams(
                name=name,
                base_dir=base,
                router_python="py",
                link_access=True,
                link_endpoint={"host": "127.0.0.1", "port": port},
                admin_port=port - 40000,
            ),
            False,
            **services,
        )
    run_site(SiteParams(name="west", base_dir=base, router_python="py"), False, **services)
    tokens = {
        name: run_token(
            TokenParams(site=name, name="west", base_dir=base), False, **services
        ).values["token"]
        for name in ("east", "south")
    }
    return SitePaths(tmp_path / "west"), tokens


def config(paths) -> dict:
    return json.loads(paths.config.read_text())


def counts(fleet, paths) -> tuple[int, int, int]:
    """(check-config runs, reloads, status reads) of the site's router so far."""
    platform = fleet[paths.root]
    return (
        platform.calls.count("check_config"),
        platform.calls.count("reload"),
        platform.status_reads,
    )


def everything(paths, tokens, **kw) -> SiteConfigParams:
    values = dict(
        site="west",
        base_dir=str(paths.root.parent),
        links=({"token": tokens["east"], "cost": 1}, {"token": tokens["south"], "cost": 4}),
        listeners=({"name": "backend", "port": 18080}, {"name": "db", "port": 15432}),
        connectors=({"name": "cache", "host": "127.0.0.1", "port": 6379},),
        prune=True,
    )
    values.update(kw)
    return SiteConfigParams(**values)


def test_reconcile_four_steps_with_one_check_one_write_one_reload(sites, services, fleet):
    west, tokens = sites
    before = counts(fleet, west)
    check = run_reconcile(everything(west, tokens), True, **services)
    assert check.changed
    assert check.actions[:5] == [
        "add link 'east' (to site 'east', cost 1, endpoints 127.0.0.1:55671)",
        "add link 'south' (to site 'south', cost 4, endpoints 127.0.0.1:55672)",
        "add listener 'backend' (routing key 'backend', 127.0.0.1:18080)",
        "add listener 'db' (routing key 'db', 127.0.0.1:15432)",
        "add connector 'cache' (routing key 'cache', 127.0.0.1:6379)",
    ]
    assert "write the credentials of link 'east' from the token" in check.actions
    assert counts(fleet, west) == before
    assert not west.links_dir.exists()
    assert {c["section"] for c in check.values["changes"]} == {"links", "listeners", "connectors"}

    applied = run_reconcile(everything(west, tokens), False, **services)
    assert applied.changed
    checks, reloads, _reads = counts(fleet, west)
    assert (checks - before[0], reloads - before[1]) == (1, 1), "one validation, one reload"
    cfg = config(west)
    assert [e["name"] for e in cfg["links"]] == ["east", "south"]
    assert [e["name"] for e in cfg["listeners"]] == ["backend", "db"]
    assert [e["name"] for e in cfg["connectors"]] == ["cache"]
    assert stat.S_IMODE((west.link_dir("south") / "tls.key").stat().st_mode) == 0o600
    assert applied.values["links"] == cfg["links"]
    everything_shown = json.dumps(applied.as_module_result())
    assert tokens["east"] not in everything_shown and "PRIVATE KEY" not in everything_shown

    # Converged: no check-config, no write, no reload, no status read.
    settled = counts(fleet, west)
    calls = list(fleet[west.root].calls)
    mtime = west.config.stat().st_mtime_ns
    assert not run_reconcile(everything(west, tokens), True, **services).changed
    again = run_reconcile(everything(west, tokens), False, **services)
    assert not again.changed and again.actions == []
    assert counts(fleet, west) == settled
    assert fleet[west.root].calls == calls
    assert west.config.stat().st_mtime_ns == mtime


def test_reconcile_prunes_links_with_their_credentials_and_services(sites, services, fleet):
    west, tokens = sites
    run_reconcile(everything(west, tokens), False, **services)
    before = counts(fleet, west)
    fewer = everything(
        west,
        tokens,
        links=({"token": tokens["east"], "cost": 1},),
        listeners=({"name": "backend", "port": 18080},),
        connectors=(),
    )
    done = run_reconcile(fewer, False, **services)
    assert done.actions[:4] == [
        "remove link 'south'",
        "remove listener 'db'",
        "remove connector 'cache'",
        "remove the credentials of link 'south'",
    ]
    assert counts(fleet, west)[1] - before[1] == 1
    assert not west.link_dir("south").exists() and west.link_dir("east").exists()
    cfg = config(west)
    assert "connectors" not in cfg and [e["name"] for e in cfg["links"]] == ["east"]


def test_reconcile_without_prune_and_lists_left_out_keeps_entries(sites, services):
    west, tokens = sites
    run_reconcile(everything(west, tokens), False, **services)
    only = SiteConfigParams(
        site="west",
        base_dir=str(west.root.parent),
        listeners=({"name": "extra", "port": 18099}, {"name": "db", "state": "absent"}),
    )
    done = run_reconcile(only, False, **services)
    assert done.actions[:2] == [
        "remove listener 'db'",
        "add listener 'extra' (routing key 'extra', 127.0.0.1:18099)",
    ]
    cfg = config(west)
    assert [e["name"] for e in cfg["listeners"]] == ["backend", "extra"]
    assert len(cfg["links"]) == 2 and len(cfg["connectors"]) == 1
    assert set(done.values) == {"changes", "listeners"}


def test_check_mode_link_without_token_is_predicted_and_apply_refuses(sites, services, fleet):
    west, tokens = sites
    params = everything(
        west, tokens, links=({"token": tokens["east"]}, {"name": "later", "peer": "later"})
    )
    check = run_reconcile(params, True, **services)
    assert (
        "add link 'later' (to site 'later', cost 1; its token is issued during the run)"
        in check.actions
    )
    later = next(c for c in check.values["changes"] if c["name"] == "later")
    assert later == {
        "section": "links",
        "action": "add",
        "name": "later",
        "before": None,
        "after": {"name": "later", "peer": "later", "cost": 1},
        "pending": True,
    }
    config_before = west.config.read_bytes()
    with pytest.raises(SkiffError) as err:
        run_reconcile(params, False, **services)
    assert str(err.value).startswith(
        "site 'west': link 'later': token: no token from site 'later': it failed earlier"
    )
    assert west.config.read_bytes() == config_before


def test_failed_reload_restores_config_and_every_credential(sites, services, fleet):
    west, tokens = sites
    fleet[west.root].reject_reloads = True
    before = west.config.read_bytes()
    with pytest.raises(SkiffError, match="previous config was restored"):
        run_reconcile(everything(west, tokens), False, **services)
    assert west.config.read_bytes() == before
    for name in ("east", "south"):
        assert not (west.link_dir(name) / "tls.key").exists()


def test_a_listener_that_cannot_bind_fails_the_whole_change(sites, services, fleet):
    west, tokens = sites
    fleet[west.root].busy_ports.add(15432)
    before = west.config.read_bytes()
    with pytest.raises(SkiffError) as err:
        run_reconcile(everything(west, tokens), False, **services)
    assert "site 'west': listener 'db': cannot listen on 127.0.0.1:15432" in str(err.value)
    assert west.config.read_bytes() == before


def test_bad_item_names_site_kind_and_field_and_writes_nothing(sites, services):
    west, tokens = sites
    before = west.config.read_bytes()
    bad = everything(west, tokens, connectors=({"name": "cache", "port": 6379},))
    with pytest.raises(SkiffError) as err:
        run_reconcile(bad, False, **services)
    assert str(err.value) == (
        "site 'west': connector 'cache': host: is required when state is present"
    )
    assert west.config.read_bytes() == before
    assert not west.links_dir.exists()


def test_listener_list_form_four_steps(sites, services, fleet):
    west, _tokens = sites
    params = ServiceParams(
        site="west",
        base_dir=str(west.root.parent),
        items=({"name": "a", "port": 1001}, {"name": "b", "port": 1002, "distribution": "closest"}),
    )
    assert run_service(LISTENER, params, True, **services).changed
    before = counts(fleet, west)
    applied = run_service(LISTENER, params, False, **services)
    assert applied.changed and [e["name"] for e in applied.values["listeners"]] == ["a", "b"]
    after = counts(fleet, west)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert not run_service(LISTENER, params, True, **services).changed
    assert not run_service(LISTENER, params, False, **services).changed
    assert counts(fleet, west) == after


def test_connector_list_form_prune_and_single_form_still_works(sites, services):
    west, _tokens = sites
    base = str(west.root.parent)
    one = ServiceParams(site="west", base_dir=base, name="db", host="h", port=5432)
    single = run_service(CONNECTOR, one, False, **services).values
    assert single["connector"] == {"name": "db", "routing_key": "db", "host": "h", "port": 5432}
    assert [(c["action"], c["name"]) for c in single["changes"]] == [("add", "db")]
    listed = ServiceParams(
        site="west",
        base_dir=base,
        items=({"name": "cache", "host": "h", "port": 6379},),
        prune=True,
    )
    done = run_service(CONNECTOR, listed, False, **services)
    assert done.actions[:2] == [
        "remove connector 'db'",
        "add connector 'cache' (routing key 'cache', h:6379)",
    ]
    assert [e["name"] for e in config(west)["connectors"]] == ["cache"]


def test_link_list_form_one_reload_for_two_links_and_prune(sites, services, fleet):
    west, tokens = sites
    base = str(west.root.parent)
    both = LinkParams(
        site="west",
        base_dir=base,
        items=({"token": tokens["east"]}, {"token": tokens["south"], "cost": 2}),
    )
    assert run_link(both, True, **services).changed
    before = counts(fleet, west)
    done = run_link(both, False, **services)
    assert [e["name"] for e in done.values["links"]] == ["east", "south"]
    assert counts(fleet, west)[1] - before[1] == 1
    assert not run_link(both, True, **services).changed
    assert not run_link(both, False, **services).changed
    only_east = LinkParams(
        site="west", base_dir=base, items=({"token": tokens["east"]},), prune=True
    )
    pruned = run_link(only_east, False, **services)
    assert pruned.actions[:2] == [
        "remove link 'south'",
        "remove the credentials of link 'south'",
    ]
    assert not west.link_dir("south").exists()
    assert repr(both).count("skiff1.") == 0


def test_reconcile_never_re_points_a_link_at_another_site(sites, services):
    west, tokens = sites
    run_reconcile(everything(west, tokens), False, **services)
    before = config(west)
    swapped = ({"name": "east", "token": tokens["south"]}, {"token": tokens["east"]})
    with pytest.raises(SkiffError, match="link 'east': token: this link leads to site 'east'"):
        run_reconcile(everything(west, tokens, links=swapped), False, **services)
    assert config(west) == before


def test_a_second_run_waits_for_the_first_and_keeps_its_change(sites, services):
    """Two runs at once used to read the same config and lose each other's change."""
    import threading

    from ansible_collections.skiff.fleet.plugins.module_utils.store import site_lock

    west, _tokens = sites
    add_db = SiteConfigParams(
        site="west", base_dir=str(west.root.parent), listeners=({"name": "db", "port": 15432},)
    )
    finished = threading.Event()
    errors: list[BaseException] = []

    def second_run() -> None:
        try:
            run_reconcile(add_db, False, **services)
        except BaseException as exc:
            errors.append(exc)
        finished.set()

    with site_lock(west):  # the first run, still changing the site
        worker = threading.Thread(target=second_run)
        worker.start()
        assert not finished.wait(0.5)
        assert "listeners" not in config(west)
        # What the first run writes while it holds the lock survives the second.
        first = config(west)
        first["listeners"] = [
            {"name": "web", "routing_key": "web", "host": "127.0.0.1", "port": 18080}
        ]
        west.config.write_text(json.dumps(first))
    worker.join(10)
    assert finished.is_set() and not errors, errors
    assert sorted(x["name"] for x in config(west)["listeners"]) == ["db", "web"]
    assert (west.lock.stat().st_mode & 0o777) == 0o600


def test_a_run_that_cannot_get_the_site_says_so(sites):
    from ansible_collections.skiff.fleet.plugins.module_utils.store import site_lock

    west, _tokens = sites
    with (
        site_lock(west),
        pytest.raises(SkiffError, match="another run has been changing"),
        site_lock(west, timeout=0.3),
    ):
        pass
