"""Tier 1: the reload diff as a pure function (no sockets, no files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from router_testkit import Ca

from skiff_router.config import Config, ConfigError, validate
from skiff_router.plan import (
    CheckLinkClients,
    ReloadAccessTls,
    ReloadConnectorTls,
    ReloadListenerTls,
    ReplaceDialer,
    RestartAccess,
    RestartAdmin,
    RestartNetwork,
    SetConnectors,
    SetLogLevel,
    SetServices,
    StartDialer,
    StartListener,
    StopDialer,
    StopListener,
    reload_plan,
)

ACCESS = {"host": "0.0.0.0", "port": 55671, "ca": "ca.crt", "cert": "s.crt", "key": "s.key"}


def link(name: str, **kw: Any) -> dict[str, Any]:
    d = {
        "name": name,
        "peer": name,
        "endpoints": [{"host": "127.0.0.1", "port": 55671}],
        "ca": f"/l/{name}/ca.crt",
        "cert": f"/l/{name}/tls.crt",
        "key": f"/l/{name}/tls.key",
    }
    return {**d, **kw}


def listener(name: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"name": name, "routing_key": name, "host": "127.0.0.1", "port": port, **kw}


def connector(name: str, port: int, key: str | None = None) -> dict[str, Any]:
    return {"name": name, "routing_key": key or name, "host": "127.0.0.1", "port": port}


def cfg(**kw: Any) -> Config:
    doc: dict[str, Any] = {
        "site": "west",
        "link_access": ACCESS,
        "links": [link("east"), link("north")],
        "listeners": [listener("web", 8080), listener("db", 5432)],
        "connectors": [connector("api", 9000)],
    }
    doc.update(kw)
    return validate(doc, "/etc/skiff/west")


def test_nothing_changed_nothing_done() -> None:
    assert reload_plan(cfg(), cfg(), set()) == []


def test_listeners_removed_before_added_unchanged_kept() -> None:
    old = cfg()
    new = cfg(listeners=[listener("db", 8080), listener("cache", 6379)])
    ops = reload_plan(old, new, set())
    web, db = old.listeners
    db2, cache = new.listeners
    # "db" moved to web's port: both old ones stop first, then the new ones bind.
    assert ops == [
        StopListener("web"),
        StopListener("db"),
        StartListener(db2),
        StartListener(cache),
        SetServices(frozenset({"db", "cache"}), frozenset({"api"})),
    ]
    del web, db


def test_listener_distribution_change_restarts_only_it() -> None:
    new = cfg(listeners=[listener("web", 8080, distribution="closest"), listener("db", 5432)])
    assert reload_plan(cfg(), new, set()) == [StopListener("web"), StartListener(new.listeners[0])]


def test_connectors_and_services() -> None:
    new = cfg(connectors=[connector("api", 9000), connector("api2", 9001, key="api")])
    # Same routing keys: the advertisement stays, only the connector set changes.
    assert reload_plan(cfg(), new, set()) == [SetConnectors(new.connectors)]
    new = cfg(connectors=[])
    assert reload_plan(cfg(), new, set()) == [
        SetConnectors(()),
        SetServices(frozenset({"web", "db"}), frozenset()),
    ]


def test_links_changed_replaced_new_started_removed_stopped() -> None:
    """A changed link is replaced make-before-break; only a removed one stops."""
    new = cfg(links=[link("east", cost=5), link("south")])
    ops = reload_plan(cfg(), new, set())
    assert ops == [
        StopDialer("north"),
        StartDialer(new.links[1]),
        ReplaceDialer(new.links[0]),
    ]


def test_changed_tls_files_replace_only_their_link_and_keep_access_links() -> None:
    old = cfg()
    ops = reload_plan(old, old, {"/l/north/tls.key"})
    assert ops == [ReplaceDialer(old.links[1])]
    assert reload_plan(old, old, {"/etc/skiff/west/s.crt"}) == [ReloadAccessTls()]
    moved = cfg(link_access={**ACCESS, "port": 55672})
    # Moved: the links up stay until their dialers move too; removed: they close.
    assert reload_plan(old, moved, {"/etc/skiff/west/s.crt"}) == [RestartAccess(keep_links=True)]
    assert reload_plan(old, cfg(link_access=None), set()) == [RestartAccess()]
    assert reload_plan(cfg(link_access=None), old, set()) == [RestartAccess()]


def test_changed_application_tls_files_reload_in_place(tmp_path: Path) -> None:
    """A renewed listener certificate is loaded into the bound listener (no restart,
    its flows stay); a connector's changed CA bundle applies to its new flows."""
    ca = Ca.create("service")
    cert, key = ca.issue("web", server=True)
    files = {"web.crt": cert, "web.key": key, "api-ca.crt": ca.pem}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    web_crt, web_key, api_ca = (str(tmp_path / name) for name in files)
    tls_listener = listener("web", 8080, tls={"cert": web_crt, "key": web_key})
    tls_connector = {**connector("api", 9000), "tls": {"ca": api_ca}}
    old = cfg(listeners=[tls_listener, listener("db", 5432)], connectors=[tls_connector])
    assert reload_plan(old, old, {web_key}) == [ReloadListenerTls("web")]
    assert reload_plan(old, old, {api_ca}) == [ReloadConnectorTls("api")]
    assert reload_plan(old, old, {str(tmp_path / "other.crt")}) == []
    # A listener whose config changed is restarted anyway: no reload on top.
    moved = cfg(
        listeners=[{**tls_listener, "port": 8081}, listener("db", 5432)],
        connectors=[tls_connector],
    )
    ops = reload_plan(old, moved, {web_crt})
    assert ops == [StopListener("web"), StartListener(moved.listeners[0])]


