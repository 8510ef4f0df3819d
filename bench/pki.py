"""Certificates for the benchmark (cryptography): one CA per accepting side, TLS 1.3 peers
get the same kind of material (server cert with 127.0.0.1/localhost SANs, client cert
signed by the accepting side's CA)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes

    @property
    def bundle(self) -> bytes:
        """Certificate followed by its key (HAProxy's ``crt`` format)."""
        return self.cert + self.key


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Ca:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return _pem_cert(self.cert)

    def issue(self, cn: str, *, server: bool) -> Issued:
        key = _key()
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return Issued(_pem_cert(b.sign(self.key, hashes.SHA256())), _pem_key(key))


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class TunnelPki:
    """Files for a two-hop TLS tunnel: the accepting hop's CA, its server cert, and a
    client cert that CA signed for the dialing hop."""

    ca: Path
    server_cert: Path
    server_key: Path
    server_bundle: Path
    client_cert: Path
    client_key: Path
    client_bundle: Path

    @classmethod
    def create(cls, d: Path, name: str) -> TunnelPki:
        ca = Ca.create(name)
        srv = ca.issue(f"{name} server", server=True)
        cli = ca.issue(f"{name} client", server=False)
        return cls(
            ca=write(d / "ca.crt", ca.pem),
            server_cert=write(d / "server.crt", srv.cert),
            server_key=write(d / "server.key", srv.key, 0o600),
            server_bundle=write(d / "server.pem", srv.bundle, 0o600),
            client_cert=write(d / "client.crt", cli.cert),
            client_key=write(d / "client.key", cli.key, 0o600),
            client_bundle=write(d / "client.pem", cli.bundle, 0o600),
        )
