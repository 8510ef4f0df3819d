"""Logic of skiff.fleet.token (private to skiff.fleet; not a public API).

A token is issued once and read back: the client certificate, its key and
`token.json` stay in the platform's secret store (`tokens/<name>/` in a site
directory), and a later run returns the same token while it is still valid,
signed by the current CA and names the current link endpoints. Anything else
issues a new client certificate.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, validation, vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.apply import ConfigApplier, Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    get_platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    KEY_MODE,
    IssuedToken,
    SecretStore,
    SiteMetadata,
    SitePaths,
    SiteStore,
    atomic_write,
    canonical_order,
    dump_json,
    site_lock,
)
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import VERSION, Token


@dataclass(frozen=True)
class TokenParams:
    site: str
    name: str = ""
    base_dir: str = DEFAULT_BASE_DIR
    state: str = "present"
    valid_days: int = pki.CLIENT_VALID_DAYS
    # The list form: one token per name, in one module run (a hub's dialers).
    names: tuple[str, ...] | None = None
    # With `names`: remove (revoke) every token kept that `names` does not list.
    prune: bool = False
    # Names whose tokens go to peers outside the inventory: a re-issue warns (someone
    # must hand the new token over before the old one stops linking).
    outside: tuple[str, ...] = ()
    # Issue again every token issued before this time (`now` or ISO 8601).
    rotate_before: str | None = None
    # Token name -> routers that may hold a link with it at once (a name absent keeps
    # what its token.json says: 1 for a new token).
    routers: dict[str, int] = field(default_factory=dict)
    # Token name -> grant terms ({dest, redemptions, redeem_within}): a one-time grant,
    # written to `dest`. The single form's `dest`, `redemptions`, `redeem_within`.
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> TokenParams:
        values = {
            k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None
        }
        if params.get("names") is not None:
            values["names"] = tuple(params["names"])
        values["prune"] = bool(params.get("prune"))
        values["outside"] = tuple(params.get("outside") or ())
        values["routers"] = dict(params.get("routers") or {})
        values["grants"] = dict(params.get("grants") or {})
        if params.get("dest") is not None and params.get("name"):
            values["grants"][params["name"]] = {
                k: params[k] for k in GRANT_KEYS if params.get(k) is not None
            }
        return cls(**values)


GRANT_KEYS = ("dest", "redemptions", "redeem_within")


@dataclass(frozen=True)
class GrantTerms:
    """A one-time grant's terms: the file it goes to, how many sites may redeem it and
    the window for their first link, in minutes."""

    dest: str
    redemptions: int = vocabulary.DEFAULT_GRANT_REDEMPTIONS
    redeem_within: int = vocabulary.DEFAULT_GRANT_WINDOW_MINUTES

    @classmethod
    def parse(cls, value: Any) -> GrantTerms:
        if not isinstance(value, dict) or set(value) - set(GRANT_KEYS):
            raise SkiffError(f"must be a mapping of {', '.join(GRANT_KEYS)}", field="grants")
        dest = value.get("dest")
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise SkiffError(f"must be an absolute path on this host, got {dest!r}", field="dest")
        terms = cls(dest, **{k: v for k, v in value.items() if k != "dest"})
        for key, most in (
            ("redemptions", vocabulary.MAX_GRANT_REDEMPTIONS),
            ("redeem_within", vocabulary.MAX_GRANT_WINDOW_MINUTES),
        ):
            v = getattr(terms, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
                raise SkiffError(f"must be an integer 1..{most}, got {v!r}", field=key)
        return terms

    def describe(self) -> str:
        n, m = self.redemptions, self.redeem_within
        return f"{n} redemption{'s' if n > 1 else ''} within {m} minute{'s' if m > 1 else ''}"

    def record(self, issued: int) -> dict[str, Any]:
        """As token.json keeps it."""
        return {"issued": issued, "dest": self.dest, "redemptions": self.redemptions,
                "redeem_within": self.redeem_within}  # fmt: skip


def router_grant(record: Any) -> dict[str, int] | None:
    """token.json's grant as the router config's `link_clients[].grant`."""
    if not isinstance(record, dict):
        return None
    try:
        redeem_by = int(record["issued"]) + 60 * int(record["redeem_within"])
        return {"redeem_by": redeem_by, "redemptions": int(record["redemptions"])}
    except (KeyError, TypeError, ValueError):
        return None


PlatformFactory = Callable[[str, SitePaths, SiteMetadata], Platform]


@dataclass(frozen=True)
class _Kept:
    """A token as the secret store keeps it: its files, token.json, and its next
    certificate when that can follow it."""

    files: IssuedToken
    stored: dict[str, Any]
    following: bytes | None


# A re-issued token's previous certificate still links for this long: the dialing
# site keeps its link until it has the new token (the same playbook run, normally).
SUPERSEDED_GRACE = timedelta(days=1)
# The most routers one token may serve at once: a kubernetes site's replicas and surge.
MAX_ROUTERS = vocabulary.MAX_KUBE_REPLICAS + vocabulary.KUBE_ROLLOUT_SURGE


def _parse_json(data: bytes | None) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data or b"")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


class TokenRunner:
    def __init__(
        self,
        params: TokenParams,
        *,
        check_mode: bool,
        now: datetime | None = None,
        platform_factory: PlatformFactory = get_platform,
    ) -> None:
        self.params = params
        self.check_mode = check_mode
        self.now = now
        self.platform_factory = platform_factory
        self.store = SiteStore.open(params.base_dir, params.site)

    def _platform(self, metadata: SiteMetadata) -> Platform:
        platform = self.platform_factory(metadata.platform, self.store.paths, metadata)
        self.store.config = platform.config
        return platform

    def run(self) -> Result:
        try:
            validation.object_name(self.params.name, "name")
            if self.params.state == "absent":
                return self.absent()
            return self.present()
        except SkiffError as exc:
            raise exc.with_context(
                site=self.params.site, field=f"token '{self.params.name}'"
            ) from None

    def _rotation(self) -> datetime | None:
        try:
            return pki.rotation_time(self.params.rotate_before, self.now)
        except ValueError as exc:
            raise SkiffError(str(exc), field="rotate_before") from None

    def present(self) -> Result:
        params = self.params
        if params.valid_days < 2:
            raise SkiffError(f"{params.valid_days} must be at least 2", field="valid_days")
        metadata = self.store.require()
        secrets = self._platform(metadata).secrets
        config = self.store.read_config()
        if not config.get("link_access") or not metadata.link_endpoints:
            raise SkiffError(
                "this site does not accept links, so its tokens would lead nowhere; "
                "set link_access: true and link_endpoint with skiff.fleet.site first",
            )
        ca = secrets.ca()
        ca_pem, ca_key = ca.cert_pem, ca.key_pem
        if ca_pem is None or ca_key is None or pki.ca_reissue_reason(ca_pem, ca_key):
            raise SkiffError(
                "the site CA is missing or unusable; re-run skiff.fleet.site to repair it"
            )

        kept = secrets.token(params.name)
        cert_pem, key_pem = kept.cert, kept.key
        stored = _parse_json(kept.info) or {}
        reason = pki.reissue_reason(
            cert_pem, key_pem, ca_cert_pem=ca_pem, now=self.now, rotate_before=self._rotation()
        )
        if not reason and stored.get("endpoints") != metadata.link_endpoints:
            reason = "the link endpoints changed"
        if not reason and stored.get("site") != params.site:
            reason = "token.json does not match"
        terms = self._grant_terms(metadata, config)
        if not reason and (stored.get("grant") is None) != (terms is None):
            reason = "it becomes a grant" if terms else "it is no longer a grant"

        kept_token = _Kept(kept, stored, following=_successor(stored, cert_pem, ca_pem))
        routers = self._routers(params, stored.get("routers", 1))
        issuer = pki.Issued(ca_pem, ca_key)
        if not reason and cert_pem and key_pem:  # reissue_reason() found both
            return self._read_back(kept_token, routers, terms, issuer, metadata, secrets)
        return self._issue(
            kept_token, reason or "missing", routers, terms, issuer, metadata, secrets
        )

    def _read_back(
        self,
        kept: _Kept,
        routers: int,
        terms: GrantTerms | None,
        issuer: pki.Issued,
        metadata: SiteMetadata,
        secrets: SecretStore,
    ) -> Result:
        """The token kept stays: its record follows `routers` and the grant's terms, and
        a token from before renewal existed gets its next certificate."""
        params, result, stored = self.params, Result(), kept.stored
        cert_pem, key_pem = kept.files.cert or b"", kept.files.key or b""
        record = self._record(stored, routers, terms, (stored.get("grant") or {}).get("issued", 0))
        if record != stored:
            result.act(
                f"update grant '{params.name}': {terms.describe()}, {routers} router(s) "
                "of each site at once"
                if terms
                else f"let {routers} routers of site '{params.name}' hold its token at once"
            )
        following = kept.following
        if following is None:
            result.act(
                f"issue the next certificate of token '{params.name}' (the dialing "
                "router renews its link with it 30 days before the current one expires)"
            )
            if not self.check_mode:
                following = pki.issue_successor(issuer, cert_pem, valid_days=params.valid_days)
                record["successor"] = _successor_record(following)
        token = self._token(metadata, issuer, pki.Issued(cert_pem, key_pem), following, terms)
        before = self._info_of(stored, cert_pem)
        after = self._info_of(record, cert_pem)
        result.values = {"token": token.encode(), "token_info": after}
        result.diff = {"before": before, "after": after}
        if record != stored and not self.check_mode:
            secrets.put_token(params.name, replace(kept.files, info=dump_json(record)))
        return result

    def _issue(
        self,
        kept: _Kept,
        reason: str,
        routers: int,
        terms: GrantTerms | None,
        issuer: pki.Issued,
        metadata: SiteMetadata,
        secrets: SecretStore,
    ) -> Result:
        """A new certificate (or, near expiry, the next one kept) and its next one."""
        params, result, stored = self.params, Result(), kept.stored
        cert_pem, key_pem, following = kept.files.cert, kept.files.key, kept.following
        before = self._info_of(stored, cert_pem) if cert_pem and stored else {}
        renewing = _renews(reason, following, key_pem, self.now)
        result.act(
            f"{'renew' if renewing else 'issue'} {'grant' if terms else 'token'} '{params.name}'"
            + (" with its next certificate" if renewing else "")
            + (f" to {terms.dest}, {terms.describe()}" if terms else "")
            + ("" if reason == "missing" else f" (the previous one: {reason})")
        )
        # A renewed token's holder switched (or will) to the next certificate itself.
        if reason != "missing" and params.name in params.outside and not renewing:
            until = datetime.fromtimestamp((self._superseded(cert_pem, stored) or {}).get(
                "not_after", 0), UTC).strftime("%Y-%m-%d %H:%M UTC")  # fmt: skip
            result.warnings.append(
                f"site {params.site}: token '{params.name}' goes to a peer outside the "
                f"inventory and {'would be' if self.check_mode else 'was'} issued again "
                f"({reason}); its previous certificate links until {until}: hand "
                f"'{params.name}' the new token before then"
            )
        if self.check_mode:
            # No token to return: the calling play must not mistake a placeholder for one.
            result.diff = {"before": before, "after": {"name": params.name, "site": params.site,
                                                       "endpoints": metadata.link_endpoints}}  # fmt: skip
            result.values = {"token_info": {}}
            return result

        now = int((self.now or datetime.now(UTC)).timestamp())
        if renewing and following and key_pem:
            # Its next certificate takes over (the dialer may use it already), and gets
            # one of its own: the key stays, the old certificate links until it expires,
            # and a grant keeps its window (so its redemptions).
            issued = pki.Issued(following, key_pem)
            superseded = [self._superseded(cert_pem, stored, until_expiry=True)]
            issued_at = (stored.get("grant") or {}).get("issued", now)
        else:
            issued = pki.issue_client_cert(issuer, params.name, valid_days=params.valid_days)
            # The dialer may hold either of the previous certificates: both link a day.
            superseded = [self._superseded(pem, stored) for pem in (cert_pem, following)]
            issued_at = now
        next_cert = pki.issue_successor(issuer, issued.cert_pem, valid_days=params.valid_days)
        info = pki.describe(issued.cert_pem)
        old = [entry for entry in superseded if entry is not None]
        record = {
            "v": VERSION,
            "site": params.site,
            "name": params.name,
            "endpoints": metadata.link_endpoints,
            "serial": info["serial"],
            "not_after": info["not_after"],
            "successor": _successor_record(next_cert),
            **({"superseded": old} if old else {}),
        }
        record = self._record(record, routers, terms, issued_at)
        token = self._token(metadata, issuer, issued, next_cert, terms)
        if terms is not None:
            # The grant file first: a run that cannot write it keeps the previous token.
            self._write_grant(terms, token)
        secrets.put_token(
            params.name, IssuedToken(issued.cert_pem, issued.key_pem, dump_json(record))
        )
        after = self._info_of(record, issued.cert_pem)
        result.values = {"token": token.encode(), "token_info": after}
        result.diff = {"before": before, "after": after}
        return result

    def _token(
        self,
        metadata: SiteMetadata,
        issuer: pki.Issued,
        client: pki.Issued,
        following: bytes | None,
        terms: GrantTerms | None,
    ) -> Token:
        """The token this site hands out: its endpoints and CA, the client pair and its
        next certificate (none only in check mode, before it is issued)."""
        return Token(
            self.params.site, self.params.name, metadata.link_endpoints,
            issuer.cert_pem.decode(), client.cert_pem.decode(), client.key_pem.decode(),
            grant=terms is not None, next_cert=following.decode() if following else "",
        )  # fmt: skip

    @staticmethod
    def _routers(params: TokenParams, kept: Any) -> int:
        count = params.routers.get(params.name, kept)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_ROUTERS:
            raise SkiffError(
                f"routers of '{params.name}': must be an integer 1..{MAX_ROUTERS}, got {count!r}",
                field="routers",
            )
        return count

    @staticmethod
    def _record(
        stored: dict[str, Any], routers: int, terms: GrantTerms | None, issued: int
    ) -> dict[str, Any]:
        """token.json with how many routers may hold the token (when not one) and the
        grant's terms (`issued` starts its window)."""
        out = {k: v for k, v in stored.items() if k not in ("routers", "grant")}
        if routers != 1:
            out["routers"] = routers
        if terms is not None:
            out["grant"] = terms.record(issued)
        return out

    def _grant_terms(self, metadata: SiteMetadata, config: dict[str, Any]) -> GrantTerms | None:
        value = self.params.grants.get(self.params.name)
        if value is None:
            return None
        terms = GrantTerms.parse(value)
        if not config.get("state_dir"):
            if metadata.platform == "kubernetes":
                raise SkiffError(
                    "a kubernetes site cannot issue grants yet: its router pods keep "
                    "nothing across restarts, so a used grant could be redeemed again; "
                    "issue a token without dest and hand it over instead",
                    field="dest",
                )
            raise SkiffError(
                "this site's router keeps no state yet (no state_dir in its config), "
                "where grant redemptions are kept: run skiff.fleet.site for it first",
                field="dest",
            )
        return terms

    def _write_grant(self, terms: GrantTerms, token: Token) -> None:
        dest = terms.dest
        if not os.path.isdir(os.path.dirname(dest)):
            raise SkiffError(
                f"the directory of {dest} does not exist on this host; create it first",
                field="dest",
            )
        try:
            atomic_write(Path(dest), (token.encode() + "\n").encode(), KEY_MODE)
        except OSError as exc:
            raise SkiffError(f"cannot write {dest}: {exc.strerror}", field="dest") from None

    def _superseded(
        self, cert_pem: bytes | None, stored: dict[str, Any], until_expiry: bool = False
    ) -> dict[str, Any] | None:
        """A certificate a re-issue replaces, accepted for SUPERSEDED_GRACE more, or
        `until_expiry` (on a grant's terms if it was one: the sites that redeemed it
        keep their link)."""
        fingerprint = _fingerprint(cert_pem)
        if fingerprint is None or cert_pem is None:
            return None
        until = (self.now or datetime.now(UTC)) + SUPERSEDED_GRACE
        if until_expiry:
            until = datetime.fromisoformat(str(pki.describe(cert_pem)["not_after"]))
        grant = router_grant(stored.get("grant"))
        return {"sha256": fingerprint, "not_after": int(until.timestamp()),
                **({"grant": grant} if grant else {})}  # fmt: skip

    @staticmethod
    def _info_of(stored: dict[str, Any], cert_pem: bytes) -> dict[str, Any]:
        try:
            cert = pki.describe(cert_pem)
        except ValueError:
            cert = {}
        grant = stored.get("grant")
        terms = router_grant(grant)
        return {
            "name": stored.get("name"),
            "site": stored.get("site"),
            "endpoints": stored.get("endpoints"),
            "serial": cert.get("serial"),
            "not_after": cert.get("not_after"),
            "sha256_fingerprint": cert.get("sha256_fingerprint"),
            "routers": stored.get("routers", 1),
            **({"grant": {
                "dest": grant.get("dest"),
                "redemptions": terms["redemptions"],
                "redeem_by": datetime.fromtimestamp(terms["redeem_by"], UTC).isoformat(),
            }} if terms and isinstance(grant, dict) else {}),
        }  # fmt: skip

    def absent(self) -> Result:
        result = Result()
        if not self.store.paths.metadata.is_file():
            return result
        secrets = self._platform(self.store.read_metadata()).secrets
        if not secrets.token(self.params.name).exists:
            return result
        result.act(f"remove token '{self.params.name}' (its certificate no longer links here)")
        result.diff = {"before": {"name": self.params.name}, "after": {}}
        if not self.check_mode:
            secrets.put_token(self.params.name, None)
        return result


