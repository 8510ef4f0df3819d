"""Exposure by annotation and the network-wide announcements of exposed Services.

A Service annotated ``skiff.io/expose: "true"`` becomes one connector per
exposed port at this site, and one entry of this site's announcement on the
router multicast address ``skiff.io/services``. ``AnnouncementBook`` keeps what
the other sites announced, each entry until its ttl runs out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from skiff_router.kube.config import SITE_RE, routing_key_problem
from skiff_router.kube.objects import Service

EXPOSE = "skiff.io/expose"
ROUTING_KEY = "skiff.io/routing-key"
PORT = "skiff.io/port"
ANNOUNCE_ADDRESS = "skiff.io/services"
SERVICE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # DNS-1035 label
MAX_SERVICES = 1000  # per announcement (a message is at most 63 KiB anyway)
MAX_PORTS = 100
MAX_ORIGINS = 1024


def annotation_field(name: str) -> str:
    return f'metadata.annotations["{name}"]'


@dataclass(frozen=True, order=True)
class Problem:
    """Bad input, a conflict or an API failure, for the status and the log."""

    object: str  # "service/backend", "connector/db", "announcement/east", "api/services"
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Exposure:
    """A Service exposed at one site: what an announcement carries about it."""

    name: str
    routing_key: str
    ports: tuple[int, ...]


def port_routing_key(routing_key: str, port: int, ports: tuple[int, ...]) -> str:
    """One port: the routing key itself; several: one key per port, ``<key>:<port>``."""
    return routing_key if len(ports) == 1 else f"{routing_key}:{port}"


def _selected_ports(svc: Service, value: str | None) -> tuple[list[int], Problem | None]:
    tcp = [p for p in svc.ports if p.protocol == "TCP"]
    if value is None:
        if not tcp:
            return [], Problem(f"service/{svc.name}", "spec.ports", "has no TCP port to expose")
        return sorted({p.port for p in tcp}), None
    chosen: set[int] = set()
    for part in (x.strip() for x in value.split(",")):
        match = [p for p in svc.ports if part and (str(p.port) == part or p.name == part)]
        if not match:
            have = ", ".join(f"{p.port}" + (f" ({p.name})" if p.name else "") for p in svc.ports)
            return [], Problem(
                f"service/{svc.name}",
                annotation_field(PORT),
                f"{part!r} is not a port of the Service (it has: {have or 'no ports'}); "
                "give port numbers or names, comma-separated",
            )
        if match[0].protocol != "TCP":
            return [], Problem(
                f"service/{svc.name}",
                annotation_field(PORT),
                f"port {match[0].port} is {match[0].protocol}; only TCP ports can be exposed",
            )
        chosen.add(match[0].port)
    return sorted(chosen), None


def exposure_of(svc: Service, site: str) -> tuple[Exposure | None, Problem | None]:
    """The exposure a Service's annotations ask for, or the problem with them."""
    value = svc.annotations.get(EXPOSE)
    if value is None or value == "false":
        return None, None
    where = f"service/{svc.name}"
    if value != "true":
        return None, Problem(
            where, annotation_field(EXPOSE), f'must be "true" or "false", got {value!r}'
        )
    if svc.owned_by(site):
        return None, Problem(
            where, annotation_field(EXPOSE), "a proxy Service made by the agent is not re-exposed"
        )
    if svc.type == "ExternalName" or svc.cluster_ip in (None, "None"):
        return None, Problem(
            where,
            "spec.clusterIP",
            "a headless or ExternalName Service cannot be exposed; expose a Service with a cluster IP",
        )
    key = svc.annotations.get(ROUTING_KEY, svc.name)
    problem = routing_key_problem(key)
    if problem:
        return None, Problem(where, annotation_field(ROUTING_KEY), problem)
    ports, port_problem = _selected_ports(svc, svc.annotations.get(PORT))
    if port_problem:
        return None, port_problem
    return Exposure(svc.name, key, tuple(ports[:MAX_PORTS])), None


def exposures(
    services: Iterable[Service], site: str
) -> tuple[list[tuple[Exposure, Service]], list[Problem]]:
    found: list[tuple[Exposure, Service]] = []
    problems: list[Problem] = []
    for svc in sorted(services, key=lambda s: s.name):
        exp, problem = exposure_of(svc, site)
        if problem:
            problems.append(problem)
        elif exp is not None:
            found.append((exp, svc))
    return found[:MAX_SERVICES], problems


def exposure_connectors(found: list[tuple[Exposure, Service]]) -> list[dict[str, Any]]:
    """Overlay connectors: each exposed port, reached through the Service's cluster IP."""
    out = []
    for exp, svc in found:
        for port in exp.ports:
            out.append(
                {
                    "name": f"service/{exp.name}:{port}",
                    "routing_key": port_routing_key(exp.routing_key, port, exp.ports),
                    "host": svc.cluster_ip,
                    "port": port,
                }
            )
    return out


