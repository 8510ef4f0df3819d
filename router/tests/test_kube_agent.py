"""Tier 3 for the Kubernetes agent: an agent, a real router (its multicast) and the
emulated API. Exposure by annotation, announcements, proxy Services and their
listeners, conflicts with user Services, API errors on writes, two replicas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import FakeApiServer
from kube_testkit import agent_for, names, overlay, problems, service
from router_testkit import Site, free_port, run, wait_for
from test_network import routers

from skiff_router.kube.agent import Agent
from skiff_router.kube.exposure import ANNOUNCE_ADDRESS, Exposure, encode
from skiff_router.runtime import Router

pytestmark = pytest.mark.integration
TIMEOUT = 20.0


@pytest.fixture
def srv(tmp_path: Path):
    with FakeApiServer(tmp_path / "api") as server:
        yield server


@contextlib.asynccontextmanager
async def agents(*items: Agent) -> AsyncIterator[None]:
    for a in items:
        a.start()
    try:
        yield
    finally:
        # stop() joins threads: off the loop, so the router keeps serving meanwhile.
        await asyncio.gather(*(asyncio.to_thread(a.stop) for a in items))


async def until(cond: Callable[[], Any], what: str) -> None:
    await wait_for(lambda: bool(cond()), TIMEOUT, what)


def announce(router: Router, site: str, *services: tuple[str, str, tuple[int, ...]]) -> None:
    """What the agent of another site sends (through this router's multicast)."""
    router.publish(ANNOUNCE_ADDRESS, encode(site, [Exposure(*s) for s in services], 3))


def proxy_ports(first: int | None = None) -> dict[str, int]:
    first = first or free_port()
    return {"first": first, "last": first + 9}


def owned(srv: FakeApiServer, ns: str) -> list[str]:
    return [
        n
        for n in srv.names("services", ns)
        if srv.get("services", ns, n)["metadata"].get("labels", {}).get("skiff.io/owned-by-agent")
        == "true"
    ]


def test_annotation_exposes_and_announces(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east")
        srv.put("services", "east", service("web", [80, 443], {"skiff.io/expose": "true"}))
        srv.put("services", "east", service("db", [5432]))
        async with routers(east) as rs:
            received: list[dict[str, Any]] = []
            sub = rs["east"].subscribe(ANNOUNCE_ADDRESS)

            async def collect() -> None:
                while (msg := await sub.queue.get()) is not None:
                    received.append(json.loads(msg.payload))

            task = asyncio.create_task(collect())
            agent = agent_for(srv, tmp_path, "east", east.admin_port)
            async with agents(agent):
                await until(
                    lambda: names(agent, "connectors") == ["service/web:443", "service/web:80"],
                    "web's connectors",
                )
                assert overlay(agent)["connectors"][1] == {
                    "name": "service/web:80",
                    "routing_key": "web:80",
                    "host": "127.0.0.1",
                    "port": 80,
                }
                await until(lambda: received, "an announcement")
                assert received[-1] == {
                    "site": "east",
                    "services": [{"name": "web", "routing_key": "web", "ports": [80, 443]}],
                    "ttl": 3,
                }
                count = len(received)
                await until(lambda: len(received) > count, "a repeat within the interval")

                # The user's Service is read, never written.
                web_before = srv.get("services", "east", "web")
                srv.put(
                    "services",
                    "east",
                    service(
                        "db",
                        [5432],
                        {
                            "skiff.io/expose": "true",
                            "skiff.io/routing-key": "pg",
                            "skiff.io/port": "nope",
                        },
                    ),
                )
                await until(
                    lambda: any(p["object"] == "service/db" for p in problems(agent)),
                    "the bad port reported",
                )
                [p] = [p for p in problems(agent) if p["object"] == "service/db"]
                assert p["field"] == 'metadata.annotations["skiff.io/port"]'
                assert "'nope' is not a port of the Service (it has: 5432 (p5432))" in p["message"]
                srv.put(
                    "services",
                    "east",
                    service(
                        "db", [5432], {"skiff.io/expose": "true", "skiff.io/routing-key": "pg"}
                    ),
                )
                await until(lambda: "service/db:5432" in names(agent, "connectors"), "db exposed")
                await until(lambda: not problems(agent), "problem resolved")

                srv.put("services", "east", service("web", [80, 443]))  # annotation removed
                await until(
                    lambda: received[-1]["services"]
                    == [{"name": "db", "routing_key": "pg", "ports": [5432]}],
                    "web withdrawn at once",
                )
                assert names(agent, "connectors") == ["service/db:5432"]
                assert srv.writes() == []
                assert srv.get("services", "east", "web")["spec"] == web_before["spec"]
            rs["east"].unsubscribe(sub)
            task.cancel()

    run(main())


def test_proxy_service_follows_announcements(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        async with routers(west) as rs:
            ports = proxy_ports()
            agent = agent_for(srv, tmp_path, "west", west.admin_port, proxy_ports=ports)
            async with agents(agent):
                await until(
                    lambda: agent.status().get("multicast", {}).get("subscribed"), "subscribed"
                )
                announce(
                    rs["west"], "east", ("web", "web", (80,)), ("api", "api-key", (8080, 8443))
                )
                await until(lambda: owned(srv, "west") == ["api", "web"], "two proxy Services")
                web = srv.get("services", "west", "web")
                assert web["metadata"]["labels"] == {
                    "app.kubernetes.io/managed-by": "skiff",
                    "app.kubernetes.io/part-of": "skiff",
                    "skiff.io/site": "west",
                    "skiff.io/owned-by-agent": "true",
                }
                assert web["spec"]["selector"] == {
                    "app.kubernetes.io/name": "skiff-router",
                    "app.kubernetes.io/instance": "west",
                }
                await until(lambda: len(names(agent, "listeners")) == 3, "three listeners")
                listeners = {x["name"]: x for x in overlay(agent)["listeners"]}
                target = web["spec"]["ports"][0]["targetPort"]
                assert listeners["proxy/web:80"] == {
                    "name": "proxy/web:80",
                    "routing_key": "web",
                    "host": "127.0.0.1",
                    "port": target,
                }
                assert listeners["proxy/api:8443"]["routing_key"] == "api-key:8443"
                used = sorted(x["port"] for x in listeners.values())
                assert len(set(used)) == 3 and all(
                    ports["first"] <= p <= ports["last"] for p in used
                )

                # Deleted by hand: made again. Its selector edited: put back.
                srv.remove("services", "west", "web")
                await until(lambda: "web" in owned(srv, "west"), "web made again")
                api = srv.get("services", "west", "api")
                api["spec"]["selector"] = {"app": "hijack"}
                srv.put("services", "west", api)
                await until(
                    lambda: srv.get("services", "west", "api")["spec"]["selector"]
                    == agent.cfg.router_pod_labels,
                    "selector restored",
                )

                announce(rs["west"], "east", ("api", "api-key", (8080, 8443)))  # web withdrawn
                await until(lambda: owned(srv, "west") == ["api"], "web deleted")
                await until(
                    lambda: "proxy/web:80" not in names(agent, "listeners"), "listener gone"
                )
                # Not repeated within the ttl (3 s here): withdrawn as well.
                await until(lambda: owned(srv, "west") == [], "api expired")
                await until(lambda: names(agent, "listeners") == [], "no listener left")
                deletes = [r for r in srv.writes() if r.method == "DELETE"]
                assert all(r.body["preconditions"]["uid"] for r in deletes)

    run(main())


def test_user_service_of_the_same_name_is_never_touched(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        user = srv.put("services", "west", service("web", [80]))
        async with routers(west) as rs:
            agent = agent_for(srv, tmp_path, "west", west.admin_port, proxy_ports=proxy_ports())
            async with agents(agent):
                await until(
                    lambda: agent.status().get("multicast", {}).get("subscribed"), "subscribed"
                )
                announce(rs["west"], "east", ("web", "web", (80,)), ("api", "api", (80,)))
                await until(lambda: "api" in owned(srv, "west"), "the other proxy is made")
                await until(
                    lambda: any(p["object"] == "service/web" for p in problems(agent)), "a conflict"
                )
                [p] = [p for p in problems(agent) if p["object"] == "service/web"]
                assert "does not own" in p["message"] and "east" in p["message"]
                assert srv.get("services", "west", "web") == user
                assert all(not r.path.endswith("/web") for r in srv.writes())
                assert all(
                    (r.body or {}).get("metadata", {}).get("name") != "web" for r in srv.writes()
                )
                # The user removes theirs: the name is free, the proxy comes.
                srv.remove("services", "west", "web")
                announce(rs["west"], "east", ("web", "web", (80,)), ("api", "api", (80,)))
                await until(lambda: "web" in owned(srv, "west"), "proxy made once the name is free")

    run(main())


def test_write_errors_403_409_422_are_retried_and_reported(
    srv: FakeApiServer, tmp_path: Path
) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        async with routers(west) as rs:
            agent = agent_for(srv, tmp_path, "west", west.admin_port, proxy_ports=proxy_ports())
            forbidden = srv.fail(403, method="POST", resource="services", count=-1)
            async with agents(agent):
                await until(
                    lambda: agent.status().get("multicast", {}).get("subscribed"), "subscribed"
                )
                announce(rs["west"], "east", ("web", "web", (80,)))
                await until(
                    lambda: any(p["object"] == "proxy/web" for p in problems(agent)), "403 reported"
                )
                [p] = [p for p in problems(agent) if p["object"] == "proxy/web"]
                assert p["field"] == "create web"
                assert (
                    "Role skiff-agent must allow list, watch, create, patch and delete"
                    in p["message"]
                )
                await until(lambda: srv.count("POST", "services") >= 3, "retried with backoff")
                forbidden.count = 0
                await until(lambda: owned(srv, "west") == ["web"], "created once allowed")
                await until(lambda: not problems(agent), "resolved")

                srv.fail(409, method="POST", resource="services", name=None, count=1)
                srv.fail(
                    422, method="POST", resource="services", message="spec.ports: bad", count=1
                )
                announce(
                    rs["west"],
                    "east",
                    ("web", "web", (80,)),
                    ("api", "api", (80,)),
                    ("db", "db", (5432,)),
                )
                await until(
                    lambda: owned(srv, "west") == ["api", "db", "web"], "both made after 409/422"
                )
                assert srv.count("POST", "services") >= 6

    run(main())


def test_two_replicas_agree_on_one_proxy_and_its_port(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        async with routers(west) as rs:
            ports = proxy_ports()
            a = agent_for(srv, tmp_path / "a", "west", west.admin_port, proxy_ports=ports)
            b = agent_for(srv, tmp_path / "b", "west", west.admin_port, proxy_ports=ports)
            for d in ("a", "b"):
                (tmp_path / d).mkdir()
            async with agents(a, b):
                await until(
                    lambda: all(x.status().get("multicast", {}).get("subscribed") for x in (a, b)),
                    "both subscribed",
                )
                announce(rs["west"], "east", *[(f"s{i}", f"k{i}", (80,)) for i in range(5)])
                await until(lambda: len(owned(srv, "west")) == 5, "five proxies")
                await until(
                    lambda: overlay(a) is not None
                    and overlay(a) == overlay(b)
                    and len(overlay(a)["listeners"]) == 5,
                    "identical overlays",
                )
                targets = [
                    srv.get("services", "west", n)["spec"]["ports"][0]["targetPort"]
                    for n in owned(srv, "west")
                ]
                assert sorted(targets) == sorted(x["port"] for x in overlay(a)["listeners"])
                assert len(set(targets)) == 5

    run(main())


def test_garbage_on_the_multicast_address_is_reported_not_fatal(
    srv: FakeApiServer, tmp_path: Path
) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        async with routers(west) as rs:
            agent = agent_for(srv, tmp_path, "west", west.admin_port, proxy_ports=proxy_ports())
            async with agents(agent):
                await until(
                    lambda: agent.status().get("multicast", {}).get("subscribed"), "subscribed"
                )
                rs["west"].publish(ANNOUNCE_ADDRESS, b"\x00not json")
                rs["west"].publish(ANNOUNCE_ADDRESS, base64.b64encode(b"{}"))
                announce(rs["west"], "east", ("web", "web", (80,)))
                await until(lambda: owned(srv, "west") == ["web"], "a good one still works")

    run(main())


def test_api_away_keeps_announcing_the_last_good_set(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east")
        srv.put("services", "east", service("web", [80], {"skiff.io/expose": "true"}))
        async with routers(east) as rs:
            received: list[dict[str, Any]] = []
            sub = rs["east"].subscribe(ANNOUNCE_ADDRESS)

            async def collect() -> None:
                while (msg := await sub.queue.get()) is not None:
                    received.append(json.loads(msg.payload))

            task = asyncio.create_task(collect())
            agent = agent_for(srv, tmp_path, "east", east.admin_port)
            async with agents(agent):
                await until(lambda: received, "an announcement")
                srv.fail(503, resource="services", count=-1)
                srv.drop_watches()
                await until(
                    lambda: any(p["object"] == "api/services" for p in problems(agent)),
                    "the API failure reported",
                )
                count = len(received)
                # Longer than the ttl (3 s): the other sites must not lose "web".
                await until(lambda: len(received) >= count + 4, "repeats while the API is away")
                assert all(
                    r["services"] == [{"name": "web", "routing_key": "web", "ports": [80]}]
                    for r in received
                )
                assert names(agent, "connectors") == ["service/web:80"]
            rs["east"].unsubscribe(sub)
            task.cancel()

    run(main())


def test_router_restart_withdraws_nothing(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        agent = agent_for(srv, tmp_path, "west", west.admin_port, proxy_ports=proxy_ports())
        async with routers(west) as rs:
            agent.start()
            await until(lambda: agent.status().get("multicast", {}).get("subscribed"), "subscribed")
            announce(rs["west"], "east", ("web", "web", (80,)))
            await until(lambda: owned(srv, "west") == ["web"], "proxy made")
            await until(lambda: names(agent, "listeners") == ["proxy/web:80"], "listener")
        try:
            await until(
                lambda: not agent.status().get("multicast", {}).get("subscribed"), "router gone"
            )
            await asyncio.sleep(4)  # longer than the ttl, without a router
            assert owned(srv, "west") == ["web"]
            assert names(agent, "listeners") == ["proxy/web:80"]
            async with routers(west) as rs:
                await until(lambda: agent.status().get("multicast", {}).get("subscribed"), "back")
                announce(rs["west"], "east", ("web", "web", (80,)))
                await asyncio.sleep(1)
                assert owned(srv, "west") == ["web"]
                assert not [r for r in srv.writes() if r.method == "DELETE"]
        finally:
            await asyncio.to_thread(agent.stop)

    run(main())


def test_api_away_on_writes_defers_the_rest(srv: FakeApiServer, tmp_path: Path) -> None:
    async def main() -> None:
        west = Site.create(tmp_path, "west")
        async with routers(west) as rs:
            agent = agent_for(srv, tmp_path, "west", west.admin_port, proxy_ports=proxy_ports())
            fault = srv.fail(503, method="POST", resource="services", count=-1)
            async with agents(agent):
                await until(
                    lambda: agent.status().get("multicast", {}).get("subscribed"), "subscribed"
                )
                announce(
                    rs["west"], "east", ("a", "a", (80,)), ("b", "b", (80,)), ("c", "c", (80,))
                )
                await until(lambda: srv.count("POST", "services") >= 4, "retries")
                tried = {r.body["metadata"]["name"] for r in srv.writes() if r.method == "POST"}
                assert tried == {"a"}  # one probe per backoff round, not one per Service
                fault.count = 0
                await until(lambda: owned(srv, "west") == ["a", "b", "c"], "all made")

    run(main())