def _fingerprint(cert_pem: bytes | None) -> str | None:
    """SHA-256 of a kept certificate; None when there is none or it is unreadable."""
    if not cert_pem:
        return None
    try:
        return str(pki.describe(cert_pem)["sha256_fingerprint"])
    except ValueError:
        return None


def _successor_record(cert_pem: bytes) -> dict[str, str]:
    """token.json's record of a token's next certificate (public: no key)."""
    return {"cert": cert_pem.decode(), "sha256": str(_fingerprint(cert_pem))}


def _successor(stored: dict[str, Any], cert_pem: bytes | None, ca_pem: bytes) -> bytes | None:
    """The next certificate kept for `cert_pem`, if it can follow it."""
    record = stored.get("successor")
    if not isinstance(record, dict) or not isinstance(record.get("cert"), str) or not cert_pem:
        return None
    following = record["cert"].encode()
    return None if pki.successor_problem(cert_pem, following, ca_pem) else following


def _renews(
    reason: str | None, following: bytes | None, key_pem: bytes | None, now: datetime | None
) -> bool:
    """A token near its expiry whose next certificate is good for longer takes that
    one as its own (the renewal the dialing router made already, or will)."""
    if not reason or not reason.startswith("expires within") or not following or not key_pem:
        return False
    return pki.reissue_reason(following, key_pem, now=now) is None


