# Copyright: skiff developers
# Apache License 2.0 (see LICENSE)
# SPDX-License-Identifier: Apache-2.0
"""Options every skiff.fleet module shares: which site, and where its directory lives."""

from __future__ import annotations


class ModuleDocFragment:
    # skiff.fleet.site_dir: for modules acting on an existing site.
    DOCUMENTATION = r"""
options:
  site:
    description:
      - Name of the site (the router id) this task acts on.
      - The site must have been created with M(skiff.fleet.site) using the same O(base_dir).
    type: str
    required: true
  base_dir:
    description:
      - Directory on the managed host that holds one sub-directory per site.
      - The site directory is C(<base_dir>/<site>), mode 0700.
    type: path
    default: ~/.local/state/skiff
"""

    # skiff.fleet.site_dir.base_dir: for skiff.fleet.site itself, which names the site with `name`.
    BASE_DIR = r"""
options:
  base_dir:
    description:
      - Directory on the managed host that holds one sub-directory per site.
      - The site directory is C(<base_dir>/<name>), mode 0700.
    type: path
    default: ~/.local/state/skiff
"""
