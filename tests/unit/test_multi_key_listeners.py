"""Multi-key listeners on the Ansible side: the module logic writes what the router
reads, bad input names the field, the fleet checks count a listener as served
when any of its keys is, and the words agree with the router and the role."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.options import LISTENER_ITEM
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths
from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    fleet_findings,
    fleet_problems,
)
from skiff_router import config as router_config

ROLE_SPECS = yaml.safe_load(
    (
        Path(__file__).resolve().parents[2] / "roles" / "skiff" / "meta" / "argument_specs.yml"
    ).read_text()
)["argument_specs"]["main"]["options"]

FAILOVER = ({"key": "db-primary"}, {"key": "db-standby"})


@pytest.fixture
def site(tmp_path, services):
    run_site(SiteParams(name="west", base_dir=str(tmp_path), router_python="py"), False, **services)
    return SitePaths(tmp_path / "west")


def listener(paths, **kw) -> ServiceParams:
    values = dict(site="west", base_dir=str(paths.root.parent), name="db", port=15432)
    values.update(kw)
    return ServiceParams(**values)


def test_multi_key_listener_four_steps_and_router_reads_it(site, services, fleet):
    wanted = listener(site, routing_keys=FAILOVER, strategy="priority")
    check = run_service(LISTENER, wanted, True, **services)
    assert check.changed
    assert check.actions[0] == (
        "add listener 'db' (routing key 'db-primary, db-standby', 127.0.0.1:15432)"
    )
    entry = {
        "name": "db",
        "host": "127.0.0.1",
        "port": 15432,
        "routing_keys": [{"key": "db-primary"}, {"key": "db-standby"}],
    }
    assert check.diff["after"] == {"listeners": [entry]}
    applied = run_service(LISTENER, wanted, False, **services)
    assert applied.changed and fleet[site.root].calls[-1] == "reload"
    written = json.loads(site.config.read_text())
    assert written["listeners"] == [entry]
    # What the module writes is what the router runs.
    lc = router_config.validate(written, site.root).listeners[0]
    assert lc.key_names() == ("db-primary", "db-standby")
    assert lc.strategy is router_config.Strategy.PRIORITY
    assert not run_service(LISTENER, wanted, True, **services).changed
    assert not run_service(LISTENER, wanted, False, **services).changed

    weighted = listener(
        site,
        routing_keys=({"key": "db-primary", "weight": 3}, {"key": "db-standby", "weight": 1}),
        strategy="weighted",
    )
    changed = run_service(LISTENER, weighted, False, **services)
    assert changed.changed
    entry = json.loads(site.config.read_text())["listeners"][0]
    assert entry["routing_keys"] == [{"key": "db-primary", "weight": 3}, {"key": "db-standby"}]
    assert entry["strategy"] == "weighted"
    lc = router_config.validate(json.loads(site.config.read_text()), site.root).listeners[0]
    assert lc.routing_keys == (
        router_config.KeyWeight("db-primary", 3),
        router_config.KeyWeight("db-standby", 1),
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(routing_keys=()), "listener 'db': routing_keys: must be a non-empty list"),
        (
            dict(routing_keys=({"key": "a"}, {"key": "a"})),
            "listener 'db': routing_keys[1].key: 'a' is listed twice",
        ),
        (
            dict(routing_keys=({"key": "a", "weight": 0},)),
            "listener 'db': routing_keys[0].weight: must be 1 to 1000, got 0",
        ),
        (
            dict(routing_keys=({"key": "a", "weight": "2"},)),
            "listener 'db': routing_keys[0].weight: must be a positive integer, got '2'",
        ),
        (
            dict(routing_keys=FAILOVER, routing_key="db"),
            "listener 'db': routing_keys: give routing_key or routing_keys, not both",
        ),
        (dict(strategy="weighted"), "listener 'db': strategy: needs routing_keys"),
        (dict(routing_keys=FAILOVER, strategy="random"), "strategy: must be one of"),
    ],
)
def test_bad_input_names_site_listener_and_field(site, services, overrides, message):
    before = site.config.read_bytes()
    with pytest.raises(SkiffError) as err:
        run_service(LISTENER, listener(site, **overrides), False, **services)
    assert message in str(err.value)
    assert str(err.value).startswith("site 'west'")
    assert site.config.read_bytes() == before


# -- the fleet checks ------------------------------------------------------------------------

LOCAL = {"ansible_connection": "local"}
FLEET = {
    "east": {
        **LOCAL,
        "skiff_admin_port": 9191,
        "skiff_link_access": True,
        "skiff_link_endpoint": {"host": "127.0.0.1", "port": 55671},
        "skiff_connectors": [{"name": "db-primary", "host": "127.0.0.1", "port": 5432}],
    },
    "west": {
        **LOCAL,
        "skiff_admin_port": 9192,
        "skiff_links": [{"to": "east"}],
        "skiff_listeners": [
            {"name": "db", "port": 15432, "routing_keys": list(FAILOVER), "strategy": "priority"}
        ],
    },
}


def test_multi_key_listener_is_served_if_any_key_is() -> None:
    assert fleet_problems(FLEET, list(FLEET)) == []
    assert fleet_findings(FLEET, list(FLEET)) == []
    unserved = copy.deepcopy(FLEET)
    unserved["east"]["skiff_connectors"] = [{"name": "other", "host": "127.0.0.1", "port": 1}]
    found = fleet_findings(unserved, list(unserved))
    assert [(x.host, x.check, x.field) for x in found if x.check == "unserved-listener"] == [
        ("west", "unserved-listener", "skiff_listeners[0].routing_keys")
    ]


@pytest.mark.parametrize(
    ("listener_vars", "problem"),
    [
        ({"routing_keys": []}, "skiff_listeners[0].routing_keys: must be a non-empty list"),
        (
            {"routing_keys": [{"key": "a"}, {"key": "a"}]},
            "skiff_listeners[0].routing_keys[1].key: 'a' is listed twice",
        ),
        (
            {"routing_keys": [{"key": "a", "weight": -1}]},
            "skiff_listeners[0].routing_keys[0].weight: must be 1 to 1000",
        ),
        (
            {"routing_keys": [{"key": "a"}], "strategy": "fastest"},
            "skiff_listeners[0].strategy: must be priority or weighted",
        ),
        ({"strategy": "weighted"}, "skiff_listeners[0].strategy: needs routing_keys"),
    ],
)
def test_inventory_problems(listener_vars, problem) -> None:
    fleet = copy.deepcopy(FLEET)
    fleet["west"]["skiff_listeners"] = [{"name": "db", "port": 15432, **listener_vars}]
    problems = fleet_problems(fleet, list(fleet))
    assert any(problem in p for p in problems), problems


# -- one fact, one place ---------------------------------------------------------------------


def test_words_agree_with_router_role_and_module() -> None:
    assert vocabulary.STRATEGIES == router_config.STRATEGIES
    assert vocabulary.WEIGHT_MAX == router_config.MAX_WEIGHT
    role = ROLE_SPECS["skiff_listeners"]["options"]
    assert role["strategy"]["choices"] == list(vocabulary.STRATEGIES)
    assert role["strategy"]["default"] == vocabulary.DEFAULT_STRATEGY
    assert role["routing_keys"]["options"]["weight"]["default"] == vocabulary.DEFAULT_WEIGHT
    assert LISTENER_ITEM["strategy"]["choices"] == list(vocabulary.STRATEGIES)
    assert LISTENER_ITEM["routing_keys"]["options"]["weight"]["default"] == 1
    for weight in (0, vocabulary.WEIGHT_MAX + 1, True, "1"):
        ours = vocabulary.routing_keys_problem([{"key": "a", "weight": weight}])
        try:
            router_config.validate(
                {
                    "site": "west",
                    "listeners": [
                        {
                            "name": "a",
                            "host": "127.0.0.1",
                            "port": 1,
                            "routing_keys": [{"key": "a", "weight": weight}],
                        }
                    ],
                }
            )
            theirs = None
        except router_config.ConfigError as exc:
            theirs = exc.errors
        assert (ours is None) == (theirs is None), (weight, ours, theirs)


# -- application TLS: paths written as the router reads them ------------------------------------


def test_tls_paths_are_written_for_the_router(site, services, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "app.crt"
    key_file = tmp_path / "app.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    wanted = listener(site, routing_key="db", tls={"cert": str(cert_file), "key": str(key_file)})
    result = run_service(LISTENER, wanted, False, **services)
    assert result.changed
    written = json.loads(site.config.read_text())
    assert written["listeners"][0]["tls"] == {"cert": str(cert_file), "key": str(key_file)}
    assert "PRIVATE KEY" not in json.dumps(result.diff) + json.dumps(result.values)
    lc = router_config.validate(written, site.root).listeners[0]
    assert lc.tls == router_config.ListenerTls(str(cert_file), str(key_file))
    # The key given as the certificate: the router's check names the listener and field.
    written["listeners"][0]["tls"]["cert"] = str(key_file)
    with pytest.raises(router_config.ConfigError) as err:
        router_config.validate(written, site.root)
    assert any(
        line.startswith("listeners[0].tls.cert: listener 'db': ") for line in err.value.lines()
    )
