"""The RoomEventFilter of /messages and /context (client-server-api "Filtering";
definitions/room_event_filter.yaml): parsing with the spec's errors, matching events, and the
part SQL can apply.

Bad JSON in the ``filter`` parameter is 400 M_NOT_JSON; JSON of the wrong shape is
400 M_BAD_JSON.  ``*`` in ``types`` / ``not_types`` matches any sequence of characters.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from atrium.errors import bad_json, not_json
from store.events import StoredEvent
from store.room_reads import SqlFilter

MAX_LIST = 1000


@lru_cache(maxsize=512)
def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(p) for p in glob.split("*")) + "$", re.DOTALL)


def _match_any(value: str, globs: tuple[str, ...]) -> bool:
    return any(g == value or ("*" in g and _pattern(g).match(value)) for g in globs)


@dataclass(frozen=True)
class RoomEventFilter:
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    limit: int | None = None

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def sql(self) -> SqlFilter:
        """Exact types/senders for the query; wildcards are left to :meth:`matches`."""
        types = self.types
        if types is not None and any("*" in t for t in types):
            types = None
        return SqlFilter(types=types, not_types=tuple(t for t in self.not_types if "*" not in t),
                         senders=self.senders, not_senders=self.not_senders)

    def matches(self, se: StoredEvent) -> bool:
        ev = se.event
        etype, sender = str(ev.get("type", "")), str(ev.get("sender", ""))
        if self.not_senders and sender in self.not_senders:
            return False
        if self.senders is not None and sender not in self.senders:
            return False
        if self.not_types and _match_any(etype, self.not_types):
            return False
        if self.types is not None and not _match_any(etype, self.types):
            return False
        if self.contains_url is not None:
            has_url = isinstance(ev.get("content", {}).get("url"), str)
            if has_url != self.contains_url:
                return False
        return True

    @property
    def is_empty(self) -> bool:
        return self == RoomEventFilter(lazy_load_members=self.lazy_load_members,
                                       include_redundant_members=self.include_redundant_members,
                                       limit=self.limit)


NO_FILTER = RoomEventFilter()


def _strings(obj: dict[str, Any], key: str) -> tuple[str, ...] | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise bad_json(f"filter: '{key}' must be an array of strings")
    if len(v) > MAX_LIST:
        raise bad_json(f"filter: '{key}' has more than {MAX_LIST} entries")
    return tuple(v)


def _bool(obj: dict[str, Any], key: str) -> bool | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, bool):
        raise bad_json(f"filter: '{key}' must be a boolean")
    return v


def room_event_filter(obj: Any) -> RoomEventFilter:
    """A RoomEventFilter from its JSON object (400 M_BAD_JSON when malformed)."""
    if not isinstance(obj, dict):
        raise bad_json("filter must be a JSON object")
    limit = obj.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise bad_json("filter: 'limit' must be an integer greater than 0")
    return RoomEventFilter(
        types=_strings(obj, "types"), not_types=_strings(obj, "not_types") or (),
        senders=_strings(obj, "senders"), not_senders=_strings(obj, "not_senders") or (),
        rooms=_strings(obj, "rooms"), not_rooms=_strings(obj, "not_rooms") or (),
        contains_url=_bool(obj, "contains_url"),
        lazy_load_members=bool(_bool(obj, "lazy_load_members")),
        include_redundant_members=bool(_bool(obj, "include_redundant_members")),
        limit=limit)


def parse_filter_param(raw: str | None) -> RoomEventFilter:
    """The ``filter`` query parameter (JSON text), or no filter."""
    if raw is None or raw == "":
        return NO_FILTER
    try:
        obj = json.loads(raw)
    except ValueError:
        raise not_json("filter is not valid JSON") from None
    return room_event_filter(obj)
