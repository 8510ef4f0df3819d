"""playbooks/site.yml with a kubernetes site in render-only mode beside a local site.

The role wiring end to end: the fleet validation, the site module's kube
settings (connectors by pod selector into the agent's config), a token issued by the local site and a link written into the kube
site's Secret and ConfigMap, listeners as Services, no convergence wait for a
site that runs nothing yet, and a second run that changes nothing (not a byte
of the manifests).
"""

from __future__ import annotations

import json

import pytest
from fleet_harness import free_ports, router_pids, run_playbook, write_inventory

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km

pytestmark = pytest.mark.integration


def test_render_only_site_in_a_fleet(tmp_path):
    base_dir = tmp_path / "sites"
    manifests = tmp_path / "gitops"
    admin, link, backend = free_ports(3)
    hosts = {
        "east": {
            "skiff_admin_port": admin,
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "127.0.0.1", "port": link},
            "skiff_connectors": [{"name": "echo", "host": "127.0.0.1", "port": backend}],
        },
        "shop": {
            "skiff_platform": "kubernetes",
            "skiff_kube_apply": False,
            "skiff_kube_manifests_dir": str(manifests),
            "skiff_kube_image": "registry.example.com/skiff-router:0.1.0",
            "skiff_kube_link_access": "loadbalancer",
            "skiff_link_access": True,
            "skiff_link_endpoint": {"host": "shop.example.com", "port": 443},
            "skiff_links": [{"to": "east"}],
            "skiff_listeners": [{"name": "echo", "port": 8080}],
            "skiff_connectors": [
                {"name": "orders", "host": "orders.shop.svc", "port": 80},
                {"name": "db", "selector": {"matchLabels": {"app": "db"}}, "port": 5432},
            ],
        },
    }
    inventory = write_inventory(tmp_path / "hosts.yml", hosts, base_dir)
    try:
        first = run_playbook(inventory, "site.yml")
        assert first.returncode == 0, first.output[-6000:]
        files = {p: p.read_bytes() for p in manifests.rglob("*.yaml")}
        assert sorted(p.name for p in files) == [
            "shop.yaml", "skiff-admin.yaml", "skiff-ca.yaml", "skiff-links.yaml",
            "skiff-server.yaml",
        ]  # fmt: skip
        documents = km.from_yaml(files[manifests / "shop.yaml"])
        services = [d["metadata"]["name"] for d in documents if d["kind"] == "Service"]
        assert services == ["skiff-link", "echo"]
        config_map = next(d for d in documents if d["kind"] == "ConfigMap")
        config = json.loads(config_map["data"]["router.json"])
        assert config["links"][0]["peer"] == "east"
        assert config["links"][0]["key"] == "/etc/skiff/links/east.tls.key"
        assert config["listeners"] == [
            {"name": "echo", "routing_key": "echo", "host": "0.0.0.0", "port": 8080}
        ]
        assert [c["host"] for c in config["connectors"]] == ["orders.shop.svc"]
        # The connector by pod selector is the agent's, beside the router's config.
        agent = json.loads(config_map["data"]["agent.json"])
        assert agent["connectors"] == [
            {"name": "db", "routing_key": "db", "selector": {"matchLabels": {"app": "db"}},
             "port": 5432}
        ]  # fmt: skip
        links = km.secret_data(
            km.from_yaml((manifests / "shop.secrets" / "skiff-links.yaml").read_bytes())[0]
        )
        assert sorted(links) == ["east.ca.crt", "east.tls.crt", "east.tls.key", "east.tls.next.crt"]
        assert "PRIVATE KEY" not in first.output

        second = run_playbook(inventory, "site.yml")
        assert second.returncode == 0, second.output[-6000:]
        assert second.changed() == {"east": 0, "shop": 0}, second.output[-4000:]
        assert {p: p.read_bytes() for p in manifests.rglob("*.yaml")} == files
    finally:
        done = run_playbook(inventory, "teardown.yml")
        assert done.returncode == 0, done.output[-4000:]
    assert router_pids(base_dir) == []
    assert list(manifests.rglob("*.yaml")) == []
