"""The agent's I/O: watch threads, the multicast subscription, the health endpoint,
and one main loop that turns what they report into the overlay file, proxy
Service actions and this site's announcement (``plan.reconcile`` decides).

Failure behaviour: an API that is unreachable or answers 403/5xx leaves the
caches, and so the overlay, as they last were (the last good set); the agent
has no readiness of its own and never touches the router's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import logging
import os
import queue
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skiff_router import __version__
from skiff_router import log as logsetup
from skiff_router.codec import MAX_DATA
from skiff_router.config import AdminTokenError, read_admin_token
from skiff_router.kube.api import ApiError, KubeApi, in_cluster
from skiff_router.kube.config import AgentConfig, AgentConfigError, live_update, load, parse
from skiff_router.kube.exposure import ANNOUNCE_ADDRESS, AnnouncementBook, Problem, encode
from skiff_router.kube.listwatch import ListRequest, ListWatch, WatchRequest
from skiff_router.kube.objects import pod_from_api, service_from_api
from skiff_router.kube.plan import Create, Delete, Inputs, Patch, assemble_overlay, reconcile

log = logging.getLogger("agent")

MAX_OBJECTS = 20_000  # pods or Services kept per watch
MAX_ANNOUNCEMENT = MAX_DATA - 1024  # what the router's admin endpoint accepts
POD_NAME_ENV = "SKIFF_POD_NAME"  # set by the Deployment (the downward API)
STUCK_AFTER = 60.0  # /healthz fails when the main loop has not turned for this long

DONE = {"create": "created", "patch": "patched", "delete": "deleted"}
VERB_HINT = {
    "pods": "list and watch on pods",
    "services": "list, watch, create, patch and delete on services",
}


@dataclass(frozen=True)
class Tuning:
    """Timings (seconds); the defaults are for production, tests shorten them."""

    watch_timeout: int = 240  # server-side timeoutSeconds of one watch request
    watch_read_timeout: float = 270.0  # a stream silent for longer is dropped and resumed
    backoff_first: float = 0.5
    backoff_max: float = 30.0
    action_backoff_max: float = 60.0
    invalid_retry: float = 300.0  # a 422 is retried with the same body only this late
    conflict_retry: float = 1.0  # 409: the watch brings the current object meanwhile
    router_retry: float = 1.0
    partial_overlay_after: float = 30.0  # first overlay with a source still unknown


def _api_problem(kind: str, namespace: str, exc: ApiError, what: str) -> Problem:
    if exc.status == 403:
        msg = (
            f"forbidden ({exc.message}): the Role skiff-agent must allow "
            f"{VERB_HINT.get(kind, what)} in namespace {namespace}"
        )
    elif exc.status == 401:
        msg = "unauthorized: the service-account token is missing, expired or not accepted"
    elif exc.status == 0:
        msg = f"API not reachable: {exc.message}; keeping the last good state"
    else:
        msg = f"{exc.status} {exc.reason}: {exc.message}"
    return Problem(f"api/{kind}", what, msg)


class Watcher(threading.Thread):
    """List+watch of one resource of the namespace, in its own thread."""

    def __init__(
        self,
        api: KubeApi,
        kind: str,
        namespace: str,
        convert: Callable[[dict[str, Any]], Any],
        notify: Callable[[], None],
        stop: threading.Event,
        tuning: Tuning,
        max_objects: int = MAX_OBJECTS,
    ) -> None:
        super().__init__(name=f"watch-{kind}", daemon=True)
        self.api, self.kind, self.namespace = api, kind, namespace
        self.path = f"/api/v1/namespaces/{namespace}/{kind}"
        self.notify, self.stop, self.tuning = notify, stop, tuning
        self.lock = threading.Lock()
        self.lw: ListWatch[Any] = ListWatch(convert, max_objects)
        self.problem: Problem | None = None
        self.relists = 0  # complete lists done (410 Gone and errors cause new ones)

    def snapshot(self) -> dict[str, Any] | None:
        with self.lock:
            return dict(self.lw.objects) if self.lw.synced else None

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "synced": self.lw.synced,
                "objects": len(self.lw.objects),
                "overflow": self.lw.overflow,
                "relists": self.relists,
                "resource_version": self.lw.resource_version,
                "error": None if self.problem is None else self.problem.message,
            }

    def apply_write(self, name: str, obj: dict[str, Any] | None) -> None:
        with self.lock:
            self.lw.apply_write(name, obj)

    def _set_problem(self, problem: Problem | None) -> None:
        with self.lock:
            changed, self.problem = self.problem != problem, problem
        if changed:
            self.notify()

    def run(self) -> None:
        backoff = self.tuning.backoff_first
        while not self.stop.is_set():
            with self.lock:
                req = self.lw.next_request()
            try:
                if isinstance(req, ListRequest):
                    body = self.api.list(self.path, req.continue_token)
                    with self.lock:
                        changed = self.lw.list_page(body)
                        if not isinstance(self.lw.next_request(), ListRequest):
                            self.relists += 1  # the list is complete
                    self._set_problem(None)
                    backoff = self.tuning.backoff_first
                    if changed:
                        self.notify()
                    continue
                started, events = time.monotonic(), 0
                for events, event in enumerate(  # noqa: B007 (events is read after the loop)
                    self.api.watch(
                        self.path,
                        req.resource_version,
                        self.tuning.watch_timeout,
                        self.tuning.watch_read_timeout,
                    ),
                    start=1,
                ):
                    with self.lock:
                        changed = self.lw.watch_event(event)
                        relist = isinstance(self.lw.next_request(), ListRequest)
                    if event.get("type") == "ERROR":
                        status = (event.get("object") or {}).get("message", "")
                        log.info("watch %s: ERROR event (%s); listing again", self.kind, status)
                    if changed:
                        self.notify()
                    if relist or self.stop.is_set():
                        break
                else:
                    if events == 0 and time.monotonic() - started < 1.0:
                        # A server that ends every watch at once must not make us spin.
                        self.stop.wait(backoff)
                        backoff = min(backoff * 2, self.tuning.backoff_max)
                    else:
                        backoff = self.tuning.backoff_first
                self._set_problem(None)
            except ApiError as exc:
                if self.stop.is_set():
                    return
                if exc.status == 410 and (
                    isinstance(req, WatchRequest) or req.continue_token is not None
                ):
                    log.info("%s: resourceVersion expired (410 Gone); listing again", self.kind)
                    with self.lock:
                        self.lw.expired()
                    continue
                with self.lock:
                    self.lw.failed()
                what = "list" if isinstance(req, ListRequest) else "watch"
                problem = _api_problem(self.kind, self.namespace, exc, what)
                if problem != self.problem:
                    log.warning("%s", problem)
                self._set_problem(problem)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.tuning.backoff_max)


class RouterAdmin:
    """The router's admin endpoint in the same pod (plain HTTP on loopback), with the
    router's admin token when it has one (read at each request: it may be replaced)."""

    def __init__(self, url: str, token_file: str = "") -> None:
        self.token_file = token_file
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 9191
        self.path = "/v1/multicast/" + urllib.parse.quote(ANNOUNCE_ADDRESS, safe="")
        self._lock = threading.Lock()
        self._stream: http.client.HTTPConnection | None = None

    def publish(self, payload: bytes) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("POST", self.path, body=payload, headers=self._headers())
            resp = conn.getresponse()
            body = resp.read(4096)
            if resp.status != 200:
                raise OSError(
                    f"router answered {resp.status}: {body[:200].decode(errors='replace')}"
                )
        except http.client.HTTPException as exc:
            raise OSError(str(exc)) from None
        finally:
            conn.close()

    def subscribe(self, read_timeout: float) -> Any:
        """Yields None once subscribed, then (origin, payload) per message."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=read_timeout)
        with self._lock:
            self._stream = conn
        try:
            conn.request("GET", self.path, headers=self._headers())
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"router answered {resp.status}")
            first = json.loads(resp.readline(4096) or b"null")
            if not isinstance(first, dict) or "subscribed" not in first:
                raise OSError("not a multicast subscription")
            yield None
            while line := resp.readline(2 * MAX_DATA):
                msg = json.loads(line)
                yield str(msg.get("origin", "")), base64.b64decode(msg.get("payload", ""))
        except (http.client.HTTPException, ValueError) as exc:
            raise OSError(str(exc)) from None
        finally:
            with self._lock:
                self._stream = None
            conn.close()

    def _headers(self) -> dict[str, str]:
        if not self.token_file:
            return {}
        try:
            return {"Authorization": f"Bearer {read_admin_token(self.token_file)}"}
        except AdminTokenError as exc:  # the router refuses, and says so: retried
            raise OSError(str(exc)) from None

    def close(self) -> None:
        with self._lock:
            conn = self._stream
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)


class Subscriber(threading.Thread):
    """Follows the router's multicast for announcements; reports through the queue."""

    def __init__(
        self, admin: RouterAdmin, events: queue.Queue[Any], stop: threading.Event, cfg: AgentConfig
    ) -> None:
        super().__init__(name="multicast", daemon=True)
        self.admin, self.events, self.stop = admin, events, stop
        # Our own announcements come every announce_interval: silence means a stuck stream.
        self.read_timeout = 3 * cfg.announce_interval

    def run(self) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            subscribed = False
            try:
                for item in self.admin.subscribe(self.read_timeout):
                    if item is None:
                        subscribed = True
                        backoff = 0.2
                        self.events.put(("subscribed",))
                    else:
                        self.events.put(("message", *item))
                error: str | None = "the router ended the subscription"
            except TimeoutError:
                # Subscribed but nothing announced for a while (not even by us): subscribe again.
                error = None if subscribed else "the router does not answer"
            except OSError as exc:
                error = str(exc) or type(exc).__name__
            if subscribed:
                self.events.put(("unsubscribed",))
            if self.stop.is_set():
                return
            if error is None:
                continue
            self.events.put(("router-error", error))
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)


