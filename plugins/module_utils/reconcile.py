"""The reconciler of a site's router config (private to skiff.fleet; not a public API).

One pure function, `reconcile()`: from the config a site has now and what the
inventory wants for its links, listeners and connectors, to the new config,
the changes (each with its words for the user) and the `--diff` data. Each
kind of entry (`Kind`) supplies only its normalization and its description;
adding, updating, removing, keeping order and pruning are the same for all
three, here, once. No I/O: the caller reads the config and puts the result in
force (`config_runner.py`), so every module and the role's one call per site
share this code path, and it is tested with plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.skiff.fleet.plugins.module_utils.errors import SkiffError
from ansible_collections.skiff.fleet.plugins.module_utils.store import canonical_order

Entry = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One list of router.json: how a wanted item becomes an entry, and how to say what it is."""

    section: str
    noun: str
    # A wanted item (module options) -> its entry as router.json holds it; SkiffError if wrong.
    normalize: Callable[[Mapping[str, Any]], Entry]
    # An entry -> a few words for actions ("routing key 'db', 127.0.0.1:5432").
    describe: Callable[[Entry], str]
    # Rules across the whole resulting list (two listeners on one address); SkiffError if broken.
    check: Callable[[list[Entry]], None] | None = None

    def label(self, name: Any) -> str:
        return f"{self.noun} '{name}'"


@dataclass(frozen=True)
class Wanted:
    """What one kind of one site should hold after the run."""

    # Wanted items, each with at least a name; normalized by the kind.
    present: tuple[Mapping[str, Any], ...] = ()
    # Names that must not exist.
    absent: tuple[str, ...] = ()
    # Remove every entry that `present` (and `pending`) does not name.
    prune: bool = False
    # Names wanted but not known well enough to write yet (a link whose token
    # the far site cannot issue before it exists, in check mode): name ->
    # (what is known of the entry, why it is not complete). They are reported
    # as pending additions when missing, never written and never pruned.
    pending: Mapping[str, tuple[Entry, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    section: str
    action: str  # add | update | remove
    name: str
    before: Entry | None
    after: Entry | None
    text: str
    # A pending addition: `after` holds only what is known so far.
    pending: bool = False

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "section": self.section,
            "action": self.action,
            "name": self.name,
            "before": self.before,
            "after": self.after,
        }
        if self.pending:
            data["pending"] = True
        return data


@dataclass
class Reconciled:
    config: dict[str, Any]
    changes: list[Change]
    before: dict[str, list[Entry]]
    after: dict[str, list[Entry]]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def actions(self) -> list[str]:
        return [change.text for change in self.changes]

    @property
    def diff(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after}


def reconcile(current: Mapping[str, Any], wanted: Mapping[Kind, Wanted]) -> Reconciled:
    """The new config for `current` holding what `wanted` says, kind by kind.

    Kinds not in `wanted` are left exactly as they are. Entries keep their
    place; new ones are appended in the order they are wanted. A list that
    ends up empty is left out of the config (the router's default).
    """
    config = dict(current)
    changes: list[Change] = []
    before: dict[str, list[Entry]] = {}
    after: dict[str, list[Entry]] = {}
    for kind, want in wanted.items():
        entries = _entries(current, kind)
        new_entries, kind_changes = _reconcile_kind(kind, entries, want)
        before[kind.section] = entries
        after[kind.section] = new_entries
        changes.extend(kind_changes)
        if new_entries:
            config[kind.section] = new_entries
        else:
            config.pop(kind.section, None)
    return Reconciled(canonical_order(config), changes, before, after)


def _entries(config: Mapping[str, Any], kind: Kind) -> list[Entry]:
    value = config.get(kind.section) or []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise SkiffError(
            "the site's router.json holds something other than a list of entries; "
            "fix or remove the section and re-run",
            field=kind.section,
        )
    return [dict(e) for e in value]


def _normalize_all(kind: Kind, want: Wanted) -> dict[str, Entry]:
    normalized: dict[str, Entry] = {}
    for item in want.present:
        name = item.get("name")
        try:
            entry = kind.normalize(item)
        except SkiffError as exc:
            raise exc.with_context(field=kind.label(name) if name else kind.noun) from None
        if entry["name"] in normalized or entry["name"] in want.pending:
            raise SkiffError("is listed twice", field=f"{kind.label(entry['name'])}: name")
        normalized[entry["name"]] = entry
    for name in want.absent:
        if name in normalized or name in want.pending:
            raise SkiffError(
                "is listed both as present and as absent", field=f"{kind.label(name)}: state"
            )
    return normalized


def _reconcile_kind(
    kind: Kind, entries: list[Entry], want: Wanted
) -> tuple[list[Entry], list[Change]]:
    normalized = _normalize_all(kind, want)
    changes: list[Change] = []
    new_entries: list[Entry] = []
    seen: set[str] = set()
    for entry in entries:
        name = str(entry.get("name"))
        seen.add(name)
        if name in normalized:
            wanted_entry = normalized[name]
            new_entries.append(wanted_entry)
            if wanted_entry != entry:
                text = f"update {kind.label(name)} ({kind.describe(wanted_entry)})"
                changes.append(Change(kind.section, "update", name, entry, wanted_entry, text))
        elif name in want.absent or (want.prune and name not in want.pending and name is not None):
            changes.append(
                Change(kind.section, "remove", name, entry, None, f"remove {kind.label(name)}")
            )
        else:
            new_entries.append(entry)
    for name, entry in normalized.items():
        if name not in seen:
            new_entries.append(entry)
            text = f"add {kind.label(name)} ({kind.describe(entry)})"
            changes.append(Change(kind.section, "add", name, None, entry, text))
    for name, (known, why) in want.pending.items():
        if name not in seen:
            text = f"add {kind.label(name)} ({why})"
            changes.append(Change(kind.section, "add", name, None, dict(known), text, True))
    if kind.check is not None:
        kind.check(new_entries)
    return new_entries, changes
