"""Platform `systemd`: the router runs as the unit `skiff-<site>.service` (private).

The router is installed on the host in its own virtualenv (the role
skiff.fleet.site does that; `router_python` names its interpreter) and runs
as an unprivileged system user (`router_user`, default `skiff`). The site
directory (config, certificates; `/etc/skiff/<site>` with the role) belongs to
root except for what the router reads: the directories on its way and its own
TLS material (server and link keys, 0600), which are chowned to the router user.
The site CA key and the tokens a site issued stay root-only.

The unit is written by this platform, so `skiff.fleet.site` compares it like
any other file (normalize -> compare -> act): a changed unit restarts the
router, a changed config only reloads it (`ExecReload` sends SIGHUP).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import ROUTER_NOFILE
from ansible_collections.skiff.fleet.plugins.module_utils.platform_local import (
    _SECRET_LINE,
    LocalPlatform,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DIR_MODE,
    PUBLIC_MODE,
    SiteMetadata,
    SitePaths,
    atomic_write,
)

UNIT_DIR = Path("/etc/systemd/system")
STATE_ROOT = "/var/lib/skiff"
DEFAULT_USER = "skiff"
DEFAULT_VENV_PYTHON = "/opt/skiff/venv/bin/python"
ACTIVE_STATES = ("active", "activating", "reloading")
HEADER = "# Managed by skiff.fleet (skiff.fleet.site); local changes are overwritten.\n"

# Hardening that works for a process that only needs its config, TCP sockets
# and its state directory. Ports below 1024 would need AmbientCapabilities.
HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
UMask=0077
"""


