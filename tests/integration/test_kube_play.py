"""The `podman kube play` tier: a kubernetes site's rendered manifests as a real pod.

site.yml renders the `kubernetes` site `shop` (render-only mode) beside the
`local` site `east`, which links to it over mutual TLS. The rendered
Deployment, through the documented test-only transform (`kube_play.py`), runs
as a pod of the locally built router image on a podman network of this run;
a backend container on that network serves shop's connector. Real bytes go
both ways (sha256 checked); then a listener is added and a connector changed
in the inventory, the re-rendered ConfigMap reaches the running pod's volume
the way the kubelet syncs it, and the router applies it without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from fleet_harness import EchoServer, echo_through, free_ports, run_playbook, write_inventory
from kube_play import (
    CONTAINERS_CONF,
    LOCK,
    Kubelet,
    admin_headers,
    build_image,
    container_state,
    podman,
    rendered,
    transform,
    untransformed,
    wait_for,
)

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]

# Serves two ports in the backend container: 7000 echoes, 7001 echoes too (the
# connector moves from one to the other; status says which one is in force).
ECHO = """
import socket, threading
def serve(port):
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        conn, _addr = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
threading.Thread(target=serve, args=(7000,), daemon=True).start()
serve(7001)
"""

# Runs inside the router container: a client of one of the pod's listeners.
CLIENT = """
import socket, sys, threading
payload = sys.stdin.buffer.read()
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
def send():
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
while data := conn.recv(65536):
    sys.stdout.buffer.write(data)
"""


def status(port: int, token_file: Path | None = None, headers: dict | None = None) -> dict:
    """/v1/status; a local site's admin token from its token file, a kubernetes site's
    in the given headers (its Secret's, in the header the pod proxy passes on)."""
    headers = dict(headers or {})
    if token_file is not None:
        headers["Authorization"] = "Bearer " + token_file.read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/status", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as answer:
        return answer.read()


def through_pod(container: str, port: int, payload: bytes) -> bytes:
    """A client in the pod's network namespace (the router container's python3)."""
    done = subprocess.run(
        ["podman", "exec", "-i", container, "python3", "-c", CLIENT, str(port)],
        input=payload, capture_output=True, timeout=60, check=True,
        env=dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF)),
    )  # fmt: skip
    return done.stdout


