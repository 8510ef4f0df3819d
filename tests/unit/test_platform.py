from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    get_platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.platform_local import LocalPlatform
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths


@pytest.fixture
def local(tmp_path) -> LocalPlatform:
    paths = SitePaths(tmp_path / "east")
    paths.root.mkdir()
    return get_platform("local", paths, SiteMetadata(name="east", router_python=sys.executable))


def test_lookup(local, tmp_path):
    assert isinstance(local, LocalPlatform)
    with pytest.raises(
        SkiffError,
        match="platform: unknown platform 'mars' \\(supported: local, systemd, podman, kubernetes\\)",
    ):
        get_platform("mars", local.paths, local.metadata)


def test_admin_access_from_config(local):
    assert local.admin_access() == ("http://127.0.0.1:9191", {})
    local.paths.config.write_text(json.dumps({"admin": {"host": "0.0.0.0", "port": 1234}}))
    assert local.admin_access() == ("http://127.0.0.1:1234", {})
    admin = {"host": "::", "port": 1234, "token_file": "admin/token"}
    local.paths.config.write_text(json.dumps({"admin": admin}))
    local.secrets.put_new_admin_token()
    token = local.paths.admin_token.read_text().strip()
    assert len(token) >= 32 and local.paths.admin_token.stat().st_mode & 0o777 == 0o600
    assert local.admin_access() == ("http://[::1]:1234", {"Authorization": f"Bearer {token}"})


def test_admin_token_problems(local):
    secrets = local.secrets
    assert secrets.admin_token_path() == "admin/token"
    assert secrets.admin_token_problem() == "missing"
    secrets.put_new_admin_token()
    assert secrets.admin_token_problem() is None
    local.paths.admin_token.chmod(0o640)
    assert secrets.admin_token_problem() == "mode 0640 let others read it"
    local.paths.admin_token.write_text("short\n")
    local.paths.admin_token.chmod(0o600)
    assert secrets.admin_token_problem() == "shorter than 16 characters"


def test_log_tail_drops_secret_lines(local):
    local.paths.logs_dir.mkdir()
    local.paths.log_file.write_text(
        "ok 1\n-----BEGIN PRIVATE KEY-----\ntoken skiff1.eyJ2IjoxLCJzaXRlIjoiZWFzdCJ9abc\nok 2\n"
    )
    assert local.log_tail() == ["ok 1", "ok 2"]


def test_not_running_without_pid_file_or_with_foreign_pid(local):
    assert not local.is_running()
    local.paths.run_dir.mkdir()
    local.paths.pid_file.write_text(f"{os.getpid()}\n")  # pytest: alive, but not a router
    assert not local.is_running()
    assert local.stop() is False


def test_start_detaches_and_stop_ends_the_process_group(local, tmp_path):
    """A stand-in router: started detached, found through /proc, stopped by SIGTERM."""
    fake_pkg = tmp_path / "fake" / "skiff_router"
    fake_pkg.mkdir(parents=True)
    (fake_pkg / "__init__.py").write_text("")
    (fake_pkg / "__main__.py").write_text(
        textwrap.dedent(
            """
            import os, sys, time
            pid_file = sys.argv[sys.argv.index("--pid-file") + 1]
            open(pid_file, "w").write(str(os.getpid()))
            print("fake router up", flush=True)
            time.sleep(60)
            """
        )
    )
    os.environ["PYTHONPATH"] = str(tmp_path / "fake")
    try:
        local.start()
    finally:
        del os.environ["PYTHONPATH"]
    for _attempt in range(100):
        if local.is_running():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert local.is_running()
    pid = local.supervisor_pid()
    assert os.getsid(pid) == pid  # its own session: no terminal or pipe ties it to Ansible
    fds = os.listdir(f"/proc/{pid}/fd")
    assert sorted(fds) == ["0", "1", "2"]
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert local.stop(timeout=5) is True
    assert not local.is_running()
    assert "fake router up" in local.paths.log_file.read_text()


def test_check_config_reports_missing_router(local):
    local.metadata.router_python = "/nonexistent/python"
    with pytest.raises(SkiffError, match="router_python: cannot run /nonexistent/python"):
        local.check_config(b"{}")


class Canned:
    """A platform whose status answers come from a list."""

    def __init__(self, answers, paths):
        self.answers = list(answers)
        self.paths = paths
        self.metadata = SiteMetadata(name="east")

    def statuses(self):
        return [self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]]

    def has_exited(self):
        return False

    def log_location(self):
        return "the log"

    def log_tail(self, lines=20):
        return ["boom: cannot bind"]

    def not_ready_hint(self):
        return "Check the log"

    config_wait_seconds = 0.2


def test_wait_for_config_outcomes(tmp_path):
    paths = SitePaths(tmp_path)
    good = {"site": "east", "config": {"sha256": "new", "error": None}}
    old = {"site": "east", "config": {"sha256": "old", "error": None}}
    fast = dict(sleep=lambda s: None, timeout=0.2)
    assert wait_for_config(Canned([None, old, good], paths), "new", site="east", **fast) == good
    rejected = {"site": "east", "config": {"sha256": "old", "error": "links[0].cost: must be >= 1"}}
    with pytest.raises(SkiffError, match=r"rejected the new config: links\[0\].cost"):
        wait_for_config(Canned([rejected], paths), "new", site="east", **fast)
    other = {"site": "west", "config": {"sha256": "x", "error": None}}
    with pytest.raises(SkiffError, match="answered by site 'west'"):
        wait_for_config(Canned([other], paths), "new", site="east", **fast)
    with pytest.raises(SkiffError) as err:
        wait_for_config(Canned([None], paths), "new", site="east", **fast)
    assert "admin endpoint never answered" in str(err.value)
    assert "boom: cannot bind" in str(err.value)
