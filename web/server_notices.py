"""Server notices (client-server-api "Server Notices", modules/server_notices.md) and
Synapse's admin API to send one: ``POST /_synapse/admin/v1/send_server_notice`` and
``PUT …/send_server_notice/{txnId}`` (admins only; body ``{user_id, content, type?,
state_key?}`` → ``{event_id}``).

As Synapse does it (``server_notices/server_notices_manager.py``), configured by
``server_notices`` (atrium/server_notices_config.py):

- The system user ``@{system_mxid_localpart}:{server_name}`` is created on first use,
  without a password (nobody can log in as it), with the configured display name and avatar.
- Each user has one notice room: a room the system user is joined to and the user is
  invited to or joined.  When there is none (first notice, or the user left the last one)
  the system user creates one (private chat, the configured name, topic and avatar, and
  ``users_default: -10`` so the user cannot send or invite), tags it ``m.server_notice`` in
  the user's account data (how clients recognise it) and invites the user; with
  ``auto_join`` the user is joined at once.  An existing room has its name, topic, avatar
  and the system user's profile brought in line with the config first.
- The user cannot reject the invite: a ``leave`` of an invited user in the notice room is
  403 ``M_CANNOT_LEAVE_SERVER_NOTICE_ROOM`` (the spec's code).  Once joined, the user may
  leave (the spec: servers should not prevent it); the next notice makes a new room.
- Not configured: 400 ``M_UNKNOWN``; a user of another server: 400; an unknown user: 404.
  ``PUT`` with a transaction id is idempotent (the room's transaction record, per admin
  device).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask, jsonify, request

from actors.room_create import plan_room
from actors.room_messages import EventSpec, InitRoom
from actors.user_messages import PutTag
from atrium.errors import MatrixError, bad_json, invalid_param, missing_param, not_found
from atrium.server_notices_config import ServerNoticesConfig
from protocol.ids import is_valid_user_id, server_of
from store.accounts import UserInUse
from web.auth import require_admin, require_auth
from web.http import json_body
from web.rooms import get_profile

log = logging.getLogger(__name__)

SERVER_NOTICE_TAG = "m.server_notice"
CANNOT_LEAVE = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"


class ServerNotices:
    """``rooms`` is the RoomService, ``accounts`` the AccountStore, ``sync`` the SyncService
    (the user actors that write tags).  ``cfg`` None: server notices are off."""

    def __init__(self, cfg: ServerNoticesConfig | None, server_name: str, rooms: Any,
                 accounts: Any, sync: Any) -> None:
        self.cfg = cfg
        self.server_name = server_name
        self.rooms = rooms
        self.accounts = accounts
        self.sync = sync
        self._lock = threading.Lock()   # one notice room per user: creation one at a time

    @property
    def system_user(self) -> str | None:
        return self.cfg.system_user(self.server_name) if self.cfg is not None else None

    # -- reads --------------------------------------------------------------------------
    def notice_room(self, user_id: str) -> str | None:
        """The user's notice room: the system user joined, the user invited or joined."""
        system = self.system_user
        if system is None:
            return None
        return self.rooms.db.run("server_notice_room", lambda t: t.query_value(
            "SELECT u.room_id FROM current_state u JOIN current_state s"
            " ON s.room_id = u.room_id AND s.type = 'm.room.member' AND s.state_key = ?"
            " AND s.membership = 'join'"
            " WHERE u.type = 'm.room.member' AND u.state_key = ?"
            " AND u.membership IN ('invite', 'join') ORDER BY u.room_id", (system, user_id)))

    def is_notice_room(self, room_id: str) -> bool:
        system = self.system_user
        return system is not None and self.rooms.membership(room_id, system)[0] == "join"

    # -- sending ------------------------------------------------------------------------
    def send(self, user_id: str, etype: str, content: dict[str, Any],
             state_key: str | None, txn: tuple[str, str] | None) -> str:
        """Send one notice to ``user_id``; its event id."""
        assert self.cfg is not None
        system = self.cfg.system_user(self.server_name)
        with self._lock:
            self._ensure_system_user(system)
            room_id = self.notice_room(user_id)
            if room_id is None:
                room_id = self._create_room(system, user_id)
            else:
                self._bring_in_line(system, room_id)
            if self.rooms.membership(room_id, user_id)[0] not in ("invite", "join"):
                self._invite(system, user_id, room_id)
        sent = self.rooms.send(room_id, EventSpec(type=etype, sender=system, content=content,
                                                  state_key=state_key), txn=txn)
        log.info("server notice %s sent to %s in %s", sent.event_id, user_id, room_id)
        return sent.event_id

    def _profile(self) -> dict[str, Any]:
        assert self.cfg is not None
        out = {"displayname": self.cfg.system_mxid_display_name,
               "avatar_url": self.cfg.system_mxid_avatar_url}
        return {k: v for k, v in out.items() if v is not None}

    def _ensure_system_user(self, system: str) -> None:
        if self.accounts.user_exists(system):
            return
        try:
            self.accounts.register_user(system, None,
                                        displayname=self._profile().get("displayname"))
        except UserInUse:
            return                      # created concurrently: fine
        avatar = self._profile().get("avatar_url")
        if avatar is not None:
            self.accounts.set_profile_field(system, "avatar_url", avatar)
        log.info("server notices: created the system user %s", system)

    def _create_room(self, system: str, user_id: str) -> str:
        assert self.cfg is not None
        body: dict[str, Any] = {"preset": "private_chat",
                                "power_level_content_override": {"users_default": -10}}
        if self.cfg.room_name:
            body["name"] = self.cfg.room_name
        if self.cfg.room_topic:
            body["topic"] = self.cfg.room_topic
        if self.cfg.room_avatar_url:
            body["initial_state"] = [{"type": "m.room.avatar", "state_key": "",
                                      "content": {"url": self.cfg.room_avatar_url}}]
        rv = self.rooms.resolve_room_version(None)
        plan = plan_room(rv, system, self.server_name, body, creator_profile=self._profile())
        create = self.rooms.build_create_event(rv, system, plan.create_content)
        room_id = create["room_id"]
        self.rooms.ask(room_id, InitRoom(create_event=create, initial=plan.initial,
                                         is_public=False))
        self.sync.ask_user(user_id, PutTag(room_id, SERVER_NOTICE_TAG, {}))
        log.info("server notices: created %s for %s", room_id, user_id)
        return room_id

    def _invite(self, system: str, user_id: str, room_id: str) -> None:
        assert self.cfg is not None
        self.rooms.send(room_id, EventSpec(type="m.room.member", sender=system,
                                           content={"membership": "invite"},
                                           state_key=user_id))
        if self.cfg.auto_join:
            content = {"membership": "join", **get_profile(self.rooms, user_id)}
            self.rooms.send(room_id, EventSpec(type="m.room.member", sender=user_id,
                                               content=content, state_key=user_id))

    def _bring_in_line(self, system: str, room_id: str) -> None:
        """The room's name, topic and avatar and the system user's profile in it as
        configured now (Synapse does the same each time it uses a room)."""
        assert self.cfg is not None
        for etype, field, want in (("m.room.name", "name", self.cfg.room_name),
                                   ("m.room.topic", "topic", self.cfg.room_topic),
                                   ("m.room.avatar", "url", self.cfg.room_avatar_url)):
            ev = self.rooms.current_state_event(room_id, etype, "")
            have = (ev.event.get("content") or {}).get(field) if ev is not None else None
            if (have or None) != (want or None):
                self.rooms.send(room_id, EventSpec(type=etype, sender=system,
                                                   content={field: want or ""},
                                                   state_key=""))
        member = self.rooms.current_state_event(room_id, "m.room.member", system)
        content = (member.event.get("content") or {}) if member is not None else {}
        profile = self._profile()
        if any(content.get(k) != profile.get(k) for k in ("displayname", "avatar_url")):
            self.rooms.send(room_id, EventSpec(type="m.room.member", sender=system,
                                               content={"membership": "join", **profile},
                                               state_key=system))


