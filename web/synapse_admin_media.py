"""Synapse's admin API over media lists (docs: Synapse "Media Admin API", "Users" → "List
media uploaded by a user" / "Delete media uploaded by a user"), admins only:

- ``GET /_synapse/admin/v1/users/{userId}/media`` (``from``, ``limit``, ``order_by``,
  ``dir``) → ``media``, ``total``, ``next_token``; newest first unless ``order_by`` or
  ``dir`` is given (then ``dir`` defaults to ``f``), as Synapse;
- ``DELETE /_synapse/admin/v1/users/{userId}/media`` (same parameters): deletes that page
  of the user's local media, rows, files and thumbnails, through the media actor →
  ``deleted_media``, ``total``;
- ``GET /_synapse/admin/v1/room/{roomId}/media`` → ``local``, ``remote``: the ``mxc://``
  URIs the room's events reference (``content.url``, ``content.info.thumbnail_url``);
- ``GET /_synapse/admin/v1/media/{serverName}/{mediaId}`` → ``media_info`` of local or
  cached remote media (``DELETE`` on that path is web/media.py's).

Atrium keeps no access times and has no protected media: ``last_access_ts`` is null and
``safe_from_quarantine`` false.  A deletion logs one INFO line naming the admin.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from actors.media import MEDIA_KEY, DeleteMedia, MediaParts
from atrium.errors import MatrixError, not_found
from protocol.ids import IdError, is_valid_room_id, is_valid_server_name, parse_user_id
from store.admin_media import ORDER_COLUMNS, AdminMediaStore
from store.media import LocalMedia, RemoteMedia, valid_media_id
from web.auth import require_admin
from web.synapse_admin_reports import page_params, paged, query_dir
from web.uia import reject_nul_path_values

log = logging.getLogger(__name__)

A = "/_synapse/admin/v1"


def _local_info(m: LocalMedia) -> dict[str, Any]:
    return {"media_origin": None, "user_id": m.user_id, "media_id": m.media_id,
            "media_type": m.media_type, "media_length": m.media_length,
            "upload_name": m.upload_name, "created_ts": m.created_ts, "filesystem_id": None,
            "url_cache": None, "last_access_ts": None, "quarantined_by": m.quarantined_by,
            "authenticated": not m.legacy_allowed, "safe_from_quarantine": False,
            "sha256": m.sha256}


def _remote_info(m: RemoteMedia) -> dict[str, Any]:
    return {"media_origin": m.origin, "user_id": None, "media_id": m.media_id,
            "media_type": m.media_type, "media_length": m.media_length,
            "upload_name": m.upload_name, "created_ts": m.created_ts,
            "filesystem_id": m.filesystem_id, "url_cache": None, "last_access_ts": None,
            "quarantined_by": m.quarantined_by, "authenticated": not m.legacy_allowed,
            "safe_from_quarantine": None, "sha256": m.sha256}


def _order() -> tuple[str, bool]:
    """(order_by, newest first): Synapse's defaults — created_ts backwards when neither
    is given, else ``dir`` defaults to forwards."""
    if "order_by" not in request.args and "dir" not in request.args:
        return "created_ts", True
    order_by = request.args.get("order_by", "created_ts")
    if order_by not in ORDER_COLUMNS:
        raise MatrixError(400, "M_INVALID_PARAM", "Query parameter 'order_by' must be one of"
                          f" {list(ORDER_COLUMNS)}")
    return order_by, query_dir("f")


def register(app: Flask, runtime: Any) -> None:
    server_name = runtime.config.server_name
    accounts = runtime.parts["accounts"]
    media: MediaParts = runtime.parts["media"]
    store = AdminMediaStore(runtime.db)
    bp = Blueprint("synapse_admin_media", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def local_user(user_id: str) -> str:
        try:
            _, domain = parse_user_id(user_id)
        except IdError:
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid user id") from None
        if domain != server_name:
            raise MatrixError(400, "M_UNKNOWN", "Can only look up local users")
        if accounts.get_user(user_id) is None:
            raise not_found("Unknown user")
        return user_id

    def user_page(user_id: str) -> tuple[list[dict[str, Any]], int, int, int]:
        local_user(user_id)
        start, limit = page_params()
        order_by, backwards = _order()
        items, total = store.user_media(user_id, start, limit, order_by, backwards)
        return items, total, start, limit

    @bp.get(f"{A}/users/<user_id>/media")
    def list_user_media(user_id: str) -> Any:
        """GET /_synapse/admin/v1/users/{userId}/media"""
        require_admin()
        items, total, start, limit = user_page(user_id)
        return jsonify(paged("media", items, total, start, limit))

    @bp.delete(f"{A}/users/<user_id>/media")
    def delete_user_media(user_id: str) -> Any:
        """DELETE /_synapse/admin/v1/users/{userId}/media"""
        admin = require_admin()
        items, _, _, _ = user_page(user_id)
        deleted: list[str] = []
        try:
            for item in items:   # one at a time: each is committed, files gone, when told
                if media.supervisor.ask(MEDIA_KEY, DeleteMedia(item["media_id"]),
                                        timeout=media.ask_timeout):
                    deleted.append(item["media_id"])
        finally:   # also when the actor failed part-way: what went is on record
            log.info("admin %s deleted %d media of %s: %s", admin.user_id, len(deleted),
                     user_id, " ".join(deleted) or "-")
        return jsonify({"deleted_media": deleted, "total": len(deleted)})

    @bp.get(f"{A}/room/<room_id>/media")
    def list_room_media(room_id: str) -> Any:
        """GET /_synapse/admin/v1/room/{roomId}/media"""
        require_admin()
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room id")
        local, remote = store.room_mxcs(room_id, server_name)
        return jsonify({"local": local, "remote": remote})

    @bp.get(f"{A}/media/<serverName>/<mediaId>")
    def media_info(serverName: str, mediaId: str) -> Any:  # noqa: N803
        """GET /_synapse/admin/v1/media/{serverName}/{mediaId}"""
        require_admin()
        if not is_valid_server_name(serverName) or not valid_media_id(mediaId):
            raise not_found("Unknown media")
        if serverName == server_name:
            local = media.store.get_local_media(mediaId)
            if local is None:
                raise not_found("Unknown media")
            return jsonify({"media_info": _local_info(local)})
        remote = media.store.get_remote_media(serverName, mediaId)
        if remote is None:
            raise not_found("Unknown media")
        return jsonify({"media_info": _remote_info(remote)})

    app.register_blueprint(bp)
