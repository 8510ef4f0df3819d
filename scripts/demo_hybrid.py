"""`make demo-hybrid`: one inventory, three platforms, every service reached from every site.

    up      build what is missing, start the services, run site.yml, run the
            kubernetes site's rendered Deployment with `podman kube play`
    show    ask for every service from every site (exit 1 on any failure)
    down    remove everything `up` made

The sites (inventories/hybrid/hosts.yml): `shop` is a kubernetes site in
render-only mode whose Deployment runs as a pod (the locally built router
image; the documented transform of tests/integration/kube_play.py stands in
for what a kubelet does with volumes), `east` a local site, `edge` a systemd
site on a Debian host container with systemd as PID 1. `east` and `edge` link
to `shop` over mutual TLS. Needs root (podman) and `make images`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
for helpers in ("tests/integration", "scripts", ".cache/collections"):
    sys.path.insert(0, str(REPO / helpers))

from demo_show import Answer, ask, render  # noqa: E402
from kube_play import (  # noqa: E402
    LOCK,
    Kubelet,
    admin_headers,
    build_image,
    podman,
    rendered,
    transform,
    wait_for,
)

from ansible_collections.skiff.fleet.plugins.module_utils import kube_manifests as km  # noqa: E402

INVENTORY = REPO / "inventories" / "hybrid"
STATE = REPO / ".demo" / "hybrid"
NETWORK = "skiff-demo-net"
EDGE = "skiff-demo-edge"
CATALOG = "skiff-demo-catalog"
HOST_IMAGE = "localhost/skiff-test-host:bookworm"
BASE_IMAGE = "localhost/skiff-test-router-base:bookworm"
SHOP_ADMIN = 9473  # the pod's admin port, published on 127.0.0.1

# One small HTTP service: "hello from <service> at site <site>: request #n for <path>".
SERVICE = """
import http.server, sys
name, site, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
count = 0
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global count
        count += 1
        body = f"hello from {name} at site {site}: request #{count} for {self.path}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((host, port), Hello).serve_forever()
"""
# A client inside the pod (its listeners are on the pod's network).
CLIENT = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    sys.stdout.write(answer.read().decode())
"""


def hosts() -> dict:
    return yaml.safe_load((INVENTORY / "hosts.yml").read_text())["skiff_sites"]["hosts"]


