"""The module edge: domain errors become fail_json, results become exit_json."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.skiff.fleet.plugins.module_utils.apply import Result
from ansible_collections.skiff.fleet.plugins.module_utils.edge import (
    SITE_DIR_ARGUMENT_SPEC,
    run_module,
)
from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError


def run(capsys, logic, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        run_module(dict(SITE_DIR_ARGUMENT_SPEC), logic)
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def test_result_becomes_exit_json(capsys):
    seen = {}

    def logic(params, check_mode):
        seen.update(params=params, check_mode=check_mode)
        return Result(changed=True, actions=["did it"], diff={"before": {}, "after": {"a": 1}})

    code, out = run(capsys, logic, {"site": "east", "_ansible_check_mode": True})
    assert code == 0
    assert out["changed"] is True and out["actions"] == ["did it"]
    assert out["diff"] == {"before": {}, "after": {"a": 1}}
    assert seen["check_mode"] is True
    assert seen["params"]["base_dir"].endswith(".local/state/skiff")


def test_domain_error_becomes_fail_json(capsys):
    def logic(params, check_mode):
        raise SkiffError("is wrong", site="east", field="port", details={"problems": ["x"]})

    code, out = run(capsys, logic, {"site": "east"})
    assert code == 1
    assert out["failed"] is True
    assert out["msg"] == "site 'east': port: is wrong"
    assert out["problems"] == ["x"]


def test_os_error_names_the_file(capsys):
    def logic(params, check_mode):
        raise PermissionError(13, "Permission denied", "/root/x")

    code, out = run(capsys, logic, {"site": "east"})
    assert code == 1 and out["msg"] == "Permission denied (/root/x)"
