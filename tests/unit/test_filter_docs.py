"""Every filter has documentation whose options match its Python signature."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

FILTER_DIR = Path(__file__).resolve().parents[2] / "plugins" / "filter"


def filters() -> dict:
    found = {}
    for path in sorted(FILTER_DIR.glob("*.py")):
        plugin = importlib.import_module(
            f"ansible_collections.skiff.fleet.plugins.filter.{path.stem}"
        )
        found.update(plugin.FilterModule().filters())
    return found


@pytest.mark.parametrize("name", sorted(filters()))
def test_filter_documentation_matches_signature(name: str) -> None:
    docs = FILTER_DIR / f"{name}.yml"
    assert docs.is_file(), f"filter {name} has no documentation ({docs.name})"
    doc = yaml.safe_load(docs.read_text())
    assert doc["DOCUMENTATION"]["name"] == name
    assert doc["RETURN"]["_value"]["description"]
    yaml.safe_load(doc["EXAMPLES"])
    parameters = list(inspect.signature(filters()[name]).parameters.values())
    options = doc["DOCUMENTATION"]["options"]
    assert list(options) == ["_input", *(p.name for p in parameters[1:])], name
    positional = doc["DOCUMENTATION"].get("positional", "")
    assert [part.strip() for part in positional.split(",") if part.strip()] == [
        p.name for p in parameters[1:]
    ], name
    for parameter in parameters:
        option = options["_input" if parameter is parameters[0] else parameter.name]
        required = parameter.default is inspect.Parameter.empty
        assert option.get("required", False) == required, f"{name}: {parameter.name}"


def test_no_documentation_without_a_filter() -> None:
    documented = {path.stem for path in FILTER_DIR.glob("*.yml")}
    assert documented == set(filters())
