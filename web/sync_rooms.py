"""The ``rooms`` part of a /sync answer: ``join``, ``invite``, ``leave`` and ``knock``.

Which section a room lands in follows the user's last membership event at the ``upto``
position (store/sync.py).  A room (re)joined since ``since`` (or any room on an initial or
``full_state`` sync) gets its full state; a (re)joined one also gets its recent history as
on an initial sync (what the user may see, ``limited`` when there is more) and its members'
presence (web/sync.py); other joined rooms appear only when something moved in them (events,
typing, receipts, room account data).  Rooms left since ``since`` get their timeline up to
the leave event (with full state when they were joined only within the batch); left rooms
appear on an initial sync only with ``include_leave``.  Invites and knocks carry stripped state (client-server-api "Stripped
state"); invites from ignored users are dropped (modules/ignore_users.md).

Rooms we do not take part in (an invite received over federation, a knock made through
another server, and their rejection: ``store/remote_invites.py``) have no room history
here; their latest row is shown in ``invite`` / ``knock`` / ``leave`` with the stripped
state that came with it, unless the room's own history for the user is newer (e.g. the
join that accepted the invite).
"""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any, Callable

import gevent.pool

from store.events import StoredEvent
from store.receipts import Receipt
from store.remote_invites import RemoteMembership
from store.sync import Membership
from web.sync_timeline import (MEMBER, SyncContext, format_state, remember_members,
                               state_section, timeline)

try:  # the push engineer's notification counts; placeholders until store/push.py exists
    from store import push as _push  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on what else is installed in the tree
    _push = None

STRIPPED_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
                  "m.room.canonical_alias", "m.room.encryption")
PRIVATE_RECEIPT = "m.read.private"
ROOM_WORKERS = 8


def rooms_section(ctx: SyncContext) -> dict[str, dict[str, Any]]:
    svc, f = ctx.svc, ctx.filter
    upto = ctx.upto
    since_ev = ctx.since_ev
    history = svc.memberships.get(ctx.user_id, upto.events)
    out: dict[str, dict[str, Any]] = {"join": {}, "invite": {}, "leave": {}, "knock": {}}
    if f.timeline.excludes_all and f.state.excludes_all and f.ephemeral.excludes_all \
            and f.room_account_data.excludes_all:
        return out
    joined = [r for r, ms in history.items() if ms[-1].membership == "join"
              and f.matches_room(r)]
    moved = _moved_test(ctx)
    receipts = _receipts_by_room(ctx, joined)
    room_ad = _room_account_data(ctx)
    forgotten: set[str] | None = None
    jobs: list[tuple[str, str, Callable[[], dict[str, Any] | None]]] = []
    remote = _remote_rows(ctx, history)
    for room_id, ms in history.items():
        if not f.matches_room(room_id):
            continue
        if remote and room_id in remote:
            continue   # a newer membership made through another server (below)
        last = ms[-1]
        changed = since_ev is None or last.stream_ordering > since_ev
        at_since = _membership_at(ms, since_ev)
        if last.membership == "join":
            newly = _newly_joined(ms, since_ev, at_since)
            full = newly or ctx.full_state
            if not full and not moved(room_id) and room_id not in receipts \
                    and room_id not in room_ad \
                    and svc.typing.typing(room_id, ctx.since.typing, upto.typing) is None:
                continue
            if newly and since_ev is not None:
                ctx.cache.setdefault("newly_joined", []).append(room_id)  # their presence
            jobs.append(("join", room_id, partial(
                _joined_room, ctx, room_id, ms, full, newly, receipts.get(room_id, []),
                room_ad.get(room_id, []))))
        elif last.membership == "invite" and changed:
            jobs.append(("invite", room_id,
                         partial(_stripped_room, ctx, room_id, last, "invite_state")))
        elif last.membership == "knock" and changed:
            jobs.append(("knock", room_id,
                         partial(_stripped_room, ctx, room_id, last, "knock_state")))
        elif last.membership in ("leave", "ban"):
            if not (changed and since_ev is not None) and not f.include_leave:
                continue
            if since_ev is not None and not changed and not ctx.full_state:
                continue
            if forgotten is None:
                forgotten = svc.store.forgotten_rooms(ctx.user_id)
            if room_id in forgotten:
                continue
            jobs.append(("leave", room_id,
                         partial(_left_room, ctx, room_id, ms, room_ad.get(room_id, []))))
    if remote:
        _remote_jobs(ctx, remote, jobs)
    for (section, room_id, _), room in zip(jobs, _run_jobs([job for _, _, job in jobs])):
        if room is not None:
            out[section][room_id] = room
    return out


