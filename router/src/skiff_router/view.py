"""What the admin endpoint and the metrics see of a router: a small view, so
neither depends on the runtime (and the runtime can own the admin server)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from skiff_router.codec import Mcast

SUBSCRIBER_QUEUE = 1024  # multicast messages buffered per subscriber before it is dropped


class Subscriber:
    """A local multicast subscriber (the admin endpoint's streaming GET)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queue: asyncio.Queue[Mcast | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.dropped = False

    def offer(self, msg: Mcast) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            # Too slow: end its stream rather than buffer without bound.
            self.end()

    def end(self) -> None:
        """No more messages: the stream closes once it has read the end marker."""
        self.dropped = True
        with contextlib.suppress(asyncio.QueueFull, asyncio.QueueEmpty):
            if self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class RouterView(Protocol):
    """Read-only: what a router reports about itself."""

    @property
    def router_id(self) -> str: ...

    async def refresh(self, flows: bool = False) -> None:
        """Gather what the next status and metrics (or, with ``flows``, the next flow
        list) need from elsewhere (a router's other worker processes); nothing for
        a lone process."""

    def status(self) -> dict[str, Any]:
        """The ``/v1/status`` document (docs/design.md)."""

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons it is not)."""

    def flows_status(self) -> list[dict[str, Any]]:
        """The ``/v1/flows`` document."""

    def network(self) -> dict[str, Any]:
        """The ``/v1/network`` document: the whole network from link state."""

    def counters(self) -> dict[str, int]:
        """Totals that only metrics export: ``route_computations``, ``config_reloads``."""

    def certificates(self) -> list[tuple[str, str, int | None]]:
        """(kind, name, notAfter in unix seconds or None when unreadable) of every
        certificate the router uses."""


class MulticastPort(Protocol):
    """Publishing and subscribing, for the admin endpoint's multicast API."""

    def publish(self, address: str, payload: bytes) -> int:
        """Send network-wide; returns the message's sequence number."""

    def subscribe(self, address: str) -> Subscriber: ...

    def unsubscribe(self, sub: Subscriber) -> None: ...
