"""Input checks shared by the modules (private to skiff.fleet; not a public API).

Each check returns the normalized value or raises SkiffError naming the field,
so a user sees which option is wrong and what is accepted.
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError

# Names that become directory names (links, tokens) or config keys: no '/', no spaces.
OBJECT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def port(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise SkiffError(f"{value!r} is not a port number", field=field) from None
    if not 1 <= value <= 65535:
        raise SkiffError(f"{value} is out of range (1..65535)", field=field)
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
    if not isinstance(value, str) or not OBJECT_NAME_PATTERN.match(value):
        raise SkiffError(
            f"{value!r} is not a valid name (letters, digits, '.', '_' and '-', "
            "1 to 63 characters, starting with a letter or digit)",
            field=field,
        )
    return value


def routing_key(value: Any, field: str = "routing_key") -> str:
    if not isinstance(value, str) or not value.strip():
        raise SkiffError("must be a non-empty string", field=field)
    if any(c.isspace() for c in value):
        raise SkiffError(f"{value!r} must not contain spaces", field=field)
    return value


def cost(value: Any, field: str = "cost") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SkiffError(f"{value!r} must be an integer >= 1", field=field)
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
