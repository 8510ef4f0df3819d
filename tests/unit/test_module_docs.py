"""Each module's documentation matches its argument spec (what ansible-test validate-modules checks)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Controller-side actions: the module file is documentation only.
ACTIONS = ("fleet_check", "plan")
MODULES = tuple(
    sorted(
        path.stem
        for path in (REPO / "plugins" / "modules").glob("[a-z]*.py")
        if path.stem not in ACTIONS
    )
)


def fragment(name: str) -> dict:
    """skiff.fleet.<file>[.<variable>], resolved the way ansible-doc does."""
    parts = name.split(".")[2:]
    plugin = importlib.import_module(
        f"ansible_collections.skiff.fleet.plugins.doc_fragments.{parts[0]}"
    )
    variable = parts[1].upper() if len(parts) > 1 else "DOCUMENTATION"
    return yaml.safe_load(getattr(plugin.ModuleDocFragment, variable))


def module_doc(name: str) -> dict:
    module = importlib.import_module(f"ansible_collections.skiff.fleet.plugins.modules.{name}")
    return yaml.safe_load(module.DOCUMENTATION)


def documented_options(module) -> dict:
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = {}
    for name in doc.get("extends_documentation_fragment", []):
        options.update(fragment(name).get("options") or {})
    options.update(doc.get("options") or {})
    return options


def compare(spec: dict, options: dict, where: str) -> None:
    assert set(spec) == set(options), where
    for name, arg in spec.items():
        doc = options[name]
        at = f"{where}.{name}"
        assert arg.get("type", "str") == doc.get("type", "str"), at
        assert arg.get("required", False) == doc.get("required", False), at
        assert arg.get("default") == doc.get("default"), at
        assert arg.get("choices") == doc.get("choices"), at
        assert arg.get("elements") == doc.get("elements"), at
        assert doc.get("description"), at
        if "options" in arg:
            compare(arg["options"], doc["suboptions"], at)


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_argument_spec(name):
    module = importlib.import_module(f"ansible_collections.skiff.fleet.plugins.modules.{name}")
    compare(module.argument_spec(), documented_options(module), name)
    yaml.safe_load(module.EXAMPLES)
    assert yaml.safe_load(module.RETURN)


@pytest.mark.parametrize("name", ACTIONS)
def test_action_documentation_matches_its_arguments(name):
    module = importlib.import_module(f"ansible_collections.skiff.fleet.plugins.modules.{name}")
    action = importlib.import_module(f"ansible_collections.skiff.fleet.plugins.action.{name}")
    options = documented_options(module)
    assert set(options) == set(action.ActionModule._VALID_ARGS)
    for option in options.values():
        assert option.get("description") and option.get("type")
    yaml.safe_load(module.EXAMPLES)
    assert yaml.safe_load(module.RETURN)


def test_token_option_of_link_is_no_log():
    from ansible_collections.skiff.fleet.plugins.modules import link, reconcile

    assert link.argument_spec()["token"]["no_log"] is True
    # The list forms hide every item's token too.
    assert link.argument_spec()["links"]["options"]["token"]["no_log"] is True
    assert reconcile.argument_spec()["links"]["options"]["token"]["no_log"] is True


@pytest.mark.parametrize("name", MODULES)
def test_attributes_are_described_once_and_supported_everywhere(name):
    doc = module_doc(name)
    assert "skiff.fleet.attributes" in doc["extends_documentation_fragment"]
    shared = fragment("skiff.fleet.attributes")["attributes"]
    for attribute, own in doc["attributes"].items():
        assert "description" not in own, f"{name}: {attribute} is described in the fragment"
        assert attribute in shared, f"{name}: {attribute} has no description"
        assert own["support"] in ("full", "partial", "none", "N/A")
    assert {"check_mode", "diff_mode"} <= set(doc["attributes"])


def returns(name: str) -> dict:
    module = importlib.import_module(f"ansible_collections.skiff.fleet.plugins.modules.{name}")
    return yaml.safe_load(module.RETURN)


def test_shared_return_values_are_documented_alike():
    """ansible-core's doc fragments extend DOCUMENTATION only, never RETURN: the
    return values every module shares are written in each module, and kept equal here."""
    documented = {name: returns(name) for name in MODULES}
    actions = [doc["actions"] for doc in documented.values() if "actions" in doc]
    assert len(actions) >= 4
    for value in actions:
        assert value["description"] == "What was done, or in check mode what would be done."
        assert (value["type"], value["elements"], value["returned"]) == ("list", "str", "always")
    for name, doc in documented.items():
        if "diff" in doc:
            assert doc["diff"]["type"] == "dict", name
            assert "C(before) and C(after)" in " ".join(
                [doc["diff"]["description"]]
                if isinstance(doc["diff"]["description"], str)
                else doc["diff"]["description"]
            ), name


def test_action_group_is_every_module_that_takes_site_and_base_dir():
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    site_dir_modules = sorted(
        name
        for name in MODULES
        if "skiff.fleet.site_dir" in module_doc(name)["extends_documentation_fragment"]
    )
    assert sorted(runtime["action_groups"]["fleet"]) == site_dir_modules
