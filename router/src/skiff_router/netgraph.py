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
    return {
        "router_id": self_id,
        "routers": [routers[r] for r in sorted(routers)],
        "routing_keys": {k: keys[k] for k in sorted(keys)},
    }
