"""The accepting router decides which client certificates link (config
``link_clients``): routers on loopback with real TLS. A certificate the site CA
signed but that is not listed (a deleted token) is refused at the handshake, a
link whose certificate leaves the list closes at the reload and cannot redial,
and a superseded certificate is accepted until its ``not_after``."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from router_testkit import Site, run, tcp_server, wait_for
from test_network import TIMEOUT, echo_roundtrip, link_up, reachable, routers

pytestmark = pytest.mark.integration


def fingerprint(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_only_listed_certificates_link_and_a_revoked_one_is_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        north = Site.create(tmp_path, "north")
        west.link_to(east)
        north.link_to(east)  # signed by east's CA too, but never listed
        west_fp = fingerprint(west.dir / "links" / "east" / "tls.crt")
        east.extra["link_clients"] = [{"name": "west", "sha256": west_fp}]
        async with tcp_server() as echo_port:
            east.connect("backend", echo_port)
            lport = west.listen("backend")
            async with routers(east, west, north) as rs:
                e = rs["east"]
                await wait_for(lambda: reachable(rs["west"], "backend"), TIMEOUT, "west linked")
                assert await echo_roundtrip(lport, b"x" * 100_000) == b"x" * 100_000
                await wait_for(
                    lambda: e.status()["link_access"]["refused_credentials"] >= 1,
                    TIMEOUT,
                    "north refused",
                )
                assert not link_up(rs["north"], "east")
                assert {lk["peer"] for lk in e.status()["links"]} == {"west"}
                assert e.status()["link_access"]["clients"] == 1

                # The token is deleted: the list no longer names west's certificate.
                east.extra["link_clients"] = []
                east.write()
                assert await e.reload()
                # Closed by the reload itself (no timer involved); the bound is only a
                # guard for a loaded machine, never a measurement.
                await wait_for(lambda: not link_up(rs["west"], "east"), TIMEOUT, "link closed")
                refused = e.status()["link_access"]["refused_credentials"]
                # West redials and is refused each time; it never comes back.
                await wait_for(
                    lambda: e.status()["link_access"]["refused_credentials"] > refused,
                    TIMEOUT,
                    "west's redial refused",
                )
                assert not link_up(rs["west"], "east")
                assert e.status()["links"] == []
                # The dialer is told why (a CLOSE frame, not a bare reset).
                await wait_for(
                    lambda: "credential refused" in (link_error(rs["west"], "east") or ""),
                    TIMEOUT,
                    "west told its credential is refused",
                )
                assert link_error(rs["north"], "east") == "closed by peer: credential refused"

    run(main())


def link_error(router: object, name: str) -> str | None:
    status = router.status()  # type: ignore[attr-defined]
    return next((lk["error"] for lk in status["links"] if lk["name"] == name), None)


def test_a_superseded_certificate_links_until_its_not_after(tmp_path: Path) -> None:
    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west")
        west.link_to(east)
        west_fp = fingerprint(west.dir / "links" / "east" / "tls.crt")
        other = "0" * 64  # the token's new certificate, not installed at west yet
        soon = int(time.time()) + 3600
        east.extra["link_clients"] = [
            {"name": "west", "sha256": other},
            {"name": "west", "sha256": west_fp, "not_after": soon},
        ]
        async with routers(east, west) as rs:
            e = rs["east"]
            await wait_for(lambda: link_up(rs["west"], "east"), TIMEOUT, "the old cert links")
            east.extra["link_clients"][1]["not_after"] = int(time.time()) - 1
            east.write()
            assert await e.reload()
            await wait_for(lambda: not link_up(rs["west"], "east"), TIMEOUT, "past its not_after")
            assert e.status()["links"] == []

    run(main())


def test_replicas_link_with_the_sibling_certificate_beside_the_list(tmp_path: Path) -> None:
    """Two routers of one site (a kubernetes site's replicas): the second dials the
    first at its address with the site's sibling certificate, which the first accepts
    beside its list of tokens; the server certificate names the link Service, not
    the address, so the link gives the name to verify (endpoint ``server_name``)."""
    service = "skiff-link.east.svc"

    async def main() -> None:
        east_a = Site.create(tmp_path, "east", router_id="east.a", accept=True)
        east_b = Site.create(tmp_path, "east", router_id="east.b", ca=east_a.ca)
        west = Site.create(tmp_path, "west")
        assert east_a.ca is not None
        for replica in (east_a, east_b):  # the replicas' shared Secret
            cert, key = east_a.ca.issue(f"{service} router", server=True, names=(service,))
            (replica.dir / "tls" / "server.crt").write_bytes(cert)
            (replica.dir / "tls" / "server.key").write_bytes(key)
        sibling_cert, sibling_key = east_a.ca.issue("east", server=False)
        for replica in (east_a, east_b):
            (replica.dir / "tls" / "sibling.crt").write_bytes(sibling_cert)
            (replica.dir / "tls" / "sibling.key").write_bytes(sibling_key)
            (replica.dir / "tls" / "sibling.key").chmod(0o600)
        west.link_to(east_a)
        west.links[0]["endpoints"][0]["server_name"] = service
        west_fp = fingerprint(west.dir / "links" / "east.a" / "tls.crt")
        east_a.extra["link_clients"] = [{"name": "west", "sha256": west_fp}]
        east_a.access_extra["sibling_cert"] = "tls/sibling.crt"
        # What the agent writes for a sibling: the pod address, the Service's name.
        east_b.links.append(
            {
                "name": "sibling-a",
                "peer": "east",
                "endpoints": [
                    {"host": "127.0.0.1", "port": east_a.link_port, "server_name": service}
                ],
                "ca": "ca/ca.crt",
                "cert": "tls/sibling.crt",
                "key": "tls/sibling.key",
            }
        )
        # Without server_name the address is checked against the certificate: refused.
        east_b.links.append(
            dict(east_b.links[0], name="by-address", endpoints=[
                {"host": "127.0.0.1", "port": east_a.link_port}
            ])
        )  # fmt: skip
        async with tcp_server() as echo_port:
            east_b.connect("backend", echo_port)
            lport = west.listen("backend")
            async with routers(east_a, east_b, west) as rs:
                await wait_for(
                    lambda: link_up(rs["east.b"], "sibling-a"), TIMEOUT, "the sibling link"
                )
                await wait_for(lambda: reachable(rs["west"], "backend"), TIMEOUT, "via east.a")
                payload = b"s" * 200_000
                assert await echo_roundtrip(lport, payload) == payload
                a = rs["east.a"].status()
                assert a["link_access"]["refused_credentials"] == 0
                assert {lk["peer_router"] for lk in a["links"]} == {"east.b", "west"}
                by_address = next(
                    lk for lk in rs["east.b"].status()["links"] if lk["name"] == "by-address"
                )
                assert by_address["state"] != "up"
                assert "127.0.0.1" in (by_address["error"] or ""), by_address

                # Another certificate of the CA naming site east is not the sibling one.
                other_cert, other_key = east_a.ca.issue("east", server=False)
                (east_b.dir / "tls" / "sibling.crt").write_bytes(other_cert)
                (east_b.dir / "tls" / "sibling.key").write_bytes(other_key)
                assert await rs["east.b"].reload()
                await wait_for(
                    lambda: rs["east.a"].status()["link_access"]["refused_credentials"] >= 1,
                    TIMEOUT,
                    "an unknown certificate refused",
                )
                assert not link_up(rs["east.b"], "sibling-a")

    run(main())
