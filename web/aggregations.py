"""Bundled aggregations (client-server-api "Aggregations of child events"): the
``unsigned.m.relations`` of events served to a client.

* ``m.replace`` (modules/event_replacements.md): the most recent *valid* edit, formatted as a
  normal event; "most recent" is the largest ``origin_server_ts``, then the largest event id.
  Valid: same room, same sender, same type, neither event a state event, the original not
  itself an edit, and an ``m.new_content`` object (not checkable for encrypted edits).
  Not bundled for a redacted original; a redacted edit no longer counts.
* ``m.thread`` (modules/threading.md): ``latest_event`` (topologically latest reply, with
  its own aggregations), ``count`` and ``current_user_participated``.
* ``m.reference``: ``{"chunk": [{"event_id": …}, …]}``.

State events get no bundled aggregations; children the user may not see are left out.
The entry point for other areas (sync, search) is :func:`bundle_aggregations`.
"""
from __future__ import annotations

from typing import Any, Sequence

from store.events import EventStore, StoredEvent
from store.room_reads import RoomReads
from web.room_service import RoomService

MAX_REFERENCES = 200


def bundle_aggregations(svc: RoomService, events: Sequence[StoredEvent], user_id: str, *,
                        visibility: Any = None) -> dict[str, dict[str, Any]]:
    """event_id → the ``m.relations`` object for each event that has aggregations."""
    return bundle_for_store(svc.events, events, user_id, visibility=visibility)


def bundle_for_store(store: EventStore, events: Sequence[StoredEvent], user_id: str, *,
                     visibility: Any = None, nested: bool = True) -> dict[str, dict[str, Any]]:
    from web.visibility import Visibility

    parents = [se for se in events if "state_key" not in se.event]
    if not parents:
        return {}
    vis = visibility if visibility is not None else Visibility(store, user_id)
    reads = RoomReads(store.db)
    out: dict[str, dict[str, Any]] = {}
    _replacements(store, reads, vis, parents, user_id, out)
    _threads(store, reads, vis, parents, user_id, out, nested)
    _references(store, reads, vis, parents, out)
    return out


def _is_edit(se: StoredEvent) -> bool:
    rel = se.event.get("content", {}).get("m.relates_to")
    return isinstance(rel, dict) and rel.get("rel_type") == "m.replace"


def valid_edit(original: StoredEvent, edit: StoredEvent) -> bool:
    """The spec's validity rules for a replacement event."""
    o, e = original.event, edit.event
    if original.room_id != edit.room_id or o.get("sender") != e.get("sender"):
        return False
    if o.get("type") != e.get("type") or "state_key" in o or "state_key" in e:
        return False
    if _is_edit(original):
        return False
    if e.get("type") != "m.room.encrypted" and \
            not isinstance(e.get("content", {}).get("m.new_content"), dict):
        return False
    return True


def _format(store: EventStore, se: StoredEvent, user_id: str,
            relations: dict[str, Any] | None = None) -> dict[str, Any]:
    from web.client_events import client_event

    rv = store.room_version(se.room_id)
    assert rv is not None
    return client_event(store, se, rv, user_id=user_id, relations=relations or {})


def _replacements(store: EventStore, reads: RoomReads, vis: Any,
                  parents: Sequence[StoredEvent], user_id: str,
                  out: dict[str, dict[str, Any]]) -> None:
    originals = [se for se in parents if se.redacted_by is None and not _is_edit(se)]
    rows = reads.children_by_parent([se.event_id for se in originals], "m.replace")
    if not rows.ids:
        return
    edits = store.get_events(e for ids in rows.ids.values() for e in ids)
    for se in originals:
        cands = [edits[e] for e in rows.ids.get(se.event_id, []) if e in edits]
        cands = vis.filter(c for c in cands if valid_edit(se, c))
        if cands:
            latest = max(cands, key=lambda c: (int(c.event.get("origin_server_ts", 0)),
                                               c.event_id))
            out.setdefault(se.event_id, {})["m.replace"] = _format(store, latest, user_id)


def _threads(store: EventStore, reads: RoomReads, vis: Any, parents: Sequence[StoredEvent],
             user_id: str, out: dict[str, dict[str, Any]], nested: bool) -> None:
    summaries = reads.thread_summaries([se.event_id for se in parents], user_id)
    if not summaries:
        return
    replies = store.get_events(e for s in summaries.values() for e in s[2])
    latest_of: dict[str, StoredEvent] = {}
    for root_id, (_, _, ids) in summaries.items():
        visible = vis.filter(replies[e] for e in ids if e in replies)
        if visible:
            latest_of[root_id] = visible[0]
    inner = (bundle_for_store(store, list(latest_of.values()), user_id, visibility=vis,
                              nested=False) if nested and latest_of else {})
    for se in parents:
        summary = summaries.get(se.event_id)
        latest = latest_of.get(se.event_id)
        if summary is None or latest is None:
            continue
        count, mine, _ = summary
        out.setdefault(se.event_id, {})["m.thread"] = {
            "latest_event": _format(store, latest, user_id, inner.get(latest.event_id)),
            "count": count,
            "current_user_participated": mine or se.event.get("sender") == user_id,
        }


def _references(store: EventStore, reads: RoomReads, vis: Any,
                parents: Sequence[StoredEvent], out: dict[str, dict[str, Any]]) -> None:
    rows = reads.children_by_parent([se.event_id for se in parents], "m.reference",
                                    per_parent=MAX_REFERENCES)
    if not rows.ids:
        return
    refs = store.get_events(e for ids in rows.ids.values() for e in ids)
    for se in parents:
        ids = rows.ids.get(se.event_id)
        if not ids:
            continue
        visible = vis.filter(refs[e] for e in reversed(ids) if e in refs)
        if visible:
            out.setdefault(se.event_id, {})["m.reference"] = {
                "chunk": [{"event_id": r.event_id} for r in visible]}
