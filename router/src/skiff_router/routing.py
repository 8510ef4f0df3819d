"""Link-state database and least-cost routes (sans-I/O)."""

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
    _unreachable_since: dict[str, float] = field(default_factory=dict)
    _rr: dict[str, int] = field(default_factory=dict)

    def update(self, lsa: Lsa) -> bool:
        """Store ``lsa`` if it is newer than what we have. True when stored."""
        old = self.lsas.get(lsa.router)
        if old is not None and old.seq >= lsa.seq:
            return False
        self.lsas[lsa.router] = lsa
        return True

    def compute(self) -> dict[str, Route]:
        self.routes = shortest_paths(self.self_id, self.lsas)
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

    def serving(self, key: str) -> list[str]:
        """Reachable routers with a connector for ``key``, sorted by id."""
        return sorted(
            r for r, lsa in self.lsas.items() if r in self.routes and key in lsa.connectors
        )

    def listening(self, key: str) -> list[str]:
        return sorted(
            r for r, lsa in self.lsas.items() if r in self.routes and key in lsa.listeners
        )

    def choose(self, key: str) -> str | None:
        """Least-cost reachable router serving ``key``; ties spread round-robin."""
        candidates = self.serving(key)
        if not candidates:
            return None
        best = min(self.routes[r].cost for r in candidates)
        ties = [r for r in candidates if self.routes[r].cost == best]
        n = self._rr.get(key, 0)
        self._rr[key] = n + 1
        return ties[n % len(ties)]

    def keys(self) -> set[str]:
        out: set[str] = set()
        for r, lsa in self.lsas.items():
            if r in self.routes:
                out |= lsa.connectors | lsa.listeners
        return out


def shortest_paths(self_id: str, lsas: dict[str, Lsa]) -> dict[str, Route]:
    """Dijkstra over edges that both ends advertise; returns reachable routers only."""
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
        for nb, c in adj.get(rid, []):
            if nb not in routes:
                heapq.heappush(heap, (cost + c, hop, nb))
    return routes
