"""Routing key -> target, in one place (sans-I/O).

A multi-key listener first picks the routing key of a new flow (``KeyChoice``, by
its strategy). A new flow for a routing key is then placed twice: the listener's router picks the
router (site) that serves it (``SiteChoice``, by the listener's
distribution), and that router picks one of its local connectors for the key
(``ConnectorChoice``). Both avoid a target that refused a connection for
DOWN_BACKOFF seconds, and spread ties round-robin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from skiff_router.config import (
    ConnectorConfig,
    Distribution,
    ListenerConfig,
    Strategy,
    router_of_worker,
)
from skiff_router.routing import LinkStateDb

DOWN_BACKOFF = 2.0  # a target that refused a flow gets no new flows for this long
RESOLVE_TTL = 5.0  # a connector host name's addresses are looked up again after this


class KeyChoice:
    """Which routing key a listener's new flow takes (one per listener).

    priority: the first key in order that a reachable router serves, so new flows
    go back to a key as soon as its connector is reachable again. weighted: smooth
    weighted round robin over the served keys, so any run of flows is spread by
    weight with no randomness (and a test can count it exactly).
    """

    def __init__(self) -> None:
        self._credit: dict[str, int] = {}
        self.flows: dict[str, int] = {}  # new flows sent to each key

    def choose(self, cfg: ListenerConfig, db: LinkStateDb) -> str | None:
        if not cfg.routing_keys:
            key = cfg.routing_key
        else:
            up = [k for k in cfg.routing_keys if db.serving(k.key)]
            if not up:
                return None
            if cfg.strategy is Strategy.PRIORITY:
                key = up[0].key
            else:
                credit = self._credit
                for k in up:
                    credit[k.key] = credit.get(k.key, 0) + k.weight
                best = max(up, key=lambda k: credit[k.key])  # the first of equals
                credit[best.key] -= sum(k.weight for k in up)
                key = best.key
        self.flows[key] = self.flows.get(key, 0) + 1
        return key

    @staticmethod
    def in_use(cfg: ListenerConfig, db: LinkStateDb) -> list[str]:
        """The keys new flows go to now: priority, the first served key; weighted,
        every served key; a one-key listener, its key if served."""
        up = [k for k in cfg.key_names() if db.serving(k)]
        return up[:1] if cfg.strategy is Strategy.PRIORITY else up


def _nearest_workers(targets: list[str], routes: dict[str, Any]) -> list[str]:
    """Of the worker processes of one router (workers.py) only the nearest: a flow
    goes straight to a worker this one has a link to rather than through another
    worker of either router (an extra hop, and one more process it depends on)."""
    best: dict[str, int] = {}
    for r in targets:
        base = router_of_worker(r)
        best[base] = min(best.get(base, routes[r].cost), routes[r].cost)
    return [r for r in targets if routes[r].cost == best[router_of_worker(r)]]


class SiteChoice:
    """Which router serves a new flow on a key, from this router's point of view."""

    def __init__(self) -> None:
        # Flows opened here and still open, per key and target router.
        self.outstanding: dict[str, dict[str, int]] = {}
        self._down: dict[str, dict[str, float]] = {}  # key -> router -> until
        self._rr: dict[str, int] = {}

    def choose(
        self,
        db: LinkStateDb,
        key: str,
        distribution: Distribution,
        now: float,
        exclude: Iterable[str] = (),
    ) -> str | None:
        """closest: least path cost. balanced: least (path cost + flows we have
        outstanding to that target), so a loaded target sheds new flows. Ties
        round-robin. A router that refused recently is used only when nothing else
        serves the key; routers in ``exclude`` (tried already) never."""
        serving = db.serving(key)
        n = self._rr.get(key, 0)
        if len(serving) == 1 and not exclude:
            # One target: it wins whatever the scores (the round robin still turns).
            self._rr[key] = n + 1
            return serving[0]
        tried = set(exclude)
        usable = [r for r in serving if r not in tried]
        if not usable:
            return None
        avoid = self.avoided(key, now)
        usable = [r for r in usable if r not in avoid] or usable
        routes = db.routes
        usable = _nearest_workers(usable, routes)
        load = self.outstanding.get(key)
        if distribution is Distribution.CLOSEST or not load:
            scores = {r: routes[r].cost for r in usable}
        else:
            scores = {r: routes[r].cost + load.get(r, 0) for r in usable}
        best = min(scores.values())
        ties = [r for r in usable if scores[r] == best]
        self._rr[key] = n + 1
        return ties[n % len(ties)]

    def count(self, key: str, router: str, n: int) -> None:
        """A flow to ``router`` opened here (+1) or ended (-1)."""
        per = self.outstanding.setdefault(key, {})
        v = per.get(router, 0) + n
        if v > 0:
            per[router] = v
        else:
            per.pop(router, None)

    def refused(self, key: str, router: str, now: float) -> None:
        self._down.setdefault(key, {})[router] = now + DOWN_BACKOFF

    def avoided(self, key: str, now: float) -> set[str]:
        down = self._down.get(key)
        if not down:
            return set()
        for r in [r for r, until in down.items() if until <= now]:
            del down[r]
        return set(down)

    def status(self, db: LinkStateDb, key: str, now: float) -> list[dict[str, Any]]:
        load = self.outstanding.get(key, {})
        down = self.avoided(key, now)
        return [
            {
                "router": r,
                "cost": db.routes[r].cost,
                "outstanding": load.get(r, 0),
                "down": r in down,
            }
            for r in db.serving(key)
        ]


