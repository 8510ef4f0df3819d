"""Tier 1 for the Kubernetes agent: its pure logic, with plain data (no I/O).

Selectors, the agent config, list+watch bookkeeping, annotations, announcements
and their ttl, proxy Service planning and the overlay it yields.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiff_router.config import validate as validate_router_config
from skiff_router.kube.config import AgentConfigError
from skiff_router.kube.config import validate as validate_agent
from skiff_router.kube.exposure import (
    AnnouncementBook,
    Exposure,
    decode,
    encode,
    exposure_of,
)
from skiff_router.kube.listwatch import ListRequest, ListWatch, WatchRequest
from skiff_router.kube.objects import Pod, Service, ServicePort, pod_from_api, service_from_api
from skiff_router.kube.plan import (
    Create,
    Delete,
    Inputs,
    Patch,
    assemble_overlay,
    proxy_labels,
    reconcile,
)
from skiff_router.kube.selector import SelectorError
from skiff_router.kube.selector import parse as parse_selector

# -- helpers ---------------------------------------------------------------------------------


def agent_cfg(**over: Any):
    data = {"site": "west", "namespace": "west", "overlay": "/run/skiff/overlay.json"}
    data.update(over)
    return validate_agent(data)


def svc(
    name: str,
    ports: tuple[int, ...] = (8080,),
    annotations: dict[str, str] | None = None,
    cluster_ip: str | None = "10.96.0.10",
    **kw: Any,
) -> Service:
    return Service(
        name=name,
        uid=f"uid-{name}",
        resource_version="1",
        annotations=annotations or {},
        cluster_ip=cluster_ip,
        ports=kw.pop("service_ports", tuple(ServicePort(p, name=f"p{p}") for p in ports)),
        **kw,
    )


def exposed(name: str, **ann: str) -> Service:
    return svc(name, annotations={"skiff.io/expose": "true", **ann})


def ann(site: str, *services: tuple[str, str, tuple[int, ...]], ttl: int = 30) -> bytes:
    return encode(site, [Exposure(n, k, p) for n, k, p in services], ttl)


def owned_proxy(cfg, name: str, key: str, ports: dict[int, int], sites: str = "east") -> Service:
    return Service(
        name=name,
        uid=f"uid-{name}",
        resource_version="7",
        labels=proxy_labels(cfg),
        annotations={"skiff.io/routing-key": key, "skiff.io/exposed-at": sites},
        cluster_ip="10.96.1.1",
        selector=dict(cfg.router_pod_labels),
        ports=tuple(ServicePort(p, "TCP", f"port-{p}", t) for p, t in sorted(ports.items())),
    )


def router_accepts(overlay: dict[str, Any]) -> None:
    """The overlay lists are in the router config's schema (docs/design.md, Overlay)."""
    validate_router_config(
        {"site": "west", "listeners": overlay["listeners"], "connectors": overlay["connectors"]}
    )
    assert set(overlay) == {"listeners", "connectors", "links"}


# -- selectors -------------------------------------------------------------------------------


def test_selector_match_labels_and_expressions() -> None:
    sel = parse_selector(
        {
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["x"]},
                {"key": "example.com/team", "operator": "Exists"},
            ],
        }
    )
    base = {"app": "db", "tier": "a", "example.com/team": "t"}
    assert sel.matches(base)
    assert sel.matches({**base, "zone": "y"})
    assert not sel.matches({**base, "zone": "x"})
    assert not sel.matches({**base, "canary": "1"})
    assert not sel.matches({**base, "tier": "c"})
    assert not sel.matches({k: v for k, v in base.items() if k != "example.com/team"})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "selector"),
        ("app=db", "selector"),
        ({"matchLabel": {"a": "b"}}, "selector.matchLabel"),
        ({"matchLabels": {"bad key!": "x"}}, "selector.matchLabels.bad key!"),
        (
            {"matchExpressions": [{"key": "a", "operator": "In"}]},
            "selector.matchExpressions[0].values",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "selector.matchExpressions[0].operator",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "selector.matchExpressions[0].values",
        ),
    ],
)
def test_selector_errors_name_the_field(data: Any, field: str) -> None:
    with pytest.raises(SelectorError) as exc:
        parse_selector(data)
    assert exc.value.field == field