# -- announcements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    site: str
    services: tuple[Exposure, ...]
    ttl: int


def encode(site: str, found: Iterable[Exposure], ttl: int) -> bytes:
    body = {
        "site": site,
        "services": [
            {"name": e.name, "routing_key": e.routing_key, "ports": list(e.ports)} for e in found
        ],
        "ttl": ttl,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class AnnouncementError(ValueError):
    pass


def decode(payload: bytes) -> Announcement:
    """Parse and check an announcement; every limit is checked before anything is kept."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise AnnouncementError("not JSON") from None
    if not isinstance(data, dict):
        raise AnnouncementError("not a JSON object")
    site, services, ttl = data.get("site"), data.get("services"), data.get("ttl")
    if not isinstance(site, str) or not SITE_RE.match(site):
        raise AnnouncementError("site: not a site name")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 3600:
        raise AnnouncementError("ttl: must be an integer 1..3600")
    if not isinstance(services, list) or len(services) > MAX_SERVICES:
        raise AnnouncementError(f"services: must be a list of at most {MAX_SERVICES}")
    out: list[Exposure] = []
    names: set[str] = set()
    for i, s in enumerate(services):
        where = f"services[{i}]"
        if not isinstance(s, dict):
            raise AnnouncementError(f"{where}: not an object")
        name, key, ports = s.get("name"), s.get("routing_key"), s.get("ports")
        if not isinstance(name, str) or not SERVICE_NAME_RE.match(name) or name in names:
            raise AnnouncementError(f"{where}.name: not a Service name, or repeated")
        key_problem = routing_key_problem(key)
        # routing_key_problem() rejects non-strings; isinstance() says so to mypy.
        if key_problem or not isinstance(key, str):
            raise AnnouncementError(f"{where}.routing_key: {key_problem}")
        if (
            not isinstance(ports, list)
            or not 1 <= len(ports) <= MAX_PORTS
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in ports)
            or not all(1 <= p <= 65535 for p in ports)
            or len(set(ports)) != len(ports)
        ):
            raise AnnouncementError(f"{where}.ports: must be 1..{MAX_PORTS} distinct port numbers")
        names.add(name)
        out.append(Exposure(name, key, tuple(sorted(ports))))
    return Announcement(site, tuple(out), ttl)


@dataclass
class _Entry:
    announcement: Announcement
    received: float


class AnnouncementBook:
    """What the other sites announced, keyed by origin router (replicas of one site each
    announce; their entries are merged by site later).

    An entry is withdrawn when it is not repeated within its ttl, counted only while
    the subscription is up: a router restart or a dropped subscription never withdraws
    everything at once, and after (re)subscribing every origin gets one full ttl to
    repeat itself.
    """

    def __init__(self, own_site: str, max_origins: int = MAX_ORIGINS) -> None:
        self.own_site = own_site
        self.max_origins = max_origins
        self.entries: dict[str, _Entry] = {}
        self.subscribed_since: float | None = None
        self.ever_subscribed_since: float | None = None  # start of the first subscription

    def subscribed(self, now: float) -> None:
        self.subscribed_since = now
        if self.ever_subscribed_since is None:
            self.ever_subscribed_since = now

    def unsubscribed(self) -> None:
        self.subscribed_since = None

    def complete(self, now: float, ttl: float) -> bool:
        """True once a whole ttl of announcements has been heard since the first subscription:
        before that, a Service missing from the book may simply not have been repeated yet."""
        return self.ever_subscribed_since is not None and now - self.ever_subscribed_since >= ttl

    def receive(self, origin: str, payload: bytes, now: float) -> tuple[bool, Problem | None]:
        """Returns (changed, problem)."""
        try:
            ann = decode(payload)
        except AnnouncementError as exc:
            return False, Problem(f"announcement/{origin}", "payload", str(exc))
        if ann.site == self.own_site:
            return False, None
        if origin not in self.entries and len(self.entries) >= self.max_origins:
            return False, Problem(
                f"announcement/{origin}", "origin", f"more than {self.max_origins} origins; ignored"
            )
        old = self.entries.get(origin)
        self.entries[origin] = _Entry(ann, now)
        return old is None or old.announcement != ann, None

    def expire(self, now: float) -> bool:
        if self.subscribed_since is None:
            return False
        gone = [
            o
            for o, e in self.entries.items()
            if now >= max(e.received, self.subscribed_since) + e.announcement.ttl
        ]
        for o in gone:
            del self.entries[o]
        return bool(gone)

    def next_expiry(self) -> float | None:
        if self.subscribed_since is None or not self.entries:
            return None
        since = self.subscribed_since
        return min(max(e.received, since) + e.announcement.ttl for e in self.entries.values())

    def active(self) -> list[Announcement]:
        return [self.entries[o].announcement for o in sorted(self.entries)]
