"""Site PKI: CA, server and client certificates (private to skiff.fleet; not a public API).

Each site has its own CA. It signs the router's server certificate (SANs = the
link endpoint hosts, so a dialing router can verify the host it dialed) and
the client certificates carried in tokens (CN = token name). The question the
modules ask is `reissue_reason()`: None when a certificate can stay, otherwise
why it must be issued again. Nothing here writes a key that others could read.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = None
except ImportError as _exc:  # reported by the module edge with missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = str(_exc)

if TYPE_CHECKING:  # names from cryptography >= 40; Debian 12 hosts run 38
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificatePublicKeyTypes,
        PrivateKeyTypes,
    )

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 3650 - 1
CLIENT_VALID_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)  # not_before = time of issue - BACKDATE
ORGANIZATION = "skiff"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM bytes ready to be written."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise TypeError("unsupported key type (skiff issues EC and RSA keys)")
        return key


def generate_key(kind: str = "ec") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown key kind {kind!r} (expected 'ec' or 'rsa')")


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def san_for_host(host: str) -> x509.GeneralName:
    """An IP SAN for an IP literal, a DNS SAN otherwise (TLS host checks need the right kind)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    valid_days: int,
    now: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    now = now or _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # A little back-dating tolerates clock skew between hosts.
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_ca(
    site: str, *, label: str = "site", key_kind: str = "ec", valid_days: int = CA_VALID_DAYS
) -> Issued:
    """A site's CA; `label` tells its CAs apart (`site` signs links, `service` listeners)."""
    key = generate_key(key_kind)
    name = _name(f"skiff {label} CA {site}")
    cert = (
        _builder(name, name, key.public_key(), valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(_cert_pem(cert), _key_pem(key))


def _issue_leaf(
    ca: Issued,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    valid_days: int,
    key_kind: str,
) -> Issued:
    ca_cert, ca_key = ca.cert, ca.key
    key = generate_key(key_kind)
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), valid_days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_kind == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(_cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def issue_server_cert(
    ca: Issued,
    site: str,
    hosts: Iterable[str],
    *,
    valid_days: int = SERVER_VALID_DAYS,
    key_kind: str = "ec",
) -> Issued:
    sans = [san_for_host(h) for h in dict.fromkeys(hosts)]
    return _issue_leaf(ca, site, ExtendedKeyUsageOID.SERVER_AUTH, sans, valid_days, key_kind)


def issue_client_cert(
    ca: Issued, name: str, *, valid_days: int = CLIENT_VALID_DAYS, key_kind: str = "ec"
) -> Issued:
    return _issue_leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, [], valid_days, key_kind)


def issue_successor(ca: Issued, cert_pem: bytes, *, valid_days: int) -> bytes:
    """The certificate that follows `cert_pem`: the same subject, key and extensions,
    valid from RENEW_BEFORE before it expires (half its life, for a short one), for
    `valid_days`. Its holder switches to it on its own, make before break, before
    the first one expires (renewal without a playbook run); no private key is needed
    to issue it."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    life = _not_after(cert) - _not_before(cert)
    start = _not_after(cert) - min(RENEW_BEFORE, life / 2)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return _cert_pem(builder.sign(ca.key, hashes.SHA256()))


def successor_problem(cert_pem: bytes, successor_pem: bytes, ca_cert_pem: bytes) -> str | None:
    """Why `successor_pem` cannot follow `cert_pem` (None: it can): signed by the same
    CA, for the same key, and valid from a later time."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        successor = x509.load_pem_x509_certificate(successor_pem)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        return "unreadable"
    if not is_signed_by(successor, ca_cert):
        return "not signed by the CA"
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if successor.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return "not for the same key"
    if _not_before(successor) <= _not_before(cert):
        return "not valid from a later time"
    return None


def cert_sans(cert: x509.Certificate) -> set[str]:
    """The SANs as plain strings (IPs normalized), for comparing with endpoint hosts."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | set(
        ext.get_values_for_type(x509.DNSName)
    )


def wanted_sans(hosts: Iterable[str]) -> set[str]:
    out = set()
    for host in hosts:
        try:
            out.add(str(ipaddress.ip_address(host)))
        except ValueError:
            out.add(host)
    return out


def is_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        if hasattr(cert, "verify_directly_issued_by"):
            cert.verify_directly_issued_by(ca_cert)
        else:
            _verify_issued_by(cert, ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """What verify_directly_issued_by does, for cryptography < 40 (Debian 12 has 38)."""
    if cert.issuer != ca_cert.subject:
        raise ValueError("issuer name does not match the CA's subject")
    public_key = ca_cert.public_key()
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:  # Ed25519/Ed448 signatures; skiff never issues those
        raise TypeError("unsupported signature algorithm")
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    else:
        raise TypeError("unsupported CA key type")


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, pub) == key.public_key().public_bytes(enc, pub)


def reissue_reason(
    cert_pem: bytes | None,
    key_pem: bytes | None,
    *,
    ca_cert_pem: bytes | None = None,
    hosts: Iterable[str] | None = None,
    now: datetime.datetime | None = None,
    renew_before: datetime.timedelta = RENEW_BEFORE,
    rotate_before: datetime.datetime | None = None,
) -> str | None:
    """Why this certificate must be issued again, or None when it can stay.

    Checked in order: present and readable, key matches, signed by the current
    CA, SANs equal the wanted hosts (when given), not expiring within
    `renew_before`, issued at or after `rotate_before` (a rotation asked for).
    """
    if not cert_pem or not key_pem:
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return "unreadable"
    if not key_matches(cert, key):
        return "key does not match the certificate"
    if ca_cert_pem is not None:
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        except ValueError:
            return "CA certificate unreadable"
        if not is_signed_by(cert, ca_cert):
            return "not signed by the current CA"
    if hosts is not None and cert_sans(cert) != wanted_sans(hosts):
        return "SANs differ from the link endpoints"
    if _not_after(cert) - (now or _now()) < renew_before:
        return f"expires within {renew_before.days} days"
    if rotate_before is not None and _not_before(cert) + BACKDATE < rotate_before:
        return f"issued before the rotation time {rotate_before:%Y-%m-%d %H:%M:%S} UTC"
    return None


def rotation_time(
    value: str | None, now: datetime.datetime | None = None
) -> datetime.datetime | None:
    """`rotate_before` / `skiff_rotate`: empty for none, `now`, or a past ISO 8601 time
    with its zone. Credentials issued before it are issued again; a later run finds
    them issued after it and leaves them (so a time kept in the inventory rotates once).
    Raises ValueError saying what to write."""
    if not value:
        return None
    now = now or _now()
    if value == "now":
        return now
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{value}' is neither 'now' nor an ISO 8601 time such as 2026-12-04T09:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"'{value}' has no time zone: add Z (UTC) or an offset")
    if when > now:
        raise ValueError(
            f"'{value}' is in the future: every run until then would issue the "
            "credentials again; give a past time or 'now'"
        )
    return when.astimezone(datetime.UTC)


def ca_reissue_reason(cert_pem: bytes | None, key_pem: bytes | None, **kwargs: Any) -> str | None:
    reason = reissue_reason(cert_pem, key_pem, **kwargs)
    if reason or cert_pem is None:
        return reason or "missing"
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "not a CA certificate"
    except x509.ExtensionNotFound:
        return "not a CA certificate"
    return None


def describe(cert_pem: bytes) -> dict[str, object]:
    """Public facts about a certificate, safe to return from a module."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": _not_before(cert).isoformat(),
        "not_after": _not_after(cert).isoformat(),
        "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
    }


# cryptography < 42 (Debian 12 has 38) lacks the *_utc properties: the naive ones are UTC.
def expiry_warning(
    cert_pem: bytes | str, what: str, remedy: str, *, now: datetime.datetime | None = None
) -> str | None:
    """A warning when the certificate expires within RENEW_BEFORE (the window in
    which skiff renews what it can), naming what it is and what to do."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        expires = _not_after(x509.load_pem_x509_certificate(data))
    except ValueError:
        return None
    left = expires - (now or _now())
    if left >= RENEW_BEFORE:
        return None
    when = expires.strftime("%Y-%m-%d %H:%M UTC")
    if left.total_seconds() <= 0:
        return f"{what} expired on {when}: {remedy}"
    return f"{what} expires on {when} (in {left.days} days): {remedy}"


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value or cert.not_valid_after.replace(tzinfo=datetime.UTC)


def _not_before(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value or cert.not_valid_before.replace(tzinfo=datetime.UTC)
