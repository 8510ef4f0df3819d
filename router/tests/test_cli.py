"""CLI as subprocesses: check-config, run, status, supervise."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from router_testkit import Site

CLI = [sys.executable, "-m", "skiff_router"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, check=False)


def poll(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):
            value = cond()
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as dead.
    with suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                # Last resort: the whole session we started (supervisor and child).
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_check_config_ok_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("site: east\nlisteners: []\n")
    r = cli("check-config", str(good))
    assert (r.returncode, r.stdout) == (0, f"{good}: ok\n")

    bad = tmp_path / "router.json"
    bad.write_text(
        json.dumps(
            {
                "site": "east",
                "listeners": [
                    {"name": "a", "routing_key": "k", "host": "127.0.0.1", "port": 1},
                    {"name": "b", "routing_key": "k", "host": "127.0.0.1", "port": "x"},
                ],
                "tpyo": True,
            }
        )
    )
    r = cli("check-config", str(bad))
    assert r.returncode == 2
    assert f"{bad}: listeners[1].port: must be an integer 1..65535" in r.stdout.splitlines()
    assert f"{bad}: tpyo: unknown key" in r.stdout.splitlines()

    garbage = tmp_path / "x.json"
    garbage.write_text("{nope")
    r = cli("check-config", str(garbage))
    assert r.returncode == 2 and "invalid JSON" in r.stdout

    assert cli("check-config", str(tmp_path / "missing.json")).returncode == 2


def test_check_config_never_prints_key_material(tmp_path: Path) -> None:
    secret = "-----BEGIN PRIVATE KEY-----SECRETSECRET"
    (tmp_path / "k.pem").write_text(secret)
    cfg = tmp_path / "r.json"
    cfg.write_text(
        json.dumps(
            {
                "site": "a",
                "link_access": {"host": "x", "port": 0, "ca": 1, "cert": "k.pem", "key": "k.pem"},
            }
        )
    )
    r = cli("check-config", str(cfg))
    assert r.returncode == 2
    assert "SECRET" not in r.stdout + r.stderr


@pytest.mark.integration
def test_run_healthz_status_sighup(tmp_path: Path) -> None:
    site = Site.create(tmp_path, "solo")
    site.log_level = "info"
    site.listen("k")
    site.connect("k", 9)
    cfg = site.write()
    with process([*CLI, "run", "--config", str(cfg)], tmp_path / "run.log") as proc:
        poll(lambda: get(site.admin_url + "/healthz") == b"ok", what="healthz")
        # Reachable once every worker has learnt the key from the others.
        poll(
            lambda: json.loads(get(site.admin_url + "/v1/status"))["routing_keys"]["k"][
                "reachable"
            ],
            what="key reachable",
        )
        st = json.loads(get(site.admin_url + "/v1/status"))
        k = st["routing_keys"]["k"]
        assert (k["connectors"], k["listeners"], k["reachable"]) == (["solo"], ["solo"], True)
        out = cli("status", "--admin", site.admin_url)
        assert out.returncode == 0 and "site solo" in out.stdout and "listening" in out.stdout

        site.listen("k2")
        site.write()
        proc.send_signal(signal.SIGHUP)
        poll(
            lambda: json.loads(get(site.admin_url + "/v1/status"))["config"]["sha256"]
            != st["config"]["sha256"],
            what="reload",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    log = (tmp_path / "run.log").read_text()
    # Every worker (the line tagged with it) reloaded.
    assert re.search(r" info router (\[w0\] )?reloaded config ", log), log


def test_run_invalid_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "r.json"
    cfg.write_text('{"site": "x", "admin": {"port": 0}}')
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 2 and "admin.port" in r.stderr


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_supervise_restarts_killed_child(tmp_path: Path) -> None:
    site = Site.create(tmp_path, "sup")
    cfg = site.write()
    pid_file = tmp_path / "run" / "supervisor.pid"
    with process(
        [*CLI, "supervise", "--config", str(cfg), "--pid-file", str(pid_file)],
        tmp_path / "router.log",
    ) as sup:
        poll(lambda: pid_file.exists() and int(pid_file.read_text()) == sup.pid, what="pid file")
        poll(lambda: get(site.admin_url + "/healthz") == b"ok", what="healthz")

        def child_pid() -> int:
            out = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(sup.pid)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            return int(out[0]) if len(out) == 1 else 0

        first = int(poll(child_pid, what="child"))  # type: ignore[arg-type]
        os.kill(first, signal.SIGKILL)
        poll(lambda: child_pid() not in (0, first), what="restarted child")
        poll(lambda: get(site.admin_url + "/healthz") == b"ok", what="healthz after restart")
        second = child_pid()

        # SIGHUP to the supervisor reaches the router: the new config comes in force.
        sha = json.loads(get(site.admin_url + "/v1/status"))["config"]["sha256"]
        site.listen("added")
        site.write()
        sup.send_signal(signal.SIGHUP)
        poll(
            lambda: json.loads(get(site.admin_url + "/v1/status"))["config"]["sha256"] != sha,
            what="reload via supervisor",
        )
        assert child_pid() == second

        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 0
        poll(lambda: not alive(second), 10, "child gone")
        assert not pid_file.exists()
    log = (tmp_path / "router.log").read_text()
    assert "restarting in" in log