@dataclass(eq=False)
class Connector:
    """A local connector and what this router knows about it."""

    cfg: ConnectorConfig
    flows: int = 0  # open connections
    down_until: float = 0.0
    error: str | None = None  # the last connect error
    # The host name's addresses, the one that last worked first; a lookup per new
    # flow would cost more than the connect itself.
    addresses: tuple[str, ...] = ()
    resolved_until: float = 0.0


class ConnectorChoice:
    """Which local connector takes a flow that arrived for a key."""

    def __init__(self) -> None:
        self.by_name: dict[str, Connector] = {}
        self._by_key: dict[str, list[Connector]] = {}
        self._rr: dict[str, int] = {}

    def configure(self, configs: Iterable[ConnectorConfig]) -> None:
        """The connectors in force; an unchanged one keeps its counters."""
        old = self.by_name
        self.by_name = {
            c.name: old[c.name] if c.name in old and old[c.name].cfg == c else Connector(c)
            for c in configs
        }
        self._by_key = {}
        for c in self.by_name.values():
            self._by_key.setdefault(c.cfg.routing_key, []).append(c)

    def keys(self) -> set[str]:
        return set(self._by_key)

    def order(self, key: str, now: float) -> list[Connector]:
        """Connectors to try for ``key``, in order: up ones first, fewest open flows
        first, ties round-robin; those in backoff last (tried when nothing else is)."""
        matching = self._by_key.get(key)
        if not matching:
            return []
        n = self._rr.get(key, 0)
        self._rr[key] = n + 1
        if len(matching) == 1:
            return matching
        k = n % len(matching)
        rotated = matching[k:] + matching[:k]
        return sorted(rotated, key=lambda c: (c.down_until > now, c.flows))

    @staticmethod
    def connected(c: Connector) -> None:
        c.flows += 1
        c.error, c.down_until = None, 0.0

    @staticmethod
    def refused(c: Connector, error: str, now: float) -> None:
        c.error, c.down_until = error, now + DOWN_BACKOFF
        c.resolved_until = 0.0  # look the name up again: it may have moved

    @staticmethod
    def cached_addresses(c: Connector, now: float) -> tuple[str, ...]:
        """The host's addresses if looked up recently, else ()."""
        return c.addresses if c.resolved_until > now else ()

    @staticmethod
    def resolved(c: Connector, addresses: Iterable[str], now: float) -> tuple[str, ...]:
        c.addresses = tuple(dict.fromkeys(addresses))
        c.resolved_until = now + RESOLVE_TTL
        return c.addresses

    @staticmethod
    def worked(c: Connector, address: str) -> None:
        """``address`` took the connection: try it first next time."""
        if c.addresses and c.addresses[0] != address:
            c.addresses = (address, *(a for a in c.addresses if a != address))

    @staticmethod
    def closed(c: Connector) -> None:
        c.flows -= 1
