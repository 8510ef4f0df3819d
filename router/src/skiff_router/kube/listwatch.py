"""Sans-I/O list+watch: which request comes next, and what each answer does to the cache.

The I/O layer asks ``next_request()``, performs it, and feeds the answer back
(``list_page``, ``watch_event``, ``watch_ended``, ``failed``). The cache is
replaced only by a complete list; an expired resourceVersion (410 Gone, as an
HTTP status or an ERROR event) starts a fresh list; a BOOKMARK only moves the
resourceVersion on. Between a failure and the next complete list the cache
keeps its last good content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ListRequest:
    continue_token: str | None = None


@dataclass(frozen=True)
class WatchRequest:
    resource_version: str


class ListWatch(Generic[T]):
    def __init__(self, convert: Callable[[dict[str, Any]], T], max_objects: int) -> None:
        self.convert = convert
        self.max_objects = max_objects
        self.objects: dict[str, T] = {}
        self.synced = False  # a complete list has been seen
        self.overflow = False  # objects beyond max_objects were left out
        self.resource_version: str | None = None
        self._pending: dict[str, T] | None = None  # pages of a list in progress
        self._continue: str | None = None
        self._list_overflow = False
        self._watching = False

    def next_request(self) -> ListRequest | WatchRequest:
        if self._watching and self.resource_version is not None:
            return WatchRequest(self.resource_version)
        return ListRequest(self._continue)

    def list_page(self, body: dict[str, Any]) -> bool:
        """One page of a list answer; returns True when the cache changed."""
        if self._pending is None:
            self._pending, self._list_overflow = {}, False
        pending = self._pending
        for item in body.get("items") or []:
            if not isinstance(item, dict):
                continue
            name = (item.get("metadata") or {}).get("name")
            if not isinstance(name, str):
                continue
            if len(pending) >= self.max_objects:
                self._list_overflow = True
                break
            pending[name] = self.convert(item)
        meta = body.get("metadata") or {}
        token = meta.get("continue")
        if isinstance(token, str) and token:
            self._continue = token
            return False
        self._pending, self._continue = None, None
        self.overflow = self._list_overflow
        rv = meta.get("resourceVersion")
        self.resource_version = rv if isinstance(rv, str) and rv else None
        self._watching = self.resource_version is not None
        changed = not self.synced or pending != self.objects
        self.objects = pending
        self.synced = True
        return changed

    def watch_event(self, event: dict[str, Any]) -> bool:
        """One line of a watch stream; returns True when the cache changed."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return False
        meta = obj.get("metadata") or {}
        if kind == "ERROR":
            # 410 Gone ("too old resource version") or anything else: start over with a list.
            self.expired()
            return False
        rv = meta.get("resourceVersion")
        if isinstance(rv, str) and rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return False
        name = meta.get("name")
        if not isinstance(name, str):
            return False
        if kind == "DELETED":
            return self.objects.pop(name, None) is not None
        if kind in ("ADDED", "MODIFIED"):
            new = self.convert(obj)
            if name not in self.objects and len(self.objects) >= self.max_objects:
                self.overflow = True
                return False
            changed = self.objects.get(name) != new
            self.objects[name] = new
            return changed
        return False

    def watch_ended(self) -> None:
        """The server closed the stream (its timeout): watch again from the last version."""

    def expired(self) -> None:
        """410 Gone: the resourceVersion (or continue token) is too old; list from scratch."""
        self._watching = False
        self._pending, self._continue = None, None
        self.resource_version = None

    def failed(self) -> None:
        """A request failed (network, 403, 5xx): a list in progress starts over; a watch resumes."""
        if not self._watching:
            self._pending, self._continue = None, None

    def apply_write(self, name: str, obj: dict[str, Any] | None) -> bool:
        """Our own create/patch (the object the API returned) or delete (None), ahead of the
        watch event that will confirm it."""
        if obj is None:
            return self.objects.pop(name, None) is not None
        new = self.convert(obj)
        changed = self.objects.get(name) != new
        self.objects[name] = new
        return changed
