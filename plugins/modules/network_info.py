#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: network_info
short_description: The live application network as data, from the routers' admin APIs
version_added: 0.2.0
description:
  - Reads C(/v1/status) of the sites in O(base_dir) on the managed host
    (through each site's platform) and of any O(admin_urls), and returns
    what they show together as RV(network). These are the sites, the links
    with their state and cost, the routing keys with the sites that listen
    and serve, the keys a listener cannot reach, and the expiry of the
    certificates of the sites read (from their platform's secret store).
  - A site that does not answer is listed in RV(network.unreadable) with the
    reason; the module does not fail for it.
  - Run it on every site host and join the results with the filter
    C(skiff.fleet.merge_networks) for the whole fleet; each router also knows
    every other router and every routing key, so one site alone already shows
    the network at a glance (as C(skiff-router status --network) does).
  - Never changes anything.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Runs the same in check mode; it only reads.
  diff_mode:
    support: none
options:
  base_dir:
    description: Directory on the managed host that holds one sub-directory per site.
    type: path
    default: ~/.local/state/skiff
  sites:
    description: Names of the sites in O(base_dir) to read. Defaults to every site there.
    type: list
    elements: str
  admin_urls:
    description:
      - Admin endpoints of other routers to read as well (for example
        C(http://10.0.0.5:9191)), when they are reachable from the managed host.
    type: list
    elements: str
    default: []
  admin_token:
    description:
      - The bearer token that O(admin_urls) ask for (the content of the site's
        C(admin/token) file, see RV(skiff.fleet.site#module:admin_token_file)).
        Sites in O(base_dir) need none here; their token is read from their directory.
    type: str
    version_added: 0.2.0
  timeout:
    description: Seconds to wait for each admin endpoint.
    type: float
    default: 5
  certificates:
    description: Whether to report the expiry of the certificates in the site directories.
    type: bool
    default: true
requirements:
  - cryptography (for certificate expiries)
seealso:
  - module: skiff.fleet.wait
"""

EXAMPLES = r"""
- name: The network as every site host sees it
  skiff.fleet.network_info:
    base_dir: "{{ skiff_base_dir }}"
    sites: ["{{ skiff_site_name }}"]
  register: skiff_network_view

- name: The whole network, joined on the controller
  ansible.builtin.set_fact:
    network: >-
      {{ ansible_play_hosts | map('extract', hostvars, 'skiff_network_view')
         | skiff.fleet.merge_networks }}
  run_once: true

- name: Keys that some listener cannot reach
  ansible.builtin.debug:
    msg: "{{ network.unreachable_keys }}"
  run_once: true
"""

RETURN = r"""
network:
  description: The network as the sites read show it.
  returned: always
  type: dict
  contains:
    sites:
      description:
        - Site name to its facts. A site read directly has C(read=true), C(mode),
          C(version), C(ready), C(not_ready), C(config_sha256), C(config_error),
          C(listeners), C(connectors), C(flows_open).
        - A router only known from another site's view has C(read=false) and
          C(reachable_from), the sites that reach it.
      type: dict
    links:
      description: Each link C(from) (the dialing site), C(to), C(name), C(cost), C(state), C(error), C(seen_by).
      type: list
      elements: dict
    routing_keys:
      description: Routing key to C(listeners) and C(connectors) (site names), C(unreachable_at) and C(reachable).
      type: dict
    unreachable_keys:
      description: Routing keys that a site with a listener for them cannot reach.
      type: list
      elements: str
    certificates:
      description:
        - Each certificate read, C(site), C(what), C(not_after), C(days_left), soonest first.
        - The site CA, the server certificate and each link's client certificate
          (the one its token carried).
      type: list
      elements: dict
    unreadable:
      description: Each site or admin endpoint that could not be read, C(site), C(source), C(why).
      type: list
      elements: dict
views:
  description: What each site read reported (its status), for C(skiff.fleet.merge_networks).
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    BASE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.network import (
    NetworkInfoParams,
    run_network_info,
)


def argument_spec() -> dict:
    return {
        **BASE_DIR_ARGUMENT_SPEC,
        "sites": {"type": "list", "elements": "str"},
        "admin_urls": {"type": "list", "elements": "str", "default": []},
        "admin_token": {"type": "str", "no_log": True},
        "timeout": {"type": "float", "default": 5},
        "certificates": {"type": "bool", "default": True},
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_network_info(
            NetworkInfoParams.from_module(params), check_mode
        ),
    )


if __name__ == "__main__":
    main()