def _remote_rows(ctx: SyncContext, history: dict[str, list[Membership]]
                 ) -> dict[str, RemoteMembership]:
    """room → the user's newest membership made through another server, where the room's
    own history for the user is not newer (nothing read for users without such rows)."""
    store = getattr(ctx.svc.rooms, "remote_invites", None)
    if store is None:
        return {}
    out = {}
    for room_id, row in store.latest(ctx.user_id, ctx.upto.events).items():
        ms = history.get(room_id)
        if ms and (ms[-1].stream_ordering > row.stream_ordering or ms[-1].membership == "join"):
            continue
        out[room_id] = row
    return out


def _remote_jobs(ctx: SyncContext, remote: dict[str, RemoteMembership],
                 jobs: list[tuple[str, str, Callable[[], dict[str, Any] | None]]]) -> None:
    f = ctx.filter
    since_ev = ctx.since_ev
    forgotten: set[str] | None = None
    for room_id, row in remote.items():
        if not f.matches_room(room_id):
            continue
        changed = since_ev is None or row.stream_ordering > since_ev
        if row.membership in ("invite", "knock"):
            if not changed or (row.membership == "invite" and row.sender in ctx.ignored):
                continue
            key = "invite_state" if row.membership == "invite" else "knock_state"
            events = [_stripped(e) for e in row.stripped_state if isinstance(e, dict)
                      and isinstance(e.get("type"), str)]
            events.append(_stripped(row.event))
            room = {key: {"events": events}}
            jobs.append((row.membership, room_id, lambda room=room: room))
        elif row.membership == "leave":
            if not (changed and since_ev is not None) and not f.include_leave:
                continue
            if since_ev is not None and not changed and not ctx.full_state:
                continue
            if forgotten is None:
                forgotten = ctx.svc.store.forgotten_rooms(ctx.user_id)
            if room_id in forgotten:
                continue
            jobs.append(("leave", room_id, partial(_remote_left, ctx, row)))


def _remote_left(ctx: SyncContext, row: RemoteMembership) -> dict[str, Any]:
    """A rejected remote invite / rescinded knock: the leave event is the timeline."""
    from protocol.room_versions import KNOWN_ROOM_VERSIONS

    rv = KNOWN_ROOM_VERSIONS.get(row.room_version)
    events = []
    if rv is not None:
        se = StoredEvent(event=row.event, room_id=row.room_id,
                         stream_ordering=row.stream_ordering, state_group=None, outlier=True,
                         rejection=None, soft_failed=False, redacted_by=None, txn_device=None,
                         txn_id=None)
        events.append(ctx.format(se, rv))
    return {"timeline": {"events": events, "limited": False},
            "state": {"events": []}, "account_data": {"events": []}}


def _run_jobs(jobs: list[Callable[[], dict[str, Any] | None]]) -> list[dict[str, Any] | None]:
    """Each room's part; several rooms (an initial sync) side by side in a few greenlets, so
    their reads overlap on the database's connections and the unread counts of rooms
    reached in the same loop turn are read in one transaction."""
    if len(jobs) <= 1:
        return [job() for job in jobs]
    pool = gevent.pool.Pool(min(ROOM_WORKERS, len(jobs)))
    try:
        return list(pool.imap(lambda job: job(), jobs))
    except BaseException:
        pool.kill(block=False)  # one room failed the answer: the others are not needed
        raise


def _moved_test(ctx: SyncContext) -> Any:
    """room → did it get events since the token (from memory when possible)."""
    since_ev = ctx.since_ev
    if since_ev is None or since_ev >= ctx.upto.events:
        return lambda room_id: False
    test = ctx.svc.positions.moved_since(since_ev, ctx.upto.events)
    if test is None:
        moved = ctx.svc.store.rooms_with_events(since_ev, ctx.upto.events)
        return moved.__contains__
    return test


def _membership_at(ms: list[Membership], pos: int | None) -> Membership | None:
    if pos is None:
        return None
    found = None
    for m in ms:
        if m.stream_ordering > pos:
            break
        found = m
    return found


def _newly_joined(ms: list[Membership], since_ev: int | None,
                  at_since: Membership | None) -> bool:
    """Whether the user (re)joined since the token: not joined at ``since``, or some other
    membership since (left and came back).  Such a room is new to the client: full state and
    the recent history the user may see, not only what happened since the token."""
    if since_ev is None or at_since is None or at_since.membership != "join":
        return True
    return any(m.stream_ordering > since_ev and m.membership != "join" for m in ms)


