"""Argument specs of the list options shared by several modules (private to skiff.fleet).

`listeners`, `connectors` and `links` are options of their own module (the
list form) and of skiff.fleet.reconcile; each is defined once here, with its
documentation once in the doc fragment skiff.fleet.items (same names).
Choices and defaults come from the vocabulary.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary

STATE = {"type": "str", "choices": list(vocabulary.STATES), "default": "present"}

LISTENER_ITEM: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "required": True},
    "routing_key": {"type": "str", "no_log": False},
    "host": {"type": "str", "default": vocabulary.DEFAULT_LISTENER_HOST},
    "port": {"type": "int"},
    "distribution": {
        "type": "str",
        "choices": list(vocabulary.DISTRIBUTIONS),
        "default": vocabulary.DEFAULT_DISTRIBUTION,
    },
    "routing_keys": {
        "type": "list",
        "elements": "dict",
        "no_log": False,
        "options": {
            "key": {"type": "str", "required": True, "no_log": False},
            "weight": {"type": "int", "default": vocabulary.DEFAULT_WEIGHT},
        },
    },
    "strategy": {
        "type": "str",
        "choices": list(vocabulary.STRATEGIES),
        "default": vocabulary.DEFAULT_STRATEGY,
    },
    "tls": {
        "type": "dict",
        "options": {
            "cert": {"type": "path"},
            "key": {"type": "path", "no_log": False},
            "issue": {"type": "bool", "default": False},
            "names": {"type": "list", "elements": "str"},
        },
        "required_together": [["cert", "key"]],
    },
    "state": STATE,
}
CONNECTOR_ITEM: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "required": True},
    "routing_key": {"type": "str", "no_log": False},
    "host": {"type": "str"},
    "port": {"type": "int"},
    "tls": {
        "type": "dict",
        "options": {
            "ca": {"type": "path", "required": True},
            "server_name": {"type": "str"},
            "cert": {"type": "path"},
            "key": {"type": "path", "no_log": False},
        },
        "required_together": [["cert", "key"]],
    },
    "state": STATE,
}
LINK_ITEM: dict[str, dict[str, Any]] = {
    "name": {"type": "str"},
    "token": {"type": "str", "no_log": True},
    "token_file": {"type": "path"},
    "cost": {"type": "int", "default": vocabulary.DEFAULT_COST},
    "peer": {"type": "str"},
    "state": STATE,
}


def list_of(item: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "list", "elements": "dict", "options": item}


LISTENERS = {"listeners": list_of(LISTENER_ITEM)}
CONNECTORS = {"connectors": list_of(CONNECTOR_ITEM)}
LINKS = {"links": list_of(LINK_ITEM)}
PRUNE = {"prune": {"type": "bool", "default": False}}
