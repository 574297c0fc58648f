"""``GET /sync`` (client-server-api "Syncing"): compute the answer from the store since the
token; if it is empty and ``timeout`` > 0, wait on the notifier until a stream moves for this
user (or the timeout ends) and compute again.  No polling: an idle long-poll is one greenlet
blocked on one ``gevent.event.Event``.

This module assembles the top level — global account data, presence, to-device, device
lists, key counts — around the rooms part (web/sync_rooms.py).  The endpoint is served in
front of Flask (web/sync_endpoint.py).
"""
from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any, Callable

from flask import Flask

from atrium.errors import MatrixError
from store.to_device import MAX_PER_SYNC
from web.auth import Requester
from web.filters import SyncFilter, resolve_filter
from web.http import parse_bool, parse_int
from web.sync_caches import LRU
from web.sync_rooms import account_data_rows, rooms_section
from web.sync_timeline import SyncContext
from web.sync_token import SyncToken

from actors.user_messages import AckToDevice, SyncStarted

try:  # the E2EE engineer's key counts; {} / [] until store/e2e_keys.py exists
    from store import e2e_keys as _e2e  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _e2e = None

MAX_TIMEOUT_MS = 300_000
PRESENCE_STATES = ("online", "offline", "unavailable")
INLINE_FILTERS = 1_024


def register(app: Flask, runtime: Any) -> None:
    from web.sync_endpoint import SyncEndpoint

    # the bound method, not the instance: see web/app.py create_app
    app.wsgi_app = SyncEndpoint(app.wsgi_app, runtime).__call__  # type: ignore[method-assign]
    # (rule, method, endpoint) of what is served outside Flask's url_map (route listings)
    runtime.parts.setdefault("outside_flask", []).append(
        ("/_matrix/client/v3/sync", "GET", "sync.get_sync"))


def get_sync(runtime: Any, req: Requester, arg: Callable[[str], str | None]
             ) -> Callable[[], dict[str, Any]]:
    """GET /_matrix/client/v3/sync for the authenticated ``req``; ``arg(name)`` is the
    first value of a query parameter (None when absent).  Checks the parameters and
    returns the call that computes (and waits for) the answer, which holds only what they
    were parsed into: the query need not stay in memory while the /sync waits."""
    svc = runtime.parts["sync"]
    raw_since = arg("since")
    since = SyncToken.decode(raw_since) if raw_since else None
    timeout_ms = parse_int("timeout", arg("timeout"), 0, minimum=0,
                           maximum=MAX_TIMEOUT_MS) or 0
    full_state = parse_bool("full_state", arg("full_state"))
    given = arg("set_presence")
    set_presence = "online" if given is None else given
    if set_presence not in PRESENCE_STATES:
        raise MatrixError(400, "M_INVALID_PARAM", f"Invalid set_presence {set_presence!r}")
    filt = _filter(runtime, req.user_id, arg("filter"))
    if svc.presence_enabled and set_presence != "offline":  # before computing: a change
        # shows in this very answer; "offline" syncs do not count as connected
        svc.hint_user(req.user_id, SyncStarted(set_presence=set_presence,
                                               timeout_ms=timeout_ms))
    return partial(sync_wait, svc, req.user_id, req.device_id, since, filt, full_state,
                   timeout_ms)


_inline_filters: LRU[str, SyncFilter] = LRU(INLINE_FILTERS)


def _filter(runtime: Any, user_id: str, param: str | None) -> SyncFilter:
    """resolve_filter, with inline JSON filters parsed once: a client sends the same one
    with every /sync, and parsed filters are never modified (stored ones are shared too)."""
    if not param or not param.lstrip().startswith("{"):
        return resolve_filter(runtime, user_id, param)
    filt = _inline_filters.get(param)
    if filt is None:
        filt = resolve_filter(runtime, user_id, param)  # raises on a bad one: not cached
        _inline_filters.put(param, filt)
    return filt


