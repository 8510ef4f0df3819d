"""Application TLS at the edges of the network: a listener terminating its clients'
TLS, a connector originating TLS to its server (verified against a CA bundle and
the server name), with real Python ssl clients and servers and bytes checked by
sha256; a wrong CA refused; bad TLS files refused by name while the running
router keeps its config."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from router_testkit import Ca, Site, run, wait_for
from test_network import TIMEOUT, reachable, routers

from skiff_router.config import ConfigError, load, validate

pytestmark = pytest.mark.integration


def _write(path: Path, data: bytes, mode: int = 0o644) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def server_files(ca: Ca, where: Path, name: str) -> tuple[str, str]:
    cert, key = ca.issue(name, server=True)  # SANs: 127.0.0.1, localhost
    return _write(where / f"{name}.crt", cert), _write(where / f"{name}.key", key, 0o600)


@asynccontextmanager
async def tls_echo_server(cert: str, key: str) -> AsyncIterator[int]:
    """A TLS server that echoes what it reads until the client closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def tls_roundtrip(port: int, ca: str, payload: bytes) -> bytes:
    """A TLS client verifying the listener against ``ca``: send, read as much back."""
    ctx = ssl.create_default_context(cafile=ca)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
    writer.close()
    return got


async def s_client(port: int, ca: str) -> bytes | None:
    """``openssl s_client`` verifying the listener against ``ca``: the line it sent
    as echoed back, or None when the handshake failed."""
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        "localhost",
        "-CAfile",
        ca,
        "-verify_return_error",
        "-quiet",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"hello from s_client\n")
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return line or None


def two_sites(tmp_path: Path) -> tuple[Site, Site, Ca, Ca]:
    west = Site.create(tmp_path, "west")
    east = Site.create(tmp_path, "east", accept=True)
    west.link_to(east)
    return west, east, Ca.create("west service CA"), Ca.create("backend CA")


def test_tls_terminated_at_listener_and_originated_at_connector(tmp_path: Path) -> None:
    async def main() -> None:
        west, east, service_ca, backend_ca = two_sites(tmp_path)
        files = tmp_path / "files"
        lcert, lkey = server_files(service_ca, files, "listener")
        bcert, bkey = server_files(backend_ca, files, "backend")
        service_ca_file = _write(files / "service-ca.crt", service_ca.pem)
        backend_ca_file = _write(files / "backend-ca.crt", backend_ca.pem)
        async with tls_echo_server(bcert, bkey) as backend:
            east.connect("db", backend)
            east.connectors[0]["tls"] = {"ca": backend_ca_file, "server_name": "localhost"}
            lport = west.listen("db")
            west.listeners[0]["tls"] = {"cert": lcert, "key": lkey}
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "db"), TIMEOUT, "db served")
                for size in (1, 70_000, 3_000_000):
                    payload = os.urandom(size)
                    got = await tls_roundtrip(lport, service_ca_file, payload)
                    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
                # A client that trusts another CA does not get through the listener.
                with pytest.raises(ssl.SSLCertVerificationError):
                    await tls_roundtrip(lport, backend_ca_file, b"x")
                st = rs["east"].status()["connectors"][0]
                assert st["error"] is None
                # openssl's own client verifies the listener and gets its bytes echoed.
                assert await s_client(lport, service_ca_file) == b"hello from s_client\n"
                assert await s_client(lport, backend_ca_file) is None

    run(main())


def test_connector_refuses_a_server_from_another_ca(tmp_path: Path) -> None:
    async def main() -> None:
        west, east, _service_ca, backend_ca = two_sites(tmp_path)
        files = tmp_path / "files"
        bcert, bkey = server_files(backend_ca, files, "backend")
        wrong_ca = _write(files / "wrong-ca.crt", Ca.create("someone else").pem)
        async with tls_echo_server(bcert, bkey) as backend:
            east.connect("db", backend)
            east.connectors[0]["tls"] = {"ca": wrong_ca}
            lport = west.listen("db")
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "db"), TIMEOUT, "db served")
                r, w = await asyncio.open_connection("127.0.0.1", lport)
                w.write(b"secret request")
                with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                    await asyncio.wait_for(r.readexactly(1), 20)
                w.close()
                st = rs["east"].status()["connectors"][0]
                assert st["error"].startswith("TLS verification failed"), st

    run(main())


def test_bad_tls_files_are_refused_and_the_router_keeps_its_config(tmp_path: Path) -> None:
    async def main() -> None:
        west, east, service_ca, _backend_ca = two_sites(tmp_path)
        files = tmp_path / "files"
        lcert, lkey = server_files(service_ca, files, "listener")
        lport = west.listen("db")
        west.listeners[0]["tls"] = {"cert": lcert, "key": lkey}
        async with routers(east, west) as rs:
            w = rs["west"]
            sha = w.status()["config"]["sha256"]
            cases = [
                ({"cert": str(files / "missing.crt"), "key": lkey}, "cert", "cannot read"),
                ({"cert": lkey, "key": lkey}, "cert", "is not a PEM certificate"),
                ({"cert": lcert, "key": lcert}, "key", "is not a PEM private key"),
            ]
            for tls_files, field, problem in cases:
                west.listeners[0]["tls"] = tls_files
                path = west.write()
                with pytest.raises(ConfigError) as err:
                    load(path)
                line = next(x for x in err.value.lines() if f"tls.{field}" in x)
                assert line.startswith(f"listeners[0].tls.{field}: listener 'db': "), line
                assert problem in line
                assert "BEGIN" not in line  # never the file's content
                assert not await w.reload()
                st = w.status()
                assert st["config"]["sha256"] == sha and st["config"]["error"]
                assert st["listeners"][0]["state"] == "listening"
                assert st["listeners"][0]["port"] == lport
            bad_connector = {"name": "x", "routing_key": "x", "host": "127.0.0.1", "port": 1}
            bad_connector["tls"] = {"ca": lkey}
            data = json.loads(west.write().read_text())
            data["connectors"] = [bad_connector]
            with pytest.raises(ConfigError) as err:
                validate(data, west.dir)
            assert any(
                x.startswith("connectors[0].tls.ca: connector 'x': ")
                and "not a PEM certificate" in x
                for x in err.value.lines()
            ), err.value.lines()

    run(main())


