"""Site directory layout, atomic file writes and the stores of a site (private to skiff.fleet).

The layout is the contract in docs/design.md ("Site directory"). Every module
reads and writes the router config through `SiteStore`, which keeps the
sections other modules own: the site module rewrites `site`/`admin`/`link_access`
and must not drop `links`, `listeners` or `connectors`.

`site.json` (what only Ansible needs) is always a file where the module runs;
the config and the secrets live where the site's platform keeps them: the
`ConfigStore` and `SecretStore` capabilities. `FileConfigStore` and
`FileSecretStore` are the site directory's; a platform that keeps them
elsewhere (kubernetes: a ConfigMap and Secrets) brings its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.vocabulary import (
    ADMIN_TOKEN_MIN_LENGTH,
    SITE_NAME_PATTERN,
)

DEFAULT_BASE_DIR = "~/.local/state/skiff"
# Sections of router.json owned by the site module; everything else belongs to another module.
SITE_SECTIONS = (
    "site", "mode", "log_level", "workers", "admin", "link_access", "overlay", "state_dir",
)  # fmt: skip
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


SITE_LOCK_SECONDS = 300.0


@contextlib.contextmanager
def site_lock(paths: SitePaths, *, timeout: float = SITE_LOCK_SECONDS) -> Iterator[None]:
    """One module run changes a site at a time: two runs at once used to read the same
    config and each write back its own change, losing the other's. Waits for the
    other run; fails after `timeout`. Nothing to lock (and nothing is created) for a
    site directory that does not exist yet."""
    if not paths.root.is_dir():
        yield
        return
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, KEY_MODE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SkiffError(
                        f"another run has been changing {paths.root} for {timeout:g} s; "
                        "wait for it to end, then run again",
                        field="site",
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


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
    def service_ca_dir(self) -> Path:
        return self.root / "service-ca"

    @property
    def listeners_dir(self) -> Path:
        return self.root / "listeners"

    def listener_dir(self, listener: str) -> Path:
        return self.listeners_dir / listener

    @property
    def admin_dir(self) -> Path:
        return self.root / "admin"

    @property
    def admin_token(self) -> Path:
        return self.admin_dir / "token"

    @property
    def lock(self) -> Path:
        return self.root / "site.lock"

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


@dataclass(frozen=True)
class CertPair:
    """A certificate and its key as PEM bytes; None for a half that is missing."""

    cert_pem: bytes | None
    key_pem: bytes | None
    # The certificate that follows `cert_pem` for the same key (a listener's issued
    # certificate has one: the router loads it on its own before the first expires).
    next_pem: bytes | None = None


@dataclass(frozen=True)
class LinkCredentials:
    """What a token gives a dialing site: the far CA, a client certificate and its key."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    # The certificate that follows `cert` (same key): the router renews the link with it.
    next_cert: bytes | None = None

    @property
    def exists(self) -> bool:
        return any(part is not None for part in (self.ca, self.cert, self.key))


@dataclass(frozen=True)
class IssuedToken:
    """A client certificate this site issued, its key and `token.json` (what it was issued for)."""

    cert: bytes | None
    key: bytes | None
    info: bytes | None

    @property
    def exists(self) -> bool:
        return any(part is not None for part in (self.cert, self.key, self.info))


class ConfigStore(ABC):
    """Capability: where a site's router config lives."""

    # Where it is, for messages and actions (a path, a ConfigMap).
    location = "the router config"

    @abstractmethod
    def read(self) -> bytes | None:
        """The config bytes in store; None when there are none yet."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Replace the config with `data` (readers see the old or the new one, never half)."""


