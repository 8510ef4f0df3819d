"""The paths under test. Each one relays local entry ports to the same targets:

- direct: the client talks to the target itself;
- skiff: listener on router A -> mutual-TLS link -> router B -> connector to the target;
- haproxy: HAProxy A (plain in, TLS out) -> HAProxy B (TLS in, client cert verified, plain out);
- stunnel: the same two hops with stunnel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pki import Ca, TunnelPki, write
from bench.procs import LOOPBACK, BenchError, Procs, free_port, wait_port

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0
# Where the routers import skiff_router from: None = the venv's install (the working tree,
# editable); a directory = that tree first on PYTHONPATH (e.g. a snapshot of a commit).
ROUTER_SRC: list[Path | None] = [None]
# Worker processes of the two routers of the skiff path (None: the router's default,
# one per CPU); `bench.run --workers N` sets it.
PATH_WORKERS: list[int | None] = [None]


@dataclass
class PathUnderTest:
    """A running path: entry port per target name, and the relay processes."""

    name: str
    entries: dict[str, int]
    relays: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    # skiff: the event loop its routers report in /v1/status (None: not reported)
    event_loop: str | None = None

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.relays.items()}

    def stop(self, procs: Procs) -> None:
        for p in self.relays.values():
            procs.stop(p)


def direct(targets: Mapping[str, int]) -> PathUnderTest:
    return PathUnderTest("direct", dict(targets))


# -- skiff ------------------------------------------------------------------------------------


def http_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_router(procs: Procs, name: str, config: Path) -> subprocess.Popen[Any]:
    argv = [sys.executable, "-m", "skiff_router", "run", "--config", str(config)]
    env = None
    if ROUTER_SRC[0] is not None:
        env = {**os.environ, "PYTHONPATH": str(ROUTER_SRC[0])}
    return procs.start(name, argv, cwd=REPO, env=env)


@dataclass
class RouterSite:
    """A site directory (layout of docs/design.md) with its router config."""

    name: str
    dir: Path
    admin_port: int = field(default_factory=free_port)
    ca: Ca | None = None
    link_port: int | None = None
    links: list[dict[str, Any]] = field(default_factory=list)
    listeners: list[dict[str, Any]] = field(default_factory=list)
    connectors: list[dict[str, Any]] = field(default_factory=list)
    workers: int | None = None  # None: the router's default (one per CPU)

    @classmethod
    def create(cls, base: Path, name: str, *, accept: bool) -> RouterSite:
        site = cls(name, base / name)
        site.dir.mkdir(parents=True)
        if accept:
            site.ca = Ca.create(name)
            write(site.dir / "ca/ca.crt", site.ca.pem)
            srv = site.ca.issue(f"{name} router", server=True)
            write(site.dir / "tls/server.crt", srv.cert)
            write(site.dir / "tls/server.key", srv.key, 0o600)
            site.link_port = free_port()
        return site

    def link_to(self, other: RouterSite, cost: int = 1) -> None:
        """Dial ``other`` with a client cert its CA issued (what a token carries)."""
        assert other.ca is not None and other.link_port is not None
        cli = other.ca.issue(self.name, server=False)  # names the dialer, as a token does
        ld = self.dir / "links" / other.name
        write(ld / "ca.crt", other.ca.pem)
        write(ld / "tls.crt", cli.cert)
        write(ld / "tls.key", cli.key, 0o600)
        self.links.append(
            {
                "name": other.name,
                "peer": other.name,
                "cost": cost,
                "endpoints": [{"host": LOOPBACK, "port": other.link_port}],
                "ca": f"links/{other.name}/ca.crt",
                "cert": f"links/{other.name}/tls.crt",
                "key": f"links/{other.name}/tls.key",
            }
        )

    def listen(self, key: str) -> int:
        port = free_port()
        self.listeners.append({"name": key, "routing_key": key, "host": LOOPBACK, "port": port})
        return port

    def connect(self, key: str, port: int) -> None:
        self.connectors.append({"name": key, "routing_key": key, "host": LOOPBACK, "port": port})

    def write_config(self) -> Path:
        cfg: dict[str, Any] = {
            "site": self.name,
            "log_level": "info",
            "admin": {"host": LOOPBACK, "port": self.admin_port},
            "links": self.links,
            "listeners": self.listeners,
            "connectors": self.connectors,
        }
        if self.workers is not None:
            cfg["workers"] = self.workers
        if self.ca is not None:
            cfg["link_access"] = {
                "host": LOOPBACK,
                "port": self.link_port,
                "ca": "ca/ca.crt",
                "cert": "tls/server.crt",
                "key": "tls/server.key",
            }
        path = self.dir / "router.json"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    @property
    def status_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}/v1/status"

    def status(self) -> dict[str, Any]:
        return http_json(self.status_url)


def wait_keys(site: RouterSite, keys: list[str], proc: subprocess.Popen[Any]) -> None:
    """Until every listener of ``site`` listens and reaches a connector for its key."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"router {site.name} exited with {proc.returncode}")
        try:
            st = site.status()
            rk = st["routing_keys"]
            listening = all(x["state"] == "listening" for x in st["listeners"])
            if listening and all(rk.get(k, {}).get("reachable") for k in keys):
                return
            last = st.get("links")
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise BenchError(f"router {site.name}: keys {keys} not reachable: {last}")


