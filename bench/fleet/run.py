"""Fleet rollout benchmark: ``python -m bench.fleet.run`` (``make bench-fleet``).

For each fleet size (default 4, 16 and 48 `local` sites on this machine) it
times, in one run: the first `playbooks/site.yml` (creating everything), the
converged re-run (which must report changed=0 on every site), and a one-task
`ansible.builtin.ping` play over the same hosts with the same settings. The
re-run and the ping play alternate `--reps` times; the table shows medians and
the ratio re-run/ping (per repetition, median). Targets: re-run <= 4x ping at
16 sites, and the re-run's cost per site flat from 16 to 48 (<= 1.2x).
Writes bench/results/fleet-latest.json. Every site is torn down at the end,
also on errors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.fleet.topology import inventory

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=\d+\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)
PING = """\
- name: One task on every site host
  hosts: skiff_sites
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""
TARGET_RATIO_AT_16 = 4.0
TARGET_FLATNESS = 1.2


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{out.get('PATH', '')}",
    )
    return out


def playbook(inventory_file: Path, play: Path, log_file: Path) -> tuple[float, dict[str, int]]:
    """Run ansible-playbook; (wall seconds, changed count per host). Raises on failure."""
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory_file), str(play)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    seconds = time.monotonic() - started
    log_file.write_text(done.stdout + done.stderr)
    recap = {m["host"]: int(m["changed"]) for m in RECAP.finditer(done.stdout)}
    bad = [
        m["host"] for m in RECAP.finditer(done.stdout) if int(m["failed"]) or int(m["unreachable"])
    ]
    if done.returncode != 0 or bad:
        raise BenchError(
            f"{play.name} failed (see {log_file}): {', '.join(bad) or done.returncode}"
        )
    return seconds, recap


@dataclass
class SizeResult:
    sites: int
    first: float | None = None
    reruns: list[float] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self, values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        pairs = [r / p for r, p in zip(self.reruns, self.pings, strict=False) if p]
        return statistics.median(pairs) if pairs else None

    def row(self) -> dict[str, Any]:
        rerun = self.median(self.reruns)
        return {
            "sites": self.sites,
            "first_run_s": _round(self.first),
            "rerun_s": _round(rerun),
            "ping_s": _round(self.median(self.pings)),
            "ratio_rerun_ping": _round(self.ratio),
            "rerun_per_site_s": _round(rerun / self.sites if rerun else None),
            "samples": {
                "rerun": [_round(v) for v in self.reruns],
                "ping": [_round(v) for v in self.pings],
            },
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.3g}")


def measure(size: int, reps: int, workdir: Path) -> SizeResult:
    result = SizeResult(size)
    here = workdir / f"fleet-{size}"
    here.mkdir()
    base_dir = here / "sites"
    inventory_file = here / "hosts.yml"
    inventory_file.write_text(yaml.safe_dump(inventory(size, base_dir), sort_keys=False))
    ping = here / "ping.yml"
    ping.write_text(PING)
    site = REPO / "playbooks" / "site.yml"
    try:
        log(f"{size} sites: first run")
        result.first, changed = playbook(inventory_file, site, here / "first.log")
        if not all(changed.values()) or len(changed) != size:
            raise BenchError(f"first run: not every site changed: {changed}")
        for rep in range(reps):
            log(f"{size} sites: converged re-run and ping play, repetition {rep + 1}/{reps}")
            seconds, changed = playbook(inventory_file, site, here / f"rerun-{rep}.log")
            if any(changed.values()) or len(changed) != size:
                raise BenchError(f"re-run {rep + 1} changed something: {changed}")
            result.reruns.append(seconds)
            seconds, _unused = playbook(inventory_file, ping, here / f"ping-{rep}.log")
            result.pings.append(seconds)
    except BenchError as exc:
        result.notes.append(str(exc))
        log(f"{size} sites: {exc}")
    finally:
        log(f"{size} sites: teardown")
        try:
            playbook(inventory_file, REPO / "playbooks" / "teardown.yml", here / "teardown.log")
        except BenchError as exc:
            result.notes.append(f"teardown: {exc}")
    return result


def table(results: list[SizeResult]) -> str:
    rows = [
        "| sites | first run | converged re-run (changed=0) | one-task ping play | re-run / ping | re-run per site |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        row = r.row()

        def s(v: float | None, unit: str = " s") -> str:
            return "-" if v is None else f"{v:g}{unit}"

        rows.append(
            f"| {r.sites} | {s(row['first_run_s'])} | {s(row['rerun_s'])} | {s(row['ping_s'])} | "
            f"{s(row['ratio_rerun_ping'], 'x')} | {s(row['rerun_per_site_s'])} |"
        )
    return "\n".join(rows)


def verdicts(results: list[SizeResult]) -> list[str]:
    by_size = {r.sites: r for r in results}
    out = []
    if 16 in by_size and by_size[16].ratio is not None:
        ratio = by_size[16].ratio
        out.append(
            f"re-run / ping at 16 sites: {ratio:.2f}x (target <= {TARGET_RATIO_AT_16:g}x): "
            + ("met" if ratio <= TARGET_RATIO_AT_16 else "not met")
        )
    if 16 in by_size and 48 in by_size:
        a, b = by_size[16].row()["rerun_per_site_s"], by_size[48].row()["rerun_per_site_s"]
        if a and b:
            out.append(
                f"re-run cost per site 48 / 16: {b / a:.2f}x (target <= {TARGET_FLATNESS:g}x): "
                + ("met" if b / a <= TARGET_FLATNESS else "not met")
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,16,48", help="fleet sizes, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="re-run/ping repetitions per size")
    ap.add_argument("--output", type=Path, default=RESULTS / "fleet-latest.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    load_at_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="skiff-bench-fleet-"))
    results = []
    try:
        for size in sizes:
            results.append(measure(size, max(1, args.reps), workdir))
    finally:
        failed = any(r.notes for r in results)
        if args.keep or failed:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    for line in verdicts(results):
        print(line)
    meta = {
        "date": datetime.date.today().isoformat(),
        "reps": args.reps,
        "cpus": os.cpu_count(),
        "load_at_start": load_at_start,
        "load_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"meta": meta, "sizes": [r.row() for r in results], "verdicts": verdicts(results)},
            indent=2,
        )
        + "\n"
    )
    return 1 if any(r.notes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