def accepted_clients(secrets: SecretStore, now: datetime) -> list[dict[str, Any]]:
    """`link_clients` of the router config: the certificate of every token kept, and
    the superseded certificates still in their grace period."""
    out: list[dict[str, Any]] = []
    for name in secrets.token_names():
        kept = secrets.token(name)
        fingerprint = _fingerprint(kept.cert)
        info = _parse_json(kept.info) or {}
        routers = info.get("routers", 1)
        count = {"routers": routers} if isinstance(routers, int) and routers > 1 else {}
        grant = router_grant(info.get("grant"))
        terms = {"grant": grant} if grant else {}
        following = (info.get("successor") or {}).get("sha256")
        for current in (fingerprint, following):
            if current is not None:
                out.append({"name": name, "sha256": current, **count, **terms})
        superseded = info.get("superseded") or []
        # token.json of the previous release keeps one superseded certificate, not a list
        for old in [superseded] if isinstance(superseded, dict) else superseded:
            until = old.get("not_after")
            if isinstance(until, int) and until > now.timestamp() and old.get("sha256"):
                kept_terms = {"grant": old["grant"]} if old.get("grant") else {}
                out.append({"name": name, "sha256": old["sha256"], "not_after": until,
                            **count, **kept_terms})  # fmt: skip
    return out


