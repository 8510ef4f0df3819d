"""From what the agent knows (pods, Services, announcements) to what should be:
the overlay's entries and the proxy Service actions. Pure functions of plain data.

Proxy Services: for every Service another kubernetes site exposes, a Service of
the same name here, labelled as the agent's own, selecting the router pods,
each port forwarded to a listener port the agent allocates on the router pod
(``targetPort``). The API is where allocations live: a port already in an
owned Service is kept, so replicas of one site agree and a restarted agent
picks up where it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from skiff_router.kube.config import AgentConfig, SelectorConnector
from skiff_router.kube.exposure import (
    ROUTING_KEY,
    Announcement,
    Exposure,
    Problem,
    exposure_connectors,
    exposures,
    port_routing_key,
)
from skiff_router.kube.objects import OWNED_LABEL, SITE_LABEL, Pod, Service

EXPOSED_AT = "skiff.io/exposed-at"  # on a proxy Service: the sites serving it


@dataclass(frozen=True)
class Create:
    name: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Patch:
    name: str
    body: dict[str, Any]  # a JSON merge patch carrying the uid and resourceVersion it applies to


@dataclass(frozen=True)
class Delete:
    name: str
    uid: str
    resource_version: str


Action = Create | Patch | Delete


@dataclass(frozen=True)
class Proxy:
    name: str
    routing_key: str
    ports: tuple[int, ...]
    sites: tuple[str, ...]


@dataclass(frozen=True)
class Inputs:
    pods: Mapping[str, Pod] | None  # None: no complete pod list yet (or not watched)
    services: Mapping[str, Service] | None  # None: no complete Service list yet
    announcements: list[Announcement] = field(default_factory=list)
    announcements_complete: bool = False  # a whole ttl heard since the agent started
    own_pod: str | None = None  # this agent's pod (its router's), for sibling links


@dataclass
class Outcome:
    # Overlay entries by source; None = that source is not known yet (keep the last good).
    pod_connectors: list[dict[str, Any]] | None
    service_connectors: list[dict[str, Any]] | None
    proxy_listeners: list[dict[str, Any]] | None
    sibling_links: list[dict[str, Any]] | None
    actions: list[Action]
    exposed: list[Exposure] | None  # this site's announcement; None = not known yet
    problems: list[Problem]


# -- connectors by pod selector --------------------------------------------------------------


def selector_connectors(
    connectors: tuple[SelectorConnector, ...], pods: Mapping[str, Pod], namespace: str
) -> tuple[list[dict[str, Any]], list[Problem]]:
    out: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for c in connectors:
        matching = [p for p in pods.values() if c.selector.matches(p.labels)]
        ready = sorted((p for p in matching if p.ready and p.ip), key=lambda p: p.name)
        if not ready:
            note = f" ({len(matching)} matching, none ready)" if matching else ""
            problems.append(
                Problem(
                    f"connector/{c.name}",
                    "selector",
                    f"matches no ready pod in namespace {namespace}{note}; check the labels",
                )
            )
        for p in ready:
            out.append(
                {
                    "name": f"{c.name}@{p.name}",
                    "routing_key": c.routing_key,
                    "host": p.ip,
                    "port": c.port,
                }
            )
    return out, problems


# -- links between the router pods of this site (replicas) ---------------------------------

SIBLING_PREFIX = "sibling-"


def sibling_links(
    cfg: AgentConfig, pods: Mapping[str, Pod], own_pod: str | None
) -> tuple[list[dict[str, Any]] | None, list[Problem]]:
    """One link from this router to each other running router pod of the site whose
    name sorts after its own, so each pair is linked once and both ends agree. The
    pod address is dialed; the server certificate is checked against the link
    Service's name. None while this pod is not in the list yet (keep the last)."""
    siblings = cfg.siblings
    if siblings is None:
        return [], []
    if not own_pod:
        return [], [
            Problem(
                "siblings",
                "SKIFF_POD_NAME",
                "the agent does not know its pod (the Deployment sets SKIFF_POD_NAME); "
                "this router links to no other replica",
            )
        ]
    routers = {
        name: pod
        for name, pod in pods.items()
        if pod.running and all(pod.labels.get(k) == v for k, v in cfg.router_pod_labels.items())
    }
    if own_pod not in routers:
        return None, []
    return [
        {
            "name": f"{SIBLING_PREFIX}{name}",
            "peer": cfg.site,
            "cost": 1,
            "endpoints": [
                {"host": pod.ip, "port": siblings.port, "server_name": siblings.server_name}
            ],
            "ca": siblings.ca,
            "cert": siblings.cert,
            "key": siblings.key,
            **({"next_cert": siblings.next_cert} if siblings.next_cert else {}),
        }
        for name, pod in sorted(routers.items())
        if name > own_pod and pod.ip
    ], []


