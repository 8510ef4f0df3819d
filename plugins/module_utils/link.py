"""Logic of skiff.fleet.link (private to skiff.fleet; not a public API).

A link is an entry in `links` of the router config plus the token's material
in the platform's secret store (`links/<name>/` in a site directory). The
config entry names only paths, so `--diff` never shows a key. When only the credentials change (a new token for the same link), the
config entry is the same and the router would not notice; the link is then
removed and added again, in two reloads, so the router dials with the new
certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import validation
from ansible_collections.skiff.fleet.plugins.module_utils.apply import ConfigApplier, Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    get_platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.service import replace_entry
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    FileSecretStore,
    LinkCredentials,
    SiteMetadata,
    SitePaths,
    SiteStore,
    canonical_order,
)
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import Token, decode

PlatformFactory = Callable[[str, SitePaths, SiteMetadata], Platform]


@dataclass(frozen=True)
class LinkParams:
    site: str
    base_dir: str = DEFAULT_BASE_DIR
    name: str | None = None
    token: str | None = None
    cost: int = 1
    state: str = "present"

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> LinkParams:
        return cls(
            **{k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None}
        )

    def __repr__(self) -> str:  # the token is a secret
        return f"LinkParams(site={self.site!r}, name={self.name!r}, cost={self.cost!r})"


def link_entry(name: str, token: Token, cost: int, paths: dict[str, str]) -> dict[str, Any]:
    """The config entry; `paths` are where the platform's secret store keeps the credentials."""
    return {
        "name": name,
        "peer": token.site,
        "cost": cost,
        "endpoints": token.endpoints,
        "ca": paths["ca"],
        "cert": paths["cert"],
        "key": paths["key"],
    }


def credentials(token: Token) -> LinkCredentials:
    return LinkCredentials(token.ca.encode(), token.cert.encode(), token.key.encode())


class LinkRunner:
    def __init__(
        self,
        params: LinkParams,
        *,
        check_mode: bool,
        platform_factory: PlatformFactory = get_platform,
        wait: Callable[..., dict[str, Any]] = wait_for_config,
    ):
        self.params = params
        self.check_mode = check_mode
        self.platform_factory = platform_factory
        self.wait = wait
        self.store = SiteStore.open(params.base_dir, params.site)

    def run(self) -> Result:
        # The name defaults to the token's site: errors name it once the token is read.
        self.label = f"link '{self.params.name}'" if self.params.name else "link"
        try:
            return self.present() if self.params.state == "present" else self.absent()
        except SkiffError as exc:
            raise exc.with_context(site=self.params.site, field=self.label) from None

    def _platform(self) -> Platform:
        metadata = self.store.require()
        platform = self.platform_factory(metadata.platform, self.store.paths, metadata)
        self.store.config = platform.config
        return platform

    def present(self) -> Result:
        params, result = self.params, Result()
        if not params.token:
            raise SkiffError("is required when state is present", field="token")
        token = decode(params.token)
        name = validation.object_name(params.name or token.site, "name")
        self.label = f"link '{name}'"
        cost = validation.cost(params.cost)
        if token.site == params.site:
            raise SkiffError(
                f"the token was issued by site '{token.site}' itself; a site cannot link to "
                "itself: use a token issued by the site to link to",
                field="token",
            )
        if token.name != params.site:
            raise SkiffError(
                f"the token was issued to site '{token.name}', not '{params.site}'; the "
                f"accepting router would refuse it: issue a token named '{params.site}' "
                f"at site '{token.site}'",
                field="token",
            )
        if not self.store.exists() and self.check_mode:
            # No platform to ask yet: the entry as a site directory would name it.
            entry = link_entry(
                name, token, cost, FileSecretStore(self.store.paths).link_paths(name)
            )
            result.values = {"link": entry}
            result.act(f"add link '{name}' to site '{token.site}' (site does not exist yet)")
            result.diff = {"before": {"links": []}, "after": {"links": [entry]}}
            return result
        platform = self._platform()
        secrets = platform.secrets
        entry = link_entry(name, token, cost, secrets.link_paths(name))
        result.values = {"link": entry}
        config = self.store.read_config()
        entries = list(config.get("links") or [])
        current = next((e for e in entries if e.get("name") == name), None)
        new_entries = replace_entry(entries, name, entry)
        result.diff = {"before": {"links": entries}, "after": {"links": new_entries}}

        wanted = credentials(token)
        backup = secrets.link(name)
        stale = backup != wanted
        if current is None:
            result.act(f"add link '{name}' to site '{token.site}' ({self._describe(entry)})")
        elif current != entry:
            result.act(f"update link '{name}' ({self._describe(entry)})")
        if stale:
            result.act(f"write the credentials of link '{name}' from the token")
        if not result.changed:
            return result
        if self.check_mode:
            return result

        secrets.put_link(name, wanted)
        applier = ConfigApplier(self.store, platform, wait=self.wait)
        try:
            # One reload: the router re-reads credential files whose content
            # changed and redials that link only.
            status = applier.apply(canonical_order(dict(config, links=new_entries)), result)
        except SkiffError:
            secrets.put_link(name, backup if backup.exists else None)
            raise
        if status is not None:
            state = next((s for s in status.get("links") or [] if s.get("name") == name), None)
            result.values["link_status"] = state
        return result

    def absent(self) -> Result:
        params, result = self.params, Result()
        if not params.name:
            raise SkiffError("is required when state is absent", field="name")
        name = validation.object_name(params.name, "name")
        result.values = {"link": None}
        if not self.store.exists():
            return result
        platform = self._platform()
        config = self.store.read_config()
        entries = list(config.get("links") or [])
        new_entries = replace_entry(entries, name, None)
        has_credentials = platform.secrets.link(name).exists
        result.diff = {"before": {"links": entries}, "after": {"links": new_entries}}
        if new_entries != entries:
            result.act(f"remove link '{name}'")
        if has_credentials:
            result.act(f"remove the credentials of link '{name}'")
        if self.check_mode or not result.changed:
            return result
        if new_entries != entries:
            new_config = dict(config, links=new_entries)
            if not new_entries:
                new_config.pop("links")
            ConfigApplier(self.store, platform, wait=self.wait).apply(new_config, result)
        # After the router let go of the link: its credentials may go.
        if has_credentials:
            platform.secrets.put_link(name, None)
        return result

    @staticmethod
    def _describe(entry: dict[str, Any]) -> str:
        endpoints = ", ".join(f"{e['host']}:{e['port']}" for e in entry["endpoints"])
        return f"cost {entry['cost']}, endpoints {endpoints}"


def run_link(params: LinkParams, check_mode: bool, **services: Any) -> Result:
    return LinkRunner(params, check_mode=check_mode, **services).run()
