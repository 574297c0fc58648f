"""Sending and reading room events: ``send``, ``state`` (PUT/GET), ``redact``,
``event/{eventId}``, ``members``, ``joined_members`` (client-server-api "Room events")."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError
from protocol.ids import is_valid_room_id
from web.auth import Requester, require_auth
from web.client_events import client_event
from web.guest_access import guest_member_state
from web.http import json_body
from web.room_service import RoomService
from web.synapse_admin_users import fake_event_id

from actors.room_messages import EventSpec

P = "/_matrix/client/v3"


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    config = runtime.config
    ratelimiter = runtime.ratelimiter
    bp = Blueprint("room_events", __name__)

    def room(room_id: str):  # type: ignore[no-untyped-def]
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid room id {room_id!r}")
        return svc.require_room(room_id)

    def require_joined(req: Requester, room_id: str) -> None:
        m, _ = svc.membership(room_id, req.user_id)
        if m != "join":
            raise MatrixError(403, "M_FORBIDDEN", "You are not joined to this room")

    def send(req: Requester, room_id: str, spec: EventSpec, txn_id: str | None,
             redacts: str | None = None) -> Any:
        room(room_id)
        _check_indexed_fields(spec.content)
        policy = runtime.parts["user_policy"]  # web/synapse_admin.py: shadow-bans, overrides
        if policy.is_shadow_banned(req.user_id) and (
                spec.type != "m.room.member" or spec.content.get("membership") == "invite"):
            policy.shadow_ban_wait()   # as Synapse: 1–10 s, so the timing tells nothing
            return jsonify({"event_id": fake_event_id()})  # as Synapse: looks sent, is not
        if not req.is_admin:
            ratelimiter.check("message", req.user_id,
                              policy.message_limit(req.user_id, config.rc_message))
        txn = (req.device_id or "", txn_id) if txn_id is not None else None
        sent = svc.send(room_id, spec, txn=txn, redacts=redacts)
        return jsonify({"event_id": sent.event_id})

    @bp.put(f"{P}/rooms/<room_id>/send/<event_type>/<txn_id>")
    @bp.post(f"{P}/rooms/<room_id>/send/<event_type>", defaults={"txn_id": None})
    def send_message(room_id: str, event_type: str, txn_id: str | None) -> Any:
        """PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}; and POST without
        a transaction id (not in the spec; Synapse serves it and clients use it): a new
        event each time"""
        req = require_auth(allow_guest=True)
        content = json_body()
        if event_type == "m.room.redaction":
            redacts = content.get("redacts")
            if not isinstance(redacts, str):
                raise MatrixError(400, "M_BAD_JSON", "m.room.redaction needs content.redacts")
            return send(req, room_id, EventSpec(event_type, req.user_id, content), txn_id,
                        redacts=redacts)
        return send(req, room_id, EventSpec(event_type, req.user_id, content), txn_id)

    @bp.put(f"{P}/rooms/<room_id>/redact/<event_id>/<txn_id>")
    def redact(room_id: str, event_id: str, txn_id: str) -> Any:
        """PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}"""
        req = require_auth()
        body = json_body(optional=True)
        content: dict[str, Any] = {}
        if "reason" in body:
            if not isinstance(body["reason"], str):
                raise MatrixError(400, "M_BAD_JSON", "reason must be a string")
            content["reason"] = body["reason"]
        return send(req, room_id, EventSpec("m.room.redaction", req.user_id, content), txn_id,
                    redacts=event_id)

    @bp.put(f"{P}/rooms/<room_id>/state/<event_type>", defaults={"state_key": ""})
    @bp.put(f"{P}/rooms/<room_id>/state/<event_type>/<path:state_key>")
    def put_state(room_id: str, event_type: str, state_key: str) -> Any:
        """PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
        req = require_auth(allow_guest=True)
        content = json_body()
        if event_type == "m.room.member":
            m = content.get("membership")
            if not isinstance(m, str):
                raise MatrixError(400, "M_BAD_JSON", "membership must be a string")
            if req.is_guest:
                content = guest_member_state(svc, req, room_id, state_key, content)
        if event_type == "m.room.canonical_alias" and state_key == "":
            from web.directory import validate_canonical_alias

            validate_canonical_alias(svc, room_id, content)
        return send(req, room_id, EventSpec(event_type, req.user_id, content, state_key), None)

    @bp.get(f"{P}/rooms/<room_id>/state/<event_type>", defaults={"state_key": ""})
    @bp.get(f"{P}/rooms/<room_id>/state/<event_type>/<path:state_key>")
    def get_state_event(room_id: str, event_type: str, state_key: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
        req = require_auth(allow_guest=True)
        rv = room(room_id)
        state = _visible_state(svc, req, room_id)
        eid = state.get((event_type, state_key))
        se = svc.events.get_event(eid) if eid else None
        if se is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found")
        ev = client_event(svc.events, se, rv)
        if request.args.get("format") == "event":
            return jsonify(ev)
        return jsonify(ev.get("content", {}))

    @bp.get(f"{P}/rooms/<room_id>/state")
    def get_state(room_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/state"""
        req = require_auth(allow_guest=True)
        rv = room(room_id)
        state = _visible_state(svc, req, room_id)
        evs = svc.events.get_events(state.values())
        return jsonify([client_event(svc.events, evs[e], rv) for e in state.values() if e in evs])

    @bp.get(f"{P}/rooms/<room_id>/event/<event_id>")
    def get_event(room_id: str, event_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}"""
        req = require_auth(allow_guest=True)
        rv = room(room_id)
        se = svc.events.get_event(event_id)
        if se is None or se.room_id != room_id or se.rejection is not None or se.outlier:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found")
        from web.visibility import served_event

        se = served_event(svc, req.user_id, se)   # pruned for an erased sender
        if se is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found")
        return jsonify(client_event(svc.events, se, rv, device_id=req.device_id,
                                    user_id=req.user_id, bundle=True))

    @bp.get(f"{P}/rooms/<room_id>/joined_members")
    def joined_members(room_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/joined_members"""
        req = require_auth()
        room(room_id)
        require_joined(req, room_id)
        rows = svc.db.run("joined_members", lambda t: t.query(
            "SELECT state_key, event_id FROM current_state WHERE room_id = ?"
            " AND type = 'm.room.member' AND membership = 'join'", (room_id,)))
        evs = svc.events.get_events(e for _, e in rows)
        joined = {}
        for user, eid in rows:
            c = evs[eid].event.get("content", {}) if eid in evs else {}
            joined[user] = {"display_name": c.get("displayname"),
                            "avatar_url": c.get("avatar_url")}
        return jsonify({"joined": joined})

    @bp.get(f"{P}/rooms/<room_id>/members")
    def members(room_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/members"""
        req = require_auth(allow_guest=True)
        rv = room(room_id)
        at = request.args.get("at")
        state = _visible_state(svc, req, room_id, at=at)
        want = request.args.get("membership")
        not_want = request.args.get("not_membership")
        for name, v in (("membership", want), ("not_membership", not_want)):
            if v is not None and v not in ("join", "invite", "knock", "leave", "ban"):
                raise MatrixError(400, "M_INVALID_PARAM", f"Invalid {name} {v!r}")
        ids = [e for (t, _), e in state.items() if t == "m.room.member"]
        evs = svc.events.get_events(ids)
        chunk = []
        for eid in ids:
            se = evs.get(eid)
            if se is None:
                continue
            m = se.event.get("content", {}).get("membership")
            if want is not None and m != want:
                continue
            if not_want is not None and m == not_want:
                continue
            chunk.append(client_event(svc.events, se, rv))
        return jsonify({"chunk": chunk})

    app.register_blueprint(bp)


def _visible_state(svc: RoomService, req: Requester, room_id: str,
                   at: str | None = None) -> dict[tuple[str, str], str]:
    """The room state the user may see: current state while joined; the state when they
    left otherwise; all of it for world-readable rooms (client-server-api "Room state")."""
    from web.visibility import visible_state_ids

    return visible_state_ids(svc, req.user_id, room_id, at=at)


def _check_indexed_fields(content: dict[str, Any]) -> None:
    """The content fields the store copies into its own text columns (relations, redacts,
    membership) may not carry a NUL: PostgreSQL text cannot hold one.  400 M_BAD_JSON."""
    rel = content.get("m.relates_to")
    fields = [content.get("redacts"), content.get("membership")]
    if isinstance(rel, dict):
        fields += [rel.get("event_id"), rel.get("rel_type"), rel.get("key")]
    if any(isinstance(v, str) and "\x00" in v for v in fields):
        raise MatrixError(400, "M_BAD_JSON", "Relation ids, keys, redacts and membership may"
                          " not contain NUL")