def sync_link_clients(
    params: TokenParams,
    check_mode: bool,
    result: Result,
    *,
    now: datetime | None = None,
    platform_factory: PlatformFactory = get_platform,
    wait: Callable[..., dict[str, Any]] = wait_for_config,
) -> None:
    """Make the site's router accept exactly the certificates of the tokens it keeps:
    a deleted token is revoked, a token issued links at once."""
    store = SiteStore.open(params.base_dir, params.site)
    if not store.paths.metadata.is_file():
        return
    metadata = store.read_metadata()
    platform = platform_factory(metadata.platform, store.paths, metadata)
    store.config = platform.config
    config = store.read_config()
    if not config.get("link_access"):
        return
    current = config.get("link_clients")
    wanted = accepted_clients(platform.secrets, now or datetime.now(UTC))
    if check_mode:
        # Nothing was issued or removed: predict from what this run would do.
        names = [params.name] if params.names is None else list(params.names)
        gone = set(result.values.get("removed") or ())
        if params.state == "absent":
            gone.update(names)
        wanted = [c for c in wanted if c["name"] not in gone]
        issuing = any(action.startswith("issue token") for action in result.actions)
        if not issuing and current == wanted:
            return
    elif current == wanted:
        return
    result.act("accept links only with the client certificates of the tokens kept")
    diff = result.diff if result.diff is not None else {}
    diff.setdefault("before", {})["link_clients"] = current
    diff.setdefault("after", {})["link_clients"] = wanted
    result.diff = diff
    if check_mode:
        return
    applier = ConfigApplier(store, platform, wait=wait)
    applier.apply(canonical_order({**config, "link_clients": wanted}), result)


