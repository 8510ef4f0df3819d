"""Prometheus metrics, built from the router's state at scrape time.

One registry per Router (several routers can share a process in tests), and
no per-event bookkeeping on the data path: the core already counts what is
exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from skiff_router.runtime import Router

# What generate_latest writes; spelled out because the constant's name moved
# between prometheus-client releases (Debian 12 ships 0.16).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterCollector:
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        r = self.router
        core = r.core
        site = r.cfg.site

        g = GaugeMetricFamily("skiff_flows_open", "Flows open in this router", labels=["site"])
        g.add_metric([site], len(core.flows))
        yield g
        c = CounterMetricFamily(
            "skiff_flows", "Flows handled by this router since start", labels=["site"]
        )
        c.add_metric([site], core.flows_total)
        yield c
        c = CounterMetricFamily(
            "skiff_flow_retries", "Flows moved to another target after a refusal", labels=["site"]
        )
        c.add_metric([site], core.retries)
        yield c
        c = CounterMetricFamily(
            "skiff_bytes",
            "Bytes through this router per routing key; direction out = client to "
            "connector, back = connector to client",
            labels=["site", "routing_key", "direction"],
        )
        for key, (out, back) in sorted(core.bytes_by_key().items()):
            c.add_metric([site, key, "out"], out)
            c.add_metric([site, key, "back"], back)
        yield c
        g = GaugeMetricFamily(
            "skiff_link_up",
            "1 when the link is up, 0 otherwise",
            labels=["site", "link", "direction", "peer"],
        )
        for lk in r.status_links():
            g.add_metric(
                [site, lk["name"], lk["direction"], lk["peer"] or ""],
                1 if lk["state"] == "up" else 0,
            )
        yield g
        c = CounterMetricFamily(
            "skiff_route_computations", "Shortest-path recomputations", labels=["site"]
        )
        c.add_metric([site], core.db.computations)
        yield c
        g = GaugeMetricFamily(
            "skiff_routers_reachable", "Routers reachable (self included)", labels=["site"]
        )
        g.add_metric([site], len(core.db.routes))
        yield g
        g = GaugeMetricFamily(
            "skiff_routing_key_reachable",
            "1 when a connector for the key is reachable",
            labels=["site", "routing_key"],
        )
        for key, v in core.keys_status().items():
            g.add_metric([site, key], 1 if v["reachable"] else 0)
        yield g
        c = CounterMetricFamily(
            "skiff_multicast_received", "Multicast messages received from links", labels=["site"]
        )
        c.add_metric([site], core.mcast_in)
        yield c
        c = CounterMetricFamily("skiff_config_reloads", "Successful reloads", labels=["site"])
        c.add_metric([site], r.reloads)
        yield c
        g = GaugeMetricFamily("skiff_ready", "1 when the router is ready", labels=["site"])
        g.add_metric([site], 1 if r.ready[0] else 0)
        yield g


def registry_for(router: Router) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(router))  # type: ignore[arg-type]
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
