"""Tier 1: the pieces of workers.py and siblings.py that need no processes: the
seat a worker reads from its environment, the default count, the config field,
worker ids on the wire, one router's view made of several workers' reports, and
the target choice that keeps flows off a sibling hop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skiff_router import workers
from skiff_router.codec import Lsa
from skiff_router.config import (
    MAX_WORKERS,
    ConfigError,
    Distribution,
    router_of_site,
    router_of_worker,
    validate,
    worker_router_id,
)
from skiff_router.netgraph import network_graph
from skiff_router.routing import LinkStateDb
from skiff_router.siblings import WorkerReport, whole_router, whole_router_flows
from skiff_router.targets import SiteChoice


def test_a_worker_reads_its_seat_and_names_itself() -> None:
    assert workers.seat_from_env({}) is None
    seat = workers.seat_from_env({workers.SEAT_ENV: "1/4/321"})
    assert seat == workers.Seat(1, 4, 321) and not seat.primary
    assert seat.router_id("east") == "east/w1" == worker_router_id("east", 1)
    assert workers.Seat(0, 4, 321).router_id("east.pod-1") == "east.pod-1"
    assert seat.link_socket(0) == "\0skiff-321-link-0"
    assert seat.admin_socket(3) == "\0skiff-321-admin-3"
    for bad in ("x", "4/4/1", "1/2", f"0/{MAX_WORKERS + 1}/1"):
        with pytest.raises(ValueError, match=workers.SEAT_ENV):
            workers.seat_from_env({workers.SEAT_ENV: bad})


def test_worker_ids_belong_to_their_router_and_site() -> None:
    assert router_of_worker("east/w3") == "east" and router_of_worker("east") == "east"
    assert router_of_worker("east.pod-1/w1") == "east.pod-1"
    assert router_of_site("east/w1", "east") and router_of_site("east.pod-1/w2", "east")
    assert not router_of_site("eastern/w1", "east")


def test_default_count_follows_affinity_and_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    quota = tmp_path / "cpu.max"

    def count() -> int:
        return workers.default_count(str(quota))

    assert count() == 8  # no cgroup file: the affinity decides
    quota.write_text("max 100000\n")
    assert count() == 8
    quota.write_text("150000 100000\n")  # 1.5 CPUs: rounded up
    assert count() == 2
    quota.write_text("50000 100000\n")
    assert count() == 1
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: set(range(200)))
    quota.write_text("max 100000\n")
    assert count() == MAX_WORKERS


def test_the_config_field() -> None:
    assert validate({"site": "east"}).workers is None
    assert validate({"site": "east", "workers": 3}).workers == 3
    for bad in (0, MAX_WORKERS + 1, "2", True):
        with pytest.raises(ConfigError, match="workers: must be a whole number from 1 to 64"):
            validate({"site": "east", "workers": bad})
    # A worker suffix is for the router to add, not for a config to name.
    with pytest.raises(ConfigError, match="router_id"):
        validate({"site": "east", "router_id": "east/w1"})


def _status(router_id: str, flows: tuple[int, int], bytes_out: int, links: int) -> dict:
    return {
        "router_id": router_id,
        "pid": 100 + len(router_id),
        "ready": True,
        "not_ready": [],
        "routers": [
            {"id": "east", "reachable": True, "cost": 0, "next_hop": None},
            {"id": "west", "reachable": True, "cost": 1, "next_hop": "west"},
        ],
        "links": [{"name": "west", "direction": "outgoing", "state": "up", "peer": "west"}] * links,
        "flows": {"open": flows[0], "total": flows[1], "retried": 0},
        "routing_keys": {"k": {"reachable": True, "bytes": {"out": bytes_out, "back": 1}}},
        "connectors": [{"name": "db", "flows": flows[1]}],
    }


def test_one_router_adds_up_its_workers() -> None:
    own = _status("east", (1, 10), 100, 1)
    other = _status("east/w1", (2, 5), 50, 1)
    st = whole_router(
        own,
        [{"router": "east/w1", "direction": "incoming", "state": "up"}],
        [WorkerReport(1, status=other), WorkerReport(2, error="Connection refused")],
    )
    assert st["flows"] == {"open": 3, "total": 15, "retried": 0}
    assert st["routing_keys"]["k"]["bytes"] == {"out": 150, "back": 2}
    assert st["connectors"] == [{"name": "db", "flows": 15}]
    assert [lk["worker"] for lk in st["links"]] == [0, 1]
    assert [(w["index"], w["state"]) for w in st["workers"]] == [(0, "up"), (1, "up"), (2, "down")]
    assert st["workers"][2]["error"] == "Connection refused"
    assert st["workers"][1]["router_id"] == "east/w1"
    # Refusals counted by each worker add up (a refused link lands on either).
    own["link_access"] = {"port": 1, "refused_credentials": 1, "grants_refused": 0}
    other["link_access"] = {"port": 1, "refused_credentials": 2, "grants_refused": 3,
                            "credentials_in_use": 1}  # fmt: skip
    summed = whole_router(own, [], [WorkerReport(1, status=other)])["link_access"]
    assert summed == {"port": 1, "refused_credentials": 3, "grants_refused": 3,
                      "credentials_in_use": 1}  # fmt: skip
    assert own["link_access"]["refused_credentials"] == 1  # not changed in place
    del own["link_access"], other["link_access"]
    # The worker's own document is not changed in place.
    assert own["flows"]["total"] == 10 and own["routing_keys"]["k"]["bytes"]["out"] == 100
    assert st["ready"] and st["routing_keys"]["k"]["reachable"]
    assert all(r["reachable"] for r in st["routers"])
    # Worker 0 reaches west through worker 1 (cost 4); worker 1 has the link (cost 3).
    own["routers"][1].update(cost=4, next_hop="east")
    other["routers"][1].update(cost=3, next_hop="west")
    st = whole_router(own, [], [WorkerReport(1, status=other)])
    west = next(r for r in st["routers"] if r["id"] == "west")
    assert (west["cost"], west["next_hop"]) == (3, "west")
    assert own["routers"][1]["cost"] == 4  # worker 0's own document is left as it was
    flows = whole_router_flows([{"id": 1}], [WorkerReport(1, flows=[{"id": 1}]), WorkerReport(2)])
    assert flows == [{"id": 1, "worker": 0}, {"id": 1, "worker": 1}]


def test_a_key_or_router_is_reachable_when_every_running_worker_reaches_it() -> None:
    """A client may land on any worker: until each one that runs knows the key (or
    the router), the whole router does not claim it, and is not ready until all are."""
    own = _status("east", (0, 0), 0, 1)
    late = _status("east/w1", (0, 0), 0, 1)
    late["routing_keys"] = {}
    late["routers"] = [{"id": "east", "reachable": True, "cost": 0, "next_hop": None}]
    late["ready"], late["not_ready"] = False, ["listener web: starting"]
    st = whole_router(own, [], [WorkerReport(1, status=late)])
    assert not st["routing_keys"]["k"]["reachable"]
    assert {r["id"]: r["reachable"] for r in st["routers"]} == {"east": True, "west": False}
    assert not st["ready"] and st["not_ready"] == ["worker 1: listener web: starting"]
    # A worker that is down (being started again) takes no clients: it does not count.
    st = whole_router(own, [], [WorkerReport(1, error="Connection refused")])
    assert st["ready"] and st["routing_keys"]["k"]["reachable"]


def _two_routers_with_workers() -> LinkStateDb:
    """east and east/w1 linked; west and west/w1 linked; west -> east/w1 and
    west/w1 -> east (as links land when the kernel spreads them)."""
    db = LinkStateDb("west")
    k = frozenset({"k"})
    none: frozenset[str] = frozenset()
    db.update(Lsa("west", 1, (("east/w1", 1), ("west/w1", 1)), none, k, site="west"))
    db.update(Lsa("west/w1", 1, (("east", 1), ("west", 1)), none, k, site="west"))
    db.update(Lsa("east", 1, (("east/w1", 1), ("west/w1", 1)), k, none, site="east"))
    db.update(Lsa("east/w1", 1, (("east", 1), ("west", 1)), k, none, site="east"))
    db.compute()
    return db


def test_a_flow_goes_to_the_worker_it_has_a_link_to() -> None:
    db = _two_routers_with_workers()
    # east (cost 2, through a sibling of either router) and east/w1 (cost 1) both serve k.
    assert db.routes["east"].cost == 2 and db.routes["east/w1"].cost == 1
    sites = SiteChoice()
    for distribution in Distribution:
        for _unused in range(4):
            sites.count("k", "east/w1", +1)  # load never moves a flow onto a sibling hop
            assert sites.choose(db, "k", distribution, 0.0) == "east/w1"
    # Refused by the worker it reaches directly: the other worker of that router is next.
    assert sites.choose(db, "k", Distribution.CLOSEST, 0.0, exclude=["east/w1"]) == "east"


def test_the_network_view_shows_each_router_once() -> None:
    db = _two_routers_with_workers()
    net = network_graph(db, "west", False, {})
    assert net["router_id"] == "west"
    routers = {r["id"]: r for r in net["routers"]}
    assert set(routers) == {"east", "west"}
    assert routers["east"]["workers"] == 2 and routers["west"]["here"]
    assert routers["west"]["links"] == [{"to": "east", "cost": 1, "state": "up"}]
    assert net["routing_keys"]["k"]["connectors"] == ["east"]
    assert net["routing_keys"]["k"]["listeners"] == ["west"]


HOLDER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\\0" + sys.argv[1].encode())  # the abstract name, without its leading NUL
print("bound", flush=True)
time.sleep(0.3)  # bound, not listening yet: as a sibling is between bind() and listen()
s.listen(8)
while True:
    s.accept()[0].close()
"""