# -- agent config ----------------------------------------------------------------------------


def test_agent_config_defaults() -> None:
    cfg = agent_cfg()
    assert cfg.router_admin == "http://127.0.0.1:9191"
    assert cfg.router_pod_labels == {
        "app.kubernetes.io/name": "skiff-router",
        "app.kubernetes.io/instance": "west",
    }
    assert cfg.proxy_ports == (20000, 20999) and cfg.expose and cfg.connectors == ()
    assert (cfg.announce_interval, cfg.ttl) == (10.0, 30)


def test_agent_config_errors_name_each_field() -> None:
    with pytest.raises(AgentConfigError) as exc:
        validate_agent(
            {
                "site": "West",
                "overlay": "relative.json",
                "proxy_ports": {"first": 3000, "last": 2000},
                "connectors": [
                    {"name": "db", "host": "x", "port": 0, "selector": {"matchLabels": {"a": "b"}}},
                    {"name": "db", "port": 5432, "selector": {}},
                ],
                "colour": "blue",
            }
        )
    fields = [f for f, _unused in exc.value.errors]
    for f in (
        "colour",
        "namespace",
        "site",
        "overlay",
        "proxy_ports",
        "connectors[0].host",
        "connectors[0].port",
        "connectors[1].name",
        "connectors[1].selector",
    ):
        assert f in fields, (f, exc.value.errors)
    assert any(
        "its hosts are the pods" in m for f, m in exc.value.errors if f == "connectors[0].host"
    )


# -- objects and list+watch ------------------------------------------------------------------


def api_pod(name: str, ready: bool = True, ip: str | None = "10.0.0.1", **labels: str) -> dict:
    return {
        "metadata": {"name": name, "labels": labels, "resourceVersion": "5"},
        "spec": {"containers": [{"name": "c", "image": "x" * 1000}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_pod_keeps_only_what_the_agent_reads() -> None:
    p = pod_from_api(api_pod("a", app="db"))
    assert p == Pod("a", {"app": "db"}, "10.0.0.1", True, running=True)
    unready = pod_from_api(api_pod("a", ready=False))
    assert not unready.ready and unready.running
    terminating = api_pod("a")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not pod_from_api(terminating).ready and not pod_from_api(terminating).running
    pending = api_pod("a")
    pending["status"]["phase"] = "Pending"
    assert not pod_from_api(pending).ready and not pod_from_api(pending).running


def test_service_keeps_only_skiff_annotations() -> None:
    s = service_from_api(
        {
            "metadata": {
                "name": "web",
                "uid": "u",
                "resourceVersion": "9",
                "annotations": {"skiff.io/expose": "true", "kubectl.kubernetes.io/x": "big"},
            },
            "spec": {
                "clusterIP": "None",
                "ports": [{"port": 80, "name": "http", "targetPort": "web"}],
            },
        }
    )
    assert s.annotations == {"skiff.io/expose": "true"}
    assert s.ports == (ServicePort(80, "TCP", "http", "web"),)
    assert s.cluster_ip == "None"


def test_listwatch_pages_then_watch_then_410_relist() -> None:
    lw: ListWatch[Pod] = ListWatch(pod_from_api, max_objects=100)
    assert lw.next_request() == ListRequest(None)
    assert not lw.list_page({"metadata": {"continue": "c1"}, "items": [api_pod("a")]})
    assert lw.objects == {} and not lw.synced  # nothing replaced before the list is complete
    assert lw.next_request() == ListRequest("c1")
    assert lw.list_page({"metadata": {"resourceVersion": "10"}, "items": [api_pod("b")]})
    assert sorted(lw.objects) == ["a", "b"] and lw.synced
    assert lw.next_request() == WatchRequest("10")

    added = api_pod("c")
    added["metadata"]["resourceVersion"] = "11"
    assert lw.watch_event({"type": "ADDED", "object": added})
    assert not lw.watch_event({"type": "MODIFIED", "object": added})  # same content
    assert lw.watch_event(
        {"type": "DELETED", "object": {"metadata": {"name": "a", "resourceVersion": "12"}}}
    )
    assert not lw.watch_event(
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}
    )
    assert lw.next_request() == WatchRequest("20")

    lw.failed()  # a dropped watch resumes from the last version
    assert lw.next_request() == WatchRequest("20")

    assert not lw.watch_event({"type": "ERROR", "object": {"kind": "Status", "code": 410}})
    assert lw.next_request() == ListRequest(None)
    assert sorted(lw.objects) == ["b", "c"]  # the last good content stays until the relist
    assert lw.list_page({"metadata": {"resourceVersion": "30"}, "items": [api_pod("d")]})
    assert sorted(lw.objects) == ["d"]


def test_listwatch_failed_list_starts_over_and_cap_is_kept() -> None:
    lw: ListWatch[Pod] = ListWatch(pod_from_api, max_objects=2)
    lw.list_page({"metadata": {"continue": "c1"}, "items": [api_pod("a")]})
    lw.failed()
    assert lw.next_request() == ListRequest(None)
    lw.list_page({"metadata": {"resourceVersion": "3"}, "items": [api_pod(n) for n in "abc"]})
    assert len(lw.objects) == 2 and lw.overflow
    assert not lw.watch_event({"type": "ADDED", "object": api_pod("z")})
    assert len(lw.objects) == 2


@given(
    st.lists(
        st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]), st.sampled_from("abcde")),
        max_size=40,
    )
)
def test_listwatch_cache_equals_replayed_state(events: list[tuple[str, str]]) -> None:
    """Whatever the order of events, the cache is what a fresh list would show."""
    lw: ListWatch[Pod] = ListWatch(pod_from_api, max_objects=100)
    lw.list_page({"metadata": {"resourceVersion": "1"}, "items": []})
    truth: dict[str, Pod] = {}
    for i, (kind, name) in enumerate(events):
        obj = api_pod(name, ip=f"10.0.0.{i}")
        obj["metadata"]["resourceVersion"] = str(i + 2)
        lw.watch_event({"type": kind, "object": obj})
        if kind == "DELETED":
            truth.pop(name, None)
        else:
            truth[name] = pod_from_api(obj)
    assert lw.objects == truth
    assert lw.next_request() == WatchRequest(str(len(events) + 1))


