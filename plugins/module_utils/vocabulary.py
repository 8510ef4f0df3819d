"""The words skiff's inventory, modules and router config share (private to skiff.fleet).

One fact, one place: name rules, port rules, platform names, choices and
defaults live here. The modules, the topology checks and the reconciler import
them; tests/unit/test_vocabulary.py proves that the role's
`meta/argument_specs.yml`, its defaults, the modules' argument specs and the
router's own config checks (`router/src/skiff_router/config.py`, a separate
package that cannot import this one) agree with them.
"""

from __future__ import annotations

import re

# A site name is the router id: DNS-1123 label rules, so it also names
# Kubernetes namespaces, systemd units and podman containers.
SITE_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SITE_NAME_RULE = (
    "lower-case letters, digits and '-', 1 to 63 characters, starting and ending with a "
    "letter or digit"
)
# Names of links, listeners, connectors and tokens become directory names and
# config keys: no '/', no spaces.
OBJECT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
OBJECT_NAME_RULE = (
    "letters, digits, '.', '_' and '-', 1 to 63 characters, starting with a letter or digit"
)

PORT_MIN = 1
PORT_MAX = 65535
# The router refuses larger costs; path costs are sums and must stay small integers.
COST_MIN = 1
COST_MAX = 1_000_000

# Every platform name skiff knows. Which ones this version can run is the
# platform lookup's business (platform.PLATFORMS); the rest are planned.
PLATFORMS = ("local", "systemd", "podman", "kubernetes")
ROUTER_MODES = ("interior", "edge")
LOG_LEVELS = ("debug", "info", "warning", "error")
DISTRIBUTIONS = ("balanced", "closest")
# How a listener with several routing keys picks the key of a new flow.
STRATEGIES = ("priority", "weighted")
WEIGHT_MIN = 1
WEIGHT_MAX = 1000
# A routing key travels in every link-state update of the routers that serve or
# listen for it: bounded so one key cannot make an update too large to send.
ROUTING_KEY_MAX_BYTES = 253
# The admin endpoint's bearer token: the shortest the router accepts in its token file.
ADMIN_TOKEN_MIN_LENGTH = 16
STATES = ("present", "absent")
# How a kubernetes site's link Service is reached from outside its namespace.
KUBE_LINK_ACCESS = ("clusterip", "nodeport", "loadbalancer")

DEFAULT_PLATFORM = "local"
DEFAULT_ROUTER_MODE = "interior"
DEFAULT_LOG_LEVEL = "info"
DEFAULT_DISTRIBUTION = "balanced"
DEFAULT_STRATEGY = "priority"
DEFAULT_WEIGHT = 1
DEFAULT_ADMIN_HOST = "127.0.0.1"
DEFAULT_ADMIN_PORT = 9191
DEFAULT_LINK_PORT = 55671
DEFAULT_LINK_BIND_HOST = "0.0.0.0"
DEFAULT_LISTENER_HOST = "127.0.0.1"
# In a kubernetes site a listener is reached through its Service, so it binds the pod's address.
DEFAULT_KUBE_LISTENER_HOST = "0.0.0.0"
DEFAULT_COST = 1
DEFAULT_KUBE_LINK_ACCESS = "clusterip"
# Ports a kubernetes site's pod binds besides the admin port and the listeners:
# the router's link port (the Service maps the dialed port to it), the agent's
# health port and the agent's proxy listeners. Listeners and the admin port stay clear.
KUBE_LINK_PORT = 55671
# Router pods of a kubernetes site: every replica links to every other one.
MAX_KUBE_REPLICAS = 16
# A kubernetes rollout starts this many new router pods before it ends an old one.
KUBE_ROLLOUT_SURGE = 1
# Worker processes of one router (the router's `workers`; unset: one per CPU it may use).
MAX_ROUTER_WORKERS = 64
# One-time grants (skiff.fleet.token with dest): sites that may redeem one, and the
# window for a first link, in minutes (Skupper's AccessGrant defaults: 1, 15 minutes).
DEFAULT_GRANT_REDEMPTIONS = 1
MAX_GRANT_REDEMPTIONS = 100
DEFAULT_GRANT_WINDOW_MINUTES = 15
MAX_GRANT_WINDOW_MINUTES = 30 * 24 * 60
KUBE_AGENT_HEALTH_PORT = 9192
KUBE_PROXY_PORTS = (20000, 20999)


