"""Fleet topology checks and derivations, computed on the controller from inventory data.

Private to the skiff.fleet collection. Plain data in, plain data out: the
filter plugin `skiff.fleet.topology` hands it the inventory variables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PLATFORMS_AVAILABLE = ("local", "systemd", "podman", "kubernetes")
SITE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Names that become Kubernetes object names (namespaces, listener Services).
DNS1123_LABEL = SITE_NAME
KUBE_LINK_ACCESS = ("clusterip", "nodeport", "loadbalancer")
DEFAULT_ADMIN_PORT = 9191
LOCAL_CONNECTIONS = ("local",)


@dataclass
class SiteVars:
    """The skiff_* variables of one inventory host, as the inventory gives them."""

    host: str
    values: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name, default)
        return default if value is None else value

    def problem(self, field_name: str, message: str) -> None:
        self.problems.append(f"host '{self.host}': {field_name}: {message}")

    @property
    def site_name(self) -> str:
        return str(self.get("skiff_site_name", self.host))

    @property
    def machine(self) -> str:
        """Hosts on the same machine share its ports; local connections all share the controller."""
        if self.get("ansible_connection") in LOCAL_CONNECTIONS:
            return "localhost"
        return str(self.get("ansible_host", self.host))


def _is_port(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return isinstance(value, int) and 1 <= value <= 65535


def _check_platform(site: SiteVars) -> None:
    platform = site.get("skiff_platform", "local")
    if platform == "kubernetes":
        _check_kubernetes(site)
    elif platform not in PLATFORMS_AVAILABLE:
        site.problem(
            "skiff_platform",
            f"unknown platform '{platform}'; use one of: {', '.join(PLATFORMS_AVAILABLE)}",
        )


def _check_kubernetes(site: SiteVars) -> None:
    """A kubernetes site is driven from the controller and becomes objects in a namespace."""
    if site.get("ansible_connection") not in LOCAL_CONNECTIONS:
        site.problem(
            "ansible_connection",
            "a kubernetes site is managed from the controller: set ansible_connection: local "
            "(and ansible_python_interpreter to a Python with the kubernetes library)",
        )
    namespace = site.get("skiff_kube_namespace") or site.site_name
    if not isinstance(namespace, str) or not DNS1123_LABEL.match(namespace):
        site.problem(
            "skiff_kube_namespace",
            f"'{namespace}' is not a namespace name (lower-case letters, digits and '-', "
            "at most 63 characters)",
        )
    access = site.get("skiff_kube_link_access", "clusterip")
    if access not in KUBE_LINK_ACCESS:
        site.problem(
            "skiff_kube_link_access",
            f"must be one of {', '.join(KUBE_LINK_ACCESS)}, got {access!r}",
        )
    if not site.get("skiff_kube_image"):
        site.problem(
            "skiff_kube_image",
            "required: the router image in a registry the cluster pulls from (build it from "
            "router/Containerfile, see the README)",
        )
    if site.get("skiff_router_replicas", 1) != 1:
        site.problem("skiff_router_replicas", "this version runs one router pod per site; use 1")
    apply = site.get("skiff_kube_apply", True)
    if not apply and not site.get("skiff_kube_manifests_dir"):
        site.problem(
            "skiff_kube_manifests_dir",
            "required when skiff_kube_apply is false: the directory the manifests are written to",
        )
    endpoint = site.get("skiff_link_endpoint")
    host = endpoint.get("host") if isinstance(endpoint, dict) else None
    if site.get("skiff_link_access", False) and not host:
        if access == "nodeport":
            site.problem(
                "skiff_link_endpoint.host",
                "required with skiff_kube_link_access nodeport: a node address other sites reach",
            )
        elif access == "loadbalancer" and not apply:
            site.problem(
                "skiff_link_endpoint.host",
                "required in render-only mode (skiff_kube_apply: false): the load balancer's "
                "address cannot be learnt without a cluster",
            )
    for index, listener in enumerate(site.get("skiff_listeners", []) or []):
        name = listener.get("name") if isinstance(listener, dict) else None
        if isinstance(name, str) and not DNS1123_LABEL.match(name):
            site.problem(
                f"skiff_listeners[{index}].name",
                f"'{name}' names the listener's Service in a kubernetes site: use lower-case "
                "letters, digits and '-'",
            )


def _check_link_access(site: SiteVars) -> None:
    mode = site.get("skiff_router_mode", "interior")
    if mode not in ("interior", "edge"):
        site.problem("skiff_router_mode", f"must be interior or edge, got {mode!r}")
    if not site.get("skiff_link_access", False):
        return
    kubernetes = site.get("skiff_platform", "local") == "kubernetes"
    if mode == "edge":
        site.problem(
            "skiff_link_access",
            "an edge router accepts no links; set it to false or make the site interior",
        )
    endpoint = site.get("skiff_link_endpoint")
    if kubernetes and not endpoint:
        return  # the Service gives the address (checked with the platform)
    if not isinstance(endpoint, dict):
        site.problem(
            "skiff_link_endpoint",
            "required when skiff_link_access is true: set {host: <name or address other "
            "sites dial>, port: <1-65535>}",
        )
        return
    if not kubernetes and (not endpoint.get("host") or not isinstance(endpoint.get("host"), str)):
        site.problem("skiff_link_endpoint.host", "must be a non-empty host name or address")
    if kubernetes and "port" not in endpoint:
        return
    if not _is_port(endpoint.get("port")):
        site.problem(
            "skiff_link_endpoint.port",
            f"must be an integer 1-65535, got {endpoint.get('port')!r}",
        )


def _check_services(site: SiteVars, var: str) -> None:
    services = site.get(var, [])
    if not isinstance(services, list):
        site.problem(var, "must be a list of {name, routing_key, host, port}")
        return
    names: set[str] = set()
    for index, service in enumerate(services):
        where = f"{var}[{index}]"
        if not isinstance(service, dict):
            site.problem(where, "must be a mapping with name, routing_key, host and port")
            continue
        name = service.get("name")
        if not name or not isinstance(name, str):
            site.problem(f"{where}.name", "must be a non-empty string")
        elif name in names:
            site.problem(f"{where}.name", f"'{name}' is used twice in {var}; names must be unique")
        else:
            names.add(name)
        key = service.get("routing_key", name)
        if not key or not isinstance(key, str):
            site.problem(f"{where}.routing_key", "must be a non-empty string")
        if var == "skiff_listeners" and service.get("distribution", "balanced") not in (
            "balanced",
            "closest",
        ):
            site.problem(
                f"{where}.distribution",
                f"must be balanced or closest, got {service.get('distribution')!r}",
            )
        if var == "skiff_connectors" and not service.get("host"):
            site.problem(f"{where}.host", "is required: the host the connector sends flows to")
        if not _is_port(service.get("port")):
            site.problem(
                f"{where}.port", f"must be an integer 1-65535, got {service.get('port')!r}"
            )


def _check_links(site: SiteVars, sites: dict[str, SiteVars]) -> None:
    links = site.get("skiff_links", [])
    if not isinstance(links, list):
        site.problem("skiff_links", "must be a list of {to: <site host>, cost: <int>}")
        return
    seen: set[str] = set()
    for index, link in enumerate(links):
        where = f"skiff_links[{index}]"
        if not isinstance(link, dict):
            site.problem(where, "must be a mapping like {to: east, cost: 1}")
            continue
        target = link.get("to")
        cost = link.get("cost", 1)
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            site.problem(f"{where}.cost", f"must be an integer >= 1, got {cost!r}")
        if target == site.host:
            site.problem(f"{where}.to", "a site cannot link to itself")
        elif target not in sites:
            site.problem(
                f"{where}.to",
                f"'{target}' is not a host in the skiff_sites group; "
                f"name one of: {', '.join(sorted(sites)) or '(none)'}",
            )
        elif sites[target].get("skiff_router_mode", "interior") == "edge":
            site.problem(
                f"{where}.to",
                f"site '{target}' is an edge router; link to an interior site instead",
            )
        elif not sites[target].get("skiff_link_access", False):
            site.problem(
                f"{where}.to",
                f"site '{target}' does not accept links; set skiff_link_access: true and "
                f"skiff_link_endpoint on host '{target}'",
            )
        if target in seen:
            site.problem(f"{where}.to", f"a link to '{target}' is listed twice")
        seen.add(str(target))


def _port(value: Any) -> int:
    return int(value)


def _bound_ports(site: SiteVars) -> list[tuple[str, int]]:
    """(field, port) for every port the site's router binds on its machine."""
    bound: list[tuple[str, int]] = []
    if site.get("skiff_platform", "local") == "kubernetes":
        return bound  # its ports are its pods', not the controller's
    admin = site.get("skiff_admin_port", DEFAULT_ADMIN_PORT)
    if _is_port(admin):
        bound.append(("skiff_admin_port", _port(admin)))
    else:
        site.problem("skiff_admin_port", f"must be an integer 1-65535, got {admin!r}")
    endpoint = site.get("skiff_link_endpoint")
    if site.get("skiff_link_access", False) and isinstance(endpoint, dict):
        port = endpoint.get("port")
        if _is_port(port):
            bound.append(("skiff_link_endpoint.port", _port(port)))
    listeners = site.get("skiff_listeners", [])
    for index, listener in enumerate(listeners if isinstance(listeners, list) else []):
        if isinstance(listener, dict) and _is_port(listener.get("port")):
            bound.append((f"skiff_listeners[{index}].port", _port(listener["port"])))
    return bound


