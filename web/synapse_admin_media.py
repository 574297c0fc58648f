"""Synapse's media admin API (docs: Synapse "Media Admin API", "Users" → "List media
uploaded by a user" / "Delete media uploaded by a user"), admins only:

- ``GET /_synapse/admin/v1/users/{userId}/media`` (``from``, ``limit``, ``order_by``,
  ``dir``) → ``media``, ``total``, ``next_token``; newest first unless ``order_by`` or
  ``dir`` is given (then ``dir`` defaults to ``f``), as Synapse;
- ``DELETE /_synapse/admin/v1/users/{userId}/media`` (same parameters): deletes that page
  of the user's local media, rows, files and thumbnails, through the media actor →
  ``deleted_media``, ``total``;
- ``GET /_synapse/admin/v1/room/{roomId}/media`` → ``local``, ``remote``: the ``mxc://``
  URIs the room's events reference (``content.url``, ``content.info.thumbnail_url``);
- ``GET /_synapse/admin/v1/media/{serverName}/{mediaId}`` → ``media_info`` of local or
  cached remote media (``DELETE`` on that path, quarantine and unquarantine are
  web/media.py's);
- ``POST /_synapse/admin/v1/media/delete`` and ``…/media/{serverName}/delete``
  (``before_ts``, ``size_gt``, ``keep_profiles``) → ``deleted_media``, ``total``;
- ``POST /_synapse/admin/v1/purge_media_cache`` (``before_ts``) → ``deleted``;
- ``POST /_synapse/admin/v1/media/protect/{mediaId}``, ``…/unprotect/{mediaId}`` → ``{}``;
- ``POST /_synapse/admin/v1/room/{roomId}/media/quarantine`` (also the legacy
  ``…/quarantine_media/{roomId}``) and ``…/user/{userId}/media/quarantine`` →
  ``num_quarantined``.

Deleting and quarantining go through the media actor one item at a time (each committed,
its files gone, before the next), with the existing ``DeleteMedia`` / ``Quarantine``
messages.  Access times are written in batches (store/media_access.py) and flushed first
by every call here that shows or selects by them.  Every destructive call logs one INFO line
naming the admin, also when the actor failed part-way (what went is on record).
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from actors.media import MEDIA_KEY, DeleteMedia, DeleteRemoteMedia, MediaParts, Quarantine
from atrium.errors import MatrixError, invalid_param, missing_param, not_found
from protocol.ids import is_valid_room_id, is_valid_server_name
from store.admin_media import ORDER_COLUMNS, AdminMediaStore
from store.media import LocalMedia, RemoteMedia, valid_media_id
from web.auth import require_admin
from web.http import query_bool, query_int
from web.synapse_admin_reports import page_params, paged, query_dir
from web.synapse_admin_users import existing_user
from web.uia import reject_nul_path_values

log = logging.getLogger(__name__)

A = "/_synapse/admin/v1"
#: a ``before_ts`` below this is taken for seconds (Dec 1970 in ms), as Synapse refuses it
_MIN_BEFORE_TS = 30_000_000_000


def _local_info(m: LocalMedia, last_access_ts: int | None, safe: bool) -> dict[str, Any]:
    return {"media_origin": None, "user_id": m.user_id, "media_id": m.media_id,
            "media_type": m.media_type, "media_length": m.media_length,
            "upload_name": m.upload_name, "created_ts": m.created_ts, "filesystem_id": None,
            "url_cache": None, "last_access_ts": last_access_ts,
            "quarantined_by": m.quarantined_by, "authenticated": not m.legacy_allowed,
            "safe_from_quarantine": safe, "sha256": m.sha256}


def _remote_info(m: RemoteMedia, last_access_ts: int | None) -> dict[str, Any]:
    return {"media_origin": m.origin, "user_id": None, "media_id": m.media_id,
            "media_type": m.media_type, "media_length": m.media_length,
            "upload_name": m.upload_name, "created_ts": m.created_ts,
            "filesystem_id": m.filesystem_id, "url_cache": None,
            "last_access_ts": last_access_ts, "quarantined_by": m.quarantined_by,
            "authenticated": not m.legacy_allowed, "safe_from_quarantine": None,
            "sha256": m.sha256}


def _non_negative(name: str, default: int | None = None) -> int:
    """An integer query parameter as Synapse parses it: 400 M_MISSING_PARAM when required
    and missing, M_INVALID_PARAM when not an integer or negative."""
    if default is None and name not in request.args:
        raise missing_param(f"Missing required integer query parameter {name}")
    v = query_int(name, default)
    assert v is not None
    if v < 0:
        raise invalid_param(f"Query parameter {name} must be a positive integer.")
    return v


def _not_seconds(before_ts: int) -> int:
    if before_ts < _MIN_BEFORE_TS:
        raise invalid_param("Query parameter before_ts you provided is from the year 1970. "
                            "Double check that you are providing a timestamp in milliseconds.")
    return before_ts


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
        return existing_user(accounts, user_id, server_name, missing="Unknown user")

    def ask(message: Any) -> Any:
        return media.supervisor.ask(MEDIA_KEY, message, timeout=media.ask_timeout)

    def flush_access() -> None:
        """Write the access times held in memory, so what follows reads them."""
        if media.access is not None:
            media.access.flush()

    def user_page(user_id: str) -> tuple[list[dict[str, Any]], int, int, int]:
        local_user(user_id)
        start, limit = page_params()
        order_by, backwards = _order()
        flush_access()
        items, total = store.user_media(user_id, start, limit, order_by, backwards)
        return items, total, start, limit

    def delete_local(admin: str, what: str, media_ids: list[str]) -> list[str]:
        """Delete through the actor, one at a time: each is committed, files gone, when
        told; the log line names what went also when the actor failed part-way."""
        deleted: list[str] = []
        try:
            for media_id in media_ids:
                if ask(DeleteMedia(media_id)):
                    deleted.append(media_id)
        finally:
            log.info("admin %s: deleted %d media %s: %s", admin, len(deleted), what,
                     " ".join(deleted) or "-")
        return deleted

    def quarantine(admin: str, what: str, items: list[tuple[str | None, str]]) -> int:
        """Quarantine (origin None = local) through the actor; protected media is skipped
        (store/media.py).  How many items were marked."""
        count = 0
        try:
            for origin, media_id in items:
                if ask(Quarantine(media_id, admin, origin)):
                    count += 1
        finally:
            log.info("admin %s: quarantined %d media %s", admin, count, what)
        return count

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
        deleted = delete_local(admin.user_id, f"of {user_id}", [i["media_id"] for i in items])
        return jsonify({"deleted_media": deleted, "total": len(deleted)})

    @bp.post(f"{A}/media/delete")
    @bp.post(f"{A}/media/<serverName>/delete")
    def delete_by_date(serverName: str | None = None) -> Any:  # noqa: N803
        """POST /_synapse/admin/v1/media/delete (and …/media/{serverName}/delete)"""
        admin = require_admin()
        before_ts = _non_negative("before_ts")
        size_gt = _non_negative("size_gt", 0)
        keep_profiles = query_bool("keep_profiles", True)
        _not_seconds(before_ts)
        if serverName is not None and serverName != server_name:
            raise MatrixError(400, "M_UNKNOWN", "Can only delete local media")
        flush_access()
        ids = store.old_local_media(before_ts, size_gt, keep_profiles, server_name)
        deleted = delete_local(admin.user_id, f"last used before {before_ts}, larger than"
                               f" {size_gt} bytes, keep_profiles={keep_profiles}", ids)
        return jsonify({"deleted_media": deleted, "total": len(deleted)})

    @bp.post(f"{A}/purge_media_cache")
    def purge_media_cache() -> Any:
        """POST /_synapse/admin/v1/purge_media_cache"""
        admin = require_admin()
        before_ts = _not_seconds(_non_negative("before_ts"))
        flush_access()
        deleted = 0
        try:
            for origin, media_id in store.old_remote_media(before_ts):
                if ask(DeleteRemoteMedia(origin, media_id)):
                    deleted += 1
        finally:
            log.info("admin %s: purged %d cached remote media last used before %d",
                     admin.user_id, deleted, before_ts)
        return jsonify({"deleted": deleted})

    def protect(media_id: str, safe: bool) -> Any:
        admin = require_admin()
        if not valid_media_id(media_id):
            raise not_found("Unknown media")
        if not store.set_protected(media_id, safe):
            raise not_found("Unknown media")   # Synapse: 404 M_UNKNOWN
        log.info("admin %s: %s mxc://%s/%s", admin.user_id,
                 "protected" if safe else "unprotected", server_name, media_id)
        return jsonify({})

    @bp.post(f"{A}/media/protect/<mediaId>")
    def protect_media(mediaId: str) -> Any:  # noqa: N803
        """POST /_synapse/admin/v1/media/protect/{mediaId}"""
        return protect(mediaId, True)

    @bp.post(f"{A}/media/unprotect/<mediaId>")
    def unprotect_media(mediaId: str) -> Any:  # noqa: N803
        """POST /_synapse/admin/v1/media/unprotect/{mediaId}"""
        return protect(mediaId, False)

    @bp.post(f"{A}/room/<room_id>/media/quarantine")
    @bp.post(f"{A}/quarantine_media/<room_id>")
    def quarantine_room_media(room_id: str) -> Any:
        """POST /_synapse/admin/v1/room/{roomId}/media/quarantine"""
        admin = require_admin()
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room id")
        local, remote = store.room_mxcs(room_id, server_name)
        items: list[tuple[str | None, str]] = []
        for uri, is_local in [(u, True) for u in local] + [(u, False) for u in remote]:
            origin, media_id = uri[len("mxc://"):].split("/", 1)
            items.append((None if is_local else origin, media_id))
        n = quarantine(admin.user_id, f"of room {room_id}", items)
        return jsonify({"num_quarantined": n})

    @bp.post(f"{A}/user/<user_id>/media/quarantine")
    def quarantine_user_media(user_id: str) -> Any:
        """POST /_synapse/admin/v1/user/{userId}/media/quarantine"""
        admin = require_admin()
        local_user(user_id)
        ids = store.unquarantined_of_user(user_id)
        n = quarantine(admin.user_id, f"of {user_id}", [(None, i) for i in ids])
        return jsonify({"num_quarantined": n})

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
        flush_access()
        if serverName == server_name:
            local = media.store.get_local_media(mediaId)
            if local is None:
                raise not_found("Unknown media")
            return jsonify({"media_info": _local_info(
                local, *store.access_and_protection(mediaId))})
        remote = media.store.get_remote_media(serverName, mediaId)
        if remote is None:
            raise not_found("Unknown media")
        return jsonify({"media_info": _remote_info(
            remote, store.remote_last_access(serverName, mediaId))})

    app.register_blueprint(bp)