# -- proxies ---------------------------------------------------------------------------------


def desired_proxies(
    cfg: AgentConfig,
    announcements: list[Announcement],
    services: Mapping[str, Service],
    exposed_here: Mapping[str, Exposure],
) -> tuple[dict[str, Proxy], list[Problem]]:
    """Merge the other sites' announcements by Service name. Sites announcing one name
    with different routing keys or ports: the first site by name wins, the rest is a
    reported conflict. A name taken here by a Service the agent does not own gets no
    proxy (reported, unless that Service is itself exposed with the same key and ports,
    which is one service run at several sites)."""
    by_name: dict[str, list[tuple[str, Exposure]]] = {}
    for ann in sorted(announcements, key=lambda a: a.site):
        if ann.site == cfg.site:
            continue
        for exp in ann.services:
            entries = by_name.setdefault(exp.name, [])
            if all(site != ann.site for site, _unused in entries):
                entries.append((ann.site, exp))
    out: dict[str, Proxy] = {}
    problems: list[Problem] = []
    for name in sorted(by_name):
        (first_site, first), *rest = by_name[name]
        sites = [first_site]
        for site, exp in rest:
            if (exp.routing_key, exp.ports) == (first.routing_key, first.ports):
                sites.append(site)
            else:
                problems.append(
                    Problem(
                        f"announcement/{site}",
                        f"services[{name}]",
                        f"{first_site} and {site} expose {name} with different routing keys or "
                        f"ports; {first_site}'s is used here: make them agree",
                    )
                )
        local = services.get(name)
        if local is not None and not local.owned_by(cfg.site):
            same = exposed_here.get(name)
            if same is None or (same.routing_key, same.ports) != (first.routing_key, first.ports):
                problems.append(
                    Problem(
                        f"service/{name}",
                        "metadata.name",
                        f"a Service {name} that the agent does not own exists in namespace "
                        f"{cfg.namespace}; no proxy for {name} of {', '.join(sites)} "
                        "(rename one of them)",
                    )
                )
            continue
        out[name] = Proxy(name, first.routing_key, first.ports, tuple(sites))
    return out, problems


def proxy_of_owned(svc: Service) -> Proxy | None:
    """What an owned proxy Service stands for, read back from its annotations."""
    key = svc.annotations.get(ROUTING_KEY)
    ports = tuple(sorted(p.port for p in svc.ports))
    if not key or not ports:
        return None
    sites = tuple(s for s in svc.annotations.get(EXPOSED_AT, "").split(",") if s)
    return Proxy(svc.name, key, ports, sites)


def proxy_labels(cfg: AgentConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "skiff",
        "app.kubernetes.io/part-of": "skiff",
        SITE_LABEL: cfg.site,
        OWNED_LABEL: "true",
    }


def _proxy_ports(proxy: Proxy, targets: Mapping[int, int]) -> list[dict[str, Any]]:
    return [
        {"name": f"port-{p}", "protocol": "TCP", "port": p, "targetPort": targets[p]}
        for p in proxy.ports
    ]


