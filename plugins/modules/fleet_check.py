#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

# Runs on the controller as an action plugin (plugins/action/fleet_check.py);
# this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_check
short_description: Check a whole fleet inventory before anything changes
version_added: 0.2.0
description:
  - Reads the C(skiff_*) variables of every site host of the inventory on the
    controller and checks them together. Changes nothing and contacts no host.
  - First each host's own variables (types, ranges, names, links to hosts of
    the group that accept links, ports used twice on one machine).
  - Then, when those pass, the network they describe. A listener whose routing
    key no connector in the fleet serves (C(unserved-listener)). Links that
    dial in a cycle, for example two sites that each dial the other
    (C(link-cycle)). A site none of whose listeners would reach a connector
    over its links, edge routers carrying no transit (C(listeners-lose-connectors)).
  - A host whose C(skiff_intended) lists the check gets a warning instead.
  - Every problem names the host and the field. The role P(skiff.fleet.skiff#role)
    runs it once per run, then fails each host for its own problems, so the
    whole rollout stops before anything changes.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Runs the same in check mode; it only reads the inventory.
  diff_mode:
    support: none
options:
  hosts:
    description: The site hosts to check together. Defaults to the C(skiff_sites) group.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Check the fleet once, then fail each host for its own problems
  skiff.fleet.fleet_check:
    hosts: "{{ groups['skiff_sites'] }}"
  run_once: true
  register: fleet

- name: This host is a valid part of the fleet
  ansible.builtin.assert:
    that: fleet.problems[inventory_hostname] | length == 0
    fail_msg: "{{ fleet.problems[inventory_hostname] | join('; ') }}"
"""

RETURN = r"""
problems:
  description: For every checked host, its problems (empty when none); intended findings are not problems.
  returned: always
  type: dict
  sample: {"north": ["host 'north': skiff_listeners[0].routing_key: no connector in the fleet serves routing key 'db'; ..."], "east": []}
findings:
  description: Each fleet-wide finding, intended or not.
  returned: always
  type: list
  elements: dict
  contains:
    host:
      description: Inventory host.
      type: str
    check:
      description: C(unserved-listener), C(link-cycle) or C(listeners-lose-connectors).
      type: str
    field:
      description: The variable at fault.
      type: str
    message:
      description: What is wrong and what to do.
      type: str
    intended:
      description: Whether the host's C(skiff_intended) marks it intended (a warning).
      type: bool
"""
