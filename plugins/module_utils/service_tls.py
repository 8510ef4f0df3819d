# Copyright: (c) 2026, skiff developers
# SPDX-License-Identifier: Apache-2.0
"""Listener certificates issued by the site's service CA (private to skiff.fleet).

A listener with `tls.issue` terminates its clients' TLS with a certificate that
the site's *service CA* issues for it. The service CA is not the link CA: what
applications trust must not let anyone dial the site's routers, and the reverse.
It is created on first use and kept; its certificate (public) is what clients
trust, returned by the modules as `service_ca`.

A listener's certificate has the SANs its clients use: the listener's name, its
host unless it binds every address, and `tls.names`. It is issued again when it
is missing, does not match its key, was not signed by the current service CA,
has other SANs, or expires within 30 days. The router loads a renewed pair into
the bound listener, so a renewal drops no flow. Keys are written 0600, never
returned, never in a diff (the config entry names paths only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, validation, vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.reconcile import Reconciled, Wanted
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    CertPair,
    SecretStore,
    issued_listener_tls_paths,
)

LISTENER_VALID_DAYS = 365


def issued(item: Mapping[str, Any]) -> bool:
    tls = item.get("tls")
    return isinstance(tls, Mapping) and bool(tls.get("issue"))


def certificate_names(item: Mapping[str, Any]) -> list[str]:
    """The SANs of a listener's issued certificate, in order, each once."""
    host = str(item.get("host") or vocabulary.DEFAULT_LISTENER_HOST)
    names = [str(item["name"])]
    if host not in validation.WILDCARD_HOSTS:
        names.append(host)
    for index, name in enumerate((item.get("tls") or {}).get("names") or []):
        names.append(validation.host(name, f"tls.names[{index}]"))
    return list(dict.fromkeys(names))


class ListenerCertificates:
    """The service CA and the certificates of a site's listeners with `tls.issue`
    (the Credentials of config_runner.py)."""

    def __init__(self, secrets: SecretStore, site: str, wanted: Wanted):
        self.secrets = secrets
        self.site = site
        self.wanted = {str(item["name"]): item for item in wanted.present if issued(item)}
        self.new_ca: pki.Issued | None = None
        # listener -> its certificate's names, and what to issue: "new" (a pair and its
        # next certificate), "next" (only that) or "renew" (the next becomes the pair's)
        self.stale: dict[str, tuple[list[str], str]] = {}
        self.removed: list[str] = []
        self.backup: dict[str, CertPair] = {}
        self.ca_backup: CertPair | None = None
        self.ca_pem: bytes | None = None

    def plan(self, reconciled: Reconciled) -> list[str]:
        actions: list[str] = []
        issued_paths = {
            str(entry["name"])
            for entry in reconciled.after.get("listeners", [])
            if entry.get("tls") == issued_listener_tls_paths(str(entry["name"]))
        }
        # Listeners gone, or no longer using an issued certificate: theirs go after the reload.
        for change in reconciled.changes:
            if change.section == "listeners" and change.name not in issued_paths:
                before = change.before or {}
                if before.get("tls") == issued_listener_tls_paths(change.name):
                    self.removed.append(change.name)
        if not self.wanted:
            return actions
        if not pki.HAS_CRYPTOGRAPHY:
            raise SkiffError(
                "needs the Python cryptography library on the host that runs the module "
                f"({pki.CRYPTOGRAPHY_IMPORT_ERROR}); install it or give tls.cert and tls.key",
                field="tls.issue",
            )
        ca = self.secrets.service_ca()
        why = pki.ca_reissue_reason(ca.cert_pem, ca.key_pem)
        if why is not None:
            self.new_ca = pki.create_ca(self.site, label="service")
            actions.append(f"create the service CA ({why})")
            self.ca_pem = self.new_ca.cert_pem
        else:
            self.ca_pem = ca.cert_pem
        for name, item in self.wanted.items():
            names = certificate_names(item)
            pair = self.secrets.listener_tls(name)
            reason = pki.reissue_reason(
                pair.cert_pem, pair.key_pem, ca_cert_pem=self.ca_pem, hosts=names
            )
            following = pair.next_pem
            if following and pair.cert_pem and self.ca_pem:
                problem = pki.successor_problem(pair.cert_pem, following, self.ca_pem)
                following = None if problem else following
            if reason is None and following is None:
                self.stale[name] = (names, "next")
                actions.append(
                    f"issue the next certificate of listener '{name}' (the router loads it "
                    "30 days before the current one expires)"
                )
            elif (
                (reason or "").startswith("expires within")
                and following
                and (pki.reissue_reason(following, pair.key_pem, hosts=names) is None)
            ):
                self.stale[name] = (names, "renew")
                actions.append(
                    f"renew the certificate of listener '{name}' with its next certificate "
                    f"({reason})"
                )
            elif reason is not None:
                self.stale[name] = (names, "new")
                reason = reason.replace("the link endpoints", "the listener's names")
                actions.append(
                    f"issue the certificate of listener '{name}' for {', '.join(names)} "
                    f"from the service CA ({reason})"
                )
        return actions

    def reload_needed(self) -> bool:
        return bool(self.stale)

    def write(self) -> None:
        if self.new_ca is not None:
            self.ca_backup = self.secrets.service_ca()
            self.secrets.put_service_ca(CertPair(self.new_ca.cert_pem, self.new_ca.key_pem))
        if not self.stale:
            return
        current = self.secrets.service_ca()
        ca = pki.Issued(current.cert_pem or b"", current.key_pem or b"")
        for name, (names, what) in self.stale.items():
            kept = self.backup[name] = self.secrets.listener_tls(name)
            if what == "next" and kept.cert_pem:
                pair = CertPair(kept.cert_pem, kept.key_pem)
            elif what == "renew" and kept.next_pem:
                pair = CertPair(kept.next_pem, kept.key_pem)
            else:
                cert = pki.issue_server_cert(ca, name, names, valid_days=LISTENER_VALID_DAYS)
                pair = CertPair(cert.cert_pem, cert.key_pem)
            following = pki.issue_successor(
                ca, pair.cert_pem or b"", valid_days=LISTENER_VALID_DAYS
            )
            self.secrets.put_listener_tls(name, replace(pair, next_pem=following))

    def restore(self) -> None:
        for name, previous in self.backup.items():
            self.secrets.put_listener_tls(name, previous if previous.cert_pem else None)
        if self.ca_backup is not None and self.ca_backup.cert_pem:
            self.secrets.put_service_ca(self.ca_backup)

    def cleanup(self) -> None:
        for name in self.removed:
            self.secrets.put_listener_tls(name, None)