def proxy_body(cfg: AgentConfig, proxy: Proxy, targets: Mapping[int, int]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": proxy.name,
            "namespace": cfg.namespace,
            "labels": proxy_labels(cfg),
            "annotations": {ROUTING_KEY: proxy.routing_key, EXPOSED_AT: ",".join(proxy.sites)},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": dict(cfg.router_pod_labels),
            "ports": _proxy_ports(proxy, targets),
        },
    }


def _up_to_date(cfg: AgentConfig, svc: Service, proxy: Proxy, targets: Mapping[int, int]) -> bool:
    have = {(p.name, p.protocol, p.port, p.target_port) for p in svc.ports}
    want = {(x["name"], "TCP", x["port"], x["targetPort"]) for x in _proxy_ports(proxy, targets)}
    labels_ok = all(svc.labels.get(k) == v for k, v in proxy_labels(cfg).items())
    annotations_ok = svc.annotations.get(ROUTING_KEY) == proxy.routing_key and svc.annotations.get(
        EXPOSED_AT, ""
    ) == ",".join(proxy.sites)
    return (
        have == want
        and labels_ok
        and annotations_ok
        and svc.type == "ClusterIP"
        and svc.selector == cfg.router_pod_labels
    )


def _patch_body(
    cfg: AgentConfig, svc: Service, proxy: Proxy, targets: Mapping[int, int]
) -> dict[str, Any]:
    body = proxy_body(cfg, proxy, targets)
    del body["apiVersion"], body["kind"]
    meta = body["metadata"]
    del meta["namespace"]
    # uid + resourceVersion: the patch applies to the object we saw (ours), or fails with 409.
    meta["uid"], meta["resourceVersion"] = svc.uid, svc.resource_version
    selector: dict[str, Any] = {k: None for k in svc.selector if k not in cfg.router_pod_labels}
    selector.update(cfg.router_pod_labels)
    body["spec"]["selector"] = selector
    return body


def plan_proxies(
    cfg: AgentConfig, desired: Mapping[str, Proxy], services: Mapping[str, Service]
) -> tuple[list[Action], list[dict[str, Any]], list[Problem]]:
    """Actions on owned proxy Services, and the overlay listeners behind them."""
    first, last = cfg.proxy_ports
    owned = {n: s for n, s in services.items() if s.owned_by(cfg.site)}
    targets: dict[str, dict[int, int]] = {}
    used: set[int] = set()
    # Keep every allocation already in the API (first Service by name wins a duplicate).
    for name in sorted(owned):
        proxy = desired.get(name)
        if proxy is None:
            continue
        for sp in sorted(owned[name].ports, key=lambda p: p.port):
            t = sp.target_port
            if (
                sp.port in proxy.ports
                and isinstance(t, int)
                and first <= t <= last
                and t not in used
            ):
                targets.setdefault(name, {})[sp.port] = t
                used.add(t)
    free = (p for p in range(first, last + 1) if p not in used)
    problems: list[Problem] = []
    actions: list[Action] = []
    complete: set[str] = set()
    for name in sorted(desired):
        proxy = desired[name]
        have = targets.setdefault(name, {})
        for port in proxy.ports:
            if port not in have:
                nxt = next(free, None)
                if nxt is None:
                    break
                have[port] = nxt
        if len(have) < len(proxy.ports):
            problems.append(
                Problem(
                    f"proxy/{name}",
                    "proxy_ports",
                    f"no free listener port in {first}..{last} for {name}; widen proxy_ports",
                )
            )
            continue
        complete.add(name)
        svc = owned.get(name)
        if svc is None:
            actions.append(Create(name, proxy_body(cfg, proxy, have)))
        elif not _up_to_date(cfg, svc, proxy, have):
            actions.append(Patch(name, _patch_body(cfg, svc, proxy, have)))
    for name in sorted(owned):
        if name not in desired:
            svc = owned[name]
            actions.append(Delete(name, svc.uid, svc.resource_version))

    # Listeners follow the owned Services as they are in the API (its targetPorts), so
    # every router pod of the site listens where the Service sends, whichever agent
    # wrote it.
    listeners: list[dict[str, Any]] = []
    for name in sorted(owned):
        proxy = desired.get(name)
        if proxy is None or name not in complete:
            continue
        for sp in sorted(owned[name].ports, key=lambda p: p.port):
            t = sp.target_port
            if sp.port in proxy.ports and isinstance(t, int) and first <= t <= last:
                listeners.append(
                    {
                        "name": f"proxy/{name}:{sp.port}",
                        "routing_key": port_routing_key(proxy.routing_key, sp.port, proxy.ports),
                        "host": cfg.proxy_host,
                        "port": t,
                    }
                )
    return actions, _unique_ports(listeners), problems


