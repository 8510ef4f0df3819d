"""Listener certificates issued by the site's service CA: the four steps, what the
certificate says (SANs, issuer, key mode), renewal, removal, bad input naming the
site and field, and that the router reads what the module writes."""

from __future__ import annotations

import datetime
import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.skiff.fleet.plugins.module_utils import pki
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform_kubernetes import (
    KubeSecretStore,
)
from ansible_collections.skiff.fleet.plugins.module_utils.service import (
    CONNECTOR,
    LISTENER,
    ServiceParams,
    run_service,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.site_config import (
    SiteConfigParams,
    run_reconcile,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import SitePaths
from skiff_router import config as router_config


@pytest.fixture
def site(tmp_path, services):
    run_site(SiteParams(name="west", base_dir=str(tmp_path), router_python="py"), False, **services)
    return SitePaths(tmp_path / "west")


def web(paths: SitePaths, **kw) -> ServiceParams:
    values = dict(
        site="west",
        base_dir=str(paths.root.parent),
        name="web",
        port=18443,
        tls={"issue": True, "names": ["web.example.internal"]},
    )
    values.update(kw)
    return ServiceParams(**values)


def certificate(paths: SitePaths, name: str = "web") -> x509.Certificate:
    return x509.load_pem_x509_certificate((paths.listener_dir(name) / "tls.crt").read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    return pki.cert_sans(cert)


def test_four_steps_and_what_the_certificate_says(site, services):
    check = run_service(LISTENER, web(site), True, **services)
    assert check.changed
    assert check.actions[1:3] == [
        "create the service CA (missing)",
        "issue the certificate of listener 'web' for web, 127.0.0.1, web.example.internal "
        "from the service CA (missing)",
    ]
    assert not site.listener_dir("web").exists() and not site.service_ca_dir.exists()

    applied = run_service(LISTENER, web(site), False, **services)
    assert applied.changed
    written = json.loads(site.config.read_text())
    paths = {
        "cert": "listeners/web/tls.crt",
        "key": "listeners/web/tls.key",
        "next_cert": "listeners/web/tls.next.crt",
    }
    assert written["listeners"][0]["tls"] == paths
    # The router reads it as the listener's TLS files (relative to its config).
    lc = router_config.validate(written, str(site.root)).listeners[0]
    assert lc.tls == router_config.ListenerTls(
        *(str(site.root / paths[k]) for k in ("cert", "key", "next_cert"))
    )
    # The next certificate: the same key, loaded by the router 30 days before expiry.
    following = (site.listener_dir("web") / "tls.next.crt").read_bytes()
    current = (site.listener_dir("web") / "tls.crt").read_bytes()
    ca_pem = (site.service_ca_dir / "ca.crt").read_bytes()
    assert pki.successor_problem(current, following, ca_pem) is None
    cert = certificate(site)
    assert sans(cert) == {"web", "127.0.0.1", "web.example.internal"}
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    service_ca = x509.load_pem_x509_certificate((site.service_ca_dir / "ca.crt").read_bytes())
    link_ca = x509.load_pem_x509_certificate(site.ca_cert.read_bytes())
    assert pki.is_signed_by(cert, service_ca)
    assert not pki.is_signed_by(cert, link_ca)  # apart from the CA of the links
    assert service_ca.subject != link_ca.subject
    assert applied.values["service_ca"] == (site.service_ca_dir / "ca.crt").read_text()
    for key in (site.listener_dir("web") / "tls.key", site.service_ca_dir / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    shown = json.dumps(applied.diff) + json.dumps(applied.values) + json.dumps(applied.actions)
    assert "PRIVATE KEY" not in shown

    again = run_service(LISTENER, web(site), True, **services)
    assert not again.changed and again.values["service_ca"] == applied.values["service_ca"]
    assert not run_service(LISTENER, web(site), False, **services).changed
    assert certificate(site).serial_number == cert.serial_number


def test_renewed_when_names_change_or_expiry_nears_never_the_ca(site, services):
    run_service(LISTENER, web(site), False, **services)
    first = certificate(site)
    ca_pem = (site.service_ca_dir / "ca.crt").read_bytes()

    renamed = web(site, tls={"issue": True, "names": ["web.example.internal", "10.0.0.7"]})
    check = run_service(LISTENER, renamed, True, **services)
    assert check.actions == [
        "issue the certificate of listener 'web' for web, 127.0.0.1, web.example.internal, "
        "10.0.0.7 from the service CA (SANs differ from the listener's names)",
        "reload the router",
    ]
    assert not check.diff or check.diff["before"] == check.diff["after"]
    run_service(LISTENER, renamed, False, **services)
    assert "10.0.0.7" in sans(certificate(site))
    assert certificate(site).serial_number != first.serial_number

    # A certificate expiring within 30 days: the next run issues a new one.
    ca = pki.Issued(ca_pem, (site.service_ca_dir / "ca.key").read_bytes())
    old = pki.issue_server_cert(
        ca, "web", ["web", "127.0.0.1", "web.example.internal", "10.0.0.7"], valid_days=10
    )
    (site.listener_dir("web") / "tls.key").write_bytes(old.key_pem)
    (site.listener_dir("web") / "tls.crt").write_bytes(old.cert_pem)
    expiring = run_service(LISTENER, renamed, False, **services)
    assert "(expires within 30 days)" in expiring.actions[0]
    renewed = certificate(site)
    assert pki._not_after(renewed) - pki._now() > datetime.timedelta(days=300)
    assert (site.service_ca_dir / "ca.crt").read_bytes() == ca_pem

    # Expiring with a good next certificate (the router serves it already): that one
    # becomes the pair's, with the same key, and gets a next one of its own.
    short = pki.issue_server_cert(
        ca, "web", ["web", "127.0.0.1", "web.example.internal", "10.0.0.7"], valid_days=10
    )
    following = pki.issue_successor(ca, short.cert_pem, valid_days=365)
    folder = site.listener_dir("web")
    (folder / "tls.key").write_bytes(short.key_pem)
    (folder / "tls.crt").write_bytes(short.cert_pem)
    (folder / "tls.next.crt").write_bytes(following)
    promoted = run_service(LISTENER, renamed, False, **services)
    assert promoted.actions[0] == (
        "renew the certificate of listener 'web' with its next certificate (expires within 30 days)"
    )
    assert (folder / "tls.crt").read_bytes() == following
    assert (folder / "tls.key").read_bytes() == short.key_pem
    assert pki.successor_problem(following, (folder / "tls.next.crt").read_bytes(), ca_pem) is None
    assert not run_service(LISTENER, renamed, False, **services).changed


def test_a_pair_kept_from_before_gets_its_next_certificate(site, services):
    run_service(LISTENER, web(site), False, **services)
    folder = site.listener_dir("web")
    pair = ((folder / "tls.crt").read_bytes(), (folder / "tls.key").read_bytes())
    (folder / "tls.next.crt").unlink()
    check = run_service(LISTENER, web(site), True, **services)
    assert check.actions[0].startswith("issue the next certificate of listener 'web'")
    assert not (folder / "tls.next.crt").exists()
    run_service(LISTENER, web(site), False, **services)
    assert ((folder / "tls.crt").read_bytes(), (folder / "tls.key").read_bytes()) == pair
    assert (folder / "tls.next.crt").exists()
    assert not run_service(LISTENER, web(site), False, **services).changed


def test_removed_listener_takes_its_certificate_along(site, services):
    run_service(LISTENER, web(site), False, **services)
    assert site.listener_dir("web").is_dir()
    run_service(LISTENER, web(site, state="absent", tls=None), False, **services)
    assert not site.listener_dir("web").exists()
    assert (site.service_ca_dir / "ca.crt").is_file()  # the CA clients trust stays


def test_switching_to_own_files_removes_the_issued_pair(site, services, tmp_path):
    run_service(LISTENER, web(site), False, **services)
    own = pki.issue_server_cert(pki.create_ca("other"), "web", ["127.0.0.1"])
    (tmp_path / "own.crt").write_bytes(own.cert_pem)
    (tmp_path / "own.key").write_bytes(own.key_pem)
    files = {"cert": str(tmp_path / "own.crt"), "key": str(tmp_path / "own.key")}
    run_service(LISTENER, web(site, tls=files), False, **services)
    assert json.loads(site.config.read_text())["listeners"][0]["tls"] == files
    assert not site.listener_dir("web").exists()


def test_the_reconcile_module_issues_too(site, services):
    items = ({"name": "web", "port": 18443, "tls": {"issue": True}},)
    params = SiteConfigParams(site="west", base_dir=str(site.root.parent), listeners=items)
    result = run_reconcile(params, False, **services)
    assert result.changed and result.values["service_ca"].startswith("-----BEGIN CERTIFICATE")
    assert sans(certificate(site)) == {"web", "127.0.0.1"}
    assert not run_reconcile(params, False, **services).changed


@pytest.mark.parametrize(
    ("kind", "tls", "field", "words"),
    [
        (LISTENER, {"issue": True, "cert": "/x.crt", "key": "/x.key"}, "tls.issue", "not both"),
        (
            LISTENER,
            {"names": ["a.example"], "cert": "/x.crt", "key": "/x.key"},
            "tls.names",
            "needs tls.issue",
        ),
        (LISTENER, {"issue": True, "names": ["bad host!"]}, "tls.names[0]", ""),
        (CONNECTOR, {"issue": True, "ca": "/x.crt"}, "tls.issue", "listeners only"),
    ],
)
def test_bad_input_names_the_site_and_field(site, services, kind, tls, field, words):
    params = web(site, tls=tls, **({"host": "127.0.0.1"} if kind is CONNECTOR else {}))
    with pytest.raises(SkiffError) as err:
        run_service(kind, params, False, **services)
    text = str(err.value)
    assert text.startswith("site 'west': ") and f"'web': {field}: " in text, text
    assert words in text
    assert not site.listener_dir("web").exists()


def test_platforms_without_a_site_directory_say_so():
    store = KubeSecretStore(platform=None)  # type: ignore[arg-type]
    with pytest.raises(SkiffError) as err:
        store.service_ca()
    assert err.value.field == "tls.issue" and "give tls.cert and tls.key" in str(err.value)


def test_issued_certificate_fingerprint_is_public_only(site, services):
    result = run_service(LISTENER, web(site), False, **services)
    ca = x509.load_pem_x509_certificate(result.values["service_ca"].encode())
    assert ca.fingerprint(hashes.SHA256()) == x509.load_pem_x509_certificate(
        (site.service_ca_dir / "ca.crt").read_bytes()
    ).fingerprint(hashes.SHA256())
