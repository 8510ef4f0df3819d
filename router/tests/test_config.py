"""Config validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skiff_router.config import (
    Admin,
    ConfigError,
    Endpoint,
    ListenerConfig,
    Overlay,
    load,
    load_overlay,
    merge_overlay,
    overlay_clashes,
    validate,
)

LINK = {
    "name": "east",
    "peer": "east",
    "endpoints": [{"host": "127.0.0.1", "port": 55671}],
    "ca": "links/east/ca.crt",
    "cert": "links/east/tls.crt",
    "key": "links/east/tls.key",
}


def errors(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(data, "/base")
    return info.value.lines()


def test_design_example_is_valid(tmp_path: Path) -> None:
    doc = {
        "site": "east",
        "log_level": "info",
        "admin": {"host": "127.0.0.1", "port": 9191},
        "link_access": {
            "host": "127.0.0.1",
            "port": 55671,
            "ca": "ca/ca.crt",
            "cert": "tls/server.crt",
            "key": "tls/server.key",
        },
        "links": [dict(LINK, cost=1)],
        "listeners": [
            {"name": "backend", "routing_key": "backend", "host": "127.0.0.1", "port": 18080}
        ],
        "connectors": [
            {"name": "backend", "routing_key": "backend", "host": "127.0.0.1", "port": 8080}
        ],
    }
    path = tmp_path / "router.json"
    path.write_text(json.dumps(doc))
    loaded = load(path)
    cfg = loaded.config
    assert cfg.site == "east"
    assert cfg.links[0].endpoints == (Endpoint("127.0.0.1", 55671),)
    # Relative paths resolve against the config file's directory.
    assert cfg.links[0].key == str(tmp_path / "links/east/tls.key")
    assert cfg.link_access is not None and cfg.link_access.ca == str(tmp_path / "ca/ca.crt")
    assert len(loaded.sha256) == 64


def test_yaml_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "site: a1\nlinks:\n  - name: x\n    peer: b\n    endpoints: [{host: h, port: 1}]\n    ca: c\n    cert: c\n    key: k\n"
    )
    cfg = load(path).config
    assert cfg.admin == Admin("127.0.0.1", 9191)
    assert cfg.log_level == "info"
    assert cfg.link_access is None
    assert cfg.links[0].cost == 1
    assert cfg.listeners == () and cfg.connectors == ()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "site: is required"),
        ({"site": "East"}, "site: must match"),
        ({"site": "a", "extra": 1}, "extra: unknown key"),
        ({"site": "a", "log_level": "loud"}, "log_level: must be one of"),
        ({"site": "a", "admin": {"port": 0}}, "admin.port: must be an integer 1..65535"),
        ({"site": "a", "admin": {"port": True}}, "admin.port: must be an integer 1..65535"),
        ({"site": "a", "link_access": {"host": "h", "port": 1}}, "link_access.ca: is required"),
        (
            {
                "site": "a",
                "listeners": [
                    {"name": "x", "routing_key": "k", "host": "h", "port": 1},
                    {"name": "y", "routing_key": "k", "host": "h", "port": 70000},
                ],
            },
            "listeners[1].port: must be an integer 1..65535",
        ),
        (
            {"site": "a", "listeners": [{"name": "x", "routing_key": "", "host": "h", "port": 1}]},
            "listeners[0].routing_key: must be a non-empty string",
        ),
        (
            {
                "site": "a",
                "listeners": [
                    {"name": "x", "routing_key": "k", "host": "h", "port": 1},
                    {"name": "x", "routing_key": "k", "host": "h", "port": 2},
                ],
            },
            "listeners[1].name: duplicate name",
        ),
        (
            {
                "site": "a",
                "listeners": [
                    {"name": "x", "routing_key": "k", "host": "h", "port": 1},
                    {"name": "y", "routing_key": "k", "host": "h", "port": 1},
                ],
            },
            "listeners[1].port: duplicate host and port",
        ),
        (
            {
                "site": "a",
                "connectors": [{"name": "x", "routing_key": "k", "host": "h", "port": 1, "tls": 1}],
            },
            "connectors[0].tls: must be a mapping",
        ),
        ({"site": "a", "links": [dict(LINK, cost=0)]}, "links[0].cost: must be an integer >= 1"),
        (
            {"site": "a", "links": [dict(LINK, endpoints=[])]},
            "links[0].endpoints: must be a non-empty list",
        ),
        (
            {"site": "a", "links": [dict(LINK, endpoints=[{"host": "h"}])]},
            "links[0].endpoints[0].port: is required",
        ),
        (
            {"site": "a", "links": [dict(LINK, peer="Bad!")]},
            "links[0].peer: must be a valid site name",
        ),
        ({"site": "a", "links": [LINK, LINK]}, "links[1].name: duplicate name"),
        ({"site": "a", "links": {"name": "x"}}, "links: must be a list"),
        ([1, 2], "(document): must be a mapping"),
        ({"site": "a", "router_id": "b.1"}, "router_id: must be the site name or"),
        ({"site": "a", "router_id": "a.1.2"}, "router_id: must be the site name or"),
        ({"site": "a", "router_id": "a.Z"}, "router_id: must be the site name or"),
        ({"site": "a", "router_id": ""}, "router_id: must be a non-empty string"),
        ({"site": "a", "overlay": 3}, "overlay: must be a non-empty string"),
    ],
)
def test_errors_carry_field_path(data: Any, expected: str) -> None:
    lines = errors(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_all_errors_reported_at_once() -> None:
    lines = errors({"site": "a", "bogus": 1, "admin": {"port": -1}, "listeners": [{"name": "x"}]})
    assert len(lines) >= 5


def test_config_is_frozen() -> None:
    cfg = validate({"site": "a"})
    with pytest.raises(AttributeError):
        cfg.site = "b"  # type: ignore[misc]


def test_parse_error(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("site: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load(p)


def test_router_id_defaults_to_the_site() -> None:
    assert validate({"site": "east"}).router_id == "east"
    assert validate({"site": "east", "router_id": "east.7f9c2"}).router_id == "east.7f9c2"


LISTENER = {"name": "web", "routing_key": "web", "host": "127.0.0.1", "port": 8080}


def test_overlay_file_schema_and_paths(tmp_path: Path) -> None:
    cfg = validate({"site": "a", "overlay": "run/overlay.json"}, tmp_path)
    assert cfg.overlay == str(tmp_path / "run" / "overlay.json")
    assert validate({"site": "a", "overlay": "/run/skiff/o.json"}).overlay == "/run/skiff/o.json"
    # A missing file is an empty overlay.
    assert load_overlay(str(tmp_path / "missing.json")) == Overlay()
    path = tmp_path / "run" / "overlay.json"
    path.parent.mkdir()
    doc = {"listeners": [LISTENER], "links": [LINK]}
    path.write_text(json.dumps(doc))
    ov = load_overlay(str(path))
    assert ov.counts() == {"listeners": 1, "connectors": 0, "links": 1}
    assert ov.links[0].key == str(path.parent / "links/east/tls.key")
    assert ov.sha256 is not None and len(ov.sha256) == 64
    # The same schema and the same messages as the config's lists.
    path.write_text(json.dumps({"listeners": [dict(LISTENER, port=0)], "site": "x"}))
    with pytest.raises(ConfigError) as info:
        load_overlay(str(path))
    assert info.value.lines() == [
        "site: unknown key",
        "listeners[0].port: must be an integer 1..65535",
    ]
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_overlay(str(path))


def test_overlay_merge_and_clashes() -> None:
    cfg = validate({"site": "a", "listeners": [LISTENER]})
    mine = ListenerConfig("api", "api", "127.0.0.1", 8081)
    ov = Overlay(listeners=(mine,))
    assert overlay_clashes(cfg, ov) == []
    assert merge_overlay(cfg, ov).listeners == (*cfg.listeners, mine)
    same_name = ListenerConfig("web", "other", "127.0.0.1", 9000)
    same_port = ListenerConfig("x", "x", "127.0.0.1", 8080)
    bad = Overlay(listeners=(mine, same_name, same_port))
    assert overlay_clashes(cfg, bad) == [
        ("listeners[1].name", "'web' is a listener of the config"),
        ("listeners[2].port", "127.0.0.1:8080 is used by the config"),
    ]
    # The config wins: clashing overlay entries are left out of the merge.
    assert merge_overlay(cfg, bad).listeners == (*cfg.listeners, mine)
