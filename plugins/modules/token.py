#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: token
short_description: Issue a link token at a site that accepts links
version_added: 0.1.0
description:
  - Issues a token that lets another site link to this one. The token carries
    this site's link endpoints, its CA certificate and a client certificate
    (CN = O(name), signed by this site's CA) with its private key.
  - Idempotent. The client certificate and C(token.json) are kept in
    C(<site_dir>/tokens/<name>/) and a later run returns the same token with
    C(changed=false) while the certificate is still valid for more than 30
    days, is signed by the current site CA and the site's link endpoints are
    unchanged. Otherwise a new client certificate is issued (C(changed=true)).
  - Every token carries its next certificate, for the same key, valid from 30
    days before the client certificate expires; the site's router accepts both.
    The dialing router switches to it on its own, make before break, so a link
    renews without a playbook run. A run within 30 days of expiry makes the next
    certificate the token's own and issues the one after (the key stays).
  - With O(names), one token per name in one run (for example every site
    that links to a hub), returned as RV(tokens).
  - Fails when the site does not exist or does not accept links.
  - The site's router accepts links only with the client certificates of the
    tokens it keeps (the router config's C(link_clients), written and reloaded
    by this module when the tokens kept change). A re-issued token's previous
    certificate still links for one day, so the dialing site keeps its link until
    it has the new token.
  - The returned RV(token) is a secret. The collection's action plugin marks
    every result that carries a token C(no_log), so it is never displayed or
    logged, while failures stay visible. Set C(no_log) on every other task that
    handles the token (for example C(set_fact)).
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode a token that would be issued is not returned.
  diff_mode:
    support: full
options:
  name:
    description:
      - The name of the site that will dial with this token.
      - Becomes the CN of the client certificate, and the accepting router lets
        a link announce only that site name, so a token cannot be used to join
        as another site. M(skiff.fleet.link) refuses a token named for another site.
      - One of O(name) and O(names) is required.
    type: str
  names:
    description:
      - Several names at once, each handled as O(name) would be.
    type: list
    elements: str
  state:
    description:
      - >-
        V(absent) removes the stored token and revokes it; the site's router
        refuses its certificate from then on and closes the links made with it
        at the reload.
    type: str
    choices: [present, absent]
    default: present
  prune:
    description:
      - With O(names), remove every token the site keeps that O(names) does not
        list, which revokes it (see O(state)). The role sets it with
        C(skiff_prune), naming the inventory's dialing sites and
        C(skiff_external_tokens). Without O(names) it has no effect.
    type: bool
    default: false
    version_added: 0.2.0
  outside:
    description:
      - Names of O(names) whose tokens go to peers outside the inventory. When
        one of them is issued again (it expires within 30 days, or the link
        endpoints changed), the task warns that someone must hand the peer the
        new token before the previous certificate stops linking (one day later).
        The role passes C(skiff_external_tokens).
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  rotate_before:
    description:
      - Issue a token again if its certificate was issued before this time,
        whatever its expiry; V(now) or an ISO 8601 time with its zone (for
        example V(2026-12-04T09:00:00Z)), never in the future. The previous
        certificate still links for one day and a dialing site's router dials
        the new link before it lets the old one go, so no flow drops.
      - The role passes C(skiff_rotate).
    type: str
    version_added: 0.2.0
  routers:
    description:
      - How many routers of a dialing site may hold a link made with its token at
        once, by token name (at most 17; a name left out keeps its count, 1 for a
        new token). A site's router is one
        router whatever its workers and links; a C(kubernetes) site with replicas
        runs one router per pod, and a rollout adds one before it ends one. Another
        router that presents the token while these hold links is refused and logged
        (a copied token cannot link beside the site it was issued to). The role sets
        it with the P(skiff.fleet.credential_routers#filter) filter.
    type: dict
    default: {}
    version_added: 0.2.0
  dest:
    description:
      - Issue a one-time grant instead of a token, and write it to this file on the
        host the module runs on (an absolute path, mode 0600), for a peer outside
        the inventory. Its certificate names no site; the first sites that link
        with it (M(skiff.fleet.link) with O(skiff.fleet.link#module:token_file))
        within O(redeem_within) minutes redeem it, up to O(redemptions) sites. A
        site that redeemed it keeps linking with it for the certificate's life;
        another site is refused with C(grant used), a new one after the window with
        C(grant expired). The site's router keeps the redemptions in its state
        directory, so a restart opens nothing again.
      - >-
        The file is written when the grant is issued, never again by a run that
        keeps it; delete it once handed over. To issue a new grant use
        O(rotate_before=now). A token turned into a grant, or back, is issued again.
      - Not on C(kubernetes) sites, whose router pods keep no state.
      - Not with O(names); see O(grants).
    type: path
    version_added: 0.2.0
  redemptions:
    description:
      - With O(dest), how many sites may redeem the grant (1 to 100). A change
        applies to the grant kept.
    type: int
    default: 1
    version_added: 0.2.0
  redeem_within:
    description:
      - With O(dest), the grant's window for a first link, in minutes from its
        issue (1 to 43200). A change applies to the grant kept.
    type: int
    default: 15
    version_added: 0.2.0
  grants:
    description:
      - With O(names), the names that are grants, each with its O(dest) and
        optionally O(redemptions) and O(redeem_within), as a mapping of name to
        these. The role passes the dictionaries of C(skiff_external_tokens).
    type: dict
    default: {}
    version_added: 0.2.0
  valid_days:
    description: Lifetime of a newly issued client certificate, in days.
    type: int
    default: 365
requirements:
  - cryptography
seealso:
  - module: skiff.fleet.link
  - module: skiff.fleet.site
"""

EXAMPLES = r"""
- name: Token for site west to link to site east
  skiff.fleet.token:
    site: east
    name: west
  register: east_token

- name: West dials east with it
  skiff.fleet.link:
    site: west
    token: "{{ hostvars['east-host'].east_token.token }}"
  delegate_to: west-host

- name: A grant for a partner outside the inventory, redeemable once within 15 minutes
  skiff.fleet.token:
    site: east
    name: partner
    dest: /root/partner.grant
"""

RETURN = r"""
token:
  description:
    - The token, a string starting with C(skiff1.). Secret (it holds a private key).
    - Not returned in check mode when a new token would be issued.
  returned: when state is present
  type: str
tokens:
  description:
    - With O(names), each name's token (names whose token check mode would
      issue are missing). Secret, like RV(token).
  returned: with O(names) and state present
  type: dict
token_info:
  description:
    - Public facts about the token; never the key. With O(names), a mapping
      of each name to these facts.
  returned: when state is present
  type: dict
  contains:
    name:
      description: Token name.
      type: str
    site:
      description: The issuing site.
      type: str
    endpoints:
      description: Link endpoints the token points to.
      type: list
      elements: dict
    serial:
      description: Serial number of the client certificate (hex).
      type: str
    not_after:
      description: Expiry of the client certificate (ISO 8601).
      type: str
    sha256_fingerprint:
      description: SHA-256 fingerprint of the client certificate.
      type: str
    routers:
      description: How many routers of a site may hold a link made with it at once.
      type: int
      version_added: 0.2.0
    grant:
      description:
        - For a grant, its C(dest), C(redemptions) and C(redeem_by) (the end of
          its window, ISO 8601). The issuing site's router reports who redeemed it
          in C(/v1/status) (C(link_access.grants)).
      type: dict
      returned: for a grant
      version_added: 0.2.0
removed:
  description: With O(prune), the names of the tokens removed (revoked).
  returned: with O(names) and O(prune)
  type: list
  elements: str
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.token import TokenParams, run_token


def argument_spec() -> dict:
    return {
        **SITE_DIR_ARGUMENT_SPEC,
        "name": {"type": "str"},
        "names": {"type": "list", "elements": "str"},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "valid_days": {"type": "int", "default": 365},
        "prune": {"type": "bool", "default": False},
        "outside": {"type": "list", "elements": "str", "default": []},
        "rotate_before": {"type": "str"},
        "routers": {"type": "dict", "default": {}},
        "dest": {"type": "path"},
        "redemptions": {"type": "int", "default": vocabulary.DEFAULT_GRANT_REDEMPTIONS},
        "redeem_within": {"type": "int", "default": vocabulary.DEFAULT_GRANT_WINDOW_MINUTES},
        "grants": {"type": "dict", "default": {}},
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_token(TokenParams.from_module(params), check_mode),
        required_one_of=[("name", "names")],
        mutually_exclusive=[("name", "names"), ("dest", "names")],
    )


if __name__ == "__main__":
    main()
