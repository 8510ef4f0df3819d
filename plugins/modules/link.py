#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: link
short_description: Link a site to another site with a token
version_added: 0.1.0
description:
  - Makes this site dial the site that issued O(token), over mutual TLS, and
    keep the link up. The far site must accept links (see M(skiff.fleet.site)).
  - With O(links), manages a list of links in one change (one check, one write
    and at most one reload however many links or tokens changed). When nothing
    changes, the module neither runs the check nor contacts the router.
  - Writes the token's CA, client certificate and key to
    C(<site_dir>/links/<name>/) (key mode 0600) and the link's entry (paths
    only, no secrets) to C(router.json), then reloads the router.
  - The token's next certificate (C(tls.next.crt), same key) lets the router
    renew the link on its own, make before break, 30 days before the client
    certificate expires; no run is needed for that.
  - The token is checked before anything is written. A damaged, expired or
    foreign string fails with a message that never quotes it.
  - When only the credentials change (a new token with the same endpoints),
    the new files are written and the router reloaded; it redials this link
    with the new certificate and leaves every other link and flow alone.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.items.links
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
      - Name of the link, unique among the links of this site.
      - Defaults to the name of the site that issued the token. Required when O(state=absent).
      - Not with O(links).
    type: str
  token:
    description:
      - Token issued by M(skiff.fleet.token) at the site to link to. Required when
        O(state=present), unless O(token_file) or O(links) is given.
    type: str
  token_file:
    description:
      - A file on this host holding the token, or a grant written by
        M(skiff.fleet.token) with O(skiff.fleet.token#module:dest); linking redeems
        a grant. The issuing site's router refuses a grant that is used up or past
        its window, and the link's error says which (C(grant used),
        C(grant expired)).
      - It must be readable by its owner only (mode 0600), as it holds a private key.
      - Not with O(token) or O(links).
    type: path
    version_added: 0.2.0
  cost:
    description:
      - Routing cost of the link, an integer from 1 to 1000000; traffic prefers
        paths with the lowest total cost.
    type: int
    default: 1
  state:
    description: Whether the link exists.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - cryptography
seealso:
  - module: skiff.fleet.token
  - module: skiff.fleet.reconcile
  - module: skiff.fleet.wait
"""

EXAMPLES = r"""
- name: West links to east (token issued by skiff.fleet.token at east)
  skiff.fleet.link:
    site: west
    token: "{{ east_token }}"
    cost: 2

- name: Redeem a grant that east's operators handed over as a file (mode 0600)
  skiff.fleet.link:
    site: partner
    token_file: /etc/skiff/east.grant

- name: Remove the link to east
  skiff.fleet.link:
    site: west
    name: east
    state: absent

- name: Exactly these links (any other link of west and its credentials go), one reload
  skiff.fleet.link:
    site: west
    links:
      - {token: "{{ east_token }}", cost: 1}
      - {token: "{{ south_token }}", cost: 5}
    prune: true
"""

RETURN = r"""
link:
  description: The link entry as written to C(router.json) (paths, no secrets); null when absent.
  returned: without O(links)
  type: dict
  sample:
    name: east
    peer: east
    cost: 1
    endpoints: [{"host": "127.0.0.1", "port": 55671}]
    ca: links/east/ca.crt
    cert: links/east/tls.crt
    key: links/east/tls.key
link_status:
  description: The link as C(/v1/status) reported it right after the reload (it may still be connecting).
  returned: when the link changed and the router runs
  type: dict
links:
  description: The site's links after the change, as written to C(router.json) (paths, no secrets).
  returned: with O(links)
  type: list
  elements: dict
changes:
  description: Each entry added, updated or removed (C(section), C(action), C(name), C(before), C(after)); no secrets.
  returned: always
  type: list
  elements: dict
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
diff:
  description: C(before) and C(after) of the site's C(links) list.
  returned: always
  type: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.link import LinkParams, run_link
from ansible_collections.skiff.fleet.plugins.module_utils.options import LINK_ITEM, LINKS, PRUNE


def argument_spec() -> dict:
    return {
        **SITE_DIR_ARGUMENT_SPEC,
        **{k: v for k, v in LINK_ITEM.items() if k != "peer"},
        **LINKS,
        **PRUNE,
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_link(LinkParams.from_module(params), check_mode),
        mutually_exclusive=[("name", "links"), ("token", "links", "token_file")],
        required_if=[
            ("state", "present", ("token", "token_file", "links"), True),
            ("state", "absent", ("name",)),
        ],
    )


if __name__ == "__main__":
    main()
