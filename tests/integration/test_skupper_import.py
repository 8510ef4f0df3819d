"""A Skupper v2 network, imported with scripts/skupper-import, runs under skiff and carries bytes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest
import yaml
from fleet_harness import (
    REPO,
    EchoServer,
    echo_through,
    free_ports,
    router_pids,
    run_playbook,
    write_inventory,
)

pytestmark = pytest.mark.integration


def skupper_files(tmp_path, ports) -> list:
    link_port, backend, listen = ports
    hub = [
        {
            "apiVersion": "skupper.io/v2alpha1",
            "kind": "Site",
            "metadata": {"name": "hub"},
            "spec": {"linkAccess": "default"},
            "status": {
                "endpoints": [{"name": "inter-router", "host": "127.0.0.1", "port": str(link_port)}]
            },
        },
        {
            "apiVersion": "skupper.io/v2alpha1",
            "kind": "AccessGrant",
            "metadata": {"name": "grant"},
            "spec": {"redemptionsAllowed": 2},
            "status": {"url": "https://127.0.0.1:9090/3f2d"},
        },
    ]
    link = {
        "apiVersion": "skupper.io/v2alpha1",
        "kind": "Link",
        "metadata": {"name": "to-hub"},
        "spec": {
            "cost": 1,
            "endpoints": [{"name": "inter-router", "host": "127.0.0.1", "port": str(link_port)}],
        },
    }
    app = [
        {"apiVersion": "skupper.io/v2alpha1", "kind": "Site", "metadata": {"name": "app"}},
        link,
        {
            "apiVersion": "skupper.io/v2alpha1",
            "kind": "Connector",
            "metadata": {"name": "echo"},
            "spec": {"routingKey": "echo", "host": "127.0.0.1", "port": backend},
        },
    ]
    client = [
        {"apiVersion": "skupper.io/v2alpha1", "kind": "Site", "metadata": {"name": "client"}},
        {
            "apiVersion": "skupper.io/v2alpha1",
            "kind": "AccessToken",
            "metadata": {"name": "token"},
            "spec": {"url": "https://127.0.0.1:9090/3f2d", "code": "secret", "ca": "x"},
        },
        {
            "apiVersion": "skupper.io/v2alpha1",
            "kind": "Listener",
            "metadata": {"name": "echo"},
            "spec": {"routingKey": "echo", "host": "127.0.0.1", "port": listen},
        },
    ]
    paths = []
    for name, docs in (("hub", hub), ("app", app), ("client", client)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        paths.append(path)
    return paths


def test_imported_skupper_network_converges_and_carries_bytes(tmp_path) -> None:
    link_port, backend, listen, *admin = free_ports(6)
    files = skupper_files(tmp_path, (link_port, backend, listen))
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "skupper-import"),
            "--platform",
            "local",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    hosts = yaml.safe_load(done.stdout)["skiff_sites"]["hosts"]
    assert hosts["client"]["skiff_links"] == [{"to": "hub", "cost": 1}]
    # Three sites on one machine need their own admin ports: the one thing Skupper has no word for.
    for host, port in zip(("hub", "app", "client"), admin, strict=True):
        hosts[host]["skiff_admin_port"] = port
    base_dir = tmp_path / "sites"
    inventory = write_inventory(tmp_path / "hosts.yml", hosts, base_dir)
    echo = EchoServer(backend)
    try:
        run = run_playbook(inventory, "site.yml")
        assert run.returncode == 0, run.output[-4000:]
        payload = os.urandom(256 * 1024)
        answer = echo_through(listen, payload)
        assert hashlib.sha256(answer).hexdigest() == hashlib.sha256(payload).hexdigest()
    finally:
        run_playbook(inventory, "teardown.yml")
        for pid in router_pids(base_dir):
            os.kill(pid, signal.SIGTERM)
        echo.close()
