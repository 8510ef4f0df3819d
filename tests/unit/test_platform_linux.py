"""Platforms systemd and podman without a host: the units they write and their checks."""

from __future__ import annotations

import pytest

from ansible_collections.skiff.fleet.plugins.module_utils import platform_systemd
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.platform import get_platform
from ansible_collections.skiff.fleet.plugins.module_utils.platform_podman import (
    PodmanPlatform,
    _version,
)
from ansible_collections.skiff.fleet.plugins.module_utils.store import SiteMetadata, SitePaths


def make(name: str, tmp_path, monkeypatch, **options):
    metadata = SiteMetadata(
        name="east",
        platform=name,
        router_python="/opt/skiff/venv/bin/python",
        options={"router_user": "skiff", **options},
    )
    platform = get_platform(name, SitePaths(tmp_path / "east"), metadata)
    monkeypatch.setattr(type(platform), "ids", lambda self: (990, 990))
    monkeypatch.setattr(
        platform_systemd.grp, "getgrgid", lambda gid: type("G", (), {"gr_name": "skiff"})
    )
    return platform


def test_systemd_unit_is_hardened_and_reloads(tmp_path, monkeypatch):
    platform = make("systemd", tmp_path, monkeypatch)
    unit = platform.unit_text()
    assert platform.unit == "skiff-east.service"
    for line in (
        "User=skiff",
        "Group=skiff",
        f"ExecStart=/opt/skiff/venv/bin/python -m skiff_router run --config {tmp_path}/east/router.json",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/skiff/east",
        "StateDirectory=skiff/east",
    ):
        assert line in unit.splitlines()


def test_podman_generated_unit(tmp_path, monkeypatch):
    platform = make("podman", tmp_path, monkeypatch, image="localhost/skiff-router:latest")
    assert isinstance(platform, PodmanPlatform)
    monkeypatch.setattr(platform_systemd.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr(PodmanPlatform, "podman_version", lambda self: (4, 3))
    files = platform.unit_files()
    assert list(files) == [platform_systemd.UNIT_DIR / "skiff-east.service"]
    unit = files[platform_systemd.UNIT_DIR / "skiff-east.service"]
    assert "ExecReload=/usr/bin/podman kill --signal HUP skiff-east" in unit
    assert "--network=host" in unit and "--user=990:990" in unit and "--read-only" in unit
    # The container copies the podman process's file limit, which the unit raises
    # (a fixed --ulimit above the host's hard limit kept the container from starting).
    assert "--ulimit=host" in unit and "LimitNOFILE=65536" in unit.splitlines()
    assert f"--volume={tmp_path}/east:{tmp_path}/east:ro" in unit
    assert "localhost/skiff-router:latest run --config" in unit


def test_podman_quadlet_from_4_4(tmp_path, monkeypatch):
    platform = make("podman", tmp_path, monkeypatch, image="img")
    monkeypatch.setattr(platform_systemd.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr(PodmanPlatform, "podman_version", lambda self: (4, 9))
    ((path, text),) = platform.unit_files().items()
    assert path.name == "skiff-east.container"
    assert "Image=img" in text and "Network=host" in text and "User=990" in text
    assert "Ulimit=host" in text.splitlines() and "LimitNOFILE=65536" in text.splitlines()


def test_versions():
    assert _version("4.3.1\n") == (4, 3)
    assert _version("5.0.0-dev") == (5, 0)
    assert _version("") == (0, 0)


def test_podman_missing_says_what_to_do(tmp_path, monkeypatch):
    platform = make("podman", tmp_path, monkeypatch, image="img")
    monkeypatch.setattr(platform_systemd.shutil, "which", lambda cmd: None)
    with pytest.raises(SkiffError, match="apt-get install podman"):
        platform.podman  # noqa: B018


def test_no_systemd_says_what_to_do(tmp_path, monkeypatch):
    platform = make("systemd", tmp_path, monkeypatch)
    monkeypatch.setattr(platform_systemd.shutil, "which", lambda cmd: None)
    with pytest.raises(SkiffError, match="skiff_platform: local"):
        platform.require_systemd()


def test_metadata_options_round_trip():
    meta = SiteMetadata(name="east", platform="podman", options={"image": "x"})
    assert SiteMetadata.from_dict(meta.to_dict()) == meta
    assert "options" not in SiteMetadata(name="east").to_dict()


def test_podman_checks_a_first_config_before_the_site_directory_exists(tmp_path, monkeypatch):
    platform = make("podman", tmp_path, monkeypatch, image="img")
    seen = []

    def check_file(path):
        seen.append((path.parent, path.read_bytes()))
        return []

    monkeypatch.setattr(platform, "check_config_file", check_file)
    assert not platform.paths.root.exists()
    assert platform.check_config(b'{"site": "east"}') == []
    assert seen == [(platform.paths.root, b'{"site": "east"}')]
    assert list(platform.paths.root.iterdir()) == []  # the candidate is gone again
