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