async def presented_certificate(port: int, ca: str) -> bytes:
    """The DER certificate the listener presents to a new TLS client."""
    ctx = ssl.create_default_context(cafile=ca)
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return der


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


async def until_presented(port: int, ca: str, want: bytes, what: str) -> None:
    """Bounded: new handshakes present ``want`` (the router polls its files)."""
    for _attempt in range(100):
        if await presented_certificate(port, ca) == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_renewed_certificates_apply_to_new_handshakes_and_keep_open_flows(
    tmp_path: Path,
) -> None:
    """A renewed listener certificate (written over the files in use) is what new
    clients see, without a rebind: a flow open across the renewal keeps carrying
    bytes. A half-renewed pair (new cert, old key) is refused and the previous pair
    stays in use. A connector whose server moved to another CA works again once its
    CA bundle file names that CA."""

    async def main() -> None:
        west, east, service_ca, backend_ca = two_sites(tmp_path)
        files = tmp_path / "files"
        lcert, lkey = server_files(service_ca, files, "listener")
        bcert, bkey = server_files(backend_ca, files, "backend")
        service_ca_file = _write(files / "service-ca.crt", service_ca.pem)
        backend_ca_file = _write(files / "backend-ca.crt", backend_ca.pem)
        async with tls_echo_server(bcert, bkey) as backend:
            east.connect("db", backend)
            east.connectors[0]["tls"] = {"ca": backend_ca_file, "server_name": "localhost"}
            lport = west.listen("db")
            west.listeners[0]["tls"] = {"cert": lcert, "key": lkey}
            async with routers(east, west) as rs:
                await wait_for(lambda: reachable(rs["west"], "db"), TIMEOUT, "db served")
                ctx = ssl.create_default_context(cafile=service_ca_file)
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", lport, ssl=ctx, server_hostname="localhost"
                )
                sent = hashlib.sha256()
                got = hashlib.sha256()

                async def exchange(size: int) -> None:
                    payload = os.urandom(size)
                    sent.update(payload)
                    writer.write(payload)
                    await writer.drain()
                    got.update(await asyncio.wait_for(reader.readexactly(size), 20))

                await exchange(100_000)
                first = _der(Path(lcert).read_bytes())
                assert await presented_certificate(lport, service_ca_file) == first

                # Renewal: a new pair written over the old files (key first, as an
                # installer would; the half-written state is covered below).
                new_cert, new_key = service_ca.issue("listener", server=True)
                _write(Path(lkey), new_key, 0o600)
                _write(Path(lcert), new_cert)
                await until_presented(lport, service_ca_file, _der(new_cert), "renewed cert")
                await exchange(100_000)  # the flow opened before the renewal goes on
                st = rs["west"].status()["listeners"][0]
                assert st["state"] == "listening" and st["port"] == lport

                # Half-renewed: a new certificate next to the old key. Refused; the
                # pair in use stays (new clients still get through).
                other_cert, _other_key = service_ca.issue("listener", server=True)
                _write(Path(lcert), other_cert)
                for _attempt in range(30):  # ~3 s: several polls of the files
                    assert await presented_certificate(lport, service_ca_file) == _der(new_cert)
                    await asyncio.sleep(0.1)
                await exchange(10_000)
                writer.close()
                assert sent.hexdigest() == got.hexdigest()

                # The backend moves to another CA: refused until the connector's CA
                # bundle names it, then new flows verify with the new bundle.
                backend_ca2 = Ca.create("backend CA 2")
                cert2, key2 = backend_ca2.issue("backend", server=True)
                async with tls_echo_server(
                    _write(files / "b2.crt", cert2), _write(files / "b2.key", key2, 0o600)
                ) as backend2:
                    east.connectors[0]["port"] = backend2
                    east.write()
                    assert await rs["east"].reload()
                    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                        await tls_roundtrip(lport, service_ca_file, b"refused")
                    _write(Path(backend_ca_file), backend_ca2.pem)
                    payload = os.urandom(50_000)
                    for _attempt in range(100):
                        try:
                            echoed = await tls_roundtrip(lport, service_ca_file, payload)
                        except (ConnectionError, asyncio.IncompleteReadError):
                            await asyncio.sleep(0.1)
                            continue
                        assert echoed == payload
                        break
                    else:
                        raise AssertionError("the connector never used its new CA bundle")

    run(main())
