"""The few fields the agent keeps of each pod and Service (bounded memory).

A watch cache holds these instead of whole API objects: a namespace's pods
can carry large specs and annotations that the agent never reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANNOTATION_PREFIX = "skiff.io/"
OWNED_LABEL = "skiff.io/owned-by-agent"
SITE_LABEL = "skiff.io/site"


@dataclass(frozen=True)
class Pod:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    ready: bool = False
    running: bool = False  # phase Running and not being deleted (ready or not)


@dataclass(frozen=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str | None = None


@dataclass(frozen=True)
class Service:
    name: str
    uid: str = ""
    resource_version: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # skiff.io/* only
    type: str = "ClusterIP"
    cluster_ip: str | None = None
    selector: dict[str, str] = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()

    def owned_by(self, site: str) -> bool:
        """True for a Service this site's agent created (the only ones it may change)."""
        return self.labels.get(OWNED_LABEL) == "true" and self.labels.get(SITE_LABEL) == site


def _strs(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def pod_from_api(obj: dict[str, Any]) -> Pod:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    running = not meta.get("deletionTimestamp") and status.get("phase") == "Running"
    ready = running and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
        if isinstance(c, dict)
    )
    ip = status.get("podIP")
    return Pod(
        name=str(meta.get("name", "")),
        labels=_strs(meta.get("labels")),
        ip=ip if isinstance(ip, str) and ip else None,
        ready=bool(ready),
        running=bool(running),
    )


def service_from_api(obj: dict[str, Any]) -> Service:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ports: list[ServicePort] = []
    for p in spec.get("ports") or []:
        if not isinstance(p, dict) or not isinstance(p.get("port"), int):
            continue
        target = p.get("targetPort")
        ports.append(
            ServicePort(
                port=p["port"],
                protocol=str(p.get("protocol", "TCP")),
                name=str(p.get("name", "")),
                target_port=target if isinstance(target, int | str) else None,
            )
        )
    annotations = {
        k: v for k, v in _strs(meta.get("annotations")).items() if k.startswith(ANNOTATION_PREFIX)
    }
    cluster_ip = spec.get("clusterIP")
    return Service(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        labels=_strs(meta.get("labels")),
        annotations=annotations,
        type=str(spec.get("type", "ClusterIP")),
        cluster_ip=cluster_ip if isinstance(cluster_ip, str) and cluster_ip else None,
        selector=_strs(spec.get("selector")),
        ports=tuple(ports),
    )
