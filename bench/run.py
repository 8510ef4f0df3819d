"""skiff data-plane benchmark: ``python -m bench.run [--quick]`` (``make bench``).

Runs the skiff two-site path and its peers (direct, HAProxy TLS tunnel, stunnel TLS tunnel)
side by side in one run, prints a table and writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import measure, mesh, paths
from bench.loops import raise_nofile
from bench.procs import BenchError, Procs, uses_uvloop

PEERS = ("skiff", "haproxy", "stunnel", "direct")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Settings:
    short: bool  # the QUICK=1 variant
    reps: int
    iperf_seconds: int
    iperf_omit: int
    latency_count: int
    latency_seconds: float
    seq_count: int
    par_count: int
    rate_seconds: float
    idle_flows: int
    idle_reps: int
    convergence_reps: int

    @classmethod
    def full(cls, reps: int) -> Settings:
        return cls(False, reps, 5, 1, 20_000, 8.0, 5_000, 40_000, 3.0, 10_000, reps, reps)

    @classmethod
    def quick(cls, reps: int) -> Settings:
        return cls(True, reps, 2, 0, 3_000, 2.0, 2_000, 10_000, 1.0, 2_000, 1, 1)


# -- figures ---------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    unit: str
    target: str
    # met(ratio, skiff value) -> bool; ratio is skiff / haproxy
    met: Callable[[float | None, float | None], bool]
    samples: dict[str, list[float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, peer: str, value: float | None) -> None:
        self.samples.setdefault(peer, []).append(value)

    def median(self, peer: str) -> float | None:
        values = [v for v in self.samples.get(peer, []) if v is not None]
        return statistics.median(values) if values else None

    def ratios(self) -> list[float]:
        """skiff / haproxy per repetition (both measured in the same repetition)."""
        pairs = zip(self.samples.get("skiff", []), self.samples.get("haproxy", []), strict=False)
        return [s / h for s, h in pairs if s is not None and h]

    def row(self, meta: dict[str, Any]) -> dict[str, Any]:
        ratios = self.ratios()
        ratio = statistics.median(ratios) if ratios else None
        skiff = self.median("skiff")
        return {
            "figure": self.name,
            "unit": self.unit,
            "skiff": _round(skiff),
            "haproxy": _round(self.median("haproxy")),
            "stunnel": _round(self.median("stunnel")),
            "direct": _round(self.median("direct")),
            "ratio": _round(ratio),
            "target": self.target,
            "met": bool(self.met(ratio, skiff)),
            "ratios": [_round(r) for r in ratios],
            "samples": {k: [_round(v) for v in vs] for k, vs in self.samples.items()},
            "notes": self.notes,
            **meta,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.4g}")


def _at_least(x: float) -> Callable[[float | None, float | None], bool]:
    return lambda ratio, _skiff: ratio is not None and ratio >= x


def _at_most(x: float) -> Callable[[float | None, float | None], bool]:
    return lambda ratio, _skiff: ratio is not None and ratio <= x


def _absolute_at_most(x: float) -> Callable[[float | None, float | None], bool]:
    return lambda _ratio, skiff: skiff is not None and skiff <= x


def make_figures() -> dict[str, Figure]:
    figs = [
        Figure("throughput_1_flow", "Gbit/s", "ratio >= 1.0", _at_least(1.0)),
        Figure("throughput_8_flows", "Gbit/s", "ratio >= 1.0", _at_least(1.0)),
        Figure("latency_p50", "us", "ratio <= 1.3", _at_most(1.3)),
        Figure("latency_p99", "us", "ratio <= 1.5", _at_most(1.5)),
        Figure("new_flows_sequential", "flows/s", "ratio >= 3.0", _at_least(3.0)),
        Figure("new_flows_parallel_32", "flows/s", "ratio >= 3.0", _at_least(3.0)),
        Figure("idle_flow_rss", "KiB/flow/router", "skiff <= 16 (absolute)", _absolute_at_most(16)),
        Figure("route_convergence", "s", "skiff <= 3 (absolute)", _absolute_at_most(3.0)),
        # The same with the router SIGSTOPped: only the keepalive tells its neighbours.
        Figure("partition_convergence", "s", "skiff <= 5 (absolute)", _absolute_at_most(5.0)),
        # 100 routing keys, 1,000 flows open over them (10 each), p50 on one key.
        Figure("latency_p50_100_keys", "us", "ratio <= 1.3", _at_most(1.3)),
    ]
    return {f.name: f for f in figs}


# -- running ---------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def attempt(fig: Figure, peer: str, fn: Callable[[], float | None]) -> float | None:
    """One measurement; a failure is recorded (None + note) and the run goes on."""
    try:
        value = fn()
    except (BenchError, OSError, KeyError, ValueError) as exc:
        fig.notes.append(f"{peer}: {exc}")
        log(f"  {fig.name:<22} {peer:<8} FAILED: {exc}")
        return None
    if value is not None:
        log(f"  {fig.name:<22} {peer:<8} {value:.4g} {fig.unit}")
    return value


def rotated(items: list[Any], n: int) -> list[Any]:
    """Vary the order between repetitions so drift on a noisy machine spreads evenly."""
    n %= len(items)
    return items[n:] + items[:n]


def data_path_figures(
    figs: dict[str, Figure], s: Settings, running: dict[str, paths.PathUnderTest], rep: int
) -> None:
    order = rotated(list(running), rep)

    def each(name: str, fn: Callable[[paths.PathUnderTest], float]) -> None:
        for peer in order:
            figs[name].add(peer, attempt(figs[name], peer, lambda p=running[peer]: fn(p)))

    each("throughput_1_flow", lambda p: measure.iperf_gbps(p.entries["iperf"], 1, *_ip(s)))
    each("throughput_8_flows", lambda p: measure.iperf_gbps(p.entries["iperf"], 8, *_ip(s)))
    lat: dict[str, tuple[float, float] | None] = {}
    for peer in order:
        lat[peer] = None
        try:
            port = running[peer].entries["echo"]
            lat[peer] = measure.latency_us(port, s.latency_count, s.latency_seconds)
        except (BenchError, OSError, KeyError, ValueError) as exc:
            figs["latency_p50"].notes.append(f"{peer}: {exc}")
        got = lat[peer]
        figs["latency_p50"].add(peer, got[0] if got else None)
        figs["latency_p99"].add(peer, got[1] if got else None)
        log(f"  latency                {peer:<8} p50/p99 {got} us")
    each(
        "new_flows_sequential",
        lambda p: measure.new_flows_per_s(p.entries["echo"], 1, s.seq_count, s.rate_seconds),
    )
    each(
        "new_flows_parallel_32",
        lambda p: measure.new_flows_per_s(p.entries["echo"], 32, s.par_count, s.rate_seconds),
    )


def _ip(s: Settings) -> tuple[int, int]:
    return s.iperf_seconds, s.iperf_omit


def peer_flow_limit(flows: int) -> int:
    """HAProxy/stunnel hop A holds two sockets per flow: stay within the hard fd limit."""
    hard = raise_nofile()
    return min(flows, (hard - 300) // 2)


def idle_figure(fig: Figure, procs: Procs, work: Path, s: Settings, rep: int) -> None:
    peer_flows = peer_flow_limit(s.idle_flows)
    starters: dict[str, tuple[int, Callable[[Path], measure.Starter]]] = {
        "skiff": (s.idle_flows, lambda d: lambda t: paths.skiff(procs, d, t)),
        "haproxy": (peer_flows, lambda d: lambda t: paths.haproxy(procs, d, t, peer_flows + 50)),
        "stunnel": (peer_flows, lambda d: lambda t: paths.stunnel(procs, d, t)),
    }
    for peer in rotated(list(starters), rep):
        flows, make = starters[peer]
        d = work / f"idle-{peer}-{rep}"
        d.mkdir()

        def one(flows: int = flows, make: Any = make, d: Path = d, peer: str = peer) -> float:
            res = measure.idle_rss(procs, make(d), flows, f"{peer}-{rep}")
            per = ", ".join(f"{k} {v:.2f}" for k, v in res.per_flow_kib.items())
            fig.notes.append(
                f"{peer} rep {rep}: {res.flows} of {flows} flows reached the target "
                f"({res.opened} accepted in {res.open_seconds:.1f}s); "
                f"KiB/flow per process: {per}"
            )
            return res.worst

        fig.add(peer, attempt(fig, peer, one))
    fig.add("direct", None)


KEYS, HELD_FLOWS = 100, 1_000


def many_keys_figure(fig: Figure, procs: Procs, work: Path, s: Settings, rep: int) -> None:
    """Each path relays 100 keys (HAProxy: 100 listen sections) to the echo target;
    1,000 flows are opened over them and held, each with one byte echoed end to
    end; then the 1-byte round-trip p50 on the first key."""
    echo = measure.EchoServer.start(procs, f"echo-keys-{rep}")
    targets = {f"key{i:03d}": echo.port for i in range(KEYS)}
    starters: dict[str, Callable[[Path], paths.PathUnderTest]] = {
        "skiff": lambda d: paths.skiff(procs, d, targets),
        "haproxy": lambda d: paths.haproxy(procs, d, targets, HELD_FLOWS + 200),
        "direct": lambda _d: paths.direct(targets),
    }
    try:
        for peer in rotated(list(starters), rep):
            d = work / f"keys-{peer}-{rep}"
            d.mkdir()

            def one(peer: str = peer, d: Path = d) -> float:
                path = starters[peer](d)
                try:
                    entries = [path.entries[k] for k in sorted(targets)]
                    with measure.held_flows(entries, HELD_FLOWS):
                        p50, _p99 = measure.latency_us(
                            entries[0], s.latency_count, s.latency_seconds
                        )
                    return p50
                finally:
                    path.stop(procs)

            fig.add(peer, attempt(fig, peer, one))
        fig.add("stunnel", None)
    finally:
        procs.stop(echo.proc)


def convergence_figure(
    fig: Figure, procs: Procs, work: Path, rep: int, how: signal.Signals = signal.SIGKILL
) -> None:
    d = work / f"mesh-{how.name.lower()}-{rep}"
    d.mkdir()

    def one() -> float:
        res = mesh.convergence(procs, d, str(rep), how)
        fig.notes.append(
            f"rep {rep}: {res.signal} {res.killed}; path {'-'.join(res.path_before)} -> "
            f"{'-'.join(res.path_after)}; {res.failed_probes} failed probes"
        )
        return res.seconds

    fig.add("skiff", attempt(fig, "skiff", one))


def start_peers(
    procs: Procs, work: Path, targets: dict[str, int], figs: dict[str, Figure]
) -> dict[str, paths.PathUnderTest]:
    """Start every path; one that cannot start is left out (its figures stay null)."""
    running: dict[str, paths.PathUnderTest] = {"direct": paths.direct(targets)}
    for name, start in (
        ("skiff", lambda d: paths.skiff(procs, d, targets)),
        ("haproxy", lambda d: paths.haproxy(procs, d, targets, 2000)),
        ("stunnel", lambda d: paths.stunnel(procs, d, targets)),
    ):
        d = work / name
        d.mkdir()
        try:
            running[name] = start(d)
        except (BenchError, OSError) as exc:
            log(f"{name} did not start: {exc}")
            for fig in figs.values():
                fig.notes.append(f"{name} did not start: {exc}")
    return running


def event_loop_of(running: dict[str, paths.PathUnderTest]) -> str:
    """What the skiff routers run on: as their /v1/status says (e.g. "uvloop 0.23.0"),
    or, for a router that does not say, whether uvloop's extension is mapped."""
    if "skiff" not in running:
        return "?"
    if running["skiff"].event_loop:
        return running["skiff"].event_loop
    pids = running["skiff"].pids.values()
    return "uvloop" if pids and all(uses_uvloop(p) for p in pids) else "asyncio"


