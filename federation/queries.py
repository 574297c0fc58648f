"""The federation queries this server answers, and the wiring of ``fed.queries``.

Spec: server-server-api "Server implementation" (``GET /version``), "Querying for
information" (``GET /query/profile``, ``GET /query/directory``), "Device Management"
(``GET /user/devices/{userId}``), "End-to-End Encryption" (``POST /user/keys/query``,
``POST /user/keys/claim``), "Public Room Directory" (``GET``/``POST /publicRooms``) and
"OpenID" (``GET /openid/userinfo``).

Every route but ``/version`` and ``/openid/userinfo`` (unauthenticated per spec) is a signed
request: ``fed.verifier.authenticate`` gives the origin and ``fed.verifier.limited(origin)``
applies ``rc_federation`` around the handler; with no verifier the answer is 401.  Questions
are only answered about users and aliases of this server (others: 400, as Synapse).

What is served belongs to client-API areas; ``federation/`` never imports ``web/``, so the
parts come from ``runtime.parts`` (handed over by ``web/federation_wiring.py``): ``accounts``
(profiles), ``directory`` (aliases), ``public_rooms`` (the directory's listing function,
put there by ``web/directory.py``), ``e2e_keys`` (query and the exactly-once claim),
``openid`` (``store/openid.py``).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from flask import Blueprint, Flask, current_app, jsonify, request

import atrium
from atrium.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param, \
    not_found
from federation.request_auth import signed_route
from federation.remote_queries import RemoteQueries
from protocol.ids import is_valid_room_alias, is_valid_user_id, server_of

V1 = "/_matrix/federation/v1"
#: Bounds on one request (ARCHITECTURE invariant 5), as the client API's.
MAX_QUERY_USERS = 1000
MAX_CLAIM_DEVICES = 3000
PROFILE_FIELDS = ("displayname", "avatar_url")
MAX_FIELD_LENGTH = 255


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> None:
    """Set ``fed.queries`` and register the served query routes."""
    fed.queries = RemoteQueries(fed, parts)
    server_name: str = fed.server_name
    bp = Blueprint("federation_queries", __name__)

    signed = signed_route(fed)

    def ours(user_id: Any, what: str = "user_id") -> str:
        if not isinstance(user_id, str) or not user_id:
            raise missing_param(f"Missing '{what}'")
        if not is_valid_user_id(user_id):
            raise invalid_param(f"Invalid user id {user_id!r}")
        if server_of(user_id) != server_name:
            raise invalid_param("User is not hosted on this homeserver")
        return user_id

    @bp.get(f"{V1}/version")
    def version() -> Any:
        """GET /_matrix/federation/v1/version (unauthenticated)"""
        return jsonify({"server": {"name": "Atrium", "version": atrium.__version__}})

    @bp.get(f"{V1}/query/profile")
    @signed
    def query_profile(origin: str) -> Any:
        """GET /_matrix/federation/v1/query/profile?user_id=&field="""
        user_id = ours(request.args.get("user_id"))
        field = request.args.get("field")
        if field is not None and (not field or len(field) > MAX_FIELD_LENGTH):
            raise invalid_param("Invalid profile field")
        profile = parts["accounts"].get_profile(user_id)
        if profile is None:
            raise not_found("Profile was not found")
        if field is not None and field not in PROFILE_FIELDS:
            raise not_found(f"The profile has no field {field!r}")
        shown = {k: v for k, v in profile.items() if k in PROFILE_FIELDS and v is not None}
        if field is not None:
            shown = {k: v for k, v in shown.items() if k == field}
        return jsonify(shown)

    @bp.get(f"{V1}/query/directory")
    @signed
    def query_directory(origin: str) -> Any:
        """GET /_matrix/federation/v1/query/directory?room_alias="""
        alias = request.args.get("room_alias")
        if not alias:
            raise missing_param("Missing 'room_alias'")
        if not is_valid_room_alias(alias):
            raise invalid_param("Room alias invalid")
        if server_of(alias) != server_name:
            raise invalid_param("Room alias is not hosted on this homeserver")
        row = parts["directory"].get_alias(alias)
        if row is None:
            raise not_found("Room alias not found")
        others = resident_servers(fed.db, row.room_id)
        servers = [server_name] + sorted(s for s in others if s != server_name)
        return jsonify({"room_id": row.room_id, "servers": servers})

    @bp.get(f"{V1}/user/devices/<path:user_id>")
    @signed
    def user_devices(origin: str, user_id: str) -> Any:
        """GET /_matrix/federation/v1/user/devices/{userId}"""
        ours(user_id)
        res = parts["e2e_keys"].query("", {user_id: []})
        devices = []
        for device_id, obj in sorted((res.device_keys.get(user_id) or {}).items()):
            keys = dict(obj)
            unsigned = dict(keys.pop("unsigned", None) or {})
            name = unsigned.pop("device_display_name", None)
            if unsigned:
                keys["unsigned"] = unsigned
            entry: dict[str, Any] = {"device_id": device_id, "keys": keys}
            if name is not None:
                entry["device_display_name"] = name
            devices.append(entry)
        out: dict[str, Any] = {"user_id": user_id,
                               "stream_id": device_list_position(fed.db, user_id),
                               "devices": devices}
        if user_id in res.master_keys:
            out["master_key"] = res.master_keys[user_id]
        if user_id in res.self_signing_keys:
            out["self_signing_key"] = res.self_signing_keys[user_id]
        return jsonify(out)

    @bp.post(f"{V1}/user/keys/query")
    @signed
    def keys_query(origin: str) -> Any:
        """POST /_matrix/federation/v1/user/keys/query"""
        wanted = _user_map(json_body(), "device_keys", list, MAX_QUERY_USERS)
        local: dict[str, list[str]] = {}
        for user_id, devices in wanted.items():
            ours(user_id, "device_keys")
            if not all(isinstance(d, str) for d in devices):
                raise bad_json("'device_keys' must map user ids to lists of device ids")
            local[user_id] = devices
        # requester "": only the owners' own signatures (user-signing signatures stay private)
        res = parts["e2e_keys"].query("", local)
        return jsonify({"device_keys": res.device_keys, "master_keys": res.master_keys,
                        "self_signing_keys": res.self_signing_keys})

    @bp.post(f"{V1}/user/keys/claim")
    @signed
    def keys_claim(origin: str) -> Any:
        """POST /_matrix/federation/v1/user/keys/claim"""
        wanted = _user_map(json_body(), "one_time_keys", dict, MAX_CLAIM_DEVICES)
        triples = []
        for user_id, devices in wanted.items():
            ours(user_id, "one_time_keys")
            for device_id, alg in devices.items():
                if not isinstance(alg, str):
                    raise bad_json("'one_time_keys' must map devices to algorithms")
                triples.append((user_id, device_id, alg))
        if len(triples) > MAX_CLAIM_DEVICES:
            raise invalid_param(f"At most {MAX_CLAIM_DEVICES} devices per claim")
        return jsonify({"one_time_keys": parts["e2e_keys"].claim(triples)})

    def public_rooms_allowed() -> Callable[..., dict[str, Any]]:
        if not fed.config.federation.allow_public_rooms_over_federation:
            raise forbidden(f"You are not allowed to view the public rooms list of "
                            f"{server_name}")
        return parts["public_rooms"]

    @bp.get(f"{V1}/publicRooms")
    @signed
    def public_rooms_get(origin: str) -> Any:
        """GET /_matrix/federation/v1/publicRooms"""
        listing = public_rooms_allowed()
        limit = _int_arg("limit")
        all_networks = _bool_arg("include_all_networks")
        instance = request.args.get("third_party_instance_id")
        if instance is not None and all_networks:
            raise invalid_param("third_party_instance_id cannot be used with "
                                "include_all_networks")
        if instance is not None:  # no bridged networks here
            return jsonify({"chunk": [], "total_room_count_estimate": 0})
        return jsonify(listing(limit=limit, since=request.args.get("since") or None))

    @bp.post(f"{V1}/publicRooms")
    @signed
    def public_rooms_post(origin: str) -> Any:
        """POST /_matrix/federation/v1/publicRooms"""
        listing = public_rooms_allowed()
        body = json_body(optional=True)
        limit = _typed(body, "limit", int)
        if limit is not None and limit < 0:
            raise invalid_param("'limit' must not be negative")
        since = _typed(body, "since", str)
        flt = _typed(body, "filter", dict) or {}
        term = _typed(flt, "generic_search_term", str)
        room_types = _typed(flt, "room_types", list)
        if room_types is not None and not all(t is None or isinstance(t, str)
                                              for t in room_types):
            raise invalid_param("room_types must be a list of strings or null")
        all_networks = _typed(body, "include_all_networks", bool) or False
        instance = _typed(body, "third_party_instance_id", str)
        if instance is not None and all_networks:
            raise invalid_param("third_party_instance_id cannot be used with "
                                "include_all_networks")
        if instance is not None:
            return jsonify({"chunk": [], "total_room_count_estimate": 0})
        return jsonify(listing(limit=limit, since=since or None, term=term,
                               room_types=room_types))

    @bp.get(f"{V1}/openid/userinfo")
    def openid_userinfo() -> Any:
        """GET /_matrix/federation/v1/openid/userinfo?access_token= (unauthenticated)"""
        token = request.args.get("access_token")
        store = parts.get("openid")
        user_id = store.user_for(token) if token and store is not None else None
        if user_id is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Access token unknown or expired")
        return jsonify({"sub": user_id})

    app.register_blueprint(bp)


# ---------------------------------------------------------------------- request helpers
def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (400 M_NOT_JSON / M_BAD_JSON, 413 M_TOO_LARGE).  Reuses a
    body the verifier already parsed (``request_auth.BODY_ENVIRON_KEY``), else reads it
    within the app's body limit (``get_data`` keeps it for anyone reading after us)."""
    for key in ("atrium.federation.body", "atrium.json_body"):  # request_auth's, ours
        cached = request.environ.get(key)
        if isinstance(cached, dict):
            return cached
    limit = current_app.config.get("ATRIUM_MAX_BODY")
    if limit:
        if request.content_length is not None and request.content_length > limit:
            raise MatrixError(413, "M_TOO_LARGE", "Request body too large")
        request.max_content_length = limit
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON.") from None
    if not isinstance(body, dict):
        raise bad_json("Content must be a JSON object.")
    request.environ["atrium.json_body"] = body
    return body


