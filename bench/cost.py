"""CPU time the skiff routers spend per operation: ``python -m bench.cost``.

Wall-clock figures swing by 2x on a shared machine; the CPU time a router
process spends on a fixed amount of work barely moves. This drives fixed,
bounded workloads through the two-site path (as ``bench.run`` builds it) and
reads each router's CPU time (``/proc/<pid>/task/*/schedstat``, nanoseconds)
before and after, so a change to the data path can be judged in one short
run: fewer microseconds per round trip, per new flow, per MiB.

    python -m bench.cost [--router-src DIR] [--scale 1.0] [--reps 3]

Prints the median over repetitions, per workload and router (A = listener
side, B = connector side), next to the HAProxy TLS pair's (both processes)
measured in the same run, and writes nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import measure, paths
from bench.loops import raise_nofile
from bench.procs import BenchError, Procs


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int(stat.read_text().split()[0])
    return total


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str  # what one operation is
    # drive(path, scale) -> operations done
    drive: Callable[[paths.PathUnderTest, float], float]


def _rtt(p: paths.PathUnderTest, scale: float) -> float:
    n = int(20_000 * scale)
    args = ["latency", "--port", str(p.entries["echo"]), "--count", str(n), "--seconds", "120"]
    return measure._client(args, 150)["n"]


def _flows(parallel: int) -> Callable[[paths.PathUnderTest, float], float]:
    def drive(p: paths.PathUnderTest, scale: float) -> float:
        n = int(3_000 * scale)
        args = ["rate", "--port", str(p.entries["echo"]), "--count", str(n), "--seconds", "120"]
        res = measure._client([*args, "--parallel", str(parallel)], 150)
        return res["ok"]

    return drive


def _bulk(p: paths.PathUnderTest, scale: float) -> float:
    mib = int(1024 * scale)
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(p.entries["iperf"]), "-n", f"{mib}M", "-J"]
    res = measure._run_json(argv, 300)
    if "error" in res:
        raise BenchError(f"iperf3: {res['error']}")
    return res["end"]["sum_received"]["bytes"] / (1 << 20)


WORKLOADS = (
    Workload("rtt", "1-byte round trip", _rtt),
    Workload("flows-1", "new flow, sequential", _flows(1)),
    Workload("flows-32", "new flow, 32 in parallel", _flows(32)),
    Workload("bulk", "MiB, one flow", _bulk),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--router-src", type=Path, help="measure the skiff_router found here")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's size")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--only", help="comma list of workloads: " + ",".join(w.name for w in WORKLOADS)
    )
    ap.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy pair")
    args = ap.parse_args()
    if args.router_src is not None:
        paths.ROUTER_SRC[0] = args.router_src.resolve()
    only = set(args.only.split(",")) if args.only else None
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="skiff-cost-"))
    # workload -> path -> process -> CPU us per operation, one value per repetition
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    with Procs(work / "logs") as procs:
        targets = {
            "iperf": measure.IperfServer.start(procs, "iperf3-server").port,
            "echo": measure.EchoServer.start(procs, "echo").port,
        }
        starters = {"skiff": lambda d: paths.skiff(procs, d, targets)}
        if not args.no_haproxy:
            starters["haproxy"] = lambda d: paths.haproxy(procs, d, targets, 2000)
        running = {}
        for name, start in starters.items():
            (work / name).mkdir()
            running[name] = start(work / name)
        print(f"skiff routers on {running['skiff'].event_loop or '?'}", file=sys.stderr)
        for _unused in range(args.reps):
            for w in WORKLOADS:
                if only and w.name not in only:
                    continue
                for name, path in running.items():
                    before = {proc: cpu_ns(pid) for proc, pid in path.pids.items()}
                    ops = w.drive(path, args.scale)
                    after = {proc: cpu_ns(pid) for proc, pid in path.pids.items()}
                    row = results.setdefault(w.name, {}).setdefault(name, {})
                    for proc in before:
                        us = (after[proc] - before[proc]) / 1e3 / ops
                        row.setdefault(proc, []).append(us)
        for path in running.values():
            path.stop(procs)
    print(f"CPU us per operation, median of {args.reps}")
    print(
        f"{'workload':9} {'operation':25} {'skiff A':>8} {'skiff B':>8} {'haproxy':>8} {'ratio':>6}"
    )
    for w in WORKLOADS:
        row = results.get(w.name)
        if not row:
            continue
        a = statistics.median(row["skiff"]["router-a"])
        b = statistics.median(row["skiff"]["router-b"])
        line = f"{w.name:9} {w.unit:25} {a:8.1f} {b:8.1f}"
        if "haproxy" in row:
            h = statistics.median(sum(v) for v in zip(*row["haproxy"].values(), strict=True))
            line += f" {h:8.1f} {(a + b) / h:6.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
