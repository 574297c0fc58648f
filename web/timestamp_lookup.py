"""``GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=`` (client-server-api
"Room history", data/api/client-server/room_event_by_timestamp.yaml): the event closest to
``ts`` in direction ``dir`` ("f": at or after, "b": at or before), ``{"event_id",
"origin_server_ts"}``, or 404 ``M_NOT_FOUND``.

Who may ask (as Synapse): a joined member, or anyone while the room is world-readable; else
403 ``M_FORBIDDEN``.  With federation on, other servers in the room are asked when this one
may not hold the closest event (federation/timestamp_lookup.py); without it, the local
answer only.
"""
from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from atrium.errors import MatrixError, invalid_param, missing_param
from protocol.ids import is_valid_room_id
from store.room_federation_reads import RoomFederationReads
from web.auth import require_auth
from web.http import query_int
from web.visibility import history_visibility


def register(app: Flask, runtime: Any) -> None:
    rooms = runtime.parts["rooms"]
    local = RoomFederationReads(runtime.db, rooms.events, rooms.state_groups)

    def closest(room_id: str, ts: int, direction: str) -> tuple[str, int] | None:
        fed = runtime.parts.get("federation")
        if fed is not None and fed.client is not None:
            from federation.timestamp_lookup import lookup

            return lookup(fed, runtime.parts).closest(room_id, ts, direction)
        se = local.closest_event(room_id, ts, direction)
        return (se.event_id, int(se.event.get("origin_server_ts", 0))) if se else None

    @app.get("/_matrix/client/v1/rooms/<room_id>/timestamp_to_event")
    def timestamp_to_event(room_id: str) -> Any:
        """GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event"""
        req = require_auth()
        if request.args.get("ts") is None:
            raise missing_param("Missing query parameter 'ts'")
        ts = query_int("ts", minimum=0)
        direction = request.args.get("dir")
        if direction is None:
            raise missing_param("Missing query parameter 'dir'")
        if direction not in ("f", "b"):
            raise invalid_param("Query parameter 'dir' must be 'f' or 'b'")
        if not is_valid_room_id(room_id):
            raise invalid_param(f"Invalid room id {room_id!r}")
        membership, _ = rooms.membership(room_id, req.user_id)
        if membership != "join" and (
                rooms.room_version(room_id) is None
                or history_visibility(rooms, rooms.events.get_current_state_ids(room_id))
                != "world_readable"):
            raise MatrixError(403, "M_FORBIDDEN", f"User {req.user_id} not in room {room_id}")
        assert ts is not None
        got = closest(room_id, ts, direction)
        if got is None:
            raise MatrixError(404, "M_NOT_FOUND",
                              f"Unable to find event from {ts} in direction {direction}")
        return jsonify({"event_id": got[0], "origin_server_ts": got[1]})