def sync_wait(svc: Any, user_id: str, device_id: str | None, since: SyncToken | None,
              filt: SyncFilter, full_state: bool, timeout_ms: int) -> dict[str, Any]:
    """Compute; while empty, sleep on the notifier until woken or the timeout ends.

    A client polls again with the ``next_batch`` it was just given: when every stream is
    still at that token (and the device has no to-device message to acknowledge), the
    answer is known to be empty and the poll parks without computing it; the checks
    happen after the waiter is armed, so a stream moving right after them wakes it."""
    waiter = None
    if since is not None and timeout_ms > 0 and not full_state:
        waiter = svc.notifier.register(user_id)  # before computing: no wake-up is lost
    deadline = time.monotonic() + timeout_ms / 1000.0
    try:
        first = True
        kept: tuple[str, dict[str, int], list[str]] | None = None
        while True:
            if waiter is not None:
                waiter.event.clear()
            quiet = first and waiter is not None and _nothing_new(svc, user_id, device_id,
                                                                  since)
            first = False
            if not quiet:
                body, empty = compute_sync(svc, user_id, device_id, since, filt, full_state)
                if waiter is None or not empty:
                    return body
                # held while asleep: only what differs between empty answers (an idle
                # sync should cost little more than its connection)
                kept = (body["next_batch"], body["device_one_time_keys_count"],
                        body["device_unused_fallback_key_types"])
                del body
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiter.wait(remaining) or svc.notifier.closed:
                # timed out, or the server is shutting down
                if kept is None:  # parked without an answer (quiet): read the key counts now
                    assert since is not None
                    kept = (since.encode(), _key_counts(svc, user_id, device_id),
                            _fallback_types(svc, user_id, device_id))
                return _empty_body(*kept)
    finally:
        if waiter is not None:
            svc.notifier.unregister(waiter)


def _nothing_new(svc: Any, user_id: str, device_id: str | None,
                 since: SyncToken | None) -> bool:
    """Whether an incremental answer from ``since`` is empty without computing it: every
    stream's position is the token's, and the device's to-device inbox needs neither an
    acknowledgement nor a first read from the store."""
    if since is None or svc.current_token() != since:
        return False
    if device_id is None:
        return True
    key = (user_id, device_id)
    return key not in svc.td_unacked and bool(svc.td_checked.get(key))


def compute_sync(svc: Any, user_id: str, device_id: str | None, since: SyncToken | None,
                 filt: SyncFilter, full_state: bool) -> tuple[dict[str, Any], bool]:
    """One /sync answer at the current positions; (body, whether it carries nothing new)."""
    upto = svc.current_token()
    if since is not None:
        upto = upto.max(since)
    lazy = svc.lazy_cache(user_id, device_id)
    if since is None:
        lazy.clear()  # a fresh sync: the device has no members yet
    to_device, upto = _to_device(svc, user_id, device_id, since, upto)
    ctx = SyncContext(svc=svc, user_id=user_id, device_id=device_id, since=since, upto=upto,
                      filter=filt, full_state=full_state,
                      ignored=svc.ignored_users(user_id), lazy_sent=lazy)
    rooms = rooms_section(ctx)
    account_data = [{"type": t, "content": c} for r, t, c in account_data_rows(ctx)
                    if not r and filt.account_data.matches_type(t)]
    if filt.account_data.limit is not None:
        account_data = account_data[:filt.account_data.limit]
    presence = _presence(ctx)
    device_lists = _device_lists(ctx, rooms)
    body: dict[str, Any] = {
        "next_batch": upto.encode(),
        "rooms": rooms,
        "presence": {"events": presence},
        "account_data": {"events": account_data},
        "to_device": {"events": to_device},
        "device_lists": device_lists,
        "device_one_time_keys_count": _key_counts(svc, user_id, device_id),
        "device_unused_fallback_key_types": _fallback_types(svc, user_id, device_id),
    }
    empty = not (any(rooms.values()) or presence or account_data or to_device
                 or device_lists["changed"] or device_lists["left"])
    return body, empty


def _empty_body(next_batch: str, key_counts: dict[str, int], fallback_types: list[str]
                ) -> dict[str, Any]:
    """The answer when nothing moved for the user: every section empty."""
    return {"next_batch": next_batch,
            "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
            "presence": {"events": []}, "account_data": {"events": []},
            "to_device": {"events": []}, "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": key_counts,
            "device_unused_fallback_key_types": fallback_types}


