"""How a site's router runs: the platform interface and its lookup (private to skiff.fleet).

One file per platform (`platform_<name>.py`) implements `Platform`; the
lookup imports only the chosen one, so a platform's heavy dependencies
(kubernetes, podman clients) load only where that platform is used. Ansible
bundles module_utils by scanning import statements, which is why each platform
has its one import line in `_load()` instead of an importlib call with a
computed name.

`wait_for_config()` is the same for every platform: after start or reload,
poll `/v1/status` until the router reports the sha256 of the file on disk.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths

PLATFORMS = ("local", "systemd", "podman")
CONFIG_WAIT_SECONDS = 15.0
POLL_SECONDS = 0.2


class Platform(ABC):
    """Runs one site's router. Methods raise SkiffError for failures a user can act on."""

    name = "abstract"

    def __init__(self, paths: SitePaths, metadata: SiteMetadata):
        self.paths = paths
        self.metadata = metadata

    @abstractmethod
    def is_running(self) -> bool:
        """True when this site's router (its supervisor) runs."""

    @abstractmethod
    def start(self) -> None:
        """Start the router; returns without waiting for it to be ready."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the router; True when something was running."""

    @abstractmethod
    def reload(self) -> None:
        """Ask the running router to re-read its config (SIGHUP for local)."""

    @abstractmethod
    def check_config(self, path: Path) -> list[str]:
        """Problems the router finds in the config file at `path` (`<field>: <what>`); [] if ok."""

    @abstractmethod
    def status(self) -> dict[str, Any] | None:
        """The admin `/v1/status` document, or None when nothing answers."""

    def plan(self) -> list[tuple[str, bool]]:
        """Host changes this platform needs besides the site files (units, ownership).

        Each is (action, whether a running router must restart for it); [] when none.
        """
        return []

    def install(self) -> None:
        """Carry out plan(); called before the router is started, restarted or reloaded."""
        return None

    def uninstall(self) -> list[str]:
        """What removing the site also removes on this platform (unit files, state)."""
        return []

    def remove_files(self) -> None:
        """Remove what uninstall() listed; called after stop()."""
        return None

    def has_exited(self) -> bool:
        """True when a router started by this process already died (fail fast instead of waiting)."""
        return False

    def log_location(self) -> str:
        """Where a user finds the router's log on this platform."""
        return "the router's log"

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines of the router's log, without secrets; [] when there is none."""
        return []


def check_config_problems(path: Path, returncode: int, stdout: str) -> list[str] | None:
    """What `skiff-router check-config` found: [] when the config is fine, the
    `<field>: <what>` lines when it is not, None when the command failed otherwise."""
    if returncode == 0:
        return []
    prefix = f"{path}: "
    problems = [
        line[len(prefix) :] if line.startswith(prefix) else line
        for line in stdout.splitlines()
        if line.strip()
    ]
    return problems if returncode == 2 and problems else None


def _load(name: str) -> type[Platform]:
    if name == "local":
        from ansible_collections.skiff.fleet.plugins.module_utils import platform_local

        return platform_local.LocalPlatform
    if name == "systemd":
        from ansible_collections.skiff.fleet.plugins.module_utils import platform_systemd

        return platform_systemd.SystemdPlatform
    if name == "podman":
        from ansible_collections.skiff.fleet.plugins.module_utils import platform_podman

        return platform_podman.PodmanPlatform
    raise SkiffError(
        f"unknown platform {name!r} (supported: {', '.join(PLATFORMS)})", field="platform"
    )


def get_platform(name: str, paths: SitePaths, metadata: SiteMetadata) -> Platform:
    return _load(name)(paths, metadata)


def wait_for_config(
    platform: Platform,
    wanted_sha256: str,
    *,
    site: str,
    previous_error: str | None = None,
    timeout: float = CONFIG_WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll status until the router runs the config whose file hashes to `wanted_sha256`.

    A `config.error` that differs from `previous_error` (the one reported
    before the reload) means the router rejected this config: fail at once.
    """
    deadline = clock() + timeout
    last: dict[str, Any] | None = None
    while True:
        status = platform.status()
        if status is not None:
            last = status
            if status.get("site") not in (None, site):
                raise SkiffError(
                    f"the admin address of this site is answered by site {status.get('site')!r}; "
                    "give each site on a host its own admin_port",
                    site=site,
                    field="admin_port",
                )
            config = status.get("config") or {}
            if config.get("sha256") == wanted_sha256:
                return status
            error = config.get("error")
            if error and error != previous_error:
                raise SkiffError(
                    f"the router rejected the new config: {error}", site=site, field="router.json"
                )
        if platform.has_exited():
            raise _not_ready(platform, site, "the router process exited", last)
        if clock() >= deadline:
            raise _not_ready(platform, site, f"not ready after {timeout:g} s", last)
        sleep(POLL_SECONDS)


def _not_ready(platform: Platform, site: str, what: str, last: dict[str, Any] | None) -> SkiffError:
    if last is None:
        seen = "its admin endpoint never answered"
    else:
        seen = f"it still runs config sha256 {str((last.get('config') or {}).get('sha256'))[:12]}"
        if (last.get("config") or {}).get("error"):
            seen += f" (last error: {last['config']['error']})"
    tail = platform.log_tail()
    log = ("; last log lines:\n" + "\n".join(tail)) if tail else ""
    return SkiffError(
        f"router {what}: {seen}. Check {platform.log_location()}, "
        f"that admin and link ports are free, and that router_python "
        f"({platform.metadata.router_python or 'default'}) has skiff_router installed{log}",
        site=site,
    )
