#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

# Runs on the controller as an action plugin (plugins/action/plan.py);
# this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: plan
short_description: Show and write the plan of a whole fleet after a check run
version_added: 0.2.0
description:
  - Reads what each site's steps reported in this check run (the results the
    role P(skiff.fleet.skiff#role) registers as C(skiff_site_result),
    C(skiff_token_results) and C(skiff_config_result)) and the inventory, and
    prints one plan of the whole fleet.
  - The plan lists sites to create or change, links to add, remove or
    re-cost (with their cost), listeners and connectors, routing keys that
    become reachable or unreachable and at which sites, certificates to renew
    and why, and the sites that could not be planned (unreachable, failed)
    and why.
  - Runs on the controller; changes nothing on any host. With O(dest) it also
    writes the plan as JSON there, on the controller.
  - C(playbooks/site.yml --check) ends with it; C(playbooks/plan.yml) runs the
    same check and writes the JSON.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  hosts:
    description: The site hosts to plan. Defaults to the C(skiff_sites) group.
    type: list
    elements: str
  dest:
    description: A file on the controller to write the plan to, as JSON.
    type: path
"""

EXAMPLES = r"""
- name: The plan of the fleet, also as JSON
  skiff.fleet.plan:
    hosts: "{{ groups['skiff_sites'] }}"
    dest: /tmp/skiff-plan.json
  run_once: true
"""

RETURN = r"""
plan:
  description: The plan as data (the same as the JSON file).
  returned: always
  type: dict
  contains:
    sites:
      description: C(create) (site names), C(change) (site name to its actions), C(unchanged).
      type: dict
    links:
      description: C(add), C(remove), C(update); each link C(from), C(to), C(name), C(cost) (and C(cost_before)).
      type: dict
    services:
      description: C(add), C(remove), C(update); each C(site), C(kind), C(name), C(routing_key), C(address).
      type: dict
    reachable:
      description: Routing key to the sites where it becomes reachable.
      type: dict
    unreachable:
      description: Routing key to the sites (C(site), C(why)) where it becomes unreachable.
      type: dict
    certificates:
      description: Each certificate to renew, C(site), C(what), C(why).
      type: list
    errors:
      description: Each site that could not be planned, C(site), C(host), C(why).
      type: list
    changed:
      description: Whether a real run would change anything.
      type: bool
dest:
  description: Absolute path of the JSON file written.
  returned: when O(dest) is given
  type: str
"""
