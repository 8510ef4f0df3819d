#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: wait
short_description: Wait until a site sees its network and serves its listeners
version_added: 0.1.0
description:
  - Polls the router's admin C(/v1/status) until every router in O(routers) is
    reachable, every link the site dials is up, every listener of the site is
    listening, and every listener's routing key has a reachable connector (on
    this or another site).
  - Fails after O(timeout) seconds naming what did not converge. These are
    routers not reachable, links not up, listeners with no reachable connector,
    and listeners in error (for example a port in use).
  - Fails at once when the peer of a link refused the grant it was made from for
    good (C(grant used), C(grant expired)), naming the link; the router keeps
    running.
  - Never changes anything.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Runs the same in check mode; it only reads.
  diff_mode:
    support: none
options:
  routers:
    description: Router ids (site names) that must be reachable from this site.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds to wait before failing.
    type: float
    default: 60
seealso:
  - module: skiff.fleet.link
  - module: skiff.fleet.listener
"""

EXAMPLES = r"""
- name: West reaches east and north, and its listeners have connectors
  skiff.fleet.wait:
    site: west
    routers: [east, north]
    timeout: 90
"""

RETURN = r"""
status:
  description: The last C(/v1/status) document of the router.
  returned: success
  type: dict
elapsed:
  description: Seconds it took to converge.
  returned: success
  type: float
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.wait import WaitParams, run_wait


def argument_spec() -> dict:
    return {
        **SITE_DIR_ARGUMENT_SPEC,
        "routers": {"type": "list", "elements": "str", "default": []},
        "timeout": {"type": "float", "default": 60},
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_wait(WaitParams.from_module(params), check_mode),
        needs_cryptography=False,
    )


if __name__ == "__main__":
    main()
