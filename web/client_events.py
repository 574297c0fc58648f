"""Events as clients see them (client-server-api "Room Event Format"): the ClientEvent
shape with ``unsigned`` (age, transaction_id for the sender's own device, redacted_because,
prev_content / replaces_state for state events)."""
from __future__ import annotations

import time
from typing import Any, Iterable

from protocol.room_versions import RoomVersion
from store.events import EventStore, StoredEvent

_CLIENT_KEYS = ("content", "event_id", "origin_server_ts", "room_id", "sender", "type",
                "state_key")


def client_event(store: EventStore, se: StoredEvent, rv: RoomVersion, *,
                 device_id: str | None = None, user_id: str | None = None,
                 now_ms: int | None = None, with_room_id: bool = True) -> dict[str, Any]:
    ev = store.visible_form(se, rv)
    out = {k: ev[k] for k in _CLIENT_KEYS if k in ev}
    out["room_id"] = se.room_id
    if not with_room_id:
        out.pop("room_id", None)
    if out.get("type") == "m.room.redaction" and "redacts" not in out:
        redacts = ev.get("redacts") or ev.get("content", {}).get("redacts")
        if isinstance(redacts, str):
            out["redacts"] = redacts
    unsigned: dict[str, Any] = {}
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    unsigned["age"] = max(0, now - int(se.event.get("origin_server_ts", now)))
    stored_unsigned = se.event.get("unsigned") or {}
    if "replaces_state" in stored_unsigned:
        unsigned["replaces_state"] = stored_unsigned["replaces_state"]
        prev = store.get_event(stored_unsigned["replaces_state"])
        if prev is not None:
            unsigned["prev_content"] = store.visible_form(prev, rv).get("content", {})
            unsigned["prev_sender"] = prev.event.get("sender")
    if se.txn_id is not None and device_id is not None and se.txn_device == device_id \
            and user_id == se.event.get("sender"):
        unsigned["transaction_id"] = se.txn_id
    if se.redacted_by is not None:
        red = store.get_event(se.redacted_by)
        if red is not None:
            unsigned["redacted_because"] = client_event(store, red, rv, now_ms=now)
    out["unsigned"] = unsigned
    return out


def client_events(store: EventStore, ses: Iterable[StoredEvent], rv: RoomVersion,
                  **kw: Any) -> list[dict[str, Any]]:
    return [client_event(store, se, rv, **kw) for se in ses]