def _check_port_clashes(sites: dict[str, SiteVars]) -> None:
    users: dict[tuple[str, int], list[tuple[SiteVars, str]]] = {}
    for site in sites.values():
        for field_name, port in _bound_ports(site):
            users.setdefault((site.machine, port), []).append((site, field_name))
    for (machine, port), holders in sorted(users.items(), key=lambda item: item[0]):
        if len(holders) < 2:
            continue
        first_site, first_field = holders[0]
        for site, field_name in holders[1:]:
            site.problem(
                field_name,
                f"port {port} on {machine} is already taken by host '{first_site.host}' "
                f"({first_field}); give each site on one machine its own ports",
            )


def fleet_problems(hostvars: dict[str, dict[str, Any]], site_hosts: list[str]) -> list[str]:
    """Every problem in the fleet's inventory, each naming the host and the field."""
    sites = {host: SiteVars(host, dict(hostvars.get(host, {}))) for host in site_hosts}
    names: dict[str, str] = {}
    for site in sites.values():
        if not SITE_NAME.match(site.site_name):
            site.problem(
                "skiff_site_name",
                f"'{site.site_name}' is not a valid site name: use lower-case letters, "
                "digits and '-', at most 63 characters (set skiff_site_name if the "
                "inventory host name does not fit)",
            )
        elif site.site_name in names:
            site.problem(
                "skiff_site_name",
                f"site name '{site.site_name}' is already used by host '{names[site.site_name]}'",
            )
        else:
            names[site.site_name] = site.host
        _check_platform(site)
        _check_link_access(site)
        _check_links(site, sites)
        _check_services(site, "skiff_listeners")
        _check_services(site, "skiff_connectors")
    _check_port_clashes(sites)
    return [problem for site in sites.values() for problem in site.problems]