def register(app: Flask, runtime: Any) -> ServerNotices:
    config = runtime.config
    notices = ServerNotices(config.server_notices, config.server_name, runtime.parts["rooms"],
                            runtime.parts["accounts"], runtime.parts["sync"])
    runtime.parts["server_notices"] = notices

    def send_notice(txn_id: str | None) -> Any:
        req = require_admin()
        body = json_body()
        missing = [k for k in ("user_id", "content") if k not in body]
        if missing:
            raise missing_param(f"Missing params: {missing}")
        content, etype = body["content"], body.get("type", "m.room.message")
        state_key = body.get("state_key")
        if not isinstance(content, dict):
            raise bad_json("'content' must be an object")
        if not isinstance(etype, str) or not etype:
            raise bad_json("'type' must be a string")
        if state_key is not None and not isinstance(state_key, str):
            raise bad_json("'state_key' must be a string")
        if notices.cfg is None:
            raise MatrixError(400, "M_UNKNOWN", "Server notices are not enabled on this server")
        user_id = body["user_id"]
        if not isinstance(user_id, str) or not is_valid_user_id(user_id):
            raise invalid_param("'user_id' must be a user id")
        if server_of(user_id) != config.server_name:
            raise MatrixError(400, "M_UNKNOWN", "Server notices can only be sent to local users")
        if user_id == notices.system_user:
            raise invalid_param("The server notices user does not get notices")
        if not runtime.parts["accounts"].user_exists(user_id):
            raise not_found("User not found")
        txn = (f"server_notice {req.user_id} {req.device_id}", txn_id) \
            if txn_id is not None else None
        return jsonify({"event_id": notices.send(user_id, etype, content, state_key, txn)})

    @app.post("/_synapse/admin/v1/send_server_notice")
    def send_server_notice() -> Any:
        """POST /_synapse/admin/v1/send_server_notice"""
        return send_notice(None)

    @app.put("/_synapse/admin/v1/send_server_notice/<txn_id>")
    def send_server_notice_txn(txn_id: str) -> Any:
        """PUT /_synapse/admin/v1/send_server_notice/{txnId}"""
        return send_notice(txn_id)

    @app.before_request
    def _no_rejecting_the_notice_room() -> None:
        """The invite to the notice room cannot be rejected (a leave while invited)."""
        if request.endpoint != "rooms.leave" or notices.cfg is None:
            return
        room_id = (request.view_args or {}).get("room_id")
        if not isinstance(room_id, str):
            return
        user_id = require_auth(allow_guest=True).user_id
        if notices.rooms.membership(room_id, user_id)[0] == "invite" \
                and notices.is_notice_room(room_id):
            raise MatrixError(403, CANNOT_LEAVE, "You cannot reject this invite")

    return notices
