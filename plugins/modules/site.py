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
    C(<base_dir>/<name>/) (mode 0700). With O(platform=kubernetes) the module
    runs on the controller, C(<base_dir>/<name>/) holds only C(site.json), and
    the site is a namespace (see O(kube)).
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
      - V(kubernetes) runs the router as the Deployment C(skiff-router) in the
        namespace O(kube.namespace), with its config in the ConfigMap
        C(skiff-router), keys in the Secrets C(skiff-ca), C(skiff-server),
        C(skiff-links) and C(skiff-tokens), the link Service C(skiff-link) and
        one Service per listener. Objects are applied server-side (field
        manager C(skiff)); check mode and C(--diff) use the server's dry run.
        Config and key changes reach the running pods without a restart (the
        pod annotation C(skiff.io/refresh)); a new image rolls the Deployment.
        Needs the C(kubernetes) Python library on the controller.
    type: str
    choices: [local, systemd, podman, kubernetes]
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
  outside_dialers:
    description:
      - Sites that dial this one but are not part of this run (the role passes the
        inventory's dialers outside C(--limit)). When the run would replace the
        site CA, move the link endpoint or stop accepting links, which those sites
        depend on, the module fails before changing anything and names them, so
        they can be added to the run and get new tokens.
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  rotate_before:
    description:
      - Issue the server certificate again if it was issued before this time,
        whatever its expiry; V(now) or an ISO 8601 time with its zone (for
        example V(2026-12-04T09:00:00Z)), never in the future. A time kept in
        the inventory rotates once; a later run finds the certificate issued
        after it. Links already up stay up; new handshakes use the new one.
      - The role passes C(skiff_rotate).
    type: str
    version_added: 0.2.0
  rotate_ca_before:
    description:
      - Replace the site CA if it was made before this time (V(now) or a past ISO
        8601 time with its zone, as O(rotate_before)), and with it the server
        certificate; the tokens it signed are issued again by M(skiff.fleet.token).
        Links up stay; sites dialing this one replace their links once they have
        the new tokens, so they must be in the same run (O(outside_dialers)).
      - The role passes C(skiff_rotate_ca).
    type: str
    version_added: 0.2.0
  replicas:
    description:
      - Router pods of a O(platform=kubernetes) site (1-16). Each pod is a router
        of its own (router id C(<name>.<pod name>)); with O(link_access) they link
        to each other with a client certificate of the site kept for them, so a
        link from another site that lands on one pod serves them all. Pods
        prefer different nodes (soft anti-affinity).
    type: int
    default: 1
  workers:
    description:
      - Worker processes of the router (1-64), each with its own event loop, sharing
        the router's ports; they answer as one router at the admin port. Unset, the
        router starts one per CPU it may use (its CPU affinity and cgroup quota, so
        a C(kubernetes) pod's CPU limit).
      - The count is read when the router starts. A change restarts a running router
        (its flows end); on O(platform=kubernetes) the Deployment rolls out new pods.
    type: int
    version_added: 0.2.0
  kube:
    description:
      - Settings of a O(platform=kubernetes) site.
    type: dict
    suboptions:
      namespace:
        description: Namespace of the site; defaults to O(name). Created when missing (if allowed).
        type: str
      context:
        description: Context of the kubeconfig; defaults to its current context.
        type: str
      kubeconfig:
        description: Path of the kubeconfig on the controller; defaults to C($KUBECONFIG) or C(~/.kube/config).
        type: path
      link_service_type:
        description:
          - Type of the Service C(skiff-link) other sites dial. With V(nodeport)
            O(link_endpoint.port) is the node port and O(link_endpoint.host) a
            node's address; with V(loadbalancer) a missing O(link_endpoint.host)
            is the load balancer's address once it has one; with V(clusterip) it
            is C(skiff-link.<namespace>.svc).
        type: str
        choices: [clusterip, nodeport, loadbalancer]
        default: clusterip
      service_annotations:
        description: Annotations copied onto C(skiff-link) (for cloud load balancers).
        type: dict
      resources:
        description:
          - >-
            Requests and limits of the C(router) and C(agent) containers, for
            example C({"router": {"limits": {"memory": "1Gi"}}}); unset values
            keep the defaults.
        type: dict
      apply:
        description:
          - V(false) renders the manifests into O(kube.manifests_dir) instead of
            applying them; no cluster is contacted.
        type: bool
        default: true
      manifests_dir:
        description:
          - With O(kube.apply=false), where C(<name>.yaml) (every object but
            Secrets, stable order) and C(<name>.secrets/<secret>.yaml) (0600) are
            written. State (CA, keys, tokens) is read back from there.
        type: path
      force_conflicts:
        description:
          - Take over fields another field manager set on skiff's objects
            (server-side apply C(force)). Without it such a conflict fails the task.
        type: bool
        default: false
      rollout_timeout:
        description: Seconds to wait for the Deployment to roll out (and a load balancer address).
        type: int
        default: 300
      router_path:
        description:
          - Directory with the C(skiff_router) package for C(check-config) on the
            controller, when O(router_python) does not have it installed.
        type: path
      connectors:
        description:
          - Connectors whose targets are the ready pods of the namespace matching
            O(kube.connectors[].selector), followed live by the agent beside the
            router (a pod watch) and balanced over them. A change reaches the
            running agent without a rollout. The role fills it from the entries
            of C(skiff_connectors) that have a C(selector).
        type: list
        elements: dict
        default: []
        version_added: 0.2.0
        suboptions:
          name:
            description: Unique among the site's connectors.
            type: str
            required: true
          routing_key:
            description: Defaults to O(kube.connectors[].name).
            type: str
          selector:
            description:
              - A Kubernetes LabelSelector (C(matchLabels) and/or C(matchExpressions));
                an empty one is refused (it would match every pod).
            type: dict
            required: true
          port:
            description: Port of the pods (1-65535).
            type: int
            required: true
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
        description:
          - Host name or IP address other sites dial. Required except with
            O(platform=kubernetes), where the Service provides one.
        type: str
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

- name: A site in the namespace east of a cluster, reached through a load balancer
  skiff.fleet.site:
    name: east
    platform: kubernetes
    base_dir: ~/.cache/skiff/sites
    image: registry.example.com/skiff-router:0.1.0
    link_access: true
    kube:
      context: prod
      link_service_type: loadbalancer

- name: The same site's manifests for GitOps, no cluster contacted
  skiff.fleet.site:
    name: east
    platform: kubernetes
    base_dir: ~/.cache/skiff/sites
    image: registry.example.com/skiff-router:0.1.0
    link_access: true
    link_endpoint: {host: east.example.com, port: 443}
    kube:
      apply: false
      manifests_dir: ./manifests

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
admin_token_file:
  description:
    - >-
      The file (mode 0600) holding the bearer token every admin endpoint but
      C(/healthz), C(/readyz), C(/metrics) and C(/console) asks for. The module
      creates it, and replaces it when it is missing, shorter than 16 characters or
      readable by others. Send it as C(Authorization: Bearer <token>); the
      C(skiff-router status --config) command reads it itself.
    - Null on platform C(kubernetes), whose token is in the Secret C(skiff-admin)
      of the site's namespace, mounted into the router pod; through the API
      server's pod proxy (which drops C(Authorization)) send it as
      C(X-Skiff-Admin-Token).
  returned: state is present
  type: str
  sample: /var/lib/skiff/east/admin/token
ca_certificate:
  description:
    - PEM of the site CA certificate (public). Null in check mode before the CA exists.
  returned: state is present
  type: str
link_endpoints:
  description: Where other sites dial this site (what its tokens carry).
  returned: state is present
  type: list
  elements: dict
  sample: [{"host": "203.0.113.7", "port": 55671}]
actions:
  description: What was done, or in check mode what would be done.
  returned: always
  type: list
  elements: str
  sample: ["create the site CA", "start the router"]
diff:
  description:
    - C(before) and C(after) of the config sections this module owns and of
      C(site.json), and with O(platform=kubernetes) of the changed objects
      (C(objects), as the server's dry run makes them, without the fields the
      server writes). Never contains keys (Secret values are fingerprints).
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
        "platform": {
            "type": "str",
            "choices": ["local", "systemd", "podman", "kubernetes"],
            "default": "local",
        },
        "router_user": {"type": "str", "default": "skiff"},
        "image": {"type": "str"},
        "outside_dialers": {"type": "list", "elements": "str", "default": []},
        "rotate_before": {"type": "str"},
        "rotate_ca_before": {"type": "str"},
        "replicas": {"type": "int", "default": 1},
        "workers": {"type": "int"},
        "kube": {
            "type": "dict",
            "options": {
                "namespace": {"type": "str"},
                "context": {"type": "str"},
                "kubeconfig": {"type": "path"},
                "link_service_type": {
                    "type": "str",
                    "choices": ["clusterip", "nodeport", "loadbalancer"],
                    "default": "clusterip",
                },
                "service_annotations": {"type": "dict"},
                "resources": {"type": "dict"},
                "apply": {"type": "bool", "default": True},
                "manifests_dir": {"type": "path"},
                "force_conflicts": {"type": "bool", "default": False},
                "rollout_timeout": {"type": "int", "default": 300},
                "router_path": {"type": "path"},
                "connectors": {
                    "type": "list",
                    "elements": "dict",
                    "default": [],
                    "options": {
                        "name": {"type": "str", "required": True},
                        "routing_key": {"type": "str", "no_log": False},
                        "selector": {"type": "dict", "required": True},
                        "port": {"type": "int", "required": True},
                    },
                },
            },
        },
        "link_access": {"type": "bool", "default": False},
        "link_endpoint": {
            "type": "dict",
            "options": {
                "host": {"type": "str"},
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
        required_if=[("platform", "podman", ("image",))],
    )


if __name__ == "__main__":
    main()