def kube_port_problem(port: object, link_access: bool) -> str | None:
    """Why a kubernetes site's listener or admin port clashes with the pod's own ports."""
    if not isinstance(port, int):
        return None
    if port == KUBE_AGENT_HEALTH_PORT:
        return f"{port} is the agent's health port in the pod; choose another"
    if link_access and port == KUBE_LINK_PORT:
        return f"{port} is the router's link port in the pod; choose another"
    if KUBE_PROXY_PORTS[0] <= port <= KUBE_PROXY_PORTS[1]:
        return (
            f"{port} is in the agent's proxy range {KUBE_PROXY_PORTS[0]}-{KUBE_PROXY_PORTS[1]} "
            "(the proxy Services of services exposed at other sites); choose another"
        )
    return None


# Fleet-wide checks that an inventory may mark as intended (skiff_intended):
# the run then warns instead of stopping.
INTENDED_CHECKS = ("unserved-listener", "link-cycle", "listeners-lose-connectors")


def routing_key_problem(value: object) -> str | None:
    """What is wrong with a routing key, or None (the router checks the same)."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if any(c.isspace() for c in value) or not value.isprintable():
        return "must not contain spaces or control characters"
    size = len(value.encode("utf-8", "replace"))
    if size > ROUTING_KEY_MAX_BYTES:
        return f"is {size} bytes long; at most {ROUTING_KEY_MAX_BYTES} (UTF-8)"
    return None


def routing_keys_problem(value: object) -> tuple[str, str] | None:
    """The first problem of a listener's ``routing_keys`` as (sub-field, message), or None.

    A non-empty list of {key, weight}: keys non-empty strings without spaces and
    unique, weights integers WEIGHT_MIN..WEIGHT_MAX (the router checks the same)."""
    if not isinstance(value, list) or not value:
        return "routing_keys", "must be a non-empty list of {key, weight}"
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"routing_keys[{index}]"
        if not isinstance(item, dict):
            return where, "must be a mapping with key and (optional) weight"
        key = item.get("key")
        problem = routing_key_problem(key)
        if problem is not None:
            return f"{where}.key", problem
        if key in seen:
            return f"{where}.key", f"'{key}' is listed twice; each key once"
        seen.add(str(key))
        weight = item.get("weight", DEFAULT_WEIGHT)
        if weight is None:
            weight = DEFAULT_WEIGHT
        if isinstance(weight, bool) or not isinstance(weight, int):
            return f"{where}.weight", f"must be a positive integer, got {weight!r}"
        if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            return f"{where}.weight", f"must be {WEIGHT_MIN} to {WEIGHT_MAX}, got {weight}"
    return None


def listener_keys(item: dict) -> tuple[str, ...]:
    """The routing keys a listener entry (inventory item or router.json entry) may use."""
    keys = item.get("routing_keys")
    if isinstance(keys, list) and keys:
        return tuple(str(k.get("key")) for k in keys if isinstance(k, dict))
    return (str(item.get("routing_key") or item.get("name")),)


def is_site_name(value: object) -> bool:
    return isinstance(value, str) and bool(SITE_NAME_PATTERN.match(value))


def is_object_name(value: object) -> bool:
    return isinstance(value, str) and bool(OBJECT_NAME_PATTERN.match(value))


def is_port(value: object) -> bool:
    """An integer port in range; digit strings count (inventory values often are strings)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return isinstance(value, int) and PORT_MIN <= value <= PORT_MAX


def is_cost(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and COST_MIN <= value <= COST_MAX
