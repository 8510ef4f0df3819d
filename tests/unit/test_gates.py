"""The gates' own configuration keeps its promises (README "Gates")."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned"
            found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return found


def test_every_gate_tool_is_pinned_and_ansible_core_is_the_projects() -> None:
    gates = pins(REPO / "requirements-gates.txt")
    dev = pins(REPO / "requirements-dev.txt")
    for tool in ("ansible-core", "ansible-lint", "galaxy-importer", "mypy"):
        assert tool in gates, tool
    assert gates["ansible-core"] == dev["ansible-core"]


def test_sanity_ignores_are_few_and_each_says_why() -> None:
    ignore_files = sorted((REPO / "tests" / "sanity").glob("ignore-*.txt"))
    assert [path.name for path in ignore_files] == ["ignore-2.19.txt"]
    lines = [line for line in ignore_files[0].read_text().splitlines() if line.strip()]
    assert len(lines) <= 10
    for line in lines:
        entry, sep, reason = line.partition(" # ")
        path, test = entry.split()
        assert sep and reason.strip(), f"no reason given: {line}"
        assert (REPO / path).is_file(), f"ignored file does not exist: {path}"
        # Only the GPLv3 header check does not apply to this Apache-2.0 collection.
        assert test == "validate-modules:missing-gplv3-license", line


def test_requires_ansible_matches_what_sanity_runs() -> None:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    core = pins(REPO / "requirements-gates.txt")["ansible-core"]
    minor = ".".join(core.split(".")[:2])
    assert runtime["requires_ansible"] == f">={minor}.0"
    assert (REPO / "tests" / "sanity" / f"ignore-{minor}.txt").is_file()
