"""Skupper v2 YAML to a skiff inventory (private to skiff.fleet; not a public API).

`convert()` reads `skupper.io/v2alpha1` Site, Link, Listener, Connector,
AccessGrant and AccessToken documents and returns the `skiff_sites` inventory
that describes the same network, with notes on everything that does not carry
over (TLS credentials of services, HA, OpenShift routes, ...). A problem that
makes the inventory wrong is a `SkupperImportError` naming the document and
the field. Secrets in the input (link TLS credentials, token codes) are never
copied: skiff issues its own tokens.

Resources belong to the Site of their namespace. A document without a
namespace belongs to the namespace of the only Site in the same bundle (one
input file), else to `default`.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    fleet_findings,
    fleet_problems,
)

API_VERSION = "skupper.io/v2alpha1"
KINDS = ("Site", "Link", "Listener", "Connector", "AccessGrant", "AccessToken")
# Skupper's linkAccess values -> the kubernetes platform's Service type for links.
KUBE_LINK_ACCESS = {
    "default": "loadbalancer",
    "loadbalancer": "loadbalancer",
    "nodeport": "nodeport",
}
LOCAL_HOSTS = ("localhost",)


class SkupperImportError(SkiffError):
    """An input that cannot become a correct inventory."""


@dataclass
class Document:
    kind: str
    name: str
    namespace: str
    spec: dict[str, Any]
    status: dict[str, Any]
    source: str

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.name}' (namespace '{self.namespace}', {self.source})"


@dataclass
class Conversion:
    inventory: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _documents(bundles: Iterable[tuple[str, list[Any]]], notes: list[str]) -> list[Document]:
    found = []
    for source, docs in bundles:
        docs = [d for d in docs if d]
        sites = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Site"]
        default = "default"
        if len(sites) == 1:
            meta = sites[0].get("metadata") or {}
            default = meta.get("namespace") or f"{source}:{meta.get('name')}"
        for index, doc in enumerate(docs):
            where = f"{source} document {index + 1}"
            if not isinstance(doc, dict):
                raise SkupperImportError("is not a mapping", field=where)
            kind = doc.get("kind")
            if doc.get("apiVersion") != API_VERSION or kind not in KINDS:
                notes.append(
                    f"{where}: {doc.get('apiVersion')}/{kind} is not a {API_VERSION} "
                    f"{'/'.join(KINDS)}; ignored"
                )
                continue
            meta = doc.get("metadata") or {}
            if not meta.get("name"):
                raise SkupperImportError("metadata.name is required", field=f"{where} ({kind})")
            found.append(
                Document(
                    kind=kind,
                    name=str(meta["name"]),
                    namespace=str(meta.get("namespace") or default),
                    spec=dict(doc.get("spec") or {}),
                    status=dict(doc.get("status") or {}),
                    source=source,
                )
            )
    return found


def _port(value: Any, doc: Document, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not vocabulary.is_port(value):
        raise SkupperImportError(
            f"{value!r} is not a port (1..65535)", field=f"{doc.label}: {where}"
        )
    return int(value)


def _is_address(host: str) -> bool:
    if host in LOCAL_HOSTS or host in ("0.0.0.0", "::"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _endpoint(doc: Document, endpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """A Site's link endpoint: given on the command line, else its status' inter-router endpoint."""
    if doc.name in endpoints:
        given = endpoints[doc.name]
        return {"host": str(given["host"]), "port": _port(given["port"], doc, "endpoint")}
    for entry in doc.status.get("endpoints") or []:
        if entry.get("name") == "inter-router" and entry.get("host") and entry.get("port"):
            return {
                "host": str(entry["host"]),
                "port": _port(entry["port"], doc, "status.endpoints"),
            }
    return None


def convert(
    bundles: Iterable[tuple[str, list[Any]]],
    *,
    platform: str = "kubernetes",
    endpoints: Mapping[str, Mapping[str, Any]] | None = None,
) -> Conversion:
    """The skiff inventory for the Skupper documents of `bundles` ((source, documents) pairs).

    `endpoints` gives the link endpoint (`{host, port}`) of sites by name, for
    sites whose documents do not carry one (a Site's status has it once
    Skupper resolved it).
    """
    if platform not in vocabulary.PLATFORMS:
        raise SkupperImportError(
            f"unknown platform {platform!r}; use one of: {', '.join(vocabulary.PLATFORMS)}",
            field="platform",
        )
    endpoints = dict(endpoints or {})
    notes: list[str] = []
    docs = _documents(bundles, notes)
    kube = platform == "kubernetes"

    site_of: dict[str, Document] = {}
    for doc in (d for d in docs if d.kind == "Site"):
        if doc.namespace in site_of:
            raise SkupperImportError(
                f"a second Site in namespace '{doc.namespace}' (the first is "
                f"'{site_of[doc.namespace].name}'); Skupper runs one Site per namespace",
                field=doc.label,
            )
        if not vocabulary.is_site_name(doc.name):
            raise SkupperImportError(
                f"'{doc.name}' is not a valid skiff site name ({vocabulary.SITE_NAME_RULE}); "
                "rename the Site",
                field=f"{doc.label}: metadata.name",
            )
        site_of[doc.namespace] = doc
    if not site_of:
        raise SkupperImportError("no Site document found", field="input")

    hosts: dict[str, dict[str, Any]] = {}
    link_endpoints: dict[tuple[str, int], str] = {}
    for namespace, doc in site_of.items():
        host: dict[str, Any] = {}
        if kube and namespace != doc.name and ":" not in namespace:
            host["skiff_kube_namespace"] = namespace
        if kube:
            notes.append(f"{doc.label}: set skiff_kube_image (the router image the cluster pulls)")
        access = str(doc.spec.get("linkAccess") or "none").lower()
        edge = bool(doc.spec.get("edge"))
        if edge:
            host["skiff_router_mode"] = "edge"
            if access != "none":
                notes.append(f"{doc.label}: an edge site accepts no links; linkAccess dropped")
                access = "none"
        if access != "none":
            host["skiff_link_access"] = True
            endpoint = _endpoint(doc, endpoints)
            if endpoint is None:
                notes.append(
                    f"{doc.label}: set skiff_link_endpoint on host '{doc.name}' (the host and "
                    "port other sites dial; Skupper chooses it at run time)"
                )
            else:
                host["skiff_link_endpoint"] = endpoint
                link_endpoints[(endpoint["host"], endpoint["port"])] = doc.name
            if kube:
                if access in KUBE_LINK_ACCESS:
                    host["skiff_kube_link_access"] = KUBE_LINK_ACCESS[access]
                else:
                    notes.append(
                        f"{doc.label}: linkAccess '{access}' has no skiff equivalent; "
                        "skiff_kube_link_access left at its default"
                    )
        settings = doc.spec.get("settings") or {}
        level = str(settings.get("routerLogging") or "").lower()
        if level in vocabulary.LOG_LEVELS:
            host["skiff_log_level"] = level
        elif level:
            notes.append(f"{doc.label}: routerLogging '{level}' is not a skiff log level; ignored")
        if doc.spec.get("ha"):
            notes.append(f"{doc.label}: ha is not carried over (one router per site)")
        # Status endpoints of other groups (edge ports) also lead to this site.
        for entry in doc.status.get("endpoints") or []:
            if entry.get("host") and str(entry.get("port") or "").isdigit():
                link_endpoints.setdefault((str(entry["host"]), int(entry["port"])), doc.name)
        hosts[doc.name] = host

    def owner(doc: Document) -> Document:
        site = site_of.get(doc.namespace)
        if site is None:
            raise SkupperImportError(
                f"no Site in namespace '{doc.namespace}' to attach it to; add that "
                "namespace's Site to the input",
                field=doc.label,
            )
        return site

    for doc in (d for d in docs if d.kind == "Listener"):
        site = owner(doc)
        key = doc.spec.get("routingKey")
        if not key:
            raise SkupperImportError("spec.routingKey is required", field=doc.label)
        listener: dict[str, Any] = {
            "name": doc.name,
            "routing_key": str(key),
            "port": _port(doc.spec.get("port"), doc, "spec.port"),
        }
        listen_host = str(doc.spec.get("host") or "")
        if listen_host and _is_address(listen_host):
            listener["host"] = "127.0.0.1" if listen_host == "localhost" else listen_host
        elif listen_host and kube and vocabulary.is_site_name(listen_host):
            # On Kubernetes clients use the Service named after the listener.
            listener["name"] = listen_host
            if listen_host != doc.name:
                notes.append(
                    f"{doc.label}: became listener '{listen_host}', the Service name clients use"
                )
        elif listen_host:
            notes.append(
                f"{doc.label}: host '{listen_host}' is not an address this platform can listen on; "
                "the listener uses the default (127.0.0.1)"
            )
        for unsupported in ("tlsCredentials", "exposePodsByName"):
            if doc.spec.get(unsupported):
                notes.append(f"{doc.label}: {unsupported} is not carried over")
        hosts[site.name].setdefault("skiff_listeners", []).append(listener)

    for doc in (d for d in docs if d.kind == "Connector"):
        site = owner(doc)
        key = doc.spec.get("routingKey")
        if not key:
            raise SkupperImportError("spec.routingKey is required", field=doc.label)
        connector: dict[str, Any] = {
            "name": doc.name,
            "routing_key": str(key),
            "port": _port(doc.spec.get("port"), doc, "spec.port"),
        }
        if doc.spec.get("host"):
            connector["host"] = str(doc.spec["host"])
        elif kube:
            notes.append(
                f"{doc.label}: selects pods ('{doc.spec.get('selector')}'), which a skiff "
                "connector does not; connector left out: annotate the Service in front of "
                'those pods with skiff.io/expose: "true" and skiff.io/routing-key: '
                f"{key}, or add a connector whose host is that Service"
            )
            continue
        else:
            notes.append(
                f"{doc.label}: no host (it selects pods, '{doc.spec.get('selector')}'); "
                "connector left out: add it with the host of the service"
            )
            continue
        for unsupported in (
            "tlsCredentials",
            "useClientCert",
            "verifyHostname",
            "includeNotReadyPods",
            "exposePodsByName",
        ):
            if doc.spec.get(unsupported):
                notes.append(f"{doc.label}: {unsupported} is not carried over")
        hosts[site.name].setdefault("skiff_connectors", []).append(connector)

    grants = {
        str(d.status["url"]): owner(d).name
        for d in docs
        if d.kind == "AccessGrant" and d.status.get("url")
    }
    for doc in (d for d in docs if d.kind == "AccessGrant"):
        site = owner(doc)
        if not hosts[site.name].get("skiff_link_access"):
            notes.append(
                f"{doc.label}: an AccessGrant lets others link to site '{site.name}', whose "
                "linkAccess is none; set skiff_link_access and skiff_link_endpoint there"
            )
    for doc in (d for d in docs if d.kind in ("Link", "AccessToken")):
        site = owner(doc)
        target = _link_target(doc, link_endpoints, grants)
        if target == site.name:
            raise SkupperImportError(f"it links site '{site.name}' to itself", field=doc.label)
        cost = doc.spec.get("cost" if doc.kind == "Link" else "linkCost") or vocabulary.DEFAULT_COST
        if not vocabulary.is_cost(cost):
            raise SkupperImportError(f"{cost!r} is not a link cost", field=f"{doc.label}: cost")
        links = hosts[site.name].setdefault("skiff_links", [])
        if any(link["to"] == target for link in links):
            notes.append(f"{doc.label}: a second link to '{target}'; kept the first")
            continue
        links.append({"to": target, "cost": cost})
    if any(d.kind in ("Link", "AccessToken") for d in docs):
        notes.append(
            "link credentials (Link tlsCredentials, AccessToken codes) are not copied: "
            "skiff issues its own tokens"
        )

    inventory = {"skiff_sites": {"vars": {"skiff_platform": platform}, "hosts": hosts}}
    flat = {name: dict(values, skiff_platform=platform) for name, values in hosts.items()}
    for problem in fleet_problems(flat, list(flat)):
        notes.append(f"after import: {problem}")
    if not fleet_problems(flat, list(flat)):
        notes.extend(f"after import: {f.text}" for f in fleet_findings(flat, list(flat)))
    return Conversion(inventory, notes)


def _link_target(
    doc: Document, link_endpoints: dict[tuple[str, int], str], grants: dict[str, str]
) -> str:
    if doc.kind == "AccessToken":
        url = str(doc.spec.get("url") or "")
        if url in grants:
            return grants[url]
        parsed = urllib.parse.urlsplit(url)
        by_host = {
            site for (host, _port), site in link_endpoints.items() if host == parsed.hostname
        }
        if len(by_host) == 1:
            return by_host.pop()
        raise SkupperImportError(
            f"its url {url!r} matches no AccessGrant's status.url nor the host of exactly "
            "one site's link endpoint; add the granting site's AccessGrant (with its status) "
            "or its endpoint",
            field=doc.label,
        )
    tried = []
    for entry in doc.spec.get("endpoints") or []:
        host, port = str(entry.get("host") or ""), str(entry.get("port") or "")
        tried.append(f"{host}:{port}")
        if port.isdigit() and (host, int(port)) in link_endpoints:
            return link_endpoints[(host, int(port))]
    raise SkupperImportError(
        f"none of its endpoints ({', '.join(tried) or 'none'}) is a known site's link "
        "endpoint; give the site it points to its endpoint (a Site status.endpoints, or "
        "--endpoint SITE=HOST:PORT)",
        field=doc.label,
    )