def run(s: Settings, work: Path, only: set[str] | None) -> tuple[list[dict[str, Any]], str]:
    figs = make_figures()
    want = (lambda n: n in only) if only else (lambda n: True)
    event_loop = "?"
    with Procs(work / "logs") as procs:
        if want("data"):
            targets = {
                "iperf": measure.IperfServer.start(procs, "iperf3-server").port,
                "echo": measure.EchoServer.start(procs, "echo").port,
            }
            running = start_peers(procs, work, targets, figs)
            event_loop = event_loop_of(running)
            log(f"paths up; skiff routers run on {event_loop}")
            for rep in range(s.reps):
                log(f"repetition {rep + 1}/{s.reps}")
                data_path_figures(figs, s, running, rep)
            for p in running.values():
                p.stop(procs)
        if want("idle"):
            for rep in range(s.idle_reps):
                log(f"idle open flows, repetition {rep + 1}/{s.idle_reps}")
                idle_figure(figs["idle_flow_rss"], procs, work, s, rep)
        if want("keys"):
            for rep in range(s.reps):
                log(f"{KEYS} keys, {HELD_FLOWS} open flows, repetition {rep + 1}/{s.reps}")
                many_keys_figure(figs["latency_p50_100_keys"], procs, work, s, rep)
        if want("convergence"):
            for rep in range(s.convergence_reps):
                log(f"route convergence, repetition {rep + 1}/{s.convergence_reps}")
                convergence_figure(figs["route_convergence"], procs, work, rep)
                log(f"silent partition, repetition {rep + 1}/{s.convergence_reps}")
                convergence_figure(figs["partition_convergence"], procs, work, rep, signal.SIGSTOP)
    meta = {
        "reps": s.reps,
        "quick": s.short,
        "event_loop": event_loop,
        "router": router_source(),
        # The path's routers: "auto" is the router's default, one worker per CPU.
        "path_workers": paths.PATH_WORKERS[0] or f"auto ({os.cpu_count()} CPUs)",
    }
    return [f.row(meta) for f in figs.values() if f.samples], event_loop