def _render_only(values: dict[str, Any]) -> bool:
    apply = values.get("skiff_kube_apply", True)
    off = apply is False or str(apply).lower() in ("false", "no", "0")
    return values.get("skiff_platform") == "kubernetes" and off


def dialers(hostvars: dict[str, dict[str, Any]], site_hosts: list[str], host: str) -> list[str]:
    """The hosts whose skiff_links point at `host`: each gets a token issued by `host`."""
    found = []
    for other in site_hosts:
        links = hostvars.get(other, {}).get("skiff_links") or []
        if any(isinstance(link, dict) and link.get("to") == host for link in links):
            found.append(other)
    return found


def network_of(hostvars: dict[str, dict[str, Any]], site_hosts: list[str], host: str) -> list[str]:
    """Site names of every site linked to `host`'s site, directly or not (itself included).

    Links are undirected for reachability, so this is the connected component:
    the routers `host` must see once the network has converged.
    """
    # A render-only kubernetes site runs nothing until its manifests are applied:
    # no router there to be reached, nor to carry traffic.
    site_hosts = [h for h in site_hosts if h == host or not _render_only(hostvars.get(h, {}))]
    neighbours: dict[str, set[str]] = {name: set() for name in site_hosts}
    for other in site_hosts:
        for link in hostvars.get(other, {}).get("skiff_links") or []:
            target = link.get("to") if isinstance(link, dict) else None
            if target in neighbours:
                neighbours[other].add(target)
                neighbours[target].add(other)
    component, frontier = {host}, [host]
    while frontier:
        for nxt in neighbours.get(frontier.pop(), set()):
            if nxt not in component:
                component.add(nxt)
                frontier.append(nxt)
    return sorted(str(hostvars.get(name, {}).get("skiff_site_name") or name) for name in component)
