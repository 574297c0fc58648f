"""Filters (client-server-api "Filtering"): validation of filter JSON, the stored-filter
endpoints ``POST/GET /user/{userId}/filter``, and the matching /sync applies.

A filter is validated once and turned into frozen :class:`EventFilter` /
:class:`RoomEventFilter` / :class:`SyncFilter` objects; ``types`` / ``not_types`` accept ``*``
wildcards; ``not_*`` lists win over the positive ones.  ``event_fields`` paths are dotted with
``\\.`` for a literal dot.
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from web.auth import require_auth
from web.http import json_body

P = "/_matrix/client/v3"
DEFAULT_TIMELINE_LIMIT = 10
MAX_LIMIT = 1000
MAX_SAFE_INT = 2**53 - 1


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", f"Invalid filter: {msg}")


def _str_list(d: dict[str, Any], key: str) -> tuple[str, ...] | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _bad(f"'{key}' must be a list of strings")
    return tuple(v)


def _bool(d: dict[str, Any], key: str, default: bool = False) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise _bad(f"'{key}' must be a boolean")
    return v


def _obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise _bad(f"'{key}' must be an object")
    return v


def _type_match(patterns: tuple[str, ...], etype: str) -> bool:
    return any(p == etype or ("*" in p and fnmatch.fnmatchcase(etype, p)) for p in patterns)


@dataclass(frozen=True)
class EventFilter:
    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()

    @classmethod
    def parse(cls, d: dict[str, Any], **extra: Any) -> "EventFilter":
        limit = d.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 0 <= limit <= MAX_SAFE_INT):
            raise _bad("'limit' must be an integer from 0 to 2^53-1")
        return cls(limit=min(limit, MAX_LIMIT) if limit is not None else None,
                   types=_str_list(d, "types"), not_types=_str_list(d, "not_types") or (),
                   senders=_str_list(d, "senders"),
                   not_senders=_str_list(d, "not_senders") or (), **extra)

    def matches_type(self, etype: str) -> bool:
        if self.not_types and _type_match(self.not_types, etype):
            return False
        return self.types is None or _type_match(self.types, etype)

    def matches_sender(self, sender: str | None) -> bool:
        if sender is None:
            return True
        if sender in self.not_senders:
            return False
        return self.senders is None or sender in self.senders

    def matches(self, ev: dict[str, Any]) -> bool:
        return self.matches_type(str(ev.get("type", ""))) and self.matches_sender(ev.get("sender"))

    @property
    def excludes_all(self) -> bool:
        return self.types == ()


@dataclass(frozen=True)
class RoomEventFilter(EventFilter):
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    @classmethod
    def parse_room(cls, d: dict[str, Any]) -> "RoomEventFilter":
        cu = d.get("contains_url")
        if cu is not None and not isinstance(cu, bool):
            raise _bad("'contains_url' must be a boolean")
        return cls.parse(  # type: ignore[return-value]
            d, rooms=_str_list(d, "rooms"), not_rooms=_str_list(d, "not_rooms") or (),
            contains_url=cu, lazy_load_members=_bool(d, "lazy_load_members"),
            include_redundant_members=_bool(d, "include_redundant_members"),
            unread_thread_notifications=_bool(d, "unread_thread_notifications"))

    def matches_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def matches(self, ev: dict[str, Any]) -> bool:
        if not super().matches(ev):
            return False
        if self.contains_url is not None:
            has_url = isinstance((ev.get("content") or {}).get("url"), str)
            if has_url != self.contains_url:
                return False
        return True


@dataclass(frozen=True)
class SyncFilter:
    event_fields: tuple[tuple[str, ...], ...] | None = None
    event_format: str = "client"
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: RoomEventFilter = field(default_factory=RoomEventFilter)
    state: RoomEventFilter = field(default_factory=RoomEventFilter)
    ephemeral: RoomEventFilter = field(default_factory=RoomEventFilter)
    room_account_data: RoomEventFilter = field(default_factory=RoomEventFilter)

    def matches_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    @property
    def timeline_limit(self) -> int:
        limit = self.timeline.limit
        return DEFAULT_TIMELINE_LIMIT if limit is None else limit

    @property
    def lazy_load_members(self) -> bool:
        return self.state.lazy_load_members or self.timeline.lazy_load_members

    @property
    def include_redundant_members(self) -> bool:
        return self.state.include_redundant_members or self.timeline.include_redundant_members

    def project(self, ev: dict[str, Any]) -> dict[str, Any]:
        """Apply ``event_fields`` (only the listed paths are kept)."""
        if self.event_fields is None:
            return ev
        out: dict[str, Any] = {}
        for path in self.event_fields:
            src: Any = ev
            for part in path:
                if not isinstance(src, dict) or part not in src:
                    break
                src = src[part]
            else:
                dst = out
                for part in path[:-1]:
                    dst = dst.setdefault(part, {})
                dst[path[-1]] = src
        return out


_SPLIT = re.compile(r"(?<!\\)\.")


def _field_path(s: str) -> tuple[str, ...]:
    """``content.body`` → ("content", "body"); ``\\.`` is a literal dot.  No other use of a
    backslash, and no empty part (as Synapse's filter schema)."""
    parts = _SPLIT.split(s)
    if any(not p or "\\" in p.replace("\\.", "") for p in parts):
        raise _bad(f"invalid event_fields entry {s!r}")
    return tuple(p.replace("\\.", ".") for p in parts)


def parse_filter(d: Any) -> SyncFilter:
    """Validate a filter definition (400 M_BAD_JSON) and build the matcher."""
    if not isinstance(d, dict):
        raise _bad("a filter must be a JSON object")
    fields = _str_list(d, "event_fields")
    fmt = d.get("event_format", "client")
    if fmt not in ("client", "federation"):
        raise _bad("'event_format' must be 'client' or 'federation'")
    room = _obj(d, "room")
    return SyncFilter(
        event_fields=tuple(_field_path(f) for f in fields) if fields is not None else None,
        event_format=fmt,
        presence=EventFilter.parse(_obj(d, "presence")),
        account_data=EventFilter.parse(_obj(d, "account_data")),
        rooms=_str_list(room, "rooms"), not_rooms=_str_list(room, "not_rooms") or (),
        include_leave=_bool(room, "include_leave"),
        timeline=RoomEventFilter.parse_room(_obj(room, "timeline")),
        state=RoomEventFilter.parse_room(_obj(room, "state")),
        ephemeral=RoomEventFilter.parse_room(_obj(room, "ephemeral")),
        room_account_data=RoomEventFilter.parse_room(_obj(room, "account_data")))


def resolve_filter(runtime: Any, user_id: str, param: str | None) -> SyncFilter:
    """The ``filter`` query parameter: inline JSON (starts with ``{``) or a stored id."""
    if param is None or param == "":
        return SyncFilter()
    if param.lstrip().startswith("{"):
        try:
            raw = json.loads(param)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "filter is not valid JSON") from None
        try:
            return parse_filter(raw)
        except MatrixError as e:
            raise MatrixError(400, "M_INVALID_PARAM", e.error) from None
    if not (param.isascii() and param.isdigit()):
        raise MatrixError(400, "M_INVALID_PARAM", "filter must be a filter id or JSON")
    sync = runtime.parts["sync"]
    key = (user_id, int(param))
    cached = sync.filter_cache.get(key)  # stored filters never change
    if cached is None:
        stored = sync.filters.get(user_id, key[1])
        if stored is None:
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown filter {param}")
        cached = parse_filter(stored)
        sync.filter_cache.put(key, cached)
    return cached


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    bp = Blueprint("filters", __name__)

    def own(user_id: str) -> Any:
        req = require_auth()
        if req.user_id != user_id:
            raise MatrixError(403, "M_FORBIDDEN", "Cannot use filters of other users")
        return req

    @bp.post(f"{P}/user/<user_id>/filter")
    def create_filter(user_id: str) -> Any:
        """POST /_matrix/client/v3/user/{userId}/filter"""
        own(user_id)
        body = json_body()
        parse_filter(body)
        from actors.user_messages import CreateFilter

        fid = sync.ask_user(user_id, CreateFilter(definition=body))
        return jsonify({"filter_id": str(fid)})

    @bp.get(f"{P}/user/<user_id>/filter/<filter_id>")
    def get_filter(user_id: str, filter_id: str) -> Any:
        """GET /_matrix/client/v3/user/{userId}/filter/{filterId}"""
        own(user_id)
        stored = sync.filters.get(user_id, int(filter_id)) if (
            filter_id.isascii() and filter_id.isdigit()) else None
        if stored is None:
            raise MatrixError(404, "M_NOT_FOUND", "No such filter")
        return jsonify(stored)

    app.register_blueprint(bp)