# -- connectors by selector ------------------------------------------------------------------


def test_selector_connectors_follow_ready_pods() -> None:
    cfg = agent_cfg(
        expose=False,
        connectors=[
            {
                "name": "db",
                "routing_key": "db",
                "port": 5432,
                "selector": {"matchLabels": {"app": "db"}},
            }
        ],
    )
    pods = {
        "db-1": Pod("db-1", {"app": "db"}, "10.0.0.1", True),
        "db-2": Pod("db-2", {"app": "db"}, "10.0.0.2", False),
        "web-1": Pod("web-1", {"app": "web"}, "10.0.0.3", True),
    }
    out = reconcile(cfg, Inputs(pods=pods, services=None))
    assert out.pod_connectors == [
        {"name": "db@db-1", "routing_key": "db", "host": "10.0.0.1", "port": 5432}
    ]
    assert out.problems == []
    del pods["db-1"]
    out = reconcile(cfg, Inputs(pods=pods, services=None))
    assert out.pod_connectors == []
    [problem] = out.problems
    assert (problem.object, problem.field) == ("connector/db", "selector")
    assert "1 matching, none ready" in problem.message
    # Pods not known yet: keep the last good entries (None), never an empty set.
    assert reconcile(cfg, Inputs(pods=None, services=None)).pod_connectors is None


# -- exposure by annotation ------------------------------------------------------------------


def test_exposure_defaults_and_port_choice() -> None:
    exp, problem = exposure_of(exposed("web", **{"skiff.io/port": "http"}), "west")
    assert problem is not None  # "http" is not a port name of svc(): its names are p<port>
    s = svc("web", ports=(80, 443), annotations={"skiff.io/expose": "true"})
    exp, problem = exposure_of(s, "west")
    assert problem is None and exp == Exposure("web", "web", (80, 443))
    s = svc(
        "web",
        ports=(80, 443),
        annotations={
            "skiff.io/expose": "true",
            "skiff.io/port": "p443",
            "skiff.io/routing-key": "k",
        },
    )
    assert exposure_of(s, "west") == (Exposure("web", "k", (443,)), None)
    assert exposure_of(svc("web"), "west") == (None, None)
    assert exposure_of(svc("web", annotations={"skiff.io/expose": "false"}), "west") == (None, None)


