"""User profiles (spec: client-server-api, "Profiles"): ``GET /profile/{userId}`` and
``GET/PUT/DELETE /profile/{userId}/{displayname|avatar_url}``.

Only a user's own profile can be changed.  After a change, every listener in
``runtime.parts["profile_listeners"]`` is called with ``(user_id, field, value)``: that is
the seam through which the rooms area will re-send the user's ``m.room.member`` events.
Profiles of users of other servers are asked over federation (``fed.queries.profile``,
federation/remote_queries.py, cached there): the remote's 404/403 are passed on, no answer is
502.  With federation switched off they are 404 ``M_NOT_FOUND``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from flask import Blueprint, Flask, jsonify

from atrium.config import Config
from atrium.errors import forbidden, invalid_param, missing_param, not_found
from protocol.ids import is_valid_user_id
from store.accounts import AccountStore
from web.auth import require_auth
from web.http import json_body
from web.uia import reject_nul_path_values, storable_text

log = logging.getLogger(__name__)

FIELDS = ("displayname", "avatar_url")
MAX_LENGTH = {"displayname": 256, "avatar_url": 1000}

ProfileListener = Callable[[str, str, "str | None"], None]


def validate_field(field: str, value: Any) -> str | None:
    """A field's new value (None or "" clears it); 400 ``M_INVALID_PARAM`` for a value that
    is not a string (as Synapse) or is too long.  Like Synapse, ``avatar_url`` is any string
    (the spec asks clients for an MXC URI; bridges and bots set others and depend on it)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_param(f"'{field}' must be a string")
    if len(value) > MAX_LENGTH[field]:
        raise invalid_param(f"'{field}' may be at most {MAX_LENGTH[field]} characters")
    return storable_text(field, value) or None


def register(app: Flask, runtime: Any) -> None:
    config: Config = runtime.config
    accounts: AccountStore = runtime.parts["accounts"]
    listeners: list[ProfileListener] = runtime.parts.setdefault("profile_listeners", [])
    bp = Blueprint("profile", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def _profile_or_404(user_id: str, field: str | None = None) -> dict[str, Any]:
        if not _is_local(user_id) and is_valid_user_id(user_id):
            remote = getattr(runtime.parts.get("federation"), "queries", None)
            if remote is not None:
                got = remote.profile(user_id, field)
                return {k: got.get(k) for k in FIELDS} if field else got
        profile = accounts.get_profile(user_id) if _is_local(user_id) else None
        if profile is None:
            raise not_found("Profile not found")
        return profile

    def _is_local(user_id: str) -> bool:
        return user_id.startswith("@") and user_id.split(":", 1)[-1] == config.server_name

    def _changed(user_id: str, field: str, value: str | None) -> None:
        for listener in listeners:
            try:
                listener(user_id, field, value)
            except Exception:  # a failing listener must not undo a saved profile
                log.exception("profile listener failed for %s", user_id)

    @bp.get("/_matrix/client/v3/profile/<user_id>")
    def get_profile(user_id: str) -> Any:
        """GET /_matrix/client/v3/profile/{userId}"""
        profile = _profile_or_404(user_id)
        return jsonify({k: v for k, v in profile.items() if v is not None})

    @bp.get("/_matrix/client/v3/profile/<user_id>/<any(displayname, avatar_url):field>")
    def get_field(user_id: str, field: str) -> Any:
        """GET /_matrix/client/v3/profile/{userId}/{displayname|avatar_url}"""
        value = _profile_or_404(user_id, field)[field]
        if value is None:
            raise not_found(f"The user has no {field}")
        return jsonify({field: value})

    @bp.put("/_matrix/client/v3/profile/<user_id>/<any(displayname, avatar_url):field>")
    def put_field(user_id: str, field: str) -> Any:
        """PUT /_matrix/client/v3/profile/{userId}/{displayname|avatar_url}"""
        requester = require_auth(allow_guest=field == "displayname")  # guests: displayname only
        if requester.user_id != user_id:
            raise forbidden("You can only change your own profile")
        body = json_body()
        if field not in body:
            raise missing_param(f"Missing '{field}'")
        value = validate_field(field, body[field])
        accounts.set_profile_field(user_id, field, value)
        _changed(user_id, field, value)
        return jsonify({})

    @bp.delete("/_matrix/client/v3/profile/<user_id>/<any(displayname, avatar_url):field>")
    def delete_field(user_id: str, field: str) -> Any:
        """DELETE /_matrix/client/v3/profile/{userId}/{displayname|avatar_url}"""
        requester = require_auth(allow_guest=field == "displayname")  # guests: displayname only
        if requester.user_id != user_id:
            raise forbidden("You can only change your own profile")
        accounts.set_profile_field(user_id, field, None)
        _changed(user_id, field, None)
        return jsonify({})

    app.register_blueprint(bp)
