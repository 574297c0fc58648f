"""Inviting by third-party identifier: ``POST /rooms/{roomId}/invite`` with ``id_server`` /
``id_access_token`` / ``medium`` / ``address``, and ``createRoom``'s ``invite_3pid``.

Spec: client-server-api "Third-party invites" (third_party_membership.yaml,
definitions/invite_3pid.yaml, m.room.third_party_invite); identity-service-api "Association
lookup" and "Invitation storage".  The flow, as the spec draws it and Synapse runs it
(room_member.py ``do_3pid_invite``):

1. the identity server is asked whom the 3PID is bound to (v2 hashed lookup);
2. bound: the caller invites that Matrix ID like any other (local, or over federation);
3. not bound: the identity server stores the invite (``/store-invite``, with the room's name,
   alias, avatar, join rule and type and the inviter's profile for its e-mail) and answers a
   token, its public keys and a redacted display name; the room gets an
   ``m.room.third_party_invite`` state event (state key = the token) sent through the
   RoomActor like any client event.

Unlike Synapse, whether the inviter may invite at all is checked *before* the identity
server is asked (a dry run of the state event in the room's actor), so a refused invite
leaves no stored invite, and no e-mail, at the identity server.

Accepting the invite (the identity server's ``/3pid/onbind``, ``/exchange_third_party_invite``)
is federation/threepid.py's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atrium.errors import MatrixError, bad_json, missing_param
from protocol.ids import is_valid_user_id
from web.account import identity_client
from web.auth import Requester
from web.room_service import RoomService

from actors.room_messages import BuildEvent, EventSpec

THIRD_PARTY_INVITE = "m.room.third_party_invite"
MAX_INVITES_3PID = 50
FIELDS = ("id_server", "id_access_token", "medium", "address")


@dataclass(frozen=True)
class Invite3pid:
    id_server: str
    id_access_token: str
    medium: str
    address: str


def parse_invite(body: Any, where: str = "") -> Invite3pid:
    """One Invite3pid object (definitions/invite_3pid.yaml: all four fields required; as in
    Synapse, ``id_server`` and ``id_access_token`` are 400 ``M_MISSING_PARAM`` when absent)."""
    if not isinstance(body, dict):
        raise bad_json(f"{where or 'the invite'} must be an object")
    values = []
    for key in FIELDS:
        if key not in body:
            raise missing_param(f"Missing '{where}{key}': id_server and id_access_token are"
                                " required for a third-party invite")
        if not isinstance(body[key], str):
            raise bad_json(f"'{where}{key}' must be a string")
        values.append(body[key])
    return Invite3pid(*values)


def parse_invite_3pid(body: dict[str, Any]) -> list[Invite3pid]:
    """createRoom's ``invite_3pid`` (absent or null: none)."""
    value = body.get("invite_3pid")
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_json("'invite_3pid' must be a list")
    if len(value) > MAX_INVITES_3PID:
        raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_INVITES_3PID} invite_3pid")
    return [parse_invite(v, f"invite_3pid[{i}].") for i, v in enumerate(value)]


def invite_3pid(runtime: Any, req: Requester, room_id: str, inv: Invite3pid) -> str | None:
    """Run the invite: the Matrix ID the 3PID is bound to (the caller invites it), or None
    once the ``m.room.third_party_invite`` is in the room."""
    svc: RoomService = runtime.parts["rooms"]
    svc.require_room(room_id)
    svc.ask(room_id, BuildEvent(spec=_third_party_invite_spec(req.user_id, "probe", {
        "display_name": "", "key_validity_url": "", "public_key": "", "public_keys": []})))
    client = identity_client(runtime)
    mxid = client.lookup(inv.id_server, inv.id_access_token, inv.medium, inv.address)
    if mxid is not None:
        if not is_valid_user_id(mxid):
            raise MatrixError(502, "M_UNKNOWN", "The identity server answered an invalid"
                              " Matrix ID")
        return mxid
    params = {"medium": inv.medium, "address": inv.address, "room_id": room_id,
              "sender": req.user_id, **room_details(svc, room_id, req.user_id)}
    stored = client.store_invite(inv.id_server, inv.id_access_token, params)
    fallback = stored["fallback"]
    content = {"display_name": stored["display_name"], "public_keys": stored["public_keys"],
               "key_validity_url": fallback["key_validity_url"],
               "public_key": fallback["public_key"]}
    svc.send(room_id, _third_party_invite_spec(req.user_id, stored["token"], content))
    return None


def _third_party_invite_spec(sender: str, token: str, content: dict[str, Any]) -> EventSpec:
    return EventSpec(type=THIRD_PARTY_INVITE, sender=sender, content=content, state_key=token)


def room_details(svc: RoomService, room_id: str, inviter: str) -> dict[str, str]:
    """What ``/store-invite`` may be told for its e-mail (identity-service-api "store-invite":
    the room's alias, avatar, join rule, name and type; the inviter's name and avatar —
    the name defaults to the Matrix ID, as in Synapse)."""
    def content(etype: str, skey: str = "") -> dict[str, Any]:
        se = svc.current_state_event(room_id, etype, skey)
        c = se.event.get("content") if se is not None else None
        return c if isinstance(c, dict) else {}

    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""

    member = content("m.room.member", inviter)
    out = {"room_alias": text(content("m.room.canonical_alias").get("alias")),
           "room_avatar_url": text(content("m.room.avatar").get("url")),
           "room_join_rules": text(content("m.room.join_rules").get("join_rule")),
           "room_name": text(content("m.room.name").get("name")),
           "sender_display_name": text(member.get("displayname")) or inviter,
           "sender_avatar_url": text(member.get("avatar_url"))}
    room_type = content("m.room.create").get("type")
    if isinstance(room_type, str):
        out["room_type"] = room_type
    return out
