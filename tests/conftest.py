"""Make `ansible_collections.skiff.fleet` importable for unit tests without Ansible's loader."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".cache" / "collections"


def _link_collection() -> None:
    link = COLLECTIONS / "ansible_collections" / "skiff" / "fleet"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(REPO, link.parent), link)


_link_collection()
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

# Shared helpers of the integration tests (fleet_harness) import by name.
sys.path.insert(0, str(REPO / "tests" / "integration"))