def test_transform_touches_only_what_it_documents(tmp_path):
    spec = km.KubeSite(site="shop", namespace="shop", image="localhost/x:1", link_access=True)
    deployment = km.deployment(spec)
    played = transform(deployment, tmp_path, {"admin": 1001, "link": 1002})
    assert played != deployment
    pod = played["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["router"]
    assert all("hostPath" in v or "emptyDir" in v for v in pod["volumes"])
    assert {p["hostPort"] for p in pod["containers"][0]["ports"]} == {1001, 1002}
    assert untransformed(played, deployment) == deployment
    # The checker itself can fail: any other change survives the round trip.
    played["spec"]["template"]["spec"]["containers"][0]["image"] = "elsewhere/y:2"
    assert untransformed(played, deployment) != deployment


def test_kube_site_as_a_pod_linked_with_a_local_site(tmp_path):
    run = secrets.token_hex(4)
    network, backend = f"skiff-kube-{run}", f"skiff-kube-echo-{run}"
    admin, listener, echo_port, shop_link, shop_admin = free_ports(5)
    manifests, volumes = tmp_path / "gitops", tmp_path / "volumes"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the pod's name (from the Deployment) is fixed
        image = build_image()
        hosts = {
            "east": {
                "skiff_admin_port": admin,
                "skiff_links": [{"to": "shop"}],
                "skiff_listeners": [{"name": "shop-echo", "port": listener}],
                "skiff_connectors": [{"name": "east-echo", "host": "127.0.0.1", "port": echo_port}],
            },
            "shop": {
                "skiff_platform": "kubernetes",
                "skiff_kube_apply": False,
                "skiff_kube_manifests_dir": str(manifests),
                "skiff_kube_image": image,
                "skiff_link_access": True,
                "skiff_link_endpoint": {"host": "127.0.0.1", "port": shop_link},
                "skiff_listeners": [{"name": "east-echo", "port": 8080}],
                "skiff_connectors": [{"name": "shop-echo", "host": backend, "port": 7000}],
            },
        }
        inventory = write_inventory(tmp_path / "hosts.yml", hosts, tmp_path / "sites")
        east_token = tmp_path / "sites" / "east" / "admin" / "token"
        echo = EchoServer(echo_port)
        kubelet = Kubelet(volumes)
        play_file = tmp_path / "played.yaml"
        try:
            # shop first: east's run waits until it reaches shop, so shop must run by then
            # (as with GitOps: the manifests are deployed before the sites linking to it converge).
            first = run_playbook(inventory, "site.yml", "--limit", "shop")
            assert first.returncode == 0, first.output[-6000:]
            deployment, data = rendered(manifests, "shop")
            for name, files in data.items():
                kubelet.project(name, files, 0o444 if name == km.ROUTER else 0o440)
            played = transform(deployment, volumes, {"admin": shop_admin, "link": shop_link})
            assert untransformed(played, deployment) == deployment
            play_file.write_text(yaml.safe_dump(played, sort_keys=False))

            podman("network", "create", network)
            podman("run", "-d", "--name", backend, "--network", network, "--user", "10001",
                   "localhost/skiff-test-router-base:bookworm", "python3", "-c", ECHO)  # fmt: skip
            out = podman("kube", "play", "--network", network, str(play_file), timeout=300).stdout
            pod_id = out.split("Pod:")[1].split()[0]
            names = podman("ps", "--format", "{{.Names}}", "--filter", f"pod={pod_id}").stdout
            router = next(name for name in names.split() if name.endswith("-router"))
            # podman runs no probes without systemd: what they ask, asked here.
            for probe, answer in (("healthz", b"ok"), ("readyz", b"ready")):
                got = wait_for(lambda probe=probe: http_get(shop_admin, probe), f"/{probe}")
                assert got.strip() == answer
            east_run = run_playbook(inventory, "site.yml")
            assert east_run.returncode == 0, east_run.output[-6000:]
            assert rendered(manifests, "shop")[0] == deployment
            config = json.loads(data[km.ROUTER][km.CONFIG_KEY])
            # The pod's admin API needs the token of its Secret (mounted 0440 for the
            # pod's group); the probes' endpoints stay open.
            shop_token = admin_headers(manifests, "shop")
            with pytest.raises(urllib.error.HTTPError) as refused:
                status(shop_admin)
            assert refused.value.code == 401
            shop_status = wait_for(
                lambda: (s := status(shop_admin, headers=shop_token))["ready"]
                and s["routing_keys"].get("east-echo", {}).get("reachable")
                and s,
                "shop's router ready and east's service reachable",
            )
            assert (
                shop_status["config"]["sha256"]
                == hashlib.sha256(data[km.ROUTER][km.CONFIG_KEY]).hexdigest()
            )
            assert shop_status["site"] == config["site"] == "shop"
            # The pod is a router of its own, named from its pod name (downward API),
            # and east's wait took shop's router `shop.<pod>` for site shop.
            pod_name = podman("pod", "inspect", pod_id, "--format", "{{.Name}}").stdout.strip()
            assert shop_status["router_id"] == f"shop.{pod_name}"
            # Every worker of east's router dials shop: one link from each, all of site east.
            assert {link["peer"] for link in shop_status["links"]} == {"east"}
            wait_for(
                lambda: status(admin, east_token)["routing_keys"]
                .get("shop-echo", {})
                .get("reachable"),
                "east sees shop's service",
            )

            # Both ways, real bytes: east's client -> shop's pod -> backend container,
            # and a client in the pod -> east's connector on this machine.
            payload = secrets.token_bytes(3 * 1024 * 1024 + 17)
            digest = hashlib.sha256(payload).hexdigest()
            assert hashlib.sha256(echo_through(listener, payload)).hexdigest() == digest
            assert hashlib.sha256(through_pod(router, 8080, payload)).hexdigest() == digest

            # A listener added and a connector changed: same pod template, config in
            # force in the running container, no restart.
            before = container_state(router)
            shop = hosts["shop"]
            shop["skiff_listeners"].append({"name": "east-echo-2", "routing_key": "east-echo",
                                            "port": 8081})  # fmt: skip
            shop["skiff_connectors"][0]["port"] = 7001
            inventory = write_inventory(tmp_path / "hosts.yml", hosts, tmp_path / "sites")
            second = run_playbook(inventory, "site.yml")
            assert second.returncode == 0, second.output[-6000:]
            new_deployment, new_data = rendered(manifests, "shop")
            assert new_deployment == deployment  # no rollout
            assert new_data[km.ROUTER] != data[km.ROUTER]
            synced = time.monotonic()
            for name, files in new_data.items():
                kubelet.project(name, files, 0o444 if name == km.ROUTER else 0o440)
            new_sha = hashlib.sha256(new_data[km.ROUTER][km.CONFIG_KEY]).hexdigest()
            changed = wait_for(
                lambda: (s := status(shop_admin, headers=shop_token))["config"]["sha256"] == new_sha
                and s,
                "the new config in force in the running pod",
                timeout=30,
            )
            # Reported, not asserted (no timed assertions): the target is 5 s.
            print(f"config change in force {time.monotonic() - synced:.1f} s after the sync")
            assert [c["port"] for c in changed["connectors"]] == [7001]
            assert sorted(entry["port"] for entry in changed["listeners"]) == [8080, 8081]
            assert hashlib.sha256(through_pod(router, 8081, payload)).hexdigest() == digest
            assert hashlib.sha256(echo_through(listener, payload)).hexdigest() == digest
            assert container_state(router) == before
        finally:
            echo.close()
            if play_file.exists():
                podman("kube", "down", str(play_file), check=False, timeout=120)
            podman("rm", "-f", "-t", "0", backend, check=False)
            podman("network", "rm", "-f", network, check=False)
            done = run_playbook(inventory, "teardown.yml")
            assert done.returncode == 0, done.output[-4000:]
