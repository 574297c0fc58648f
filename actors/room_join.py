"""Membership across servers, on the RoomActor's turn (server-server-api.md "Joining
Rooms", "Leaving Rooms (Rejecting Invites)", "Knocking"; client-server-api "Restricted
rooms").

* :func:`make_membership` — the resident side of make_join / make_leave / make_knock: an
  unsigned event template from the current state (prev_events = the forward extremities,
  auth_events for that membership), refused with the spec's errors when the user may not.
* :func:`join_from_remote` — the joining side: the room is created here from a send_join
  answer (the state before the join and its auth chain, already verified by
  ``federation/membership.py``): those events are stored as outliers, the state as a state
  group, and the join becomes the room's first timeline event.  A room already known here
  (a re-join after leaving) takes the join through the PDU path instead, with the answer's
  state as the state before it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from atrium.errors import MatrixError
from protocol import auth as protocol_auth
from protocol.events import auth_types_for_event, create_event_id_for_room_id
from protocol.ids import IdError, is_valid_user_id, server_of
from protocol.pdu_checks import check_pdu
from protocol.room_versions import KNOWN_ROOM_VERSIONS, EventFormat
from store.events import PersistItem

from actors.room_messages import JoinFromRemote, MakeMembership, Sent
from actors.room_pdus import PduBatch, Refused, refusal_error

if TYPE_CHECKING:
    from actors.room import RoomActor

MEMBERSHIPS = ("join", "leave", "knock")
MAX_PREV_EVENTS = 10


# ---------------------------------------------------------------------- make_*
def make_membership(actor: "RoomActor", msg: MakeMembership) -> dict[str, Any]:
    from actors.room import _StateView

    room = actor._require_room()   # 404 M_NOT_FOUND for a room unknown here
    rv = room.rv
    if msg.membership not in MEMBERSHIPS:
        raise MatrixError(400, "M_INVALID_PARAM", f"membership must be one of {MEMBERSHIPS}")
    if not is_valid_user_id(msg.user_id):
        raise MatrixError(400, "M_INVALID_PARAM", "not a user id")
    content: dict[str, Any] = dict(msg.content) if isinstance(msg.content, Mapping) else {}
    content["membership"] = msg.membership
    if msg.membership == "join":
        via = _restricted_authoriser(actor, msg.user_id)
        if via is not None:
            content["join_authorised_via_users_server"] = via
    uid = msg.user_id
    types = auth_types_for_event(rv, "m.room.member", uid, uid, content)
    auth_ids = [room.state[k] for k in sorted(types) if k in room.state]
    prev_ids = room.extremities[-MAX_PREV_EVENTS:]
    if rv.room_id_is_create_event_hash:
        create_id = create_event_id_for_room_id(actor.room_id)
        auth_ids = [a for a in auth_ids if a != create_id]
    template: dict[str, Any] = {
        "type": "m.room.member", "room_id": actor.room_id, "sender": uid, "state_key": uid,
        "content": content, "depth": room.depth + 1,
        "origin": actor.deps.server_name,
        "origin_server_ts": int(actor.deps.clock() * 1000),
        "prev_events": prev_ids, "auth_events": auth_ids,
    }
    view = _StateView(room.state, room.state_events, room.create)
    try:
        protocol_auth.check_auth(rv, template, view)
    except protocol_auth.AuthError as e:
        raise MatrixError(403, "M_FORBIDDEN", str(e)) from None
    if rv.event_format == EventFormat.V1:   # v1/v2 cite events as [id, {hashes}]
        refs = actor.deps.events.get_events(prev_ids + auth_ids)
        template["prev_events"] = [_ref(refs, e) for e in prev_ids]
        template["auth_events"] = [_ref(refs, e) for e in auth_ids]
    return {"room_version": rv.identifier, "event": template}


def _ref(stored: Mapping[str, Any], eid: str) -> list[Any]:
    se = stored.get(eid)
    hashes = se.event.get("hashes") if se is not None else None
    sha = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    return [eid, {"sha256": sha} if isinstance(sha, str) else {}]


def _restricted_authoriser(actor: "RoomActor", user_id: str) -> str | None:
    """For a join of a restricted room by a user neither joined nor invited: the local
    member who vouches (``join_authorised_via_users_server``), or the spec's 400s when this
    server cannot tell (``M_UNABLE_TO_AUTHORISE_JOIN``) or cannot vouch
    (``M_UNABLE_TO_GRANT_JOIN``).  ``None`` when the room needs no authorisation."""
    from actors.room_restricted import authorising_user

    room = actor.room
    assert room is not None
    rv = room.rv
    if not rv.restricted_join_rule:
        return None
    jr_id = room.state.get(("m.room.join_rules", ""))
    jr = room.state_events[jr_id].get("content", {}) if jr_id else {}
    rule = jr.get("join_rule")
    if rule != "restricted" and not (rule == "knock_restricted" and rv.knock_restricted_join_rule):
        return None
    mine_id = room.state.get(("m.room.member", user_id))
    mine = room.state_events[mine_id].get("content", {}).get("membership") if mine_id else None
    if mine in ("join", "invite"):
        return None
    allow = jr.get("allow")
    rooms = [a.get("room_id") for a in allow if isinstance(a, Mapping)
             and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)] \
        if isinstance(allow, list) else []
    events = actor.deps.events
    known = [r for r in rooms if events.room_version(r) is not None]
    if not known:
        raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN",
                          "This server knows none of the rooms that allow joining")
    via = authorising_user(events, rv, actor.room_id, room.state, room.state_events,
                           room.create, user_id, actor.deps.server_name)
    if via is not None:
        return via
    if not _joined_any(actor, user_id, known):
        raise MatrixError(403, "M_FORBIDDEN", "You are not in any room that allows joining")
    raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN",
                      "No user of this server can let you in; try another server")


def _joined_any(actor: "RoomActor", user_id: str, room_ids: list[str]) -> bool:
    marks = ",".join("?" * len(room_ids))
    return bool(actor.deps.db.run("joined_any", lambda t: t.query_value(
        "SELECT COUNT(*) FROM current_state WHERE type = 'm.room.member' AND state_key = ?"
        f" AND membership = 'join' AND room_id IN ({marks})", (user_id, *room_ids),
        default=0)))


# ---------------------------------------------------------------------- send_join answer
def join_from_remote(actor: "RoomActor", msg: JoinFromRemote) -> Sent:
    from actors.room import _Room

    rv = KNOWN_ROOM_VERSIONS.get(msg.room_version)
    if rv is None:
        raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION",
                          f"Room version {msg.room_version!r} is not supported")
    join = msg.join_event
    if not isinstance(join, Mapping) or not isinstance(join.get("event_id"), str):
        raise MatrixError(400, "M_BAD_JSON", "join_event is not an event")
    sender = join.get("sender")
    content = join.get("content")
    if (join.get("type") != "m.room.member" or join.get("state_key") != sender
            or not isinstance(content, Mapping) or content.get("membership") != "join"
            or join.get("room_id") != actor.room_id):
        raise MatrixError(400, "M_BAD_JSON", "join_event is not a join to this room")
    try:
        local = server_of(sender) == actor.deps.server_name
    except IdError:
        local = False
    if not local:
        raise MatrixError(400, "M_BAD_JSON", "join_event is not a join of a local user")
    state_events = [e for e in msg.state if isinstance(e, Mapping)
                    and isinstance(e.get("event_id"), str) and isinstance(e.get("state_key"), str)
                    and e.get("room_id") == actor.room_id]
    state = {(e["type"], e["state_key"]): e["event_id"] for e in state_events}
    if actor.room is not None:
        return _rejoin(actor, msg, state)
    by_id: dict[str, Mapping[str, Any]] = {}
    for e in list(msg.auth_chain) + state_events:
        if isinstance(e, Mapping) and isinstance(e.get("event_id"), str) \
                and e.get("room_id") == actor.room_id:
            by_id.setdefault(e["event_id"], e)
    create_id = state.get(("m.room.create", ""))
    create = by_id.get(create_id) if create_id else None
    if create is None or create.get("content", {}).get("room_version", "1") != rv.identifier:
        raise MatrixError(400, "M_BAD_JSON", "the state has no create event of that version")
    if rv.room_id_is_create_event_hash and create_event_id_for_room_id(actor.room_id) != create_id:
        raise MatrixError(400, "M_BAD_JSON", "the create event is not this room's")
    # auth the join against the state before it (the events here were verified by the caller)
    verdict = check_pdu(rv, join, verify_signatures=lambda _e, _s: True,
                        get_event=lambda i: by_id.get(i),  # type: ignore[arg-type,return-value]
                        state_before=lambda _e: {k: by_id[i] for k, i in state.items()
                                                 if i in by_id},
                        current_state=lambda _e: None)
    if not verdict.accepted:
        raise MatrixError(403, "M_FORBIDDEN", f"the join is not allowed: {verdict.reason}")
    tentative = _Room(rv, dict(create), {}, {}, [], 0, None)
    batch = PduBatch(actor, tentative)
    batch.stage_outliers(by_id.values(), check=False)
    missing = [i for i in state.values() if batch.lookup(i) is None]
    if missing:
        raise MatrixError(400, "M_BAD_JSON", f"{len(missing)} state events are not usable")
    before_gid = batch.new_group(state, None)
    ev = dict(verdict.event)
    ev.pop("unsigned", None)
    key = ("m.room.member", sender)
    if key in state:
        ev["unsigned"] = {"replaces_state": state[key]}
    after = dict(state)
    after[key] = ev["event_id"]
    after_gid = batch.new_group(after, before_gid)
    pending = batch._stage(PersistItem(event=ev, stream_ordering=0, state_group=after_gid))
    batch.hooked.append(pending)
    room = batch.room
    batch._set_current(after, after_gid)
    room.extremities = [ev["event_id"]]
    room.depth = int(ev.get("depth", 0))
    creator = create.get("content", {}).get("creator")   # v1-v10; the sender since v11
    creator = creator if isinstance(creator, str) else create.get("sender")
    actor._commit_batch(batch, new_room=(rv.identifier, creator))
    return Sent(ev["event_id"], pending.item.stream_ordering)


def _rejoin(actor: "RoomActor", msg: JoinFromRemote, state: dict[tuple[str, str], str]) -> Sent:
    """The room is known here (we left it, or still hold it): the join goes through the PDU
    path with the answer's state as the state before it, and becomes the only extremity."""
    room = actor.room
    assert room is not None
    if room.rv.identifier != msg.room_version:
        raise MatrixError(400, "M_BAD_JSON", "room version differs from the one stored")
    join = msg.join_event
    batch = PduBatch(actor, room.copy(), strict=True, replace_extremities=True)
    batch.prefetch([join, *msg.state, *msg.auth_chain])
    batch.stage_outliers(tuple(msg.auth_chain) + tuple(msg.state))
    try:
        result = batch.process(join, state)
    except Refused as r:
        raise refusal_error(r.result) from None
    if result.outcome == "duplicate":
        stored = actor.deps.events.get_event(join["event_id"])
        return Sent(join["event_id"], stored.stream_ordering if stored else 0, True)
    actor._commit_batch(batch)
    return Sent(join["event_id"], batch.hooked[-1].item.stream_ordering)

