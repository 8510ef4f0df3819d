"""Fleet topology checks and derivations, computed on the controller from inventory data.

Private to the skiff.fleet collection. Plain data in, plain data out: the
filter plugins `skiff.fleet.topology` and the action `skiff.fleet.fleet_check`
hand it the inventory variables.

Two layers of checks, both before anything changes:
- each host's own variables (`fleet_problems`: types, ranges, names, links to
  hosts that exist and accept links, ports shared on one machine);
- once those pass, the network the inventory describes (`fleet_findings`): a
  listener whose routing key no connector in the fleet serves, links that
  form a cycle, a site none of whose listeners would reach a connector. The
  inventory may mark these intended (`skiff_intended`); they then warn.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import PLATFORMS
from ansible_collections.skiff.fleet.plugins.module_utils.token import MAX_ROUTERS, GrantTerms


def _implemented(platform: str) -> bool:
    """The lookup knows the name and its file is there (a planned platform's may not be yet)."""
    try:
        return importlib.util.find_spec(f"{__package__}.platform_{platform}") is not None
    except ModuleNotFoundError:
        return False


PLATFORMS_AVAILABLE = tuple(p for p in PLATFORMS if _implemented(p))
PLATFORMS_PLANNED = tuple(p for p in vocabulary.PLATFORMS if p not in PLATFORMS_AVAILABLE)
# Names that become Kubernetes object names (namespaces, listener Services).
DNS1123_LABEL = vocabulary.SITE_NAME_PATTERN
KUBE_LINK_ACCESS = vocabulary.KUBE_LINK_ACCESS
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


_is_port = vocabulary.is_port


def _check_platform(site: SiteVars) -> None:
    platform = site.get("skiff_platform", vocabulary.DEFAULT_PLATFORM)
    if platform == "kubernetes":
        _check_kubernetes(site)
        return
    if platform in PLATFORMS_AVAILABLE:
        return
    if platform in PLATFORMS_PLANNED:
        site.problem(
            "skiff_platform",
            f"platform '{platform}' is not available in this version of skiff.fleet; "
            f"use one of: {', '.join(PLATFORMS_AVAILABLE)}",
        )
    else:
        site.problem(
            "skiff_platform",
            f"unknown platform '{platform}'; use one of: {', '.join(PLATFORMS_AVAILABLE)}",
        )


def _is_count(value: Any, most: int) -> bool:
    """A whole number 1..most (a YAML true is not 1)."""
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= most


def _check_workers(site: SiteVars) -> None:
    workers = site.get("skiff_router_workers")
    if workers is not None and not _is_count(workers, vocabulary.MAX_ROUTER_WORKERS):
        site.problem(
            "skiff_router_workers",
            f"must be an integer 1..{vocabulary.MAX_ROUTER_WORKERS} (worker processes of the "
            f"router), or unset for one per CPU; got {workers!r}",
        )


def _check_rotate(site: SiteVars) -> None:
    for var in ("skiff_rotate", "skiff_rotate_ca"):
        value = site.get(var)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            site.problem(var, f"must be 'now' or an ISO 8601 time; got {value!r}")
            continue
        try:
            pki.rotation_time(value)
        except ValueError as exc:
            site.problem(var, str(exc))


def _check_external(site: SiteVars, sites: dict[str, SiteVars]) -> None:
    """Tokens and grants for peers outside the inventory, and links to them."""
    inventory = {s.site_name for s in sites.values()}
    tokens = site.get("skiff_external_tokens", [])
    if not isinstance(tokens, list):
        site.problem("skiff_external_tokens", "must be a list of names or {name, dest} grants")
        tokens = []
    seen: set[str] = set()
    for index, entry in enumerate(tokens):
        where = f"skiff_external_tokens[{index}]"
        name = entry.get("name") if isinstance(entry, dict) else entry
        if not vocabulary.is_object_name(name):
            site.problem(where, f"needs a name like a site name (the peer's), got {name!r}")
            continue
        if name in seen or name in inventory:
            what = "listed twice" if name in seen else "the name of a site of the inventory"
            site.problem(where, f"'{name}' is {what}: give each peer its own name")
        seen.add(str(name))
        if not isinstance(entry, dict):
            continue
        routers = entry.get("routers", 1)
        if (
            isinstance(routers, bool)
            or not isinstance(routers, int)
            or not 1 <= routers <= (MAX_ROUTERS)
        ):
            site.problem(
                f"{where}.routers",
                f"must be an integer 1..{MAX_ROUTERS} (routers of the peer that may hold "
                f"a link with it at once: a kubernetes peer's replicas and one), got {routers!r}",
            )
        terms = {k: v for k, v in entry.items() if k not in ("name", "routers")}
        if not terms:
            continue  # a token, with its routers
        if site.get("skiff_platform") == "kubernetes":
            site.problem(
                where, "a kubernetes site cannot issue grants yet (its pods keep no state); "
                "give no dest for a token",
            )  # fmt: skip
            continue
        try:
            GrantTerms.parse(terms)
        except SkiffError as exc:
            site.problem(where if exc.field == "grants" else f"{where}.{exc.field}", exc.message)
    links = site.get("skiff_external_links", [])
    if not isinstance(links, list):
        site.problem("skiff_external_links", "must be a list of {name, token_file, cost}")
        return
    names = {
        str(link.get("to")) for link in site.get("skiff_links") or [] if isinstance(link, dict)
    }
    names = {sites[n].site_name if n in sites else n for n in names}
    for index, link in enumerate(links):
        where = f"skiff_external_links[{index}]"
        if not isinstance(link, dict) or set(link) - {"name", "token_file", "cost"}:
            site.problem(where, "must be a mapping of name, token_file and cost")
            continue
        name, path = link.get("name"), link.get("token_file")
        if not vocabulary.is_object_name(name):
            site.problem(f"{where}.name", f"must be a link name like a site name, got {name!r}")
        elif name in names:
            site.problem(f"{where}.name", f"'{name}' names another link of this site already")
        names.add(str(name))
        if not isinstance(path, str) or not path.startswith("/"):
            site.problem(
                f"{where}.token_file",
                f"must be the absolute path of the token or grant file on the host, got {path!r}",
            )
        if not vocabulary.is_cost(link.get("cost", vocabulary.DEFAULT_COST)):
            site.problem(f"{where}.cost", f"must be an integer >= {vocabulary.COST_MIN}")


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
    access = site.get("skiff_kube_link_access", vocabulary.DEFAULT_KUBE_LINK_ACCESS)
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
    replicas = site.get("skiff_router_replicas", 1)
    if not _is_count(replicas, vocabulary.MAX_KUBE_REPLICAS):
        site.problem(
            "skiff_router_replicas",
            f"must be an integer 1..{vocabulary.MAX_KUBE_REPLICAS} (router pods of the site), "
            f"got {replicas!r}",
        )
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
    link_access = bool(site.get("skiff_link_access", False))
    clash = vocabulary.kube_port_problem(
        site.get("skiff_admin_port", vocabulary.DEFAULT_ADMIN_PORT), link_access
    )
    if clash:
        site.problem("skiff_admin_port", clash)
    for index, listener in enumerate(site.get("skiff_listeners", []) or []):
        name = listener.get("name") if isinstance(listener, dict) else None
        if isinstance(name, str) and not DNS1123_LABEL.match(name):
            site.problem(
                f"skiff_listeners[{index}].name",
                f"'{name}' names the listener's Service in a kubernetes site: use lower-case "
                "letters, digits and '-'",
            )
        port = listener.get("port") if isinstance(listener, dict) else None
        clash = vocabulary.kube_port_problem(port, link_access)
        if clash:
            site.problem(f"skiff_listeners[{index}].port", clash)


def _check_link_access(site: SiteVars) -> None:
    mode = site.get("skiff_router_mode", vocabulary.DEFAULT_ROUTER_MODE)
    if mode not in vocabulary.ROUTER_MODES:
        site.problem(
            "skiff_router_mode",
            f"must be {' or '.join(vocabulary.ROUTER_MODES)}, got {mode!r}",
        )
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
        if var == "skiff_listeners" and "routing_keys" in service:
            _check_listener_keys(site, where, service)
        else:
            key = service.get("routing_key", name)
            if not key or not isinstance(key, str):
                site.problem(f"{where}.routing_key", "must be a non-empty string")
            if service.get("strategy") is not None:
                site.problem(f"{where}.strategy", "needs routing_keys (several keys)")
        distribution = service.get("distribution", vocabulary.DEFAULT_DISTRIBUTION)
        if var == "skiff_listeners" and distribution not in vocabulary.DISTRIBUTIONS:
            site.problem(
                f"{where}.distribution",
                f"must be {' or '.join(vocabulary.DISTRIBUTIONS)}, got {distribution!r}",
            )
        if var == "skiff_connectors":
            _check_connector_target(site, where, service)
        if not _is_port(service.get("port")):
            site.problem(
                f"{where}.port", f"must be an integer 1-65535, got {service.get('port')!r}"
            )


def _check_connector_target(site: SiteVars, where: str, connector: dict[str, Any]) -> None:
    selector = connector.get("selector")
    if selector is None:
        if not connector.get("host"):
            site.problem(
                f"{where}.host",
                "is required: the host the connector sends flows to (or, on platform "
                "kubernetes, a selector of pods)",
            )
        return
    if site.get("skiff_platform", "local") != "kubernetes":
        site.problem(
            f"{where}.selector",
            "selects pods, which only platform kubernetes has; give host instead",
        )
    elif connector.get("host"):
        site.problem(f"{where}.selector", "give host or selector, not both")
    elif not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        site.problem(
            f"{where}.selector",
            "must be a label selector with matchLabels and/or matchExpressions (an empty "
            "one would match every pod of the namespace)",
        )
    elif connector.get("tls"):
        site.problem(f"{where}.tls", "is not supported with selector yet; use host")


def _check_listener_keys(site: SiteVars, where: str, listener: dict[str, Any]) -> None:
    if listener.get("routing_key") is not None:
        site.problem(f"{where}.routing_keys", "give routing_key or routing_keys, not both")
    problem = vocabulary.routing_keys_problem(listener.get("routing_keys"))
    if problem is not None:
        site.problem(f"{where}.{problem[0]}", problem[1])
    strategy = listener.get("strategy", vocabulary.DEFAULT_STRATEGY)
    if strategy not in vocabulary.STRATEGIES:
        site.problem(
            f"{where}.strategy",
            f"must be {' or '.join(vocabulary.STRATEGIES)}, got {strategy!r}",
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
        cost = link.get("cost", vocabulary.DEFAULT_COST)
        if not vocabulary.is_cost(cost):
            site.problem(
                f"{where}.cost",
                f"must be an integer >= {vocabulary.COST_MIN}"
                + (f" and <= {vocabulary.COST_MAX}" if isinstance(cost, int) and cost > 1 else "")
                + f", got {cost!r}",
            )
        if target == site.host:
            site.problem(f"{where}.to", "a site cannot link to itself")
        elif target not in sites:
            site.problem(
                f"{where}.to",
                f"'{target}' is not a host in the skiff_sites group; "
                f"name one of: {', '.join(sorted(sites)) or '(none)'}",
            )
        elif sites[target].get("skiff_router_mode", vocabulary.DEFAULT_ROUTER_MODE) == "edge":
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


def _check_intended(site: SiteVars) -> None:
    intended = site.get("skiff_intended", [])
    if not isinstance(intended, list):
        site.problem(
            "skiff_intended", f"must be a list of: {', '.join(vocabulary.INTENDED_CHECKS)}"
        )
        return
    for index, check in enumerate(intended):
        if check not in vocabulary.INTENDED_CHECKS:
            site.problem(
                f"skiff_intended[{index}]",
                f"unknown check {check!r}; use one of: {', '.join(vocabulary.INTENDED_CHECKS)}",
            )


def _port(value: Any) -> int:
    return int(value)


def _bound_ports(site: SiteVars) -> list[tuple[str, int]]:
    """(field, port) for every port the site's router binds on its machine."""
    bound: list[tuple[str, int]] = []
    if site.get("skiff_platform", vocabulary.DEFAULT_PLATFORM) == "kubernetes":
        return bound  # its ports are its pods', not the controller's
    admin = site.get("skiff_admin_port", vocabulary.DEFAULT_ADMIN_PORT)
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


# Only these are read besides skiff_*: templating every host variable could
# fail on ones that make sense only on their own host (ansible_python_interpreter).
HOST_FIELDS = ("ansible_connection", "ansible_host")


def plain_hostvars(
    hostvars: Any, hosts: list[str], names: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """The skiff_* variables (and the two connection facts) of `hosts`, as plain data.

    With `names`, only those variables: each one read is templated, and a
    filter evaluated on every host of a large fleet must not template them all.
    """
    plain: dict[str, dict[str, Any]] = {}
    for host in hosts:
        host_vars = hostvars[host]
        wanted = (
            names
            if names is not None
            else [n for n in host_vars if n.startswith("skiff_") or n in HOST_FIELDS]
        )
        plain[host] = {name: host_vars[name] for name in wanted if name in host_vars}
    return plain


def fleet_problems(hostvars: dict[str, dict[str, Any]], site_hosts: list[str]) -> list[str]:
    """Every problem in the fleet's inventory, each naming the host and the field."""
    return [p for problems in problems_by_host(hostvars, site_hosts).values() for p in problems]


def problems_by_host(
    hostvars: dict[str, dict[str, Any]], site_hosts: list[str]
) -> dict[str, list[str]]:
    """fleet_problems(), per host (every host of `site_hosts` has a list, maybe empty)."""
    sites = {host: SiteVars(host, dict(hostvars.get(host, {}))) for host in site_hosts}
    names: dict[str, str] = {}
    for site in sites.values():
        if not vocabulary.is_site_name(site.site_name):
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
        _check_workers(site)
        _check_rotate(site)
        _check_link_access(site)
        _check_links(site, sites)
        _check_external(site, sites)
        _check_services(site, "skiff_listeners")
        _check_services(site, "skiff_connectors")
        _check_intended(site)
    _check_port_clashes(sites)
    return {host: site.problems for host, site in sites.items()}


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


def credential_routers(site_vars: dict[str, Any]) -> int:
    """Routers of a dialing site that may hold a link with one of its tokens at once:
    one, or on kubernetes one per replica and those a rollout adds before it ends one
    (each pod is a router of its own)."""
    if site_vars.get("skiff_platform") != "kubernetes":
        return 1
    replicas = site_vars.get("skiff_router_replicas") or 1
    if not _is_count(replicas, vocabulary.MAX_KUBE_REPLICAS):
        return 1  # the fleet check names it
    return int(replicas) + vocabulary.KUBE_ROLLOUT_SURGE


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


# -- the network the inventory describes -------------------------------------------------------


@dataclass(frozen=True)
class NetSite:
    """One site as a node of the network: enough to tell which routing keys it reaches."""

    name: str
    mode: str = vocabulary.DEFAULT_ROUTER_MODE
    links: tuple[str, ...] = ()  # site names this site dials
    listeners: tuple[str, ...] = ()  # routing keys
    connectors: tuple[str, ...] = ()  # routing keys


def reachable_sites(sites: dict[str, NetSite], start: str) -> set[str]:
    """Sites `start` reaches over links (both directions); edge routers carry no transit."""
    neighbours: dict[str, set[str]] = {name: set() for name in sites}
    for site in sites.values():
        for peer in site.links:
            if peer in neighbours:
                neighbours[site.name].add(peer)
                neighbours[peer].add(site.name)
    if start not in sites:
        return set()
    seen, queue = {start}, deque([start])
    while queue:
        current = queue.popleft()
        if current != start and sites[current].mode == "edge":
            continue
        for nxt in sorted(neighbours[current]):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def served_keys(sites: dict[str, NetSite], start: str) -> set[str]:
    """Routing keys with a connector at a site `start` reaches (its own included)."""
    return {key for name in reachable_sites(sites, start) for key in sites[name].connectors}


def dial_cycles(sites: dict[str, NetSite]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) for each group of sites whose links dial in a circle."""
    graph = {name: [p for p in site.links if p in sites] for name, site in sites.items()}
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        start = min(component)
        # Shortest way from start back to itself inside the component.
        parents: dict[str, str] = {}
        queue = deque([start])
        while queue:
            current = queue.popleft()
            if start in graph[current]:
                path = [current]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                cycles.append([*reversed(path), start])
                break
            for nxt in graph[current]:
                if nxt in component and nxt not in parents and nxt != start:
                    parents[nxt] = current
                    queue.append(nxt)
    return sorted(cycles)


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (fleets of hundreds of sites must not hit recursion limits)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = graph[node]
            if child < len(targets):
                work.append((node, child + 1))
                nxt = targets[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


@dataclass(frozen=True)
class Finding:
    """A fleet-wide check that failed for one host; `intended` ones only warn."""

    host: str
    check: str
    field: str
    message: str
    intended: bool

    @property
    def text(self) -> str:
        return f"host '{self.host}': {self.field}: {self.message}"


def inventory_network(
    hostvars: dict[str, dict[str, Any]], site_hosts: list[str]
) -> dict[str, NetSite]:
    """The network as the inventory wants it, keyed by site name (a valid inventory)."""
    names = {host: str(hostvars[host].get("skiff_site_name") or host) for host in site_hosts}
    network = {}
    for host in site_hosts:
        values = hostvars[host]
        network[names[host]] = NetSite(
            name=names[host],
            mode=str(values.get("skiff_router_mode") or vocabulary.DEFAULT_ROUTER_MODE),
            links=tuple(
                names.get(link["to"], str(link["to"])) for link in values.get("skiff_links") or []
            ),
            listeners=tuple(
                key
                for item in values.get("skiff_listeners") or []
                for key in vocabulary.listener_keys(item)
            ),
            connectors=tuple(_key(item) for item in values.get("skiff_connectors") or []),
        )
    return network


def _key(item: dict[str, Any]) -> str:
    return str(item.get("routing_key") or item["name"])


def fleet_findings(hostvars: dict[str, dict[str, Any]], site_hosts: list[str]) -> list[Finding]:
    """The fleet-wide checks; run them on an inventory that fleet_problems() found valid."""
    host_of = {str(hostvars[h].get("skiff_site_name") or h): h for h in site_hosts}
    network = inventory_network(hostvars, site_hosts)
    served_anywhere = {key for site in network.values() for key in site.connectors}
    findings: list[Finding] = []

    def add(host: str, check: str, field_name: str, message: str) -> None:
        intended = check in (hostvars[host].get("skiff_intended") or [])
        findings.append(Finding(host, check, field_name, message, intended))

    for name, site in network.items():
        host = host_of[name]
        # A listener with several keys is served when any of them is.
        for index, item in enumerate(hostvars[host].get("skiff_listeners") or []):
            keys = vocabulary.listener_keys(item)
            if not set(keys) & served_anywhere:
                field_name = (
                    "routing_keys" if len(keys) > 1 or "routing_keys" in item else "routing_key"
                )
                add(
                    host,
                    "unserved-listener",
                    f"skiff_listeners[{index}].{field_name}",
                    f"no connector in the fleet serves routing key '{', '.join(keys)}'; add a "
                    "connector for it at some site, or mark it intended (skiff_intended: "
                    "[unserved-listener]) when it is served from outside this inventory",
                )
        reached = served_keys(network, name)
        if (
            site.listeners
            and not reached & set(site.listeners)
            and set(site.listeners) & served_anywhere
        ):
            key_list = ", ".join(sorted(set(site.listeners)))
            add(
                host,
                "listeners-lose-connectors",
                "skiff_listeners",
                f"none of this site's listeners would reach a connector (routing keys {key_list}): "
                "the sites that serve them are not reachable over its links (an edge router "
                "carries no transit); link it to one of them, or mark it intended "
                "(skiff_intended: [listeners-lose-connectors])",
            )
    for cycle in dial_cycles(network):
        if len(cycle) == 3:
            message = (
                f"sites '{cycle[0]}' and '{cycle[1]}' dial each other: two links join the "
                "pair where one carries traffic both ways; drop one of them, or mark it "
                "intended (skiff_intended: [link-cycle])"
            )
        else:
            message = (
                f"the links dial in a cycle {' -> '.join(cycle)}: if it is a redundant ring, "
                "mark it intended (skiff_intended: [link-cycle]); otherwise drop one link of it"
            )
        for name in dict.fromkeys(cycle):
            add(host_of[name], "link-cycle", "skiff_links", message)
    return findings
