"""How a site's router runs: the platform interface and its lookup (private to skiff.fleet).

A platform is a set of small capabilities, each answering one question the
modules ask:

- `ConfigStore` (`platform.config`): where the router config lives (a file on
  the host, a ConfigMap): read and write its bytes.
- `SecretStore` (`platform.secrets`): where the site's CA pair, the server
  pair, each link's credentials and the tokens the site issued live, and the
  paths under which the router config names them.
- lifecycle: `plan`, `install`, `start`, `stop`, `is_running`, `uninstall`,
  `remove_files`.
- status access: `statuses()` (one `/v1/status` document per router the site
  runs; None for a router that does not answer) and `status()` (the first).
- reload and its wait: `reload()`, then `wait_for_config()` (below), which
  every platform shares: it only reads `statuses()`.
- config check: `check_config(data)` takes the candidate bytes, so no
  platform needs a local file to check a config.

One file per platform (`platform_<name>.py`) implements `Platform`; the
lookup imports only the chosen one, so a platform's heavy dependencies (the
kubernetes client) load only where that platform is used. Ansible bundles
module_utils by scanning import statements, which is why each platform has its
one import line in `_load()` instead of an importlib call with a computed name.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    ConfigStore,
    SecretStore,
    SiteMetadata,
    SitePaths,
)

PLATFORMS = ("local", "systemd", "podman", "kubernetes")
CONFIG_WAIT_SECONDS = 15.0
POLL_SECONDS = 0.2
# Open files a router may hold (systemd LimitNOFILE, podman --ulimit): every flow
# with a socket here is one; the router keeps its flows below the limit it gets.
ROUTER_NOFILE = 65536
NOT_RUNNING_NOTE = "router not running: the change takes effect when skiff.fleet.site starts it"


class Platform(ABC):
    """Runs one site's router. Methods raise SkiffError for failures a user can act on."""

    name = "abstract"
    # False when the platform only writes what should run (render-only): nothing
    # is started, reloaded or waited for.
    applies = True
    # How long wait_for_config() waits by default; pods take longer than processes.
    config_wait_seconds = CONFIG_WAIT_SECONDS

    def __init__(self, paths: SitePaths, metadata: SiteMetadata):
        self.paths = paths
        self.metadata = metadata

    # -- capabilities: where config and secrets live ---------------------------

    @property
    @abstractmethod
    def config(self) -> ConfigStore:
        """The router config's store."""

    @property
    @abstractmethod
    def secrets(self) -> SecretStore:
        """The site's keys and certificates."""

    # -- lifecycle --------------------------------------------------------------

    @abstractmethod
    def is_running(self) -> bool:
        """True when this site's router runs."""

    @abstractmethod
    def start(self) -> None:
        """Start the router; returns without waiting for its config to be in force."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the router; True when something was running."""

    def plan(self) -> list[tuple[str, bool]]:
        """Changes this platform needs besides config and secrets (units, objects).

        Each is (action, whether a running router must restart for it); [] when none.
        """
        return []

    def diff(self) -> dict[str, Any]:
        """Before/after data of what plan() would change ({} when there is nothing to show)."""
        return {}

    def restart_for_workers(self, before: int | None, after: int | None) -> str | None:
        """Why a running router restarts when its `workers` changes (None: it need
        not, the platform starts the new count itself). A router starts its worker
        processes when it starts; a reload keeps their number."""

        def count(n: int | None) -> str:
            return "one per CPU" if n is None else str(n)

        return f"workers {count(before)} -> {count(after)}"

    def install(self) -> None:
        """Carry out plan(); called before the router is started, restarted or reloaded."""
        return None

    def uninstall(self) -> list[str]:
        """What removing the site also removes on this platform (unit files, objects)."""
        return []

    def remove_files(self) -> None:
        """Remove what uninstall() listed; called after stop()."""
        return None

    # -- router config as the platform needs it -----------------------------------

    def router_sections(self, sections: dict[str, Any]) -> dict[str, Any]:
        """The site module's config sections as this platform runs them (bind addresses)."""
        return sections

    def link_endpoints(
        self, wanted: list[dict[str, Any]], *, wait: bool = False
    ) -> list[dict[str, Any]]:
        """Where other sites dial this one (what tokens carry).

        `wait`: the platform's objects exist, so an address known only then
        (a load balancer's) may be waited for.
        """
        return wanted

    def server_hosts(self, endpoints: list[dict[str, Any]]) -> list[str]:
        """The server certificate's SANs: every name a dialing router may verify."""
        return [e["host"] for e in endpoints]

    # -- status access, reload and its wait ---------------------------------------

    @abstractmethod
    def statuses(self) -> list[dict[str, Any] | None]:
        """One admin `/v1/status` document per router of the site (None: it does not answer)."""

    def status(self) -> dict[str, Any] | None:
        """The status of the site's (first) router, or None when nothing answers."""
        found = self.statuses()
        return next((s for s in found if s is not None), None)

    @abstractmethod
    def reload(self) -> None:
        """Make the running router(s) re-read config and secrets."""

    def has_exited(self) -> bool:
        """True when a router started by this process already died (fail fast instead of waiting)."""
        return False

    def not_running_note(self) -> str:
        """What a change means while the router does not run."""
        return NOT_RUNNING_NOTE

    def log_location(self) -> str:
        """Where a user finds the router's log on this platform."""
        return "the router's log"

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines of the router's log, without secrets; [] when there is none."""
        return []

    def not_ready_hint(self) -> str:
        """What to check when the router does not come up."""
        return (
            f"Check {self.log_location()}, that admin and link ports are free, and that "
            f"router_python ({self.metadata.router_python or 'default'}) has skiff_router installed"
        )

    # -- config check -----------------------------------------------------------------

    @abstractmethod
    def check_config(self, data: bytes) -> list[str]:
        """Problems the router finds in config `data` (`<field>: <what>`); [] if ok."""