def _visible_from(ms: list[Membership]) -> int | None:
    """Stream position from which the user was continuously joined (None: never joined)."""
    start = None
    for m in ms:
        if m.membership == "join":
            if start is None:
                start = m.stream_ordering
        else:
            start = None
    if start is None:
        # left since: events up to the leave were seen while joined from the last join on
        for m in reversed(ms):
            if m.membership == "join":
                return m.stream_ordering
    return start


def _joined_room(ctx: SyncContext, room_id: str, ms: list[Membership], full: bool,
                 newly: bool, receipts: list[Receipt], account_data: list[dict[str, Any]]
                 ) -> dict[str, Any] | None:
    svc, upto = ctx.svc, ctx.upto
    rv = svc.rooms.room_version(room_id)
    if rv is None:
        return None
    since_ev = ctx.since_ev
    # a newly joined room's timeline is its recent history, not only the join (limited
    # when there is more, as for an initial sync)
    lo = since_ev if since_ev is not None and not newly else 0
    tl = timeline(ctx, room_id, lo, upto.events, _visible_from(ms))
    summary = None
    membership_moved = full or any(se.event.get("type") == MEMBER for se in tl.events)
    heroes: list[str] = []
    state_ids = state_section(ctx, room_id, tl, upto.events, full)
    if membership_moved or any(k[0] == MEMBER for k in state_ids):
        summary, heroes = _summary(ctx, room_id)
        if ctx.filter.lazy_load_members and heroes:
            state_ids = state_section(ctx, room_id, tl, upto.events, full, heroes)
    ephemeral = _ephemeral(ctx, room_id, receipts)
    if not full and not tl.events and not state_ids and not ephemeral and not account_data:
        return None
    if ctx.filter.lazy_load_members:
        remember_members(ctx, room_id, state_ids, tl)
    room: dict[str, Any] = {
        "timeline": {"events": [ctx.format(se, rv) for se in tl.events],
                     "limited": tl.limited, "prev_batch": tl.prev_batch},
        "state": {"events": format_state(ctx, state_ids, rv)},
        "ephemeral": {"events": ephemeral},
        "account_data": {"events": account_data},
        "unread_notifications": {"notification_count": 0, "highlight_count": 0},
    }
    if summary is not None:
        room["summary"] = summary
    _unread(ctx, room_id, room)
    return room


def _left_room(ctx: SyncContext, room_id: str, ms: list[Membership],
               account_data: list[dict[str, Any]]) -> dict[str, Any]:
    svc = ctx.svc
    rv = svc.rooms.room_version(room_id)
    last = ms[-1]
    since_ev = ctx.since_ev
    # joined (and left again) since the token: the client never had this room's state
    at_since = _membership_at(ms, since_ev)
    newly = since_ev is not None and (at_since is None or at_since.membership != "join") \
        and any(m.membership == "join" and m.stream_ordering > since_ev for m in ms)
    full = since_ev is None or ctx.full_state or newly
    lo = since_ev if since_ev is not None and not newly else 0
    if rv is None:
        return {"timeline": {"events": [], "limited": False}, "state": {"events": []},
                "account_data": {"events": account_data}}
    tl = timeline(ctx, room_id, min(lo, last.stream_ordering - 1), last.stream_ordering,
                  _visible_from(ms))
    state_ids = state_section(ctx, room_id, tl, last.stream_ordering, full)
    return {
        "timeline": {"events": [ctx.format(se, rv) for se in tl.events],
                     "limited": tl.limited, "prev_batch": tl.prev_batch},
        "state": {"events": format_state(ctx, state_ids, rv)},
        "account_data": {"events": account_data},
    }


def _stripped(ev: dict[str, Any]) -> dict[str, Any]:
    return {"type": ev["type"], "state_key": ev.get("state_key", ""),
            "content": ev.get("content", {}), "sender": ev["sender"]}


def _stripped_room(ctx: SyncContext, room_id: str, m: Membership, key: str
                   ) -> dict[str, Any] | None:
    svc = ctx.svc
    own = svc.events.get_event(m.event_id)
    if own is None:
        return None
    sender = own.event["sender"]
    if key == "invite_state" and sender in ctx.ignored:
        return None
    state = svc.store.state_at(room_id, m.stream_ordering)
    ids = [state[(t, "")] for t in STRIPPED_TYPES if (t, "") in state]
    if (MEMBER, sender) in state and sender != ctx.user_id:
        ids.append(state[(MEMBER, sender)])
    found = svc.events.get_events(ids)
    events = [_stripped(found[e].event) for e in ids if e in found]
    events.append(_stripped(own.event))
    return {key: {"events": events}}


