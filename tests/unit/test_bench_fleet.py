"""The benchmark fleets and the hub-and-spoke example are valid; per-site work does not grow."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    fleet_findings,
    fleet_problems,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.fleet.topology import SITES_PER_HUB, fleet_hosts


@pytest.mark.parametrize("size", [4, 16, 48])
def test_bench_fleet_passes_every_fleet_check(size):
    hosts = {h: dict(v, ansible_connection="local") for h, v in fleet_hosts(size).items()}
    assert fleet_problems(hosts, list(hosts)) == []
    assert fleet_findings(hosts, list(hosts)) == []


def test_no_hub_serves_more_dialers_as_the_fleet_grows():
    for size in (16, 48):
        dialers = Counter(
            link["to"]
            for host in fleet_hosts(size).values()
            for link in host.get("skiff_links", [])
        )
        assert max(dialers.values()) <= SITES_PER_HUB


def test_hub_spoke_example_inventory_warns_only_where_intended():
    path = Path(__file__).resolve().parents[2] / "inventories" / "hub-spoke" / "hosts.yml"
    group = yaml.safe_load(path.read_text())["skiff_sites"]
    hosts = {h: dict(group["vars"], **v) for h, v in group["hosts"].items()}
    assert fleet_problems(hosts, list(hosts)) == []
    found = fleet_findings(hosts, list(hosts))
    assert [(f.host, f.check, f.intended) for f in found] == [("audit", "unserved-listener", True)]
