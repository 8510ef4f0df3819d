#!/usr/bin/python
# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: site
short_description: Create, update or remove a skiff site and run its router
version_added: 0.1.0
description:
  - Manages one site of a skiff application network on the managed host, in
    C(<base_dir>/<name>/) (mode 0700).
  - Creates the site CA, and when O(link_access=true) the router's server
    certificate whose subject alternative names are the link endpoint host
    (IP SAN for an IP address, DNS SAN otherwise). Certificates are reissued
    only when missing, not signed by the current CA, with other SANs, or expiring
    within 30 days.
  - Owns the C(site), C(log_level), C(admin) and C(link_access) sections of
    C(router.json); links, listeners and connectors written by other modules are kept.
  - A new config is checked with C(skiff-router check-config) before it replaces
    the one in force. The router is started if it is not running, reloaded
    (SIGHUP) when its config changed, restarted when its TLS material changed;
    the module then waits until the router's admin C(/v1/status) reports the
    new config.
  - O(state=absent) stops the router and removes the site directory, keys included.
author:
  - skiff developers (@skiff-fleet)
extends_documentation_fragment:
  - skiff.fleet.site_dir.base_dir
  - skiff.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description:
      - Name of the site; unique in the network (it is the router id).
      - Lower-case letters, digits and C(-), 1 to 63 characters, starting and
        ending with a letter or digit.
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the site and makes sure its router runs.
      - V(absent) stops the router and removes the site directory.
    type: str
    choices: [present, absent]
    default: present
  platform:
    description:
      - How the router runs. V(local) runs it as a supervised process of the
        remote user, with its log in C(<site_dir>/logs/router.log).
      - V(systemd) runs it as the unit C(skiff-<name>.service) (written by this
        module) as the unprivileged O(router_user), with O(router_python) from
        the virtualenv the role P(skiff.fleet.skiff#role) installs, hardened
        (C(NoNewPrivileges), C(ProtectSystem=strict), C(ProtectHome),
        C(PrivateTmp), state in C(/var/lib/skiff/<name>)) and C(Restart=on-failure).
        Needs root and systemd as init. Log C(journalctl -u skiff-<name>.service).
      - V(podman) runs it in the container C(skiff-<name>) from O(image), with
        host networking, as O(router_user)'s uid, read-only, no capabilities,
        managed by systemd as C(skiff-<name>.service) (a Quadlet C(.container)
        with podman >= 4.4, a generated unit otherwise). Needs root, systemd and podman.
      - With V(systemd) and V(podman) the router user owns the site directory,
        its server and link keys (0600); the CA key and issued tokens stay root-only.
        Config changes reload the router (C(systemctl reload), SIGHUP); unit or
        image changes restart it.
    type: str
    choices: [local, systemd, podman]
    default: local
  router_user:
    description:
      - System user the router runs as with O(platform=systemd) or O(platform=podman).
        It must exist (the role P(skiff.fleet.skiff#role) creates it).
    type: str
    default: skiff
  image:
    description:
      - Router image with O(platform=podman), e.g. C(localhost/skiff-router:latest).
        It must be on the host (the role P(skiff.fleet.skiff#role) can build it).
    type: str
  link_access:
    description:
      - Whether other sites may link to this one (the site then accepts
        mutual-TLS links on O(link_endpoint.port) and can issue tokens with
        M(skiff.fleet.token)).
    type: bool
    default: false
  link_endpoint:
    description:
      - Where other sites reach this site's link port; written into tokens and
        into the server certificate. Required when O(link_access=true).
    type: dict
    suboptions:
      host:
        description: Host name or IP address other sites dial.
        type: str
        required: true
      port:
        description: Port other sites dial; the router also binds this port.
        type: int
        default: 55671
  link_bind_host:
    description: Address the router binds for incoming links.
    type: str
    default: 0.0.0.0
  admin_host:
    description: Address of the router's admin HTTP endpoint (status, health).
    type: str
    default: 127.0.0.1
  admin_port:
    description:
      - Port of the router's admin HTTP endpoint. Each site on one host needs its own.
    type: int
    default: 9191
  log_level:
    description: Router log level.
    type: str
    choices: [debug, info, warning, error]
    default: info
  mode:
    description:
      - V(interior) routers compute routes and carry traffic between sites.
      - V(edge) routers dial one or more interior sites and take no part in
        route computation; they never carry traffic between other sites and
        accept no links (O(link_access) must be false).
    type: str
    choices: [interior, edge]
    default: interior
  router_python:
    description:
      - Python interpreter that runs C(python -m skiff_router); it must have the
        skiff router package installed.
      - Defaults to the interpreter running this module.
    type: str
requirements:
  - cryptography
  - the skiff router package (C(skiff_router)) for O(router_python)
notes:
  - Removing a site removes its CA; tokens it issued stop working everywhere.
seealso:
  - module: skiff.fleet.token
  - module: skiff.fleet.link
  - module: skiff.fleet.wait
"""

EXAMPLES = r"""
- name: A site that accepts links from other sites
  skiff.fleet.site:
    name: east
    link_access: true
    link_endpoint:
      host: "{{ ansible_host }}"
      port: 55671

- name: A site that only dials out, with its own admin port
  skiff.fleet.site:
    name: west
    admin_port: 9192

- name: A site run by systemd as user skiff, from the router virtualenv the role installs
  skiff.fleet.site:
    name: north
    platform: systemd
    base_dir: /etc/skiff
    router_python: /opt/skiff/venv/bin/python

- name: A site in a podman container managed by systemd
  skiff.fleet.site:
    name: south
    platform: podman
    base_dir: /etc/skiff
    image: localhost/skiff-router:latest

- name: Remove a site
  skiff.fleet.site:
    name: west
    state: absent
"""

RETURN = r"""
site_dir:
  description: The site directory on the managed host.
  returned: always
  type: str
  sample: /home/deploy/.local/state/skiff/east
admin_url:
  description: Base URL of the router's admin endpoint.
  returned: state is present
  type: str
  sample: http://127.0.0.1:9191
ca_certificate:
  description:
    - PEM of the site CA certificate (public). Null in check mode before the CA exists.
  returned: state is present
  type: str
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
  sample: ["create the site CA", "start the router"]
diff:
  description:
    - C(before) and C(after) of the config sections this module owns and of
      C(site.json). Never contains keys.
  returned: when something changed or differs
  type: dict
"""

from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    BASE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import (
    SiteParams,
    default_router_python,
    run_site,
)


def argument_spec() -> dict:
    return {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "platform": {"type": "str", "choices": ["local", "systemd", "podman"], "default": "local"},
        "router_user": {"type": "str", "default": "skiff"},
        "image": {"type": "str"},
        "link_access": {"type": "bool", "default": False},
        "link_endpoint": {
            "type": "dict",
            "options": {
                "host": {"type": "str", "required": True},
                "port": {"type": "int", "default": 55671},
            },
        },
        "link_bind_host": {"type": "str", "default": "0.0.0.0"},
        "admin_host": {"type": "str", "default": "127.0.0.1"},
        "admin_port": {"type": "int", "default": 9191},
        "log_level": {
            "type": "str",
            "choices": ["debug", "info", "warning", "error"],
            "default": "info",
        },
        "mode": {"type": "str", "choices": ["interior", "edge"], "default": "interior"},
        "router_python": {"type": "str"},
        **BASE_DIR_ARGUMENT_SPEC,
    }


def main() -> None:
    run_module(
        argument_spec(),
        lambda params, check_mode: run_site(
            SiteParams.from_module(params), check_mode, default_python=default_router_python()
        ),
        required_if=[("link_access", True, ("link_endpoint",)), ("platform", "podman", ("image",))],
    )


if __name__ == "__main__":
    main()
