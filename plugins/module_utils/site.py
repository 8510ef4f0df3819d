"""Logic of skiff.fleet.site (private to skiff.fleet; not a public API).

A site is `site.json` where the module runs (docs/design.md), a CA and a
server certificate when the site accepts links (in the platform's secret
store), the router config sections this module owns (`site`, `log_level`,
`admin`, `link_access`, `overlay`; the lists belong to other modules and are
kept; in the platform's config store), and a running router.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils import pki, validation
from ansible_collections.skiff.fleet.plugins.module_utils.apply import ConfigApplier, Result
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import (
    PLATFORMS,
    Platform,
    get_platform,
    wait_for_config,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import (
    DEFAULT_BASE_DIR,
    DIR_MODE,
    SITE_SECTIONS,
    CertPair,
    SiteMetadata,
    SitePaths,
    SiteStore,
    canonical_order,
    dump_json,
    ensure_dir,
    sha256_bytes,
    site_lock,
)
from ansible_collections.skiff.fleet.plugins.module_utils.vocabulary import (
    DEFAULT_LINK_PORT,
    LOG_LEVELS,
    MAX_ROUTER_WORKERS,
    ROUTER_MODES,
)

PlatformFactory = Callable[[str, SitePaths, SiteMetadata], Platform]


@dataclass(frozen=True)
class SiteParams:
    name: str
    state: str = "present"
    platform: str = "local"
    base_dir: str = DEFAULT_BASE_DIR
    link_access: bool = False
    link_endpoint: dict[str, Any] | None = None
    link_bind_host: str = "0.0.0.0"
    admin_host: str = "127.0.0.1"
    admin_port: int = 9191
    log_level: str = "info"
    mode: str = "interior"
    router_python: str = ""
    router_user: str = "skiff"
    image: str = ""
    replicas: int = 1
    workers: int | None = None  # router worker processes; None: one per CPU
    # Sites that dial this one and are outside the run (--limit): what they depend on
    # (the CA, the link endpoint) must not change without them.
    outside_dialers: tuple[str, ...] = ()
    # Issue the server certificate again if it was issued before this (`now`, ISO 8601).
    rotate_before: str | None = None
    # Replace the site CA if it was made before this (then everything it signed too).
    rotate_ca_before: str | None = None
    # Platform kubernetes: namespace, context, kubeconfig, apply, manifests_dir, ...
    kube: dict[str, Any] | None = None

    @classmethod
    def from_module(cls, params: dict[str, Any]) -> SiteParams:
        values = {
            k: v for k, v in params.items() if k in cls.__dataclass_fields__ and v is not None
        }
        values["outside_dialers"] = tuple(params.get("outside_dialers") or ())
        return cls(**values)


@dataclass(frozen=True)
class WantedSite:
    """The normalized desired state: config sections and metadata."""

    sections: dict[str, Any]
    metadata: SiteMetadata


def platform_options(params: SiteParams, *, strict: bool = True) -> dict[str, Any]:
    """What the platform keeps in `site.json` besides the common fields.

    `strict=False` (removing a site): what is given, without requiring anything.
    """
    options: dict[str, Any] = {}
    if params.platform in ("systemd", "podman"):
        options["router_user"] = params.router_user
    if params.platform in ("podman", "kubernetes"):
        if not params.image and strict:
            where = (
                "an image the cluster can pull (build it from router/Containerfile, see the README)"
                if params.platform == "kubernetes"
                else "the router image"
            )
            raise SkiffError(f"required with platform {params.platform}: {where}", field="image")
        if params.image:
            options["image"] = params.image
    if params.platform == "kubernetes":
        options["replicas"] = params.replicas
        options["admin_port"] = params.admin_port
        if params.workers is not None:
            options["workers"] = params.workers
        options.update(
            {k: v for k, v in (params.kube or {}).items() if v not in (None, "", {}, [])}
        )
    elif params.replicas != 1 and strict:
        raise SkiffError(
            f"platform {params.platform} runs one router per site; replicas need "
            "platform kubernetes",
            field="replicas",
        )
    return options


def normalize(params: SiteParams, default_python: str) -> WantedSite:
    """The site's config sections and metadata, before the platform adds what it needs."""
    if params.platform not in PLATFORMS:
        raise SkiffError(
            f"unknown platform {params.platform!r} (supported: {', '.join(PLATFORMS)})",
            field="platform",
        )
    if params.log_level not in LOG_LEVELS:
        raise SkiffError(f"must be one of {', '.join(LOG_LEVELS)}", field="log_level")
    if params.mode not in ROUTER_MODES:
        raise SkiffError(f"must be one of {', '.join(ROUTER_MODES)}", field="mode")
    if params.workers is not None and not 1 <= params.workers <= MAX_ROUTER_WORKERS:
        raise SkiffError(
            f"must be from 1 to {MAX_ROUTER_WORKERS}, or unset for one worker per CPU",
            field="workers",
        )
    if params.mode == "edge" and params.link_access:
        raise SkiffError(
            "an edge router accepts no links; set link_access to false, or make it an "
            "interior router",
            field="mode",
        )
    admin: dict[str, Any] = {
        "host": validation.host(params.admin_host, "admin_host"),
        "port": validation.port(params.admin_port, "admin_port"),
    }
    link_access: dict[str, Any] | None = None
    endpoints: list[dict[str, Any]] = []
    if params.link_access:
        raw = dict(params.link_endpoint or {})
        if raw.get("port") is None:
            raw["port"] = DEFAULT_LINK_PORT
        if raw.get("host") or params.platform != "kubernetes":
            if not raw.get("host"):
                raise SkiffError(
                    "host is required when link_access is true: the host name or "
                    "address other sites dial (it goes into tokens and the server certificate)",
                    field="link_endpoint",
                )
            endpoints = [validation.endpoint(raw, "link_endpoint")]
        else:
            # Kubernetes finds the host itself (the Service's name or load balancer).
            endpoints = [{"host": None, "port": validation.port(raw["port"], "link_endpoint.port")}]
        link_access = {
            "host": validation.host(params.link_bind_host, "link_bind_host"),
            "port": endpoints[0]["port"],
        }
        if admin["port"] == link_access["port"] and validation.addresses_overlap(
            admin["host"], admin["port"], link_access["host"], link_access["port"]
        ):
            raise SkiffError(
                f"admin_port {admin['port']} is also the link port; choose another",
                field="admin_port",
            )
    sections: dict[str, Any] = {"site": params.name, "log_level": params.log_level, "admin": admin}
    # Unset stays implicit (one worker per CPU), so existing configs compare equal.
    sections["workers"] = params.workers
    # The router's default (interior) stays implicit, so existing configs compare equal.
    sections["mode"] = "edge" if params.mode == "edge" else None
    sections["link_access"] = link_access
    metadata = SiteMetadata(
        name=params.name,
        platform=params.platform,
        link_endpoints=endpoints,
        router_python=params.router_python or default_python,
        options=platform_options(params),
    )
    return WantedSite(sections, metadata)