def check_config_problems(path: Any, returncode: int, stdout: str) -> list[str] | None:
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
    if name == "kubernetes":
        from ansible_collections.skiff.fleet.plugins.module_utils import platform_kubernetes

        return platform_kubernetes.KubernetesPlatform
    raise SkiffError(
        f"unknown platform {name!r} (supported: {', '.join(PLATFORMS)})", field="platform"
    )


# One platform object per site and settings in a module run: the site store and
# the module logic share it (a kubernetes platform holds an API connection).
_INSTANCES: dict[tuple[str, str, str], Platform] = {}


def get_platform(name: str, paths: SitePaths, metadata: SiteMetadata) -> Platform:
    key = (name, str(paths.root), repr(sorted(metadata.to_dict().items())))
    platform = _INSTANCES.get(key)
    if platform is None:
        platform = _INSTANCES[key] = _load(name)(paths, metadata)
    return platform


def wait_for_config(
    platform: Platform,
    wanted_sha256: str,
    *,
    site: str,
    previous_error: str | None = None,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until every router of the site runs the config whose bytes hash to `wanted_sha256`.

    A `config.error` that differs from `previous_error` (the one reported
    before the reload) means the router rejected this config: fail at once.
    Returns the first router's status.
    """
    timeout = platform.config_wait_seconds if timeout is None else timeout
    deadline = clock() + timeout
    last: dict[str, Any] | None = None
    while True:
        found = platform.statuses()
        done = bool(found)
        for status in found:
            if status is None:
                done = False
                continue
            last = status
            if status.get("site") not in (None, site):
                raise SkiffError(
                    f"the admin address of this site is answered by site {status.get('site')!r}; "
                    "give each site on a host its own admin_port",
                    site=site,
                    field="admin_port",
                )
            config = status.get("config") or {}
            if config.get("sha256") != wanted_sha256:
                done = False
                error = config.get("error")
                if error and error != previous_error:
                    raise SkiffError(
                        f"the router rejected the new config: {error}",
                        site=site,
                        field="router.json",
                    )
        if done:
            return next(s for s in found if s is not None)
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
    return SkiffError(f"router {what}: {seen}. {platform.not_ready_hint()}{log}", site=site)
