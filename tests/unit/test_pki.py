from __future__ import annotations

import datetime
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.skiff.fleet.plugins.module_utils import pki
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    CertPair,
    FileSecretStore,
    SitePaths,
    atomic_write,
)


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("east")


def test_ca_is_a_ca_valid_about_ten_years(ca):
    cert = ca.cert
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > datetime.timedelta(days=3600)
    assert pki.ca_reissue_reason(ca.cert_pem, ca.key_pem) is None


def test_rsa_ca_is_supported():
    ca = pki.create_ca("rsa-site", key_kind="rsa")
    assert ca.key.key_size == 3072


def test_server_cert_sans_and_eku(ca):
    server = pki.issue_server_cert(ca, "east", ["10.0.0.5", "east.example", "::1"])
    sans = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["east.example"]
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.is_signed_by(server.cert, ca.cert)


def test_client_cert_cn_and_eku(ca):
    client = pki.issue_client_cert(ca, "west", valid_days=10)
    cn = client.cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "west"
    eku = client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_reissue_reasons(ca):
    server = pki.issue_server_cert(ca, "east", ["127.0.0.1"])
    other_ca = pki.create_ca("other")
    other_key = pki.issue_server_cert(ca, "east", ["127.0.0.1"]).key_pem
    ok = dict(ca_cert_pem=ca.cert_pem, hosts=["127.0.0.1"])
    assert pki.reissue_reason(server.cert_pem, server.key_pem, **ok) is None
    assert pki.reissue_reason(None, server.key_pem, **ok) == "missing"
    assert pki.reissue_reason(b"garbage", server.key_pem, **ok) == "unreadable"
    assert "key does not match" in pki.reissue_reason(server.cert_pem, other_key, **ok)
    assert "not signed by the current CA" in pki.reissue_reason(
        server.cert_pem, server.key_pem, ca_cert_pem=other_ca.cert_pem
    )
    assert "SANs differ" in pki.reissue_reason(
        server.cert_pem, server.key_pem, ca_cert_pem=ca.cert_pem, hosts=["10.1.1.1"]
    )
    # An IP written differently is still the same SAN.
    assert pki.reissue_reason(server.cert_pem, server.key_pem, hosts=["127.000.000.001"]) in (
        None,
        "SANs differ from the link endpoints",
    )
    soon = server.cert.not_valid_after_utc - datetime.timedelta(days=29)
    assert "expires within 30 days" in pki.reissue_reason(server.cert_pem, server.key_pem, now=soon)
    later = server.cert.not_valid_after_utc - datetime.timedelta(days=31)
    assert pki.reissue_reason(server.cert_pem, server.key_pem, now=later) is None


def test_leaf_is_not_accepted_as_ca(ca):
    client = pki.issue_client_cert(ca, "west")
    assert pki.ca_reissue_reason(client.cert_pem, client.key_pem) == "not a CA certificate"


def test_key_files_are_0600_and_written_atomically(tmp_path, ca):
    paths = SitePaths(tmp_path / "east")
    FileSecretStore(paths).put_ca(CertPair(ca.cert_pem, ca.key_pem))
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_cert.stat().st_mode) == 0o644
    assert paths.ca_key.read_bytes() == ca.key_pem
    assert sorted(p.name for p in paths.ca_dir.iterdir()) == ["ca.crt", "ca.key"]
    assert FileSecretStore(paths).ca() == CertPair(ca.cert_pem, ca.key_pem)


def test_atomic_write_sets_mode_before_content(tmp_path, monkeypatch):
    """The temp file is chmod-ed before the first byte lands: a key is never world-readable."""
    import os

    seen = []
    real_fdopen = os.fdopen

    def spy(fd, *args, **kwargs):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", spy)
    atomic_write(tmp_path / "k", b"secret", 0o600)
    assert seen == [0o600]


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import os

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "k", b"x", 0o600)
    assert list(tmp_path.iterdir()) == []


def test_describe_has_no_key(ca):
    info = pki.describe(ca.cert_pem)
    assert "PRIVATE" not in str(info)
    assert set(info) >= {"serial", "not_after", "sha256_fingerprint"}


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_issuer_check_fallback_agrees(key_kind) -> None:
    """Debian 12's cryptography (38) lacks verify_directly_issued_by: the fallback must agree."""
    from ansible_collections.skiff.fleet.plugins.module_utils.pki import (
        _verify_issued_by,
        create_ca,
        issue_client_cert,
    )

    ca = create_ca("east", key_kind=key_kind)
    other = create_ca("east", key_kind=key_kind)  # same name, different key
    leaf = issue_client_cert(ca, "west", key_kind=key_kind).cert
    _verify_issued_by(leaf, ca.cert)
    with pytest.raises(InvalidSignature):
        _verify_issued_by(leaf, other.cert)
    with pytest.raises(ValueError, match="issuer name"):
        _verify_issued_by(leaf, create_ca("north", key_kind=key_kind).cert)
