"""Domain errors of the skiff modules (private to skiff.fleet; not a public API).

Every failure the logic can predict is a `SkiffError` naming the site, the field
at fault and what to do. Only the module edge turns it into `fail_json`.
Messages never carry secrets (keys, tokens): build them from names and paths.
"""

from __future__ import annotations

from typing import Any


class SkiffError(Exception):
    """A failure a user can act on: which site, which field, what is wrong and what to do."""

    def __init__(
        self,
        message: str,
        *,
        site: str | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ):
        self.message = message
        self.site = site
        self.field = field
        # Extra, secret-free return values for fail_json (e.g. the last status seen).
        self.details = details or {}
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.site:
            parts.append(f"site '{self.site}'")
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def with_context(self, *, site: str | None = None, field: str | None = None) -> SkiffError:
        """Fill in context the raiser did not know (an inner helper rarely knows the site)."""
        if site and not self.site:
            self.site = site
        if field:
            self.field = f"{field}: {self.field}" if self.field else field
        self.args = (str(self),)
        return self
