"""Platform `local`: the router runs as a supervised process of the managing user (private).

`skiff_router supervise` is started in its own session with stdin from
/dev/null, output appended to `logs/router.log` and every other descriptor
closed, so Ansible (which waits on its module's pipes) never hangs on it.
The pid file alone is not trusted: a pid counts as ours only while
`/proc/<pid>/cmdline` names skiff_router and this site's config path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    check_config_problems,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    PUBLIC_MODE,
    ConfigStore,
    FileConfigStore,
    FileSecretStore,
    SecretStore,
    SiteMetadata,
    SitePaths,
    ensure_dir,
)

STATUS_TIMEOUT = 2.0
# Lines that look like secrets are dropped from log excerpts, whatever wrote them.
_SECRET_LINE = re.compile(r"PRIVATE KEY|skiff1\.[A-Za-z0-9_-]{16,}")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reap(pid: int) -> None:
    # A supervisor started by this very process is our child: reap it so it is not a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class LocalPlatform(Platform):
    name = "local"

    def __init__(self, paths: SitePaths, metadata: SiteMetadata) -> None:
        super().__init__(paths, metadata)
        self._started: subprocess.Popen | None = None
        self._config = FileConfigStore(paths.config)
        self._secrets = FileSecretStore(paths)

    # -- where config and secrets live: the site directory ---------------------

    @property
    def config(self) -> ConfigStore:
        return self._config

    @property
    def secrets(self) -> SecretStore:
        return self._secrets

    def router_sections(self, sections: dict[str, Any]) -> dict[str, Any]:
        # What the router keeps across restarts (grant redemptions), beside its config.
        return dict(sections, state_dir=str(self.paths.root / "state"))

    # -- process discovery -------------------------------------------------

    @property
    def python(self) -> str:
        return self.metadata.router_python or "python3"

    def _is_ours(self, pid: int) -> bool:
        # Exact argv shapes only: a pid that is about to be signalled must be
        # this site's router, not an editor or `tail` of a file in the site dir.
        args = _cmdline(pid)
        runs_router = any(
            args[i : i + 2] == ["-m", "skiff_router"] for i in range(len(args) - 1)
        ) or any(os.path.basename(a) == "skiff-router" for a in args[:2])
        has_config = any(
            args[i : i + 2] == ["--config", str(self.paths.config)] for i in range(len(args) - 1)
        )
        return runs_router and has_config

    def supervisor_pid(self) -> int | None:
        try:
            pid = int(self.paths.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and self._is_ours(pid) else None

    def _all_pids(self) -> list[int]:
        """Every process running this site's router: the supervisor and any orphaned router."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and self._is_ours(int(entry)):
                pids.append(int(entry))
        return pids

    def is_running(self) -> bool:
        return self.supervisor_pid() is not None

    def plan(self) -> list[tuple[str, bool]]:
        pid = self.supervisor_pid()
        running_python = _cmdline(pid)[:1] if pid is not None else []
        if running_python and running_python[0] != self.python:
            return [(f"run the router with {self.python} (router_python changed)", True)]
        return []

    def has_exited(self) -> bool:
        return self._started is not None and self._started.poll() is not None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        # A router left over from a killed supervisor would hold the ports: end it first.
        self._terminate(self._all_pids(), timeout=5.0)
        ensure_dir(self.paths.run_dir)
        ensure_dir(self.paths.logs_dir)
        command = [
            self.python,
            "-m",
            "skiff_router",
            "supervise",
            "--config",
            str(self.paths.config),
            "--pid-file",
            str(self.paths.pid_file),
            # Kept bounded by the supervisor (copy and truncate at 10 MiB, 5 copies).
            "--log-file",
            str(self.paths.log_file),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log_fd = os.open(self.paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._started = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
                cwd=str(self.paths.root),
                env=env,
            )
        except OSError as exc:
            raise SkiffError(
                f"cannot start {self.python} ({exc.strerror}); set router_python to a Python "
                "that has skiff_router installed",
                field="router_python",
            ) from None
        finally:
            os.close(log_fd)

    def stop(self, timeout: float = 10.0) -> bool:
        pids = self._all_pids()
        supervisor = self.supervisor_pid()
        if supervisor is not None and supervisor not in pids:
            pids.insert(0, supervisor)
        if not pids:
            return False
        # The supervisor first: it stops its child and removes the pid file itself.
        if supervisor is not None:
            self._terminate([supervisor], timeout=timeout)
        self._terminate(self._all_pids(), timeout=timeout)
        with contextlib.suppress(FileNotFoundError):
            self.paths.pid_file.unlink()
        return True

    def _terminate(self, pids: list[int], timeout: float) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL each process group that is left."""
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        alive = list(pids)
        while alive and time.monotonic() < deadline:
            for pid in alive:
                _reap(pid)
            alive = [pid for pid in alive if self._is_ours(pid)]
            if alive:
                time.sleep(0.05)
        for pid in alive:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
            _reap(pid)

    def reload(self) -> None:
        pid = self.supervisor_pid()
        if pid is None:
            raise SkiffError("cannot reload: the router is not running", field="platform")
        os.kill(pid, signal.SIGHUP)

    # -- config and status -----------------------------------------------

    def check_config(self, data: bytes) -> list[str]:
        # The candidate sits beside router.json, so its relative paths (TLS files
        # of links and listeners) resolve as the router will resolve them. It ends
        # in `.json` because the router picks its parser by the name: checked as
        # YAML, JSON it would reject could pass.
        ensure_dir(self.paths.root)
        fd, tmp = tempfile.mkstemp(prefix=".router.check.", suffix=".json", dir=self.paths.root)
        try:
            os.fchmod(fd, PUBLIC_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return self.check_config_file(Path(tmp))
        finally:
            os.unlink(tmp)

    def check_config_file(self, path: Path) -> list[str]:
        command = [self.python, "-m", "skiff_router", "check-config", str(path)]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SkiffError(
                f"cannot run {self.python} -m skiff_router check-config ({exc}); set "
                "router_python to a Python that has skiff_router installed",
                field="router_python",
            ) from None
        problems = check_config_problems(path, done.returncode, done.stdout)
        if problems is not None:
            return problems
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SkiffError(
            f"{self.python} -m skiff_router check-config failed (exit {done.returncode}: "
            f"{detail}); set router_python to a Python that has skiff_router installed",
            field="router_python",
        )

    def admin_access(self) -> tuple[str, dict[str, str]]:
        """The admin endpoint's base URL and the headers a request needs (the bearer
        token from the config's `admin.token_file`, read where the router reads it)."""
        try:
            admin = json.loads(self.config.read() or b"{}").get("admin") or {}
        except (OSError, ValueError, AttributeError):
            admin = {}
        host = admin.get("host") or "127.0.0.1"
        # A router bound to every address is reached on loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        port = int(admin.get("port") or 9191)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        headers = {}
        if admin.get("token_file"):
            try:
                token = (self.paths.root / admin["token_file"]).read_text().strip()
            except OSError:
                token = ""
            headers["Authorization"] = f"Bearer {token}"
        return f"http://{netloc}", headers

    def statuses(self) -> list[dict[str, Any] | None]:
        return [self.status()]

    def status(self) -> dict[str, Any] | None:
        url, headers = self.admin_access()
        # No proxies: the admin endpoint is local, whatever http_proxy says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(url + "/v1/status", headers=headers)
        try:
            with opener.open(request, timeout=STATUS_TIMEOUT) as response:
                return json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def log_location(self) -> str:
        return f"the router log {self.paths.log_file}"

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            with open(self.paths.log_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                text = handle.read().decode(errors="replace")
        except OSError:
            return []
        kept = [line for line in text.splitlines() if not _SECRET_LINE.search(line)]
        return kept[-lines:]