def on_platform(wanted: WantedSite, platform: Platform, *, settled: bool = False) -> WantedSite:
    """`wanted` as `platform` runs it: its bind addresses, secret paths and link endpoints.

    `settled`: the platform's objects exist, so addresses only known then (a
    load balancer's) can be waited for.
    """
    sections = dict(wanted.sections)
    token_file = platform.secrets.admin_token_path()
    if token_file is not None:
        sections["admin"] = dict(sections["admin"], token_file=token_file)
    if sections["link_access"] is not None:
        sections["link_access"] = dict(sections["link_access"], **platform.secrets.server_paths())
    sections = platform.router_sections(sections)
    endpoints = platform.link_endpoints(wanted.metadata.link_endpoints, wait=settled)
    metadata = replace(wanted.metadata, link_endpoints=endpoints)
    platform.metadata = metadata
    return WantedSite(sections, metadata)


def wanted_config(current: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """`current` with this module's sections replaced and every other section kept."""
    config = dict(current)
    for key in SITE_SECTIONS:
        config.pop(key, None)
    for key, value in sections.items():
        if value is not None:
            config[key] = value
    return canonical_order(config)


def owned_sections(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in SITE_SECTIONS if key in config}


def link_access_problem(status: dict[str, Any]) -> str | None:
    """After a start or reload: link access the router could not bind is a failure
    (the router would run, not ready, and no site could link here)."""
    access = status.get("link_access") or {}
    if access.get("state") != "error":
        return None
    return (
        f"cannot accept links on {access.get('host')}:{access.get('port')} "
        f"({access.get('error') or 'unknown error'}); choose a free port "
        "(link_endpoint.port) or stop what holds it"
    )


def admin_url(admin: dict[str, Any]) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin["host"], admin["host"])
    return f"http://[{host}]:{admin['port']}" if ":" in host else f"http://{host}:{admin['port']}"


