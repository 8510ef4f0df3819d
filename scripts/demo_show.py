"""After `make demo`: send a request through each listener and show every site's status.

Reads the sites, listeners and admin ports from the demo inventory, so it
shows what the inventory describes.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml


def main(inventory: str) -> int:
    hosts = yaml.safe_load(Path(inventory, "hosts.yml").read_text())["skiff_sites"]["hosts"]
    failures = 0
    print("\n== Requests through the application network")
    for site, site_vars in hosts.items():
        for listener in site_vars.get("skiff_listeners", []):
            url = f"http://{listener.get('host', '127.0.0.1')}:{listener['port']}/from-{site}"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    answer = response.read().decode().strip()
                print(f"{site} listener {listener['name']} ({url}):\n    {answer}")
            except OSError as error:
                failures += 1
                print(f"{site} listener {listener['name']} ({url}): FAILED: {error}")
    print("\n== Status of each site")
    for site, site_vars in hosts.items():
        admin = f"http://127.0.0.1:{site_vars.get('skiff_admin_port', 9191)}"
        print(f"\n-- {site} ({admin}/v1/status)")
        status = subprocess.run(
            [sys.executable, "-m", "skiff_router", "status", "--admin", admin], check=False
        )
        failures += status.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "inventories/demo"))
