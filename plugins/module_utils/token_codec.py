"""The link token format: `skiff1.` + base64url(JSON) (private to skiff.fleet).

See docs/design.md ("Link token"). Decoding checks everything a dialing site
relies on, so a bad token fails at the `link` task, not as a link that never
comes up. Errors never quote the token: it carries a private key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from dataclasses import dataclass
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, validation
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.store import validate_site_name

PREFIX = "skiff1."
VERSION = 1
ISSUE_HINT = "issue one with skiff.fleet.token at the site that accepts links"


@dataclass(frozen=True)
class Token:
    site: str
    name: str
    endpoints: list[dict[str, Any]]
    ca: str
    cert: str
    key: str
    # A one-time grant: its certificate names no site, the sites that redeem it by
    # linking first are recorded at the issuing router (so `name` is the grant's).
    grant: bool = False
    # The certificate that follows `cert` (the same key, valid from 30 days before
    # `cert` expires): the dialing router switches to it on its own.
    next_cert: str = ""

    def encode(self) -> str:
        payload = {
            "v": VERSION,
            "site": self.site,
            "name": self.name,
            "endpoints": self.endpoints,
            "ca": self.ca,
            "cert": self.cert,
            "key": self.key,
            **({"grant": True} if self.grant else {}),
            **({"next_cert": self.next_cert} if self.next_cert else {}),
        }
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def public_info(self) -> dict[str, Any]:
        """What may be shown about the token: no key."""
        return {
            "site": self.site,
            "name": self.name,
            "endpoints": self.endpoints,
            "certificate": pki.describe(self.cert.encode()),
            "grant": self.grant,
        }

    def __repr__(self) -> str:  # a stray repr in a traceback must not leak the key
        return f"Token(site={self.site!r}, name={self.name!r}, endpoints={self.endpoints!r})"


def _bad(message: str) -> SkiffError:
    return SkiffError(f"{message}; {ISSUE_HINT}", field="token")


def decode(text: Any) -> Token:
    if not isinstance(text, str) or not text.strip().startswith(PREFIX):
        raise _bad(f"not a skiff token (expected a string starting with '{PREFIX}')")
    body = text.strip()[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad(
            "damaged (not base64url-encoded JSON after 'skiff1.'; was it cut short?)"
        ) from None
    if not isinstance(payload, dict):
        raise _bad("damaged (the payload is not a JSON object)")
    if payload.get("v") != VERSION:
        raise _bad(
            f"version {payload.get('v')!r} is not supported (this collection reads {VERSION})"
        )
    for name in ("site", "name", "ca", "cert", "key"):
        if not isinstance(payload.get(name), str) or not payload[name]:
            raise _bad(f"field '{name}' is missing or not a string")
    if not isinstance(payload.get("grant", False), bool):
        raise _bad("field 'grant' is not true or false")
    if not isinstance(payload.get("next_cert", ""), str):
        raise _bad("field 'next_cert' is not a string")
    try:
        validate_site_name(payload["site"], field_name="site")
        endpoints = payload.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            raise SkiffError("the token lists no endpoints", field="endpoints")
        endpoints = [validation.endpoint(e, f"endpoints[{i}]") for i, e in enumerate(endpoints)]
    except SkiffError as exc:
        raise _bad(f"{exc.field}: {exc.message}") from None
    ca, cert, key = (payload[n].encode() for n in ("ca", "cert", "key"))
    problem = pki.reissue_reason(cert, key, ca_cert_pem=ca, renew_before=datetime.timedelta(0))
    if problem == "unreadable":
        raise _bad("the certificate or key in it is not valid PEM")
    if problem == "CA certificate unreadable":
        raise _bad("the CA certificate in it is not valid PEM")
    if problem == "not signed by the current CA":
        raise _bad("the client certificate is not signed by the CA in the token")
    if problem and problem.startswith("expires within"):
        raise _bad("it has expired")
    if problem:
        raise _bad(problem)
    following = payload.get("next_cert", "")
    problem = following and pki.successor_problem(cert, following.encode(), ca)
    if problem:
        raise _bad(f"its next certificate is {problem}")
    return Token(
        site=payload["site"],
        name=payload["name"],
        endpoints=endpoints,
        ca=payload["ca"],
        cert=payload["cert"],
        key=payload["key"],
        grant=payload.get("grant", False),
        next_cert=following,
    )