def _summary(ctx: SyncContext, room_id: str) -> tuple[dict[str, Any], list[str]]:
    rows = ctx.svc.store.member_summary(room_id)
    joined = sum(1 for _, m, _ in rows if m == "join")
    invited = sum(1 for _, m, _ in rows if m == "invite")
    summary: dict[str, Any] = {"m.joined_member_count": joined,
                               "m.invited_member_count": invited}
    if _has_name(ctx, room_id):
        return summary, []  # heroes are only needed to name an unnamed room
    heroes = [u for u, m, _ in rows if m in ("join", "invite") and u != ctx.user_id][:5]
    if not heroes:
        heroes = [u for u, m, _ in rows if m in ("leave", "ban") and u != ctx.user_id][:5]
    summary["m.heroes"] = heroes
    return summary, heroes


def _has_name(ctx: SyncContext, room_id: str) -> bool:
    ids = ctx.svc.store.name_event_ids(room_id)
    for se in ctx.svc.events.get_events(ids).values():
        content = se.event.get("content") or {}
        if content.get("name") or content.get("alias"):
            return True
    return False


def _receipts_by_room(ctx: SyncContext, joined: list[str]) -> dict[str, list[Receipt]]:
    f = ctx.filter.ephemeral
    if not f.matches_type("m.receipt") or not joined:
        return {}
    since = ctx.since.receipts if ctx.since is not None else None
    if since is not None and since >= ctx.upto.receipts:
        return {}
    by_room: dict[str, list[Receipt]] = defaultdict(list)
    for r in ctx.svc.receipts.changed(joined, since, ctx.upto.receipts):
        if r.receipt_type == PRIVATE_RECEIPT and r.user_id != ctx.user_id:
            continue  # modules/receipts.md: private receipts go to their owner only
        if not f.matches_sender(r.user_id):
            continue
        by_room[r.room_id].append(r)
    return by_room


def _ephemeral(ctx: SyncContext, room_id: str, receipts: list[Receipt]) -> list[dict[str, Any]]:
    f = ctx.filter.ephemeral
    out: list[dict[str, Any]] = []
    if f.matches_type("m.typing"):
        since = ctx.since.typing if ctx.since is not None else None
        users = ctx.svc.typing.typing(room_id, since, ctx.upto.typing)
        if users is not None:
            out.append({"type": "m.typing", "content": {"user_ids": users}})
    if receipts:
        content: dict[str, Any] = {}
        for r in receipts:
            entry: dict[str, Any] = {"ts": r.ts}
            if r.thread_id:
                entry["thread_id"] = r.thread_id
            content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = entry
        out.append({"type": "m.receipt", "content": content})
    if f.limit is not None:
        out = out[:f.limit]
    return out


def account_data_rows(ctx: SyncContext) -> list[tuple[str, str, dict[str, Any]]]:
    """(room_id or '', type, content) changed since the token (read once per answer)."""
    rows = ctx.cache.get("account_data")
    if rows is None:
        since = ctx.since.account_data if ctx.since is not None else None
        rows = [] if since is not None and since >= ctx.upto.account_data else \
            ctx.svc.account_data.changed(ctx.user_id, since, ctx.upto.account_data)
        ctx.cache["account_data"] = rows
    return rows


def _room_account_data(ctx: SyncContext) -> dict[str, list[dict[str, Any]]]:
    f = ctx.filter.room_account_data
    by_room: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for room_id, type_, content in account_data_rows(ctx):
        if room_id and f.matches_type(type_) and f.matches_room(room_id):
            by_room[room_id].append({"type": type_, "content": content})
    return by_room


def _unread(ctx: SyncContext, room_id: str, room: dict[str, Any]) -> None:
    if _push is None or not hasattr(_push, "unread_counts"):
        return
    counts = _push.unread_counts(ctx.svc.db, ctx.user_id, room_id)
    if not isinstance(counts, dict):
        return
    threaded = ctx.filter.timeline.unread_thread_notifications
    main = counts.get("main_timeline") if threaded else None
    src = main if isinstance(main, dict) else counts
    room["unread_notifications"] = {"notification_count": src.get("notification_count", 0),
                                    "highlight_count": src.get("highlight_count", 0)}
    threads = counts.get("unread_thread_notifications")
    if threaded and threads:
        room["unread_thread_notifications"] = threads
