"""Which event loop runs the router: uvloop where it is installed (a dependency
of the router on Linux: the virtualenv, the image, Debian's python3-uvloop on
hosts), plain asyncio otherwise. ``SKIFF_ROUTER_LOOP`` overrides the choice:
``auto`` (default), ``uvloop`` (fail without it) or ``asyncio``."""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

ENV = "SKIFF_ROUTER_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


class LoopError(Exception):
    """The event loop asked for cannot be had; the message says what to do."""


def factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``choice`` (default: the environment, else auto);
    None means asyncio's own loop."""
    choice = choice or os.environ.get(ENV) or "auto"
    if choice not in CHOICES:
        raise LoopError(f"{ENV}={choice!r}: must be one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopError(
                f"{ENV}=uvloop but uvloop is not installed "
                "(pip install uvloop, or apt-get install python3-uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def run(main: Callable[[], Coroutine[Any, Any, T]], choice: str | None = None) -> T:
    """asyncio.run(main()) on the chosen loop."""
    loop_factory = factory(choice)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def describe(loop: asyncio.AbstractEventLoop) -> tuple[str, str]:
    """(name, version) of a running loop: ("uvloop", "0.23.0") or ("asyncio", "3.11.2")."""
    if type(loop).__module__.split(".")[0] == "uvloop":
        import uvloop

        return "uvloop", uvloop.__version__
    return "asyncio", platform.python_version()