class OverlayFile:
    """The router's overlay: written atomically, and only when its bytes change."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.previous: dict[str, Any] = {}
        self.written: bytes | None = None
        try:
            raw = self.path.read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            # A restarted agent starts from what the router already runs.
            self.previous, self.written = data, raw

    @staticmethod
    def render(data: dict[str, Any]) -> bytes:
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    def write(self, data: dict[str, Any]) -> bool:
        if self.written is not None and data == self.previous:
            return False  # same content (a file written by hand may differ in layout only)
        raw = self.render(data)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self.previous, self.written = data, raw
        return True

    @property
    def sha256(self) -> str | None:
        return None if self.written is None else hashlib.sha256(self.written).hexdigest()


@dataclass
class _Failure:
    fingerprint: str
    retry_at: float
    delay: float


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        api: KubeApi,
        tuning: Tuning | None = None,
        clock: Callable[[], float] = time.monotonic,
        config_path: str | None = None,
        pod_name: str | None = None,
    ) -> None:
        self.cfg, self.api, self.tuning, self.clock = cfg, api, tuning or Tuning(), clock
        # The file ``cfg`` came from: a changed file's connectors apply at once (the
        # platform changes them with no rollout; the kubelet updates the mounted file).
        self.config_path = config_path
        self.config_bytes = _read_or_none(config_path)
        self.pod_name = pod_name  # this pod: its router links to the other replicas
        self.stop_event = threading.Event()
        self.events: queue.Queue[Any] = queue.Queue()
        self.book = AnnouncementBook(cfg.site)
        self.overlay = OverlayFile(cfg.overlay)
        self.admin = RouterAdmin(cfg.router_admin, cfg.router_admin_token_file)
        notify = self._notify
        self.pods = self._pod_watcher() if cfg.connectors or cfg.siblings else None
        self.services = (
            Watcher(
                api,
                "services",
                cfg.namespace,
                service_from_api,
                notify,
                self.stop_event,
                self.tuning,
            )
            if cfg.expose
            else None
        )
        self.subscriber = (
            Subscriber(self.admin, self.events, self.stop_event, cfg) if cfg.expose else None
        )
        self.health: http.server.ThreadingHTTPServer | None = None
        self.heartbeat = clock()
        self.partial_after = clock() + self.tuning.partial_overlay_after
        self.failures: dict[str, _Failure] = {}
        self.action_problems: dict[str, Problem] = {}
        self.other_problems: dict[str, Problem] = {}  # router, overlay: keyed by what
        self.problems: list[Problem] = []
        self.last_payload: bytes | None = None
        self.next_announce = 0.0
        self.exposed_names: list[str] = []
        self.proxies: list[str] = []
        self.subscribed = False
        self.lock = threading.Lock()  # the status (health thread), the pending-change flag
        self._status: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self._change_pending = False

    def _pod_watcher(self) -> Watcher:
        return Watcher(
            self.api,
            "pods",
            self.cfg.namespace,
            pod_from_api,
            self._notify,
            self.stop_event,
            self.tuning,
        )

    def _notify(self) -> None:
        # One pending notice is enough: the main loop reads the caches, not the events.
        with self.lock:
            if self._change_pending:
                return
            self._change_pending = True
        self.events.put(("changed",))

    # -- life cycle

    def start(self) -> None:
        self._start_health()
        for t in (self.pods, self.services, self.subscriber):
            if t is not None:
                t.start()
                self._threads.append(t)
        main = threading.Thread(target=self._loop, name="agent", daemon=True)
        main.start()
        self._threads.append(main)
        log.info(
            "agent for site %s in namespace %s: overlay %s",
            self.cfg.site,
            self.cfg.namespace,
            self.cfg.overlay,
        )

    def stop(self) -> None:
        self.stop_event.set()
        self.events.put(("stop",))
        self.api.close()
        self.admin.close()
        if self.health is not None:
            self.health.shutdown()
            self.health.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def _start_health(self) -> None:
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = f"skiff-router-agent/{__version__}"

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    age = agent.clock() - agent.heartbeat
                    ok = age < STUCK_AFTER
                    self._send(200 if ok else 503, b"ok\n" if ok else b"main loop stuck\n")
                elif self.path == "/v1/status":
                    body = json.dumps(agent.status(), indent=2).encode() + b"\n"
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds are not news

        server = http.server.ThreadingHTTPServer(
            (self.cfg.health_host, self.cfg.health_port), Handler
        )
        server.daemon_threads = True
        self.health = server
        t = threading.Thread(target=server.serve_forever, name="health", daemon=True)
        t.start()
        self._threads.append(t)

    # -- main loop

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            now = self.clock()
            self.heartbeat = now
            deadlines = [now + 1.0]
            if self.cfg.expose and self.last_payload is not None:
                deadlines.append(self.next_announce)  # the periodic repeat
            expiry = self.book.next_expiry()
            if expiry is not None:
                deadlines.append(expiry)
            deadlines += [f.retry_at for f in self.failures.values()]
            if self.book.ever_subscribed_since is not None and not self.book.complete(
                now, self.cfg.ttl
            ):
                deadlines.append(self.book.ever_subscribed_since + self.cfg.ttl)
            timeout = max(0.01, min(deadlines) - now)
            try:
                item = self.events.get(timeout=timeout)
                self._handle(item)
                while True:
                    self._handle(self.events.get_nowait())
            except queue.Empty:
                pass
            if self.stop_event.is_set():
                return
            try:
                self._check_config()
                for _round in range(3):  # our own writes change the caches: plan again at once
                    if not self.step():
                        break
            except Exception:  # one bad turn must not end the agent; the log says why
                log.exception("agent step failed")

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        now = self.clock()
        if kind == "changed":
            with self.lock:
                self._change_pending = False
        if kind == "subscribed":
            self.book.subscribed(now)
            self.subscribed = True
            self.other_problems.pop("subscribe", None)
            self.next_announce = now  # announce at once to a (re)started router
        elif kind == "unsubscribed":
            self.book.unsubscribed()
            self.subscribed = False
        elif kind == "router-error":
            self.other_problems["subscribe"] = Problem(
                "router/multicast",
                "router_admin",
                f"cannot follow {self.cfg.router_admin}: {item[1]}; retrying",
            )
        elif kind == "message":
            _unused, origin, payload = item
            _unused, problem = self.book.receive(origin, payload, now)
            if problem is not None:
                log.warning("%s", problem)

    def _check_config(self) -> None:
        """Take the connectors of a changed config file; keep the running ones when the
        file cannot be read or is not valid (the problem says why)."""
        if self.config_path is None:
            return
        raw = _read_or_none(self.config_path)
        if raw is None or raw == self.config_bytes:
            return
        self.config_bytes = raw
        self.other_problems.pop("config", None)
        try:
            new = parse(raw)
        except AgentConfigError as exc:
            self.other_problems["config"] = Problem(
                "config",
                self.config_path,
                f"{'; '.join(exc.lines())}; the agent keeps its running connectors",
            )
            return
        cfg, waiting = live_update(self.cfg, new)
        if waiting:
            self.other_problems["config"] = Problem(
                "config",
                self.config_path,
                f"{', '.join(waiting)} changed: in force when the agent restarts",
            )
        if cfg.connectors != self.cfg.connectors:
            log.info(
                "config changed: %d selector connectors (%s)",
                len(cfg.connectors),
                ", ".join(c.name for c in cfg.connectors) or "none",
            )
        self.cfg = cfg
        if cfg.connectors and self.pods is None:
            self.pods = self._pod_watcher()
            self.pods.start()
            self._threads.append(self.pods)

    def step(self) -> bool:
        """One turn: plan, write the overlay, act, announce. True when an action changed
        the caches (plan again)."""
        now = self.clock()
        self.book.expire(now)
        inputs = Inputs(
            pods=None if self.pods is None else self.pods.snapshot(),
            services=None if self.services is None else self.services.snapshot(),
            announcements=self.book.active(),
            announcements_complete=self.book.complete(now, self.cfg.ttl),
            own_pod=self.pod_name,
        )
        outcome = reconcile(self.cfg, inputs)
        parts = (
            outcome.pod_connectors,
            outcome.service_connectors,
            outcome.proxy_listeners,
            outcome.sibling_links,
        )
        known = [p is not None for p in parts]
        # A fresh start writes once every source is known (one reload, not two); a part
        # that stays unknown (e.g. pods forbidden) holds the rest back only for a while.
        if all(known) or (
            any(known) and (self.overlay.written is not None or now >= self.partial_after)
        ):
            data = assemble_overlay(outcome, self.overlay.previous)
            try:
                if self.overlay.write(data):
                    log.info(
                        "overlay written: %d listeners, %d connectors, %d links (sha256 %s)",
                        len(data["listeners"]),
                        len(data["connectors"]),
                        len(data["links"]),
                        (self.overlay.sha256 or "")[:12],
                    )
                self.other_problems.pop("overlay", None)
            except OSError as exc:
                self.other_problems["overlay"] = Problem(
                    "overlay", self.cfg.overlay, f"cannot write: {exc.strerror or exc}"
                )
        acted = self._act(outcome.actions, now)
        if not self.cfg.expose:
            pass
        elif outcome.exposed is not None:
            self.exposed_names = [e.name for e in outcome.exposed]
            self._announce(encode(self.cfg.site, outcome.exposed, self.cfg.ttl), now)
        elif self.last_payload is not None:
            self._announce(self.last_payload, now)  # the API is away: repeat the last good set
        if self.services is not None:
            snap = self.services.snapshot() or {}
            self.proxies = sorted(n for n, s in snap.items() if s.owned_by(self.cfg.site))
        self._update_problems(outcome.problems)
        return acted

    # -- proxy Service actions

    def _act(self, actions: list[Create | Patch | Delete], now: float) -> bool:
        planned = {a.name for a in actions}
        for name in list(self.failures):
            if name not in planned:
                del self.failures[name]
                self.action_problems.pop(name, None)
        acted = False
        assert self.services is not None or not actions
        away: _Failure | None = None  # the API is away: the rest waits as long
        for action in actions:
            fingerprint = json.dumps(action.__dict__, sort_keys=True, default=str)
            failure = self.failures.get(action.name)
            if failure and failure.fingerprint == fingerprint and now < failure.retry_at:
                continue
            if away is not None:
                self.failures[action.name] = _Failure(fingerprint, away.retry_at, away.delay)
                continue
            self.heartbeat = self.clock()  # a slow API is not a stuck agent
            path = f"/api/v1/namespaces/{self.cfg.namespace}/services"
            verb = type(action).__name__.lower()
            try:
                if isinstance(action, Create):
                    obj: dict[str, Any] | None = self.api.create(path, action.body)
                elif isinstance(action, Patch):
                    obj = self.api.merge_patch(f"{path}/{action.name}", action.body)
                else:
                    self.api.delete(f"{path}/{action.name}", action.uid, action.resource_version)
                    obj = None
            except ApiError as exc:
                self._action_failed(action, verb, exc, fingerprint, failure, now)
                if exc.status == 0 or exc.status >= 500:
                    away = self.failures[action.name]
                continue
            log.info("proxy Service %s: %s", action.name, DONE[verb])
            assert self.services is not None
            self.services.apply_write(action.name, obj)
            self.failures.pop(action.name, None)
            self.action_problems.pop(action.name, None)
            acted = True
        return acted

    def _action_failed(
        self,
        action: Create | Patch | Delete,
        verb: str,
        exc: ApiError,
        fingerprint: str,
        failure: _Failure | None,
        now: float,
    ) -> None:
        t = self.tuning
        if exc.status in (404, 409):
            # Someone else changed it (another replica, a user): the watch tells us what is there.
            delay = t.conflict_retry
            log.info("proxy Service %s: %s answered %s; planning again", action.name, verb, exc)
        elif exc.status == 422:
            delay = t.invalid_retry
        else:
            prev = failure.delay if failure and failure.fingerprint == fingerprint else 0.0
            delay = min(max(prev * 2, t.backoff_first), t.action_backoff_max)
        self.failures[action.name] = _Failure(fingerprint, now + delay, delay)
        if exc.status not in (404, 409):
            problem = _api_problem("services", self.cfg.namespace, exc, f"{verb} {action.name}")
            problem = Problem(f"proxy/{action.name}", problem.field, problem.message)
            self.action_problems[action.name] = problem

    # -- announcements

    def _announce(self, payload: bytes, now: float) -> None:
        if len(payload) > MAX_ANNOUNCEMENT:
            self.other_problems["too-large"] = Problem(
                "announcement",
                "services",
                f"this site exposes too many Services for one announcement ({len(payload)} bytes "
                f"> {MAX_ANNOUNCEMENT}); not announced",
            )
            return
        self.other_problems.pop("too-large", None)
        if payload == self.last_payload and now < self.next_announce:
            return
        try:
            self.admin.publish(payload)
        except OSError as exc:
            self.other_problems["announce"] = Problem(
                "router/multicast", "router_admin", f"cannot announce: {exc}; retrying"
            )
            self.next_announce = now + self.tuning.router_retry
            return
        self.other_problems.pop("announce", None)
        if payload != self.last_payload:
            log.info("announced %d exposed Services", len(json.loads(payload)["services"]))
        self.last_payload = payload
        self.next_announce = now + self.cfg.announce_interval

    # -- status

    def _update_problems(self, planned: list[Problem]) -> None:
        watch_problems = [
            w.problem for w in (self.pods, self.services) if w is not None and w.problem
        ]
        current = sorted(
            set(planned)
            | set(watch_problems)
            | set(self.action_problems.values())
            | set(self.other_problems.values())
        )
        before = set(self.problems)
        for p in current:
            if p not in before and p not in watch_problems:  # watchers log their own
                log.warning("%s", p)
        for p in sorted(before - set(current)):
            log.info("resolved: %s", p)
        self.problems = current
        status = {
            "site": self.cfg.site,
            "namespace": self.cfg.namespace,
            "version": __version__,
            "api": {w.kind: w.state() for w in (self.pods, self.services) if w is not None},
            "multicast": {
                "address": ANNOUNCE_ADDRESS,
                "subscribed": self.subscribed,
                "origins": len(self.book.entries),
                "sites": sorted({a.site for a in self.book.active()}),
            },
            "exposed": self.exposed_names,
            "proxies": self.proxies,
            "overlay": {
                "path": self.cfg.overlay,
                "sha256": self.overlay.sha256,
                "listeners": len(self.overlay.previous.get("listeners") or []),
                "connectors": len(self.overlay.previous.get("connectors") or []),
                "links": len(self.overlay.previous.get("links") or []),
            },
            "problems": [
                {"object": p.object, "field": p.field, "message": p.message} for p in current
            ],
        }
        with self.lock:
            self._status = status

    def status(self) -> dict[str, Any]:
        with self.lock:
            return dict(self._status)


def _read_or_none(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None  # between the kubelet's swaps, or gone: the running config stays


# -- command line ---------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``kube-agent`` to the router's command line."""
    p = sub.add_parser("kube-agent", help="follow the Kubernetes API and write the overlay")
    p.add_argument("--config", required=True, help="the agent config (JSON)")
    p.add_argument("--api-url", help="default: in-cluster (KUBERNETES_SERVICE_HOST/PORT)")
    p.add_argument("--token-file", help="default: the pod's service-account token")
    p.add_argument("--ca-file", help="default: the pod's service-account CA")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config and exit (2 and one line per problem when it is not valid)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    logsetup.setup(args.log_level)
    try:
        cfg = load(args.config)
    except AgentConfigError as exc:
        for line in exc.lines():
            print(f"{args.config}: {line}", flush=True)
        return 2
    if args.check:
        return 0
    try:
        api = KubeApi(in_cluster(args.api_url, args.token_file, args.ca_file))
    except ApiError as exc:
        print(f"kube-agent: {exc.message}", flush=True)
        return 2
    agent = Agent(cfg, api, config_path=args.config, pod_name=os.environ.get(POD_NAME_ENV))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        agent.start()
    except OSError as exc:
        print(f"kube-agent: cannot listen on the health port: {exc.strerror or exc}", flush=True)
        return 1
    stopped.wait()
    log.info("stopping (the overlay stays as it is)")
    agent.stop()
    return 0
