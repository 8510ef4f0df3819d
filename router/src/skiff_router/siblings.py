"""A worker's side of its router's other workers (workers.py): the links to them
over their private Unix sockets, and for worker 0 the whole router's status,
added up from what each worker reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skiff_router import tls
from skiff_router.actions import Direction
from skiff_router.config import AdminTokenError, Endpoint, LinkConfig, Mode, read_admin_token
from skiff_router.dialers import Dialer, Incoming
from skiff_router.transports import LinkConn
from skiff_router.workers import Seat, connected_socket, listening_socket

if TYPE_CHECKING:
    from skiff_router.runtime import Router

log = logging.getLogger("workers")

ASK_TIMEOUT = 2.0  # seconds a worker gets to answer worker 0
MAX_ANSWER = 16 * 1024 * 1024


@dataclass
class WorkerReport:
    """What one other worker said (its ``status``, or its ``flows``: what was asked),
    or why it said nothing."""

    index: int
    status: dict[str, Any] | None = None
    flows: list[dict[str, Any]] | None = None
    error: str | None = None


class Workers:
    """This worker's links to the other workers of its router and, for worker 0,
    the reports gathered from them."""

    def __init__(self, router: Router, seat: Seat) -> None:
        self.router = router
        self.seat = seat
        self.server: asyncio.AbstractServer | None = None
        self.dialers: dict[int, Dialer] = {}
        self.reports: list[WorkerReport] = []

    @property
    def linked(self) -> bool:
        # An edge carries no flows for other routers: each edge worker uses its own
        # uplinks, and the interior routers reach each worker directly.
        return self.router.cfg.mode is Mode.INTERIOR

    async def start(self) -> None:
        if not self.linked:
            return
        router = self.router
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_unix_server(
                lambda: LinkConn(router, Incoming(worker=True), "worker", Direction.INCOMING),
                sock=listening_socket(self.seat.link_socket(self.seat.index)),
            )
        except OSError as exc:
            # The later workers dial this one: without the socket, flows that land
            # elsewhere reach this worker's links only through other workers.
            log.error("worker socket: %s", tls.describe(exc))
        # Each pair of workers is linked once: the later one dials the earlier.
        for j in range(self.seat.index):
            cfg = LinkConfig(
                name=f"worker-{j}",
                peer=router.cfg.site,
                cost=1,
                endpoints=(Endpoint(f"worker-{j}", 0),),
                ca="",
                cert="",
                key="",
            )
            d = Dialer(cfg, worker_socket=self.seat.link_socket(j))
            self.dialers[j] = d
            d.task = router.spawn(router.run_dialer(d))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        await self.router.end_dialers(list(self.dialers.values()), "router stopping")
        self.dialers.clear()

    def links_status(self) -> list[dict[str, Any]]:
        """This worker's links to the other workers."""
        out = []
        for j, d in sorted(self.dialers.items()):
            out.append({"worker": j, "direction": "outgoing", "state": d.state.value})
        for lc in self.router.links.values():
            owner = lc.owner
            if isinstance(owner, Incoming) and owner.worker and owner.peer is not None:
                out.append({"router": owner.peer, "direction": "incoming", "state": "up"})
        return out

    # -- worker 0: the whole router ----------------------------------------------------------

    async def gather(self, flows: bool = False) -> None:
        """Ask every other worker for its status, or its flows (worker 0 only): one
        request each, for what the answer being made needs."""
        if not self.seat.primary:
            return
        token = None
        token_file = self.router.cfg.admin.token_file
        if token_file is not None:
            with contextlib.suppress(AdminTokenError):
                token = read_admin_token(token_file)
        self.reports = list(
            await asyncio.gather(
                *(self._ask(k, token, flows) for k in range(1, self.seat.count)),
            )
        )

    async def _ask(self, index: int, token: str | None, flows: bool) -> WorkerReport:
        path = self.seat.admin_socket(index)
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                answer = await _get(path, "/v1/flows" if flows else "/v1/status", token)
        except (TimeoutError, OSError, ValueError) as exc:
            return WorkerReport(index, error=tls.describe(exc) or "no answer")
        if flows:
            return WorkerReport(index, flows=answer)
        return WorkerReport(index, status=answer)


