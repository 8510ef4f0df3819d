"""Site directory layout and atomic file writes (private to skiff.fleet; not a public API).

The layout is the contract in docs/design.md ("Site directory"). Every module
reads and writes `router.json` through `SiteStore`, which keeps the sections
other modules own: the site module rewrites `site`/`admin`/`link_access` and
must not drop `links`, `listeners` or `connectors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.vocabulary import SITE_NAME_PATTERN

DEFAULT_BASE_DIR = "~/.local/state/skiff"
# Sections of router.json owned by the site module; everything else belongs to another module.
SITE_SECTIONS = ("site", "mode", "log_level", "admin", "link_access")
LIST_SECTIONS = ("links", "listeners", "connectors")

DIR_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half of one.

    The temporary file gets its final mode before any byte is written: a key is
    never readable by others, not even for a moment.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # fdopen owns fd once it returned; unlinking the temp file is what matters.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def ensure_dir(path: Path, mode: int = DIR_MODE) -> bool:
    """Create `path` (and parents) and force its mode; True when anything changed."""
    path = Path(path)
    changed = False
    if not path.is_dir():
        path.mkdir(parents=True, mode=mode, exist_ok=True)
        changed = True
    if path.stat().st_mode & 0o777 != mode:
        os.chmod(path, mode)
        changed = True
    return changed


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump_json(data: Any) -> bytes:
    """Stable bytes for a config: the same data always hashes the same."""
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


def validate_site_name(name: Any, *, field_name: str = "name") -> str:
    if not isinstance(name, str) or not SITE_NAME_PATTERN.match(name):
        raise SkiffError(
            f"{name!r} is not a valid site name (lower-case letters, digits and '-', "
            "1 to 63 characters, starting and ending with a letter or digit)",
            field=field_name,
        )
    return name


@dataclass(frozen=True)
class SitePaths:
    """Where each file of one site lives (docs/design.md, "Site directory")."""

    root: Path

    @classmethod
    def for_site(cls, base_dir: str, site: str) -> SitePaths:
        return cls(Path(os.path.expanduser(base_dir)).absolute() / site)

    @property
    def config(self) -> Path:
        return self.root / "router.json"

    @property
    def metadata(self) -> Path:
        return self.root / "site.json"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def server_cert(self) -> Path:
        return self.tls_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.tls_dir / "server.key"

    @property
    def links_dir(self) -> Path:
        return self.root / "links"

    def link_dir(self, link: str) -> Path:
        return self.links_dir / link

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    def token_dir(self, token: str) -> Path:
        return self.tokens_dir / token

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "supervisor.pid"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "router.log"


@dataclass
class SiteMetadata:
    """`site.json`: what only Ansible needs about a site (no secrets)."""

    name: str
    platform: str = "local"
    link_endpoints: list[dict[str, Any]] = field(default_factory=list)
    router_python: str = ""
    # Platform settings (systemd/podman: router_user, image); absent from site.json when empty.
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteMetadata:
        return cls(
            name=data["name"],
            platform=data.get("platform", "local"),
            link_endpoints=[
                {"host": e["host"], "port": int(e["port"])}
                for e in data.get("link_endpoints") or []
            ],
            router_python=data.get("router_python") or "",
            options=dict(data.get("options") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["options"]:
            del data["options"]
        return data


class SiteStore:
    """Reads and writes one site's files; knows nothing about what the values mean."""

    def __init__(self, paths: SitePaths, site: str):
        self.paths = paths
        self.site = site

    @classmethod
    def open(cls, base_dir: str, site: str, *, field_name: str = "site") -> SiteStore:
        validate_site_name(site, field_name=field_name)
        return cls(SitePaths.for_site(base_dir, site), site)

    def exists(self) -> bool:
        return self.paths.metadata.is_file() and self.paths.config.is_file()

    def require(self) -> SiteMetadata:
        """The site's metadata, or a clear error when the site was never created here."""
        if not self.exists():
            raise SkiffError(
                f"no site at {self.paths.root}; create it first with skiff.fleet.site "
                "(name and base_dir must match)",
                site=self.site,
            )
        return self.read_metadata()

    def read_metadata(self) -> SiteMetadata:
        try:
            return SiteMetadata.from_dict(json.loads(self.paths.metadata.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SkiffError(
                f"cannot read {self.paths.metadata} ({exc.__class__.__name__}); "
                "re-run skiff.fleet.site to rewrite it",
                site=self.site,
                field="site.json",
            ) from None

    def write_metadata(self, metadata: SiteMetadata) -> None:
        atomic_write(self.paths.metadata, dump_json(metadata.to_dict()), PUBLIC_MODE)

    def read_config_bytes(self) -> bytes | None:
        try:
            return self.paths.config.read_bytes()
        except FileNotFoundError:
            return None

    def read_config(self) -> dict[str, Any]:
        """The router config as data; {} when there is none yet."""
        raw = self.read_config_bytes()
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise SkiffError(
                f"{self.paths.config} is not valid JSON (line {getattr(exc, 'lineno', '?')}); "
                "fix or remove it and re-run skiff.fleet.site",
                site=self.site,
                field="router.json",
            ) from None
        if not isinstance(data, dict):
            raise SkiffError(
                f"{self.paths.config} does not hold a JSON object",
                site=self.site,
                field="router.json",
            )
        return data

    def write_config_bytes(self, data: bytes) -> None:
        atomic_write(self.paths.config, data, PUBLIC_MODE)

    def remove(self) -> None:
        shutil.rmtree(self.paths.root)


def canonical_order(config: dict[str, Any]) -> dict[str, Any]:
    """Keys in the contract's order so that the file (and its sha256) is stable."""
    order = (
        "site",
        "mode",
        "log_level",
        "admin",
        "link_access",
        "links",
        "listeners",
        "connectors",
    )
    ordered = {key: config[key] for key in order if key in config}
    for key, value in config.items():
        ordered.setdefault(key, value)
    return ordered
