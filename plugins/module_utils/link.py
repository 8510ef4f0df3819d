"""Links: the kind, their credentials, and the logic of skiff.fleet.link (private to skiff.fleet).

A link is an entry in `links` of the router config plus the token's material
in the platform's secret store (`links/<name>/` in a site directory). The
config entry names only paths, so `--diff` never shows a key. When only the
credentials change (a new token for the same link), the entry stays the same:
the new credentials are stored and the router reloaded once; it re-reads the
files whose content changed and redials that link only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, validation
from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.config_runner import SiteConfigRunner
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.reconcile import (
    Entry,
    Kind,
    Reconciled,
    Wanted,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    LinkCredentials,
    SecretStore,
)
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import Token, decode

# A token is a few kilobytes; anything much larger is not one.
MAX_TOKEN_FILE = 64 * 1024

# -- the kind ---------------------------------------------------------------------------------


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
        **({"next_cert": paths["next_cert"]} if token.next_cert else {}),
    }


def _normalize(item: Mapping[str, Any]) -> Entry:
    # `token` is decoded and `paths` known here: link_set() did both, once per link.
    name = validation.object_name(item["name"], "name")
    return link_entry(name, item["token"], validation.cost(item["cost"]), item["paths"])


def _describe(entry: Entry) -> str:
    endpoints = ", ".join(f"{e['host']}:{e['port']}" for e in entry["endpoints"])
    return f"to site '{entry['peer']}', cost {entry['cost']}, endpoints {endpoints}"


LINK = Kind(section="links", noun="link", normalize=_normalize, describe=_describe)


# -- credentials: the token's material in the platform's secret store -----------------------


def credentials(token: Token) -> LinkCredentials:
    following = token.next_cert.encode() if token.next_cert else None
    return LinkCredentials(token.ca.encode(), token.cert.encode(), token.key.encode(), following)


class LinkSecrets:
    """The credentials of a site's links: what the tokens say, and those of removed links."""

    def __init__(self, secrets: SecretStore, links: LinkSet):
        self.secrets = secrets
        self.wanted = {name: credentials(token) for name, token in links.tokens.items()}
        self.absent = list(links.wanted.absent)
        self.stale: list[str] = []
        self.removed: list[str] = []
        self.backup: dict[str, LinkCredentials] = {}

    def plan(self, reconciled: Reconciled) -> list[str]:
        removed = [
            c.name for c in reconciled.changes if c.section == LINK.section and c.action == "remove"
        ]
        self.stale = [n for n, wanted in self.wanted.items() if self.secrets.link(n) != wanted]
        self.removed = [
            n for n in dict.fromkeys(removed + self.absent) if self.secrets.link(n).exists
        ]
        return [f"write the credentials of link '{name}' from the token" for name in self.stale] + [
            f"remove the credentials of link '{name}'" for name in self.removed
        ]

    def reload_needed(self) -> bool:
        return bool(self.stale)

    def write(self) -> None:
        for name in self.stale:
            self.backup[name] = self.secrets.link(name)
            self.secrets.put_link(name, self.wanted[name])

    def restore(self) -> None:
        for name, previous in self.backup.items():
            self.secrets.put_link(name, previous if previous.exists else None)

    def cleanup(self) -> None:
        for name in self.removed:
            self.secrets.put_link(name, None)


# -- the module logic -------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkParams:
    """Options of skiff.fleet.link: one link (`name`, `token`, `cost`, `state`), or `links`."""

    site: str
    base_dir: str = DEFAULT_BASE_DIR
    name: str | None = None
    token: str | None = None
    token_file: str | None = None  # a token (or grant) handed over as a file on this host
    cost: int = 1
    state: str = "present"
    # The list form: items {name, token, cost, state}; `prune` removes links not listed.
    # An item with `peer` and no token is a link whose far site does not exist yet
    # (check mode only): reported as an addition, never written.
    items: tuple[Mapping[str, Any], ...] | None = None
    prune: bool = False

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> LinkParams:
        values = {
            k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None
        }
        if params.get("links") is not None:
            values["items"] = tuple(
                {k: v for k, v in item.items() if v is not None} for item in params["links"]
            )
        return cls(**values)

    def item_list(self) -> list[Mapping[str, Any]]:
        if self.items is not None:
            return list(self.items)
        item: dict[str, Any] = {"cost": self.cost, "state": self.state}
        if self.name is not None:
            item["name"] = self.name
        if self.token is not None:
            item["token"] = self.token
        if self.token_file is not None:
            item["token_file"] = self.token_file
        return [item]

    def __repr__(self) -> str:  # tokens are secrets
        names = [i.get("name") for i in self.items] if self.items is not None else None
        return f"LinkParams(site={self.site!r}, name={self.name!r}, items={names!r})"


@dataclass
class LinkSet:
    """The links a run wants, with their tokens decoded and checked."""

    wanted: Wanted
    tokens: dict[str, Token]


