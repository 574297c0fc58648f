"""The room queries this server answers other servers: ``/backfill``,
``/get_missing_events``, ``/state``, ``/state_ids``, ``/event``, ``/event_auth`` and
``/timestamp_to_event`` (server-server-api.md "Backfilling and retrieving missing events",
"Retrieving events", "Retrieving event authorisation information"; OpenAPI in
data/api/server-server/backfill.yaml, events.yaml, event_auth.yaml).

Every route is signed (``federation.request_auth.federation_route``) and room-scoped:

* the room must be known here (404 ``M_NOT_FOUND`` otherwise);
* the origin must pass the room's ``m.room.server_acl`` (server-server-api.md "Server Access
  Control Lists": 403 ``M_FORBIDDEN``);
* the origin must have a joined user in the room (403 ``M_FORBIDDEN``, as Synapse's
  ``assert_host_in_room``), except in rooms whose current history visibility is
  ``world_readable``.

What is served: events in federation (PDU) form (``protocol.events.pdu_for_wire``, no
``unsigned``); never rejected events; outliers only where one event is asked for by id
(``/event``, auth chains, state); events the origin may not see by the room's history
visibility come redacted, not omitted (``RoomFederationReads.for_server``), so the DAG stays
walkable.  ``/state`` and ``/state_ids`` are the state BEFORE the event (the spec: "prior to
considering any state changes induced by the requested event"), with the auth chain of those
state events.  Limits: ``/backfill`` ≤ 100 events, ``/get_missing_events`` ≤ 20 (Synapse's
bounds), at most 100 ids in ``v`` / ``latest_events`` and 1,000 in ``earliest_events``.

``room_reads(fed, parts)`` builds (once) the ``store.room_federation_reads.RoomFederationReads``
shared with federation/pdus.py; it is kept in ``fed.extras["room_reads"]``.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import bad_json, forbidden, invalid_param, missing_param, \
    not_found, not_json
from federation.request_auth import BODY_ENVIRON_KEY, signed_route
from protocol.acl import server_allowed
from protocol.events import auth_event_ids, pdu_for_wire
from protocol.room_versions import RoomVersion
from store.room_federation_reads import RoomFederationReads

V1 = "/_matrix/federation/v1"
MAX_BACKFILL = 100
MAX_MISSING = 20
DEFAULT_MISSING = 10
MAX_LATEST = 100
MAX_EARLIEST = 1000
MAX_INT = 2**53 - 1


def room_reads(fed: Any, parts: dict[str, Any]) -> RoomFederationReads:
    """The shared read side over the rooms' store (built on first use)."""
    reads = fed.extras.get("room_reads")
    if reads is None:
        rooms = parts["rooms"]
        reads = RoomFederationReads(fed.db, rooms.events, rooms.state_groups)
        fed.extras["room_reads"] = reads
    return reads


def wire_pdu(ev: dict[str, Any], rv: RoomVersion) -> dict[str, Any]:
    """An event as a PDU on the wire: no Atrium-internal fields, no ``unsigned``."""
    out = pdu_for_wire(ev, rv)
    out.pop("unsigned", None)
    return out


class RoomAccess:
    """The room-scoped checks every served room query makes."""

    def __init__(self, reads: RoomFederationReads) -> None:
        self.reads = reads

    def acl_allows(self, room_id: str, origin: str) -> bool:
        return server_allowed(self.reads.acl_content(room_id), origin)

    def check(self, origin: str, room_id: str, *, member: bool = True) -> RoomVersion:
        """The room's version once ``origin`` may query it; MatrixError otherwise."""
        rv = self.reads.events.room_version(room_id)
        if rv is None:
            raise not_found("Unknown room")
        if not self.acl_allows(room_id, origin):
            raise forbidden("Server is banned from this room by its server ACL")
        if member and not self.reads.server_in_room(room_id, origin) \
                and self.reads.history_visibility(room_id) != "world_readable":
            raise forbidden("Host not in room")
        return rv



def _int_arg(name: str, *, required: bool, default: int = 0) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        if required:
            raise missing_param(f"Missing '{name}'")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_param(f"'{name}' must be an integer") from None
    if not -MAX_INT <= value <= MAX_INT:   # past what either database stores
        raise invalid_param(f"'{name}' is out of range")
    return value


def _event_id_arg() -> str:
    event_id = request.args.get("event_id")
    if not event_id:
        raise missing_param("Missing 'event_id'")
    return event_id


def _json_body() -> Any:
    if BODY_ENVIRON_KEY in request.environ:
        body = request.environ[BODY_ENVIRON_KEY]
    else:
        body = request.get_json(silent=True, force=True)
        if body is None and request.get_data(cache=True):
            raise not_json("Request body is not valid JSON")
    if not isinstance(body, dict):
        raise bad_json("The request body must be a JSON object")
    return body


def _id_list(body: dict[str, Any], key: str, limit: int) -> list[str]:
    value = body.get(key)
    if value is None:
        raise missing_param(f"Missing '{key}'")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"'{key}' must be a list of event ids")
    if len(value) > limit:
        raise bad_json(f"'{key}' may hold at most {limit} event ids")
    return value


