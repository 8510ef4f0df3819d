"""Logic of skiff.fleet.token (private to skiff.fleet; not a public API).

A token is issued once and read back: the client certificate, its key and
`token.json` stay in `tokens/<name>/`, and a later run returns the same token
while it is still valid, signed by the current CA and names the current link
endpoints. Anything else issues a new client certificate.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, validation
from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    KEY_MODE,
    SiteStore,
    atomic_write,
    dump_json,
    ensure_dir,
)
from ansible_collections.skiff.fleet.plugins.module_utils.token_codec import VERSION, Token


@dataclass(frozen=True)
class TokenParams:
    site: str
    name: str
    base_dir: str = DEFAULT_BASE_DIR
    state: str = "present"
    valid_days: int = pki.CLIENT_VALID_DAYS

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> TokenParams:
        return cls(
            **{k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None}
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class TokenRunner:
    def __init__(
        self, params: TokenParams, *, check_mode: bool, now: datetime | None = None
    ) -> None:
        self.params = params
        self.check_mode = check_mode
        self.now = now
        self.store = SiteStore.open(params.base_dir, params.site)

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

    def present(self) -> Result:
        params, paths, result = self.params, self.store.paths, Result()
        if params.valid_days < 2:
            raise SkiffError(f"{params.valid_days} must be at least 2", field="valid_days")
        metadata = self.store.require()
        config = self.store.read_config()
        if not config.get("link_access") or not metadata.link_endpoints:
            raise SkiffError(
                "this site does not accept links, so its tokens would lead nowhere; "
                "set link_access: true and link_endpoint with skiff.fleet.site first",
            )
        ca_pem, ca_key = pki.read_optional(paths.ca_cert), pki.read_optional(paths.ca_key)
        if ca_pem is None or ca_key is None or pki.ca_reissue_reason(ca_pem, ca_key):
            raise SkiffError(
                "the site CA is missing or unusable; re-run skiff.fleet.site to repair it"
            )

        folder = paths.token_dir(params.name)
        cert_pem = pki.read_optional(folder / "tls.crt")
        key_pem = pki.read_optional(folder / "tls.key")
        stored = _read_json(folder / "token.json") or {}
        reason = pki.reissue_reason(cert_pem, key_pem, ca_cert_pem=ca_pem, now=self.now)
        if not reason and stored.get("endpoints") != metadata.link_endpoints:
            reason = "the link endpoints changed"
        if not reason and stored.get("site") != params.site:
            reason = "token.json does not match"

        before = self._info_of(stored, cert_pem) if cert_pem and stored else {}
        if not reason and cert_pem and key_pem:  # reissue_reason() found both
            token = Token(
                params.site, params.name, metadata.link_endpoints, ca_pem.decode(),
                cert_pem.decode(), key_pem.decode(),
            )  # fmt: skip
            result.values = {"token": token.encode(), "token_info": before}
            result.diff = {"before": before, "after": before}
            return result

        result.act(
            f"issue token '{params.name}'"
            + ("" if reason == "missing" else f" (the previous one: {reason})")
        )
        if self.check_mode:
            # No token to return: the calling play must not mistake a placeholder for one.
            result.diff = {"before": before, "after": {"name": params.name, "site": params.site,
                                                       "endpoints": metadata.link_endpoints}}  # fmt: skip
            result.values = {"token_info": {}}
            return result

        ca = pki.Issued(ca_pem, ca_key)
        issued = pki.issue_client_cert(ca, params.name, valid_days=params.valid_days)
        ensure_dir(paths.tokens_dir)
        ensure_dir(folder)
        pki.write_pair(folder / "tls.crt", folder / "tls.key", issued)
        info = pki.describe(issued.cert_pem)
        stored = {
            "v": VERSION,
            "site": params.site,
            "name": params.name,
            "endpoints": metadata.link_endpoints,
            "serial": info["serial"],
            "not_after": info["not_after"],
        }
        atomic_write(folder / "token.json", dump_json(stored), KEY_MODE)
        token = Token(
            params.site, params.name, metadata.link_endpoints, ca_pem.decode(),
            issued.cert_pem.decode(), issued.key_pem.decode(),
        )  # fmt: skip
        after = self._info_of(stored, issued.cert_pem)
        result.values = {"token": token.encode(), "token_info": after}
        result.diff = {"before": before, "after": after}
        return result

    @staticmethod
    def _info_of(stored: dict[str, Any], cert_pem: bytes) -> dict[str, Any]:
        try:
            cert = pki.describe(cert_pem)
        except ValueError:
            cert = {}
        return {
            "name": stored.get("name"),
            "site": stored.get("site"),
            "endpoints": stored.get("endpoints"),
            "serial": cert.get("serial"),
            "not_after": cert.get("not_after"),
            "sha256_fingerprint": cert.get("sha256_fingerprint"),
        }

    def absent(self) -> Result:
        result = Result()
        folder = self.store.paths.token_dir(self.params.name)
        if not folder.exists():
            return result
        result.act(f"remove token '{self.params.name}' (links already made with it keep working "
                   "until the site CA changes)")  # fmt: skip
        result.diff = {"before": {"name": self.params.name}, "after": {}}
        if not self.check_mode:
            shutil.rmtree(folder)
        return result


def run_token(params: TokenParams, check_mode: bool, **services: Any) -> Result:
    return TokenRunner(params, check_mode=check_mode, **services).run()
