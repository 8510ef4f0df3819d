from __future__ import annotations

import datetime
import json
import stat
import time

import pytest
from cryptography import x509

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths


def params(tmp_path, **overrides) -> SiteParams:
    values = dict(name="east", base_dir=str(tmp_path), router_python="/usr/bin/python3")
    values.update(overrides)
    return SiteParams(**values)


ACCEPTING = dict(link_access=True, link_endpoint={"host": "127.0.0.1", "port": 55671})


def test_check_mode_predicts_and_writes_nothing(tmp_path, services):
    result = run_site(params(tmp_path, **ACCEPTING), True, **services)
    assert result.changed
    assert "create the site CA" in result.actions
    assert "start the router" in result.actions
    assert result.diff["before"] == {"config": {}, "metadata": {}}
    assert result.diff["after"]["config"]["link_access"]["port"] == 55671
    assert list(tmp_path.iterdir()) == []


def test_create_then_idempotent(tmp_path, services, fleet):
    p = params(tmp_path, **ACCEPTING)
    first = run_site(p, False, **services)
    assert first.changed
    paths = SitePaths(tmp_path / "east")
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700
    for key in (paths.ca_key, paths.server_key, paths.admin_token):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    config = json.loads(paths.config.read_text())
    assert config == {
        "site": "east",
        "log_level": "info",
        "admin": {"host": "127.0.0.1", "port": 9191, "token_file": "admin/token"},
        "link_access": {
            "host": "0.0.0.0",
            "port": 55671,
            "ca": "ca/ca.crt",
            "cert": "tls/server.crt",
            "key": "tls/server.key",
        },
        "state_dir": str(paths.root / "state"),
    }
    meta = json.loads(paths.metadata.read_text())
    assert meta["link_endpoints"] == [{"host": "127.0.0.1", "port": 55671}]
    assert fleet[paths.root].calls == ["check_config", "start"]
    assert first.values["ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert first.values["admin_url"] == "http://127.0.0.1:9191"
    assert first.values["admin_token_file"] == str(paths.admin_token)
    assert "create the admin token" in first.actions

    assert not run_site(p, True, **services).changed
    again = run_site(p, False, **services)
    assert not again.changed, again.actions
    assert again.diff["before"] == again.diff["after"]
    assert fleet[paths.root].calls == ["check_config", "start"]


def test_a_lost_or_loosened_admin_token_is_replaced_without_a_reload(tmp_path, services, fleet):
    p = params(tmp_path)
    run_site(p, False, **services)
    paths = SitePaths(tmp_path / "east")
    first = paths.admin_token.read_bytes()
    for spoil, reason in (
        (lambda: paths.admin_token.chmod(0o644), "mode 0644 let others read it"),
        (lambda: paths.admin_token.write_text("short"), "shorter than 16 characters"),
        (paths.admin_token.unlink, None),
    ):
        spoil()
        check = run_site(p, True, **services)
        wanted = f"replace the admin token ({reason})" if reason else "create the admin token"
        assert check.actions == [wanted]
        result = run_site(p, False, **services)
        assert result.actions == [wanted]
        token = paths.admin_token.read_bytes()
        assert token != first and len(token.strip()) >= 32
        assert stat.S_IMODE(paths.admin_token.stat().st_mode) == 0o600
        first = token
    # The config names the same file throughout: no reload, no restart.
    assert fleet[paths.root].calls == ["check_config", "start"]


def test_loosened_key_and_directory_modes_are_repaired(tmp_path, services, fleet):
    p = params(tmp_path, **ACCEPTING)
    run_site(p, False, **services)
    paths = SitePaths(tmp_path / "east")
    paths.ca_key.chmod(0o644)
    paths.server_key.chmod(0o640)
    paths.tls_dir.chmod(0o755)
    paths.server_cert.chmod(0o644)  # public: left as it is
    check = run_site(p, True, **services)
    assert check.actions == [
        "restrict the mode of 3 secret paths others may read (ca/ca.key, tls, tls/server.key)"
    ]
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o644  # check mode: untouched
    assert run_site(p, False, **services).actions == check.actions
    for path, mode in ((paths.ca_key, 0o600), (paths.server_key, 0o600), (paths.tls_dir, 0o700)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    # Stricter than wanted is the owner's choice, not drift.
    paths.server_key.chmod(0o400)
    assert not run_site(p, False, **services).changed
    assert fleet[paths.root].calls == ["check_config", "start"]


def test_keeps_sections_owned_by_other_modules(tmp_path, services):
    run_site(params(tmp_path), False, **services)
    paths = SitePaths(tmp_path / "east")
    config = json.loads(paths.config.read_text())
    config["listeners"] = [{"name": "b", "routing_key": "b", "host": "127.0.0.1", "port": 1}]
    config["links"] = [{"name": "west", "peer": "west", "cost": 1, "endpoints": []}]
    paths.config.write_text(json.dumps(config))
    result = run_site(params(tmp_path, log_level="debug"), False, **services)
    assert result.changed
    after = json.loads(paths.config.read_text())
    assert after["log_level"] == "debug"
    assert after["listeners"] == config["listeners"]
    assert after["links"] == config["links"]
    assert "listeners" not in result.diff["after"]["config"]


def test_config_change_reloads_running_router(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    result = run_site(params(tmp_path, log_level="warning"), False, **services)
    assert "reload the router" in result.actions
    assert fleet[tmp_path / "east"].calls[-1] == "reload"
    assert result.diff["before"]["config"]["log_level"] == "info"
    assert result.diff["after"]["config"]["log_level"] == "warning"


def test_stopped_router_is_started(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    fleet[tmp_path / "east"].running = False
    result = run_site(params(tmp_path), False, **services)
    assert result.actions == ["start the router"]


def test_drift_is_reloaded(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    fleet[tmp_path / "east"].in_force = b"{}"
    result = run_site(params(tmp_path), False, **services)
    assert result.actions == ["reload the router (it does not run the config on disk)"]


def test_endpoint_change_reissues_server_cert_and_reloads(tmp_path, services, fleet):
    run_site(params(tmp_path, **ACCEPTING), False, **services)
    paths = SitePaths(tmp_path / "east")
    ca_before = paths.ca_cert.read_bytes()
    moved = dict(link_access=True, link_endpoint={"host": "east.example", "port": 55671})
    result = run_site(params(tmp_path, **moved), False, **services)
    assert any("SANs differ" in a for a in result.actions)
    # The router re-reads changed TLS files on reload: no restart, no dropped flows.
    assert "reload the router" in result.actions
    assert paths.ca_cert.read_bytes() == ca_before
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["east.example"]
    assert fleet[paths.root].calls[-1] == "reload"
    assert "stop" not in fleet[paths.root].calls


def test_rotate_before_reissues_the_server_cert_once_and_reloads(tmp_path, services, fleet):
    """skiff_rotate: the server certificate issued before the rotation time is issued
    again under the same CA and the router reloads (links up stay); the same time on
    a later run changes nothing."""
    run_site(params(tmp_path, **ACCEPTING), False, **services)
    paths = SitePaths(tmp_path / "east")
    ca_before, cert_before = paths.ca_cert.read_bytes(), paths.server_cert.read_bytes()
    time.sleep(1.1)  # the rotation time has whole seconds: one after the issue
    at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rotating = params(tmp_path, rotate_before=at, **ACCEPTING)
    result = run_site(rotating, False, **services)
    assert any("issued before the rotation time" in a for a in result.actions)
    assert "reload the router" in result.actions and "stop" not in fleet[paths.root].calls
    assert paths.ca_cert.read_bytes() == ca_before
    assert paths.server_cert.read_bytes() != cert_before
    assert not run_site(rotating, True, **services).changed
    assert not run_site(rotating, False, **services).changed
    with pytest.raises(SkiffError, match="rotate_before: 'soon' is neither"):
        run_site(params(tmp_path, rotate_before="soon", **ACCEPTING), False, **services)
    # The CA too, on its own option: a new CA, and a server certificate it signed.
    ca_rotating = params(tmp_path, rotate_ca_before=at, **ACCEPTING)
    result = run_site(ca_rotating, False, **services)
    assert any(
        a.startswith("replace the site CA (issued before the rotation") for a in result.actions
    )
    assert any("(new CA)" in a for a in result.actions)
    assert paths.ca_cert.read_bytes() != ca_before
    assert not run_site(ca_rotating, False, **services).changed


def test_failed_restart_brings_back_the_previous_config(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    paths = SitePaths(tmp_path / "east")
    before = paths.config.read_bytes()
    fleet[paths.root].dies_on = '"debug"'
    # A new router_python forces a restart; the new config kills the router.
    with pytest.raises(SkiffError, match="the router runs the previous config again"):
        run_site(params(tmp_path, log_level="debug", router_python="py2"), False, **services)
    assert paths.config.read_bytes() == before
    assert fleet[paths.root].running
    assert fleet[paths.root].in_force == before


def test_rejected_config_is_not_written(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    paths = SitePaths(tmp_path / "east")
    before = paths.config.read_bytes()
    fleet[paths.root].check_problems = ["admin.port: out of range"]
    with pytest.raises(SkiffError) as err:
        run_site(params(tmp_path, log_level="debug"), False, **services)
    assert str(err.value).startswith("site 'east': router.json: the router rejects the new config")
    assert paths.config.read_bytes() == before
    assert not [p for p in paths.root.iterdir() if p.name.startswith(".")]


def test_failed_reload_restores_previous_config(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    paths = SitePaths(tmp_path / "east")
    before = paths.config.read_bytes()
    fleet[paths.root].reject_reloads = True
    with pytest.raises(SkiffError, match=r"rejected the new config.*previous config was restored"):
        run_site(params(tmp_path, log_level="debug"), False, **services)
    assert paths.config.read_bytes() == before


def test_failed_start_stops_the_router(tmp_path, services, fleet):
    def never_ready(platform, sha, **_kw):
        raise SkiffError("router not ready", site="east")

    services = dict(services, wait=never_ready)
    with pytest.raises(SkiffError, match="not ready"):
        run_site(params(tmp_path), False, **services)
    assert fleet[tmp_path / "east"].calls[-2:] == ["start", "stop"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(name="East"), "name: 'East' is not a valid site name"),
        (dict(admin_port=70000), "site 'east': admin_port: 70000 is out of range (1..65535)"),
        (dict(link_access=True), "link_endpoint: host is required when link_access is true"),
        (
            dict(link_access=True, link_endpoint={"host": "h", "port": 0}),
            "link_endpoint.port: 0 is out of range",
        ),
        (dict(log_level="loud"), "log_level: must be one of"),
        (dict(platform="mars"), "platform: unknown platform 'mars'"),
        (
            dict(link_access=True, link_endpoint={"host": "h", "port": 9191}),
            "admin_port 9191 is also the link port",
        ),
    ],
)
def test_bad_input_is_named(tmp_path, services, overrides, message):
    with pytest.raises(SkiffError) as err:
        run_site(params(tmp_path, **overrides), False, **services)
    assert message in str(err.value)
    assert not (tmp_path / "east").exists()


def test_absent(tmp_path, services, fleet):
    assert not run_site(params(tmp_path, state="absent"), False, **services).changed
    run_site(params(tmp_path), False, **services)
    check = run_site(params(tmp_path, state="absent"), True, **services)
    assert check.changed and check.actions[0] == "stop the router"
    assert (tmp_path / "east").exists()
    result = run_site(params(tmp_path, state="absent"), False, **services)
    assert result.changed
    assert not (tmp_path / "east").exists()
    assert fleet[tmp_path / "east"].calls[-1] == "stop"
    assert result.diff["after"] == {}


def test_starting_to_accept_links_reloads_without_restart(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    result = run_site(params(tmp_path, **ACCEPTING), False, **services)
    assert "reload the router" in result.actions
    assert fleet[tmp_path / "east"].calls[-1] == "reload"
    assert "stop" not in fleet[tmp_path / "east"].calls


def test_edge_mode_is_written_and_interior_stays_implicit(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    paths = SitePaths(tmp_path / "east")
    assert "mode" not in json.loads(paths.config.read_text())
    assert not run_site(params(tmp_path, mode="interior"), False, **services).changed
    edge = run_site(params(tmp_path, mode="edge"), False, **services)
    assert edge.changed and fleet[paths.root].calls[-1] == "reload"
    assert json.loads(paths.config.read_text())["mode"] == "edge"
    assert edge.diff["after"]["config"]["mode"] == "edge"
    with pytest.raises(SkiffError, match="mode: an edge router accepts no links"):
        run_site(params(tmp_path, mode="edge", **ACCEPTING), False, **services)


def test_a_worker_count_is_written_and_a_change_restarts_the_router(tmp_path, services, fleet):
    run_site(params(tmp_path), False, **services)
    paths = SitePaths(tmp_path / "east")
    # Unset: one worker per CPU, left to the router (the key stays out of the file).
    assert "workers" not in json.loads(paths.config.read_text())
    check = run_site(params(tmp_path, workers=4), True, **services)
    assert "restart the router (workers one per CPU -> 4)" in check.actions
    assert check.diff["after"]["config"]["workers"] == 4
    assert fleet[paths.root].calls[-1] == "start"  # check mode restarted nothing
    result = run_site(params(tmp_path, workers=4), False, **services)
    assert fleet[paths.root].calls[-2:] == ["stop", "start"]
    assert json.loads(paths.config.read_text())["workers"] == 4
    assert result.changed
    assert not run_site(params(tmp_path, workers=4), False, **services).changed
    # Other changes still only reload.
    run_site(params(tmp_path, workers=4, log_level="debug"), False, **services)
    assert fleet[paths.root].calls[-1] == "reload"
    for bad in (0, 65):
        with pytest.raises(SkiffError, match="workers: must be from 1 to 64"):
            run_site(params(tmp_path, workers=bad), False, **services)


def test_a_limited_run_never_moves_what_outside_dialers_depend_on(tmp_path, services, fleet):
    run_site(params(tmp_path, **ACCEPTING), False, **services)
    paths = SitePaths(tmp_path / "east")
    before = paths.config.read_bytes()
    moved = dict(link_access=True, link_endpoint={"host": "127.0.0.1", "port": 55672})
    for check_mode in (True, False):
        with pytest.raises(SkiffError) as err:
            run_site(
                params(tmp_path, outside_dialers=("west", "north"), **moved), check_mode, **services
            )
        assert str(err.value) == (
            "site 'east': link_endpoint: this run would move the link endpoint from "
            "127.0.0.1:55671 to 127.0.0.1:55672, which the sites dialing it outside this run "
            "depend on: north, west; add them to the run (--limit) so they get new tokens in it"
        )
    with pytest.raises(SkiffError, match="this run would stop accepting links"):
        run_site(params(tmp_path, outside_dialers=("west",)), False, **services)
    assert paths.config.read_bytes() == before
    assert fleet[paths.root].calls == ["check_config", "start"]
    # Unchanged endpoint: nothing stops a limited run; with every dialer in it, it moves.
    ok = run_site(
        params(tmp_path, outside_dialers=("west",), log_level="debug", **ACCEPTING),
        False,
        **services,
    )
    assert ok.changed
    assert run_site(params(tmp_path, **moved), False, **services).changed


def test_a_link_port_in_use_fails_the_run_and_leaves_nothing_half_up(tmp_path, services, fleet):
    """A new site whose link port is taken used to pass while its router was not ready."""
    paths = SitePaths(tmp_path / "east")
    fleet.factory("fake", paths, None).busy_ports.add(55671)
    with pytest.raises(SkiffError) as err:
        run_site(params(tmp_path, **ACCEPTING), False, **services)
    assert str(err.value) == (
        "site 'east': link_endpoint: cannot accept links on 0.0.0.0:55671 (Address already "
        "in use); choose a free port (link_endpoint.port) or stop what holds it"
    )
    assert fleet[paths.root].calls[-1] == "stop" and not fleet[paths.root].running
    # A running site moved to a taken port: the previous config is back in force.
    fleet[paths.root].busy_ports.clear()
    run_site(params(tmp_path, **ACCEPTING), False, **services)
    before = paths.config.read_bytes()
    fleet[paths.root].busy_ports.add(55672)
    moved = dict(link_access=True, link_endpoint={"host": "127.0.0.1", "port": 55672})
    with pytest.raises(SkiffError, match=r"cannot accept links on 0\.0\.0\.0:55672") as err:
        run_site(params(tmp_path, **moved), False, **services)
    assert "the previous config was restored" in str(err.value)
    assert paths.config.read_bytes() == before
    endpoints = json.loads(paths.metadata.read_text())["link_endpoints"]
    assert endpoints == [{"host": "127.0.0.1", "port": 55671}]
    assert fleet[paths.root].running