class SiteRunner:
    def __init__(
        self,
        params: SiteParams,
        *,
        check_mode: bool,
        platform_factory: PlatformFactory = get_platform,
        wait: Callable[..., dict[str, Any]] = wait_for_config,
        default_python: str = "",
    ):
        self.params = params
        self.check_mode = check_mode
        self.platform_factory = platform_factory
        self.wait = wait
        self.default_python = default_python
        self.store = SiteStore.open(params.base_dir, params.name, field_name="name")
        self.paths = self.store.paths
        self.result = Result()

    def run(self) -> Result:
        present = self.params.state != "absent"
        # A site not created yet has nothing another run could lose.
        lock = contextlib.nullcontext() if self.check_mode else site_lock(self.paths)
        try:
            with lock:
                if present:
                    self.present()
                else:
                    self.absent()
        except SkiffError as exc:
            raise exc.with_context(site=self.params.name) from None
        return self.result

    # -- present ---------------------------------------------------------

    def _rotation(self, option: str = "rotate_before") -> datetime.datetime | None:
        try:
            return pki.rotation_time(getattr(self.params, option))
        except ValueError as exc:
            raise SkiffError(str(exc), field=option) from None

    def present(self) -> None:
        site = self.params.name
        wanted = normalize(self.params, self.default_python)
        paths, result = self.paths, self.result
        platform = self.platform_factory(wanted.metadata.platform, paths, wanted.metadata)
        wanted = on_platform(wanted, platform)
        self.store.config = platform.config
        secrets = platform.secrets
        current_meta = self.store.read_metadata() if paths.metadata.is_file() else None
        current = self.store.read_config()
        config = wanted_config(current, wanted.sections)

        if not paths.root.is_dir():
            result.act(f"create site directory {paths.root}")
        elif paths.root.stat().st_mode & 0o777 != DIR_MODE:
            result.act(f"set mode 0700 on {paths.root}")

        ca = secrets.ca()
        ca_reason = pki.ca_reissue_reason(
            ca.cert_pem, ca.key_pem, rotate_before=self._rotation("rotate_ca_before")
        )
        if ca_reason:
            result.act(
                "create the site CA"
                if ca_reason == "missing"
                else f"replace the site CA ({ca_reason})"
            )
        self._guard_outside_dialers(current_meta, current, wanted, ca_reason)
        hosts: list[str] = []
        server_reason = None
        if wanted.sections["link_access"] is not None:
            hosts = platform.server_hosts(wanted.metadata.link_endpoints)
            server = secrets.server()
            server_reason = (
                "new CA"
                if ca_reason
                else pki.reissue_reason(
                    server.cert_pem,
                    server.key_pem,
                    ca_cert_pem=ca.cert_pem,
                    hosts=hosts,
                    rotate_before=self._rotation(),
                )
            )
            if server_reason:
                result.act(f"issue the server certificate for {', '.join(hosts)} ({server_reason})")

        loose = {p: m for p, m in secrets.loose_modes().items() if p != paths.admin_token}
        if loose:
            names = ", ".join(str(p.relative_to(paths.root)) for p in sorted(loose)[:5])
            more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
            result.act(
                f"restrict the mode of {len(loose)} secret paths others may read ({names}{more})"
            )
        token_problem = secrets.admin_token_problem()
        if token_problem:
            result.act(
                "create the admin token"
                if token_problem == "missing"
                else f"replace the admin token ({token_problem})"
            )

        current_bytes = platform.config.read()
        config_bytes = dump_json(config)
        config_changed = config_bytes != current_bytes
        if config_changed:
            changed = sorted(k for k in SITE_SECTIONS if current.get(k) != config.get(k)) or [
                "file"
            ]
            result.act(f"write {platform.config.location} ({', '.join(changed)})")
        if current_meta != wanted.metadata:
            result.act(f"write {paths.metadata}")

        platform_plan = platform.plan()
        for action, _unused in platform_plan:
            result.act(action)
        result.diff = {
            "before": {
                "config": owned_sections(current),
                "metadata": current_meta.to_dict() if current_meta else {},
            },
            "after": {"config": owned_sections(config), "metadata": wanted.metadata.to_dict()},
        }
        objects = platform.diff()
        if objects:
            result.diff["before"]["objects"] = objects["before"]
            result.diff["after"]["objects"] = objects["after"]

        running = platform.applies and platform.is_running()
        status = platform.status() if running else None
        restart_reason = None
        # A reload re-reads TLS files whose content changed, so new CA or
        # server certificates never need a restart.
        tls_changed = running and bool(ca_reason or server_reason)
        if running and any(restart for _unused, restart in platform_plan):
            restart_reason = "the platform's unit changed"
        elif running and current.get("workers") != config.get("workers"):
            # The worker processes are started with the router: a new count needs a restart.
            restart_reason = platform.restart_for_workers(
                current.get("workers"), config.get("workers")
            )
        drifted = (
            running
            and not config_changed
            and ((status or {}).get("config") or {}).get("sha256") != sha256_bytes(config_bytes)
        )
        if not platform.applies:
            pass
        elif not running:
            result.act("start the router")
        elif restart_reason:
            result.act(f"restart the router ({restart_reason})")
        elif config_changed or tls_changed:
            result.act("reload the router")
        elif drifted:
            result.act("reload the router (it does not run the config on disk)")

        token_path = secrets.admin_token_path()
        result.values = {
            "site_dir": str(paths.root),
            "admin_url": admin_url(wanted.sections["admin"]),
            # In the site directory (a relative path), not one in a pod (kubernetes).
            "admin_token_file": (
                str(paths.root / token_path)
                if token_path and not token_path.startswith("/")
                else None
            ),
            "ca_certificate": ca.cert_pem.decode() if ca.cert_pem and not ca_reason else None,
            "link_endpoints": wanted.metadata.link_endpoints,
        }
        if self.check_mode or not result.changed:
            return

        applier = ConfigApplier(self.store, platform, wait=self.wait)
        for path, mode in loose.items():
            os.chmod(path, mode)
        if token_problem:
            # Before the config check: the router refuses a config whose token file
            # it cannot use. A running router reads the new token at its next request.
            secrets.put_new_admin_token()
        # The new config is checked before anything is written.
        if config_changed:
            applier.validate(config_bytes)
        ensure_dir(paths.root)
        if ca_reason:
            issued_ca = pki.create_ca(site)
            secrets.put_ca(CertPair(issued_ca.cert_pem, issued_ca.key_pem))
            ca = secrets.ca()
            result.values["ca_certificate"] = issued_ca.cert_pem.decode()
        if server_reason:
            self._issue_server(platform, ca, hosts)

        previous_error = ((status or {}).get("config") or {}).get("error")
        previous, data = applier.write(config, checked=True)
        self.store.write_metadata(wanted.metadata)
        platform.install()

        # Addresses known only once the platform's objects exist (a load
        # balancer's) go into the metadata and the server certificate now.
        settled = on_platform(normalize(self.params, self.default_python), platform, settled=True)
        if settled.metadata != wanted.metadata:
            self.store.write_metadata(settled.metadata)
            result.values["link_endpoints"] = settled.metadata.link_endpoints
            if settled.sections["link_access"] is not None:
                settled_hosts = platform.server_hosts(settled.metadata.link_endpoints)
                if pki.wanted_sans(settled_hosts) != pki.wanted_sans(hosts):
                    result.act(
                        f"issue the server certificate for {', '.join(settled_hosts)} "
                        "(the link address is known now)"
                    )
                    self._issue_server(platform, ca, settled_hosts)
                    tls_changed = running

        if not platform.applies:
            return
        if not running:
            self._start(platform, data)
        elif restart_reason:
            platform.stop()
            try:
                self._start(platform, data)
            except SkiffError as failure:
                raise self._restart_previous(platform, failure, previous, data) from None
        elif config_changed or drifted or tls_changed:
            try:
                applier.reload(
                    data, previous if config_changed else None, previous_error, link_access_problem
                )
            except SkiffError:
                # The previous config is back in force: so are the endpoints tokens carry.
                if current_meta is not None:
                    self.store.write_metadata(current_meta)
                raise

    def _guard_outside_dialers(
        self,
        current_meta: SiteMetadata | None,
        current: dict[str, Any],
        wanted: WantedSite,
        ca_reason: str | None,
    ) -> None:
        """Refuse a change that sites dialing here, outside this run, depend on."""
        outside = self.params.outside_dialers
        if not outside or current_meta is None or not current.get("link_access"):
            return
        changes = []
        if ca_reason and ca_reason != "missing":
            changes.append(f"replace the site CA ({ca_reason})")
        if wanted.sections["link_access"] is None:
            changes.append("stop accepting links")
        else:
            before = [(e["host"], e["port"]) for e in current_meta.link_endpoints]
            after = [(e["host"], e["port"]) for e in wanted.metadata.link_endpoints]
            # A kubernetes address found only later (None) is not a move.
            if before and all(h is not None for h, _port in after) and before != after:
                old = ", ".join(f"{h}:{p}" for h, p in before)
                new = ", ".join(f"{h}:{p}" for h, p in after)
                changes.append(f"move the link endpoint from {old} to {new}")
        if changes:
            raise SkiffError(
                f"this run would {' and '.join(changes)}, which the sites dialing it "
                f"outside this run depend on: {', '.join(sorted(outside))}; add them to "
                "the run (--limit) so they get new tokens in it",
                field="link_endpoint",
            )

    @staticmethod
    def _issue_server(platform: Platform, ca: CertPair, hosts: list[str]) -> None:
        issuer = pki.Issued(ca.cert_pem or b"", ca.key_pem or b"")
        server = pki.issue_server_cert(issuer, platform.metadata.name, hosts)
        platform.secrets.put_server(CertPair(server.cert_pem, server.key_pem))

    def _restart_previous(
        self, platform: Platform, failure: SkiffError, previous: bytes | None, data: bytes
    ) -> SkiffError:
        """After a failed restart, bring the router back on the config it ran before."""
        if previous is None or previous == data:
            return failure
        platform.config.write(previous)
        try:
            self._start(platform, previous)
        except SkiffError:
            failure.message += "; the previous config was restored but did not start either"
        else:
            failure.message += "; the router runs the previous config again"
        failure.args = (str(failure),)
        return failure

    def _start(self, platform: Platform, data: bytes) -> None:
        platform.start()
        try:
            status = self.wait(platform, sha256_bytes(data), site=self.params.name)
            problem = link_access_problem(status or {})
            if problem:
                raise SkiffError(problem, site=self.params.name, field="link_endpoint")
        except SkiffError:
            # A router that never became ready must not stay behind crash-looping.
            platform.stop()
            raise

    # -- absent ----------------------------------------------------------

    def absent(self) -> None:
        paths, result = self.paths, self.result
        if paths.metadata.is_file():
            metadata = self.store.read_metadata()
        else:
            # No site.json here: the platform named in the task says where to look.
            metadata = SiteMetadata(
                name=self.params.name,
                platform=self.params.platform,
                router_python=self.params.router_python or self.default_python,
                options=platform_options(self.params, strict=False),
            )
        platform = self.platform_factory(metadata.platform, paths, metadata)
        self.store.config = platform.config
        current = self.store.read_config()
        if platform.is_running():
            result.act("stop the router")
        for action in platform.uninstall():
            result.act(action)
        if paths.root.exists():
            result.act(f"remove {paths.root}")
        if not result.changed:
            return
        result.diff = {
            "before": {"config": owned_sections(current), "metadata": metadata.to_dict()},
            "after": {},
        }
        if self.check_mode:
            return
        platform.stop()
        platform.remove_files()
        self.store.remove()


def run_site(params: SiteParams, check_mode: bool, **services: Any) -> Result:
    return SiteRunner(params, check_mode=check_mode, **services).run()


def default_router_python() -> str:
    """The interpreter running the module: the one Ansible was told has skiff_router."""
    return sys.executable or "python3"
