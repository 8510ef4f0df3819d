#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: connector
short_description: Bind a routing key to a real service host:port
version_added: 0.1.0
description:
  - Manages one connector of a site, or with O(connectors) a list of them in
    one change. Connections that arrive for O(routing_key) (from a listener on
    this or any reachable site) are opened to O(host):O(port).
  - Several sites may have a connector for the same routing key; the router
    picks the nearest reachable one.
  - Edits only the named connectors' entries in the site's C(router.json) (all
    of them with O(prune=true)); when something changes, the new config is
    checked with C(skiff-router check-config) and a running router is reloaded
    (SIGHUP) once and awaited until it runs the new config. When nothing
    changes, the module neither runs the check nor contacts the router.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.items.connectors
  - skiff.fleet.items.prune
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description:
      - Name of the connector, unique among the connectors of the site.
      - Letters, digits, C(.), C(_) and C(-), 1 to 63 characters.
      - One of O(name) and O(connectors) is required.
    type: str
  routing_key:
    description:
      - The routing key that pairs listeners with connectors across the network.
      - Defaults to O(name).
    type: str
  host:
    description: Host name or address of the real service, as seen from the router. Required when O(state=present).
    type: str
  port:
    description: Port of the real service (1..65535). Required when O(state=present).
    type: int
  state:
    description: Whether the connector exists.
    type: str
    choices: [present, absent]
    default: present
  tls:
    description:
      - Originate TLS to the server, verified against the CA bundle O(tls.ca) and the
        server name; optionally with a client certificate. PEM files on the site's host.
    type: dict
    suboptions:
      ca:
        description: CA bundle (PEM) the server's certificate must chain to.
        type: path
        required: true
      server_name:
        description: Name the server's certificate must match. Defaults to the connector's host.
        type: str
      cert:
        description: Client certificate (PEM), with its key.
        type: path
      key:
        description: The client certificate's private key (PEM). Keep it 0600.
        type: path
seealso:
  - module: skiff.fleet.listener
  - module: skiff.fleet.reconcile
  - module: skiff.fleet.wait
"""

EXAMPLES = r"""
- name: Connections for "backend" go to the service on this host, port 8080
  skiff.fleet.connector:
    site: east
    name: backend
    host: 127.0.0.1
    port: 8080

- name: Remove a connector
  skiff.fleet.connector:
    site: east
    name: backend
    state: absent

- name: Two connectors in one change, and one removed
  skiff.fleet.connector:
    site: east
    connectors:
      - {name: backend, host: 127.0.0.1, port: 8080}
      - {name: db, routing_key: postgres, host: db.internal, port: 5432}
      - {name: old, state: absent}
"""

RETURN = r"""
connector:
  description: The connector entry as written to C(router.json); null when O(state=absent).
  returned: with O(name)
  type: dict
  sample: {"name": "backend", "routing_key": "backend", "host": "127.0.0.1", "port": 8080}
connectors:
  description: The site's connectors after the change, as written to C(router.json).
  returned: with O(connectors)
  type: list
  elements: dict
changes:
  description: Each entry added, updated or removed (C(section), C(action), C(name), C(before), C(after)).
  returned: always
  type: list
  elements: dict
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
diff:
  description: C(before) and C(after) of the site's C(connectors) list.
  returned: always
  type: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.options import (
    CONNECTOR_ITEM,
    CONNECTORS,
    PRUNE,
)
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    CONNECTOR,
    ServiceParams,
    run_service,
)


def argument_spec() -> dict:
    return {
        **SITE_DIR_ARGUMENT_SPEC,
        **{k: v for k, v in CONNECTOR_ITEM.items() if k != "name"},
        "name": {"type": "str"},
        **CONNECTORS,
        **PRUNE,
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_service(
            CONNECTOR, ServiceParams.from_module(CONNECTOR, params), check_mode
        ),
        needs_cryptography=False,
        required_one_of=[("name", "connectors")],
        mutually_exclusive=[("name", "connectors")],
        required_if=[("state", "present", ("port", "connectors"), True)],
    )


if __name__ == "__main__":
    main()