def skiff(procs: Procs, workdir: Path, targets: Mapping[str, int]) -> PathUnderTest:
    a = RouterSite.create(workdir, "site-a", accept=False)
    b = RouterSite.create(workdir, "site-b", accept=True)
    a.workers = b.workers = PATH_WORKERS[0]
    a.link_to(b)
    entries = {key: a.listen(key) for key in targets}
    for key, port in targets.items():
        b.connect(key, port)
    pb = start_router(procs, f"skiff-{workdir.name}-b", b.write_config())
    pa = start_router(procs, f"skiff-{workdir.name}-a", a.write_config())
    path = PathUnderTest("skiff", entries, {"router-a": pa, "router-b": pb})
    try:
        wait_keys(a, list(targets), pa)
        loops = {
            f"{st['event_loop']} {st.get('event_loop_version', '')}".strip()
            for st in (a.status(), b.status())
            if "event_loop" in st
        }
        path.event_loop = loops.pop() if len(loops) == 1 else None
    except BaseException:
        path.stop(procs)
        raise
    return path


# -- HAProxy ----------------------------------------------------------------------------------

HAPROXY_GLOBAL = """\
global
    maxconn {maxconn}
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
"""


def haproxy_configs(
    pki: TunnelPki, targets: Mapping[str, int], hops: Mapping[str, tuple[int, int]], maxconn: int
) -> tuple[str, str]:
    """Config of hop A (plain in, TLS out) and hop B (TLS in, plain out)."""
    a = b = HAPROXY_GLOBAL.format(maxconn=maxconn)
    for key, port in targets.items():
        entry, tls_port = hops[key]
        a += (
            f"\nlisten {key}\n    bind {LOOPBACK}:{entry}\n"
            f"    server hop-b {LOOPBACK}:{tls_port} ssl verify required ca-file {pki.ca}"
            f" crt {pki.client_bundle} sni str(localhost) verifyhost localhost\n"
        )
        b += (
            f"\nlisten {key}\n    bind {LOOPBACK}:{tls_port} ssl crt {pki.server_bundle}"
            f" ca-file {pki.ca} verify required\n"
            f"    server target {LOOPBACK}:{port}\n"
        )
    return a, b


def haproxy(procs: Procs, workdir: Path, targets: Mapping[str, int], maxconn: int) -> PathUnderTest:
    pki = TunnelPki.create(workdir / "pki", "haproxy")
    hops = {key: (free_port(), free_port()) for key in targets}
    cfg_a, cfg_b = haproxy_configs(pki, targets, hops, maxconn)
    pa_cfg = write(workdir / "haproxy-a.cfg", cfg_a.encode())
    pb_cfg = write(workdir / "haproxy-b.cfg", cfg_b.encode())
    pb = procs.start(f"haproxy-{workdir.name}-b", ["haproxy", "-db", "-f", str(pb_cfg)])
    pa = procs.start(f"haproxy-{workdir.name}-a", ["haproxy", "-db", "-f", str(pa_cfg)])
    path = PathUnderTest(
        "haproxy", {k: v[0] for k, v in hops.items()}, {"haproxy-a": pa, "haproxy-b": pb}
    )
    try:
        for entry, tls_port in hops.values():
            wait_port(tls_port, STARTUP_TIMEOUT, pb)
            wait_port(entry, STARTUP_TIMEOUT, pa)
    except BaseException:
        path.stop(procs)
        raise
    return path


# -- stunnel ----------------------------------------------------------------------------------


def stunnel_configs(
    pki: TunnelPki, targets: Mapping[str, int], hops: Mapping[str, tuple[int, int]], logdir: Path
) -> tuple[str, str]:
    head = "foreground = yes\npid =\ndebug = 3\noutput = {log}\n"
    a = head.format(log=logdir / "stunnel-a.out")
    b = head.format(log=logdir / "stunnel-b.out")
    for key, port in targets.items():
        entry, tls_port = hops[key]
        a += (
            f"\n[{key}]\nclient = yes\naccept = {LOOPBACK}:{entry}\n"
            f"connect = {LOOPBACK}:{tls_port}\ncert = {pki.client_cert}\nkey = {pki.client_key}\n"
            f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n"
            "sni = localhost\nsslVersionMin = TLSv1.3\n"
        )
        b += (
            f"\n[{key}]\naccept = {LOOPBACK}:{tls_port}\nconnect = {LOOPBACK}:{port}\n"
            f"cert = {pki.server_cert}\nkey = {pki.server_key}\nCAfile = {pki.ca}\n"
            "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n"
        )
    return a, b


def stunnel(procs: Procs, workdir: Path, targets: Mapping[str, int]) -> PathUnderTest:
    pki = TunnelPki.create(workdir / "pki", "stunnel")
    hops = {key: (free_port(), free_port()) for key in targets}
    cfg_a, cfg_b = stunnel_configs(pki, targets, hops, workdir)
    pa_cfg = write(workdir / "stunnel-a.conf", cfg_a.encode())
    pb_cfg = write(workdir / "stunnel-b.conf", cfg_b.encode())
    pb = procs.start(f"stunnel-{workdir.name}-b", ["stunnel4", str(pb_cfg)])
    pa = procs.start(f"stunnel-{workdir.name}-a", ["stunnel4", str(pa_cfg)])
    path = PathUnderTest(
        "stunnel", {k: v[0] for k, v in hops.items()}, {"stunnel-a": pa, "stunnel-b": pb}
    )
    try:
        for entry, tls_port in hops.values():
            wait_port(tls_port, STARTUP_TIMEOUT, pb)
            wait_port(entry, STARTUP_TIMEOUT, pa)
    except BaseException:
        path.stop(procs)
        raise
    return path