def _user_map(body: Mapping[str, Any], key: str, kind: type, limit: int) -> dict[str, Any]:
    if key not in body:
        raise missing_param(f"Missing '{key}'")
    value = body[key]
    if not isinstance(value, dict) or not all(isinstance(v, kind) for v in value.values()):
        raise bad_json(f"'{key}' must map user ids to {'lists' if kind is list else 'objects'}")
    if len(value) > limit:
        raise invalid_param(f"At most {limit} users per request")
    return value


def _typed(body: Mapping[str, Any], key: str, kind: type) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise bad_json(f"'{key}' has the wrong type")
    return v


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = int(raw)
    except ValueError:
        raise invalid_param(f"'{name}' must be an integer") from None
    if v < 0 or v > 2**31:
        raise invalid_param(f"'{name}' is out of range")
    return v


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise invalid_param(f"'{name}' must be true or false")


# ---------------------------------------------------------------------- store reads
def resident_servers(db: Any, room_id: str) -> set[str]:
    """Servers with a joined member in the room's current state."""
    rows = db.run("resident_servers", lambda t: t.query(
        "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
        " AND membership = 'join'", (room_id,)))
    return {server_of(r[0]) for r in rows if isinstance(r[0], str) and ":" in r[0]}


def device_list_position(db: Any, user_id: str) -> int:
    """The ``stream_id`` of a local user's device list: the position of its last change in
    the device-list stream (``m.device_list_update`` EDUs carry positions of this stream)."""
    return int(db.run("device_list_position", lambda t: t.query_value(
        "SELECT MAX(stream_id) FROM device_lists_stream WHERE user_id = ?", (user_id,),
        default=0)) or 0)