def run(command: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SkiffError(f"cannot run {command[0]}: {exc}", field="platform") from None


class SystemdPlatform(LocalPlatform):
    """Shares config checks and the admin status with `local`; the process belongs to systemd."""

    name = "systemd"

    def __init__(self, paths: SitePaths, metadata: SiteMetadata) -> None:
        super().__init__(paths, metadata)
        self._unit_started = False

    # -- names ------------------------------------------------------------

    @property
    def site(self) -> str:
        return self.metadata.name

    @property
    def unit(self) -> str:
        return f"skiff-{self.site}.service"

    @property
    def unit_path(self) -> Path:
        return UNIT_DIR / self.unit

    @property
    def state_dir(self) -> str:
        return f"{STATE_ROOT}/{self.site}"

    @property
    def user(self) -> str:
        return str(self.metadata.options.get("router_user") or DEFAULT_USER)

    @property
    def python(self) -> str:
        return self.metadata.router_python or DEFAULT_VENV_PYTHON

    # -- host checks ------------------------------------------------------

    def require_systemd(self) -> None:
        if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
            raise SkiffError(
                f"platform {self.name} needs systemd as the init system of this host, and "
                "/run/systemd/system is missing (this host runs no systemd); use "
                "skiff_platform: local here, or boot the host with systemd",
                field="platform",
            )

    def ids(self) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise SkiffError(
                f"user {self.user!r} does not exist on this host; create it (the role "
                "skiff.fleet.site does) or set router_user",
                field="router_user",
            ) from None
        return entry.pw_uid, entry.pw_gid

    def require_router(self) -> None:
        if not os.access(self.python, os.X_OK):
            raise SkiffError(
                f"the router is not installed here: {self.python} does not exist; the role "
                "skiff.fleet.site installs it (or set router_python to a Python with skiff_router)",
                field="router_python",
            )

    def router_sections(self, sections: dict[str, Any]) -> dict[str, Any]:
        # The unit's StateDirectory: the router keeps grant redemptions there.
        return dict(sections, state_dir=self.state_dir)

    # -- the unit -----------------------------------------------------------

    def exec_start(self) -> str:
        return f"{self.python} -m skiff_router run --config {self.paths.config}"

    def unit_text(self) -> str:
        uid_gid = self.ids()
        group = grp.getgrgid(uid_gid[1]).gr_name
        return (
            HEADER
            + "[Unit]\n"
            + f"Description=skiff router of site {self.site}\n"
            + "Documentation=https://github.com/skiff/fleet\n"
            + "After=network-online.target\nWants=network-online.target\n\n"
            + "[Service]\nType=exec\n"
            + f"User={self.user}\nGroup={group}\n"
            + "Environment=PYTHONUNBUFFERED=1\n"
            + f"ExecStart={self.exec_start()}\n"
            + "ExecReload=/bin/kill -HUP $MAINPID\n"
            + "Restart=on-failure\nRestartSec=1s\n"
            # The router stops within STOP_GRACE (10 s) even with workers; systemd's 90 s
            # default would keep a dead router's site down that long wherever the
            # cgroup-empty notice is slow (systemd in a container).
            + "TimeoutStopSec=15\n"
            + f"LimitNOFILE={ROUTER_NOFILE}\n"
            + f"StateDirectory=skiff/{self.site}\nStateDirectoryMode=0700\n"
            + f"WorkingDirectory={self.state_dir}\n"
            + f"ReadWritePaths={self.state_dir}\n"
            + HARDENING
            + "\n[Install]\nWantedBy=multi-user.target\n"
        )

    def unit_files(self) -> dict[Path, str]:
        """Every file this platform keeps on the host, with its wanted content."""
        return {self.unit_path: self.unit_text()}

    def _owned_paths(self) -> list[Path]:
        """What the router reads and must own: directories on its way, its own TLS files,
        the listeners' issued certificates and the admin token."""
        root = self.paths.root
        owned_dirs = (
            self.paths.tls_dir,
            self.paths.links_dir,
            self.paths.listeners_dir,
            self.paths.admin_dir,
        )
        wanted = [root, self.paths.ca_dir, *owned_dirs, Path(self.state_dir)]
        for directory in owned_dirs:
            if directory.is_dir():
                wanted.extend(sorted(directory.rglob("*")))
        return [path for path in wanted if path.exists()]

    def _ownership_drift(self) -> list[Path]:
        uid, gid = self.ids()
        drift = []
        for path in self._owned_paths():
            info = path.lstat()
            if (info.st_uid, info.st_gid) != (uid, gid):
                drift.append(path)
        return drift

    def fix_ownership(self) -> None:
        uid, gid = self.ids()
        for path in self._ownership_drift():
            os.lchown(path, uid, gid)

    # -- Platform: plan and install -------------------------------------------

    def plan(self) -> list[tuple[str, bool]]:
        self.require_systemd()
        try:
            self.ids()
        except SkiffError:
            # Check mode before the role created the user: nothing of ours can exist yet.
            if self.unit_path.exists():
                raise
            return [(f"write the unit {self.unit}", False), (f"enable {self.unit}", False)]
        actions: list[tuple[str, bool]] = [
            (f"{'write' if current is None else 'update'} {path}", current is not None)
            for path, (current, _text) in self._stale_unit_files().items()
        ]
        if not self._is_enabled():
            actions.append((f"enable {self.unit}", False))
        if not Path(self.state_dir).is_dir():
            actions.append((f"make the router's state directory {self.state_dir}", False))
        drift = self._ownership_drift()
        if drift:
            actions.append((f"give {self.user} the router's files ({len(drift)} paths)", False))
        return actions

    def _stale_unit_files(self) -> dict[Path, tuple[str | None, str]]:
        """Unit files whose content on disk (None: missing) is not what it must be."""
        stale: dict[Path, tuple[str | None, str]] = {}
        for path, text in self.unit_files().items():
            try:
                current: str | None = path.read_text()
            except FileNotFoundError:
                current = None
            if current != text:
                stale[path] = (current, text)
        return stale

    def install(self) -> None:
        self.require_systemd()
        stale = self._stale_unit_files()
        for path, (_current, text) in stale.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text.encode(), PUBLIC_MODE)
        if stale:
            self._systemctl("daemon-reload")
        if not self._is_enabled():
            self._systemctl("enable", self.unit)
        # StateDirectory makes it for a unit with User=; a container's unit has none.
        Path(self.state_dir).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.fix_ownership()

    def uninstall(self) -> list[str]:
        """Remove what install() put on the host; returns what was (or would be) removed."""
        return [f"remove {path}" for path in self.unit_files() if path.exists()]

    def remove_files(self) -> None:
        with contextlib.suppress(SkiffError):
            self._systemctl("disable", self.unit)
        removed = False
        for path in self.unit_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        if removed:
            self._systemctl("daemon-reload")
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- Platform: lifecycle ----------------------------------------------------

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess:
        done = run(["systemctl", *args])
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SkiffError(
                f"systemctl {' '.join(args)} failed: {detail}; see {self.log_location()}",
                field="platform",
            )
        return done

    def _show(self) -> dict[str, str]:
        done = run(["systemctl", "show", self.unit, "-p", "ActiveState,SubState,LoadState"])
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def _is_enabled(self) -> bool:
        return run(["systemctl", "is-enabled", "--quiet", self.unit]).returncode == 0

    def is_running(self) -> bool:
        if not Path("/run/systemd/system").is_dir():
            return False
        return self._show().get("ActiveState") in ACTIVE_STATES

    def has_exited(self) -> bool:
        if not self._unit_started:
            return False
        state = self._show()
        return state.get("ActiveState") in ("failed", "inactive") or (
            state.get("SubState") == "auto-restart"
        )

    def start(self) -> None:
        self.require_router()
        self.install()
        if self._show().get("ActiveState") == "failed":
            self._systemctl("reset-failed", self.unit)
        self._systemctl("start", self.unit)
        self._unit_started = True

    def stop(self, timeout: float = 10.0) -> bool:
        if not Path("/run/systemd/system").is_dir() or not self.unit_path.exists():
            return False
        was_running = self.is_running()
        self._systemctl("stop", self.unit)
        return was_running

    def reload(self) -> None:
        # Files written since the last start (link keys) must be readable by the router.
        self.fix_ownership()
        if not self.is_running():
            raise SkiffError("cannot reload: the router is not running", field="platform")
        self._systemctl("reload", self.unit)

    # -- logs -----------------------------------------------------------------

    def log_location(self) -> str:
        return f"journalctl -u {self.unit}"

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            done = run(
                ["journalctl", "-u", self.unit, "-n", str(lines * 2), "--no-pager", "-o", "cat"]
            )
        except SkiffError:
            return []
        kept = [line for line in done.stdout.splitlines() if not _SECRET_LINE.search(line)]
        return kept[-lines:]

    def describe(self) -> dict[str, Any]:
        return {"unit": self.unit, "user": self.user, "state_dir": self.state_dir}
