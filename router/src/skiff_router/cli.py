"""Command line: run, supervise, check-config, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from skiff_router import __version__, eventloop, logfile, workers
from skiff_router import log as logsetup
from skiff_router.config import AdminTokenError, ConfigError, load, read_admin_token
from skiff_router.kube import agent as kube_agent

log = logging.getLogger("router")


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Failed TLS handshakes from strangers are routine, not tracebacks.
    exc = context.get("exception")
    msg = context.get("message", "")
    if exc is not None and isinstance(exc, OSError):
        logging.getLogger("asyncio").info("%s: %s", msg, exc)
    else:
        logging.getLogger("asyncio").error("%s", msg, exc_info=exc)


def cmd_run(args: argparse.Namespace) -> int:
    from skiff_router.runtime import Router

    try:
        loaded = load(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{args.config}: {line}", file=sys.stderr)
        return 2
    try:
        seat = workers.seat_from_env()
    except ValueError as exc:
        print(f"skiff-router: {exc}", file=sys.stderr)
        return 2
    count = loaded.config.workers or workers.default_count()
    if seat is None and count > 1:
        logsetup.setup(loaded.config.log_level, tag="pool")
        return workers.run_pool(args.config, count)
    logsetup.setup(loaded.config.log_level, tag=f"w{seat.index}" if seat is not None else None)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_loop_exception)
        router = Router(loaded, seat)
        try:
            await router.start()
        except OSError as exc:
            log.error("cannot start: %s", exc.strerror or exc)
            await router.stop()
            return 1
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: router.spawn(router.reload()))
        await stop.wait()
        log.info("stopping")
        await router.stop()
        return 0

    try:
        return eventloop.run(main)
    except eventloop.LoopError as exc:
        print(f"skiff-router: {exc}", file=sys.stderr)
        return 2


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def cmd_supervise(args: argparse.Namespace) -> int:
    from skiff_router.supervisor import Supervisor

    logsetup.setup("info")

    async def main() -> int:
        return await Supervisor(
            args.config,
            args.pid_file,
            log_file=args.log_file,
            log_max_bytes=args.log_max_bytes,
            log_keep=args.log_keep,
        ).run()

    return asyncio.run(main())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load(args.file)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{args.file}: {line}")
        return 2
    print(f"{args.file}: ok")
    return 0


def _admin(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The admin URL and the request headers, from ``--config`` (the router's own file:
    its admin address and token file) or from ``--admin`` and ``--token-file``."""
    admin, token_file = args.admin, args.token_file
    if args.config:
        cfg = load(args.config).config
        host = cfg.admin.host if cfg.admin.host not in ("0.0.0.0", "::") else "127.0.0.1"
        admin = f"http://{host}:{cfg.admin.port}"
        token_file = token_file or cfg.admin.token_file
    headers = {}
    if token_file:
        headers["Authorization"] = "Bearer " + read_admin_token(token_file)
    return admin.rstrip("/"), headers


