"""The admin endpoint's bearer token (admin.token_file): a real router process, real
HTTP. Health, readiness, metrics and the console page stay open; status, flows, the
network view and multicast need the token; a replaced token file applies at the
next request without a restart; a loosened or missing token file opens nothing."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from router_testkit import Site
from test_cli import cli, get, poll, process

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token-0123456789"


def request(
    url: str,
    token: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    header: str = "Authorization",
) -> tuple[int, dict[str, str], bytes]:
    value = f"Bearer {token}" if header == "Authorization" else token
    headers = {header: value} if token is not None and value is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def write_token(path: Path, token: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(mode)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site.create(tmp_path, "solo")
    s.listen("k")
    write_token(s.dir / "admin" / "token", TOKEN)
    s.extra["admin"] = {"host": "127.0.0.1", "port": s.admin_port, "token_file": "admin/token"}
    return s


def test_only_health_readiness_metrics_and_console_are_open(tmp_path: Path, site: Site) -> None:
    cfg = site.write()
    url = site.admin_url
    with process(
        [sys.executable, "-m", "skiff_router", "run", "--config", str(cfg)], tmp_path / "log"
    ):
        poll(lambda: get(url + "/healthz") == b"ok", what="healthz")
        for path in ("/healthz", "/readyz", "/metrics", "/console"):
            assert request(url + path)[0] == 200, path
        for method, path in (
            ("GET", "/v1/status"),
            ("GET", "/v1/flows"),
            ("GET", "/v1/network"),
            ("POST", "/v1/multicast/skiff.events"),
            ("GET", "/nope"),
        ):
            body = b"spoofed" if method == "POST" else None
            for token in (None, "wrong-token-0123456789", TOKEN[:-1], TOKEN + "x"):
                code, headers, _body = request(url + path, token, method, body)
                assert code == 401, (method, path, token)
                assert headers["WWW-Authenticate"] == 'Bearer realm="skiff"'
        code, _headers, body = request(url + "/v1/status", TOKEN)
        assert code == 200
        status = json.loads(body)
        assert status["admin"]["token"] is True
        assert status["admin"]["refused"] == 20
        assert request(url + "/v1/flows", TOKEN)[0] == 200
        assert request(url + "/v1/network", TOKEN)[0] == 200
        code, _headers, body = request(url + "/v1/multicast/skiff.events", TOKEN, "POST", b"hello")
        assert code == 200 and json.loads(body)["origin"] == "solo"
        assert request(url + "/nope", TOKEN)[0] == 404
        # The CLI reads the token from the router's config, or from --token-file.
        out = cli("status", "--config", str(cfg), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["router_id"] == "solo"
        out = cli("status", "--admin", url, "--token-file", str(site.dir / "admin/token"))
        assert out.returncode == 0 and "solo" in out.stdout
        out = cli("status", "--admin", url)
        assert out.returncode == 1 and "HTTP 401" in out.stderr
    assert TOKEN not in (tmp_path / "log").read_text()


def test_token_changes_apply_at_once_and_a_bad_file_opens_nothing(
    tmp_path: Path, site: Site
) -> None:
    cfg = site.write()
    url = site.admin_url
    token_file = site.dir / "admin" / "token"
    with process(
        [sys.executable, "-m", "skiff_router", "run", "--config", str(cfg)], tmp_path / "log"
    ) as proc:
        poll(lambda: get(url + "/healthz") == b"ok", what="healthz")
        assert request(url + "/v1/status", TOKEN)[0] == 200
        # The same token in the header a Kubernetes API server's pod proxy passes on.
        assert request(url + "/v1/status", TOKEN, header="X-Skiff-Admin-Token")[0] == 200
        assert request(url + "/v1/status", "wrong" * 5, header="X-Skiff-Admin-Token")[0] == 401
        # Rotated: the old token stops working at the next request.
        write_token(token_file, "the-next-token-abcdefghij")
        assert request(url + "/v1/status", TOKEN)[0] == 401
        assert request(url + "/v1/status", "the-next-token-abcdefghij")[0] == 200
        # Loosened, emptied, removed: refused, whatever token is sent.
        token_file.chmod(0o644)
        assert request(url + "/v1/status", "the-next-token-abcdefghij")[0] == 401
        write_token(token_file, "short")
        assert request(url + "/v1/status", "short")[0] == 401
        os.unlink(token_file)
        assert request(url + "/v1/status", "short")[0] == 401
        assert request(url + "/healthz")[0] == 200
        assert proc.poll() is None
    log = (tmp_path / "log").read_text()
    assert "the-next-token" not in log and "is mode 0644" in log


def test_check_config_refuses_an_unusable_token_file(tmp_path: Path, site: Site) -> None:
    cfg = site.write()
    assert cli("check-config", str(cfg)).returncode == 0
    token = site.dir / "admin" / "token"
    token.chmod(0o640)
    os.chown(token, -1, os.getgid() + 1)  # its group is not the router's: refused
    out = cli("check-config", str(cfg))
    assert out.returncode == 2
    assert "admin.token_file" in out.stdout and "chmod 0600" in out.stdout
    # The router's own group may read it (a Kubernetes Secret volume, the pod's fsGroup);
    # others never.
    os.chown(token, -1, os.getgid())
    assert cli("check-config", str(cfg)).returncode == 0
    token.chmod(0o644)
    assert cli("check-config", str(cfg)).returncode == 2
    write_token(site.dir / "admin" / "token", "x" * 15)
    out = cli("check-config", str(cfg))
    assert out.returncode == 2 and "fewer than 16 characters" in out.stdout
    assert "x" * 15 not in out.stdout


def test_a_router_without_token_file_keeps_its_endpoints_open(tmp_path: Path) -> None:
    s = Site.create(tmp_path, "open")
    cfg = s.write()
    with process(
        [sys.executable, "-m", "skiff_router", "run", "--config", str(cfg)], tmp_path / "log"
    ):
        poll(lambda: get(s.admin_url + "/healthz") == b"ok", what="healthz")
        code, _headers, body = request(s.admin_url + "/v1/status")
        assert code == 200 and json.loads(body)["admin"] == {"token": False, "refused": 0}
