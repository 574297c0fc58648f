"""Typing notifications (modules/typing_notifications.md): ``PUT /rooms/{roomId}/typing/
{userId}`` and the in-memory typing stream /sync reads.

Typing state is ephemeral: it lives in this process only (a restart forgets who is typing,
which is what the timeouts would do anyway).  The stream position is a counter that starts at
the clock in ms so tokens never go backwards across restarts.  Each typing user has a gevent
timer that ends the notification after its timeout; only changes of the set of typing users
move the stream (re-sent "still typing" requests just push the timer back).

Users of other servers are tracked here too (``federation/edus.py``, ``m.typing``).  Every
call and every expiry is reported to ``listeners`` (``fn(room_id, user_id, typing)``), so
``federation/edus_out.py`` can tell the other servers of the room about local users —
including a re-sent "still typing", which keeps their timers alive.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import gevent
from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from web.auth import require_auth
from web.http import check_type, json_body, require

log = logging.getLogger(__name__)

P = "/_matrix/client/v3"
MAX_TIMEOUT_MS = 120_000
DEFAULT_TIMEOUT_MS = 30_000


class _RoomTyping:
    __slots__ = ("users", "serial")

    def __init__(self) -> None:
        self.users: dict[str, gevent.Greenlet] = {}
        self.serial = 0


class TypingTracker:
    def __init__(self, notifier: Any) -> None:
        self._notifier = notifier
        self._serial = int(time.time() * 1000)
        self._rooms: dict[str, _RoomTyping] = {}
        #: ``fn(room_id, user_id, typing)`` after each start / refresh / stop / expiry
        self.listeners: list[Callable[[str, str, bool], None]] = []

    def current(self) -> int:
        return self._serial

    def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        room = self._rooms.get(room_id)
        if typing:
            if room is None:
                room = self._rooms[room_id] = _RoomTyping()
            old = room.users.get(user_id)
            if old is not None:
                old.kill(block=False)
            room.users[user_id] = gevent.spawn_later(timeout_ms / 1000.0, self._expire,
                                                     room_id, user_id)
            if old is None:
                self._changed(room_id, room)
            self._tell(room_id, user_id, True)
        elif room is not None and user_id in room.users:
            room.users.pop(user_id).kill(block=False)
            self._changed(room_id, room)
            self._tell(room_id, user_id, False)

    def is_typing(self, room_id: str, user_id: str) -> bool:
        room = self._rooms.get(room_id)
        return room is not None and user_id in room.users

    def _expire(self, room_id: str, user_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is not None and room.users.get(user_id) is gevent.getcurrent():
            del room.users[user_id]
            self._changed(room_id, room)
            self._tell(room_id, user_id, False)

    def _tell(self, room_id: str, user_id: str, typing: bool) -> None:
        for fn in self.listeners:
            try:
                fn(room_id, user_id, typing)
            except Exception:  # noqa: BLE001 - a listener never fails the typing request
                log.exception("typing listener failed")

    def _changed(self, room_id: str, room: _RoomTyping) -> None:
        self._serial += 1
        room.serial = self._serial  # an emptied room stays: later syncs must see it emptied
        self._notifier.wake_room(room_id)

    def typing(self, room_id: str, since: int | None, upto: int) -> list[str] | None:
        """Typing users of the room if the room's set changed in (since, upto] (or, with
        since None, if anyone is typing); None when there is nothing to report."""
        room = self._rooms.get(room_id)
        if room is None:
            return None
        if since is None:
            return sorted(room.users) if room.users else None
        if since < room.serial <= upto:
            return sorted(room.users)
        return None

    def close(self) -> None:
        for room in self._rooms.values():
            for timer in room.users.values():
                timer.kill(block=False)
        self._rooms.clear()


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    rooms = runtime.parts["rooms"]
    bp = Blueprint("typing", __name__)

    @bp.put(f"{P}/rooms/<room_id>/typing/<user_id>")
    def put_typing(room_id: str, user_id: str) -> Any:
        """PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}"""
        req = require_auth()
        body = json_body()
        typing = require(body, "typing", bool)
        timeout = check_type(body, "timeout", int, default=DEFAULT_TIMEOUT_MS)
        if req.user_id != user_id:
            raise MatrixError(403, "M_FORBIDDEN", "Cannot set typing for other users")
        if runtime.parts["user_policy"].is_shadow_banned(user_id):
            runtime.parts["user_policy"].shadow_ban_wait()   # as Synapse: 1–10 s first
            return jsonify({})  # as Synapse: nobody is told
        if typing and timeout is None:
            timeout = DEFAULT_TIMEOUT_MS
        membership, _ = rooms.membership(room_id, user_id)
        if membership != "join":
            raise MatrixError(403, "M_FORBIDDEN", "You are not joined to this room")
        sync.typing.set_typing(room_id, user_id, typing,
                               max(0, min(int(timeout or 0), MAX_TIMEOUT_MS)))
        return jsonify({})

    app.register_blueprint(bp)
