"""`skiff-router status --network`: the whole network at a glance, from one router's status.

Every router knows every other router (link-state routing) and every routing
key with the routers that serve and listen for it, so one router's `/v1/status`
is enough; its `/v1/network` (when the router has it) adds every router's links
and this router's per-key counts. Pure: dicts in, text out.
"""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [[h.upper() for h in header], *rows]:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_network(status: dict[str, Any], network: dict[str, Any] | None = None) -> str:
    here = str(status.get("site"))
    routers = sorted(
        status.get("routers") or [],
        key=lambda r: (r.get("cost") is None, r.get("cost") or 0, str(r.get("id"))),
    )
    reachable = [r for r in routers if r.get("reachable")]
    keys = status.get("routing_keys") or {}
    own_keys = {
        str(k.get("key") if isinstance(k, dict) else k)
        for x in status.get("listeners") or []
        for k in x.get("routing_keys") or [x.get("routing_key")]
    }
    lines = [
        f"network as seen from {here} ({status.get('mode', 'interior')}): "
        f"{len(routers)} routers, {len(reachable)} reachable, {len(keys)} routing keys"
    ]

    lines += ["", "routers:"]
    lines += _table(
        ["router", "mode", "reachable", "cost", "next hop"],
        [
            [
                str(r.get("id")) + (" (here)" if r.get("id") == here else ""),
                str(r.get("mode", "interior")),
                "yes" if r.get("reachable") else "NO",
                _dash(r.get("cost")),
                _dash(r.get("next_hop")),
            ]
            for r in routers
        ],
    )

    lines += ["", f"links of {here}:"]
    lines += _table(
        ["link", "direction", "peer", "cost", "state", "error"],
        [
            [
                str(x.get("name")),
                str(x.get("direction")),
                str(x.get("peer")),
                _dash(x.get("cost")),
                str(x.get("state")),
                _dash(x.get("error")),
            ]
            for x in status.get("links") or []
        ],
    )

    if network is not None:
        lines += ["", "links in the network (from link state):"]
        lines += _table(
            ["from", "to", "cost", "state"],
            [
                [str(r.get("id")), str(x.get("to")), _dash(x.get("cost")), str(x.get("state"))]
                for r in network.get("routers") or []
                for x in r.get("links") or []
            ],
        )
        lines += ["", f"flows through {here} per routing key:"]
        lines += _table(
            ["key", "open", "total", "bytes out", "bytes back"],
            [
                [
                    key,
                    str(k.get("flows_open", 0)),
                    str(k.get("flows_total", 0)),
                    str(k.get("bytes_out", 0)),
                    str(k.get("bytes_back", 0)),
                ]
                for key, k in sorted((network.get("routing_keys") or {}).items())
            ],
        )

    lines += ["", "routing keys:"]
    lines += _table(
        ["key", "served at", "listened at", "reachable from here"],
        [
            [
                key,
                ",".join(info.get("connectors") or []) or "-",
                ",".join(info.get("listeners") or []) or "-",
                "yes" if info.get("reachable") else "NO",
            ]
            for key, info in sorted(keys.items())
        ],
    )

    unserved = sorted(k for k in own_keys if not (keys.get(k) or {}).get("reachable"))
    down = sorted(str(r.get("id")) for r in routers if not r.get("reachable"))
    lines.append("")
    if unserved or down:
        if unserved:
            lines.append(f"listeners here with no reachable connector: {', '.join(unserved)}")
        if down:
            lines.append(f"routers not reachable from here: {', '.join(down)}")
    else:
        lines.append("every router is reachable and every listener here has a connector")
    return "\n".join(lines)
