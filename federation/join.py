"""Membership across servers, the joining side: join a room held elsewhere, reject a remote
invite (leave a room we are not in), knock on a remote room, and invite a user of another
server.

Spec: server-server-api.md "Joining Rooms" (the joining server fills in ``origin_server_ts``,
signs the template after checking ``type``, ``room_id``, ``sender``, ``state_key`` and
``content.membership``), "Restricted rooms" (the resident's countersignature), "Knocking upon
a room", "Inviting to a room" (``/invite`` v2, v1 for rooms v1/v2 with servers that lack v2),
"Leaving Rooms (Rejecting Invites)".

Candidate servers are tried in order, as Synapse does: a server that cannot be reached,
answers 5xx, 404 ``M_NOT_FOUND``, ``M_UNRECOGNIZED`` or the restricted-join codes
(``M_UNABLE_TO_AUTHORISE_JOIN`` / ``M_UNABLE_TO_GRANT_JOIN``), or gives an answer that does
not verify, is skipped; any other error of a server is the client's answer (its 403 for a
ban, say; ``M_INVALID_PARAM`` / ``M_MISSING_PARAM`` become 502 as the spec asks).  No
candidate at all is 404 ``M_NOT_FOUND``; every candidate failed is 502 ``M_UNKNOWN``.

The ``send_join`` answer is verified before the room is created here: every event of
``state`` and ``auth_chain`` (and the join as returned) has the format of the room version,
is in the room, carries the signatures it must (keyring), is redacted when its content hash
does not match, and passes the auth rules against its own auth events (auth events first);
the state holds the room's create event and our join passes auth against that state.  One
event that fails refuses the whole answer (the next server is tried).  Then
``JoinFromRemote`` hands it to the room's actor.

A rejected invite whose room no server will talk about any more is still rejected locally
(an out-of-band leave, never sent, as Synapse does), so the invite leaves the user's /sync.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from atrium.errors import MatrixError
from federation.errors import BadResponse, FederationError, RemoteHTTPError
from federation.membership import (MEMBER, STRIPPED_TYPES, check_received, event_with_id,
                                   stripped)
from federation.room_queries import wire_pdu
from protocol.auth import check_auth, check_auth_events, check_state_independent
from protocol.auth_common import AuthError
from protocol.canonical import CanonicalJsonError
from protocol.events import (auth_event_ids, build_event, create_event_id_for_room_id)
from protocol.hashing import check_content_hash
from protocol.ids import server_of
from protocol.redaction import redact
from protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from protocol.signing import verify_event_signature

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
#: a server that answers one of these is skipped, the next one asked
FAILOVER_CODES = frozenset({"M_NOT_FOUND", "M_UNRECOGNIZED", "M_UNABLE_TO_AUTHORISE_JOIN",
                            "M_UNABLE_TO_GRANT_JOIN"})
MAX_CANDIDATES = 10


def q(value: str) -> str:
    return quote(value, safe="")


class _Skip(Exception):
    """This server could not help; try the next one."""


def _unrecognized(e: RemoteHTTPError) -> bool:
    return e.status in (404, 405) or e.errcode == "M_UNRECOGNIZED"


def remote_error(e: RemoteHTTPError) -> MatrixError:
    """A remote's 4xx passed on to the client (the spec wants M_INVALID_PARAM /
    M_MISSING_PARAM of a server-server request to be a 5xx for the client)."""
    if e.errcode in ("M_INVALID_PARAM", "M_MISSING_PARAM") or not 400 <= e.status < 500:
        return MatrixError(502, "M_UNKNOWN", f"{e.destination}: {e.error or e.errcode}")
    extra = {}
    if isinstance(e.body, Mapping) and isinstance(e.body.get("room_version"), str):
        extra["room_version"] = e.body["room_version"]
    return MatrixError(e.status, e.errcode or "M_UNKNOWN", e.error or "Refused by " +
                       e.destination, **extra)


class RemoteMembership:
    """The joining side.  ``rooms`` is the room service (``ask``, ``events``,
    ``remote_invites``, ``db``); ``fed`` the Federation container (``client``, ``keyring``,
    ``server_name``, ``signing_key``)."""

    def __init__(self, fed: Any, rooms: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.fed = fed
        self.rooms = rooms
        self.clock = clock

    @property
    def server_name(self) -> str:
        return self.fed.server_name

    # ------------------------------------------------------------------ joins
    def join(self, room_id: str, user_id: str, servers: Sequence[str],
             content: Mapping[str, Any] | None = None) -> Any:
        """Join ``room_id`` through the first of ``servers`` that can make it happen; the
        room's actor persists the join (``JoinFromRemote``).  Reply: its ``Sent``."""
        from actors.room_messages import JoinFromRemote

        def attempt(server: str) -> Any:
            rv, template = self._make(server, room_id, user_id, "join")
            ev = self._sign(rv, template, room_id, user_id, "join", content)
            answer = self._send_join(server, rv, room_id, ev)
            join_ev, state, chain = self.verify_join_answer(rv, room_id, ev, answer)
            return rv, join_ev, state, chain

        rv, join_ev, state, chain = self._each(servers, attempt, "join room")
        return self.rooms.ask(room_id, JoinFromRemote(
            room_version=rv.identifier, join_event=join_ev, state=tuple(state),
            auth_chain=tuple(chain)))

    def _send_join(self, server: str, rv: RoomVersion, room_id: str, ev: dict[str, Any]) -> Any:
        body = wire_pdu(ev, rv)
        eid = q(ev["event_id"])
        try:
            return self._client().put_json(server, f"{V2}/send_join/{q(room_id)}/{eid}", body,
                                           query={"omit_members": "false"})
        except RemoteHTTPError as e:
            if not _unrecognized(e):
                raise
        answer = self._client().put_json(server, f"{V1}/send_join/{q(room_id)}/{eid}", body)
        if not (isinstance(answer, list) and len(answer) == 2 and isinstance(answer[1], dict)):
            raise BadResponse(server, "send_join v1 answer is not [200, {...}]")
        return answer[1]

    def verify_join_answer(self, rv: RoomVersion, room_id: str, ev: dict[str, Any],
                           answer: Any) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                 list[dict[str, Any]]]:
        """(join event, state, auth chain) of a send_join answer once every event
        verifies; ``_Skip`` otherwise."""
        if not isinstance(answer, Mapping) or not isinstance(answer.get("state"), list) \
                or not isinstance(answer.get("auth_chain"), list):
            raise _Skip("send_join answer without state / auth_chain")
        join_ev = self._their_copy(rv, ev, answer.get("event"))
        by_id: dict[str, dict[str, Any]] = {}
        state_ids: list[str] = []
        for key, raw_list in (("state", answer["state"]), ("auth_chain", answer["auth_chain"])):
            for raw in raw_list:
                e = self._checked(rv, room_id, raw)
                by_id.setdefault(e["event_id"], e)
                if key == "state":
                    state_ids.append(e["event_id"])
        self._auth_all(rv, by_id)
        state = [by_id[i] for i in dict.fromkeys(state_ids)]
        state_map = {(e["type"], e["state_key"]): e for e in state if "state_key" in e}
        create = state_map.get(("m.room.create", ""))
        if create is None:
            raise _Skip("the state has no create event")
        if rv.room_id_is_create_event_hash:
            if create_event_id_for_room_id(room_id) != create["event_id"]:
                raise _Skip("the create event is not the room's")
        elif create.get("room_id") != room_id:
            raise _Skip("the create event is of another room")
        if create.get("content", {}).get("room_version", "1") != rv.identifier:
            raise _Skip("the create event names another room version")
        try:
            check_state_independent(rv, join_ev)
            self._auth_one(rv, join_ev, by_id)
            check_auth(rv, join_ev, state_map)
        except AuthError as e:
            raise _Skip(f"our join does not pass auth against the state: {e}") from None
        chain = [e for eid, e in by_id.items() if eid not in set(state_ids)]
        return join_ev, state, chain

    def _their_copy(self, rv: RoomVersion, ev: dict[str, Any], returned: Any) -> dict[str, Any]:
        """Our join with the resident's signatures added (restricted joins need them)."""
        out = dict(ev)
        if returned is not None:
            try:
                theirs = event_with_id(returned, rv, ev["event_id"])
            except MatrixError as e:
                raise _Skip(f"the returned join is not ours: {e.error}") from None
            sigs = {k: dict(v) for k, v in ev.get("signatures", {}).items()}
            for server, s in (theirs.get("signatures") or {}).items():
                if server != self.server_name and isinstance(s, Mapping):
                    sigs.setdefault(server, {}).update(s)
            out["signatures"] = sigs
        try:
            check_received(self.fed.keyring, out, rv)
        except MatrixError as e:
            raise _Skip(f"the join lacks a signature it needs: {e.error}") from None
        return out

    def _checked(self, rv: RoomVersion, room_id: str, raw: Any) -> dict[str, Any]:
        try:
            e = event_with_id(raw, rv)
        except MatrixError as err:
            raise _Skip(f"bad event in the answer: {err.error}") from None
        if e.get("room_id") != room_id:
            raise _Skip(f"{e['event_id']} is not an event of {room_id}")
        keyring = self.fed.keyring
        if keyring is None:
            raise _Skip("no keyring to verify events with")
        try:
            keyring.verify_event(e, rv)
        except Exception as err:  # noqa: BLE001 - SignatureError, KeyLookupError
            raise _Skip(f"{e['event_id']}: {err}") from None
        if not check_content_hash(e, rv):
            red = redact(e, rv)   # "a bad hash means the event is redacted before use"
            red["event_id"] = e["event_id"]
            red.setdefault("room_id", e.get("room_id"))
            e = red
        return e

    def _auth_all(self, rv: RoomVersion, by_id: dict[str, dict[str, Any]]) -> None:
        """Every event passes auth against its own auth events, auth events first."""
        done: set[str] = set()
        visiting: set[str] = set()
        for start in by_id:
            if start in done:
                continue
            stack = [(start, iter(auth_event_ids(by_id[start])))]
            visiting.add(start)
            while stack:
                eid, pending = stack[-1]
                nxt = next(pending, None)
                if nxt is None:
                    stack.pop()
                    visiting.discard(eid)
                    try:
                        check_state_independent(rv, by_id[eid])
                        self._auth_one(rv, by_id[eid], by_id)
                    except AuthError as e:
                        raise _Skip(f"{eid} fails auth: {e}") from None
                    done.add(eid)
                elif nxt not in done:
                    if nxt not in by_id:
                        raise _Skip(f"{eid} cites an auth event {nxt} the answer lacks")
                    if nxt in visiting:
                        raise _Skip(f"the auth events of {eid} form a cycle")
                    visiting.add(nxt)
                    stack.append((nxt, iter(auth_event_ids(by_id[nxt]))))

    @staticmethod
    def _auth_one(rv: RoomVersion, ev: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> None:
        if ev.get("type") == "m.room.create" and ev.get("state_key") == "":
            return
        auth = []
        for a in auth_event_ids(ev):
            if a not in by_id:
                raise AuthError("auth_events", f"auth event {a} is not known")
            auth.append(by_id[a])
        check_auth_events(rv, ev, auth)
        state = {(a["type"], a["state_key"]): a for a in auth}
        if rv.room_id_is_create_event_hash:
            create = by_id.get(create_event_id_for_room_id(ev["room_id"]))
            if create is None:
                raise AuthError("room_id", "the room's create event is not known")
            state[("m.room.create", "")] = create
        check_auth(rv, ev, state)

    # ------------------------------------------------------------------ leave / knock
    def leave(self, room_id: str, user_id: str, servers: Sequence[str],
              content: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Reject an invite (or rescind a knock) of a room we do not hold: make_leave /
        send_leave through ``servers``; recorded so /sync shows the room under ``leave``.
        If no server helps, an out-of-band leave is recorded (never sent)."""
        record = self.rooms.remote_invites.latest_in(user_id, room_id)

        def attempt(server: str) -> Any:
            rv, template = self._make(server, room_id, user_id, "leave")
            ev = self._sign(rv, template, room_id, user_id, "leave", content)
            path = f"/send_leave/{q(room_id)}/{q(ev['event_id'])}"
            body = wire_pdu(ev, rv)
            try:
                self._client().put_json(server, V2 + path, body)
            except RemoteHTTPError as e:
                if not _unrecognized(e):
                    raise
                self._client().put_json(server, V1 + path, body)
            return rv, ev, server

        try:
            rv, ev, server = self._each(servers, attempt, "leave room")
        except MatrixError as e:
            if record is None or record.membership not in ("invite", "knock"):
                raise
            log.info("leave of %s by %s through federation failed (%s): rejected locally",
                     room_id, user_id, e.error)
            rv = KNOWN_ROOM_VERSIONS[record.room_version]
            ev = self._out_of_band_leave(rv, room_id, user_id, record.event, content)
            server = record.origin
        state = record.stripped_state if record is not None else []
        self.rooms.remote_invites.record(user_id, room_id, "leave", ev,
                                         room_version=rv.identifier, stripped_state=state,
                                         origin=server)
        return ev

    def _out_of_band_leave(self, rv: RoomVersion, room_id: str, user_id: str,
                           invite: Mapping[str, Any], content: Mapping[str, Any] | None
                           ) -> dict[str, Any]:
        body = {k: v for k, v in (content or {}).items() if k == "reason"}
        body["membership"] = "leave"
        return build_event(rv, room_id=room_id, sender=user_id, type=MEMBER, content=body,
                           state_key=user_id, prev_events=[invite["event_id"]],
                           auth_events=[invite["event_id"]],
                           depth=int(invite.get("depth", 0)) + 1,
                           origin_server_ts=int(self.clock() * 1000),
                           server_name=self.server_name, signing_key=self.fed.signing_key)

    def knock(self, room_id: str, user_id: str, servers: Sequence[str],
              content: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Knock on a room we do not hold: make_knock / send_knock; the knock and the
        room's stripped state are recorded for the user's /sync (``knock``)."""

        def attempt(server: str) -> Any:
            rv, template = self._make(server, room_id, user_id, "knock")
            ev = self._sign(rv, template, room_id, user_id, "knock", content)
            answer = self._client().put_json(
                server, f"{V1}/send_knock/{q(room_id)}/{q(ev['event_id'])}", wire_pdu(ev, rv))
            state = answer.get("knock_room_state") if isinstance(answer, Mapping) else None
            if not isinstance(state, list):
                raise _Skip("send_knock answer without knock_room_state")
            kept = [stripped(s) for s in state if isinstance(s, Mapping)
                    and isinstance(s.get("type"), str) and isinstance(s.get("content"), Mapping)
                    and isinstance(s.get("state_key", ""), str)]
            return rv, ev, kept, server

        rv, ev, state, server = self._each(servers, attempt, "knock on room")
        self.rooms.remote_invites.record(user_id, room_id, "knock", ev,
                                         room_version=rv.identifier, stripped_state=state,
                                         origin=server)
        return ev

    # ------------------------------------------------------------------ invites
    def invite(self, room_id: str, rv: RoomVersion, event: dict[str, Any]) -> dict[str, Any]:
        """Send an invite built by the room (``BuildEvent``) to the invitee's server; the
        event with its countersignature, checked."""
        target = event["state_key"]
        dest = server_of(target)
        body = {"room_version": rv.identifier, "event": wire_pdu(event, rv),
                "invite_room_state": self.invite_state(room_id, rv, event["sender"])}
        path = f"/invite/{q(room_id)}/{q(event['event_id'])}"
        client = self._client()
        try:
            try:
                answer = client.put_json(dest, V2 + path, body)
                returned = answer.get("event") if isinstance(answer, Mapping) else None
            except RemoteHTTPError as e:
                if not (_unrecognized(e) or e.status == 400 and e.errcode != "M_FORBIDDEN") \
                        or rv.identifier not in ("1", "2"):
                    raise
                v1 = dict(body["event"])
                v1["unsigned"] = {"invite_room_state": body["invite_room_state"]}
                answer = client.put_json(dest, V1 + path, v1)
                returned = answer[1].get("event") if isinstance(answer, list) \
                    and len(answer) == 2 and isinstance(answer[1], Mapping) else None
        except RemoteHTTPError as e:
            raise remote_error(e) from None
        except FederationError as e:
            log.info("invite of %s to %s: %s", target, room_id, e)
            raise MatrixError(502, "M_UNKNOWN", f"Could not reach {dest} to invite "
                              f"{target}") from None
        return self._countersigned(rv, event, returned, dest)

    def _countersigned(self, rv: RoomVersion, event: dict[str, Any], returned: Any,
                       dest: str) -> dict[str, Any]:
        bad = MatrixError(502, "M_UNKNOWN", f"{dest} answered the invite with an event that"
                          " does not verify")
        try:
            theirs = event_with_id(returned, rv, event["event_id"])
        except MatrixError:
            raise bad from None
        sig = (theirs.get("signatures") or {}).get(dest)
        if not isinstance(sig, Mapping) or not sig:
            raise bad
        out = dict(event)
        out["signatures"] = {k: dict(v) for k, v in event["signatures"].items()}
        out["signatures"][dest] = dict(sig)
        kids = [k for k in sig if isinstance(k, str) and k.startswith("ed25519:")]
        try:
            at = out["origin_server_ts"] if rv.enforce_key_validity else 0
            keys = self.fed.keyring.get_keys(dest, kids, at_ts=at)
            verify_event_signature(out, rv, dest, keys)
        except Exception as e:  # noqa: BLE001 - SignatureError, KeyLookupError
            log.info("invite countersignature of %s: %s", dest, e)
            raise bad from None
        return out

    def invite_state(self, room_id: str, rv: RoomVersion, inviter: str) -> list[dict[str, Any]]:
        """``invite_room_state``: the create event first, join rules, name, avatar,
        canonical alias, encryption and the inviter's membership, as full PDUs (spec v1.16:
        formatted per the room version; a PDU is also a valid stripped state event)."""
        db = self.rooms.db
        rows = db.run("invite_state", lambda t: t.query(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?"
            " AND ((state_key = '' AND type IN (" + ",".join("?" * len(STRIPPED_TYPES)) + "))"
            " OR (type = ? AND state_key = ?))", (room_id, *STRIPPED_TYPES, MEMBER, inviter)))
        order = {t: i for i, t in enumerate(STRIPPED_TYPES)}
        rows.sort(key=lambda r: order.get(r[0], len(order)))
        events = self.rooms.events
        found = events.get_events([r[2] for r in rows])
        return [wire_pdu(events.visible_form(found[r[2]], rv), rv) for r in rows
                if r[2] in found]

    # ------------------------------------------------------------------ the handshake
    def _client(self) -> Any:
        if self.fed.client is None:
            raise MatrixError(502, "M_UNKNOWN", "Outbound federation is not available")
        return self.fed.client

    def _make(self, server: str, room_id: str, user_id: str, membership: str
              ) -> tuple[RoomVersion, dict[str, Any]]:
        query = {"ver": list(KNOWN_ROOM_VERSIONS)} if membership != "leave" else None
        answer = self._client().get_json(
            server, f"{V1}/make_{membership}/{q(room_id)}/{q(user_id)}", query=query)
        if not isinstance(answer, Mapping) or not isinstance(answer.get("event"), Mapping):
            raise _Skip(f"make_{membership} answer without an event")
        rv_id = answer.get("room_version", "1")
        rv = KNOWN_ROOM_VERSIONS.get(rv_id) if isinstance(rv_id, str) else None
        if rv is None:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                              f"Room version {rv_id!r} is not supported here",
                              room_version=str(rv_id))
        template = answer["event"]
        content = template.get("content")
        if template.get("type") != MEMBER or template.get("room_id") != room_id \
                or template.get("sender") != user_id or template.get("state_key") != user_id \
                or not isinstance(content, Mapping) or content.get("membership") != membership:
            raise _Skip(f"make_{membership} template is not a {membership} of {user_id}")
        return rv, dict(template)

    def _sign(self, rv: RoomVersion, template: dict[str, Any], room_id: str, user_id: str,
              membership: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        content = dict(template["content"])
        for k, v in (extra or {}).items():
            if k not in ("membership", "join_authorised_via_users_server"):
                content[k] = v
        content["membership"] = membership
        depth = template.get("depth")
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise _Skip("template depth is not an integer")
        prev, auth = template.get("prev_events"), template.get("auth_events")
        if not isinstance(prev, list) or not isinstance(auth, list):
            raise _Skip("template prev_events / auth_events are not lists")
        try:
            return build_event(rv, room_id=room_id, sender=user_id, type=MEMBER,
                               content=content, state_key=user_id, prev_events=prev,
                               auth_events=auth, depth=depth,
                               origin_server_ts=int(self.clock() * 1000),
                               server_name=self.server_name,
                               signing_key=self.fed.signing_key)
        except (ValueError, TypeError, CanonicalJsonError) as e:
            raise _Skip(f"template unusable: {e}") from None

    def _each(self, servers: Sequence[str], attempt: Callable[[str], Any], what: str) -> Any:
        candidates = [s for s in dict.fromkeys(servers) if s and s != self.server_name]
        if not candidates:
            raise MatrixError(404, "M_NOT_FOUND", "No known servers")
        refusals: list[RemoteHTTPError] = []   # 4xx answers we moved on from
        unreachable = False
        for server in candidates[:MAX_CANDIDATES]:
            try:
                return attempt(server)
            except _Skip as e:
                log.info("%s via %s: %s", what, server, e)
                unreachable = True
            except RemoteHTTPError as e:
                if e.status >= 500 or e.errcode in FAILOVER_CODES or e.status == 429:
                    log.info("%s via %s: %s", what, server, e)
                    if 400 <= e.status < 500 and e.status != 429:
                        refusals.append(e)
                    else:
                        unreachable = True
                    continue
                raise remote_error(e) from None
            except FederationError as e:   # unreachable, backing off, not whitelisted
                log.info("%s via %s: %s", what, server, e)
                unreachable = True
        if refusals and not unreachable:
            # every server answered, and none knows the room (or may let us in): say so
            # rather than blame the network
            raise remote_error(refusals[-1])
        raise MatrixError(502, "M_UNKNOWN", f"Failed to {what} via any server")


def remote_membership(fed: Any, rooms: Any) -> RemoteMembership:
    """The joining side of this server (built once, kept in ``fed.extras["joins"]``)."""
    joins = fed.extras.get("joins")
    if joins is None:
        joins = fed.extras["joins"] = RemoteMembership(fed, rooms)
    return joins
