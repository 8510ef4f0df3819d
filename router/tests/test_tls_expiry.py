"""tls.not_after reads a certificate's expiry from its DER (UTCTime before 2050,
GeneralizedTime from 2050 on, RFC 5280), as cryptography reads it."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from skiff_router.tls import not_after


def certificate(until: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "east")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(until)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "until",
    [
        datetime.datetime(2027, 12, 3, 23, 59, 58, tzinfo=datetime.UTC),
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
        datetime.datetime(2051, 6, 1, 12, 0, 0, tzinfo=datetime.UTC),
    ],
)
def test_not_after_matches_cryptography(until: datetime.datetime) -> None:
    pem = certificate(until)
    assert not_after(pem) == int(until.timestamp())
    loaded = x509.load_pem_x509_certificate(pem)
    assert not_after(pem) == int(loaded.not_valid_after_utc.timestamp())


def test_not_a_certificate_is_an_error() -> None:
    with pytest.raises((ValueError, IndexError)):
        not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
