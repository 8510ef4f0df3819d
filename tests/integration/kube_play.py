"""Run a kubernetes site's rendered manifests as real pods with `podman kube play`.

podman 4.3 (Debian 12) is not a kubelet, so a small test-only transform of the
rendered Deployment stands in for what a cluster provides. It changes only:

- `volumes`: the ConfigMap and Secret volumes become hostPath directories that
  `Kubelet.project` fills with the objects' data (podman 4.3 mounts Secret
  volumes as base64 text and never refreshes a mounted ConfigMap; the
  kubelet does both); the projected service-account volume is removed;
- `containers`: the `agent` container is removed (no API server can run here;
  the agent has its own tier against the emulated API server);
- `ports` of the router container: `hostIP: 127.0.0.1` and a `hostPort` of the
  test's choosing on each (podman publishes every containerPort on all
  interfaces otherwise).

`untransformed` undoes exactly these, and the tier checks that the result is
the rendered Deployment again: nothing else may differ. Only the Deployment is
played (podman has no Services, RBAC or Secrets to apply).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / ".cache" / "containers.conf"
IMAGE = "localhost/skiff-kube-router:test"
BASE_IMAGE = "localhost/skiff-test-router-base:bookworm"
LOCK = "/tmp/skiff-podman-kube.lock"
RUN_AS = 10001


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return done


def build_image() -> str:
    """The router image from router/Containerfile, rebuilt only when the router changed."""
    wheels = sorted(str(p) for p in (REPO / ".cache" / "wheels").glob("prometheus_client-*.whl"))
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build-router-image"), IMAGE, BASE_IMAGE,
         str(REPO / ".cache" / "router-image"), *wheels],
        env=dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF)),
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return IMAGE


def transform(
    deployment: dict[str, Any], volume_root: Path, host_ports: dict[str, int]
) -> dict[str, Any]:
    """The documented transform (module docstring); the input is not modified."""
    played = copy.deepcopy(deployment)
    pod = played["spec"]["template"]["spec"]
    volumes = []
    for volume in pod["volumes"]:
        source = volume.get("configMap") or volume.get("secret")
        if "projected" in volume:
            continue
        if source is not None:
            name = source.get("name") or source.get("secretName")
            volumes.append(
                {"name": volume["name"],
                 "hostPath": {"path": str(volume_root / name), "type": "Directory"}}
            )  # fmt: skip
        else:
            volumes.append(volume)
    pod["volumes"] = volumes
    pod["containers"] = [c for c in pod["containers"] if c["name"] != "agent"]
    for port in pod["containers"][0]["ports"]:
        port["hostIP"] = "127.0.0.1"
        port["hostPort"] = host_ports[port["name"]]
    return played


def untransformed(played: dict[str, Any], rendered: dict[str, Any]) -> dict[str, Any]:
    """Undo exactly what `transform` does, taking the removed parts from `rendered`."""
    restored = copy.deepcopy(played)
    pod = restored["spec"]["template"]["spec"]
    original = rendered["spec"]["template"]["spec"]
    by_name = {v["name"]: v for v in original["volumes"]}
    volumes = []
    for volume in pod["volumes"]:
        if "hostPath" in volume:
            kept = by_name[volume["name"]]
            assert "configMap" in kept or "secret" in kept, volume
            volumes.append(copy.deepcopy(kept))
        else:
            volumes.append(volume)
    volumes += [copy.deepcopy(v) for v in original["volumes"] if "projected" in v]
    names = [v["name"] for v in original["volumes"]]
    pod["volumes"] = sorted(volumes, key=lambda v: names.index(v["name"]))
    for port in pod["containers"][0]["ports"]:
        del port["hostIP"], port["hostPort"]
    pod["containers"] += [copy.deepcopy(c) for c in original["containers"] if c["name"] == "agent"]
    return restored


def rendered(manifests: Path, site: str) -> tuple[dict, dict[str, dict[str, bytes]]]:
    """A render-only site's Deployment, and the data of the objects its router mounts
    (the ConfigMap, the server, links and admin token Secrets) by name."""
    documents = km.from_yaml((manifests / f"{site}.yaml").read_bytes())
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    data = {km.ROUTER: {k: v.encode() for k, v in config_map["data"].items()}}
    for name in km.MOUNTED_SECRETS:
        path = manifests / f"{site}.secrets" / f"{name}.yaml"
        data[name] = km.secret_data(km.from_yaml(path.read_bytes())[0]) if path.exists() else {}
    return deployment, data


class Kubelet:
    """What the kubelet does for the volumes: the objects' data as files, refreshed in place.

    Each file is replaced by a rename (the router sees a new inode), Secrets
    first so that a config naming new link files finds them.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def project(self, name: str, data: dict[str, bytes], mode: int) -> None:
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
        for key, value in sorted(data.items()):
            tmp = directory / f".{key}.tmp"
            tmp.write_bytes(value)
            os.chown(tmp, RUN_AS, RUN_AS)
            os.chmod(tmp, mode)
            tmp.replace(directory / key)
        for stale in set(p.name for p in directory.iterdir()) - set(data):
            (directory / stale).unlink()


def admin_headers(manifests: Path, site: str) -> dict[str, str]:
    """The header that carries a render-only site's admin token (from its Secret), as
    a client reaching the pod through the API server's pod proxy sends it."""
    token = rendered(manifests, site)[1][km.SECRET_ADMIN][km.ADMIN_TOKEN_KEY]
    return {km.ADMIN_TOKEN_HEADER: token.decode().strip()}


def container_state(container: str) -> tuple[str, int]:
    """(start time, restart count) of a container: the same before and after = no restart."""
    out = podman("inspect", "--format", "{{json .State.StartedAt}} {{.RestartCount}}", container)
    started, restarts = out.stdout.split()
    return json.loads(started), int(restarts)


def wait_for(predicate: Any, what: str, timeout: float = 60) -> Any:
    """Poll until predicate() is truthy; bounded, and says what it waited for."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
