"""Putting a reconciled config in force on one site (private to skiff.fleet; not a public API).

`SiteConfigRunner.run()` reads the site's router config once (from the
platform's config store), asks the pure reconciler what changes, and when
something does, validates, writes and reloads once through `ConfigApplier`.
When nothing changes it stops there: no `check-config`, no write, no reload,
no status read. Links bring their credentials along (`Credentials`, from
link.py): stored before the config that names them, put back if the change
fails, removed after the router let go of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from ansible_collections.skiff.fleet.plugins.module_utils.apply import ConfigApplier, Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    get_platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.reconcile import (
    Kind,
    Reconciled,
    Wanted,
    reconcile,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    FileSecretStore,
    SecretStore,
    SiteMetadata,
    SitePaths,
    SiteStore,
    site_lock,
)

PlatformFactory = Callable[[str, SitePaths, SiteMetadata], Platform]
Verifier = Callable[[dict[str, Any]], "str | None"]


class Credentials(Protocol):
    """Secrets that go with config entries (a link's certificate and key)."""

    def plan(self, reconciled: Reconciled) -> list[str]:
        """What would change in the secret store with this config change; [] when nothing."""

    def reload_needed(self) -> bool:
        """True when secrets the router reads change (it re-reads them on reload)."""

    def write(self) -> None:
        """Store what plan() named, keeping what it replaces."""

    def restore(self) -> None:
        """Put back what write() replaced (the config change failed)."""

    def cleanup(self) -> None:
        """Remove secrets of entries that are gone (after the router let go of them)."""


class CredentialSet:
    """Several Credentials as one (links' and listeners'), in order."""

    def __init__(self, *members: Credentials | None):
        self.members = [m for m in members if m is not None]

    def plan(self, reconciled: Reconciled) -> list[str]:
        return [action for m in self.members for action in m.plan(reconciled)]

    def reload_needed(self) -> bool:
        return any(m.reload_needed() for m in self.members)

    def write(self) -> None:
        for m in self.members:
            m.write()

    def restore(self) -> None:
        for m in self.members:
            m.restore()

    def cleanup(self) -> None:
        for m in self.members:
            m.cleanup()


def wanted_from_items(items: Iterable[Mapping[str, Any]], *, prune: bool) -> Wanted:
    """Module list items (`state: present|absent`, default present) as the reconciler's Wanted."""
    present, absent = [], []
    for item in items:
        if item.get("state", "present") == "absent":
            absent.append(str(item.get("name")))
        else:
            present.append({k: v for k, v in item.items() if k != "state"})
    return Wanted(present=tuple(present), absent=tuple(absent), prune=prune)


class SiteConfigRunner:
    def __init__(
        self,
        site: str,
        base_dir: str,
        *,
        check_mode: bool,
        platform_factory: PlatformFactory = get_platform,
        wait: Callable[..., dict[str, Any]] = wait_for_config,
    ):
        self.site = site
        self.check_mode = check_mode
        self.platform_factory = platform_factory
        self.wait = wait
        self.store = SiteStore.open(base_dir, site)
        self._platform: Platform | None = None

    def platform(self) -> Platform | None:
        """The site's platform (its config and secret stores); None before the site exists."""
        if self._platform is None and self.store.paths.metadata.is_file():
            metadata = self.store.read_metadata()
            try:
                self._platform = self.platform_factory(
                    metadata.platform, self.store.paths, metadata
                )
            except SkiffError as exc:
                raise exc.with_context(site=self.site) from None
            self.store.config = self._platform.config
        return self._platform

    def secrets(self) -> SecretStore:
        """Where link credentials live; before the site exists, where a site directory keeps them."""
        platform = self.platform()
        return platform.secrets if platform is not None else FileSecretStore(self.store.paths)

    def run(
        self,
        wanted: Mapping[Kind, Wanted],
        *,
        verify: Verifier | None = None,
        credentials: Credentials | None = None,
        context: str | None = None,
    ) -> Result:
        """Reconcile and apply; SkiffErrors name the site (and `context`, e.g. "listener 'db'")."""
        lock = contextlib.nullcontext() if self.check_mode else site_lock(self.store.paths)
        try:
            with lock:
                return self._run(wanted, verify, credentials)
        except SkiffError as exc:
            if context and context not in str(exc):
                exc.with_context(field=context)
            raise exc.with_context(site=self.site) from None

    def _run(
        self,
        wanted: Mapping[Kind, Wanted],
        verify: Verifier | None,
        credentials: Credentials | None,
    ) -> Result:
        result = Result()
        platform = self.platform()
        exists = platform is not None and self.store.exists()
        current = self.store.read_config() if exists else {}
        reconciled = reconcile(current, wanted)
        result.diff = reconciled.diff
        result.values = {
            "after": reconciled.after,
            "changes": [change.as_dict() for change in reconciled.changes],
        }
        secret_actions = credentials.plan(reconciled) if credentials is not None and exists else []
        if not reconciled.changed and not secret_actions:
            return result
        if not exists:
            if not self.check_mode:
                self.store.require()
            # A check run of a whole play: the site task before this one did not create it.
            for action in reconciled.actions:
                result.act(f"{action} (site does not exist yet)")
            return result
        for action in reconciled.actions + secret_actions:
            result.act(action)

        if platform is None:  # only a check run of a missing site has none (returned above)
            raise RuntimeError("no platform for an existing site")
        # Removing secrets the router no longer names needs no reload.
        apply = reconciled.changed or (credentials is not None and credentials.reload_needed())
        if apply and platform.is_running():
            result.note("reload the router")
        if self.check_mode:
            return result
        status = None
        if apply:
            if credentials is not None:
                credentials.write()
            try:
                status = ConfigApplier(self.store, platform, wait=self.wait).apply(
                    reconciled.config, result, verify=verify
                )
            except SkiffError:
                if credentials is not None:
                    credentials.restore()
                raise
        if credentials is not None:
            # After the router let go of removed links: their credentials may go.
            credentials.cleanup()
        result.values["status"] = status
        return result