def run_token(params: TokenParams, check_mode: bool, **services: Any) -> Result:
    wait = services.pop("wait", wait_for_config)
    sync = {k: v for k, v in services.items() if k in ("now", "platform_factory")}
    paths = SitePaths.for_site(params.base_dir, params.site)
    lock = contextlib.nullcontext() if check_mode else site_lock(paths)
    try:
        with lock:
            result = _run_tokens(params, check_mode, **services)
            sync_link_clients(params, check_mode, result, wait=wait, **sync)
    except SkiffError as exc:
        raise exc.with_context(site=params.site) from None
    return result


def _run_tokens(params: TokenParams, check_mode: bool, **services: Any) -> Result:
    if params.names is None:
        return TokenRunner(params, check_mode=check_mode, **services).run()
    # The list form: each name exactly as the single form, results keyed by name.
    # Every name is checked before any token is issued: a bad one changes nothing.
    for name in params.names:
        try:
            validation.object_name(name, "name")
        except SkiffError as exc:
            raise exc.with_context(site=params.site, field=f"token '{name}'") from None
    result = Result(values={"tokens": {}, "token_info": {}})
    before, after = {}, {}
    for name in params.names:
        one = TokenRunner(
            replace(params, name=name, names=None), check_mode=check_mode, **services
        ).run()
        result.changed = result.changed or one.changed
        result.actions.extend(one.actions)
        result.warnings.extend(one.warnings)
        if "token" in one.values:
            result.values["tokens"][name] = one.values["token"]
        if "token_info" in one.values:
            result.values["token_info"][name] = one.values["token_info"]
        before[name] = (one.diff or {}).get("before")
        after[name] = (one.diff or {}).get("after")
    if params.prune and params.state == "present":
        result.values["removed"] = _prune(params, check_mode, result, before, after, **services)
    result.diff = {"before": before, "after": after}
    return result


def _prune(
    params: TokenParams,
    check_mode: bool,
    result: Result,
    before: dict[str, Any],
    after: dict[str, Any],
    **services: Any,
) -> list[str]:
    """Remove the tokens kept that `names` does not list; returns their names."""
    probe = TokenRunner(replace(params, names=None), check_mode=check_mode, **services)
    if not probe.store.paths.metadata.is_file():
        return []
    kept = probe._platform(probe.store.read_metadata()).secrets.token_names()
    removed = [name for name in kept if name not in (params.names or ())]
    for name in removed:
        one = TokenRunner(
            replace(params, name=name, names=None, state="absent"),
            check_mode=check_mode,
            **services,
        ).run()
        result.changed = result.changed or one.changed
        result.actions.extend(one.actions)
        result.warnings.extend(one.warnings)
        before[name] = (one.diff or {}).get("before")
        after[name] = (one.diff or {}).get("after")
    return removed