class SecretStore(ABC):
    """Capability: where a site's CA pair, server pair, link credentials and issued tokens live."""

    @abstractmethod
    def ca(self) -> CertPair: ...

    @abstractmethod
    def put_ca(self, pair: CertPair) -> None: ...

    @abstractmethod
    def server(self) -> CertPair: ...

    @abstractmethod
    def put_server(self, pair: CertPair) -> None: ...

    @abstractmethod
    def server_paths(self) -> dict[str, str]:
        """`ca`, `cert`, `key` of `link_access` as the router config names them."""

    @abstractmethod
    def link(self, name: str) -> LinkCredentials: ...

    @abstractmethod
    def put_link(self, name: str, credentials: LinkCredentials | None) -> None:
        """Store a link's credentials; None removes them."""

    @abstractmethod
    def link_paths(self, name: str) -> dict[str, str]:
        """`ca`, `cert`, `key` of a link entry as the router config names them."""

    @abstractmethod
    def token(self, name: str) -> IssuedToken: ...

    @abstractmethod
    def put_token(self, name: str, token: IssuedToken | None) -> None:
        """Keep an issued token; None removes it."""

    @abstractmethod
    def token_names(self) -> list[str]:
        """The names of the tokens kept, sorted."""

    # The service CA (apart from the link CA: it signs what applications trust) and
    # the listener certificates it issued. Only where the router reads files the
    # site directory holds; other platforms say so.
    def service_ca(self) -> CertPair:
        raise _no_issued_tls()

    def put_service_ca(self, pair: CertPair) -> None:
        raise _no_issued_tls()

    def listener_tls(self, name: str) -> CertPair:
        raise _no_issued_tls()

    def put_listener_tls(self, name: str, pair: CertPair | None) -> None:
        """Store a listener's issued certificate and key; None removes them."""
        raise _no_issued_tls()

    # The admin endpoint's bearer token (the router's admin.token_file). Only where the
    # router reads files the site directory holds; elsewhere there is none (None).
    def admin_token_path(self) -> str | None:
        """`admin.token_file` as the router config names it; None: no token file."""
        return None

    def admin_token_problem(self) -> str | None:
        """Why the token in store cannot be used ("missing", ...); None when it can."""
        return None

    def put_new_admin_token(self) -> None:
        """Replace the admin token with a new random one."""
        raise SkiffError("this platform keeps no admin token", field="admin_port")

    def loose_modes(self) -> dict[Path, int]:
        """Secret files and their directories that others may read: path -> wanted mode.
        {} where the platform keeps secrets in a store of its own."""
        return {}


def new_admin_token() -> bytes:
    """A new admin token, as every platform stores it (32 random bytes, URL-safe)."""
    return secrets.token_urlsafe(32).encode() + b"\n"


def admin_token_text_problem(token: bytes) -> str | None:
    """Why an admin token's text cannot be used (too short); None if it can."""
    if len(token.strip()) < ADMIN_TOKEN_MIN_LENGTH:
        return f"shorter than {ADMIN_TOKEN_MIN_LENGTH} characters"
    return None


def issued_listener_tls_paths(name: str) -> dict[str, str]:
    """`cert` and `key` of a listener's issued certificate, as the router config names
    them (relative to the config's directory)."""
    return {
        "cert": f"listeners/{name}/tls.crt",
        "key": f"listeners/{name}/tls.key",
        "next_cert": f"listeners/{name}/tls.next.crt",
    }


def _no_issued_tls() -> SkiffError:
    return SkiffError(
        "certificates issued by the service CA need a site directory the router reads "
        "(platforms local, systemd, podman); give tls.cert and tls.key instead",
        field="tls.issue",
    )


