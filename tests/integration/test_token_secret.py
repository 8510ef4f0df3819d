"""A token is a credential: it reaches the registered variable, never the output."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fleet_harness import BIN, REPO, ansible_env, free_ports

pytestmark = pytest.mark.integration

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    base_dir: {base_dir}
  tasks:
    - skiff.fleet.site:
        name: east
        base_dir: "{{{{ base_dir }}}}"
        link_access: true
        link_endpoint: {{host: 127.0.0.1, port: {link_port}}}
        link_bind_host: 127.0.0.1
        admin_port: {admin_port}
    - name: Issue a token, deliberately without no_log on the task
      skiff.fleet.token:
        site: east
        base_dir: "{{{{ base_dir }}}}"
        name: west
      register: issued
    - name: The registered result has the token for the play to use
      ansible.builtin.assert:
        that: issued.token is match('skiff1[.]')
        quiet: true
    - name: A failure is still shown in full
      skiff.fleet.token:
        site: nowhere
        base_dir: "{{{{ base_dir }}}}"
        name: west
      ignore_errors: true
  post_tasks:
    - skiff.fleet.site:
        name: east
        base_dir: "{{{{ base_dir }}}}"
        state: absent
"""


def test_token_never_appears_in_output(tmp_path) -> None:
    link_port, admin_port = free_ports(2)
    playbook = tmp_path / "token.yml"
    playbook.write_text(
        PLAYBOOK.format(base_dir=tmp_path / "sites", link_port=link_port, admin_port=admin_port)
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-vvv",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "skiff1." not in output
    assert "PRIVATE KEY" not in output
    assert "censored" in output
    assert "no site at" in output  # the failing task's message is not hidden