def _unique_ports(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Two owned Services sharing a targetPort (a race of two replicas) until the patch
    # lands: listen once, for the first by name.
    seen: set[int] = set()
    out = []
    for x in listeners:
        if x["port"] not in seen:
            seen.add(x["port"])
            out.append(x)
    return out


# -- everything ------------------------------------------------------------------------------


def reconcile(cfg: AgentConfig, inputs: Inputs) -> Outcome:
    problems: list[Problem] = []
    pod_connectors = None
    if cfg.connectors and inputs.pods is not None:
        pod_connectors, found = selector_connectors(cfg.connectors, inputs.pods, cfg.namespace)
        problems += found
    elif not cfg.connectors:
        pod_connectors = []
    links: list[dict[str, Any]] | None = [] if cfg.siblings is None else None
    if cfg.siblings is not None and inputs.pods is not None:
        links, found = sibling_links(cfg, inputs.pods, inputs.own_pod)
        problems += found

    if not cfg.expose:
        return Outcome(pod_connectors, [], [], links, [], None, problems)
    if inputs.services is None:
        return Outcome(pod_connectors, None, None, links, [], None, problems)

    found_exposures, found = exposures(inputs.services.values(), cfg.site)
    problems += found
    exposed_here = {e.name: e for e, _unused in found_exposures}
    desired, found = desired_proxies(cfg, inputs.announcements, inputs.services, exposed_here)
    problems += found
    if not inputs.announcements_complete:
        # Right after a start, keep every owned proxy that nobody has repeated yet.
        for name, svc in inputs.services.items():
            if svc.owned_by(cfg.site) and name not in desired:
                kept = proxy_of_owned(svc)
                if kept is not None:
                    desired[name] = kept
    actions, listeners, found = plan_proxies(cfg, desired, inputs.services)
    problems += found
    return Outcome(
        pod_connectors=pod_connectors,
        service_connectors=exposure_connectors(found_exposures),
        proxy_listeners=listeners,
        sibling_links=links,
        actions=actions,
        exposed=[e for e, _unused in found_exposures],
        problems=sorted(set(problems)),
    )


def overlay_source(kind: str, name: str) -> str:
    """Which source an overlay entry came from (to keep the last good entries of a source
    that is not known yet, e.g. right after a restart with the API unreachable)."""
    if kind == "listeners":
        return "proxies"
    if kind == "links":
        return "siblings"
    return "services" if name.startswith("service/") else "pods"


def assemble_overlay(outcome: Outcome, previous: Mapping[str, Any]) -> dict[str, Any]:
    parts = {
        ("connectors", "pods"): outcome.pod_connectors,
        ("connectors", "services"): outcome.service_connectors,
        ("listeners", "proxies"): outcome.proxy_listeners,
        ("links", "siblings"): outcome.sibling_links,
    }
    result: dict[str, Any] = {"listeners": [], "connectors": [], "links": []}
    for (kind, source), entries in parts.items():
        if entries is None:
            entries = [
                e
                for e in previous.get(kind) or []
                if isinstance(e, dict) and overlay_source(kind, str(e.get("name"))) == source
            ]
        result[kind].extend(entries)
    for kind in ("listeners", "connectors", "links"):
        result[kind].sort(key=lambda e: str(e.get("name")))
    return result
