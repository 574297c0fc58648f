"""Events as clients see them (client-server-api "Room Event Format"): the ClientEvent
shape with ``unsigned`` (age, transaction_id for the sender's own device, redacted_because,
prev_content / replaces_state for state events, ``m.relations`` bundled aggregations).

:func:`serve_events` is the way to serve a page of events to a user: it warms the event cache
for the whole page (replaced state, redactions) and bundles aggregations in batches.
:func:`client_event` formats one event; with ``bundle=True`` and ``user_id`` (the one-event
paths like GET /event/{eventId}) it also bundles that event's aggregations.  Bundling is
never implicit: it costs a few queries per call, so a page (sync timelines included) should
bundle once with :func:`web.aggregations.bundle_aggregations` and pass ``relations=``.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Sequence

from protocol.room_versions import RoomVersion
from store.events import EventStore, StoredEvent

_CLIENT_KEYS = ("content", "event_id", "origin_server_ts", "room_id", "sender", "type",
                "state_key")


def client_event(store: EventStore, se: StoredEvent, rv: RoomVersion, *,
                 device_id: str | None = None, user_id: str | None = None,
                 now_ms: int | None = None, with_room_id: bool = True,
                 relations: Mapping[str, Any] | None = None,
                 bundle: bool = False) -> dict[str, Any]:
    """One event in the client format.  ``relations`` is put in ``unsigned.m.relations``;
    with ``bundle=True`` (and ``user_id``) they are computed here for this one event."""
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
    if relations is None and user_id is not None and bundle:
        from web.aggregations import bundle_for_store

        relations = bundle_for_store(store, [se], user_id).get(se.event_id)
    if relations:
        unsigned["m.relations"] = dict(relations)
    out["unsigned"] = unsigned
    return out


def prefetch(store: EventStore, ses: Iterable[StoredEvent]) -> None:
    """Load the events a page's formatting will look up (replaced state, redactions) in one
    batch, so formatting hits the cache."""
    ids: list[str] = []
    for se in ses:
        rs = (se.event.get("unsigned") or {}).get("replaces_state")
        if isinstance(rs, str):
            ids.append(rs)
        if se.redacted_by is not None:
            ids.append(se.redacted_by)
    if ids:
        store.get_events(ids)


def serve_events(store: EventStore, ses: Sequence[StoredEvent], user_id: str, *,
                 device_id: str | None = None, bundle: bool = True,
                 visibility: Any = None, now_ms: int | None = None) -> list[dict[str, Any]]:
    """A page of events for ``user_id``, formatted, with bundled aggregations."""
    from web.aggregations import bundle_for_store

    prefetch(store, ses)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    rels = bundle_for_store(store, ses, user_id, visibility=visibility) if bundle else {}
    out = []
    for se in ses:
        rv = store.room_version(se.room_id)
        assert rv is not None
        out.append(client_event(store, se, rv, device_id=device_id, user_id=user_id,
                                now_ms=now, relations=rels.get(se.event_id, {})))
    return out


def client_events(store: EventStore, ses: Iterable[StoredEvent], rv: RoomVersion,
                  **kw: Any) -> list[dict[str, Any]]:
    ses = list(ses)
    prefetch(store, ses)
    return [client_event(store, se, rv, **kw) for se in ses]
