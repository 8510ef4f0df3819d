"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``), parsed and matched locally.

The agent watches every pod of its namespace once and matches each selector
connector against that one cache, instead of one API watch per selector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# A label key: optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/"
KEY_RE = re.compile(rf"^({_PREFIX})?{_NAME}$")
VALUE_RE = re.compile(rf"^({_NAME})?$")


class SelectorError(ValueError):
    """A selector that is not a valid Kubernetes LabelSelector; ``field`` names the part."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: absent keys match too


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _label(value: Any, field: str, regex: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not regex.match(value):
        raise SelectorError(field, f"{value!r} is not a valid label {what}")
    return value


def parse(data: Any, field: str = "selector") -> LabelSelector:
    """Parse a LabelSelector mapping; an empty selector is refused (it would match every pod)."""
    if not isinstance(data, dict):
        raise SelectorError(field, "must be a mapping with matchLabels and/or matchExpressions")
    unknown = sorted(set(data) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise SelectorError(f"{field}.{unknown[0]}", "unknown key")
    reqs: list[Requirement] = []
    labels = data.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError(f"{field}.matchLabels", "must be a mapping of label to value")
    for key, value in sorted(labels.items()):
        f = f"{field}.matchLabels.{key}"
        _label(key, f, KEY_RE, "key")
        reqs.append(Requirement(key, "In", (_label(value, f, VALUE_RE, "value"),)))
    exprs = data.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError(f"{field}.matchExpressions", "must be a list")
    for i, expr in enumerate(exprs):
        f = f"{field}.matchExpressions[{i}]"
        if not isinstance(expr, dict) or set(expr) - {"key", "operator", "values"}:
            raise SelectorError(f, "must be a mapping with key, operator and values")
        key = _label(expr.get("key"), f"{f}.key", KEY_RE, "key")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise SelectorError(f"{f}.operator", f"must be one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise SelectorError(f"{f}.values", "must be a list")
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"{f}.values", f"must not be empty for {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{f}.values", f"must be empty for {op}")
        vals = tuple(_label(v, f"{f}.values", VALUE_RE, "value") for v in values)
        reqs.append(Requirement(key, op, vals))
    if not reqs:
        raise SelectorError(field, "must not be empty (it would match every pod of the namespace)")
    return LabelSelector(tuple(reqs))
