"""Helpers for the agent's HTTP tests: an agent wired to the emulated API server."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kube_apiserver import FakeApiServer
from router_testkit import free_port

from skiff_router.kube.agent import Agent, Tuning
from skiff_router.kube.api import ApiSettings, KubeApi
from skiff_router.kube.config import validate

# Short timings so failures and recoveries happen within a test; never asserted on.
FAST = Tuning(
    watch_timeout=2,
    watch_read_timeout=5.0,
    backoff_first=0.05,
    backoff_max=0.3,
    action_backoff_max=0.3,
    invalid_retry=0.5,
    conflict_retry=0.1,
    router_retry=0.1,
)
TIMEOUT = 20.0


def client(srv: FakeApiServer, **kw: Any) -> KubeApi:
    settings = {"url": srv.url, "token_file": srv.token_file, "ca_file": srv.ca_file, **kw}
    return KubeApi(ApiSettings(**settings))


def agent_for(
    srv: FakeApiServer,
    tmp_path: Path,
    site: str = "west",
    admin_port: int | None = None,
    tuning: Tuning = FAST,
    config_path: Path | None = None,
    pod_name: str | None = None,
    **over: Any,
) -> Agent:
    data: dict[str, Any] = {
        "site": site,
        "namespace": site,
        "overlay": str(tmp_path / f"{site}-overlay.json"),
        "health": {"host": "127.0.0.1", "port": free_port()},
        "router_admin": f"http://127.0.0.1:{admin_port or free_port()}",
        "proxy_host": "127.0.0.1",
        "announce_interval": 1,
        "ttl": 3,
    }
    data.update(over)
    proxy = data.get("proxy_ports")
    while proxy and proxy["first"] <= data["health"]["port"] <= proxy["last"]:
        # Two free ports drawn apart can fall together: the agent refuses that.
        data["health"]["port"] = free_port()
    if config_path is not None:
        # From a file, as in the pod: a changed file's connectors apply while it runs.
        config_path.write_text(json.dumps(data))
    return Agent(
        validate(data),
        client(srv),
        tuning,
        config_path=None if config_path is None else str(config_path),
        pod_name=pod_name,
    )


@contextlib.contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def eventually(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll until ``cond()`` is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def overlay(agent: Agent) -> dict[str, Any] | None:
    try:
        return json.loads(Path(agent.cfg.overlay).read_text())
    except (OSError, ValueError):
        return None


def names(agent: Agent, kind: str) -> list[str]:
    data = overlay(agent) or {}
    return [e["name"] for e in data.get(kind, [])]


def problems(agent: Agent) -> list[dict[str, str]]:
    return list(agent.status().get("problems", []))


def caught_up(agent: Agent, srv: FakeApiServer, kind: str) -> bool:
    """The agent's watch has seen every change the server made (and planned after it)."""
    state = agent.status().get("api", {}).get(kind, {})
    return state.get("resource_version") == str(srv.rv) and state.get("error") is None


def ready_pod(name: str, ip: str, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(
    name: str,
    ports: list[int],
    annotations: dict[str, str] | None = None,
    cluster_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "clusterIP": cluster_ip,
            "selector": {"app": name},
            "ports": [{"name": f"p{p}", "port": p, "targetPort": p} for p in ports],
        },
    }