@pytest.mark.parametrize(
    ("service", "field", "words"),
    [
        (
            exposed("web", **{"skiff.io/port": "9999"}),
            'metadata.annotations["skiff.io/port"]',
            "not a port",
        ),
        (
            exposed("web", **{"skiff.io/port": "80x"}),
            'metadata.annotations["skiff.io/port"]',
            "'80x'",
        ),
        (
            exposed("web", **{"skiff.io/routing-key": "a b"}),
            'metadata.annotations["skiff.io/routing-key"]',
            "spaces",
        ),
        (
            svc("web", annotations={"skiff.io/expose": "yes"}),
            'metadata.annotations["skiff.io/expose"]',
            '"true"',
        ),
        (
            svc("web", annotations={"skiff.io/expose": "true"}, cluster_ip="None"),
            "spec.clusterIP",
            "headless",
        ),
        (
            svc(
                "dns",
                annotations={"skiff.io/expose": "true", "skiff.io/port": "53"},
                service_ports=(ServicePort(53, "UDP"),),
            ),
            'metadata.annotations["skiff.io/port"]',
            "only TCP",
        ),
    ],
)
def test_bad_annotations_are_named(service: Service, field: str, words: str) -> None:
    exp, problem = exposure_of(service, "west")
    assert exp is None and problem is not None
    assert problem.object == f"service/{service.name}"
    assert problem.field == field and words in problem.message


def test_exposed_services_become_connectors_and_the_announcement() -> None:
    cfg = agent_cfg()
    services = {
        "web": svc("web", ports=(80, 443), annotations={"skiff.io/expose": "true"}),
        "db": exposed("db", **{"skiff.io/routing-key": "pg"}),
        "plain": svc("plain"),
    }
    out = reconcile(cfg, Inputs(pods=None, services=services))
    assert out.service_connectors == [
        {"name": "service/db:8080", "routing_key": "pg", "host": "10.96.0.10", "port": 8080},
        {"name": "service/web:80", "routing_key": "web:80", "host": "10.96.0.10", "port": 80},
        {"name": "service/web:443", "routing_key": "web:443", "host": "10.96.0.10", "port": 443},
    ]
    assert out.exposed == [Exposure("db", "pg", (8080,)), Exposure("web", "web", (80, 443))]
    assert json.loads(encode("west", out.exposed, 30)) == {
        "site": "west",
        "services": [
            {"name": "db", "routing_key": "pg", "ports": [8080]},
            {"name": "web", "routing_key": "web", "ports": [80, 443]},
        ],
        "ttl": 30,
    }
    # Services not known yet: nothing is announced (never an empty set by mistake).
    out = reconcile(cfg, Inputs(pods=None, services=None))
    assert out.exposed is None and out.service_connectors is None


# -- announcements ---------------------------------------------------------------------------


def test_announcement_round_trip_and_rejects() -> None:
    a = decode(ann("east", ("web", "web", (443, 80))))
    assert a.site == "east" and a.services == (Exposure("web", "web", (80, 443)),)
    for bad in (
        b"not json",
        b"[]",
        json.dumps({"site": "East", "services": [], "ttl": 30}).encode(),
        json.dumps({"site": "e", "services": [], "ttl": 0}).encode(),
        json.dumps(
            {"site": "e", "services": [{"name": "Web", "routing_key": "w", "ports": [1]}], "ttl": 3}
        ).encode(),
        json.dumps(
            {"site": "e", "services": [{"name": "w", "routing_key": "w", "ports": [0]}], "ttl": 3}
        ).encode(),
        json.dumps(
            {
                "site": "e",
                "services": [{"name": "w", "routing_key": "w", "ports": [1, 1]}],
                "ttl": 3,
            }
        ).encode(),
        json.dumps(
            {"site": "e", "services": [{"name": "w", "routing_key": "", "ports": [1]}], "ttl": 3}
        ).encode(),
    ):
        book = AnnouncementBook("west")
        changed, problem = book.receive("east", bad, 0.0)
        assert not changed and problem is not None and problem.object == "announcement/east"
        assert book.active() == []


