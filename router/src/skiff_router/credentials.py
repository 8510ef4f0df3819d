"""Which routers hold a link made with each client certificate (sans-I/O).

A token's certificate is bound to the routers that use it: at most ``allowed`` of
them at once (one; a site with replicas gets one per replica and one for a
rollout's extra pod). A router is one run of it, named by the ``instance`` of its
HELLO, which its workers, its several links and a link's make-before-break
successor all share. Another router presenting the certificate while those links
are up is refused: a copied token cannot link beside the site it was issued to.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import dataclass, field

from skiff_router.actions import CredentialHeld, Outbox
from skiff_router.grants import Grant

log = logging.getLogger("link")


@dataclass(frozen=True)
class Credential:
    """What an incoming link's client certificate binds it to."""

    fingerprint: str
    allowed: int  # routers that may hold a link with it at once
    elsewhere: frozenset[str] = frozenset()  # holders on the other workers, at connect
    name: str = ""  # its token's name, for messages
    grant: Grant | None = None  # a one-time grant (grants.py)


@dataclass
class _Holder:
    router: str  # its router id, for the log
    links: set[int] = field(default_factory=set)


class CredentialUse:
    """The holders of this process's links. A router with several workers is one
    router: each worker announces its holders (``CredentialHeld``) and is told the
    others' (``elsewhere``) when a link comes in."""

    def __init__(self, outbox: Outbox) -> None:
        self._holders: dict[str, dict[str, _Holder]] = {}  # fingerprint -> holder key -> holder
        self._out = outbox
        self.refused = 0

    def admit(
        self,
        fingerprint: str,
        allowed: int,
        instance: str,
        router: str,
        handle: int,
        elsewhere: Set[str] = frozenset(),
    ) -> str | None:
        """Record a link of ``router`` (run ``instance``; "" from an older router, which
        then counts by its id) made with this certificate, or say why it is refused.
        ``elsewhere``: the holders other workers of this router have."""
        holders = self._holders.get(fingerprint) or {}
        key = instance or f"id:{router}"
        if key not in holders and key not in elsewhere and len({*holders, *elsewhere}) >= allowed:
            self.refused += 1
            here = sorted({h.router for h in holders.values()})
            others = f"router {', '.join(here)}" if here else "a router on another worker"
            why = (
                f"client certificate sha256 {fingerprint[:16]}... is in use by {others} "
                f"(another run): refused for router {router} "
                f"({allowed} router{'s' if allowed > 1 else ''} may hold it; a copied token?)"
            )
            log.warning("link refused: %s", why)
            return why
        self._holders[fingerprint] = holders
        if key not in holders:
            holders[key] = _Holder(router)
            self._out.actions.append(CredentialHeld(fingerprint, key, True))
        holders[key].links.add(handle)
        return None

    def release(self, fingerprint: str, handle: int) -> None:
        holders = self._holders.get(fingerprint, {})
        for key, holder in list(holders.items()):
            holder.links.discard(handle)
            if not holder.links:
                del holders[key]
                self._out.actions.append(CredentialHeld(fingerprint, key, False))
        if not holders:
            self._holders.pop(fingerprint, None)