def _read_optional(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


class FileConfigStore(ConfigStore):
    """`router.json` in the site directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.location = str(self.path)

    def read(self) -> bytes | None:
        return _read_optional(self.path)

    def write(self, data: bytes) -> None:
        ensure_dir(self.path.parent)
        atomic_write(self.path, data, PUBLIC_MODE)


class FileSecretStore(SecretStore):
    """The site directory's `ca/`, `tls/`, `links/<name>/` and `tokens/<name>/` (keys 0600)."""

    def __init__(self, paths: SitePaths):
        self.paths = paths

    @staticmethod
    def _put_pair(cert_path: Path, key_path: Path, pair: CertPair) -> None:
        # Key first: a reader never sees a certificate without its key.
        ensure_dir(cert_path.parent)
        atomic_write(key_path, pair.key_pem or b"", KEY_MODE)
        atomic_write(cert_path, pair.cert_pem or b"", PUBLIC_MODE)

    def ca(self) -> CertPair:
        return CertPair(_read_optional(self.paths.ca_cert), _read_optional(self.paths.ca_key))

    def put_ca(self, pair: CertPair) -> None:
        ensure_dir(self.paths.root)
        self._put_pair(self.paths.ca_cert, self.paths.ca_key, pair)

    def server(self) -> CertPair:
        return CertPair(
            _read_optional(self.paths.server_cert), _read_optional(self.paths.server_key)
        )

    def put_server(self, pair: CertPair) -> None:
        ensure_dir(self.paths.root)
        self._put_pair(self.paths.server_cert, self.paths.server_key, pair)

    def server_paths(self) -> dict[str, str]:
        return {"ca": "ca/ca.crt", "cert": "tls/server.crt", "key": "tls/server.key"}

    def link(self, name: str) -> LinkCredentials:
        folder = self.paths.link_dir(name)
        return LinkCredentials(
            _read_optional(folder / "ca.crt"),
            _read_optional(folder / "tls.crt"),
            _read_optional(folder / "tls.key"),
            _read_optional(folder / "tls.next.crt"),
        )

    def put_link(self, name: str, credentials: LinkCredentials | None) -> None:
        folder = self.paths.link_dir(name)
        if credentials is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        ensure_dir(self.paths.links_dir)
        ensure_dir(folder)
        for file_name, data, mode in (
            ("ca.crt", credentials.ca, PUBLIC_MODE),
            ("tls.key", credentials.key, KEY_MODE),
            ("tls.crt", credentials.cert, PUBLIC_MODE),
            ("tls.next.crt", credentials.next_cert, PUBLIC_MODE),
        ):
            if data is None:
                (folder / file_name).unlink(missing_ok=True)
            else:
                atomic_write(folder / file_name, data, mode)

    def link_paths(self, name: str) -> dict[str, str]:
        return {
            "ca": f"links/{name}/ca.crt",
            "cert": f"links/{name}/tls.crt",
            "key": f"links/{name}/tls.key",
            "next_cert": f"links/{name}/tls.next.crt",
        }

    def token(self, name: str) -> IssuedToken:
        folder = self.paths.token_dir(name)
        return IssuedToken(
            _read_optional(folder / "tls.crt"),
            _read_optional(folder / "tls.key"),
            _read_optional(folder / "token.json"),
        )

    def put_token(self, name: str, token: IssuedToken | None) -> None:
        folder = self.paths.token_dir(name)
        if token is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        ensure_dir(self.paths.tokens_dir)
        ensure_dir(folder)
        atomic_write(folder / "tls.key", token.key or b"", KEY_MODE)
        atomic_write(folder / "tls.crt", token.cert or b"", PUBLIC_MODE)
        atomic_write(folder / "token.json", token.info or b"", KEY_MODE)

    def token_names(self) -> list[str]:
        folder = self.paths.tokens_dir
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "tls.crt").is_file())

    def service_ca(self) -> CertPair:
        folder = self.paths.service_ca_dir
        return CertPair(_read_optional(folder / "ca.crt"), _read_optional(folder / "ca.key"))

    def put_service_ca(self, pair: CertPair) -> None:
        folder = self.paths.service_ca_dir
        self._put_pair(folder / "ca.crt", folder / "ca.key", pair)

    def admin_token_path(self) -> str | None:
        return "admin/token"

    # Files holding a secret: keys, tokens' records, the admin token.
    _SECRET_NAMES = ("*.key", "token.json", "token")

    def loose_modes(self) -> dict[Path, int]:
        root = self.paths.root
        if not root.is_dir():
            return {}
        loose: dict[Path, int] = {}
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                continue
            if path.is_dir():
                wanted = DIR_MODE
            elif any(path.match(pattern) for pattern in self._SECRET_NAMES):
                wanted = KEY_MODE
            else:
                continue
            # Only what is looser than wanted; a stricter mode is the owner's choice.
            if path.stat().st_mode & 0o777 & ~wanted:
                loose[path] = wanted
        return loose

    def admin_token_problem(self) -> str | None:
        path = self.paths.admin_token
        try:
            mode = path.stat().st_mode & 0o777
            token = path.read_bytes().strip()
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if mode & 0o077:
            # It may have been read while it was open to others: a new one, not a chmod.
            return f"mode {mode:04o} let others read it"
        return admin_token_text_problem(token)

    def put_new_admin_token(self) -> None:
        ensure_dir(self.paths.root)
        ensure_dir(self.paths.admin_dir)
        atomic_write(self.paths.admin_token, new_admin_token(), KEY_MODE)

    def listener_tls(self, name: str) -> CertPair:
        folder = self.paths.listener_dir(name)
        return CertPair(
            _read_optional(folder / "tls.crt"),
            _read_optional(folder / "tls.key"),
            _read_optional(folder / "tls.next.crt"),
        )

    def put_listener_tls(self, name: str, pair: CertPair | None) -> None:
        folder = self.paths.listener_dir(name)
        if pair is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        ensure_dir(folder.parent)
        self._put_pair(folder / "tls.crt", folder / "tls.key", pair)
        if pair.next_pem is None:
            (folder / "tls.next.crt").unlink(missing_ok=True)
        else:
            atomic_write(folder / "tls.next.crt", pair.next_pem, PUBLIC_MODE)


