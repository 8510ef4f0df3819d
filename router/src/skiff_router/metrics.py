"""Prometheus metrics, built from a router's view at scrape time.

One registry per router (several routers share a process in tests), and no
per-event bookkeeping on the data path: the router already counts what is
exported here. Every metric carries the ``site`` and ``router`` labels.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from skiff_router.view import RouterView

# What generate_latest writes; spelled out because the constant's name moved
# between prometheus-client releases (Debian 12 ships 0.16).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterCollector:
    def __init__(self, view: RouterView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        st = self.view.status()
        counters = self.view.counters()
        me = [st["site"], st["router_id"]]
        who = ["site", "router"]

        def gauge(name: str, doc: str, value: float) -> Metric:
            g = GaugeMetricFamily(name, doc, labels=who)
            g.add_metric(me, value)
            return g

        def counter(name: str, doc: str, value: float) -> Metric:
            c = CounterMetricFamily(name, doc, labels=who)
            c.add_metric(me, value)
            return c

        flows = st["flows"]
        yield gauge("skiff_flows_open", "Flows open in this router", flows["open"])
        yield counter("skiff_flows", "Flows handled by this router since start", flows["total"])
        yield counter(
            "skiff_flow_retries", "Flows moved to another target after a refusal", flows["retried"]
        )
        c = CounterMetricFamily(
            "skiff_bytes",
            "Bytes through this router per routing key; direction out = client to "
            "connector, back = connector to client",
            labels=[*who, "routing_key", "direction"],
        )
        for key, v in st["routing_keys"].items():
            c.add_metric([*me, key, "out"], v["bytes"]["out"])
            c.add_metric([*me, key, "back"], v["bytes"]["back"])
        yield c
        g = GaugeMetricFamily(
            "skiff_link_up",
            "1 when the link is up, 0 otherwise",
            labels=[*who, "link", "direction", "peer"],
        )
        worker_ids = {w["index"]: w.get("router_id") for w in st.get("workers", ())}
        for lk in st["links"]:
            # Each worker process has links of its own: its router id tells them apart.
            router = worker_ids.get(lk.get("worker", 0)) or st["router_id"]
            g.add_metric(
                [st["site"], router, lk["name"], lk["direction"], lk["peer"] or ""],
                1 if lk["state"] == "up" else 0,
            )
        yield g
        yield counter(
            "skiff_route_computations",
            "Shortest-path recomputations",
            counters["route_computations"],
        )
        yield gauge(
            "skiff_routers_reachable",
            "Routers reachable (self included)",
            sum(1 for r in st["routers"] if r["reachable"]),
        )
        g = GaugeMetricFamily(
            "skiff_routing_key_reachable",
            "1 when a connector for the key is reachable",
            labels=[*who, "routing_key"],
        )
        for key, v in st["routing_keys"].items():
            g.add_metric([*me, key], 1 if v["reachable"] else 0)
        yield g
        yield counter(
            "skiff_multicast_received",
            "Multicast messages received from links",
            st["multicast"]["received"],
        )
        yield counter("skiff_config_reloads", "Successful reloads", counters["config_reloads"])
        yield gauge("skiff_ready", "1 when the router is ready", 1 if st["ready"] else 0)
        g = GaugeMetricFamily(
            "skiff_certificate_expiry_timestamp_seconds",
            "When each certificate the router uses expires (unix seconds); kind: server, "
            "site-ca, sibling, link-client, link-client-next, link-ca, listener, "
            "listener-next, connector-ca, connector-client",
            labels=[*who, "kind", "name"],
        )
        for kind, name, expiry in self.view.certificates():
            if expiry is not None:
                g.add_metric([*me, kind, name], expiry)
        yield g
        info = GaugeMetricFamily(
            "skiff_router_info",
            "Always 1: the router's version and the event loop it runs on",
            labels=[*who, "version", "event_loop"],
        )
        info.add_metric([*me, st["version"], st.get("event_loop", "")], 1)
        yield info


def registry_for(view: RouterView) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(view))  # type: ignore[arg-type]
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
