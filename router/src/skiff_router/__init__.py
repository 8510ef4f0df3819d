"""skiff-router: the data plane of a skiff application network."""

from __future__ import annotations

__version__ = "0.1.0"
