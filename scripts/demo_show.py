"""After `make demo`: ask for every service from every site and show who answered.

Reads the sites, connectors, listeners and admin ports from the demo
inventory, so it shows what the inventory describes. Exit 1 when any request
failed or was answered by the wrong service.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Answer:
    site: str
    service: str
    served_by: str  # the site whose connector answered, or "" on failure
    text: str
    ms: float

    @property
    def ok(self) -> bool:
        return bool(self.served_by)


def ask(site: str, listener: dict, providers: dict[str, str]) -> Answer:
    name = listener["name"]
    url = f"http://{listener.get('host', '127.0.0.1')}:{listener['port']}/from-{site}"
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode().strip()
    except OSError as error:
        return Answer(site, name, "", f"FAILED: {error}", 0.0)
    ms = (time.perf_counter() - started) * 1000
    expected = f"hello from {name} at site {providers.get(name)}:"
    served_by = providers.get(name, "") if text.startswith(expected) else ""
    return Answer(site, name, served_by, text if served_by else f"WRONG ANSWER: {text}", ms)


def matrix(hosts: dict) -> list[Answer]:
    providers = {
        c["name"]: site for site, v in hosts.items() for c in v.get("skiff_connectors", [])
    }
    return [
        ask(site, listener, providers)
        for site, v in hosts.items()
        for listener in v.get("skiff_listeners", [])
    ]


def render(hosts: dict, answers: list[Answer]) -> str:
    services = sorted({c["name"] for v in hosts.values() for c in v.get("skiff_connectors", [])})
    by_cell = {(a.site, a.service): a for a in answers}
    width = max(len(s) for s in [*services, *hosts, "from site"]) + 2
    cell = 26
    lines = [("from site".ljust(width) + "".join(s.ljust(cell) for s in services)).rstrip()]
    for site, v in hosts.items():
        own = {c["name"] for c in v.get("skiff_connectors", [])}
        row = site.ljust(width)
        for service in services:
            answer = by_cell.get((site, service))
            if service in own:
                text = "(served here)"
            elif answer is None:
                text = "-"
            elif answer.ok:
                text = f"ok via {answer.served_by} {answer.ms:.1f} ms"
            else:
                text = "FAILED"
            row += text.ljust(cell)
        lines.append(row.rstrip())
    return "\n".join(lines)


def sites_dir(inventory: Path) -> Path:
    """The inventory's skiff_base_dir (its one template variable is inventory_dir)."""
    settings = yaml.safe_load((inventory / "group_vars" / "skiff_sites.yml").read_text())
    raw = str(settings["skiff_base_dir"]).replace("{{ inventory_dir }}", str(inventory))
    return Path(raw).expanduser()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inventory", nargs="?", default="inventories/demo", type=Path)
    parser.add_argument("--no-status", action="store_true", help="skip the per-site status")
    args = parser.parse_args()
    hosts = yaml.safe_load((args.inventory / "hosts.yml").read_text())["skiff_sites"]["hosts"]
    answers = matrix(hosts)
    print("\n== Every service, asked for from every site (answered by which site)")
    print(render(hosts, answers))
    for answer in answers:
        print(f"  {answer.site} -> {answer.service}: {answer.text}")
    failures = sum(not a.ok for a in answers)
    if not args.no_status:
        print("\n== Status of each site")
        for site, site_vars in hosts.items():
            admin = f"http://127.0.0.1:{site_vars.get('skiff_admin_port', 9191)}"
            print(f"\n-- {site} ({admin}/v1/status)")
            # The router's own config names its admin address and token file.
            config = sites_dir(args.inventory) / site / "router.json"
            status = subprocess.run(
                [sys.executable, "-m", "skiff_router", "status", "--config", str(config)],
                check=False,
            )
            failures += status.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
