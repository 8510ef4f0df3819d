"""Link-state database and least-cost routes (sans-I/O): what the network looks
like from here. Which target a new flow takes is targets.py's business."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from skiff_router.codec import Lsa

STALE_AFTER = 60.0  # forget a router that stayed unreachable this long


@dataclass(frozen=True, slots=True)
class Route:
    cost: int
    next_hop: str | None  # None for ourselves


@dataclass
class LinkStateDb:
    self_id: str
    lsas: dict[str, Lsa] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    # Reachable routers (edges included) -> (connector keys, listener keys).
    services: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    edges: set[str] = field(default_factory=set)  # reachable routers that are edges
    sites: dict[str, str] = field(default_factory=dict)  # router id -> its site
    computations: int = 0
    _unreachable_since: dict[str, float] = field(default_factory=dict)
    _serving_src: dict | None = field(default=None, repr=False)
    _serving_cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def update(self, lsa: Lsa) -> bool:
        """Store ``lsa`` if it is newer than what we have. True when stored."""
        old = self.lsas.get(lsa.router)
        if old is not None and old.seq >= lsa.seq:
            return False
        self.lsas[lsa.router] = lsa
        return True

    def compute(self) -> dict[str, Route]:
        self.computations += 1
        self.routes = shortest_paths(self.self_id, self.lsas)
        services: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        edges: set[str] = set()
        sites = {rid: lsa.site or rid for rid, lsa in self.lsas.items()}
        for rid, lsa in self.lsas.items():
            if rid not in self.routes:
                continue
            if rid not in services:
                services[rid] = (lsa.connectors, lsa.listeners)
            for e in lsa.edges:
                # An edge's own interiors speak for it; our own LSA knows better for us.
                if e.router in self.routes and e.router != self.self_id:
                    edges.add(e.router)
                    sites[e.router] = e.site or e.router
                    c, li = services.get(e.router, (frozenset(), frozenset()))
                    services[e.router] = (c | e.connectors, li | e.listeners)
        self.services = services
        self.edges = edges
        self.sites = sites
        return self.routes

    def purge(self, now: float) -> bool:
        """Drop routers that have been unreachable for STALE_AFTER seconds."""
        changed = False
        for rid in list(self.lsas):
            if rid == self.self_id or rid in self.routes:
                self._unreachable_since.pop(rid, None)
                continue
            since = self._unreachable_since.setdefault(rid, now)
            if now - since >= STALE_AFTER:
                del self.lsas[rid]
                del self._unreachable_since[rid]
                changed = True
        return changed

    def serving(self, key: str) -> tuple[str, ...]:
        """Reachable routers with a connector for ``key``, sorted by id."""
        # Cached per key until services change (compute() replaces the dict).
        services = self.services
        if self._serving_src is not services:
            self._serving_src = services
            self._serving_cache = {}
        got = self._serving_cache.get(key)
        if got is None:
            got = tuple(sorted(r for r, (c, _unused) in services.items() if key in c))
            self._serving_cache[key] = got
        return got

    def listening(self, key: str) -> list[str]:
        return sorted(r for r, (_unused, li) in self.services.items() if key in li)

    def keys(self) -> set[str]:
        out: set[str] = set()
        for c, li in self.services.values():
            out |= c | li
        return out


def shortest_paths(self_id: str, lsas: dict[str, Lsa]) -> dict[str, Route]:
    """Dijkstra over edges that both ends advertise; returns reachable routers only.

    Edge routers are leaves: an interior advertises each of its edges (``Lsa.edges``)
    and no router computes a path *through* an edge, only to it. An edge computing
    its own routes (self_id) starts from the interiors that advertise it.
    """
    adj: dict[str, list[tuple[str, int]]] = {}
    for rid, lsa in lsas.items():
        edges = []
        for nb, cost in lsa.links:
            other = lsas.get(nb)
            # An edge counts only when the far end lists us too (two-way check),
            # so a dead router's stale LSA cannot attract traffic.
            if other is not None and rid in other.neighbours:
                edges.append((nb, cost))
        adj[rid] = edges
    own = lsas.get(self_id)
    edge_ids = {e.router for lsa in lsas.values() for e in lsa.edges}
    for rid, lsa in lsas.items():
        for e in lsa.edges:
            if e.router == rid:
                continue
            adj[rid].append((e.router, e.cost))
            if e.router == self_id and own is not None and rid in own.neighbours:
                adj[self_id].append((rid, own.neighbours[rid]))
    routes: dict[str, Route] = {self_id: Route(0, None)}
    # (cost, first hop, router): the first hop in the tuple makes ties deterministic.
    heap: list[tuple[int, str, str]] = []
    for nb, cost in adj.get(self_id, []):
        heapq.heappush(heap, (cost, nb, nb))
    while heap:
        cost, hop, rid = heapq.heappop(heap)
        if rid in routes:
            continue
        routes[rid] = Route(cost, hop)
        if rid in edge_ids:
            continue  # an edge: never a transit hop
        for nb, c in adj.get(rid, []):
            if nb not in routes:
                heapq.heappush(heap, (cost + c, hop, nb))
    return routes
