"""Membership across servers, the resident side: the served ``make_join`` / ``send_join``
(v1 and v2), ``make_leave`` / ``send_leave`` (v1 and v2), ``make_knock`` / ``send_knock`` and
``invite`` (v1 and v2).

Spec: server-server-api.md "Joining Rooms" (with "Restricted rooms"), "Knocking upon a
room", "Inviting to a room", "Leaving Rooms (Rejecting Invites)"; OpenAPI in
data/api/server-server/joins-v1.yaml, joins-v2.yaml, knocks.yaml, invites-v1.yaml,
invites-v2.yaml, leaving-v1.yaml, leaving-v2.yaml.

Every route is a signed request (``federation.request_auth.federation_route``) and, for a
room we hold, subject to its ``m.room.server_acl`` (403).  The RoomActor stays the only
writer of its room: ``make_*`` asks it for a template (``MakeMembership``), ``send_*`` hands
it the checked event (``ReceivePdus``), and its auth rules decide (a banned user's join is
403).  What is checked here, before the actor sees the event: the room version's PDU
format, the event id, type / membership / sender on the origin / state_key, the signatures
the event must carry (keyring) and its content hash.  In restricted rooms (v8+) a join that
names one of our users in ``join_authorised_via_users_server`` is checked against the join
rules' ``allow`` conditions and countersigned before it is persisted.

An accepted join / leave / knock is handed to ``fed.extras["membership_received"]`` (when
the outbound side provides it) to be sent on to the room's other servers.

``send_join`` answers the state of the room before the join and the auth chain of that state
and of the join; with ``omit_members=true`` (v2, "faster joins") member events are left out
except the heroes of the room summary and the joining user's previous membership, events in
``state`` are not repeated in ``auth_chain``, and ``members_omitted`` / ``servers_in_room``
say so.

Invites to our users (``PUT /invite``): the invitee must be a user of ours, not joined or
banned where we know the room; the event is countersigned and returned, and kept with its
stripped state (``store/remote_invites.py``) so the invitee's /sync shows it in ``invite``.

The shared checks (:func:`event_with_id`, :func:`check_received`, :func:`stripped`) are used
by the joining side too (``federation/join.py``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from flask import Blueprint, Flask, g, jsonify, request

from atrium.errors import MatrixError
from federation.request_auth import BODY_ENVIRON_KEY, signed_route
from federation.room_queries import room_reads, wire_pdu
from protocol.acl import server_allowed
from protocol.events import auth_event_ids, room_id_for_create_event_id
from protocol.hashing import check_content_hash, compute_event_id
from protocol.ids import is_valid_room_id, is_valid_user_id, server_of
from protocol.pdu_checks import format_problem
from protocol.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from protocol.signing import sign_event

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
MEMBER = "m.room.member"
#: client-server-api "Stripped state": what describes a room to someone not in it
STRIPPED_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
                  "m.room.canonical_alias", "m.room.encryption")
MAX_INVITE_STATE = 50
MAX_HEROES = 5


# ---------------------------------------------------------------------------- shared checks
def bad(msg: str, errcode: str = "M_INVALID_PARAM") -> MatrixError:
    return MatrixError(400, errcode, msg)


def event_with_id(ev: Any, rv: RoomVersion, expected_id: str | None = None) -> dict[str, Any]:
    """A copy of a received PDU with its ``event_id`` (v1/v2: as sent; v3+: the reference
    hash), after the room version's format check; 400 otherwise (and when it is not
    ``expected_id``)."""
    if not isinstance(ev, Mapping):
        raise bad("The event must be a JSON object", "M_BAD_JSON")
    out = dict(ev)
    if rv.event_format != EventFormat.V1:
        out.pop("event_id", None)
        try:
            out["event_id"] = compute_event_id(out, rv)
        except Exception as e:  # noqa: BLE001 - anything unencodable is the sender's fault
            raise bad(f"The event cannot be hashed: {e}", "M_BAD_JSON") from None
        if rv.room_id_is_create_event_hash and out.get("type") == "m.room.create" \
                and out.get("state_key") == "" and "room_id" not in out:
            out["room_id"] = room_id_for_create_event_id(out["event_id"])
    problem = format_problem(rv, out)
    if problem is not None:
        raise bad(f"Invalid event: {problem}", "M_BAD_JSON")
    if expected_id is not None and out["event_id"] != expected_id:
        raise bad(f"The event id is {out['event_id']}, not {expected_id}")
    return out


def check_received(keyring: Any, ev: Mapping[str, Any], rv: RoomVersion) -> None:
    """The signatures the event must carry (keys from the keyring) and its content hash;
    400 ``M_INVALID_PARAM`` otherwise."""
    if keyring is None:
        raise bad("Event signatures cannot be verified on this server")
    try:
        keyring.verify_event(ev, rv)
    except Exception as e:  # noqa: BLE001 - SignatureError, KeyLookupError
        raise bad(f"Event signature check failed: {e}") from None
    if not check_content_hash(ev, rv):
        raise bad("Event content hash does not match")


def stripped(ev: Mapping[str, Any]) -> dict[str, Any]:
    """client-server-api "Stripped state" form of an event."""
    return {"type": ev.get("type"), "state_key": ev.get("state_key", ""),
            "content": ev.get("content", {}), "sender": ev.get("sender")}


def room_version_of(value: Any) -> RoomVersion | None:
    return KNOWN_ROOM_VERSIONS.get(value) if isinstance(value, str) else None


def incompatible(rv_id: str) -> MatrixError:
    return MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                       f"Your homeserver does not support room version {rv_id}",
                       room_version=rv_id)



def _body() -> Any:
    if BODY_ENVIRON_KEY in request.environ:
        return request.environ[BODY_ENVIRON_KEY]
    return request.get_json(silent=True, force=True)


# ---------------------------------------------------------------------------- resident side
class ResidentMembership:
    """The handlers behind the routes (kept apart from Flask so tests can drive them)."""

    def __init__(self, fed: Any, parts: dict[str, Any]) -> None:
        self.fed = fed
        self.parts = parts
        self.server_name: str = fed.server_name

    # -- helpers ------------------------------------------------------------------------------
    @property
    def rooms(self) -> Any:
        return self.parts["rooms"]

    @property
    def reads(self) -> Any:
        return room_reads(self.fed, self.parts)

    def ask(self, room_id: str, msg: Any) -> Any:
        return self.rooms.supervisor.ask(room_id, msg, trace_id=getattr(g, "request_id", None),
                                         sender=f"federation {request.method} "
                                                f"{request.path}"[:120])

    def room(self, origin: str, room_id: str) -> RoomVersion:
        """The version of a room we hold, once ``origin`` passes its server ACL."""
        if not is_valid_room_id(room_id):
            raise bad(f"Invalid room id {room_id!r}")
        rv = self.rooms.events.room_version(room_id)
        if rv is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        if not server_allowed(self.reads.acl_content(room_id), origin):
            raise MatrixError(403, "M_FORBIDDEN", "Server is banned from this room by its"
                              " server ACL")
        return rv

    def their_user(self, origin: str, user_id: str) -> None:
        if not is_valid_user_id(user_id):
            raise bad(f"Invalid user id {user_id!r}")
        if server_of(user_id) != origin:
            raise MatrixError(403, "M_FORBIDDEN", f"{user_id} is not a user of {origin}")

    # -- make_* -------------------------------------------------------------------------------
    def make(self, origin: str, room_id: str, user_id: str, membership: str,
             versions: list[str] | None) -> dict[str, Any]:
        from actors.room_messages import MakeMembership

        self.their_user(origin, user_id)
        rv = self.room(origin, room_id)
        if versions is not None and rv.identifier not in versions:
            raise incompatible(rv.identifier)
        if membership == "knock" and not rv.knock_join_rule:
            raise MatrixError(403, "M_FORBIDDEN", "This room version does not support knocking")
        answer = self.ask(room_id, MakeMembership(user_id=user_id, membership=membership))
        if not isinstance(answer, Mapping) or not isinstance(answer.get("event"), Mapping):
            raise MatrixError(500, "M_UNKNOWN", "No template could be made")
        template = dict(answer["event"])
        template.setdefault("origin", self.server_name)
        return {"room_version": answer.get("room_version", rv.identifier), "event": template}

    # -- send_* -------------------------------------------------------------------------------
    def receive(self, origin: str, room_id: str, event_id: str, body: Any,
                membership: str) -> tuple[RoomVersion, dict[str, Any]]:
        """Check and persist a join / leave / knock made by ``origin``: the stored event."""
        from actors.room_messages import ReceivePdus

        rv = self.room(origin, room_id)
        ev = event_with_id(body, rv, event_id)
        if ev.get("room_id") != room_id:
            raise bad("The event is not for this room")
        if ev["type"] != MEMBER:
            raise bad("The event is not an m.room.member event")
        content = ev["content"]
        if content.get("membership") != membership:
            raise bad(f"The event's membership is not {membership!r}")
        sender = ev["sender"]
        if server_of(sender) != origin:
            raise bad(f"The sender {sender} is not a user of {origin}")
        if ev.get("state_key") != sender:
            raise bad("The state_key is not the sender")
        if membership == "join":
            self._authorise_restricted(rv, room_id, ev)
        check_received(self.fed.keyring, ev, rv)
        results = self.ask(room_id, ReceivePdus(origin=origin, events=(ev,)))
        result = results[0] if results else None
        outcome = getattr(result, "outcome", None)
        reason = getattr(result, "reason", None) or ""
        if outcome == "accepted":
            self._forward(room_id, ev["event_id"], origin)
        if outcome in ("accepted", "duplicate"):
            return rv, ev
        if outcome in ("rejected", "soft_failed"):
            raise MatrixError(403, "M_FORBIDDEN", f"The {membership} is not allowed: {reason}"
                              .rstrip(": "))
        raise bad(f"The {membership} could not be accepted ({outcome}): {reason}".rstrip(": "))

    def _forward(self, room_id: str, event_id: str, origin: str) -> None:
        """"The resident server must also send the event to other servers participating in
        the room": ``fed.extras["membership_received"](room_id, event_id, origin)`` is the
        outbound side's seam for that (events of other servers are not re-broadcast by the
        rooms' on_persisted hook)."""
        hook = self.fed.extras.get("membership_received")
        if callable(hook):
            try:
                hook(room_id, event_id, origin)
            except Exception:  # noqa: BLE001 - the join is in; forwarding is best effort
                log.exception("forwarding %s of %s failed", event_id, room_id)

    def _authorise_restricted(self, rv: RoomVersion, room_id: str, ev: dict[str, Any]) -> None:
        """server-server-api "Restricted rooms": a join naming one of our users as the
        authoriser is countersigned here, once the joining user meets an ``allow``
        condition (the auth rules then check that user's membership and power)."""
        via = ev["content"].get("join_authorised_via_users_server")
        if via is None or not rv.restricted_join_rule:
            return
        if not isinstance(via, str) or not is_valid_user_id(via):
            raise bad("join_authorised_via_users_server is not a user id")
        if server_of(via) != self.server_name:
            raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN",
                              f"{via} is not a user of this server: send the join to "
                              f"{server_of(via)}")
        if not self._meets_allow(rv, room_id, ev["sender"]):
            raise MatrixError(403, "M_FORBIDDEN", "The user does not meet the room's join"
                              " conditions")
        sign_event(ev, rv, self.server_name, self.fed.signing_key)

    def _meets_allow(self, rv: RoomVersion, room_id: str, user_id: str) -> bool:
        reads = self.reads
        rules = reads.current_state_content(room_id, ("m.room.join_rules", "")) or {}
        rule = rules.get("join_rule")
        if rule not in ("restricted", "knock_restricted"):
            return True   # not a restricted join: the auth rules decide alone
        mine = reads.current_state_content(room_id, (MEMBER, user_id)) or {}
        if mine.get("membership") in ("invite", "join"):
            return True
        allow = rules.get("allow")
        rooms = [a.get("room_id") for a in allow if isinstance(a, Mapping)
                 and a.get("type") == "m.room_membership"
                 and isinstance(a.get("room_id"), str)] if isinstance(allow, list) else []
        for other in rooms:
            content = reads.current_state_content(other, (MEMBER, user_id)) or {}
            if content.get("membership") == "join":
                return True
        return False

    def join_answer(self, rv: RoomVersion, room_id: str, ev: dict[str, Any],
                    omit_members: bool) -> dict[str, Any]:
        """The send_join answer: state before the join, its auth chain, the event."""
        reads = self.reads
        events = self.rooms.events
        state = reads.state_ids_before(ev["event_id"])
        if state is None:
            raise MatrixError(500, "M_UNKNOWN", "The state before the join is not known")
        kept = dict(state)
        servers: list[str] | None = None
        if omit_members:
            members = {k: v for k, v in state.items() if k[0] == MEMBER}
            loaded = events.get_events(list(members.values()))
            joined: list[tuple[int, str]] = []
            for (_, user), eid in members.items():
                se = loaded.get(eid)
                m = (se.event.get("content") or {}).get("membership") if se else None
                if m in ("join", "invite") and user != ev["sender"]:
                    joined.append((se.stream_ordering, user))
            heroes = {u for _, u in sorted(joined)[:MAX_HEROES]}
            keep = heroes | {ev["sender"]}
            via = ev["content"].get("join_authorised_via_users_server")
            if isinstance(via, str):
                keep.add(via)
            kept = {k: v for k, v in state.items() if k[0] != MEMBER or k[1] in keep}
            servers = sorted({server_of(u) for (_, u), eid in members.items()
                              if loaded.get(eid) is not None and
                              (loaded[eid].event.get("content") or {}).get("membership")
                              == "join"})
        chain = reads.auth_chain_ids(list(kept.values()) + auth_event_ids(ev))
        chain |= set(auth_event_ids(ev))
        if omit_members:
            chain -= set(kept.values())
        else:
            chain -= {ev["event_id"]}
        found = events.get_events(list(kept.values()) + sorted(chain))

        def wire(eid: str) -> dict[str, Any] | None:
            se = found.get(eid)
            return wire_pdu(events.visible_form(se, rv), rv) if se is not None else None

        out: dict[str, Any] = {
            "origin": self.server_name,
            "state": [w for w in map(wire, kept.values()) if w is not None],
            "auth_chain": [w for w in map(wire, sorted(chain)) if w is not None],
            "event": wire_pdu(ev, rv),
            "members_omitted": bool(omit_members),
        }
        if servers is not None:
            out["servers_in_room"] = servers
        return out

    def knock_state(self, rv: RoomVersion, room_id: str) -> list[dict[str, Any]]:
        """The room's stripped state as PDUs (v1.16: full events, the create one first)."""
        events = self.rooms.events
        ids = []
        for t in STRIPPED_TYPES:
            eid = self.rooms.db.run("stripped_state", lambda tx, t=t: tx.query_value(
                "SELECT event_id FROM current_state WHERE room_id = ? AND type = ?"
                " AND state_key = ''", (room_id, t)))
            if eid is not None:
                ids.append(eid)
        found = events.get_events(ids)
        return [wire_pdu(events.visible_form(found[e], rv), rv) for e in ids if e in found]

    # -- invite -------------------------------------------------------------------------------
    def invite(self, origin: str, room_id: str, event_id: str, rv: RoomVersion,
               event: Any, invite_state: Any) -> dict[str, Any]:
        """Countersign an invite of one of our users; keep it for their /sync."""
        if not is_valid_room_id(room_id):
            raise bad(f"Invalid room id {room_id!r}")
        ev = event_with_id(event, rv, event_id)
        if ev.get("room_id") != room_id:
            raise bad("The event is not for this room")
        if ev["type"] != MEMBER or ev["content"].get("membership") != "invite":
            raise bad("The event is not an invite")
        if server_of(ev["sender"]) != origin:
            raise bad(f"The sender is not a user of {origin}")
        target = ev.get("state_key")
        if not isinstance(target, str) or not is_valid_user_id(target) \
                or server_of(target) != self.server_name:
            raise bad("The invitee is not a user of this server")
        accounts = self.parts.get("accounts")
        user = accounts.get_user(target) if accounts is not None else None
        if user is None or user.deactivated:
            raise MatrixError(403, "M_FORBIDDEN", f"{target} cannot be invited")
        known = self.rooms.events.room_version(room_id)
        if known is not None:
            if known.identifier != rv.identifier:
                raise bad("The room version does not match the room")
            if not server_allowed(self.reads.acl_content(room_id), origin):
                raise MatrixError(403, "M_FORBIDDEN", "Server is banned from this room by its"
                                  " server ACL")
            mine = self.reads.current_state_content(room_id, (MEMBER, target)) or {}
            if mine.get("membership") in ("join", "ban"):
                raise MatrixError(403, "M_FORBIDDEN", f"{target} is {mine['membership']} in"
                                  " the room")
        check_received(self.fed.keyring, ev, rv)
        state = self._invite_state(rv, room_id, invite_state)
        sign_event(ev, rv, self.server_name, self.fed.signing_key)
        self.rooms.remote_invites.record(target, room_id, "invite", ev,
                                         room_version=rv.identifier, stripped_state=state,
                                         origin=origin)
        return wire_pdu(ev, rv)

    def _invite_state(self, rv: RoomVersion, room_id: str, value: Any) -> list[dict[str, Any]]:
        """``invite_room_state`` checked (servers SHOULD for v12, MAY before: here every
        entry must at least look like a state event, and a v12 room must come with its
        create event, the one that names it) → stripped state."""
        if value is None:
            value = []
        if not isinstance(value, list) or len(value) > MAX_INVITE_STATE:
            raise bad(f"invite_room_state must be a list of at most {MAX_INVITE_STATE} events")
        out = []
        has_create = False
        for item in value:
            if not (isinstance(item, Mapping) and isinstance(item.get("type"), str)
                    and isinstance(item.get("state_key", ""), str)
                    and isinstance(item.get("content"), Mapping)
                    and isinstance(item.get("sender"), str)):
                raise bad("invite_room_state holds an entry that is not a state event")
            if item["type"] == "m.room.create" and item.get("state_key", "") == "":
                if rv.room_id_is_create_event_hash:
                    create = event_with_id(item, rv)
                    if create["room_id"] != room_id:
                        raise bad("The create event in invite_room_state is of another room")
                has_create = True
            out.append(stripped(item))
        if rv.room_id_is_create_event_hash and not has_create:
            raise bad("invite_room_state has no m.room.create event")
        return out


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> None:
    """Register the served membership routes; ``fed.extras["membership"]`` is the handler."""
    res = ResidentMembership(fed, parts)
    fed.extras["membership"] = res
    signed: Callable[[Callable[..., Any]], Callable[..., Any]] = signed_route(fed)
    bp = Blueprint("federation_membership", __name__)

    def versions() -> list[str]:
        return request.args.getlist("ver") or ["1"]

    @bp.get(f"{V1}/make_join/<room_id>/<user_id>")
    @signed
    def make_join(origin: str, room_id: str, user_id: str) -> Any:
        """GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver="""
        return jsonify(res.make(origin, room_id, user_id, "join", versions()))

    @bp.get(f"{V1}/make_leave/<room_id>/<user_id>")
    @signed
    def make_leave(origin: str, room_id: str, user_id: str) -> Any:
        """GET /_matrix/federation/v1/make_leave/{roomId}/{userId}"""
        return jsonify(res.make(origin, room_id, user_id, "leave", None))

    @bp.get(f"{V1}/make_knock/<room_id>/<user_id>")
    @signed
    def make_knock(origin: str, room_id: str, user_id: str) -> Any:
        """GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver="""
        return jsonify(res.make(origin, room_id, user_id, "knock", versions()))

    def omit_members() -> bool:
        raw = request.args.get("omit_members", "false")
        if raw not in ("true", "false"):
            raise bad("omit_members must be true or false")
        return raw == "true"

    @bp.put(f"{V2}/send_join/<room_id>/<path:event_id>")
    @signed
    def send_join_v2(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}?omit_members="""
        omit = omit_members()
        rv, ev = res.receive(origin, room_id, event_id, _body(), "join")
        return jsonify(res.join_answer(rv, room_id, ev, omit))

    @bp.put(f"{V1}/send_join/<room_id>/<path:event_id>")
    @signed
    def send_join_v1(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v1/send_join/{roomId}/{eventId} (answer [200, {...}])"""
        rv, ev = res.receive(origin, room_id, event_id, _body(), "join")
        answer = res.join_answer(rv, room_id, ev, False)
        answer.pop("members_omitted", None)
        return jsonify([200, answer])

    @bp.put(f"{V2}/send_leave/<room_id>/<path:event_id>")
    @signed
    def send_leave_v2(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}"""
        res.receive(origin, room_id, event_id, _body(), "leave")
        return jsonify({})

    @bp.put(f"{V1}/send_leave/<room_id>/<path:event_id>")
    @signed
    def send_leave_v1(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v1/send_leave/{roomId}/{eventId} (answer [200, {}])"""
        res.receive(origin, room_id, event_id, _body(), "leave")
        return jsonify([200, {}])

    @bp.put(f"{V1}/send_knock/<room_id>/<path:event_id>")
    @signed
    def send_knock(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}"""
        rv, _ = res.receive(origin, room_id, event_id, _body(), "knock")
        return jsonify({"knock_room_state": res.knock_state(rv, room_id)})

    @bp.put(f"{V2}/invite/<room_id>/<path:event_id>")
    @signed
    def invite_v2(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v2/invite/{roomId}/{eventId}"""
        body = _body()
        if not isinstance(body, Mapping):
            raise bad("The request body must be a JSON object", "M_BAD_JSON")
        rv_id = body.get("room_version")
        if not isinstance(rv_id, str):
            raise bad("Missing room_version", "M_MISSING_PARAM")
        rv = room_version_of(rv_id)
        if rv is None:
            raise incompatible(rv_id)
        signed_ev = res.invite(origin, room_id, event_id, rv, body.get("event"),
                               body.get("invite_room_state"))
        return jsonify({"event": signed_ev})

    @bp.put(f"{V1}/invite/<room_id>/<path:event_id>")
    @signed
    def invite_v1(origin: str, room_id: str, event_id: str) -> Any:
        """PUT /_matrix/federation/v1/invite/{roomId}/{eventId} (rooms v1/v2; the stripped
        state is in the event's ``unsigned.invite_room_state``)"""
        body = _body()
        if not isinstance(body, Mapping):
            raise bad("The request body must be a JSON object", "M_BAD_JSON")
        rv = res.rooms.events.room_version(room_id) or KNOWN_ROOM_VERSIONS["1"]
        unsigned = body.get("unsigned")
        state = unsigned.get("invite_room_state") if isinstance(unsigned, Mapping) else None
        event = {k: v for k, v in body.items() if k != "unsigned"}
        signed_ev = res.invite(origin, room_id, event_id, rv, event, state)
        return jsonify([200, {"event": signed_ev}])

    app.register_blueprint(bp)
