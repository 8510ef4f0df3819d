# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""List options shared by skiff.fleet.listener/connector/link and skiff.fleet.reconcile.

Their argument specs are in plugins/module_utils/options.py (same names).
"""

from __future__ import annotations


class ModuleDocFragment:
    # skiff.fleet.items.listeners
    LISTENERS = r"""
options:
  listeners:
    description:
      - Listeners of the site, all changed at once (one check, one write and
        at most one reload for the whole list).
      - Entries the list does not name are kept, unless O(prune=true).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Name of the listener, unique among the listeners of the site.
          - Letters, digits, C(.), C(_) and C(-), 1 to 63 characters.
        type: str
        required: true
      routing_key:
        description: The routing key that pairs listeners with connectors. Defaults to the name.
        type: str
      host:
        description: Address the router listens on for clients.
        type: str
        default: 127.0.0.1
      port:
        description: Port the router listens on for clients (1..65535). Required when present.
        type: int
      distribution:
        description:
          - How new flows pick among the connectors of the routing key.
          - V(balanced) weighs path cost against the flows each target already carries;
            V(closest) uses the least-cost connectors only.
        type: str
        choices: [balanced, closest]
        default: balanced
      routing_keys:
        description:
          - Several routing keys instead of O(listeners[].routing_key), for example the same
            service at a primary and a standby site; O(listeners[].strategy) picks the key
            of each new flow. Each key once.
        type: list
        elements: dict
        suboptions:
          key:
            description: A routing key.
            type: str
            required: true
          weight:
            description: Share of new flows with O(listeners[].strategy=weighted) (1..1000).
            type: int
            default: 1
      strategy:
        description:
          - How a listener with O(listeners[].routing_keys) picks the key of a new flow.
          - V(priority) takes the first key with a reachable connector; new flows go back
            to an earlier key as soon as it has one again (failover and failback).
          - V(weighted) spreads new flows by weight over the keys with a reachable connector.
        type: str
        choices: [priority, weighted]
        default: priority
      tls:
        description:
          - Terminate TLS towards the clients, with O(listeners[].tls.cert) and O(listeners[].tls.key) (PEM files on
            the site's host; relative paths are relative to the site directory; keep the
            key 0600), or with a certificate the site's service CA issues (O(listeners[].tls.issue)).
            Flows carry the plaintext between the sites' routers (inside their mutual-TLS
            links).
          - A renewed certificate written over the files is used for new connections
            without a restart; open connections stay.
        type: dict
        suboptions:
          cert:
            description: The listener's certificate chain (PEM). With O(listeners[].tls.key).
            type: path
          key:
            description: Its private key (PEM).
            type: path
          issue:
            description:
              - The site's service CA (created on first use, apart from the CA of the links)
                issues the listener's certificate, with the listener's name, its host (unless
                it listens on every address) and O(listeners[].tls.names) as SANs. Clients trust the
                service CA, returned as RV(service_ca).
              - Issued again when the names change, the service CA changes, or it expires
                within 30 days (valid 365 days); the key stays on the site's host (0600).
              - Not with O(listeners[].tls.cert); platforms C(local), C(systemd) and C(podman).
            type: bool
            default: false
          names:
            description: More host names or addresses for the issued certificate (with O(listeners[].tls.issue)).
            type: list
            elements: str
      state:
        description: Whether this listener exists.
        type: str
        choices: [present, absent]
        default: present
"""

    # skiff.fleet.items.connectors
    CONNECTORS = r"""
options:
  connectors:
    description:
      - Connectors of the site, all changed at once (one check, one write and
        at most one reload for the whole list).
      - Entries the list does not name are kept, unless O(prune=true).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Name of the connector, unique among the connectors of the site.
          - Letters, digits, C(.), C(_) and C(-), 1 to 63 characters.
        type: str
        required: true
      routing_key:
        description: The routing key that pairs listeners with connectors. Defaults to the name.
        type: str
      host:
        description: Host name or address of the real service. Required when present.
        type: str
      port:
        description: Port of the real service (1..65535). Required when present.
        type: int
      tls:
        description:
          - Originate TLS to the server, verified against the CA bundle O(connectors[].tls.ca) and the
            server name; optionally with a client certificate. PEM files on the site's host.
        type: dict
        suboptions:
          ca:
            description: CA bundle (PEM) the server's certificate must chain to.
            type: path
            required: true
          server_name:
            description: Name the server's certificate must match. Defaults to the connector's host.
            type: str
          cert:
            description: Client certificate (PEM), with its key.
            type: path
          key:
            description: The client certificate's private key (PEM). Keep it 0600.
            type: path
      state:
        description: Whether this connector exists.
        type: str
        choices: [present, absent]
        default: present
"""

    # skiff.fleet.items.links
    LINKS = r"""
options:
  links:
    description:
      - Links this site dials, all changed at once (one check, one write and
        at most one reload for the whole list, however many tokens changed).
      - Entries the list does not name are kept, unless O(prune=true), which
        also removes the credentials of links no longer listed.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Name of the link, unique among the links of this site.
          - Defaults to the name of the site that issued the token. Required when absent.
        type: str
      token:
        description:
          - Token issued by M(skiff.fleet.token) at the site to link to. Secret.
          - Required when present, except in check mode with O(links[].peer)
            set, for a site that does not exist yet and so cannot issue one; the
            link is then reported as a change that the real run makes.
        type: str
      token_file:
        description:
          - Instead of O(links[].token), a file on this host holding a token or a
            grant (M(skiff.fleet.token) with O(skiff.fleet.token#module:dest)), for
            example one a peer outside the inventory handed over. Linking redeems a
            grant.
          - It must be readable by its owner only (mode 0600), as it holds a private key.
        type: path
        version_added: 0.2.0
      cost:
        description: Routing cost of the link, an integer from 1 to 1000000.
        type: int
        default: 1
      peer:
        description:
          - The site the link goes to. Only used to describe a link whose
            token cannot exist yet (check mode); a token names its site itself.
        type: str
      state:
        description: Whether this link exists.
        type: str
        choices: [present, absent]
        default: present
"""

    # skiff.fleet.items.prune
    PRUNE = r"""
options:
  prune:
    description:
      - Remove every entry of the given lists that they do not name, so the
        site holds exactly what is listed. Lists not given are left alone.
    type: bool
    default: false
"""
