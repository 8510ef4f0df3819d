"""The admin endpoint and how the package hangs together: the core is sans-I/O,
the admin endpoint and metrics see a router only through its view, and
/metrics answers properly with and without prometheus-client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from router_testkit import Site
from test_cli import get, poll, process

# A router process whose Python cannot import prometheus-client (a None entry in
# sys.modules makes the import fail), as on a host without the package.
WITHOUT_PROMETHEUS = (
    "import sys; sys.modules['prometheus_client'] = None; "
    "from skiff_router.cli import main; sys.exit(main(sys.argv[1:]))"
)


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    return set(out.stdout.split())


def test_core_components_are_sans_io() -> None:
    mods = imported_after(
        "import skiff_router.core, skiff_router.plan, skiff_router.targets, "
        "skiff_router.flows, skiff_router.topology, skiff_router.multicast"
    )
    assert not {m for m in mods if m == "asyncio" or m.startswith(("asyncio.", "ssl", "socket"))}


def test_admin_and_metrics_do_not_depend_on_the_runtime() -> None:
    mods = imported_after("import skiff_router.admin, skiff_router.metrics")
    assert "skiff_router.metrics" in mods
    assert "skiff_router.runtime" not in mods and "skiff_router.core" not in mods


def http(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body, also for 4xx/5xx answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.mark.integration
@pytest.mark.parametrize("prometheus", [True, False], ids=["with-prometheus", "without"])
def test_metrics_answer_with_and_without_prometheus_client(
    tmp_path: Path, prometheus: bool
) -> None:
    site = Site.create(tmp_path, "solo")
    site.listen("k")
    site.connect("k", 9)
    # One process: the import blocked in this interpreter is blocked for the router.
    site.extra["workers"] = 1
    cfg = site.write()
    cmd = (
        [sys.executable, "-m", "skiff_router"]
        if prometheus
        else [sys.executable, "-c", WITHOUT_PROMETHEUS]
    )
    with process([*cmd, "run", "--config", str(cfg)], tmp_path / "run.log") as proc:
        poll(lambda: get(site.admin_url + "/healthz") == b"ok", what="healthz")
        code, ctype, body = http(site.admin_url + "/metrics")
        if prometheus:
            assert (code, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
            assert b'skiff_ready{router="solo",site="solo"} 1.0' in body
        else:
            assert (code, ctype) == (501, "text/plain")
            assert b"prometheus-client" in body
        # Everything else answers either way.
        assert json.loads(get(site.admin_url + "/v1/status"))["router_id"] == "solo"
        assert http(site.admin_url + "/nope")[0] == 404
        assert proc.poll() is None
    assert "Traceback" not in (tmp_path / "run.log").read_text()


def test_metrics_export_each_certificates_expiry(tmp_path: Path) -> None:
    """skiff_certificate_expiry_timestamp_seconds for the server, site CA, each link's
    client certificate and CA; a renewed file is read again."""
    import asyncio

    from cryptography import x509
    from router_testkit import run
    from test_network import routers

    from skiff_router import metrics

    def expiry(path: Path) -> int:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return int(cert.not_valid_after_utc.timestamp())

    async def main() -> None:
        east = Site.create(tmp_path, "east", accept=True)
        west = Site.create(tmp_path, "west", accept=True)
        west.link_to(east)
        assert west.ca is not None  # the replicas' certificate (kubernetes sites)
        sibling, _key = west.ca.issue("west", server=False, days=20)
        (west.dir / "tls" / "sibling.crt").write_bytes(sibling)
        west.access_extra["sibling_cert"] = "tls/sibling.crt"
        async with routers(east, west) as rs:
            text = metrics.render(metrics.registry_for(rs["west"])).decode()
            name = "skiff_certificate_expiry_timestamp_seconds"
            want = {
                ("server", "link-access"): expiry(west.dir / "tls" / "server.crt"),
                ("sibling", "link-access"): expiry(west.dir / "tls" / "sibling.crt"),
                ("site-ca", "link-access"): expiry(west.dir / "ca" / "ca.crt"),
                ("link-client", "east"): expiry(west.dir / "links" / "east" / "tls.crt"),
                ("link-ca", "east"): expiry(west.dir / "links" / "east" / "ca.crt"),
            }
            exported = {}
            for line in text.splitlines():
                if line.startswith(name + "{"):
                    labels, number = line.rsplit(" ", 1)
                    exported[labels] = float(number)  # Go-style floats: 1.79643424e+09
            for (kind, entry), value in want.items():
                labels = f'{name}{{kind="{kind}",name="{entry}",router="west",site="west"}}'
                assert exported.get(labels) == value, (labels, exported)
            # A renewed client certificate (shorter-lived here) is read again.
            assert east.ca is not None
            cert, key = east.ca.issue("west", server=False, days=0.5)
            (west.dir / "links" / "east" / "tls.key").write_bytes(key)
            (west.dir / "links" / "east" / "tls.crt").write_bytes(cert)
            await asyncio.sleep(0.01)
            got = dict(((k, n), v) for k, n, v in rs["west"].certificates())
            assert got[("link-client", "east")] == expiry(west.dir / "links" / "east" / "tls.crt")
            assert got[("link-client", "east")] < want[("link-client", "east")]

    run(main())
