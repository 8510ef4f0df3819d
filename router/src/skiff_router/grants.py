"""One-time grants: a token for a peer outside the inventory, redeemed at its first link.

A grant is a client certificate in ``link_clients`` with a redemption window and a
limit. Unlike a token's, its certificate names no site: the first link of a site
made with it inside the window redeems it for that site, up to the limit of sites.
Later links of a redeeming site are accepted for the certificate's life, from any of
its routers and after either side restarts. Another site once the limit is reached,
or a new site after the window, is refused and told which (``grant used``,
``grant expired``).

Redemptions are kept in a ledger file in the router's state directory, so a restart
does not open a used grant again. The ledger is read and written under an exclusive
``flock``: the workers of a router, which are separate processes, never both spend
the last redemption.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("link")

LEDGER = "grants.json"
LEDGER_LOCK = "grants.lock"


@dataclass(frozen=True)
class Grant:
    """A client certificate's redemption terms (config ``link_clients[].grant``)."""

    redeem_by: int  # unix seconds: the end of the window for a first link
    redemptions: int  # sites that may redeem it


@dataclass(frozen=True)
class Refusal:
    public: str  # the short code the peer is told
    detail: str  # for our log and status


def refusal(
    grant: Grant, name: str, redeemers: Sequence[str], site: str, now: float
) -> Refusal | None:
    """Why a link of ``site`` with this grant is refused; None: it may link (and, when
    ``site`` is not among ``redeemers`` yet, redeems the grant)."""
    if site in redeemers:
        return None
    if len(redeemers) >= grant.redemptions:
        return Refusal(
            "grant used",
            f"grant '{name}' is already redeemed by site {', '.join(redeemers)} "
            f"({grant.redemptions} redemption{'s' if grant.redemptions > 1 else ''} "
            f"allowed): refused for site {site}",
        )
    if now >= grant.redeem_by:
        closed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(grant.redeem_by))
        return Refusal(
            "grant expired",
            f"grant '{name}' was not redeemed by site {site} before its window closed "
            f"at {closed}; the issuing site must issue a new one",
        )
    return None


def grant_id(name: str, grant: Grant) -> str:
    """What the ledger keeps a grant under: its name and window. A grant's next
    certificate (renewal) has both, so it keeps the redemptions; a grant issued anew
    under the same name has another window, so it starts with none."""
    return f"{name}@{grant.redeem_by}"


class GrantLedger:
    """The grants redeemed at this router: grant id (``grant_id``) -> redeeming sites."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / LEDGER
        self.refused = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.dir / LEDGER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            # A damaged ledger must not open the grants again: refuse until repaired.
            raise OSError(f"{self.path} is not valid JSON ({exc})") from None
        grants = data.get("grants") if isinstance(data, dict) else None
        if not isinstance(grants, dict):
            raise OSError(f"{self.path} has no 'grants' mapping")
        return {str(k): [str(s) for s in v] for k, v in grants.items() if isinstance(v, list)}

    def _write(self, grants: Mapping[str, Sequence[str]]) -> None:
        tmp = self.path.with_name(f".{LEDGER}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"v": 1, "grants": {k: list(v) for k, v in sorted(grants.items())}}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def redeem(self, name: str, grant: Grant, site: str, now: float) -> Refusal | None:
        """Admit a link of ``site`` made with a grant, recording a first redemption, or
        say why it is refused."""
        key = grant_id(name, grant)
        try:
            with self._locked():
                grants = self._read()
                redeemers = grants.get(key, [])
                why = refusal(grant, name, redeemers, site, now)
                if why is None and site not in redeemers:
                    self._write({**grants, key: [*redeemers, site]})
                    log.info("grant '%s' redeemed by site %s", name, site)
        except OSError as exc:
            why = Refusal(
                "grant unavailable",
                f"grant '{name}' cannot be checked: the grant ledger in {self.dir} is "
                f"unusable ({exc.strerror or exc}); fix or remove it",
            )
        if why is not None:
            self.refused += 1
            log.warning("link refused: %s", why.detail)
        return why

    def redeemers(self) -> dict[str, list[str]]:
        """For status: each grant's redeeming sites (empty when the ledger is unreadable)."""
        try:
            return self._read()
        except OSError:
            return {}


def status(ledger: GrantLedger | None, clients: Sequence[Any] | None, now: float) -> dict[str, Any]:
    """Each grant of ``link_clients`` by name: window, limit, redeemers and state."""
    if ledger is None or not clients:
        return {}
    redeemed = ledger.redeemers()
    out: dict[str, Any] = {}
    for client in clients:
        grant: Grant | None = client.grant
        if grant is None:
            continue
        sites = redeemed.get(grant_id(client.name, grant), [])
        state = (
            "redeemed" if len(sites) >= grant.redemptions
            else "expired" if now >= grant.redeem_by and not sites
            else "open" if now < grant.redeem_by
            else "redeemed"
        )  # fmt: skip
        out[client.name] = {
            "redeem_by": grant.redeem_by,
            "redemptions": grant.redemptions,
            "redeemed_by": sites,
            "state": state,
        }
    return out
