"""Each module's documentation matches its argument spec (what ansible-test validate-modules checks)."""

from __future__ import annotations

import importlib

import pytest
import yaml

from ansible_collections.skiff.fleet.plugins.doc_fragments.items import ModuleDocFragment as Items
from ansible_collections.skiff.fleet.plugins.doc_fragments.site_dir import ModuleDocFragment

MODULES = (
    "site",
    "token",
    "link",
    "listener",
    "connector",
    "wait",
    "reconcile",
    "network_info",
)
# Controller-side actions: the module file is documentation only.
ACTIONS = ("fleet_check", "plan")
FRAGMENTS = {
    "skiff.fleet.site_dir": ModuleDocFragment.DOCUMENTATION,
    "skiff.fleet.site_dir.base_dir": ModuleDocFragment.BASE_DIR,
    "skiff.fleet.items.listeners": Items.LISTENERS,
    "skiff.fleet.items.connectors": Items.CONNECTORS,
    "skiff.fleet.items.links": Items.LINKS,
    "skiff.fleet.items.prune": Items.PRUNE,
}


def documented_options(module) -> dict:
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = {}
    for fragment in doc.get("extends_documentation_fragment", []):
        options.update(yaml.safe_load(FRAGMENTS[fragment])["options"])
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
