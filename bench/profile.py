"""Where the skiff routers spend their time: ``python -m bench.profile`` starts the two-site
path, drives one workload at a time through it and samples both routers with py-spy
(``pip install py-spy``, any environment; pass ``--py-spy PATH`` when it is not on PATH).

Prints, per workload and router, the hottest frames (self time) and the hottest router
source lines (inclusive), and keeps the raw collapsed stacks in ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import measure, paths
from bench.loops import raise_nofile
from bench.procs import Procs


@dataclass(frozen=True)
class Workload:
    name: str
    drive: Callable[[paths.PathUnderTest, float], object]


WORKLOADS = (
    Workload("iperf-1", lambda p, s: measure.iperf_gbps(p.entries["iperf"], 1, int(s), 0)),
    Workload("iperf-8", lambda p, s: measure.iperf_gbps(p.entries["iperf"], 8, int(s), 0)),
    Workload("latency", lambda p, s: measure.latency_us(p.entries["echo"], 1_000_000, s)),
    Workload("flows-32", lambda p, s: measure.new_flows_per_s(p.entries["echo"], 32, 10**6, s)),
)


def record(
    pyspy: str, pid: int, out: Path, seconds: float, native: bool
) -> subprocess.Popen[bytes]:
    argv = [pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    argv += ["--format", "raw", "-o", str(out)]
    argv += ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _space, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            if "skiff_router" in f and "cli.py" not in f and "__main__" not in f:
                inclusive[f] += n
    if not total:
        return "  (no samples)"
    lines = [f"  self  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += [f"  incl  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument("--router-src", type=Path)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--native", action="store_true", help="include C frames (pauses the router)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="skiff-profile-")))
    args = ap.parse_args()
    if shutil.which(args.py_spy) is None:
        print("bench.profile: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    if args.router_src is not None:
        paths.ROUTER_SRC[0] = args.router_src.resolve()
    raise_nofile()
    args.out.mkdir(parents=True, exist_ok=True)
    with Procs(args.out / "logs") as procs:
        targets = {
            "iperf": measure.IperfServer.start(procs, "iperf3-server").port,
            "echo": measure.EchoServer.start(procs, "echo").port,
        }
        (args.out / "path").mkdir(exist_ok=True)
        path = paths.skiff(procs, args.out / "path", targets)
        for w in WORKLOADS:
            raws = {name: args.out / f"{w.name}-{name}.txt" for name in path.pids}
            spies = [
                record(args.py_spy, pid, raws[name], args.seconds, args.native)
                for name, pid in path.pids.items()
            ]
            time.sleep(0.3)
            result = w.drive(path, args.seconds)
            for s in spies:
                s.wait(args.seconds + 30)
            print(f"== {w.name}: {result}")
            for name, raw in raws.items():
                print(f"-- {name}")
                print(summarize(raw, args.top) if raw.exists() else "  (py-spy wrote nothing)")
    print(f"raw stacks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
