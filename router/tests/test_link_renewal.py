"""Renewal without a playbook run: a link carries the certificate that follows its
token's (``next_cert``: the same key, valid from shortly before the first expires).
When it becomes valid the dialer replaces its link with one made with it, make
before break, and the open flow keeps every byte. Routers on loopback, real TLS."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from router_testkit import Ca, Site, run, tcp_server, wait_for
from test_link_clients import fingerprint
from test_link_rotation import Stream, incoming_states, west_link
from test_network import TIMEOUT, echo_roundtrip, reachable, routers

from skiff_router import tls
from skiff_router.cli import format_status

pytestmark = pytest.mark.integration


def successor(ca: Ca, cert_pem: bytes, starts_in: float) -> bytes:
    """What the issuing site pre-issues: the same subject, key and extensions, valid
    from ``starts_in`` seconds from now."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=starts_in)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_validity_reads_both_times() -> None:
    ca = Ca.create("east")
    cert, _key = ca.issue("west", server=False)
    later = successor(ca, cert, 3600)
    before, after = tls.validity(later)
    loaded = x509.load_pem_x509_certificate(later)
    assert before == int(loaded.not_valid_before_utc.timestamp())
    assert after == int(loaded.not_valid_after_utc.timestamp())


def test_the_link_renews_itself_when_its_next_certificate_is_valid(tmp_path: Path) -> None:
    east = Site.create(tmp_path, "east", accept=True)
    west = Site.create(tmp_path, "west")
    west.link_to(east)
    assert east.ca is not None
    ld = west.dir / "links" / "east"
    starts_in = 4.0
    (ld / "tls.next.crt").write_bytes(successor(east.ca, (ld / "tls.crt").read_bytes(), starts_in))
    west.links[0]["next_cert"] = "links/east/tls.next.crt"
    current, following = fingerprint(ld / "tls.crt"), fingerprint(ld / "tls.next.crt")
    east.extra["link_clients"] = [
        {"name": "west", "sha256": current},
        {"name": "west", "sha256": following},
    ]
    due = tls.validity((ld / "tls.next.crt").read_bytes())[0]  # its notBefore

    def incoming_fingerprints(e) -> list[str]:  # type: ignore[no-untyped-def]
        return sorted(
            (x.credential.fingerprint, "draining" if x.proto.draining else "up")
            for x in e.core.topology.links.values()
            if x.credential is not None
        )

    async def main() -> None:
        async with tcp_server() as echo_port:
            east.connect("backend", echo_port)
            port = west.listen("backend")
            async with routers(east, west) as rs:
                e, w = rs["east"], rs["west"]
                await wait_for(lambda: reachable(w, "backend"), TIMEOUT, "west linked")
                assert west_link(w)["renewed"] is False
                # /metrics: the link lapses when its next certificate does.
                lapses = tls.validity((ld / "tls.next.crt").read_bytes())[1]
                assert ("link-client-next", "east", lapses) in w.certificates()
                assert incoming_fingerprints(e) == [(current, "up")]
                flow = await Stream.open(port)
                await flow.roundtrip()
                # Nothing reloads: the router's own clock makes the switch.
                await wait_for(lambda: west_link(w)["renewed"], TIMEOUT + starts_in, "renewed")
                assert time.time() >= due
                assert "up (renewed)" in format_status(w.status())
                await wait_for(
                    lambda: incoming_states(e) == ["draining", "up"], TIMEOUT, "both links"
                )
                assert sorted(incoming_fingerprints(e)) == sorted(
                    [(current, "draining"), (following, "up")]
                )
                # New flows take the renewed link; the open one keeps the old link.
                assert await echo_roundtrip(port, b"r" * 200_000) == b"r" * 200_000
                await flow.roundtrip()
                await flow.finish()
                await wait_for(lambda: incoming_states(e) == ["up"], TIMEOUT, "old link closed")
                assert incoming_fingerprints(e) == [(following, "up")]
                assert west_link(w)["draining"] == 0
                # The old certificate is no longer needed: east may drop it.
                east.extra["link_clients"] = [{"name": "west", "sha256": following}]
                east.write()
                assert await e.reload()
                await asyncio.sleep(0.5)
                assert incoming_states(e) == ["up"] and west_link(w)["renewed"]
                assert await echo_roundtrip(port, b"s" * 50_000) == b"s" * 50_000

    run(main())


