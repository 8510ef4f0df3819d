#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: reconcile
short_description: A site's links, listeners and connectors, in one change
version_added: 0.2.0
description:
  - Makes the links, listeners and connectors of one site what the lists say,
    in one change. It reads the site's C(router.json) once and computes the
    new config with the same reconciler as M(skiff.fleet.link),
    M(skiff.fleet.listener) and M(skiff.fleet.connector).
  - When something changes, the new config is checked with
    C(skiff-router check-config), written once and a running router is
    reloaded (SIGHUP) once and awaited until it runs it; link credentials are
    written before and put back if the change fails. When nothing changes,
    the module neither runs the check nor contacts the router.
  - A list that is not given is left as it is. With O(prune=true), entries of
    the given lists that they do not name are removed (links with their credentials).
  - The role P(skiff.fleet.skiff#role) calls this module once per site and run.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.items.links
  - skiff.fleet.items.listeners
  - skiff.fleet.items.connectors
  - skiff.fleet.items.prune
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - A link whose far site does not exist yet has no token; given its
        O(links[].peer), check mode reports it as a link the real run adds.
  diff_mode:
    support: full
requirements:
  - cryptography (to check link tokens)
seealso:
  - module: skiff.fleet.link
  - module: skiff.fleet.listener
  - module: skiff.fleet.connector
"""

EXAMPLES = r"""
- name: West dials east and north, offers a database and reaches the backend; nothing else
  skiff.fleet.reconcile:
    site: west
    links:
      - {token: "{{ token_from_east }}", cost: 1}
      - {token: "{{ token_from_north }}", cost: 3}
    connectors:
      - {name: db, routing_key: postgres, host: 127.0.0.1, port: 5432}
    listeners:
      - {name: backend, port: 18080}
    prune: true

- name: Only the listeners; links and connectors are left alone
  skiff.fleet.reconcile:
    site: west
    listeners:
      - {name: backend, port: 18080}
      - {name: legacy, state: absent}
"""

RETURN = r"""
service_ca:
  description:
    - The site's service CA certificate (PEM, public), which clients of listeners with
      O(listeners[].tls.issue) trust.
  returned: when a listener has O(listeners[].tls.issue)
  type: str
links:
  description: The site's links after the change (paths, no secrets).
  returned: when O(links) is given
  type: list
  elements: dict
listeners:
  description: The site's listeners after the change.
  returned: when O(listeners) is given
  type: list
  elements: dict
connectors:
  description: The site's connectors after the change.
  returned: when O(connectors) is given
  type: list
  elements: dict
changes:
  description:
    - Each entry added, updated or removed, as data (no secrets).
    - A link that check mode cannot build yet (no token) has C(after) null.
  returned: always
  type: list
  elements: dict
  contains:
    section:
      description: C(links), C(listeners) or C(connectors).
      type: str
    action:
      description: C(add), C(update) or C(remove).
      type: str
    name:
      description: Name of the entry.
      type: str
    before:
      description: The entry before (null when added).
      type: dict
    after:
      description: The entry after (null when removed).
      type: dict
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
diff:
  description: C(before) and C(after) of each given list.
  returned: always
  type: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.options import (
    CONNECTORS,
    LINKS,
    LISTENERS,
    PRUNE,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site_config import (
    SiteConfigParams,
    run_reconcile,
)


def argument_spec() -> dict:
    return {**SITE_DIR_ARGUMENT_SPEC, **LINKS, **LISTENERS, **CONNECTORS, **PRUNE}


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_reconcile(SiteConfigParams.from_module(params), check_mode),
    )


if __name__ == "__main__":
    main()
