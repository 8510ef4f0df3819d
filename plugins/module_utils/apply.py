"""Changing a site's router config safely (private to skiff.fleet; not a public API).

Shared by every module that edits the router config: the result type, and
`ConfigApplier`, which is built from the platform's capabilities: it checks a
new config with the platform's config check (the router's own `check-config`),
replaces it in the platform's config store, reloads the running router(s),
waits until their `/v1/status` shows the new sha256, asks the caller whether
the router reports the change as failed, and if so puts the previous config back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    SiteStore,
    dump_json,
    sha256_bytes,
)

# Given the status after a reload, say what failed (None when the change took).
Verifier = Callable[[dict[str, Any]], "str | None"]


@dataclass
class Result:
    """What a module run did (or would do in check mode)."""

    changed: bool = False
    actions: list[str] = field(default_factory=list)
    diff: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # Shown as Ansible warnings: what needs a person soon (an expiring credential).
    warnings: list[str] = field(default_factory=list)

    def act(self, action: str) -> None:
        self.changed = True
        self.actions.append(action)

    def note(self, action: str) -> None:
        """Something worth saying that is not a change."""
        self.actions.append(action)

    def as_module_result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"changed": self.changed, "actions": self.actions}
        if self.diff is not None:
            out["diff"] = self.diff
        out.update(self.values)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


class ConfigApplier:
    """Puts a new router config in force on one site, or leaves the old one in force."""

    def __init__(
        self,
        store: SiteStore,
        platform: Platform,
        *,
        wait: Callable[..., dict[str, Any]] = wait_for_config,
    ):
        self.store = store
        self.platform = platform
        # One config store for the module run: the platform's.
        store.config = platform.config
        self._wait = wait

    @property
    def site(self) -> str:
        return self.store.site

    def validate(self, data: bytes) -> None:
        """Run the platform's config check on `data` before it may replace the config in force."""
        problems = self.platform.check_config(data)
        if problems:
            raise SkiffError(
                "the router rejects the new config: " + "; ".join(problems),
                site=self.site,
                field="router.json",
            )

    def write(self, config: dict[str, Any], *, checked: bool = False) -> tuple[bytes | None, bytes]:
        """Validate (unless `checked` already) and write `config`; returns (previous, new bytes)."""
        previous = self.platform.config.read()
        data = dump_json(config)
        if data != previous:
            if not checked:
                self.validate(data)
            self.platform.config.write(data)
        return previous, data

    def current_error(self) -> str | None:
        status = self.platform.status()
        return ((status or {}).get("config") or {}).get("error")

    def apply(
        self,
        config: dict[str, Any],
        result: Result,
        *,
        verify: Verifier | None = None,
    ) -> dict[str, Any] | None:
        """Write `config` and, if the router runs, reload it; returns the status after the reload.

        On a rejected or failed reload, the previous file goes back, the router
        reloads it, and a SkiffError says what failed.
        """
        running = self.platform.is_running()
        previous_error = self.current_error() if running else None
        previous, data = self.write(config)
        if not running:
            result.note(self.platform.not_running_note())
            return None
        return self.reload(data, previous, previous_error, verify)

    def reload(
        self,
        data: bytes,
        previous: bytes | None,
        previous_error: str | None,
        verify: Verifier | None = None,
    ) -> dict[str, Any]:
        try:
            self.platform.reload()
            status = self._wait(
                self.platform, sha256_bytes(data), site=self.site, previous_error=previous_error
            )
            problem = verify(status) if verify else None
            if problem:
                raise SkiffError(problem, site=self.site)
        except SkiffError as failure:
            if previous is not None and previous != data:
                self._restore(previous)
                failure.message += "; the previous config was restored"
                failure.args = (str(failure),)
            raise
        return status

    def _restore(self, previous: bytes) -> None:
        self.platform.config.write(previous)
        try:
            self.platform.reload()
            self._wait(self.platform, sha256_bytes(previous), site=self.site)
        except SkiffError:
            # The original failure is what the user must see; the restored file is on disk.
            pass
