"""Logic of skiff.fleet.wait (private to skiff.fleet; not a public API).

Converged means: every router named in `routers` is reachable, every link the
site dials is up, every listener of the site is listening, and every listener's
routing key has a reachable connector. A link whose peer refused its grant for
good (used up, or past its window) fails the wait at once: no retry can help. `problems()` answers that for one `/v1/status` document, so it is
tested with canned documents; `run_wait()` polls until it is empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    Platform,
    get_platform,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    SiteMetadata,
    SitePaths,
    SiteStore,
    validate_site_name,
)

PlatformFactory = Callable[[str, SitePaths, SiteMetadata], Platform]
POLL_SECONDS = 0.5
# What a link's error says when the peer refused a grant for good (the router's codes).
GRANT_REFUSALS = ("grant used", "grant expired")
REFUSED = "links refused for good"


@dataclass(frozen=True)
class WaitParams:
    site: str
    base_dir: str = DEFAULT_BASE_DIR
    routers: list[str] = field(default_factory=list)
    timeout: float = 60.0

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> WaitParams:
        return cls(
            **{k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None}
        )


def problems(status: dict[str, Any] | None, routers: list[str]) -> dict[str, list[str]]:
    """What keeps the site from being converged, by kind; {} when it is."""
    if status is None:
        return {"admin endpoint not answering": ["is the router running?"]}
    found: dict[str, list[str]] = {}
    # A name is a router id or a site: a site with replicas is reached through any
    # of its routers (`<site>.<pod>`).
    reachable = set()
    for router in status.get("routers") or []:
        if router.get("reachable"):
            reachable |= {router.get("id"), router.get("site")}
    missing = [r for r in routers if r not in reachable]
    if missing:
        found["routers not reachable"] = missing
    for link in status.get("links") or []:
        if link.get("direction") != "outgoing" or link.get("state") == "up":
            continue
        why = str(link.get("error") or "")
        kind = REFUSED if any(code in why for code in GRANT_REFUSALS) else "links not up"
        found.setdefault(kind, []).append(f"{link.get('name')} ({why or link.get('state')})")
    keys = status.get("routing_keys") or {}
    for listener in status.get("listeners") or []:
        name = listener.get("name")
        state = listener.get("state")
        if state == "error":
            found.setdefault("listeners in error", []).append(
                f"{name} ({listener.get('host')}:{listener.get('port')}: "
                f"{listener.get('error') or 'unknown error'})"
            )
            continue
        if state != "listening":
            found.setdefault("listeners not listening yet", []).append(f"{name} ({state})")
        # A listener with several routing keys is served when any of them is.
        served = vocabulary.listener_keys(listener)
        if not any((keys.get(key) or {}).get("reachable") for key in served):
            found.setdefault("listeners with no reachable connector", []).append(
                f"{name} (routing key '{', '.join(served)}')"
            )
    error = (status.get("config") or {}).get("error")
    if error:
        found["config error"] = [error]
    return found


def describe(found: dict[str, list[str]]) -> str:
    return "; ".join(f"{kind}: {', '.join(items)}" for kind, items in found.items())


def run_wait(
    params: WaitParams,
    check_mode: bool,
    *,
    platform_factory: PlatformFactory = get_platform,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Result:
    # check_mode changes nothing here: waiting only reads, so it runs the same.
    site = params.site
    if params.timeout < 0:
        raise SkiffError(f"{params.timeout} must be >= 0", site=site, field="timeout")
    for router in params.routers:
        try:
            validate_site_name(router, field_name="routers")
        except SkiffError as exc:
            raise exc.with_context(site=site) from None
    store = SiteStore.open(params.base_dir, site)
    metadata = store.require()
    platform = platform_factory(metadata.platform, store.paths, metadata)
    started = clock()
    deadline = started + params.timeout
    while True:
        if not platform.is_running():
            raise SkiffError("the router is not running; start it with skiff.fleet.site", site=site)
        status = platform.status()
        found = problems(status, params.routers)
        if not found:
            return Result(values={"status": status, "elapsed": round(clock() - started, 2)})
        if REFUSED in found:
            raise SkiffError(
                f"{describe({REFUSED: found[REFUSED]})}: the issuing site refused the "
                "grant this link was made from; ask it for a new one (skiff.fleet.token "
                "with dest there) and run again",
                site=site,
                field="links",
                details={"status": status, "problems": found},
            )
        if clock() >= deadline:
            raise SkiffError(
                f"not converged after {params.timeout:g} s: {describe(found)}",
                site=site,
                details={"status": status, "problems": found},
            )
        sleep(min(POLL_SECONDS, max(0.0, deadline - clock())))