def test_a_port_claim_waits_for_a_sibling_between_bind_and_listen() -> None:
    """Workers bind a new port together on a reload: one may find the claim bound
    but not yet listening. It must wait for it, not call the port taken."""

    async def main() -> None:
        port = 60000 + os.getpid() % 5000
        name = workers.PortClaims.name(port)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, name[1:]], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "bound\n"
            # This process is the holder's parent: the holder is a worker of "our" group.
            sibling = workers.PortClaims(group=os.getpid())
            await sibling.acquire(port)
            assert port in sibling.unclaimed and port not in sibling.held
            # To a worker of another group, the same holder is another router.
            stranger = workers.PortClaims(group=os.getpid() + 1)
            with pytest.raises(OSError, match="another router's workers"):
                await stranger.acquire(port)
        finally:
            holder.kill()
            holder.wait()
        # The holder gone, the port's claim is taken over (reclaim, on the bind retry).
        await asyncio.sleep(0.05)
        sibling.reclaim()
        assert port in sibling.held and port not in sibling.unclaimed
        sibling.release(port)
        assert port not in sibling.held and port not in sibling.refs

    asyncio.run(main())


def test_worker_zero_asks_each_worker_once_for_what_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A status or a metrics scrape asks each other worker for its status only, a
    flow list for its flows only: one request per worker per answer."""
    from types import SimpleNamespace

    from skiff_router import siblings

    asked: list[tuple[str, str]] = []

    async def answer(path: str, target: str, token: str | None) -> object:
        asked.append((path, target))
        return {"flows": {}} if target == "/v1/status" else [{"id": 7}]

    monkeypatch.setattr(siblings, "_get", answer)
    router = SimpleNamespace(cfg=SimpleNamespace(admin=SimpleNamespace(token_file=None)))
    seat = workers.Seat(0, 3, 4242)
    group = siblings.Workers(router, seat)  # type: ignore[arg-type]
    asyncio.run(group.gather())
    assert asked == [(seat.admin_socket(1), "/v1/status"), (seat.admin_socket(2), "/v1/status")]
    assert [r.status for r in group.reports] == [{"flows": {}}, {"flows": {}}]
    asked.clear()
    asyncio.run(group.gather(flows=True))
    assert [target for _path, target in asked] == ["/v1/flows", "/v1/flows"]
    assert whole_router_flows([], group.reports) == [{"id": 7, "worker": 1}, {"id": 7, "worker": 2}]