def _body_int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json(f"'{key}' must be an integer")
    return value


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> None:
    """Register the served room queries."""
    reads = room_reads(fed, parts)
    access = RoomAccess(reads)
    fed.extras["room_access"] = access
    signed: Callable[[Callable[..., Any]], Callable[..., Any]] = signed_route(fed)
    bp = Blueprint("federation_room_queries", __name__)

    def transaction(pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {"origin": fed.server_name, "origin_server_ts": int(time.time() * 1000),
                "pdus": pdus}

    def served(origin: str, events: list[Any], rv: RoomVersion) -> list[dict[str, Any]]:
        return [wire_pdu(ev, rv) for ev in reads.for_server(origin, events)]

    def event_in_room(room_id: str, event_id: str, *, outlier_ok: bool) -> Any:
        se = reads.events.get_event(event_id)
        if se is None or se.room_id != room_id or se.rejection is not None \
                or (se.outlier and not outlier_ok):
            raise not_found(f"Could not find event {event_id}")
        return se

    @bp.get(f"{V1}/backfill/<room_id>")
    @signed
    def backfill(origin: str, room_id: str) -> Any:
        """GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit="""
        rv = access.check(origin, room_id)
        from_ids = request.args.getlist("v")
        if not from_ids:
            raise missing_param("Missing 'v'")
        if len(from_ids) > MAX_LATEST:
            raise invalid_param(f"At most {MAX_LATEST} event ids in 'v'")
        limit = _int_arg("limit", required=True)
        if limit < 0:
            raise invalid_param("'limit' must not be negative")
        events = reads.backfill(room_id, from_ids, min(limit, MAX_BACKFILL))
        return jsonify(transaction(served(origin, events, rv)))

    @bp.post(f"{V1}/get_missing_events/<room_id>")
    @signed
    def get_missing_events(origin: str, room_id: str) -> Any:
        """POST /_matrix/federation/v1/get_missing_events/{roomId}"""
        rv = access.check(origin, room_id)
        body = _json_body()
        earliest = _id_list(body, "earliest_events", MAX_EARLIEST)
        latest = _id_list(body, "latest_events", MAX_LATEST)
        limit = _body_int(body, "limit", DEFAULT_MISSING)
        min_depth = _body_int(body, "min_depth", 0)
        limit = max(0, min(limit, MAX_MISSING))
        events = reads.missing_events(room_id, earliest, latest, limit, min_depth)
        return jsonify({"events": served(origin, events, rv)})

    def state_at(origin: str, room_id: str) -> tuple[RoomVersion, dict[Any, str]]:
        rv = access.check(origin, room_id)
        event_id = _event_id_arg()
        event_in_room(room_id, event_id, outlier_ok=False)
        state = reads.state_ids_before(event_id)
        if state is None:
            raise not_found(f"The state at {event_id} is not known here")
        return rv, state

    @bp.get(f"{V1}/state_ids/<room_id>")
    @signed
    def state_ids(origin: str, room_id: str) -> Any:
        """GET /_matrix/federation/v1/state_ids/{roomId}?event_id="""
        _, state = state_at(origin, room_id)
        ids = list(state.values())
        chain = reads.auth_chain_ids(ids, room_id=room_id)
        return jsonify({"pdu_ids": ids, "auth_chain_ids": sorted(chain)})

    @bp.get(f"{V1}/state/<room_id>")
    @signed
    def state(origin: str, room_id: str) -> Any:
        """GET /_matrix/federation/v1/state/{roomId}?event_id="""
        rv, state_map = state_at(origin, room_id)
        ids = list(state_map.values())
        got = reads.events.get_events(ids)
        pdus = [wire_pdu(reads.events.visible_form(got[i], rv), rv) for i in ids if i in got]
        chain = [wire_pdu(reads.events.visible_form(se, rv), rv)
                 for se in reads.auth_chain(ids, room_id=room_id)]
        return jsonify({"pdus": pdus, "auth_chain": chain})

    @bp.get(f"{V1}/event/<event_id>")
    @signed
    def event(origin: str, event_id: str) -> Any:
        """GET /_matrix/federation/v1/event/{eventId}"""
        se = reads.events.get_event(event_id)
        if se is None or se.rejection is not None:
            raise not_found(f"Could not find event {event_id}")
        rv = access.check(origin, se.room_id)
        return jsonify(transaction(served(origin, [se], rv)))

    @bp.get(f"{V1}/event_auth/<room_id>/<event_id>")
    @signed
    def event_auth(origin: str, room_id: str, event_id: str) -> Any:
        """GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}"""
        rv = access.check(origin, room_id)
        se = event_in_room(room_id, event_id, outlier_ok=True)
        chain = reads.auth_chain(auth_event_ids(se.event), include_given=True,
                                  room_id=room_id)
        return jsonify({"auth_chain": [wire_pdu(reads.events.visible_form(a, rv), rv)
                                       for a in chain]})

    @bp.get(f"{V1}/timestamp_to_event/<room_id>")
    @signed
    def timestamp_to_event(origin: str, room_id: str) -> Any:
        """GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir="""
        access.check(origin, room_id)
        ts = _int_arg("ts", required=True)
        direction = request.args.get("dir")
        if direction is None:
            raise missing_param("Missing 'dir'")
        if direction not in ("f", "b"):
            raise invalid_param("'dir' must be 'f' or 'b'")
        se = reads.closest_event(room_id, ts, direction)
        if se is None:
            raise not_found(f"Unable to find event from {ts} in direction {direction}")
        return jsonify({"event_id": se.event_id,
                        "origin_server_ts": se.event.get("origin_server_ts")})

    app.register_blueprint(bp)
