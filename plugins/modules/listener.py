#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: listener
short_description: Give clients a local host:port for a routing key
version_added: 0.1.0
description:
  - Manages one listener of a site. The router listens on O(host):O(port) and
    carries each connection to a connector with the same routing key, on this
    or any reachable site.
  - The host and port pair must be unique among the listeners of the site.
  - After the reload, the module checks the router could bind the address; if
    it reports an error (for example the port is in use) the previous config is
    restored and the task fails.
  - Edits only this listener's entry in the site's C(router.json); the new config
    is checked with C(skiff-router check-config) and a running router is reloaded
    (SIGHUP) and awaited until it runs the new config.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description:
      - Name of the listener, unique among the listeners of the site.
      - Letters, digits, C(.), C(_) and C(-), 1 to 63 characters.
    type: str
    required: true
  routing_key:
    description:
      - The routing key that pairs listeners with connectors across the network.
      - Defaults to O(name).
    type: str
  host:
    description: Address the router listens on for clients.
    type: str
    default: 127.0.0.1
  port:
    description: Port the router listens on for clients (1..65535). Required when O(state=present).
    type: int
  state:
    description: Whether the listener exists.
    type: str
    choices: [present, absent]
    default: present
  distribution:
    description:
      - How new flows from this listener pick among the connectors of O(routing_key).
      - V(balanced) spreads them over every reachable connector, weighing path cost
        against the flows each target already carries (an idle local connector first).
      - V(closest) sends them to the least-cost connectors only, spreading ties.
    type: str
    choices: [balanced, closest]
    default: balanced
requirements:
  - cryptography
seealso:
  - module: skiff.fleet.connector
  - module: skiff.fleet.wait
"""

EXAMPLES = r"""
- name: Clients on this host reach the backend service at 127.0.0.1:18080
  skiff.fleet.listener:
    site: west
    name: backend
    port: 18080

- name: Listen on every address, for a routing key named differently
  skiff.fleet.listener:
    site: west
    name: db
    routing_key: postgres
    host: 0.0.0.0
    port: 15432

- name: Remove a listener
  skiff.fleet.listener:
    site: west
    name: db
    state: absent
"""

RETURN = r"""
listener:
  description: The listener entry as written to C(router.json); null when O(state=absent).
  returned: always
  type: dict
  sample: {"name": "backend", "routing_key": "backend", "host": "127.0.0.1", "port": 8080}
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
diff:
  description: C(before) and C(after) of the site's C(listeners) list.
  returned: when the site exists
  type: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    LISTENER,
    ServiceParams,
    run_service,
)


def argument_spec() -> dict:
    return {
        **SITE_DIR_ARGUMENT_SPEC,
        "name": {"type": "str", "required": True},
        "routing_key": {"type": "str", "no_log": False},
        "host": {"type": "str", "default": "127.0.0.1"},
        "port": {"type": "int"},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "distribution": {
            "type": "str",
            "choices": ["balanced", "closest"],
            "default": "balanced",
        },
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_service(
            LISTENER, ServiceParams.from_module(params), check_mode
        ),
        required_if=[("state", "present", ("port",))],
    )


if __name__ == "__main__":
    main()