def test_identity_change_restarts_the_network() -> None:
    old = cfg()
    for new in (
        cfg(router_id="west.2"),
        cfg(mode="edge", link_access=None),
        cfg(site="south", links=[]),
    ):
        ops = reload_plan(old, new, set())
        assert ops[-1] == RestartNetwork()
        assert not any(isinstance(op, StopListener | StopDialer | ReplaceDialer) for op in ops)


def test_admin_and_log_level() -> None:
    new = cfg(admin={"port": 9192}, log_level="debug")
    assert reload_plan(cfg(), new, set()) == [SetLogLevel("debug"), RestartAdmin(new.admin, True)]


def test_a_new_admin_token_file_keeps_the_port_open() -> None:
    new = cfg(admin={"token_file": "/etc/skiff/east/admin/token"})
    assert reload_plan(cfg(), new, set()) == [RestartAdmin(new.admin, False)]


def test_a_new_list_of_accepted_clients_checks_the_incoming_links() -> None:
    west = [{"name": "west", "sha256": "a" * 64}]
    assert reload_plan(cfg(), cfg(link_clients=west), set()) == [CheckLinkClients()]
    assert reload_plan(cfg(link_clients=west), cfg(link_clients=[]), set()) == [CheckLinkClients()]
    assert reload_plan(cfg(link_clients=west), cfg(link_clients=west), set()) == []
    # Back to no list: every certificate the CA signed links again; nothing to close.
    assert reload_plan(cfg(link_clients=west), cfg(), set()) == []


def test_a_sibling_certificate_keeps_the_link_port_open() -> None:
    """Who may link is read at each accept: naming the replicas' certificate changes
    no socket, and with a list of accepted clients the open links are checked again."""
    west = [{"name": "west", "sha256": "a" * 64}]
    siblings = {**ACCESS, "sibling_cert": "server/sibling.crt"}
    assert reload_plan(cfg(), cfg(link_access=siblings), set()) == []
    ops = reload_plan(cfg(link_clients=west), cfg(link_access=siblings, link_clients=west), set())
    assert ops == [CheckLinkClients()]
    assert reload_plan(cfg(link_access=siblings), cfg(link_access=siblings), set()) == []
    moved = cfg(link_access={**siblings, "port": 55672})
    assert reload_plan(cfg(link_access=siblings), moved, set()) == [RestartAccess(keep_links=True)]


def test_a_replica_takes_its_router_id_from_the_environment() -> None:
    assert cfg().router_id == "west"
    assert validate({"site": "west"}, "/", "skiff-router-7c9d-x2k4q").router_id == (
        "west.skiff-router-7c9d-x2k4q"
    )
    # A router id the config names wins; a bad suffix is refused, naming the variable.
    named = validate({"site": "west", "router_id": "west.a"}, "/", "pod-1")
    assert named.router_id == "west.a"
    with pytest.raises(ConfigError) as err:
        validate({"site": "west"}, "/", "Pod_1")
    assert err.value.errors[0][0] == "router_id"
    assert "SKIFF_ROUTER_ID_SUFFIX" in err.value.errors[0][1]


def test_link_clients_are_checked() -> None:
    with pytest.raises(ConfigError) as err:
        cfg(
            link_clients=[
                {"name": "w", "sha256": "XYZ"},
                {"name": "w", "sha256": "a" * 64, "not_after": "soon"},
            ]
        )
    assert [p for p, _m in err.value.errors] == [
        "link_clients[0].sha256",
        "link_clients[1].not_after",
    ]
