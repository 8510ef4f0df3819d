"""Skupper v2 YAML -> skiff inventory, with Skupper example files written for the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.skiff.fleet.plugins.module_utils.skupper import (
    SkupperImportError,
    convert,
)
from ansible_collections.skiff.fleet.plugins.module_utils.topology import fleet_problems

# Multi-document YAML bundles, as kubectl writes them; named *.bundle because
# ansible-test's yamllint wants one document per *.yaml file.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "skupper"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "skupper-import"


def bundle(name: str) -> tuple[str, list]:
    return name, list(yaml.safe_load_all((FIXTURES / name).read_text()))


def test_three_kubernetes_and_vm_sites_become_one_inventory():
    done = convert([bundle("west.bundle"), bundle("east.bundle"), bundle("north.bundle")])
    sites = done.inventory["skiff_sites"]
    assert sites["vars"] == {"skiff_platform": "kubernetes"}
    assert sites["hosts"] == {
        "west": {
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "203.0.113.10", "port": 55671},
            "skiff_kube_link_access": "loadbalancer",
            "skiff_log_level": "warning",
            "skiff_listeners": [{"name": "backend", "routing_key": "backend", "port": 8080}],
        },
        "east": {
            # Its connector selects pods: left out, with a note on what to do.
            # From the AccessToken, matched to west's AccessGrant by its URL.
            "skiff_links": [{"to": "west", "cost": 2}],
        },
        "north": {
            "skiff_router_mode": "edge",
            "skiff_connectors": [
                {"name": "db", "routing_key": "postgres", "port": 5432, "host": "127.0.0.1"}
            ],
            "skiff_listeners": [
                {"name": "backend", "routing_key": "backend", "port": 18080, "host": "0.0.0.0"}
            ],
            # From the Link, matched to west by its inter-router endpoint.
            "skiff_links": [{"to": "west", "cost": 3}],
        },
    }
    notes = "\n".join(done.notes)
    assert "west.bundle document 4: v1/ConfigMap is not a skupper.io/v2alpha1" in notes
    assert (
        "Site 'north' (namespace 'north.bundle:north', north.bundle): ha is not carried over"
        in notes
    )
    assert (
        "Connector 'db' (namespace 'north.bundle:north', north.bundle): tlsCredentials is not carried over"
        in notes
    )
    assert "skiff issues its own tokens" in notes
    assert (
        "Connector 'backend' (namespace 'east', east.bundle): selects pods ('app=backend'), "
        "which a skiff connector does not" in notes
    )
    assert "annotate the Service in front of those pods with skiff.io/expose" in notes
    assert "Site 'west' (namespace 'west', west.bundle): set skiff_kube_image" in notes
    # Nothing secret is copied: token codes, CA and TLS credential names stay behind.
    dumped = yaml.safe_dump(done.inventory)
    for secret in ("2Gr8tKjZp7NhQw5XvLm4", "BEGIN CERTIFICATE", "link-west", "db-tls"):
        assert secret not in dumped


def test_linux_platform_keeps_addresses_and_names_what_needs_a_hand():
    done = convert(
        [bundle("west.bundle"), bundle("east.bundle"), bundle("north.bundle")], platform="systemd"
    )
    hosts = done.inventory["skiff_sites"]["hosts"]
    # A Service name is no address to bind on a Linux host: the default is used.
    assert hosts["west"]["skiff_listeners"] == [
        {"name": "backend", "routing_key": "backend", "port": 8080}
    ]
    assert "skiff_kube_link_access" not in hosts["west"]
    # A connector that selects pods has no host: left out, said so.
    assert "skiff_connectors" not in hosts["east"]
    notes = "\n".join(done.notes)
    assert "Connector 'backend' (namespace 'east', east.bundle): no host (it selects pods" in notes
    # With the connector gone, the import's own fleet checks speak up.
    assert (
        "after import: host 'west': skiff_listeners[0].routing_key: no connector in the fleet "
        "serves routing key 'backend'" in notes
    )


def test_the_local_inventory_passes_the_fleet_checks():
    done = convert(
        [bundle("west.bundle"), bundle("east.bundle"), bundle("north.bundle")], platform="local"
    )
    hosts = {
        h: dict(v, skiff_platform="local")
        for h, v in done.inventory["skiff_sites"]["hosts"].items()
    }
    assert fleet_problems(hosts, list(hosts)) == []


def test_endpoint_given_for_a_site_whose_status_has_none():
    docs = [
        {
            "apiVersion": "skupper.io/v2alpha1",
            "kind": "Site",
            "metadata": {"name": "hub"},
            "spec": {"linkAccess": "default"},
        },
    ]
    bare = convert([("hub.yaml", docs)], platform="local")
    assert "set skiff_link_endpoint on host 'hub'" in "\n".join(bare.notes)
    given = convert(
        [("hub.yaml", docs)],
        platform="local",
        endpoints={"hub": {"host": "hub.example", "port": "55671"}},
    )
    assert given.inventory["skiff_sites"]["hosts"]["hub"]["skiff_link_endpoint"] == {
        "host": "hub.example",
        "port": 55671,
    }


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([], "input: no Site document found"),
        (
            [{"apiVersion": "skupper.io/v2alpha1", "kind": "Site", "metadata": {"name": "West_1"}}],
            "Site 'West_1' (namespace 'bad.yaml:West_1', bad.yaml): metadata.name: 'West_1' is not a valid skiff site name",
        ),
        (
            [
                {
                    "apiVersion": "skupper.io/v2alpha1",
                    "kind": "Site",
                    "metadata": {"name": "a", "namespace": "n"},
                },
                {
                    "apiVersion": "skupper.io/v2alpha1",
                    "kind": "Site",
                    "metadata": {"name": "b", "namespace": "n"},
                },
            ],
            "a second Site in namespace 'n' (the first is 'a'); Skupper runs one Site per namespace",
        ),
        (
            [
                {"apiVersion": "skupper.io/v2alpha1", "kind": "Site", "metadata": {"name": "a"}},
                {
                    "apiVersion": "skupper.io/v2alpha1",
                    "kind": "Listener",
                    "metadata": {"name": "l"},
                    "spec": {"routingKey": "k", "port": 70000},
                },
            ],
            "Listener 'l' (namespace 'bad.yaml:a', bad.yaml): spec.port: 70000 is not a port",
        ),
        (
            [
                {"apiVersion": "skupper.io/v2alpha1", "kind": "Site", "metadata": {"name": "a"}},
                {
                    "apiVersion": "skupper.io/v2alpha1",
                    "kind": "Link",
                    "metadata": {"name": "x"},
                    "spec": {
                        "endpoints": [
                            {"name": "inter-router", "host": "198.51.100.1", "port": "55671"}
                        ]
                    },
                },
            ],
            "Link 'x' (namespace 'bad.yaml:a', bad.yaml): none of its endpoints (198.51.100.1:55671) is a known site's link endpoint",
        ),
        (
            [
                {
                    "apiVersion": "skupper.io/v2alpha1",
                    "kind": "Site",
                    "metadata": {"name": "a", "namespace": "one"},
                },
                {
                    "apiVersion": "skupper.io/v2alpha1",
                    "kind": "Connector",
                    "metadata": {"name": "c", "namespace": "two"},
                    "spec": {"routingKey": "k", "host": "h", "port": 1},
                },
            ],
            "Connector 'c' (namespace 'two', bad.yaml): no Site in namespace 'two' to attach it to",
        ),
    ],
    ids=["no-site", "bad-name", "two-sites", "bad-port", "unknown-link-target", "orphan"],
)
def test_bad_input_names_the_document_and_the_field(docs, message):
    with pytest.raises(SkupperImportError) as err:
        convert([("bad.yaml", docs)], platform="local")
    assert message in str(err.value)


def test_script_writes_the_inventory_and_notes(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--platform",
            "local",
            *(str(FIXTURES / f) for f in ("west.bundle", "east.bundle", "north.bundle")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    inventory = yaml.safe_load(done.stdout)
    assert sorted(inventory["skiff_sites"]["hosts"]) == ["east", "north", "west"]
    assert "note: " in done.stderr
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--endpoint", "nonsense", str(FIXTURES / "west.bundle")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "expected SITE=HOST:PORT" in bad.stderr
