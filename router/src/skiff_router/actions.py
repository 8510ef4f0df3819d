"""What the sans-I/O core asks of the I/O layer, and where the components of the
core leave it: actions (connect, deliver, close...) and frames per link."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from skiff_router.codec import FrameType, Mcast
from skiff_router.config import Mode

if TYPE_CHECKING:
    from skiff_router.topology import Link


class Direction(StrEnum):
    OUTGOING = "outgoing"  # we dialed
    INCOMING = "incoming"  # the peer dialed our link access


@dataclass(frozen=True, slots=True)
class ConnectLocal:
    """Open a connection to a local connector for ``key``; report back with
    local_connected / local_connect_failed."""

    lid: int
    key: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Write ``data`` to the local socket, then call local_consumed(lid, len)."""

    lid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DeliverEof:
    lid: int


@dataclass(frozen=True, slots=True)
class CloseLocal:
    """Close the local socket once earlier actions for it are done; abort = reset."""

    lid: int
    abort: bool


@dataclass(frozen=True, slots=True)
class ResumeRead:
    lid: int


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    link: int
    peer: str  # router id
    cost: int
    site: str  # the peer's site
    mode: Mode  # the peer's mode


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Send what is pending for the link, then close its transport."""

    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class McastDeliver:
    """A multicast message for local subscribers of ``message.address``."""

    message: Mcast


@dataclass(frozen=True, slots=True)
class CredentialHeld:
    """A router (``holder``: its run, or its id if older) now holds a link made
    with this client certificate here (``held``), or holds none any more: the
    other workers of this router must see it (workers.CredentialMarks)."""

    fingerprint: str
    holder: str
    held: bool


Action = (
    ConnectLocal
    | Deliver
    | DeliverEof
    | CloseLocal
    | ResumeRead
    | LinkEstablished
    | CloseLink
    | McastDeliver
    | CredentialHeld
)


class Outbox:
    """Actions and link output collected while the core handles one input."""

    __slots__ = ("actions", "dirty", "queued", "urgent")

    def __init__(self) -> None:
        self.actions: list[Action] = []
        # Links with queued frames, by handle; a link closed meanwhile stays here
        # until its CLOSE frame has been taken.
        self.dirty: dict[int, Link] = {}
        # What decides between writing now and at the end of the event-loop turn
        # (small frames of many flows together): bytes queued, and whether a frame
        # someone waits on (credit) is among them.
        self.queued = 0
        self.urgent = False

    def send(self, link: Link, ftype: FrameType, flow: int = 0, payload: bytes = b"") -> None:
        link.proto.send(ftype, flow, payload)
        self.dirty[link.handle] = link
        self.queued += len(payload)

    def send_urgent(self, link: Link, ftype: FrameType, flow: int, payload: bytes) -> None:
        """A frame the peer is waiting for (credit): the I/O layer writes it at once."""
        self.send(link, ftype, flow, payload)
        self.urgent = True

    def send_frame(self, link: Link, frame: bytes) -> None:
        link.proto.send_frame(frame)
        self.dirty[link.handle] = link
        self.queued += len(frame)

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def take_writes(self) -> list[tuple[int, list[bytes]]]:
        """Output pieces per link handle (a closed link's CLOSE frame included)."""
        out = []
        for h, link in self.dirty.items():
            pieces = link.proto.take_output()
            if pieces:
                out.append((h, pieces))
        self.dirty.clear()
        self.queued = 0
        self.urgent = False
        return out
