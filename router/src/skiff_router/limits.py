"""File descriptors: the one resource a peer can make the router spend from afar
(every flow it opens to a connector here is a socket). The router raises its soft
limit to the hard one at start, and caps flows below it so a flood of OPEN
frames is refused frame by frame instead of leaving the process unable to
accept, read its files or answer its admin endpoint."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("router")

# Descriptors kept for what is not a flow: links, listeners, the admin endpoint,
# config and TLS files, the event loop's own.
FD_RESERVE = 256


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


def local_flow_budget(nofile: int) -> int:
    """How many flows may have a local socket here (connector or listener side)."""
    return max(16, nofile - FD_RESERVE)