def _get_json(url: str, headers: dict[str, str]) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.load(resp)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        admin, headers = _admin(args)
    except (ConfigError, AdminTokenError) as exc:
        print(f"skiff-router status: {exc}", file=sys.stderr)
        return 2
    url = admin + "/v1/status"
    try:
        status = _get_json(url, headers)
    except urllib.error.HTTPError as exc:
        hint = " (give --token-file or --config)" if exc.code == 401 else ""
        print(f"cannot read {url}: HTTP {exc.code}{hint}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot read {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    elif args.network:
        from skiff_router.netview import format_network

        print(format_network(status, _network(admin + "/v1/network", headers)))
    else:
        print(format_status(status))
    return 0


def _network(url: str, headers: dict[str, str]) -> dict[str, Any] | None:
    """The router's /v1/network, or None from a router that predates it."""
    try:
        got = _get_json(url, headers)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = [
        "  "
        + "  ".join(str(h).upper().ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    ]
    for r in rows:
        out.append(
            "  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        )
    return out


def format_status(s: dict[str, Any]) -> str:
    cfg = s.get("config", {})
    ready = s.get("ready")
    rid = s.get("router_id")
    lines = [
        f"site {s.get('site')}"
        + (f" router {rid}" if rid and rid != s.get("site") else "")
        + f" ({s.get('mode', 'interior')}, skiff-router {s.get('version')}"
        + (f" on {s['event_loop']}" if s.get("event_loop") else "")
        + ")"
        + ("" if ready is None else (", ready" if ready else ", NOT READY")),
        f"config {cfg.get('path')} sha256 {str(cfg.get('sha256'))[:12]}",
    ]
    if cfg.get("error"):
        lines.append(f"config error (old config in force): {cfg['error']}")
    flows = s.get("flows", {})
    for why in s.get("not_ready") or []:
        lines.append(f"not ready: {why}")
    lines.append(
        f"flows open {flows.get('open')} total {flows.get('total')}"
        + (f" retried {flows['retried']}" if "retried" in flows else "")
    )

    def section(title: str, header: list[str], rows: list[list[str]]) -> None:
        lines.append("")
        lines.append(f"{title}:")
        lines.extend(_table(rows, header) if rows else ["  (none)"])

    def dash(v: Any) -> str:
        return "-" if v is None else str(v)

    if s.get("workers"):
        section(
            "workers",
            ["worker", "router id", "pid", "state", "flows open", "flows total", "links up"],
            [
                [
                    str(w["index"]),
                    dash(w.get("router_id")),
                    dash(w.get("pid")),
                    w["state"] + (f": {w['error']}" if w.get("error") else ""),
                    dash(w.get("flows_open")),
                    dash(w.get("flows_total")),
                    dash(w.get("links_up")),
                ]
                for w in s["workers"]
            ],
        )
    section(
        "links",
        ["name", "direction", "peer", "cost", "state", "endpoint", "error"],
        [
            [
                lk["name"],
                lk["direction"],
                lk["peer"],
                str(lk["cost"]),
                lk["state"]
                + (" (renewed)" if lk.get("renewed") else "")
                + (f" (+{lk['draining']} draining)" if lk.get("draining") else ""),
                dash(lk["endpoint"]),
                dash(lk["error"]),
            ]
            for lk in s.get("links", [])
        ],
    )
    section(
        "routers",
        ["id", "mode", "reachable", "cost", "next hop"],
        [
            [
                r["id"],
                r.get("mode", "interior"),
                "yes" if r["reachable"] else "no",
                dash(r["cost"]),
                dash(r["next_hop"]),
            ]
            for r in s.get("routers", [])
        ],
    )
    section(
        "listeners",
        ["name", "key", "address", "state", "error"],
        [
            [x["name"], _listener_keys(x), f"{x['host']}:{x['port']}", x["state"], dash(x["error"])]
            for x in s.get("listeners", [])
        ],
    )
    section(
        "connectors",
        ["name", "key", "address", "flows", "state"],
        [
            [
                x["name"],
                x["routing_key"],
                f"{x['host']}:{x['port']}",
                dash(x.get("flows")),
                ("down: " + (x.get("error") or "?")) if x.get("down") else "ok",
            ]
            for x in s.get("connectors", [])
        ],
    )
    section(
        "routing keys",
        ["key", "reachable", "connectors", "listeners", "bytes out/back"],
        [
            [
                k,
                "yes" if v["reachable"] else "no",
                ",".join(
                    f"{t['router']}(cost {t['cost']}, {t['outstanding']} open"
                    + (", down)" if t["down"] else ")")
                    for t in v["targets"]
                )
                if "targets" in v
                else ",".join(v["connectors"]) or "-",
                ",".join(v["listeners"]) or "-",
                f"{v['bytes']['out']}/{v['bytes']['back']}" if "bytes" in v else "-",
            ]
            for k, v in s.get("routing_keys", {}).items()
        ],
    )
    return "\n".join(lines)


def _listener_keys(listener: dict[str, Any]) -> str:
    """One key, or a multi-key listener's keys with the strategy and the keys in use
    marked '*' (``db-primary*, db-standby (priority)``)."""
    if not listener.get("strategy"):
        return str(listener["routing_key"])
    in_use = set(listener.get("keys_in_use") or [])
    keys = ", ".join(
        k["key"]
        + ("*" if k["key"] in in_use else "")
        + (f" x{k['weight']}" if listener["strategy"] == "weighted" else "")
        for k in listener.get("routing_keys") or []
    )
    return f"{keys} ({listener['strategy']})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff-router", description="skiff data-plane router")
    p.add_argument("--version", action="version", version=f"skiff-router {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the router in the foreground")
    r.add_argument("--config", required=True)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("supervise", help="run and restart the router as a child")
    s.add_argument("--config", required=True)
    s.add_argument("--pid-file", required=True)
    s.add_argument(
        "--log-file", help="the file our output goes to: rotated (copy and truncate) when large"
    )
    s.add_argument("--log-max-bytes", type=_positive, default=logfile.DEFAULT_MAX_BYTES)
    s.add_argument("--log-keep", type=_positive, default=logfile.DEFAULT_KEEP)
    s.set_defaults(func=cmd_supervise)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    st = sub.add_parser("status", help="print the status of a running router")
    st.add_argument("--admin", default="http://127.0.0.1:9191")
    st.add_argument("--token-file", help="the admin token file (admin.token_file)")
    st.add_argument("--config", help="the router's config file: its admin address and token file")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.add_argument(
        "--network", action="store_true", help="the whole network as this router sees it"
    )
    st.set_defaults(func=cmd_status)

    kube_agent.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
