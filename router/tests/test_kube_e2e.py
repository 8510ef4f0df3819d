"""Tier 4 for the Kubernetes agent: real routers reading the overlay the agents write.

Two sites linked over mutual TLS on loopback, each with an agent on its own
namespace of one emulated API: an annotation at ``east`` makes ``west``'s agent
create the proxy Service and its listener, and bytes flow through it (sha256).
Connectors by pod selector: "pods" are servers on 127.0.0.2 and 127.0.0.3, one
port, and the router balances over the ready ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import FakeApiServer
from kube_testkit import agent_for, names, ready_pod, service
from router_testkit import Site, free_port, run, tcp_server, wait_for
from test_kube_agent import agents, owned, until
from test_network import echo_roundtrip

from skiff_router.config import load
from skiff_router.runtime import Router

pytestmark = pytest.mark.integration


@pytest.fixture
def srv(tmp_path: Path):
    with FakeApiServer(tmp_path / "api") as server:
        yield server


def overlay_path(site: Site) -> str:
    return str(site.dir / "run" / "overlay.json")


@contextlib.asynccontextmanager
async def kube_routers(*sites: Site) -> AsyncIterator[dict[str, Router]]:
    """Routers whose config names an overlay file, as on a kubernetes site."""
    started: dict[str, Router] = {}
    try:
        for s in sites:
            (s.dir / "run").mkdir(exist_ok=True)
            cfg: dict[str, Any] = s.config()
            cfg["overlay"] = overlay_path(s)
            path = s.dir / "router.json"
            path.write_text(json.dumps(cfg, indent=2))
            r = Router(load(path))
            await r.start()
            started[s.name] = r
        yield started
    finally:
        for r in started.values():
            await r.stop()


# The agent's Role (kube_manifests.role, asserted in tests/unit/test_kube_manifests.py):
# no `get`, no `update`.
ROLE_VERBS = {"pods": {"list", "watch"}, "services": {"list", "watch", "create", "patch", "delete"}}


def verbs_used(srv: FakeApiServer) -> dict[str, set[str]]:
    """The RBAC verb of every request the agents made, by resource."""
    used: dict[str, set[str]] = {}
    for r in list(srv.requests):
        parts = r.path.strip("/").split("/")
        resource, named = parts[-1], False
        if parts[-2] in ROLE_VERBS:  # .../<resource>/<name>
            resource, named = parts[-2], True
        if r.method == "GET":
            verb = "watch" if r.query.get("watch") in ("1", "true") else "get" if named else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[
                r.method
            ]
        used.setdefault(resource, set()).add(verb)
    return used


def assert_within_role(srv: FakeApiServer) -> None:
    used = verbs_used(srv)
    assert used, "no request reached the API"
    for resource, verbs in used.items():
        assert verbs <= ROLE_VERBS.get(resource, set()), (resource, verbs)


def listener_state(r: Router, name: str) -> str | None:
    for x in r.status()["listeners"]:
        if x["name"] == name:
            return x["state"]
    return None


def test_annotation_at_one_site_gives_a_working_proxy_at_the_other(
    srv: FakeApiServer, tmp_path: Path
) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        # Each router's admin API needs its token, as in the pod (the Secret
        # skiff-admin, which the agent reads too).
        tokens = {}
        for site in (east, west):
            tokens[site.name] = site.dir / "admin" / "token"
            tokens[site.name].parent.mkdir()
            tokens[site.name].write_text(f"{site.name}-admin-token-0123456789\n")
            tokens[site.name].chmod(0o600)
            site.extra["admin"] = {
                "host": "127.0.0.1", "port": site.admin_port, "token_file": "admin/token"
            }  # fmt: skip
        async with tcp_server() as backend, kube_routers(east, west) as rs:
            srv.put("services", "east", service("web", [backend]))  # not exposed yet
            first = free_port()
            east_agent = agent_for(
                srv,
                tmp_path,
                "east",
                east.admin_port,
                overlay=overlay_path(east),
                router_admin_token_file=str(tokens["east"]),
            )
            west_agent = agent_for(
                srv,
                tmp_path,
                "west",
                west.admin_port,
                overlay=overlay_path(west),
                proxy_ports={"first": first, "last": first + 9},
                router_admin_token_file=str(tokens["west"]),
            )
            async with agents(east_agent, west_agent):
                await until(
                    lambda: all(
                        a.status().get("multicast", {}).get("subscribed")
                        for a in (east_agent, west_agent)
                    ),
                    "both agents follow their router",
                )
                srv.put("services", "east", service("web", [backend], {"skiff.io/expose": "true"}))
                await until(lambda: owned(srv, "west") == ["web"], "west's proxy Service")
                proxy = srv.get("services", "west", "web")
                assert proxy["spec"]["ports"][0]["port"] == backend
                target = proxy["spec"]["ports"][0]["targetPort"]
                name = f"proxy/web:{backend}"
                await until(
                    lambda: listener_state(rs["west"], name) == "listening", "west's listener"
                )
                await wait_for(
                    lambda: rs["west"].status()["routing_keys"].get("web", {}).get("reachable"),
                    20,
                    "east's connector reachable from west",
                )
                assert f"service/web:{backend}" in names(east_agent, "connectors")
                for r in rs.values():  # read from the overlay, accepted whole
                    assert r.status()["overlay"]["error"] is None
                [lst] = [x for x in rs["west"].status()["listeners"] if x["name"] == name]
                assert lst["source"] == "overlay" and lst["port"] == target

                payload = os.urandom(3 << 20)
                echoed = await echo_roundtrip(target, payload)
                assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()

                # The user's Service was never written; removing the annotation removes both.
                assert all("/namespaces/east/" not in r.path for r in srv.writes())
                srv.put("services", "east", service("web", [backend]))
                await until(lambda: owned(srv, "west") == [], "proxy Service deleted")
                await until(lambda: listener_state(rs["west"], name) is None, "listener removed")
                with pytest.raises(OSError):
                    await echo_roundtrip(target, b"x")

    run(main())
    assert verbs_used(srv)["services"] >= {"list", "watch", "create", "delete"}
    assert_within_role(srv)


def test_selector_connector_balances_over_ready_pods(srv: FakeApiServer, tmp_path: Path) -> None:
    async def tagged_server(host: str, port: int, tag: bytes) -> asyncio.Server:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(tag)
            await writer.drain()
            writer.close()

        return await asyncio.start_server(handler, host, port)

    async def ask(port: int) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        data = await asyncio.wait_for(r.read(), 10)
        w.close()
        return data

    async def main() -> None:
        west = Site.create(tmp_path, "west")
        port = free_port()
        lport = west.listen("db")
        servers = [
            await tagged_server("127.0.0.2", port, b"pod-a"),
            await tagged_server("127.0.0.3", port, b"pod-b"),
        ]
        try:
            srv.put("pods", "west", ready_pod("db-a", "127.0.0.2", app="db"))
            srv.put("pods", "west", ready_pod("db-b", "127.0.0.3", app="db"))
            srv.put("pods", "west", ready_pod("web-a", "127.0.0.4", app="web"))
            async with kube_routers(west) as rs:
                agent = agent_for(
                    srv,
                    tmp_path,
                    "west",
                    west.admin_port,
                    overlay=overlay_path(west),
                    expose=False,
                    connectors=[
                        {
                            "name": "db",
                            "routing_key": "db",
                            "port": port,
                            "selector": {"matchLabels": {"app": "db"}},
                        }
                    ],
                )
                async with agents(agent):
                    await until(
                        lambda: len(rs["west"].status()["connectors"]) == 2, "two pod connectors"
                    )
                    tags = {await ask(lport) for _round in range(12)}
                    assert tags == {b"pod-a", b"pod-b"}
                    srv.put("pods", "west", ready_pod("db-a", "127.0.0.2", ready=False, app="db"))
                    await until(
                        lambda: [c["name"] for c in rs["west"].status()["connectors"]]
                        == ["db@db-b"],
                        "the unready pod left",
                    )
                    assert {await ask(lport) for _round in range(6)} == {b"pod-b"}
        finally:
            for s in servers:
                s.close()

    run(main())
    assert verbs_used(srv)["pods"] == {"list", "watch"}
    assert_within_role(srv)
