"""The fleets the benchmark rolls out: N `local` sites on this machine, hubs and spokes.

One hub per 8 sites (at least one); hubs accept links and each hub after the
first links to the one before it; every other site links to one hub. Every
site offers one service through a connector and listens for the next site's
service, so each listener's routing key is served two hops or more away. The
shape keeps each hub's number of dialers (tokens it issues) and each site's
number of links the same from 16 sites to 48: per-site work stays the same
and the figures measure how the rollout scales, not a growing hub.
"""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path
from typing import Any

SITES_PER_HUB = 8


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out (bound together, so all distinct)."""
    sockets = []
    try:
        for _unused in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def site_name(index: int) -> str:
    return f"s{index:03d}"


def fleet_hosts(size: int) -> dict[str, dict[str, Any]]:
    hubs = max(1, math.ceil(size / SITES_PER_HUB))
    ports = iter(free_ports(size * 3 + hubs))
    hosts: dict[str, dict[str, Any]] = {}
    for index in range(size):
        host: dict[str, Any] = {"skiff_admin_port": next(ports)}
        if index < hubs:
            host["skiff_link_access"] = True
            host["skiff_link_endpoint"] = {"host": "127.0.0.1", "port": next(ports)}
            if index > 0:
                host["skiff_links"] = [{"to": site_name(index - 1), "cost": 1}]
        else:
            host["skiff_links"] = [{"to": site_name(index % hubs), "cost": 1}]
        # The connector's target need not answer: convergence is about reachability.
        host["skiff_connectors"] = [
            {"name": f"svc{index}", "host": "127.0.0.1", "port": next(ports)}
        ]
        host["skiff_listeners"] = [{"name": f"svc{(index + 1) % size}", "port": next(ports)}]
        hosts[site_name(index)] = host
    return hosts


def inventory(size: int, base_dir: Path) -> dict[str, Any]:
    return {
        "skiff_sites": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "skiff_base_dir": str(base_dir),
                "skiff_link_bind_host": "127.0.0.1",
                "skiff_wait_timeout": 120,
            },
            "hosts": fleet_hosts(size),
        }
    }
