from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import settings

# The repository runs pytest with --import-mode=importlib, which does not put
# this directory on sys.path; the tests import router_testkit from here.
sys.path.insert(0, str(Path(__file__).parent))

# No example database: the suite must not leave a .hypothesis directory behind.
settings.register_profile("skiff", database=None, deadline=None)
settings.load_profile("skiff")
