"""Tier 2 for the Kubernetes agent: real HTTPS against an emulated API server.

The client (list pages, watch streams, create/patch/delete and their errors)
and the agent's list+watch loop: pods followed live, 403, 5xx, slow and dropped
streams, bookmarks, 410 Gone, and the overlay kept when the API is away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import FakeApiServer
from kube_testkit import (
    agent_for,
    caught_up,
    client,
    eventually,
    names,
    overlay,
    problems,
    ready_pod,
    running,
    service,
)
from router_testkit import Ca, free_port

from skiff_router.kube import api as kube_api
from skiff_router.kube.api import ApiError

pytestmark = pytest.mark.integration

NS = "west"
PODS = f"/api/v1/namespaces/{NS}/pods"
SERVICES = f"/api/v1/namespaces/{NS}/services"
DB = [{"name": "db", "routing_key": "db", "port": 5432, "selector": {"matchLabels": {"app": "db"}}}]


@pytest.fixture
def srv(tmp_path: Path):
    with FakeApiServer(tmp_path / "api") as server:
        yield server


# -- the client ------------------------------------------------------------------------------


def test_list_pages_and_errors_carry_the_status(
    srv: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        srv.put("pods", NS, ready_pod(f"p{i}", f"10.0.0.{i}"))
    monkeypatch.setattr(kube_api, "LIST_LIMIT", 2)
    api = client(srv)
    seen, token = [], None
    while True:
        page = api.list(PODS, token)
        seen += [p["metadata"]["name"] for p in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == [f"p{i}" for i in range(5)]
    assert page["metadata"]["resourceVersion"] == str(srv.rv)

    srv.fail(403, resource="pods")
    with pytest.raises(ApiError) as exc:
        api.list(PODS)
    assert exc.value.status == 403 and exc.value.reason == "Forbidden"
    assert 'cannot list resource "pods"' in exc.value.message


def test_writes_conflicts_and_invalid_bodies(srv: FakeApiServer) -> None:
    api = client(srv)
    body = service("web", [80])
    created = api.create(SERVICES, body)
    uid, rv = created["metadata"]["uid"], created["metadata"]["resourceVersion"]
    with pytest.raises(ApiError) as exc:
        api.create(SERVICES, body)
    assert (exc.value.status, exc.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as exc:
        api.create(SERVICES, service("Bad_Name", [80]))
    assert (exc.value.status, exc.value.reason) == (422, "Invalid")
    assert "metadata.name" in exc.value.message

    patched = api.merge_patch(
        f"{SERVICES}/web", {"metadata": {"uid": uid, "resourceVersion": rv, "labels": {"a": "b"}}}
    )
    assert patched["metadata"]["labels"] == {"a": "b"}
    with pytest.raises(ApiError) as exc:  # stale version: somebody changed it since
        api.merge_patch(f"{SERVICES}/web", {"metadata": {"resourceVersion": rv, "labels": {}}})
    assert exc.value.status == 409
    with pytest.raises(ApiError) as exc:  # another object of the same name
        api.delete(f"{SERVICES}/web", "another-uid", patched["metadata"]["resourceVersion"])
    assert exc.value.status == 409 and srv.get("services", NS, "web") is not None
    api.delete(f"{SERVICES}/web", uid, patched["metadata"]["resourceVersion"])
    assert srv.get("services", NS, "web") is None
    with pytest.raises(ApiError) as exc:
        api.delete(f"{SERVICES}/web", uid, "1")
    assert exc.value.status == 404


def test_tls_is_verified_and_the_token_reread(srv: FakeApiServer, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.crt"
    other.write_bytes(Ca.create("someone else").pem)
    with pytest.raises(ApiError) as exc:
        client(srv, ca_file=str(other)).list(PODS)
    assert exc.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in exc.value.message

    api = client(srv)
    api.list(PODS)
    srv.token = "rotated"
    with pytest.raises(ApiError) as exc:
        api.list(PODS)
    assert exc.value.status == 401 and "rotated" not in str(exc.value)
    Path(srv.token_file).write_text("rotated\n")  # the kubelet rotates the projected token
    api.list(PODS)


def test_watch_stream_slow_bookmarks_timeout_and_drop(srv: FakeApiServer) -> None:
    api = client(srv)
    rv = api.list(PODS)["metadata"]["resourceVersion"]
    srv.slow = 0.02  # every event arrives in pieces, paused mid-JSON
    srv.put("pods", NS, ready_pod("a", "10.0.0.1"))
    events = []
    for ev in api.watch(PODS, rv, timeout_seconds=1, read_timeout=5):
        events.append(ev)
        if len(events) == 1:
            srv.bookmark()
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]  # then the server's timeout
    assert events[0]["object"]["metadata"]["name"] == "a"

    srv.slow = 0.0
    stream = api.watch(PODS, str(srv.rv), timeout_seconds=30, read_timeout=5)
    threading.Timer(0.3, srv.drop_watches).start()
    with pytest.raises(ApiError) as exc:
        list(stream)
    assert exc.value.status == 0

    with pytest.raises(ApiError) as exc:  # a silent stream is given up on
        list(api.watch(PODS, str(srv.rv), timeout_seconds=30, read_timeout=0.5))
    assert exc.value.reason == "Timeout"

    srv.compact()
    events = list(api.watch(PODS, rv, timeout_seconds=30, read_timeout=5))
    assert [e["type"] for e in events] == ["ERROR"] and events[0]["object"]["code"] == 410


def test_close_ends_open_watches(srv: FakeApiServer) -> None:
    api = client(srv)
    result: list[object] = []

    def watch() -> None:
        try:
            list(api.watch(PODS, str(srv.rv), timeout_seconds=60, read_timeout=60))
        except ApiError as exc:
            result.append(exc)

    t = threading.Thread(target=watch)
    t.start()
    eventually(lambda: srv.open_watches("pods") == 1, "the watch is open")
    api.close()
    t.join(10)
    assert not t.is_alive() and isinstance(result[0], ApiError)


# -- the agent: connectors by pod selector ---------------------------------------------------


def test_selector_connectors_follow_pods_live(srv: FakeApiServer, tmp_path: Path) -> None:
    srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
    srv.put("pods", NS, ready_pod("web-0", "10.0.0.20", app="web"))
    with running(agent_for(srv, tmp_path, expose=False, connectors=DB)) as agent:
        eventually(lambda: names(agent, "connectors") == ["db@db-0"], "db-0 connector")
        assert overlay(agent)["connectors"][0] == {
            "name": "db@db-0",
            "routing_key": "db",
            "host": "10.0.0.10",
            "port": 5432,
        }
        srv.put("pods", NS, ready_pod("db-1", "10.0.0.11", app="db"))
        eventually(lambda: names(agent, "connectors") == ["db@db-0", "db@db-1"], "db-1 added")
        srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", ready=False, app="db"))
        eventually(lambda: names(agent, "connectors") == ["db@db-1"], "unready db-0 left")

        # A change that does not matter leaves the file alone (same inode, same bytes).
        before = os.stat(agent.cfg.overlay)
        srv.put("pods", NS, ready_pod("web-1", "10.0.0.21", app="web"))
        eventually(lambda: caught_up(agent, srv, "pods"), "web-1 seen")
        after = os.stat(agent.cfg.overlay)
        assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

        srv.remove("pods", NS, "db-1")
        eventually(lambda: names(agent, "connectors") == [], "no db pod left")
        problem = eventually(
            lambda: [p for p in problems(agent) if p["object"] == "connector/db"], "a status entry"
        )
        assert problem[0]["field"] == "selector" and "no ready pod" in problem[0]["message"]


def test_changed_config_file_applies_its_connectors_while_running(
    srv: FakeApiServer, tmp_path: Path
) -> None:
    """The platform changes selector connectors in the mounted agent.json with no
    rollout: the running agent takes them, and keeps them when a new file is bad."""
    srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
    srv.put("pods", NS, ready_pod("web-0", "10.0.0.20", app="web"))
    path = tmp_path / "agent.json"

    def swap(data: dict[str, Any]) -> None:  # as the kubelet does: a new file, renamed
        (tmp_path / "agent.new").write_text(json.dumps(data))
        os.replace(tmp_path / "agent.new", path)

    with running(agent_for(srv, tmp_path, expose=False, config_path=path)) as agent:
        assert agent.pods is None  # no selector connector: no pod watch
        data = json.loads(path.read_text())
        swap(dict(data, connectors=DB))
        eventually(lambda: names(agent, "connectors") == ["db@db-0"], "db connector added")

        web = {"name": "web", "port": 8080, "selector": {"matchLabels": {"app": "web"}}}
        swap(dict(data, connectors=[*DB, web]))
        eventually(
            lambda: names(agent, "connectors") == ["db@db-0", "web@web-0"], "web connector added"
        )

        # A bad file: the running connectors stay, the status says what is wrong.
        swap(dict(data, connectors=[dict(web, port=0)]))
        problem = eventually(
            lambda: [p for p in problems(agent) if p["object"] == "config"], "a config problem"
        )
        assert "connectors[0].port" in problem[0]["message"]
        assert "keeps its running connectors" in problem[0]["message"]
        assert names(agent, "connectors") == ["db@db-0", "web@web-0"]

        # A field that needs a restart is named, the connectors still apply.
        swap(dict(data, connectors=[web], ttl=9))
        eventually(lambda: names(agent, "connectors") == ["web@web-0"], "db connector removed")
        problem = eventually(
            lambda: [p for p in problems(agent) if p["object"] == "config"], "a restart note"
        )
        assert problem[0]["message"] == "ttl changed: in force when the agent restarts"


def test_replicas_are_linked_as_router_pods_come_and_go(srv: FakeApiServer, tmp_path: Path) -> None:
    """The agent of pod r-a links its router to each later router pod of the site
    (the pod watch), at the pod address, and drops the link when the pod goes."""
    router = {"app.kubernetes.io/name": "skiff-router", "app.kubernetes.io/instance": NS}
    siblings = {
        "port": 55671,
        "server_name": f"skiff-link.{NS}.svc",
        "ca": "/etc/skiff/server/ca.crt",
        "cert": "/etc/skiff/server/sibling.crt",
        "key": "/etc/skiff/server/sibling.key",
    }
    srv.put("pods", NS, ready_pod("r-a", "10.0.0.1", **router))
    srv.put("pods", NS, ready_pod("r-0", "10.0.0.5", **router))  # sorts first: it dials r-a
    srv.put("pods", NS, ready_pod("db-0", "10.0.0.9", app="db"))
    agent = agent_for(srv, tmp_path, expose=False, siblings=siblings, pod_name="r-a")
    with running(agent):
        eventually(lambda: overlay(agent) is not None, "the first overlay")
        assert names(agent, "links") == []
        srv.put("pods", NS, ready_pod("r-b", "10.0.0.2", ready=False, **router))
        eventually(lambda: names(agent, "links") == ["sibling-r-b"], "r-b linked")
        (link,) = overlay(agent)["links"]
        assert link["endpoints"] == [
            {"host": "10.0.0.2", "port": 55671, "server_name": f"skiff-link.{NS}.svc"}
        ]
        assert (link["peer"], link["cert"]) == (NS, "/etc/skiff/server/sibling.crt")
        srv.remove("pods", NS, "r-b")
        eventually(lambda: names(agent, "links") == [], "r-b gone, its link too")
        assert agent.status()["overlay"]["links"] == 0


def test_forbidden_list_keeps_the_overlay_and_says_what_to_fix(
    srv: FakeApiServer, tmp_path: Path
) -> None:
    last_good = {
        "listeners": [],
        "connectors": [{"name": "db@db-0", "routing_key": "db", "host": "10.0.0.9", "port": 5432}],
        "links": [],
    }
    path = tmp_path / "west-overlay.json"
    path.write_text(json.dumps(last_good))
    raw = path.read_bytes()
    srv.put("pods", NS, ready_pod("db-1", "10.0.0.11", app="db"))
    fault = srv.fail(403, resource="pods", count=-1)
    with running(agent_for(srv, tmp_path, expose=False, connectors=DB)) as agent:
        entry = eventually(
            lambda: [p for p in problems(agent) if p["object"] == "api/pods"], "a 403 entry"
        )[0]
        assert "Role skiff-agent must allow list and watch on pods" in entry["message"]
        assert "namespace west" in entry["message"]
        eventually(lambda: srv.count("GET", "pods") >= 3, "retries")
        assert path.read_bytes() == raw  # the last good overlay, untouched
        fault.count = 0
        eventually(lambda: names(agent, "connectors") == ["db@db-1"], "recovered")
        eventually(lambda: not problems(agent), "problem resolved")


def test_api_away_keeps_last_good_then_catches_up(srv: FakeApiServer, tmp_path: Path) -> None:
    srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
    with running(agent_for(srv, tmp_path, expose=False, connectors=DB)) as agent:
        eventually(lambda: names(agent, "connectors") == ["db@db-0"], "db-0")
        raw = Path(agent.cfg.overlay).read_bytes()
        fault = srv.fail(503, resource="pods", count=-1)
        srv.drop_watches()
        eventually(
            lambda: any(
                p["object"] == "api/pods" and "503" in p["message"] for p in problems(agent)
            ),
            "503 reported",
        )
        srv.put("pods", NS, ready_pod("db-1", "10.0.0.11", app="db"))  # while we cannot see
        eventually(lambda: srv.count("GET", "pods", watch=True) >= 4, "several failed retries")
        assert Path(agent.cfg.overlay).read_bytes() == raw
        fault.count = 0
        eventually(lambda: names(agent, "connectors") == ["db@db-0", "db@db-1"], "caught up")
        # The dropped watch resumed from its version: no new list was needed.
        assert agent.status()["api"]["pods"]["relists"] == 1


def test_gone_410_relists_and_dropped_watch_resumes(srv: FakeApiServer, tmp_path: Path) -> None:
    srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
    with running(agent_for(srv, tmp_path, expose=False, connectors=DB)) as agent:
        eventually(lambda: names(agent, "connectors") == ["db@db-0"], "db-0")
        eventually(lambda: srv.open_watches("pods") == 1, "watching")

        # Bookmark then drop: the agent resumes from the bookmark's version.
        srv.bookmark()
        mark = str(srv.rv)
        eventually(lambda: agent.pods.state()["resource_version"] == mark, "bookmark seen")
        srv.drop_watches()
        srv.put("pods", NS, ready_pod("db-1", "10.0.0.11", app="db"))
        eventually(lambda: "db@db-1" in names(agent, "connectors"), "db-1 after the drop")
        assert any(
            r.query.get("resourceVersion") == mark for r in srv.requests if r.query.get("watch")
        )
        assert agent.pods.state()["relists"] == 1

        # Compaction while away: the old version is 410 Gone (an ERROR event); list again.
        eventually(lambda: srv.open_watches("pods") == 1, "watching again")
        srv.compact()
        srv.drop_watches()
        srv.remove("pods", NS, "db-0")
        srv.compact()
        eventually(lambda: names(agent, "connectors") == ["db@db-1"], "db-0 gone after a relist")
        assert agent.pods.state()["relists"] >= 2

        # An ERROR event on an open stream, and a 410 answered as an HTTP status.
        relists = agent.pods.state()["relists"]
        eventually(lambda: srv.open_watches("pods") == 1, "watching again")
        srv.expire_watches()
        eventually(lambda: agent.pods.state()["relists"] > relists, "relist after ERROR")
        relists = agent.pods.state()["relists"]
        srv.fail(410, resource="pods", watch=True)
        eventually(lambda: srv.open_watches("pods") == 1, "watching again")
        srv.drop_watches()
        eventually(lambda: agent.pods.state()["relists"] > relists, "relist after HTTP 410")
        assert names(agent, "connectors") == ["db@db-1"]


def test_slow_and_stalled_streams(srv: FakeApiServer, tmp_path: Path) -> None:
    from kube_testkit import FAST

    tuning = type(FAST)(**{**FAST.__dict__, "watch_read_timeout": 1.0, "watch_timeout": 30})
    with running(agent_for(srv, tmp_path, expose=False, connectors=DB, tuning=tuning)) as agent:
        eventually(lambda: srv.open_watches("pods") == 1, "watching")
        srv.slow = 0.05  # pieces within the read timeout: slow but fine
        srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
        eventually(lambda: names(agent, "connectors") == ["db@db-0"], "slow event applied")
        srv.slow = 1.5  # stalls longer than the read timeout: given up, resumed
        srv.put("pods", NS, ready_pod("db-1", "10.0.0.11", app="db"))
        eventually(lambda: any("silent" in p["message"] for p in problems(agent)), "stall reported")
        srv.slow = 0.0
        eventually(lambda: "db@db-1" in names(agent, "connectors"), "resumed and applied")


def test_health_and_status_endpoint(srv: FakeApiServer, tmp_path: Path) -> None:
    with running(agent_for(srv, tmp_path, expose=False, connectors=DB)) as agent:
        url = f"http://127.0.0.1:{agent.cfg.health_port}"
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"

        def status() -> dict:
            with urllib.request.urlopen(url + "/v1/status", timeout=5) as resp:
                return json.load(resp)

        eventually(lambda: status().get("api", {}).get("pods", {}).get("synced"), "synced")
        assert status()["overlay"]["connectors"] == 0
        assert status()["problems"][0]["object"] == "connector/db"


def test_command_line(srv: FakeApiServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"site": "west", "overlay": "x", "connectors": [{"name": "db"}]}))
    out = subprocess.run(
        [sys.executable, "-m", "skiff_router", "kube-agent", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    for field in (
        "namespace: is required",
        "overlay: must be an absolute path",
        "connectors[0].port",
    ):
        assert field in out.stdout, out.stdout

    srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
    cfg = tmp_path / "agent.json"
    overlay_path = tmp_path / "overlay.json"
    cfg.write_text(
        json.dumps(
            {
                "site": "west",
                "namespace": NS,
                "overlay": str(overlay_path),
                "expose": False,
                "health": {"host": "127.0.0.1", "port": free_port()},
                "connectors": DB,
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skiff_router",
            "kube-agent",
            "--config",
            str(cfg),
            "--api-url",
            srv.url,
            "--token-file",
            srv.token_file,
            "--ca-file",
            srv.ca_file,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually(overlay_path.exists, "overlay written")
        assert json.loads(overlay_path.read_text())["connectors"][0]["name"] == "db@db-0"
        raw = overlay_path.read_bytes()
    finally:
        proc.terminate()
        output, _unused = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert overlay_path.read_bytes() == raw  # stopping leaves the overlay in force
    assert srv.token not in output
    assert "overlay written" in output


def test_a_source_forbidden_for_good_holds_the_first_overlay_back_only_a_while(
    srv: FakeApiServer, tmp_path: Path
) -> None:
    from kube_testkit import FAST

    tuning = type(FAST)(**{**FAST.__dict__, "partial_overlay_after": 0.5})
    srv.put("pods", NS, ready_pod("db-0", "10.0.0.10", app="db"))
    srv.fail(403, resource="services", count=-1)
    with running(agent_for(srv, tmp_path, connectors=DB, tuning=tuning)) as agent:
        eventually(lambda: names(agent, "connectors") == ["db@db-0"], "pods' part written")
        assert any(p["object"] == "api/services" for p in problems(agent))
        assert srv.writes() == []