def test_ttl_counts_only_while_subscribed() -> None:
    book = AnnouncementBook("west")
    book.subscribed(0.0)
    assert book.receive("east", ann("east", ("web", "web", (80,)), ttl=30), 1.0) == (True, None)
    assert book.receive("west", ann("west", ("mine", "mine", (80,))), 1.0) == (False, None)
    assert [a.site for a in book.active()] == ["east"]
    assert not book.complete(29.0, 30) and book.complete(30.0, 30)
    assert not book.expire(30.9)
    book.unsubscribed()  # the router restarts: nothing expires meanwhile
    assert not book.expire(100.0) and book.next_expiry() is None
    book.subscribed(100.0)  # every origin gets a whole ttl to repeat itself
    assert not book.expire(129.0)
    assert book.receive("east", ann("east", ("web", "web", (80,)), ttl=30), 110.0) == (False, None)
    assert book.next_expiry() == 140.0
    assert not book.expire(139.9) and book.expire(140.0)
    assert book.active() == []


# -- proxies ---------------------------------------------------------------------------------


def active(*payloads: bytes) -> list:
    book = AnnouncementBook("west")
    book.subscribed(0.0)
    for i, p in enumerate(payloads):
        book.receive(f"r{i}", p, 0.0)
    return book.active()


def test_proxy_created_then_listened_then_deleted() -> None:
    cfg = agent_cfg()
    announcements = active(ann("east", ("web", "web", (80, 443))))
    out = reconcile(cfg, Inputs(None, {}, announcements, True))
    [create] = out.actions
    assert isinstance(create, Create) and create.name == "web"
    meta, spec = create.body["metadata"], create.body["spec"]
    assert meta["labels"]["skiff.io/owned-by-agent"] == "true"
    assert meta["labels"]["skiff.io/site"] == "west"
    assert meta["annotations"] == {"skiff.io/routing-key": "web", "skiff.io/exposed-at": "east"}
    assert spec["selector"] == cfg.router_pod_labels
    assert spec["ports"] == [
        {"name": "port-80", "protocol": "TCP", "port": 80, "targetPort": 20000},
        {"name": "port-443", "protocol": "TCP", "port": 443, "targetPort": 20001},
    ]
    assert out.proxy_listeners == []  # only once the Service exists

    services = {"web": owned_proxy(cfg, "web", "web", {80: 20000, 443: 20001})}
    out = reconcile(cfg, Inputs(None, services, announcements, True))
    assert out.actions == []
    assert out.proxy_listeners == [
        {"name": "proxy/web:80", "routing_key": "web:80", "host": "0.0.0.0", "port": 20000},
        {"name": "proxy/web:443", "routing_key": "web:443", "host": "0.0.0.0", "port": 20001},
    ]
    overlay = assemble_overlay(out, {})
    router_accepts(overlay)

    out = reconcile(cfg, Inputs(None, services, [], True))  # withdrawn
    assert out.actions == [Delete("web", "uid-web", "7")] and out.proxy_listeners == []


def test_restarted_agent_keeps_its_proxies_until_a_whole_ttl_was_heard() -> None:
    cfg = agent_cfg()
    services = {"web": owned_proxy(cfg, "web", "web", {80: 20005})}
    out = reconcile(cfg, Inputs(None, services, [], announcements_complete=False))
    assert out.actions == []
    assert [x["port"] for x in out.proxy_listeners] == [20005]
    out = reconcile(cfg, Inputs(None, services, [], announcements_complete=True))
    assert out.actions == [Delete("web", "uid-web", "7")]


