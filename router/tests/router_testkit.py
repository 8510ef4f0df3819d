"""Test helpers: certificates, site directories, ports, echo servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skiff_router import eventloop

T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range (32768 and up):
    a port from that range may become any outgoing connection's source port before
    the test binds it. Each port is handed out once per run."""
    if len(_HANDED_OUT) > 8000:
        _HANDED_OUT.clear()
    for _attempt in range(1000):
        port = random.randint(10000, 19999)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port in 10000-19999")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Ca:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
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

    def issue(
        self,
        cn: str,
        *,
        server: bool,
        days: float = 1,
        names: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ) -> tuple[bytes, bytes]:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
            )
        cert = b.sign(self.key, hashes.SHA256())
        return _pem_cert(cert), _pem_key(key)

    @property
    def pem(self) -> bytes:
        return _pem_cert(self.cert)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


@dataclass
class Site:
    """A site directory laid out as in docs/design.md."""

    name: str
    dir: Path
    admin_port: int
    link_port: int | None = None
    ca: Ca | None = None
    links: list[dict[str, Any]] = field(default_factory=list)
    listeners: list[dict[str, Any]] = field(default_factory=list)
    connectors: list[dict[str, Any]] = field(default_factory=list)
    log_level: str = "debug"
    router_id: str | None = None  # None: the config has no router_id (it defaults to the site)
    overlay: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level config fields
    access_extra: dict[str, Any] = field(default_factory=dict)  # more link_access fields

    @classmethod
    def create(
        cls,
        base: Path,
        name: str,
        *,
        accept: bool = False,
        router_id: str | None = None,
        ca: Ca | None = None,
    ) -> Site:
        """A site directory; ``router_id`` and ``ca`` make another router (replica)
        of a site whose CA already exists."""
        d = base / (router_id or name)
        d.mkdir(parents=True)
        site = cls(name, d, free_port(), router_id=router_id)
        if accept or ca is not None:
            site.ca = ca or Ca.create(name)
            _write(d / "ca" / "ca.crt", site.ca.pem)
            cert, key = site.ca.issue(f"{name} router", server=True)
            _write(d / "tls" / "server.crt", cert)
            _write(d / "tls" / "server.key", key, 0o600)
            site.link_port = free_port()
        return site

    def link_to(
        self, other: Site, *, cost: int = 1, client_ca: Ca | None = None, name: str | None = None
    ) -> None:
        """Dial ``other`` with a client cert issued by its CA (or ``client_ca``)."""
        assert other.ca is not None and other.link_port is not None
        name = name or other.router_id or other.name
        # The client cert names the dialing site, as a token's does.
        cert, key = (client_ca or other.ca).issue(self.name, server=False)
        ld = self.dir / "links" / name
        _write(ld / "ca.crt", other.ca.pem)
        _write(ld / "tls.crt", cert)
        _write(ld / "tls.key", key, 0o600)
        self.links.append(
            {
                "name": name,
                "peer": other.name,
                "cost": cost,
                "endpoints": [{"host": "127.0.0.1", "port": other.link_port}],
                "ca": f"links/{name}/ca.crt",
                "cert": f"links/{name}/tls.crt",
                "key": f"links/{name}/tls.key",
            }
        )

    def listen(self, key: str, port: int | None = None, name: str | None = None) -> int:
        port = port or free_port()
        self.listeners.append(
            {"name": name or key, "routing_key": key, "host": "127.0.0.1", "port": port}
        )
        return port

    def connect(self, key: str, port: int, name: str | None = None) -> None:
        self.connectors.append(
            {"name": name or key, "routing_key": key, "host": "127.0.0.1", "port": port}
        )

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "site": self.name,
            **({"router_id": self.router_id} if self.router_id else {}),
            **({"overlay": self.overlay} if self.overlay else {}),
            "log_level": self.log_level,
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "links": self.links,
            "listeners": self.listeners,
            "connectors": self.connectors,
            **self.extra,
        }
        if self.ca is not None:
            cfg["link_access"] = {
                "host": "127.0.0.1",
                "port": self.link_port,
                "ca": "ca/ca.crt",
                "cert": "tls/server.crt",
                "key": "tls/server.key",
                **self.access_extra,
            }
        return cfg

    def write(self) -> Path:
        path = self.dir / "router.json"
        path.write_text(json.dumps(self.config(), indent=2))
        return path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


# -- asyncio helpers -------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the loop the router runs on (uvloop when installed;
    SKIFF_ROUTER_LOOP=asyncio runs these tests on the fallback)."""
    return eventloop.run(lambda: coro)


async def wait_for(
    cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``cond`` until true; bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close back."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] = echo_handler,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()


async def http_get(url: str) -> tuple[int, bytes]:
    """Minimal GET for the admin endpoint (keeps the event loop free)."""
    assert url.startswith("http://")
    hostport, _sep, path = url[len("http://") :].partition("/")
    host, _sep, port = hostport.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _sep, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
