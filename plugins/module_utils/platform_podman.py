"""Platform `podman`: the router runs in a container that systemd manages (private).

One container `skiff-<site>` from the router image (`image`), host networking
(the link, listener and admin ports are the host's, as with `systemd`), the
site directory mounted read-only at the same path, the process running as the
router user's uid/gid (rootful podman maps ids 1:1, so it reads the keys
chowned to that user), a read-only root file system and no capabilities.

systemd runs it through `skiff-<site>.service`: a Quadlet `.container` file
where podman >= 4.4 ships Quadlet, otherwise a unit written here that runs
`podman run` in the foreground (Debian 12 has podman 4.3). Either way
`systemctl reload` sends SIGHUP into the container (the router's hot reload)
and `Restart=on-failure` brings back a router that died. Only the podman CLI
is used.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    ROUTER_NOFILE,
    check_config_problems,
)
from ansible_collections.skiff.fleet.plugins.module_utils.platform_systemd import (
    HEADER,
    SystemdPlatform,
    run,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    SiteMetadata,
    SitePaths,
)

DEFAULT_IMAGE = "localhost/skiff-router:latest"
QUADLET_DIR = Path("/etc/containers/systemd")
QUADLET_MIN = (4, 4)


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2])) if match else (0, 0)


class PodmanPlatform(SystemdPlatform):
    name = "podman"

    def __init__(self, paths: SitePaths, metadata: SiteMetadata) -> None:
        super().__init__(paths, metadata)
        self._podman_version: tuple[int, int] | None = None

    @property
    def image(self) -> str:
        return str(self.metadata.options.get("image") or DEFAULT_IMAGE)

    @property
    def container(self) -> str:
        return f"skiff-{self.site}"

    @property
    def podman(self) -> str:
        found = shutil.which("podman")
        if found is None:
            raise SkiffError(
                "platform podman needs podman on this host and it is not installed; install "
                "it (apt-get install podman) or use skiff_platform: systemd",
                field="platform",
            )
        return found

    def require_router(self) -> None:
        if not self.image_id():
            raise SkiffError(
                f"image {self.image} is not on this host; let the role build it "
                "(skiff_podman_build_image: true) or load it (podman load)",
                field="image",
            )

    # -- podman facts -----------------------------------------------------------

    def podman_version(self) -> tuple[int, int]:
        if self._podman_version is None:
            done = run([self.podman, "version", "--format", "{{.Client.Version}}"])
            self._podman_version = _version(done.stdout)
        return self._podman_version

    def uses_quadlet(self) -> bool:
        return self.podman_version() >= QUADLET_MIN

    def image_id(self) -> str | None:
        done = run([self.podman, "image", "inspect", "--format", "{{.Id}}", self.image])
        return done.stdout.strip() or None if done.returncode == 0 else None

    def container_image_id(self) -> str | None:
        done = run([self.podman, "container", "inspect", "--format", "{{.Image}}", self.container])
        return done.stdout.strip() or None if done.returncode == 0 else None

    # -- the unit -----------------------------------------------------------------

    def run_options(self) -> list[str]:
        uid, gid = self.ids()
        root = str(self.paths.root)
        # cgroupns=private: podman's default on cgroup v1 (host) breaks inside nested hosts.
        return [
            "--network=host",
            "--cgroupns=private",
            f"--user={uid}:{gid}",
            "--read-only",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            # The container gets the podman process's limits, which the unit raises
            # (LimitNOFILE, clamped by systemd to what the host allows): a fixed
            # --ulimit above the host's hard limit stops the container from starting.
            "--ulimit=host",
            f"--volume={root}:{root}:ro",
            # Writable: where the router keeps grant redemptions (router config state_dir).
            f"--volume={self.state_dir}:{self.state_dir}:rw",
            f"--label=skiff.site={self.site}",
            "--env=PYTHONUNBUFFERED=1",
        ]

    def router_args(self) -> str:
        return f"run --config {self.paths.config}"

    def exec_start(self) -> str:
        options = " ".join(self.run_options())
        return (
            f"{self.podman} run --rm --replace --name {self.container} {options} "
            f"{self.image} {self.router_args()}"
        )

    def unit_text(self) -> str:
        podman, name = self.podman, self.container
        return (
            HEADER
            + "[Unit]\n"
            + f"Description=skiff router of site {self.site} (podman container {name})\n"
            + "After=network-online.target\nWants=network-online.target\n\n"
            + "[Service]\nType=exec\n"
            + "Environment=PODMAN_SYSTEMD_UNIT=%n\n"
            + f"ExecStartPre=-{podman} rm --force --ignore {name}\n"
            + f"ExecStart={self.exec_start()}\n"
            + f"ExecReload={podman} kill --signal HUP {name}\n"
            + f"ExecStop={podman} stop --ignore --time 10 {name}\n"
            + f"ExecStopPost=-{podman} rm --force --ignore {name}\n"
            + "KillMode=mixed\nRestart=on-failure\nRestartSec=1s\nTimeoutStartSec=120\n"
            + f"LimitNOFILE={ROUTER_NOFILE}\n"
            + "\n[Install]\nWantedBy=multi-user.target\n"
        )

    def quadlet_text(self) -> str:
        uid, gid = self.ids()
        root = str(self.paths.root)
        return (
            HEADER
            + "[Unit]\n"
            + f"Description=skiff router of site {self.site} (podman container {self.container})\n"
            + "After=network-online.target\nWants=network-online.target\n\n"
            + "[Container]\n"
            + f"ContainerName={self.container}\nImage={self.image}\n"
            + f"Exec={self.router_args()}\n"
            + f"Network=host\nUser={uid}\nGroup={gid}\nReadOnly=true\nDropCapability=all\n"
            + "NoNewPrivileges=true\nUlimit=host\n"
            + f"Volume={root}:{root}:ro\nVolume={self.state_dir}:{self.state_dir}:rw\n"
            + f"Label=skiff.site={self.site}\n"
            + "Environment=PYTHONUNBUFFERED=1\n\n"
            + "[Service]\n"
            + f"ExecReload={self.podman} kill --signal HUP {self.container}\n"
            + "Restart=on-failure\nRestartSec=1s\nTimeoutStartSec=120\n"
            + f"LimitNOFILE={ROUTER_NOFILE}\n"
            + "\n[Install]\nWantedBy=multi-user.target\n"
        )

    def unit_files(self) -> dict[Path, str]:
        if self.uses_quadlet():
            return {QUADLET_DIR / f"{self.container}.container": self.quadlet_text()}
        return {self.unit_path: self.unit_text()}

    def _is_enabled(self) -> bool:
        # A Quadlet unit is generated, and enabled by its [Install] section.
        return self.uses_quadlet() or super()._is_enabled()

    # -- Platform -------------------------------------------------------------------

    def plan(self) -> list[tuple[str, bool]]:
        actions = super().plan()
        wanted = self.image_id()
        if wanted is None:
            actions.append((f"run image {self.image} (not on this host yet)", False))
        elif self.is_running():
            current = self.container_image_id()
            if current and current != wanted:
                actions.append((f"run the new image {self.image}", True))
        return actions

    def check_config_file(self, path: Path) -> list[str]:
        root = str(self.paths.root)
        self.require_router()
        # As root in the container: this checks the config, not file ownership.
        done = run(
            [
                self.podman, "run", "--rm", "--network=none", "--cgroupns=private", "--user=0:0",
                f"--volume={root}:{root}:ro", self.image, "check-config", str(path),
            ],
            timeout=120,
        )  # fmt: skip
        problems = check_config_problems(path, done.returncode, done.stdout)
        if problems is not None:
            return problems
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SkiffError(
            f"podman run {self.image} check-config failed (exit {done.returncode}: {detail})",
            field="image",
        )

    def remove_files(self) -> None:
        super().remove_files()
        run([self.podman, "rm", "--force", "--ignore", self.container])

    def log_location(self) -> str:
        return f"journalctl -u {self.unit} (the container's output)"
