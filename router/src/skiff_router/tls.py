"""TLS contexts for links (stdlib ssl only: TLS 1.3, mutual authentication)."""

from __future__ import annotations

import datetime
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


def client_context(link: LinkConfig, successor: bool = False) -> ssl.SSLContext:
    """Dialing side: the token's client cert (its ``successor``, same key, once that
    is valid); the server must chain to the token's CA and match the endpoint host
    name (or IP SAN)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=link.ca)
    cert = link.next_cert if successor and link.next_cert else link.cert
    ctx.load_cert_chain(cert, link.key)
    return ctx


def valid_from(path: str | None) -> int | None:
    """notBefore of a certificate file in unix seconds; None without a readable one."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return validity(f.read())[0]
    except (OSError, ValueError, IndexError):
        return None


def app_server_context(t: ListenerTls, successor: bool = False) -> ssl.SSLContext:
    """A listener terminating its clients' TLS (TLS 1.2 or later: clients are
    applications, not routers), with its next certificate once that is valid."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(listener_cert(t, successor), t.key)
    return ctx


def listener_cert(t: ListenerTls, successor: bool) -> str:
    return t.next_cert if successor and t.next_cert else t.cert


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


def file_fingerprint(path: str) -> str | None:
    """SHA-256 of the first certificate of a PEM file (as ``peer_fingerprint`` of a
    peer presenting it); None when the file cannot be read or holds none."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            pem = f.read()
        begin = pem.index("-----BEGIN CERTIFICATE-----")
        end = pem.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
        der = ssl.PEM_cert_to_DER_cert(pem[begin:end])
    except (OSError, ValueError):
        return None
    return hashlib.sha256(der).hexdigest()


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def not_after(pem: bytes) -> int:
    """A PEM certificate's notAfter, in unix seconds (the first certificate of the
    file)."""
    return validity(pem)[1]


def validity(pem: bytes) -> tuple[int, int]:
    """A PEM certificate's notBefore and notAfter, in unix seconds (the first
    certificate of the file). Read from the DER directly: the stdlib only decodes
    certificates of a live connection."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii", "replace"))
    _tag, start, _end = _tlv(der, 0)  # Certificate
    _tag, pos, _end = _tlv(der, start)  # TBSCertificate
    tag, _start, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _field in range(3):  # serialNumber, signature, issuer
        _tag, _start, pos = _tlv(der, pos)
    tag, start, _end = _tlv(der, pos)  # validity
    if tag != 0x30:
        raise ValueError("no validity")
    tag, start, pos = _tlv(der, start)  # notBefore
    before = _time(tag, der[start:pos])
    tag, start, end = _tlv(der, pos)  # notAfter
    return before, _time(tag, der[start:end])


def _time(tag: int, value: bytes) -> int:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("a certificate time is not a time")
    stamp = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    return int(stamp.timestamp())


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
