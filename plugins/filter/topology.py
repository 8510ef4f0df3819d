"""Filters that read the fleet's topology from the inventory (see module_utils/topology.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.topology import (
    dialers,
    fleet_problems,
    network_of,
)

# Only these are read: templating every host variable could fail on ones that
# make sense only on their own host (e.g. ansible_python_interpreter).
_FIELDS = ("ansible_connection", "ansible_host")


def _plain(hostvars: Any, hosts: list[str]) -> dict[str, dict[str, Any]]:
    plain: dict[str, dict[str, Any]] = {}
    for host in hosts:
        host_vars = hostvars[host]
        plain[host] = {
            name: host_vars[name]
            for name in host_vars
            if name.startswith("skiff_") or name in _FIELDS
        }
    return plain


def skiff_fleet_problems(hostvars: Any, site_hosts: list[str]) -> list[str]:
    return fleet_problems(_plain(hostvars, site_hosts), list(site_hosts))


def skiff_dialers(host: str, hostvars: Any, site_hosts: list[str]) -> list[str]:
    return dialers(_plain(hostvars, site_hosts), list(site_hosts), host)


def skiff_network(host: str, hostvars: Any, site_hosts: list[str]) -> list[str]:
    return network_of(_plain(hostvars, site_hosts), list(site_hosts), host)


def skiff_site_names(hosts: list[str], hostvars: Any) -> list[str]:
    """Site names of inventory hosts (skiff_site_name, else the inventory name)."""
    return [str(hostvars[host].get("skiff_site_name") or host) for host in hosts]


def skiff_link_tokens(
    links: list[dict[str, Any]], hostvars: Any, host: str, delegated: Any = None
) -> dict[str, str | None]:
    """The token for each link of `host`, keyed by the linked inventory host.

    From the tokens step (hostvars[target].skiff_issued_tokens) when the target
    was in the run, else from the delegated token task's results; None when
    neither has one (check mode before the target exists).
    """
    tokens: dict[str, str | None] = {}
    for link in links:
        issued = hostvars[link["to"]].get("skiff_issued_tokens") or {}
        tokens[link["to"]] = issued.get(host)
    for result in (delegated or {}).get("results", []):
        if result.get("token"):
            tokens[result["link"]["to"]] = result["token"]
    return tokens


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "fleet_problems": skiff_fleet_problems,
            "dialers": skiff_dialers,
            "network": skiff_network,
            "site_names": skiff_site_names,
            "link_tokens": skiff_link_tokens,
        }
