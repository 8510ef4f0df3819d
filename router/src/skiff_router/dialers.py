"""The two ends a link has in the runtime: a dialer (an outgoing link, redialed
with backoff) and an incoming connection's owner."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from skiff_router.config import LinkConfig, Mode

if TYPE_CHECKING:
    from skiff_router.transports import LinkConn


class DialerState(StrEnum):
    CONNECTING = "connecting"  # dialing an endpoint, or TLS/HELLO under way
    UP = "up"
    DOWN = "down"  # waiting before the next attempt


DIALER_TRANSITIONS: dict[DialerState, frozenset[DialerState]] = {
    DialerState.CONNECTING: frozenset({DialerState.UP, DialerState.DOWN}),
    DialerState.UP: frozenset({DialerState.DOWN}),
    DialerState.DOWN: frozenset({DialerState.CONNECTING}),
}


@dataclass(eq=False)
class Dialer:
    """An outgoing link: dials its endpoints in turn, redials with backoff."""

    cfg: LinkConfig
    task: asyncio.Task[None] | None = None
    state: DialerState = DialerState.CONNECTING
    peer_router: str | None = None  # the far router's id while up
    endpoint: str | None = None
    error: str | None = None
    stopped: bool = False
    conn: LinkConn | None = None
    # A link to another worker of this router: dialed over its private Unix socket.
    worker_socket: str | None = None
    # When the link's next certificate (``next_cert``) becomes valid, unix seconds;
    # and whether the connection up was made with it.
    successor_from: int | None = None
    on_successor: bool = False

    def to(self, state: DialerState, error: str | None = None) -> None:
        if state is not self.state:
            if state not in DIALER_TRANSITIONS[self.state]:
                raise RuntimeError(f"dialer cannot go from {self.state} to {state}")
            self.state = state
        if state is DialerState.UP:
            self.error = None
        elif error is not None:
            self.error = error
        if state is not DialerState.UP:
            self.peer_router = None


@dataclass(eq=False)
class Incoming:
    endpoint: str = "?"
    peer: str | None = None  # the dialing router's id, once its HELLO arrived
    peer_site: str | None = None
    cost: int = 1
    mode: Mode = Mode.INTERIOR
    worker: bool = False  # from another worker of this router (workers.py)
