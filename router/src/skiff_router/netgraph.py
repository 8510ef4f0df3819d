"""The whole network as this router knows it from link state (sans-I/O): what
``GET /v1/network`` returns and the console draws.

Every router with an LSA here (and every edge an interior advertises): its id,
site, mode, reachability and path cost, its links with cost and state, and the
routing keys of its listeners and connectors; plus this router's own flow and
byte counts per routing key. A link is ``up`` when both ends advertise it and
``one-way`` when only one does (the far end lost it, or has not announced it yet).
"""

from __future__ import annotations

from typing import Any

from skiff_router.config import router_of_worker
from skiff_router.routing import LinkStateDb


def network_graph(
    db: LinkStateDb,
    self_id: str,
    self_edge: bool,
    key_counts: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """``key_counts``: routing key -> {flows_open, flows_total, bytes_out, bytes_back}."""
    routers: dict[str, dict[str, Any]] = {}

    def router(rid: str, site: str, edge: bool) -> dict[str, Any]:
        route = db.routes.get(rid)
        return routers.setdefault(
            rid,
            {
                "id": rid,
                "site": site or rid,
                "mode": "edge" if edge else "interior",
                "reachable": route is not None,
                "cost": route.cost if route else None,
                "here": rid == self_id,
                "links": [],
                "listeners": [],
                "connectors": [],
            },
        )

    edge_ids = {e.router for lsa in db.lsas.values() for e in lsa.edges}
    for rid, lsa in sorted(db.lsas.items()):
        r = router(rid, lsa.site, rid in edge_ids or (rid == self_id and self_edge))
        r["listeners"] = sorted(lsa.listeners)
        r["connectors"] = sorted(lsa.connectors)
        for peer, cost in lsa.links:
            other = db.lsas.get(peer)
            both = other is not None and rid in other.neighbours
            r["links"].append({"to": peer, "cost": cost, "state": "up" if both else "one-way"})
        for e in lsa.edges:
            er = router(e.router, e.site, True)
            er["listeners"] = sorted(set(er["listeners"]) | e.listeners)
            er["connectors"] = sorted(set(er["connectors"]) | e.connectors)
            r["links"].append({"to": e.router, "cost": e.cost, "state": "up", "edge": True})
    keys: dict[str, dict[str, Any]] = {}
    for r in routers.values():
        for kind in ("listeners", "connectors"):
            for key in r[kind]:
                keys.setdefault(key, {"listeners": [], "connectors": []})[kind].append(r["id"])
    for key in key_counts:
        keys.setdefault(key, {"listeners": [], "connectors": []})
    for key, info in keys.items():
        info["reachable"] = bool(db.serving(key))
        info.update(
            key_counts.get(
                key, {"flows_open": 0, "flows_total": 0, "bytes_out": 0, "bytes_back": 0}
            )
        )
    folded = fold_workers(routers)
    for info in keys.values():
        for kind in ("listeners", "connectors"):
            info[kind] = sorted({router_of_worker(r) for r in info[kind]})
    return {
        "router_id": router_of_worker(self_id),
        "routers": [folded[r] for r in sorted(folded)],
        "routing_keys": {k: keys[k] for k in sorted(keys)},
    }


def fold_workers(routers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One entry per router: the worker processes of a router (``<id>/w<k>``,
    workers.py) are shown as that router, with ``workers`` counting them. Links
    between its own workers are left out; a link to several workers of one router
    is one link, up when any is."""
    out: dict[str, dict[str, Any]] = {}
    for rid in sorted(routers):
        r = routers[rid]
        base = router_of_worker(rid)
        into = out.get(base)
        if into is None:
            into = out[base] = {**r, "id": base, "links": [], "workers": 0}
        into["workers"] += 1
        into["reachable"] = into["reachable"] or r["reachable"]
        costs = [c for c in (into["cost"], r["cost"]) if c is not None]
        into["cost"] = min(costs) if costs else None
        into["here"] = into["here"] or r["here"]
        for kind in ("listeners", "connectors"):
            into[kind] = sorted(set(into[kind]) | set(r[kind]))
        for lk in r["links"]:
            to = router_of_worker(lk["to"])
            if to == base:
                continue
            same = next((x for x in into["links"] if x["to"] == to), None)
            if same is None:
                into["links"].append({**lk, "to": to})
            else:
                same["cost"] = min(same["cost"], lk["cost"])
                if lk["state"] == "up":
                    same["state"] = "up"
    return out
