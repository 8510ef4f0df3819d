"""TLS contexts for links (stdlib ssl only: TLS 1.3, mutual authentication)."""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from skiff_router.config import ConnectorTls, LinkAccess, LinkConfig, ListenerTls


def server_context(access: LinkAccess) -> ssl.SSLContext:
    """Accepting side: our server cert; clients must present a cert from our CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=access.ca)
    ctx.load_cert_chain(access.cert, access.key)
    return ctx


def client_context(link: LinkConfig) -> ssl.SSLContext:
    """Dialing side: the token's client cert; the server must chain to the token's CA
    and match the endpoint host name (or IP SAN)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=link.ca)
    ctx.load_cert_chain(link.cert, link.key)
    return ctx


def app_server_context(t: ListenerTls) -> ssl.SSLContext:
    """A listener terminating its clients' TLS (TLS 1.2 or later: clients are
    applications, not routers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(t.cert, t.key)
    return ctx


def app_client_context(t: ConnectorTls) -> ssl.SSLContext:
    """A connector originating TLS: the server must chain to ``ca`` and match the
    server name; an optional client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=t.ca)
    if t.cert and t.key:
        ctx.load_cert_chain(t.cert, t.key)
    return ctx


def peer_common_name(transport: Any) -> str | None:
    """The commonName of the verified client certificate on an accepted link."""
    cert = transport.get_extra_info("peercert") or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def peer_fingerprint(transport: Any) -> str | None:
    """SHA-256 (lowercase hex) of the verified client certificate on an accepted link."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else None


def describe(exc: BaseException) -> str:
    """A short error text for status and logs (no paths to key contents, no PEM)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or exc.__class__.__name__
