"""The network-wide plan of a check run (private to skiff.fleet; not a public API).

`build_plan()` turns what each site's steps reported in check mode (the site
module's actions, the tokens' actions, the reconcile module's changes and
diff) and the inventory into one plan of the whole fleet: sites to create or
change, links to add, remove or re-cost, listeners and connectors, routing
keys that become reachable or unreachable at which sites, certificates to
renew and why, and the sites that could not be planned and why.
`render_plan()` makes it readable. Plain data in, plain data out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import vocabulary
from ansible_collections.skiff.fleet.plugins.module_utils.topology import NetSite, served_keys

# Site module actions about certificates (the site module says why in parentheses).
CA_REPLACED = re.compile(r"^replace the site CA \((?P<why>.*)\)$")
SERVER_CERT = re.compile(r"^issue the server certificate for (?P<hosts>.*) \((?P<why>.*)\)$")
TOKEN_REISSUED = re.compile(
    r"^(?P<verb>issue|renew) (?P<kind>token|grant) '(?P<name>[^']+)'[^(]* "
    r"\(the previous one: (?P<why>.*)\)$"
)
CREDENTIALS = re.compile(r"^write the credentials of link '(?P<name>[^']+)' from the token$")
# Notes, not changes a user decides on.
NOTES = ("reload the router", "router not running")


@dataclass
class SiteReport:
    """What one site's check run reported (the role's registered results, plain)."""

    host: str
    name: str
    mode: str = vocabulary.DEFAULT_ROUTER_MODE
    site: dict[str, Any] | None = None
    tokens: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    # Inventory: what the site should be (used where its check run gave nothing).
    wanted: NetSite | None = None


def _failure(result: dict[str, Any] | None) -> str | None:
    if not result:
        return None
    if result.get("unreachable"):
        return f"unreachable: {result.get('msg') or 'no reason given'}"
    if result.get("failed"):
        return f"failed: {result.get('msg') or 'no reason given'}"
    return None


def _keys(entries: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(k for e in entries or [] for k in vocabulary.listener_keys(e))


def _net(report: SiteReport, side: str) -> NetSite:
    """The site before or after the run, from its reconcile diff (else the inventory)."""
    diff = (report.config or {}).get("diff") or {}
    data = diff.get(side)
    if data is None or _failure(report.config):
        return report.wanted or NetSite(report.name, report.mode)
    links = [e.get("peer") or e.get("name") for e in data.get("links") or []]
    if side == "after":
        # Links check mode cannot build yet (no token) are added by the real run.
        links += [
            (c.get("after") or {}).get("peer") or c["name"]
            for c in (report.config or {}).get("changes") or []
            if c["section"] == "links" and c.get("pending")
        ]
    return NetSite(
        name=report.name,
        mode=report.mode,
        links=tuple(str(p) for p in links),
        listeners=_keys(data.get("listeners")),
        connectors=_keys(data.get("connectors")),
    )


def build_plan(
    reports: list[SiteReport], others: dict[str, NetSite] | None = None
) -> dict[str, Any]:
    """The plan from the reports of the sites in this run; `others` are the inventory's
    sites outside it (--limit), taken as they are, so reachability sees the whole network."""
    plan: dict[str, Any] = {
        "sites": {"create": [], "change": {}, "unchanged": []},
        "links": {"add": [], "remove": [], "update": []},
        "services": {"add": [], "remove": [], "update": []},
        "reachable": {},
        "unreachable": {},
        "certificates": [],
        "errors": [],
    }
    for report in reports:
        problem = next(
            filter(
                None,
                [_failure(report.site), *map(_failure, report.tokens), _failure(report.config)],
            ),
            None,
        )
        if problem is None and report.site is None:
            problem = "no result: the site's steps did not run (an earlier step failed?)"
        if problem:
            plan["errors"].append({"site": report.name, "host": report.host, "why": problem})
        _site_changes(plan, report)
        _token_changes(plan, report)
        _config_changes(plan, report)
    _reachability(plan, reports, others or {})
    plan["changed"] = bool(
        plan["sites"]["create"]
        or plan["sites"]["change"]
        or any(plan["links"].values())
        or any(plan["services"].values())
        or plan["certificates"]
    )
    return plan


def _site_changes(plan: dict[str, Any], report: SiteReport) -> None:
    result = report.site or {}
    if _failure(result) or not result:
        return
    metadata_before = ((result.get("diff") or {}).get("before") or {}).get("metadata")
    if result.get("changed") and not metadata_before:
        plan["sites"]["create"].append(report.name)
        return
    certificates = len(plan["certificates"])
    other = []
    for action in result.get("actions") or []:
        if match := CA_REPLACED.match(action):
            plan["certificates"].append(
                {"site": report.name, "what": "site CA", "why": match["why"]}
            )
        elif match := SERVER_CERT.match(action):
            plan["certificates"].append(
                {
                    "site": report.name,
                    "what": f"server certificate for {match['hosts']}",
                    "why": match["why"],
                }
            )
        else:
            other.append(action)
    # A reload that only follows another change is not worth a line of its own;
    # a reload alone (the router ran another config) is the change.
    shown = [a for a in other if not a.startswith(NOTES)] or (
        other if len(plan["certificates"]) == certificates else []
    )
    if shown and result.get("changed"):
        plan["sites"]["change"][report.name] = shown
    elif not result.get("changed"):
        plan["sites"]["unchanged"].append(report.name)


def _token_changes(plan: dict[str, Any], report: SiteReport) -> None:
    for result in report.tokens:
        for action in result.get("actions") or []:
            if match := TOKEN_REISSUED.match(action):
                what = (
                    f"grant '{match['name']}' for a peer outside the inventory"
                    if match["kind"] == "grant"
                    else f"token for site '{match['name']}' (its link's client certificate)"
                )
                renewal = "; its next certificate takes over" if match["verb"] == "renew" else ""
                plan["certificates"].append(
                    {"site": report.name, "what": what, "why": match["why"] + renewal}
                )


def _config_changes(plan: dict[str, Any], report: SiteReport) -> None:
    result = report.config or {}
    if _failure(result):
        return
    for change in result.get("changes") or []:
        before, after = change.get("before") or {}, change.get("after") or {}
        if change["section"] == "links":
            entry = {
                "from": report.name,
                "to": after.get("peer") or before.get("peer") or change["name"],
                "name": change["name"],
                "cost": after.get("cost", before.get("cost")),
            }
            if change.get("pending"):
                entry["note"] = "its token is issued during the run"
            if change["action"] == "update":
                entry["cost_before"] = before.get("cost")
            plan["links"][change["action"]].append(entry)
        else:
            noun = change["section"][:-1]
            shown = after or before
            plan["services"][change["action"]].append(
                {
                    "site": report.name,
                    "kind": noun,
                    "name": change["name"],
                    "routing_key": shown.get("routing_key"),
                    "address": f"{shown.get('host')}:{shown.get('port')}" if shown else None,
                }
            )
    for action in result.get("actions") or []:
        if match := CREDENTIALS.match(action):
            name = match["name"]
            if not any(
                link["name"] == name and link["from"] == report.name
                for link in plan["links"]["add"]
            ):
                plan["certificates"].append(
                    {
                        "site": report.name,
                        "what": f"credentials of link '{name}'",
                        "why": "a new token was issued for it",
                    }
                )


def _reachability(
    plan: dict[str, Any], reports: list[SiteReport], others: dict[str, NetSite]
) -> None:
    before = {**others, **{r.name: _net(r, "before") for r in reports}}
    after = {**others, **{r.name: _net(r, "after") for r in reports}}
    for report in reports:
        name = report.name
        served_before = served_keys(before, name)
        served_after = served_keys(after, name)
        had = {k for k in before[name].listeners if k in served_before}
        has = {k for k in after[name].listeners if k in served_after}
        for key in sorted(has - had):
            plan["reachable"].setdefault(key, []).append(name)
        for key in sorted(had - has):
            why = (
                "listener removed" if key not in after[name].listeners else "no connector reachable"
            )
            plan["unreachable"].setdefault(key, []).append({"site": name, "why": why})
    for where in plan["reachable"].values():
        where.sort()
    for where in plan["unreachable"].values():
        where.sort(key=lambda u: u["site"])


def render_plan(plan: dict[str, Any], *, sites: int) -> str:
    lines = [f"Plan for {sites} site{'s' if sites != 1 else ''} (a check run: nothing was changed)"]

    def section(title: str, rows: list[str]) -> None:
        if rows:
            lines.append(f"{title} ({len(rows)}):")
            lines.extend(f"  {row}" for row in rows)

    section("Sites to create", sorted(plan["sites"]["create"]))
    section(
        "Sites to change",
        [
            f"{name}: {'; '.join(actions)}"
            for name, actions in sorted(plan["sites"]["change"].items())
        ],
    )

    def link_row(link: dict[str, Any]) -> str:
        note = f" ({link['note']})" if link.get("note") else ""
        return f"{link['from']} -> {link['to']}  cost {link['cost']}{note}"

    section("Links to add", [link_row(link) for link in plan["links"]["add"]])
    section("Links to remove", [link_row(link) for link in plan["links"]["remove"]])
    section(
        "Links to re-cost",
        [
            f"{link['from']} -> {link['to']}  cost {link['cost_before']} -> {link['cost']}"
            for link in plan["links"]["update"]
        ],
    )
    for action, title in (("add", "add"), ("update", "change"), ("remove", "remove")):
        section(
            f"Listeners and connectors to {title}",
            [
                f"{s['site']}: {s['kind']} '{s['name']}' (routing key '{s['routing_key']}', "
                f"{s['address']})"
                for s in plan["services"][action]
            ],
        )
    section(
        "Services that become reachable",
        [f"'{key}' at {', '.join(sites_)}" for key, sites_ in sorted(plan["reachable"].items())],
    )
    section(
        "Services that become unreachable",
        [
            f"'{key}' at " + ", ".join(f"{u['site']} ({u['why']})" for u in where)
            for key, where in sorted(plan["unreachable"].items())
        ],
    )
    section(
        "Certificates to renew",
        [f"{c['site']}: {c['what']} ({c['why']})" for c in plan["certificates"]],
    )
    section(
        "Cannot plan (nothing was planned for these sites)",
        [f"{e['site']}: {e['why']}" for e in plan["errors"]],
    )
    if not plan["changed"] and not plan["errors"]:
        lines.append("No changes: every site already is what the inventory says.")
    return "\n".join(lines)
