# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""The attributes every skiff.fleet module documents; a module states only how it differs."""

from __future__ import annotations


class ModuleDocFragment:
    # skiff.fleet.attributes: check_mode and diff_mode described once; each
    # module still says its own `support` (and `details` where it differs).
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in check mode. Nothing on the managed host changes, C(changed) is
        the prediction of a real run, and the C(actions) result (where returned)
        lists what a real run would do.
  diff_mode:
    description:
      - With C(--diff) the module returns C(before) and C(after) data of what it
        manages (never keys or tokens), also in check mode.
  platform:
    description: Target operating systems the module runs on.
    support: full
    platforms: posix
"""
