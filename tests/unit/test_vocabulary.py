"""One fact, one place: the vocabulary agrees with the role, the modules and the router."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.skiff.fleet.plugins.module_utils import platform, topology, vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.options import (
    CONNECTOR_ITEM,
    LINK_ITEM,
    LISTENER_ITEM,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import validate_site_name
from ansible_collections.skiff.fleet.plugins.module_utils.validation import (
    cost,
    object_name,
    port,
    routing_key,
)
from skiff_router import config as router_config

ROLE = Path(__file__).resolve().parents[2] / "roles" / "skiff"
SPECS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"][
    "main"
]["options"]
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def router_errors(data: dict) -> list[tuple[str, str]]:
    try:
        router_config.validate(data)
    except router_config.ConfigError as exc:
        return exc.errors
    return []


# -- the role ---------------------------------------------------------------------------------


def test_role_choices_are_the_vocabulary():
    assert SPECS["skiff_platform"]["choices"] == list(vocabulary.PLATFORMS)
    assert SPECS["skiff_router_mode"]["choices"] == list(vocabulary.ROUTER_MODES)
    assert SPECS["skiff_log_level"]["choices"] == list(vocabulary.LOG_LEVELS)
    distribution = SPECS["skiff_listeners"]["options"]["distribution"]
    assert distribution["choices"] == list(vocabulary.DISTRIBUTIONS)
    assert SPECS["skiff_intended"]["choices"] == list(vocabulary.INTENDED_CHECKS)


def test_role_defaults_are_the_vocabulary():
    documented = {
        "skiff_platform": vocabulary.DEFAULT_PLATFORM,
        "skiff_router_mode": vocabulary.DEFAULT_ROUTER_MODE,
        "skiff_log_level": vocabulary.DEFAULT_LOG_LEVEL,
        "skiff_admin_host": vocabulary.DEFAULT_ADMIN_HOST,
        "skiff_admin_port": vocabulary.DEFAULT_ADMIN_PORT,
        "skiff_link_bind_host": vocabulary.DEFAULT_LINK_BIND_HOST,
    }
    for name, value in documented.items():
        assert SPECS[name]["default"] == value, name
        assert DEFAULTS[name] == value, name
    assert SPECS["skiff_listeners"]["options"]["host"]["default"] == (
        f"{vocabulary.DEFAULT_LISTENER_HOST} ({vocabulary.DEFAULT_KUBE_LISTENER_HOST} with kubernetes)"
    )
    assert DEFAULTS["skiff_listener_default_host"] == (
        f"{{{{ '{vocabulary.DEFAULT_KUBE_LISTENER_HOST}' if skiff_platform == 'kubernetes' "
        f"else '{vocabulary.DEFAULT_LISTENER_HOST}' }}}}"
    )
    assert SPECS["skiff_kube_link_access"]["choices"] == list(vocabulary.KUBE_LINK_ACCESS)
    assert SPECS["skiff_kube_link_access"]["default"] == vocabulary.DEFAULT_KUBE_LINK_ACCESS
    assert DEFAULTS["skiff_kube_link_access"] == vocabulary.DEFAULT_KUBE_LINK_ACCESS
    assert SPECS["skiff_listeners"]["options"]["distribution"]["default"] == (
        vocabulary.DEFAULT_DISTRIBUTION
    )
    assert SPECS["skiff_links"]["options"]["cost"]["default"] == vocabulary.DEFAULT_COST


# -- the modules ------------------------------------------------------------------------------


def test_module_specs_are_the_vocabulary():
    assert LISTENER_ITEM["distribution"]["choices"] == list(vocabulary.DISTRIBUTIONS)
    assert LISTENER_ITEM["distribution"]["default"] == vocabulary.DEFAULT_DISTRIBUTION
    assert LISTENER_ITEM["host"]["default"] == vocabulary.DEFAULT_LISTENER_HOST
    assert LINK_ITEM["cost"]["default"] == vocabulary.DEFAULT_COST
    for item in (LISTENER_ITEM, CONNECTOR_ITEM, LINK_ITEM):
        assert item["state"]["choices"] == list(vocabulary.STATES)
    site = importlib.import_module("ansible_collections.skiff.fleet.plugins.modules.site")
    spec = site.argument_spec()
    assert set(spec["platform"]["choices"]) <= set(vocabulary.PLATFORMS)
    assert spec["log_level"]["choices"] == list(vocabulary.LOG_LEVELS)
    assert spec["mode"]["choices"] == list(vocabulary.ROUTER_MODES)
    assert spec["admin_port"]["default"] == vocabulary.DEFAULT_ADMIN_PORT
    assert spec["admin_host"]["default"] == vocabulary.DEFAULT_ADMIN_HOST
    assert spec["link_bind_host"]["default"] == vocabulary.DEFAULT_LINK_BIND_HOST
    assert spec["link_endpoint"]["options"]["port"]["default"] == vocabulary.DEFAULT_LINK_PORT


def test_platforms_this_version_runs_are_known_to_the_vocabulary():
    assert set(platform.PLATFORMS) <= set(vocabulary.PLATFORMS)
    assert set(topology.PLATFORMS_AVAILABLE) | set(topology.PLATFORMS_PLANNED) == set(
        vocabulary.PLATFORMS
    )


# -- the router -------------------------------------------------------------------------------


def test_router_constants_are_the_vocabulary():
    assert router_config.SITE_RE.pattern == vocabulary.SITE_NAME_PATTERN.pattern
    assert router_config.LOG_LEVELS == vocabulary.LOG_LEVELS
    assert router_config.MODES == vocabulary.ROUTER_MODES
    assert router_config.MAX_WORKERS == vocabulary.MAX_ROUTER_WORKERS
    # The most routers a token may serve (a kubernetes site's replicas and surge).
    most = vocabulary.MAX_KUBE_REPLICAS + vocabulary.KUBE_ROLLOUT_SURGE
    assert most <= router_config.MAX_CREDENTIAL_ROUTERS
    assert router_config.DISTRIBUTIONS == vocabulary.DISTRIBUTIONS
    assert router_config.MAX_GRANT_REDEMPTIONS == vocabulary.MAX_GRANT_REDEMPTIONS
    assert router_config.Admin() == router_config.Admin(
        vocabulary.DEFAULT_ADMIN_HOST, vocabulary.DEFAULT_ADMIN_PORT
    )
    assert router_config.ListenerConfig("a", "a", "h", 1).distribution == (
        vocabulary.DEFAULT_DISTRIBUTION
    )


site_names = st.one_of(
    st.from_regex(vocabulary.SITE_NAME_PATTERN, fullmatch=True),
    st.text(alphabet="abcXYZ019-_. /", min_size=0, max_size=70),
)


@given(name=site_names)
def test_router_and_modules_accept_the_same_site_names(name):
    ours = vocabulary.is_site_name(name)
    try:
        validate_site_name(name)
        modules = True
    except SkiffError:
        modules = False
    router = not any(path == "site" for path, _unused in router_errors({"site": name}))
    assert ours == modules == router, name


@given(value=st.integers(min_value=-10, max_value=70000))
def test_router_and_modules_accept_the_same_ports(value):
    ours = vocabulary.is_port(value)
    try:
        port(value, "port")
        modules = True
    except SkiffError:
        modules = False
    listener = {"name": "a", "routing_key": "a", "host": "127.0.0.1", "port": value}
    router = not router_errors({"site": "s", "listeners": [listener]})
    assert ours == modules == router, value


@pytest.mark.parametrize(
    "value", [0, 1, 2, vocabulary.COST_MAX - 1, vocabulary.COST_MAX, vocabulary.COST_MAX + 1]
)
def test_router_and_modules_accept_the_same_costs(value):
    ours = vocabulary.is_cost(value)
    try:
        cost(value)
        modules = True
    except SkiffError:
        modules = False
    link = {
        "name": "east",
        "peer": "east",
        "cost": value,
        "endpoints": [{"host": "h", "port": 1}],
        "ca": "a",
        "cert": "b",
        "key": "c",
    }
    router = not any(
        p.endswith(".cost") for p, _unused in router_errors({"site": "s", "links": [link]})
    )
    assert ours == modules == router, value


@given(name=st.from_regex(vocabulary.OBJECT_NAME_PATTERN, fullmatch=True))
def test_every_object_name_the_modules_accept_the_router_accepts(name):
    object_name(name, "name")
    entry = {"name": name, "routing_key": name, "host": "127.0.0.1", "port": 1}
    assert router_errors({"site": "s", "listeners": [entry], "connectors": [entry]}) == []


@pytest.mark.parametrize("choice", ["log_level", "mode"])
def test_router_rejects_what_the_vocabulary_does_not_know(choice):
    known = {"log_level": vocabulary.LOG_LEVELS, "mode": vocabulary.ROUTER_MODES}[choice]
    for value in known:
        assert router_errors({"site": "s", choice: value}) == []
    assert router_errors({"site": "s", choice: "other"})


@pytest.mark.parametrize(
    "key",
    [
        "a" * vocabulary.ROUTING_KEY_MAX_BYTES,
        "a" * (vocabulary.ROUTING_KEY_MAX_BYTES + 1),
        "é" * (vocabulary.ROUTING_KEY_MAX_BYTES // 2 + 1),  # 2 bytes each in UTF-8
        "a" * 70_000,  # the key, which broke a site's links
        "with space",
        "tab\there",
        "db",
    ],
)
def test_router_and_modules_bound_routing_keys_alike(key):
    ours = vocabulary.routing_key_problem(key) is None
    try:
        routing_key(key)
        modules = True
    except SkiffError as exc:
        modules = False
        assert str(exc).startswith("routing_key: ")
    weighted = vocabulary.routing_keys_problem([{"key": key}]) is None
    entry = {"name": "a", "routing_key": key, "host": "127.0.0.1", "port": 1}
    multi = {"name": "b", "routing_keys": [{"key": key}], "host": "127.0.0.1", "port": 2}
    errors = router_errors({"site": "s", "connectors": [entry], "listeners": [multi]})
    assert ours == modules == weighted == (not errors), (key[:20], errors)
    if not ours:
        fields = {path for path, _unused in errors}
        assert fields == {"connectors[0].routing_key", "listeners[0].routing_keys[0].key"}


def test_admin_token_length_agrees_with_the_router():
    from skiff_router.config import ADMIN_TOKEN_MIN_LENGTH

    assert ADMIN_TOKEN_MIN_LENGTH == vocabulary.ADMIN_TOKEN_MIN_LENGTH


def test_router_bounds_the_routing_keys_of_a_site_together():
    from skiff_router.config import MAX_ROUTING_KEY, MAX_ROUTING_KEYS_BYTES

    assert MAX_ROUTING_KEY == vocabulary.ROUTING_KEY_MAX_BYTES
    count = MAX_ROUTING_KEYS_BYTES // 200 + 1
    connectors = [
        {"name": f"c{i}", "routing_key": f"{i:04d}" + "k" * 196, "host": "h", "port": 1}
        for i in range(count)
    ]
    errors = router_errors({"site": "s", "connectors": connectors})
    assert errors and errors[0][0] == "listeners" and "of link state" in errors[0][1]
    assert router_errors({"site": "s", "connectors": connectors[:-1]}) == []