def playbook(name: str, *args: str) -> None:
    command = ["ansible-playbook", "-i", str(INVENTORY), str(REPO / "playbooks" / name), *args]
    print("$", " ".join(command[:4]), *args, flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def exists(kind: str, name: str) -> bool:
    return podman(kind, "exists", name, check=False).returncode == 0


def connector(site: str) -> dict:
    (first,) = hosts()[site]["skiff_connectors"]
    return first


def start_services() -> None:
    """east's service on this machine, edge's in its host container, shop's beside the pod."""
    STATE.mkdir(parents=True, exist_ok=True)
    east = connector("east")
    pid_file = STATE / "east-service.pid"
    if not _alive(pid_file):
        log = open(STATE / "east-service.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVICE, east["name"], "east", east["host"], str(east["port"])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        pid_file.write_text(str(proc.pid))
    if not exists("network", NETWORK):
        podman("network", "create", NETWORK)
    if not exists("container", CATALOG):
        shop = connector("shop")
        podman("run", "-d", "--name", shop["host"], "--network", NETWORK, "--user", "10001",
               BASE_IMAGE, "python3", "-c", SERVICE, shop["name"], "shop", "0.0.0.0",
               str(shop["port"]))  # fmt: skip
    if not exists("container", EDGE):
        # systemd as PID 1, on this machine's network: its listeners are on 127.0.0.1.
        podman("run", "-d", "--name", EDGE, "--hostname", EDGE, "--network", "host",
               "--systemd", "always", HOST_IMAGE, "/sbin/init")  # fmt: skip
        # Until the boot is over; "degraded" is fine: the image's own podman units
        # do not start in a container, and the router does not need them. Asked
        # again while systemd cannot answer yet (right after the start it has no
        # bus, and `--wait` returns at once with nothing); bounded.
        wait_for(lambda: exists("container", EDGE), "the edge host container")
        deadline = time.monotonic() + 300
        booted = ""
        while booted not in ("running", "degraded") and time.monotonic() < deadline:
            booted = podman("exec", EDGE, "systemctl", "is-system-running", "--wait",
                            check=False, timeout=300).stdout.strip()  # fmt: skip
            if booted not in ("running", "degraded"):
                time.sleep(1)
        if booted not in ("running", "degraded"):
            jobs = podman("exec", EDGE, "systemctl", "list-jobs", check=False).stdout
            raise SystemExit(f"systemd in {EDGE} did not boot ({booted!r}); jobs:\n{jobs}")
        edge = connector("edge")
        podman("exec", "-d", EDGE, "python3", "-c", SERVICE, edge["name"], "edge",
               edge["host"], str(edge["port"]))  # fmt: skip


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        return b"-c" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def sync_shop_volumes() -> None:
    """What the kubelet does when the ConfigMap or a Secret changes."""
    kubelet = Kubelet(STATE / "volumes")
    for name, files in rendered(STATE / "gitops", "shop")[1].items():
        kubelet.project(name, files, 0o444 if name == km.ROUTER else 0o440)


def play_shop() -> None:
    deployment, _data = rendered(STATE / "gitops", "shop")
    sync_shop_volumes()
    link_port = hosts()["shop"]["skiff_link_endpoint"]["port"]
    played = transform(deployment, STATE / "volumes", {"admin": SHOP_ADMIN, "link": link_port})
    play_file = STATE / "shop-played.yaml"
    play_file.write_text(yaml.safe_dump(played, sort_keys=False))
    if not router_container():
        podman("kube", "play", "--network", NETWORK, str(play_file), timeout=300)
    wait_for(lambda: shop_status()["ready"], "shop's router ready in its pod", timeout=120)


def router_container() -> str | None:
    names = podman("ps", "--format", "{{.Names}}", "--filter", "name=skiff-router").stdout
    return next((n for n in names.split() if n.endswith("-router")), None)


def shop_status() -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{SHOP_ADMIN}/v1/status", headers=admin_headers(STATE / "gitops", "shop")
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def up() -> None:
    build_image()
    if not STATE.exists():
        # A fresh demo: what an interrupted one left behind (with no state to go
        # with it) would be taken for running parts of this one.
        for container in (EDGE, CATALOG):
            podman("rm", "-f", "-t", "5", container, check=False)
        podman("pod", "rm", "-f", "-t", "5", f"{km.ROUTER}-pod", check=False)
    start_services()
    # shop first: the other sites' runs wait until they reach it (GitOps order:
    # the manifests are deployed before the sites linking to it converge).
    playbook("site.yml", "--limit", "shop")
    play_shop()
    playbook("site.yml")
    sync_shop_volumes()  # shop now accepts exactly the tokens it issued (link_clients)
    wait_for(
        lambda: {lk["peer"] for lk in shop_status()["links"]} == {"east", "edge"},
        "east and edge linked to shop",
        timeout=60,
    )
    print(f"\nshop runs as a pod: router id {shop_status()['router_id']}")


def ask_in_pod(site: str, listener: dict, providers: dict[str, str]) -> Answer:
    """As `demo_show.ask`, from inside the pod (a kubernetes site's listeners)."""
    container = router_container()
    url = f"http://127.0.0.1:{listener['port']}/from-{site}"
    started = time.perf_counter()
    done = podman("exec", container or "-", "python3", "-c", CLIENT, url, check=False)
    ms = (time.perf_counter() - started) * 1000
    text = done.stdout.strip()
    name = listener["name"]
    if done.returncode != 0:
        return Answer(site, name, "", f"FAILED: {done.stderr.strip()[-200:]}", 0.0)
    expected = f"hello from {name} at site {providers.get(name)}:"
    served_by = providers.get(name, "") if text.startswith(expected) else ""
    return Answer(site, name, served_by, text if served_by else f"WRONG ANSWER: {text}", ms)


def show() -> int:
    sites = hosts()
    providers = {c["name"]: s for s, v in sites.items() for c in v.get("skiff_connectors", [])}
    answers = []
    for site, values in sites.items():
        for listener in values.get("skiff_listeners", []):
            if values.get("skiff_platform") == "kubernetes":
                answers.append(ask_in_pod(site, listener, providers))
            else:
                answers.append(ask(site, listener, providers))
    platforms = ", ".join(f"{s}: {v.get('skiff_platform', 'local')}" for s, v in sites.items())
    print(f"\n== Every service, asked for from every site ({platforms})")
    print(render(sites, answers))
    for answer in answers:
        print(f"  {answer.site} -> {answer.service}: {answer.text}")
    routers = sorted(f"{r['id']} ({r['site']})" for r in shop_status()["routers"])
    print(f"\n== Routers shop's router knows: {', '.join(routers)}")
    return 1 if any(not a.ok for a in answers) else 0


def down() -> None:
    if (STATE / "sites" / "east").exists():
        playbook("teardown.yml", "--limit", "east,shop")
    play_file = STATE / "shop-played.yaml"
    if play_file.exists():
        podman("kube", "down", str(play_file), check=False, timeout=120)
    for container in (EDGE, CATALOG):
        podman("rm", "-f", "-t", "5", container, check=False)
    podman("network", "rm", "-f", NETWORK, check=False)
    pid_file = STATE / "east-service.pid"
    if _alive(pid_file):
        subprocess.run(["kill", pid_file.read_text().strip()], check=False)
    subprocess.run(["rm", "-rf", str(STATE)], check=True)
    print("the hybrid demo is removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["up", "show", "down"])
    args = parser.parse_args()
    with open(LOCK, "w") as lock:  # one podman kube user at a time on this machine
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.action == "up":
            up()
            return 0
        if args.action == "show":
            return show()
        down()
        return 0


if __name__ == "__main__":
    sys.exit(main())