def test_a_listener_serves_its_next_certificate_once_valid(tmp_path: Path) -> None:
    """An issued listener certificate carries its successor too: once valid, new
    handshakes get it without a rebind or a reload; a flow open before keeps going."""
    from test_app_tls import _der, _write, presented_certificate, server_files, two_sites

    async def main() -> None:
        west, east, service_ca, _backend_ca = two_sites(tmp_path)
        files = tmp_path / "files"
        lcert, lkey = server_files(service_ca, files, "listener")
        later = successor(service_ca, Path(lcert).read_bytes(), 3.0)
        lnext = _write(files / "listener.next.crt", later)
        ca_file = _write(files / "service-ca.crt", service_ca.pem)
        async with tcp_server() as echo_port:
            east.connect("db", echo_port)
            lport = west.listen("db")
            west.listeners[0]["tls"] = {"cert": lcert, "key": lkey, "next_cert": lnext}
            async with routers(east, west) as rs:
                w = rs["west"]
                await wait_for(lambda: reachable(w, "db"), TIMEOUT, "db served")
                assert await presented_certificate(lport, ca_file) == _der(Path(lcert).read_bytes())
                assert w.status()["listeners"][0]["renewed"] is False
                lapses = tls.validity(later)[1]
                assert ("listener-next", "db", lapses) in w.certificates()
                ctx = ssl.create_default_context(cafile=ca_file)
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", lport, ssl=ctx, server_hostname="localhost"
                )
                writer.write(b"before")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"
                await wait_for(lambda: w.status()["listeners"][0]["renewed"], TIMEOUT, "renewed")
                assert time.time() >= tls.validity(later)[0]
                assert await presented_certificate(lport, ca_file) == _der(later)
                writer.write(b"after")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(5), 10) == b"after"
                writer.close()
                assert w.status()["listeners"][0]["state"] == "listening"

    run(main())


def test_replicas_renew_their_links_with_the_next_sibling_certificate(tmp_path: Path) -> None:
    """A kubernetes site's replicas link to each other with the site's sibling
    certificate; the one that follows it is accepted too (``sibling_next_cert``),
    so the replicas' links renew themselves like any other."""
    east_a = Site.create(tmp_path, "east", router_id="east.a", accept=True)
    east_b = Site.create(tmp_path, "east", router_id="east.b", ca=east_a.ca)
    assert east_a.ca is not None
    cert, key = east_a.ca.issue("east", server=False)
    tls_dir = east_b.dir / "tls"
    (tls_dir / "sibling.crt").write_bytes(cert)
    (tls_dir / "sibling.key").write_bytes(key)
    (tls_dir / "sibling.key").chmod(0o600)
    (tls_dir / "sibling.next.crt").write_bytes(successor(east_a.ca, cert, 3.0))
    for name in ("sibling.crt", "sibling.next.crt"):
        (east_a.dir / "tls" / name).write_bytes((tls_dir / name).read_bytes())
    east_a.extra["link_clients"] = []  # no token: only the replicas' certificates
    east_a.access_extra.update(
        sibling_cert="tls/sibling.crt", sibling_next_cert="tls/sibling.next.crt"
    )
    east_b.links.append(
        {
            "name": "sibling-a",
            "peer": "east",
            "endpoints": [{"host": "127.0.0.1", "port": east_a.link_port}],
            "ca": "ca/ca.crt",
            "cert": "tls/sibling.crt",
            "key": "tls/sibling.key",
            "next_cert": "tls/sibling.next.crt",
        }
    )

    def sibling(b) -> dict:  # type: ignore[no-untyped-def]
        (lk,) = [x for x in b.status()["links"] if x["name"] == "sibling-a"]
        return lk

    async def main() -> None:
        async with routers(east_a, east_b) as rs:
            a, b = rs["east.a"], rs["east.b"]
            await wait_for(lambda: sibling(b)["state"] == "up", TIMEOUT, "replicas linked")
            assert sibling(b)["renewed"] is False
            await wait_for(lambda: sibling(b)["renewed"], TIMEOUT, "renewed")
            await wait_for(lambda: sibling(b)["draining"] == 0, TIMEOUT, "old link gone")
            assert sibling(b)["state"] == "up"
            assert a.status()["link_access"]["refused_credentials"] == 0

    run(main())
