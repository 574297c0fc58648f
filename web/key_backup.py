"""Server-side key backups (client-server-api "Server-side key backups", key_backup.yaml):
``/room_keys/version[/{version}]`` (POST, GET, PUT, DELETE) and
``/room_keys/keys[/{roomId}[/{sessionId}]]`` (PUT, GET, DELETE, with ``?version=``).

Storage and the replacement rule live in ``store/key_backup.py``; writes go straight to the
store (one transaction each): a backup belongs to one user and every write is idempotent or
ordered by the replacement rule, so no actor is needed to serialise them.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, bad_json, invalid_param, missing_param, not_found
from store.key_backup import KeyBackupStore, NoSuchVersion, Sessions, WrongVersion
from web.auth import require_auth
from web.http import json_body, require
from web.uia import reject_nul_path_values

P = "/_matrix/client/v3/room_keys"
ALGORITHMS = ("m.megolm_backup.v1.curve25519-aes-sha2",)


def register(app: Flask, runtime: Any) -> None:
    store: KeyBackupStore = runtime.parts["key_backup"]
    bp = Blueprint("key_backup", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    @bp.post(f"{P}/version")
    def create_version() -> Any:
        """POST /_matrix/client/v3/room_keys/version"""
        req = require_auth()
        algorithm, auth_data = _version_body(json_body())
        return jsonify({"version": store.create_version(req.user_id, algorithm, auth_data)})

    @bp.get(f"{P}/version")
    @bp.get(f"{P}/version/<version>")
    def get_version(version: str | None = None) -> Any:
        """GET /_matrix/client/v3/room_keys/version[/{version}]"""
        req = require_auth()
        try:
            return jsonify(store.get_version(req.user_id, version).to_json())
        except NoSuchVersion:
            raise not_found("No current backup version" if version is None
                            else "Unknown backup version") from None

    @bp.put(f"{P}/version/<version>")
    def update_version(version: str) -> Any:
        """PUT /_matrix/client/v3/room_keys/version/{version}"""
        req = require_auth()
        body = json_body()
        algorithm, auth_data = _version_body(body)
        if "version" in body and body["version"] != version:
            raise invalid_param("The version in the body does not match the path")
        try:
            if not store.update_version(req.user_id, version, algorithm, auth_data):
                raise invalid_param("Algorithm does not match")
        except NoSuchVersion:
            raise not_found("Unknown backup version") from None
        return jsonify({})

    @bp.delete(f"{P}/version/<version>")
    def delete_version(version: str) -> Any:
        """DELETE /_matrix/client/v3/room_keys/version/{version}"""
        req = require_auth()
        try:
            store.delete_version(req.user_id, version)
        except NoSuchVersion:
            raise not_found("Unknown backup version") from None
        return jsonify({})

    @bp.put(f"{P}/keys")
    @bp.put(f"{P}/keys/<room_id>")
    @bp.put(f"{P}/keys/<room_id>/<session_id>")
    def put_keys(room_id: str | None = None, session_id: str | None = None) -> Any:
        """PUT /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
        req = require_auth()
        sessions = _sessions_body(json_body(), room_id, session_id)
        try:
            etag, count = store.put_keys(req.user_id, _version_arg(), sessions)
        except NoSuchVersion:
            raise not_found("Unknown backup version") from None
        except WrongVersion as e:
            raise MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version.",
                              current_version=e.current) from None
        return jsonify({"etag": etag, "count": count})

    @bp.get(f"{P}/keys")
    @bp.get(f"{P}/keys/<room_id>")
    @bp.get(f"{P}/keys/<room_id>/<session_id>")
    def get_keys(room_id: str | None = None, session_id: str | None = None) -> Any:
        """GET /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
        req = require_auth()
        try:
            found = store.get_keys(req.user_id, _version_arg(), room_id, session_id)
        except NoSuchVersion:
            raise not_found("Unknown backup version") from None
        if session_id is not None:
            data = found.get(room_id or "", {}).get(session_id)
            if data is None:
                raise not_found("No room_keys found")
            return jsonify(data)
        if room_id is not None:
            return jsonify({"sessions": found.get(room_id, {})})
        return jsonify({"rooms": {r: {"sessions": s} for r, s in found.items()}})

    @bp.delete(f"{P}/keys")
    @bp.delete(f"{P}/keys/<room_id>")
    @bp.delete(f"{P}/keys/<room_id>/<session_id>")
    def delete_keys(room_id: str | None = None, session_id: str | None = None) -> Any:
        """DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
        req = require_auth()
        try:
            etag, count = store.delete_keys(req.user_id, _version_arg(), room_id, session_id)
        except NoSuchVersion:
            raise not_found("Unknown backup version") from None
        return jsonify({"etag": etag, "count": count})

    app.register_blueprint(bp)


def _version_arg() -> str:
    version = request.args.get("version")
    if not version:
        raise missing_param("Missing 'version' query parameter")
    return version


def _version_body(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    algorithm = require(body, "algorithm", str)
    auth_data = require(body, "auth_data", dict)
    if algorithm not in ALGORITHMS:
        raise invalid_param(f"Unsupported backup algorithm {algorithm!r}")
    return algorithm, auth_data


def _key_data(data: Any, where: str) -> dict[str, Any]:
    """One KeyBackupData object (room_key_backup.yaml)."""
    if not isinstance(data, dict):
        raise bad_json(f"{where} must be an object")
    for k in ("first_message_index", "forwarded_count"):
        v = data.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad_json(f"{where}.{k} must be a non-negative integer")
    if not isinstance(data.get("is_verified"), bool):
        raise bad_json(f"{where}.is_verified must be a boolean")
    if not isinstance(data.get("session_data"), dict):
        raise bad_json(f"{where}.session_data must be an object")
    return data


def _sessions_body(body: dict[str, Any], room_id: str | None,
                   session_id: str | None) -> Sessions:
    """The three PUT shapes, normalised to ``{room_id: {session_id: data}}``."""
    if room_id is not None and session_id is not None:
        return {room_id: {session_id: _key_data(body, "the body")}}
    if room_id is not None:
        sessions = require(body, "sessions", dict)
        return {room_id: {s: _key_data(d, f"sessions.{s}") for s, d in sessions.items()}}
    rooms = require(body, "rooms", dict)
    out: Sessions = {}
    for r, room in rooms.items():
        if not isinstance(room, dict) or not isinstance(room.get("sessions"), dict):
            raise bad_json(f"rooms.{r} must be an object with 'sessions'")
        out[r] = {s: _key_data(d, f"rooms.{r}.sessions.{s}")
                  for s, d in room["sessions"].items()}
    return out