# -- output ----------------------------------------------------------------------------------


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["figure", "unit", "skiff", "haproxy", "stunnel", "direct", "ratio", "target", "met"]
    cells = [cols] + [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def router_source() -> str:
    """What the routers ran: a --router-src directory, or the installed package."""
    src = paths.ROUTER_SRC[0]
    if src is not None:
        return str(src)
    import skiff_router

    return str(Path(skiff_router.__file__).parent)


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for argv in (["haproxy", "-v"], ["stunnel4", "-version"], ["iperf3", "--version"]):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        words = (res.stdout + res.stderr).split()
        version = next((w for w in words if w[:1].isdigit()), "?")
        out.append(f"{argv[0]} {version}")
    return ", ".join(out)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every finally stops what was started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short run (under two minutes)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--only", help="comma list of parts: data,idle,keys,convergence")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument(
        "--router-src",
        type=Path,
        help="directory holding skiff_router to benchmark (default: the installed one)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        help="worker processes of the two routers of the skiff path (default: one per CPU)",
    )
    args = ap.parse_args(argv)
    paths.PATH_WORKERS[0] = args.workers
    for tool in ("haproxy", "stunnel4", "iperf3"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 2
    reps = args.reps or (1 if args.quick else 3)
    s = Settings.quick(reps) if args.quick else Settings.full(reps)
    only = set(args.only.split(",")) if args.only else None
    if args.router_src is not None:
        if not (args.router_src / "skiff_router" / "__init__.py").is_file():
            print(f"bench: no skiff_router package in {args.router_src}", file=sys.stderr)
            return 2
        paths.ROUTER_SRC[0] = args.router_src.resolve()
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-"))
    started = time.monotonic()
    ok = False
    try:
        with terminate_as_interrupt():
            rows, event_loop = run(s, work, only)
        ok = True
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory and logs kept in {work}")
    header = (
        f"skiff bench ({'quick' if s.short else 'full'}, {s.reps} repetition(s), medians; "
        f"ratio = skiff/haproxy per repetition, median) - routers on {event_loop}, "
        f"{os.cpu_count()} CPUs, {time.monotonic() - started:.0f}s, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}"
    )
    print(header)
    print(table(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{versions()}; routers from {router_source()}")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