class SiteStore:
    """One site's metadata (`site.json`, where the module runs) and its config (in the
    platform's `ConfigStore`); knows nothing about what the values mean."""

    def __init__(self, paths: SitePaths, site: str, config: ConfigStore | None = None):
        self.paths = paths
        self.site = site
        self._config = config

    @classmethod
    def open(cls, base_dir: str, site: str, *, field_name: str = "site") -> SiteStore:
        validate_site_name(site, field_name=field_name)
        return cls(SitePaths.for_site(base_dir, site), site)

    @property
    def config(self) -> ConfigStore:
        """The platform's config store, found through `site.json` on first use."""
        if self._config is None:
            self._config = self._platform_config()
        return self._config

    @config.setter
    def config(self, store: ConfigStore) -> None:
        self._config = store

    def _platform_config(self) -> ConfigStore:
        if not self.paths.metadata.is_file():
            return FileConfigStore(self.paths.config)
        # Imported here: the platforms import this module.
        from ansible_collections.skiff.fleet.plugins.module_utils.platform import get_platform

        metadata = self.read_metadata()
        try:
            return get_platform(metadata.platform, self.paths, metadata).config
        except SkiffError as exc:
            raise exc.with_context(site=self.site) from None

    def exists(self) -> bool:
        return self.paths.metadata.is_file() and self.read_config_bytes() is not None

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
        ensure_dir(self.paths.root)
        atomic_write(self.paths.metadata, dump_json(metadata.to_dict()), PUBLIC_MODE)

    def read_config_bytes(self) -> bytes | None:
        return self.config.read()

    def read_config(self) -> dict[str, Any]:
        """The router config as data; {} when there is none yet."""
        raw = self.read_config_bytes()
        if raw is None:
            return {}
        location = self.config.location
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise SkiffError(
                f"{location} is not valid JSON (line {getattr(exc, 'lineno', '?')}); "
                "fix or remove it and re-run skiff.fleet.site",
                site=self.site,
                field="router.json",
            ) from None
        if not isinstance(data, dict):
            raise SkiffError(
                f"{location} does not hold a JSON object",
                site=self.site,
                field="router.json",
            )
        return data

    def write_config_bytes(self, data: bytes) -> None:
        self.config.write(data)

    def remove(self) -> None:
        shutil.rmtree(self.paths.root, ignore_errors=True)


def canonical_order(config: dict[str, Any]) -> dict[str, Any]:
    """Keys in the contract's order so that the file (and its sha256) is stable."""
    order = (
        "site",
        "router_id",
        "mode",
        "log_level",
        "workers",
        "admin",
        "link_access",
        "overlay",
        "state_dir",
        "links",
        "listeners",
        "connectors",
    )
    ordered = {key: config[key] for key in order if key in config}
    for key, value in config.items():
        ordered.setdefault(key, value)
    return ordered
