"""Input checks shared by the modules (private to skiff.fleet; not a public API).

Each check returns the normalized value or raises SkiffError naming the field,
so a user sees which option is wrong and what is accepted.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def port(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise SkiffError(f"{value!r} is not a port number", field=field) from None
    if not vocabulary.PORT_MIN <= value <= vocabulary.PORT_MAX:
        raise SkiffError(
            f"{value} is out of range ({vocabulary.PORT_MIN}..{vocabulary.PORT_MAX})", field=field
        )
    return value


def host(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise SkiffError(
            f"{value!r} is not a host name or address (a non-empty string without spaces)",
            field=field,
        )
    # Brackets are URL syntax, not part of an IPv6 address.
    return value.strip().strip("[]")


def object_name(value: Any, field: str) -> str:
    if not vocabulary.is_object_name(value):
        raise SkiffError(
            f"{value!r} is not a valid name ({vocabulary.OBJECT_NAME_RULE})", field=field
        )
    return value


def routing_key(value: Any, field: str = "routing_key") -> str:
    problem = vocabulary.routing_key_problem(value)
    if problem is not None:
        raise SkiffError(problem, field=field)
    return value


def cost(value: Any, field: str = "cost") -> int:
    if not vocabulary.is_cost(value):
        if isinstance(value, int) and not isinstance(value, bool) and value > vocabulary.COST_MAX:
            raise SkiffError(f"{value} must be at most {vocabulary.COST_MAX}", field=field)
        raise SkiffError(f"{value!r} must be an integer >= {vocabulary.COST_MIN}", field=field)
    return value


def endpoint(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SkiffError("must be a mapping with host and port", field=field)
    return {
        "host": host(value.get("host"), f"{field}.host"),
        "port": port(value.get("port"), f"{field}.port"),
    }


def addresses_overlap(host_a: str, port_a: int, host_b: str, port_b: int) -> bool:
    """True when two listeners could not both bind (same port, same or wildcard host)."""
    if port_a != port_b:
        return False
    return host_a == host_b or host_a in WILDCARD_HOSTS or host_b in WILDCARD_HOSTS