def link_set(
    site: str,
    items: list[Mapping[str, Any]],
    *,
    prune: bool,
    check_mode: bool,
    link_paths: Callable[[str], dict[str, str]],
    current_peers: Mapping[str, str] | None = None,
) -> LinkSet:
    """The wanted links with their tokens decoded and checked, and the entries' credential
    paths from the platform's secret store (`link_paths`). `current_peers` (name -> peer
    of the links the site has): a link is never silently re-pointed at another site."""
    current_peers = current_peers or {}
    present: list[dict[str, Any]] = []
    absent: list[str] = []
    pending: dict[str, tuple[dict[str, Any], str]] = {}
    tokens: dict[str, Token] = {}
    for index, item in enumerate(items):
        label = (
            f"link '{item['name']}'"
            if item.get("name")
            else ("link" if len(items) == 1 else f"links[{index}]")
        )
        try:
            if item.get("state", "present") == "absent":
                if not item.get("name"):
                    raise SkiffError("is required when state is absent", field="name")
                absent.append(validation.object_name(item["name"], "name"))
                continue
            if item.get("token_file"):
                if item.get("token"):
                    raise SkiffError("give token or token_file, not both", field="token_file")
                item = {**item, "token": read_token_file(item["token_file"])}
            if not item.get("token"):
                peer = item.get("peer")
                if check_mode and peer:
                    name = validation.object_name(item.get("name") or peer, "name")
                    cost = validation.cost(item.get("cost", 1))
                    pending[name] = (
                        {"name": name, "peer": peer, "cost": cost},
                        f"to site '{peer}', cost {cost}; its token is issued during the run",
                    )
                    continue
                if peer:
                    raise SkiffError(
                        f"no token from site '{peer}': it failed earlier in this run, is not "
                        f"installed yet or does not accept links; run the playbook for "
                        f"'{peer}' first",
                        field="token",
                    )
                raise SkiffError("is required when state is present", field="token")
            token = decode(item["token"])
            name = validation.object_name(item.get("name") or token.site, "name")
            label = f"link '{name}'"
            _check_token(site, token)
            _check_peer(name, current_peers.get(name), token)
        except SkiffError as exc:
            raise exc.with_context(field=label) from None
        tokens[name] = token
        present.append(
            {"name": name, "token": token, "cost": item.get("cost", 1), "paths": link_paths(name)}
        )
    return LinkSet(
        Wanted(present=tuple(present), absent=tuple(absent), prune=prune, pending=pending), tokens
    )


def read_token_file(path: str) -> str:
    """A token (or grant) handed over as a file: it holds a private key, so a file that
    others may read is refused, as a world-readable key would be."""
    try:
        with open(path, encoding="ascii") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(MAX_TOKEN_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise SkiffError(f"{path} cannot be read: {reason}", field="token_file") from None
    if stat.S_IMODE(mode) & 0o077:
        raise SkiffError(
            f"{path} may be read by others (mode {stat.S_IMODE(mode):04o}) and holds a "
            f"private key: chmod 600 {path} (and ask whether someone else read it)",
            field="token_file",
        )
    if len(text) > MAX_TOKEN_FILE:
        raise SkiffError(f"{path} is larger than a token can be", field="token_file")
    return text.strip()


def _check_token(site: str, token: Token) -> None:
    if token.site == site:
        raise SkiffError(
            f"the token was issued by site '{token.site}' itself; a site cannot link to "
            "itself: use a token issued by the site to link to",
            field="token",
        )
    if token.name != site and not token.grant:
        raise SkiffError(
            f"the token was issued to site '{token.name}', not '{site}'; the "
            f"accepting router would refuse it: issue a token named '{site}' "
            f"at site '{token.site}'",
            field="token",
        )


def _check_peer(name: str, current_peer: str | None, token: Token) -> None:
    if current_peer is not None and current_peer != token.site:
        raise SkiffError(
            f"this link leads to site '{current_peer}' and the token is from site "
            f"'{token.site}'; to re-point it, remove it first (state: absent), or give the "
            f"link to '{token.site}' a name of its own",
            field="token",
        )


def link_peers(runner: SiteConfigRunner) -> dict[str, str]:
    """name -> peer of the links the site has now ({} for a site not created yet)."""
    if runner.platform() is None or not runner.store.exists():
        return {}
    links = runner.store.read_config().get("links") or []
    return {str(e.get("name")): str(e.get("peer")) for e in links if isinstance(e, dict)}


def removed_links(result_changes: list[dict[str, Any]]) -> list[str]:
    return [
        c["name"] for c in result_changes if c["section"] == "links" and c["action"] == "remove"
    ]


def link_expiry_warnings(site: str, tokens: Mapping[str, Token]) -> list[str]:
    """Links whose credential lapses within 30 days after this run. A run renews the
    tokens of sites in the inventory before it links, so these come from elsewhere."""
    found = []
    for name, token in sorted(tokens.items()):
        # With a next certificate the link renews itself: it lapses when that expires.
        warning = pki.expiry_warning(
            token.next_cert or token.cert,
            f"site {site}: the credential of link {name} (a token of site {token.site})",
            f"get a new token from site {token.site} (skiff.fleet.token there) and run again",
        )
        if warning:
            found.append(warning)
    return found


def run_link(params: LinkParams, check_mode: bool, **services: Any) -> Result:
    """One link, or a list of them, in one change (one reload)."""
    single = params.items is None
    runner = SiteConfigRunner(params.site, params.base_dir, check_mode=check_mode, **services)
    secrets = runner.secrets()
    try:
        links = link_set(
            params.site,
            params.item_list(),
            prune=params.prune,
            check_mode=check_mode,
            link_paths=secrets.link_paths,
            current_peers=link_peers(runner),
        )
    except SkiffError as exc:
        raise exc.with_context(site=params.site) from None
    name = params.name or next(iter(links.tokens), None)
    context = f"link '{name}'" if single and name else None
    result = runner.run(
        {LINK: links.wanted}, credentials=LinkSecrets(secrets, links), context=context
    )
    after = result.values.get("after", {}).get("links", [])
    status = result.values.get("status")
    values: dict[str, Any] = {"changes": result.values.get("changes", [])}
    if single:
        entry = next((e for e in after if e.get("name") == name), None)
        values["link"] = entry if params.state == "present" else None
        if status is not None and entry is not None:
            values["link_status"] = next(
                (s for s in status.get("links") or [] if s.get("name") == name), None
            )
    else:
        values["links"] = after
    result.values = values
    result.warnings += link_expiry_warnings(params.site, links.tokens)
    return result