def _to_device(svc: Any, user_id: str, device_id: str | None, since: SyncToken | None,
               upto: SyncToken) -> tuple[list[dict[str, Any]], SyncToken]:
    """Pending messages of this device; acknowledged ones (<= since) are deleted through the
    user's actor.  At most MAX_PER_SYNC per answer: next_batch then stops at the last one."""
    if device_id is None:
        return [], upto
    key = (user_id, device_id)
    since_td = since.to_device if since is not None else None
    unacked = svc.td_unacked.get(key)
    if since_td is not None and unacked is not None and since_td >= unacked[0]:
        svc.tell_user(user_id, AckToDevice(device_id=device_id, upto=since_td))
        if since_td >= unacked[1]:
            del svc.td_unacked[key]
        else:
            svc.td_unacked[key] = (since_td + 1, unacked[1])
    checked = svc.td_checked.get(key)
    if checked and since_td is not None and since_td >= upto.to_device:
        return [], upto  # nothing new for anyone since the token
    msgs, acked = svc.to_device.fetch(user_id, device_id, since_td, upto.to_device)
    svc.td_checked.put(key, True)
    if acked and since_td is not None and unacked is None:
        svc.tell_user(user_id, AckToDevice(device_id=device_id, upto=since_td))
    if msgs:
        low, high = svc.td_unacked.get(key, (msgs[0].stream_id, msgs[-1].stream_id))
        svc.td_unacked[key] = (min(low, msgs[0].stream_id), max(high, msgs[-1].stream_id))
    if len(msgs) >= MAX_PER_SYNC:
        upto = replace(upto, to_device=msgs[-1].stream_id)
    return [{"sender": m.sender, "type": m.type, "content": m.content} for m in msgs], upto


def _presence(ctx: SyncContext) -> list[dict[str, Any]]:
    svc, f = ctx.svc, ctx.filter.presence
    if not svc.presence_enabled or f.excludes_all or not f.matches_type("m.presence"):
        return []
    since = ctx.since.presence if ctx.since is not None else None
    newly: list[str] = ctx.cache.get("newly_joined", [])
    if since is not None and since >= ctx.upto.presence and not newly:
        return []
    rows = []
    if since is None or since < ctx.upto.presence:
        audience = svc.store.joined_members(svc.store.joined_rooms(ctx.user_id)) | {ctx.user_id}
        rows = svc.presence.changed(audience, since, ctx.upto.presence)
    if newly:
        # rooms joined since the token: their members' presence, changed or not (as
        # Synapse): the client has not seen it before
        seen = {row.user_id for row in rows}
        extra = svc.store.joined_members(newly) - seen - {ctx.user_id}
        rows += svc.presence.changed(extra, None, ctx.upto.presence)
    out = []
    for row in rows:
        if not f.matches_sender(row.user_id):
            continue
        content: dict[str, Any] = {"presence": row.state,
                                   "last_active_ago": max(0, ctx.now_ms - row.last_active_ts)}
        if row.state == "online":
            content["currently_active"] = row.currently_active
        if row.status_msg is not None:
            content["status_msg"] = row.status_msg
        out.append({"type": "m.presence", "sender": row.user_id, "content": content})
    return out[:f.limit] if f.limit is not None else out


def _device_lists(ctx: SyncContext, rooms: dict[str, Any]) -> dict[str, list[str]]:
    """end_to_end_encryption.md: users whose devices changed (or who newly share a room with
    us) and users we no longer share any room with.  Empty on an initial sync."""
    since = ctx.since
    if since is None:
        return {"changed": [], "left": []}
    svc, upto, me = ctx.svc, ctx.upto, ctx.user_id
    dl_moved = since.device_lists < upto.device_lists
    member_moves: list[tuple[str, str, str]] = []
    if since.events < upto.events:
        history = svc.memberships.get(me, upto.events)
        mine = {r for r, ms in history.items() if ms[-1].membership == "join"
                or ms[-1].stream_ordering > since.events}
        if svc.positions.members_moved(mine, since.events) is not False:
            member_moves = svc.store.membership_changes(mine, since.events, upto.events)
    if not dl_moved and not member_moves:
        return {"changed": [], "left": []}
    shared = svc.store.joined_members(svc.store.joined_rooms(me)) | {me}
    changed: set[str] = set()
    left: set[str] = set()
    if dl_moved:
        changed |= svc.device_lists.changed_users(since.device_lists, upto.device_lists) & shared
    for room_id, user, membership in member_moves:
        if user == me:
            if membership == "join":
                changed |= svc.store.members_of(room_id) - {me}
            elif membership in ("leave", "ban"):
                left |= {u for u in svc.store.members_of(room_id) if u not in shared}
        elif membership == "join" and user in shared:
            changed.add(user)
        elif membership in ("leave", "ban") and user not in shared:
            left.add(user)
    changed -= left
    return {"changed": sorted(changed), "left": sorted(left - {me})}


def _key_counts(svc: Any, user_id: str, device_id: str | None) -> dict[str, int]:
    fn = getattr(_e2e, "one_time_keys_count", None)
    if fn is None or device_id is None:
        return {}
    return dict(fn(svc.db, user_id, device_id))


def _fallback_types(svc: Any, user_id: str, device_id: str | None) -> list[str]:
    fn = getattr(_e2e, "unused_fallback_key_types", None)
    if fn is None or device_id is None:
        return []
    return list(fn(svc.db, user_id, device_id))