async def _get(path: str, target: str, token: str | None) -> Any:
    """GET over a worker's private admin socket; the JSON body."""
    reader, writer = await asyncio.open_unix_connection(
        sock=connected_socket(path), limit=MAX_ANSWER
    )
    try:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(f"GET {target} HTTP/1.1\r\nHost: worker\r\n{auth}\r\n".encode())
        await writer.drain()
        raw = await reader.read(MAX_ANSWER)
    finally:
        writer.close()
    head, _sep, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head.split(b"\r\n", 1)[0].decode("latin-1", "replace"))
    return json.loads(body)


# Counters of /v1/status link_access that each worker keeps for its own links.
ACCESS_COUNTERS = ("refused_credentials", "credentials_in_use", "grants_refused")


def whole_router(
    own: dict[str, Any], own_worker_links: list[dict[str, Any]], reports: list[WorkerReport]
) -> dict[str, Any]:
    """Worker 0's status with the other workers' added: flows, bytes and connector
    counts summed, links listed with their worker, and a ``workers`` section. A
    routing key or router is reachable, and the router ready, only when it is so
    for every worker that runs: a client may land on any of them, and a wait for
    convergence must not end while one of them still refuses new flows. A router's
    cost and next hop are those of the worker with the cheapest path to it."""
    st = dict(own)
    st["not_ready"] = list(own["not_ready"])
    routers = {r["id"]: dict(r) for r in own["routers"]}
    st["links"] = [{**lk, "worker": 0} for lk in own["links"]]
    flows = dict(own["flows"])
    keys = {k: {**v, "bytes": dict(v["bytes"])} for k, v in own["routing_keys"].items()}
    connectors = {c["name"]: dict(c) for c in own["connectors"]}
    # Each worker counts the links it refused itself: the router's count is their sum.
    access = dict(own["link_access"]) if own.get("link_access") else None
    workers = [_worker_entry(0, own, own_worker_links)]
    for rep in reports:
        other = rep.status
        if other is None:
            workers.append({"index": rep.index, "state": "down", "error": rep.error})
            continue
        workers.append(_worker_entry(rep.index, other, other.get("worker_links") or []))
        st["links"] += [{**lk, "worker": rep.index} for lk in other["links"]]
        st["ready"] = st["ready"] and other["ready"]
        st["not_ready"] += [f"worker {rep.index}: {why}" for why in other["not_ready"]]
        seen = {r["id"]: r for r in other["routers"]}
        for rid, r in routers.items():
            theirs = seen.get(rid)
            r["reachable"] = r["reachable"] and theirs is not None and theirs["reachable"]
            # The router's path to it is its best worker's (one with a link of its own).
            if r["reachable"] and theirs is not None and theirs["cost"] < r["cost"]:
                r["cost"], r["next_hop"] = theirs["cost"], theirs["next_hop"]
        for name in ("open", "total", "retried"):
            flows[name] += other["flows"][name]
        for key, mine in keys.items():
            v = other["routing_keys"].get(key)
            if v is None:
                mine["reachable"] = False  # that worker does not know the key yet
                continue
            mine["reachable"] = mine["reachable"] and v["reachable"]
            for direction in ("out", "back"):
                mine["bytes"][direction] += v["bytes"][direction]
        for c in other["connectors"]:
            if c["name"] in connectors:
                connectors[c["name"]]["flows"] += c["flows"]
        theirs = other.get("link_access")
        if access is not None and theirs:
            for name in ACCESS_COUNTERS:
                access[name] = access.get(name, 0) + theirs.get(name, 0)
    st["flows"] = flows
    st["routing_keys"] = keys
    st["routers"] = list(routers.values())
    st["connectors"] = list(connectors.values())
    if access is not None:
        st["link_access"] = access
    st["workers"] = workers
    return st


def _worker_entry(index: int, st: dict[str, Any], links: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "index": index,
        "state": "up",
        "router_id": st["router_id"],
        "pid": st.get("pid"),
        "ready": st["ready"],
        "flows_open": st["flows"]["open"],
        "flows_total": st["flows"]["total"],
        "links_up": sum(1 for lk in st["links"] if lk["state"] == "up"),
        "worker_links": links,
    }


def whole_router_flows(
    own: list[dict[str, Any]], reports: list[WorkerReport]
) -> list[dict[str, Any]]:
    out = [{**f, "worker": 0} for f in own]
    for rep in reports:
        out += [{**f, "worker": rep.index} for f in rep.flows or []]
    return out