def test_user_service_of_the_same_name_is_never_touched() -> None:
    cfg = agent_cfg()
    announcements = active(ann("east", ("web", "web", (80,))))
    user = svc("web", ports=(80,))
    out = reconcile(cfg, Inputs(None, {"web": user}, announcements, True))
    assert out.actions == [] and out.proxy_listeners == []
    [problem] = out.problems
    assert problem.object == "service/web" and "does not own" in problem.message
    # A proxy-looking Service of another site sharing the namespace is not ours either.
    theirs = owned_proxy(agent_cfg(site="other"), "web", "web", {80: 20000})
    out = reconcile(cfg, Inputs(None, {"web": theirs}, [], True))
    assert out.actions == []
    # The same service exposed here too (same key and ports): no proxy, no complaint.
    here = svc("web", ports=(80,), annotations={"skiff.io/expose": "true"})
    out = reconcile(cfg, Inputs(None, {"web": here}, announcements, True))
    assert out.actions == [] and out.problems == []


def test_sites_announcing_one_name_differently_are_a_reported_conflict() -> None:
    cfg = agent_cfg()
    announcements = active(
        ann("north", ("web", "other-key", (80,))),
        ann("east", ("web", "web", (80,))),
        ann("south", ("web", "web", (80,))),
    )
    out = reconcile(cfg, Inputs(None, {}, announcements, True))
    [create] = out.actions
    assert create.body["metadata"]["annotations"] == {
        "skiff.io/routing-key": "web",
        "skiff.io/exposed-at": "east,south",
    }
    [problem] = out.problems
    assert problem.object == "announcement/north" and "east's is used" in problem.message


def test_changed_proxy_is_patched_with_its_uid_and_version_and_ports_kept() -> None:
    cfg = agent_cfg()
    announcements = active(ann("east", ("web", "web", (80, 8443))))
    current = owned_proxy(cfg, "web", "web", {80: 20003, 443: 20004})
    current = Service(**{**current.__dict__, "selector": {**current.selector, "extra": "x"}})
    out = reconcile(cfg, Inputs(None, {"web": current}, announcements, True))
    [patch] = out.actions
    assert isinstance(patch, Patch)
    assert patch.body["metadata"]["uid"] == "uid-web"
    assert patch.body["metadata"]["resourceVersion"] == "7"
    assert patch.body["spec"]["selector"]["extra"] is None  # merge patch removes it
    assert patch.body["spec"]["ports"] == [
        {"name": "port-80", "protocol": "TCP", "port": 80, "targetPort": 20003},  # kept
        {"name": "port-8443", "protocol": "TCP", "port": 8443, "targetPort": 20000},  # lowest free
    ]


def test_allocation_is_stable_and_heals_duplicates() -> None:
    cfg = agent_cfg(proxy_ports={"first": 20000, "last": 20002})
    announcements = active(
        ann("east", ("a", "a", (80,)), ("b", "b", (80,)), ("c", "c", (80,)), ("d", "d", (80,)))
    )
    services = {
        "a": owned_proxy(cfg, "a", "a", {80: 20001}),
        "b": owned_proxy(cfg, "b", "b", {80: 20001}),  # a race of two replicas
    }
    out = reconcile(cfg, Inputs(None, services, announcements, True))
    by_name = {a.name: a for a in out.actions}
    assert by_name["b"].body["spec"]["ports"][0]["targetPort"] == 20000
    assert by_name["c"].body["spec"]["ports"][0]["targetPort"] == 20002
    assert "d" not in by_name
    [problem] = out.problems
    assert problem.object == "proxy/d" and problem.field == "proxy_ports"
    assert [x["port"] for x in out.proxy_listeners] == [20001]  # one listener per port


# -- overlay ---------------------------------------------------------------------------------


def test_overlay_keeps_last_good_entries_of_unknown_sources() -> None:
    cfg = agent_cfg(
        connectors=[
            {
                "name": "db",
                "routing_key": "db",
                "port": 5432,
                "selector": {"matchLabels": {"app": "db"}},
            }
        ]
    )
    previous = {
        "listeners": [
            {"name": "proxy/web:80", "routing_key": "web", "host": "0.0.0.0", "port": 20000}
        ],
        "connectors": [
            {"name": "db@db-0", "routing_key": "db", "host": "10.0.0.9", "port": 5432},
            {"name": "service/api:80", "routing_key": "api", "host": "10.96.0.1", "port": 80},
        ],
        "links": [],
    }
    pods = {"db-1": Pod("db-1", {"app": "db"}, "10.0.0.1", True)}
    overlay = assemble_overlay(reconcile(cfg, Inputs(pods, None)), previous)
    assert [c["name"] for c in overlay["connectors"]] == ["db@db-1", "service/api:80"]
    assert overlay["listeners"] == previous["listeners"]
    router_accepts(overlay)


