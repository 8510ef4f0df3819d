"""Stand-ins for the router platform, so module logic runs without a router process."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.site import SiteParams, run_site
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    ConfigStore,
    FileConfigStore,
    FileSecretStore,
    SecretStore,
    sha256_bytes,
)


class FakePlatform(Platform):
    """A router that applies configs instantly and reports them like `/v1/status`."""

    name = "fake"

    def __init__(self, paths, metadata):
        super().__init__(paths, metadata)
        self.running = False
        self.in_force: bytes | None = None
        self.config_error: str | None = None
        self.busy_ports: set[int] = set()
        self.reject_reloads = False
        self.check_problems: list[str] = []
        self.calls: list[str] = []
        self.routers: list[dict[str, Any]] = []
        self.links: list[dict[str, Any]] = []  # as /v1/status lists them
        self.routing_keys: dict[str, Any] = {}
        # A config containing this text makes the router die at start.
        self.dies_on: str | None = None
        self.exited = False
        self.status_reads = 0
        self.started_python: str | None = None
        self._config = FileConfigStore(paths.config)
        self._secrets = FileSecretStore(paths)

    def router_sections(self, sections):
        # As the local platform: grant redemptions are kept beside the config.
        return dict(sections, state_dir=str(self.paths.root / "state"))

    @property
    def config(self) -> ConfigStore:
        return self._config

    @property
    def secrets(self) -> SecretStore:
        return self._secrets

    def plan(self) -> list[tuple[str, bool]]:
        if self.running and self.started_python != self.metadata.router_python:
            return [("run the router with the new router_python", True)]
        return []

    def is_running(self) -> bool:
        return self.running

    def has_exited(self) -> bool:
        return self.exited

    def start(self) -> None:
        self.calls.append("start")
        self.started_python = self.metadata.router_python
        data = self.paths.config.read_bytes()
        self.exited = bool(self.dies_on and self.dies_on in data.decode())
        self.running = not self.exited
        self.in_force = None if self.exited else data

    def stop(self, timeout: float = 10.0) -> bool:
        self.calls.append("stop")
        was, self.running = self.running, False
        return was

    def reload(self) -> None:
        self.calls.append("reload")
        if self.reject_reloads:
            self.config_error = "listeners[0].port: rejected by the fake"
            return
        self.in_force = self.paths.config.read_bytes()
        self.config_error = None

    def check_config(self, data: bytes) -> list[str]:
        self.calls.append("check_config")
        json.loads(data)
        return list(self.check_problems)

    def statuses(self) -> list[dict[str, Any] | None]:
        return [self.status()]

    def status(self) -> dict[str, Any] | None:
        self.status_reads += 1
        if not self.running:
            return None
        config = json.loads(self.in_force or b"{}")
        listeners = []
        for entry in config.get("listeners", []):
            busy = entry["port"] in self.busy_ports
            listeners.append(
                dict(
                    entry,
                    state="error" if busy else "listening",
                    error="address already in use" if busy else None,
                )
            )
        access = config.get("link_access")
        if access is not None:
            busy = access["port"] in self.busy_ports
            access = {
                "host": access["host"],
                "port": access["port"],
                "state": "error" if busy else "listening",
                "error": "Address already in use" if busy else None,
            }
        return {
            "site": config.get("site"),
            "link_access": access,
            "config": {
                "path": str(self.paths.config),
                "sha256": sha256_bytes(self.in_force or b""),
                "error": self.config_error,
            },
            "links": self.links,
            "routers": self.routers or [{"id": config.get("site"), "reachable": True, "cost": 0}],
            "listeners": listeners,
            "connectors": config.get("connectors", []),
            "routing_keys": self.routing_keys,
        }


class FakeFleet:
    """One FakePlatform per site directory, kept across module runs like a real router."""

    def __init__(self):
        self.platforms: dict[Path, FakePlatform] = {}

    def factory(self, name, paths, metadata) -> FakePlatform:
        platform = self.platforms.get(paths.root)
        if platform is None:
            platform = self.platforms[paths.root] = FakePlatform(paths, metadata)
        platform.metadata = metadata
        return platform

    def __getitem__(self, root: Path) -> FakePlatform:
        return self.platforms[root]


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def services(fleet):
    """Keyword arguments injecting the fake platform and a wait that never sleeps long."""
    wait = functools.partial(wait_for_config, timeout=0.5, sleep=lambda _s: None)
    return {"platform_factory": fleet.factory, "wait": wait}


@pytest.fixture
def east(tmp_path, services):
    """A site that accepts links, on the fake platform (the token tests issue from it)."""
    site = SiteParams(
        name="east",
        base_dir=str(tmp_path),
        router_python="py",
        link_access=True,
        link_endpoint={"host": "127.0.0.1", "port": 55671},
    )
    run_site(site, False, **services)
    return site
