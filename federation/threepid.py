"""Accepting third-party invites: the identity server's ``PUT /_matrix/federation/v1/3pid/
onbind`` (served for our users) and ``PUT /_matrix/federation/v1/exchange_third_party_invite/
{roomId}`` (served for rooms we take part in).

Spec: server-server-api.md "Third-party invites" (third_party_invite.yaml); client-server-api
"Third-party invites" (the sequence H1 / H2 / H3 / IS); the ``third_party_invite`` branch of
the membership-invite auth rule (protocol/auth_third_party.py).  Inviting by 3PID is
web/third_party_invite.py's.

When a 3PID with pending invites is bound, the identity server tells the user's homeserver:
each invite carries the room, the inviter (``sender``) and a ``signed`` block (``mxid``,
``token``) signed by the identity server.  For each one:

* **We take part in the room** (one of our users is joined): the ``m.room.member`` invite
  event is built here, ``sender`` = the inviter as in Synapse, with ``content.
  third_party_invite = {display_name, signed}`` (the display name of the room's
  ``m.room.third_party_invite``), and sent through the RoomActor.  The auth rules allow it
  without the inviter being in the room any more — an invite survives its inviter leaving.
  An inviter of another server signs nothing: the event carries our signature (the spec
  exempts such invites from the sender's server's), and we pass it to the room's other
  servers ourselves (``fed.extras["membership_received"]``, as for a relayed join).
* **We do not** (not resident): we ask a resident server to do it —
  ``/exchange_third_party_invite`` on the inviter's server, then the room id's server (as
  Synapse does); it sends the invite to us over ``/invite``.

Before building the invite, the resident server checks what the spec makes its job: a
public key of the room's ``m.room.third_party_invite`` (state key = ``token``) verifies the
``signed`` block, and that key is still valid at its ``key_validity_url`` (403 when revoked,
502 when it cannot be asked).  An invitee already joined or invited is left as they are (the
auth rule would let a third-party invite turn a join back into an invite).

Authentication: ``/3pid/onbind`` is called by an identity server, which is no Matrix server
and signs no request; as in Synapse it is served without X-Matrix, and what it asks is
proved by the signatures of the invites alone (checked against the room's keys, which the
inviter's server put there).  ``/exchange_third_party_invite`` is a signed request, and the
invitee must be a user of the requesting server.  Synapse serves ``onbind`` as POST (Sydent
sends POST); the spec says PUT; both are served.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping
from urllib.parse import quote

from flask import Blueprint, Flask, g, jsonify, request

from atrium.errors import MatrixError
from federation.errors import FederationError, RemoteHTTPError
from federation.request_auth import BODY_ENVIRON_KEY, signed_route
from protocol.acl import server_allowed
from protocol.auth_third_party import verify_signed_with_any
from protocol.ids import is_valid_room_id, is_valid_user_id, server_of

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
MEMBER = "m.room.member"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
MAX_INVITES = 100
MAX_ONBIND_BODY = 1024 * 1024


def bad(msg: str, errcode: str = "M_INVALID_PARAM") -> MatrixError:
    return MatrixError(400, errcode, msg)


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def _domain(room_id: str) -> str | None:
    return room_id.split(":", 1)[1] if ":" in room_id else None


def check_signed(signed: Any, target: str) -> dict[str, Any]:
    """A ``signed`` block (signed_third_party_invite.yaml) naming ``target``."""
    if not isinstance(signed, Mapping):
        raise bad("'signed' must be an object", "M_BAD_JSON")
    if signed.get("mxid") != target:
        raise bad("'signed.mxid' is not the invited user")
    if not isinstance(signed.get("token"), str) or not signed["token"]:
        raise bad("'signed.token' must be a string")
    if not isinstance(signed.get("signatures"), Mapping):
        raise bad("'signed' has no signatures")
    return dict(signed)


class ThirdPartyInvites:
    """The handlers behind the two routes (kept apart from Flask so tests can drive them)."""

    def __init__(self, fed: Any, parts: dict[str, Any]) -> None:
        self.fed = fed
        self.parts = parts
        self.server_name: str = fed.server_name

    @property
    def rooms(self) -> Any:
        return self.parts["rooms"]

    def _ask(self, room_id: str, msg: Any) -> Any:
        return self.rooms.supervisor.ask(room_id, msg, trace_id=getattr(g, "request_id", None),
                                         sender=f"federation {request.method} "
                                                f"{request.path}"[:120])

    def ours(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    def resident(self, room_id: str) -> bool:
        """Whether one of our users is joined to the room."""
        rows = self.rooms.db.run("threepid_local_joined", lambda t: t.query(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = ?"
            " AND membership = 'join' AND state_key LIKE ?",
            (room_id, MEMBER, "%:" + self.server_name)))
        return any(self.ours(r[0]) for r in rows)

    # -- the invitee's homeserver ---------------------------------------------------------

    def onbind(self, body: Any) -> None:
        """``/3pid/onbind``: turn each pending invite into a membership invite.  Every
        invite is tried; if any failed, the last failure is the answer (as Synapse)."""
        if not isinstance(body, Mapping):
            raise bad("The request body must be a JSON object", "M_BAD_JSON")
        invites = body.get("invites")
        if invites is None:
            return
        if not isinstance(invites, list) or len(invites) > MAX_INVITES:
            raise bad(f"'invites' must be a list of at most {MAX_INVITES}", "M_BAD_JSON")
        last: MatrixError | None = None
        for invite in invites:
            try:
                self._accept(invite)
            except MatrixError as e:
                log.info("3pid onbind: an invite was not accepted: %s", e.error)
                last = e
        if last is not None:
            raise last

    def _accept(self, invite: Any) -> None:
        if not isinstance(invite, Mapping):
            raise bad("each invite must be an object", "M_BAD_JSON")
        room_id, sender, mxid = invite.get("room_id"), invite.get("sender"), invite.get("mxid")
        if not isinstance(room_id, str) or not is_valid_room_id(room_id):
            raise bad("invite without a valid room_id")
        if not isinstance(sender, str) or not is_valid_user_id(sender):
            raise bad("invite without a valid sender")
        if not isinstance(mxid, str) or not is_valid_user_id(mxid) or not self.ours(mxid):
            raise bad("the invited user is not a user of this server")
        self.exchange(room_id, sender, mxid, check_signed(invite.get("signed"), mxid))

    def exchange(self, room_id: str, sender: str, target: str, signed: dict[str, Any]) -> None:
        """Turn a signed third-party invite into ``target``'s membership invite: here if we
        take part in the room, else through a resident server.  Also the seam for a join
        with ``third_party_signed`` (client-server-api ``/join``)."""
        if self.rooms.room_version(room_id) is not None and self.resident(room_id):
            self.invite_here(room_id, sender, target, signed)
            return
        self._exchange_remote(room_id, sender, target, signed)

    def _exchange_remote(self, room_id: str, sender: str, target: str,
                         signed: dict[str, Any]) -> None:
        client = self.fed.client
        if client is None:
            raise forbidden("Federation is switched off on this server")
        dests = [s for s in dict.fromkeys([server_of(sender), _domain(room_id)])
                 if s and s != self.server_name]
        if not dests:
            raise MatrixError(404, "M_NOT_FOUND", "No server to exchange the invite with")
        body = {"type": MEMBER, "room_id": room_id, "sender": sender, "state_key": target,
                "content": {"membership": "invite", "third_party_invite": {"signed": signed}}}
        path = f"{V1}/exchange_third_party_invite/{quote(room_id, safe='')}"
        last: MatrixError | None = None
        for dest in dests:
            try:
                client.put_json(dest, path, body)
                return
            except RemoteHTTPError as e:
                log.info("exchange_third_party_invite at %s: %s %s", dest, e.status, e.errcode)
                last = MatrixError(e.status, e.errcode or "M_UNKNOWN", e.error or
                                   f"{dest} refused") if 400 <= e.status < 500 else None
            except FederationError as e:
                log.info("exchange_third_party_invite at %s: %s", dest, e)
        raise last or MatrixError(502, "M_UNKNOWN", "No server could exchange the invite")

    # -- the resident server ----------------------------------------------------------------

    def invite_here(self, room_id: str, sender: str, target: str,
                    signed: dict[str, Any]) -> None:
        """Build, check and send the membership invite in a room we take part in."""
        from actors.room_messages import BuildEvent, EventSpec, PersistBuilt, Send

        rv = self.rooms.room_version(room_id)
        if rv is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        current = self.rooms.membership(room_id, target)[0]
        if current in ("join", "invite"):
            return  # already there (a retried onbind, or a user who joined meanwhile)
        if current == "ban":
            raise forbidden(f"{target} is banned from the room")
        display_name, invite_sender = self.verify(room_id, signed)
        if invite_sender != sender:
            raise forbidden("The sender is not the sender of the third-party invite")
        content: dict[str, Any] = {"membership": "invite", "third_party_invite": {
            "display_name": display_name, "signed": signed}}
        if self.ours(target):
            content.update(self._profile(target))
        spec = EventSpec(type=MEMBER, sender=sender, content=content, state_key=target)
        if self.ours(target):
            sent = self._ask(room_id, Send(spec=spec))
            if not self.ours(sender):
                self._relay(room_id, sent.event_id)
            return
        if not self.ours(sender):
            raise forbidden("Neither the inviter nor the invitee is a user of this server")
        from federation.join import remote_membership

        built = self._ask(room_id, BuildEvent(spec=spec))
        countersigned = remote_membership(self.fed, self.rooms).invite(room_id, rv, built)
        self._ask(room_id, PersistBuilt(event=countersigned))

    def verify(self, room_id: str, signed: Mapping[str, Any]) -> tuple[str, str]:
        """The room's ``m.room.third_party_invite`` for ``signed.token``: a key of it must
        verify ``signed`` and still be valid at its ``key_validity_url``.  Its
        (display_name, sender)."""
        se = self.rooms.current_state_event(room_id, THIRD_PARTY_INVITE, signed["token"])
        content = se.event.get("content") if se is not None else None
        if not isinstance(content, Mapping) or not content:
            raise forbidden("No third-party invite in the room for this token")
        for key, url in _public_keys(content):
            if not verify_signed_with_any(signed, [key]):
                continue
            if url is not None:
                identity = self.identity()
                if not identity.key_is_valid(url, key):
                    raise forbidden("The identity server's key for this invite was revoked")
            name = content.get("display_name")
            return (name if isinstance(name, str) else ""), str(se.event.get("sender"))
        raise forbidden("No key of the third-party invite verifies the signature")

    def identity(self) -> Any:
        client = self.parts.get("identity_client")
        if client is None:
            raise MatrixError(502, "M_UNKNOWN", "This server has no identity-server client")
        return client

    def _profile(self, user_id: str) -> dict[str, Any]:
        accounts = self.parts.get("accounts")
        profile = accounts.get_profile(user_id) if accounts is not None else None
        return {k: v for k, v in (profile or {}).items()
                if k in ("displayname", "avatar_url") and v is not None}

    def _relay(self, room_id: str, event_id: str) -> None:
        """Our event with another server's sender is not sent out by the rooms' hook: hand
        it to the outbound side as a relayed membership (to every other server)."""
        hook = self.fed.extras.get("membership_received")
        if callable(hook):
            try:
                hook(room_id, event_id, self.server_name)
            except Exception:  # noqa: BLE001 - the invite is in; sending it is best effort
                log.exception("sending the third-party invite %s of %s failed", event_id,
                              room_id)

    def serve_exchange(self, origin: str, room_id: str, body: Any) -> None:
        """``/exchange_third_party_invite/{roomId}`` of ``origin`` (the invitee's server)."""
        if not is_valid_room_id(room_id):
            raise bad(f"Invalid room id {room_id!r}")
        if not isinstance(body, Mapping):
            raise bad("The request body must be a JSON object", "M_BAD_JSON")
        if body.get("type") != MEMBER:
            raise bad("The event must be an m.room.member event")
        if body.get("room_id") != room_id:
            raise bad("The event's room_id does not match the path")
        sender, target = body.get("sender"), body.get("state_key")
        if not isinstance(sender, str) or not is_valid_user_id(sender):
            raise bad("Invalid sender")
        if not isinstance(target, str) or not is_valid_user_id(target):
            raise bad("Invalid state_key")
        if server_of(target) != origin:
            raise forbidden(f"{target} is not a user of {origin}")
        content = body.get("content")
        if not isinstance(content, Mapping) or content.get("membership") != "invite":
            raise bad("The event's membership must be invite")
        tpi = content.get("third_party_invite")
        if not isinstance(tpi, Mapping):
            raise bad("The event has no third_party_invite", "M_MISSING_PARAM")
        signed = check_signed(tpi.get("signed"), target)
        if self.rooms.room_version(room_id) is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        from federation.room_queries import room_reads

        if not server_allowed(room_reads(self.fed, self.parts).acl_content(room_id), origin):
            raise forbidden("Server is banned from this room by its server ACL")
        if not self.resident(room_id):
            raise forbidden("This server takes no part in the room")
        self.invite_here(room_id, sender, target, signed)


def _public_keys(content: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(public key, key_validity_url or None) of an m.room.third_party_invite: each of
    ``public_keys`` (a key without a URL is valid indefinitely), then ``public_key`` with
    ``key_validity_url``."""
    out: list[tuple[str, str | None]] = []
    listed = content.get("public_keys")
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
            url = entry.get("key_validity_url")
            out.append((entry["public_key"], url if isinstance(url, str) else None))
    if isinstance(content.get("public_key"), str):
        url = content.get("key_validity_url")
        out.append((content["public_key"], url if isinstance(url, str) else None))
    return out


def _unsigned_body() -> Any:
    """The JSON body of a request no server signed (bounded; 400 ``M_NOT_JSON``)."""
    request.max_content_length = MAX_ONBIND_BODY
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Request body is not valid JSON") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _body() -> Any:
    if BODY_ENVIRON_KEY in request.environ:
        return request.environ[BODY_ENVIRON_KEY]
    return request.get_json(silent=True, force=True)


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> ThirdPartyInvites:
    """Register the two routes; ``fed.extras["threepid"]`` is the handler."""
    tp = ThirdPartyInvites(fed, parts)
    fed.extras["threepid"] = tp
    signed: Callable[[Callable[..., Any]], Callable[..., Any]] = signed_route(fed)
    bp = Blueprint("federation_threepid", __name__)

    @bp.route(f"{V1}/3pid/onbind", methods=["PUT", "POST"])
    def onbind() -> Any:
        """PUT /_matrix/federation/v1/3pid/onbind (POST too: what Sydent sends)"""
        tp.onbind(_unsigned_body())
        return jsonify({})

    @bp.put(f"{V1}/exchange_third_party_invite/<room_id>")
    @signed
    def exchange(origin: str, room_id: str) -> Any:
        """PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}"""
        tp.serve_exchange(origin, room_id, _body())
        return jsonify({})

    app.register_blueprint(bp)
    return tp