# -- links between replicas ------------------------------------------------------------------

SIBLINGS = {
    "port": 55671,
    "server_name": "skiff-link.west.svc",
    "ca": "/etc/skiff/server/ca.crt",
    "cert": "/etc/skiff/server/sibling.crt",
    "key": "/etc/skiff/server/sibling.key",
}


def router_pod(name: str, ip: str | None, *, running: bool = True, **labels: str) -> Pod:
    router = {"app.kubernetes.io/name": "skiff-router", "app.kubernetes.io/instance": "west"}
    return Pod(name, dict(router, **labels), ip, ready=False, running=running)


def test_each_pair_of_replicas_is_linked_once_at_the_pod_address() -> None:
    cfg = agent_cfg(siblings=SIBLINGS)
    pods = {
        "r-a": router_pod("r-a", "10.0.0.1"),
        "r-b": router_pod("r-b", "10.0.0.2"),  # not ready yet: linked all the same
        "r-c": router_pod("r-c", "10.0.0.3"),
        "r-d": router_pod("r-d", "10.0.0.4", running=False),  # being deleted
        "db-0": Pod("db-0", {"app": "db"}, "10.0.0.9", ready=True, running=True),
    }
    links = {
        own: [lk["name"] for lk in reconcile(cfg, Inputs(pods, None, own_pod=own)).sibling_links]
        for own in ("r-a", "r-b", "r-c")
    }
    assert links == {"r-a": ["sibling-r-b", "sibling-r-c"], "r-b": ["sibling-r-c"], "r-c": []}
    outcome = reconcile(cfg, Inputs(pods, None, own_pod="r-a"))
    assert outcome.sibling_links[0] == {
        "name": "sibling-r-b",
        "peer": "west",
        "cost": 1,
        "endpoints": [{"host": "10.0.0.2", "port": 55671, "server_name": "skiff-link.west.svc"}],
        **{k: SIBLINGS[k] for k in ("ca", "cert", "key")},
    }
    overlay = assemble_overlay(outcome, {})
    assert [lk["name"] for lk in overlay["links"]] == ["sibling-r-b", "sibling-r-c"]
    # The router takes them as links of the site's own (sibling) routers.
    parsed = validate_router_config({"site": "west", "links": overlay["links"]})
    assert parsed.links[0].endpoints[0].server_name == "skiff-link.west.svc"
    assert parsed.links[0].peer == "west"


def test_sibling_links_wait_for_the_own_pod_and_keep_the_last() -> None:
    cfg = agent_cfg(siblings=SIBLINGS)
    previous = {"links": [{"name": "sibling-r-b", "peer": "west"}], "connectors": []}
    pods = {"r-b": router_pod("r-b", "10.0.0.2")}
    unknown = reconcile(cfg, Inputs(pods, None, own_pod="r-a"))  # r-a not listed yet
    assert unknown.sibling_links is None
    assert assemble_overlay(unknown, previous)["links"] == previous["links"]
    not_watched = reconcile(cfg, Inputs(None, None, own_pod="r-a"))
    assert assemble_overlay(not_watched, previous)["links"] == previous["links"]
    # Without its pod name the agent links nothing and says why.
    blind = reconcile(cfg, Inputs(pods, None, own_pod=None))
    assert blind.sibling_links == []
    assert [p.field for p in blind.problems] == ["SKIFF_POD_NAME"]
    # Without siblings in the config: no links, no pod list needed.
    assert reconcile(agent_cfg(), Inputs(None, None)).sibling_links == []


def test_siblings_config_errors_name_the_field() -> None:
    with pytest.raises(AgentConfigError) as err:
        agent_cfg(siblings=dict(SIBLINGS, port=0, cert="sibling.crt"))
    assert sorted(p for p, _m in err.value.errors) == ["siblings.cert", "siblings.port"]
    with pytest.raises(AgentConfigError) as err:
        agent_cfg(siblings={"port": 55671})
    assert err.value.errors[0][0] == "siblings"
