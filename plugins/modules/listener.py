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
  - Manages one listener of a site, or with O(listeners) a list of them in one
    change. The router listens on O(host):O(port) and carries each connection
    to a connector with the same routing key, on this or any reachable site.
  - The host and port pair must be unique among the listeners of the site.
  - After the reload, the module checks the router could bind the address; if
    it reports an error (for example the port is in use) the previous config is
    restored and the task fails.
  - Edits only the named listeners' entries in the site's C(router.json) (all
    of them with O(prune=true)); when something changes, the new config is
    checked with C(skiff-router check-config) and a running router is reloaded
    (SIGHUP) once and awaited until it runs the new config. When nothing
    changes, the module neither runs the check nor contacts the router.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.items.listeners
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
      - Name of the listener, unique among the listeners of the site.
      - Letters, digits, C(.), C(_) and C(-), 1 to 63 characters.
      - One of O(name) and O(listeners) is required.
    type: str
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
  routing_keys:
    description:
      - Several routing keys instead of O(routing_key), for example the same service
        at a primary and a standby site; O(strategy) picks the key of each new flow.
        Each key once.
    type: list
    elements: dict
    suboptions:
      key:
        description: A routing key.
        type: str
        required: true
      weight:
        description: Share of new flows with O(strategy=weighted) (1..1000).
        type: int
        default: 1
  strategy:
    description:
      - How a listener with O(routing_keys) picks the key of a new flow.
      - V(priority) takes the first key with a reachable connector; new flows go back
        to an earlier key as soon as it has one again (failover and failback).
      - V(weighted) spreads new flows by weight over the keys with a reachable connector.
    type: str
    choices: [priority, weighted]
    default: priority
  tls:
    description:
      - Terminate TLS towards the clients, with O(tls.cert) and O(tls.key) (PEM files on
        the site's host; relative paths are relative to the site directory; keep the
        key 0600), or with a certificate the site's service CA issues (O(tls.issue)).
        Flows carry the plaintext between the sites' routers (inside their mutual-TLS
        links).
      - A renewed certificate written over the files is used for new connections
        without a restart; open connections stay.
    type: dict
    suboptions:
      cert:
        description: The listener's certificate chain (PEM). With O(tls.key).
        type: path
      key:
        description: Its private key (PEM).
        type: path
      issue:
        description:
          - The site's service CA (created on first use, apart from the CA of the links)
            issues the listener's certificate, with the listener's name, its host (unless
            it listens on every address) and O(tls.names) as SANs. Clients trust the
            service CA, returned as RV(service_ca).
          - Issued again when the names change, the service CA changes, or it expires
            within 30 days (valid 365 days); the key stays on the site's host (0600).
          - Not with O(tls.cert); platforms C(local), C(systemd) and C(podman).
        type: bool
        default: false
      names:
        description: More host names or addresses for the issued certificate (with O(tls.issue)).
        type: list
        elements: str
seealso:
  - module: skiff.fleet.connector
  - module: skiff.fleet.reconcile
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

- name: Clients reach the primary site's database, the standby's when the primary is gone
  skiff.fleet.listener:
    site: west
    name: db
    port: 15432
    routing_keys:
      - key: db-primary
      - key: db-standby
    strategy: priority

- name: Three new flows in four to the new version, one to the old
  skiff.fleet.listener:
    site: west
    name: api
    port: 18081
    routing_keys:
      - {key: api-v2, weight: 3}
      - {key: api-v1, weight: 1}
    strategy: weighted

- name: Terminate TLS with a certificate from the site's service CA
  skiff.fleet.listener:
    site: west
    name: web
    host: 0.0.0.0
    port: 8443
    tls:
      issue: true
      names: [web.example.internal]
  register: web

- name: Clients trust the service CA
  ansible.builtin.copy:
    content: "{{ web.service_ca }}"
    dest: /etc/pki/west-services.crt
    mode: "0644"

- name: Remove a listener
  skiff.fleet.listener:
    site: west
    name: db
    state: absent

- name: Exactly these two listeners, in one change (others are removed)
  skiff.fleet.listener:
    site: west
    listeners:
      - {name: backend, port: 18080}
      - {name: db, routing_key: postgres, port: 15432, distribution: closest}
    prune: true
"""

RETURN = r"""
service_ca:
  description:
    - The site's service CA certificate (PEM, public), which clients of listeners with
      O(tls.issue) trust.
  returned: when a listener has O(tls.issue)
  type: str
listener:
  description: The listener entry as written to C(router.json); null when O(state=absent).
  returned: with O(name)
  type: dict
  sample: {"name": "backend", "routing_key": "backend", "host": "127.0.0.1", "port": 8080}
listeners:
  description: The site's listeners after the change, as written to C(router.json).
  returned: with O(listeners)
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
  description: C(before) and C(after) of the site's C(listeners) list.
  returned: always
  type: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.options import (
    LISTENER_ITEM,
    LISTENERS,
    PRUNE,
)
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    LISTENER,
    ServiceParams,
    run_service,
)


def argument_spec() -> dict:
    return {
        **SITE_DIR_ARGUMENT_SPEC,
        **{k: v for k, v in LISTENER_ITEM.items() if k != "name"},
        "name": {"type": "str"},
        **LISTENERS,
        **PRUNE,
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_service(
            LISTENER, ServiceParams.from_module(LISTENER, params), check_mode
        ),
        needs_cryptography=False,
        required_one_of=[("name", "listeners")],
        mutually_exclusive=[("name", "listeners")],
        required_if=[("state", "present", ("port", "listeners"), True)],
    )


if __name__ == "__main__":
    main()
