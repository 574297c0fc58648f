"""The content repository (spec: client-server-api, "Content repository"): uploads (plain
and async via ``/create``), downloads and thumbnails on the authenticated v1.11 paths and
on the deprecated unauthenticated ``/_matrix/media`` paths, the media config, and
Synapse's admin quarantine / delete endpoints.

Handlers parse and check the request, read the store directly, and ask the media actor for
every write.  The actor runs under the ``media`` supervisor (``runtime.parts["supervisors"]``,
shared tracer ``runtime.parts["tracer"]``); its failures reach clients through
``web/errors.py`` (crash 500, full mailbox 429, parked or stopping 503, timeout 504).
Media ids must match ``[A-Za-z0-9_-]+`` and server names the spec's grammar; anything else
is 404 M_NOT_FOUND (no such media can exist), which is also how paths with ``..`` or
encoded slashes end.
"""
from __future__ import annotations

import re
import time
from typing import Any

import gevent
from flask import Blueprint, Flask, Response, g, jsonify, request

from actors.media import (MEDIA_KEY, CommitUpload, CreateMedia, DeleteMedia, MediaLimits,
                          Quarantine, UploadWaiters, blocking, check_pending_upload,
                          media_supervisor, request_thumbnail)
from actors.thumbnailer import THUMBNAILABLE_TYPES, ThumbnailError, plan, probe, remove_quietly
from atrium.errors import MatrixError, invalid_param, missing_param, not_found
from store.media import LocalMedia, MediaFiles, MediaStore, now_ms, valid_media_id
from web.auth import require_admin, require_auth
from web.http import query_bool, query_int
from web.media_io import (base_type, clean_content_type, content_disposition, file_response,
                          receive_upload, served_content_type)

_SERVER_NAME_RE = re.compile(
    r"^(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::\d{1,5})?$")
_DEFAULT_TIMEOUT_MS = 20_000
_MAX_TIMEOUT_MS = 60_000
_MAX_FILENAME = 1024
_LEGACY_PREFIXES = ("/_matrix/media/v3", "/_matrix/media/v1")  # r0 is rewritten to v3


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    store = MediaStore(runtime.db)
    files = MediaFiles(config.media_store_path)
    waiters = UploadWaiters()
    limits = MediaLimits(
        max_upload_size=config.max_upload_size,
        max_pending=config.max_pending_media_uploads,
        unused_expiration_ms=int(config.unused_expiration_time * 1000),
        upload_limits=config.media_upload_limits,
        max_image_pixels=config.max_image_pixels,
        legacy_unauthenticated=config.enable_legacy_unauthenticated_media)
    a = config.actors
    supervisor = media_supervisor(
        store, files, limits, waiters, tracer=runtime.parts.get("tracer"),
        max_mailbox=a.mailbox_size, ask_timeout=a.ask_timeout, restart_delay=a.restart_delay,
        max_restarts=a.max_restarts, restart_window=a.restart_window,
        park_duration=a.park_duration)
    runtime.parts.setdefault("supervisors", {})["media"] = supervisor
    # hooks run in reverse: the actor stops (queued commits finish) before the store closes
    runtime.shutdown_hooks.append(lambda: supervisor.stop_all(timeout=10))
    ask_timeout = a.ask_timeout
    server_name = config.server_name
    bp = Blueprint("media", __name__)

    def sent_from() -> dict[str, str | None]:
        return {"trace_id": getattr(g, "request_id", None),
                "sender": f"web {request.method} {request.path}"[:120]}

    def ask(message: Any) -> Any:
        """Ask the media actor; supervision errors are mapped by web/errors.py."""
        return supervisor.ask(MEDIA_KEY, message, timeout=ask_timeout, **sent_from())

    def upload_params() -> tuple[str, str | None]:
        name = request.args.get("filename") or None
        if name is not None and (len(name) > _MAX_FILENAME or "\x00" in name):
            raise invalid_param("'filename' is too long or contains NUL")
        return clean_content_type(request.headers.get("Content-Type")), name

    def receive_and_commit(user_id: str, media_id: str | None) -> str:
        media_type, name = upload_params()
        tmp = files.new_tmp_path()
        try:
            length, sha256 = receive_upload(tmp, config.max_upload_size)
            image = (blocking(probe, tmp) if base_type(media_type) in THUMBNAILABLE_TYPES
                     else None)
            return ask(CommitUpload(user_id, tmp, length, sha256, media_type, name, image,
                                    media_id))
        finally:
            remove_quietly(tmp)  # gone already if the actor committed it

    def check_ids(s: str, media_id: str) -> None:
        if not _SERVER_NAME_RE.match(s) or not valid_media_id(media_id):
            raise not_found("Invalid media ID or server name")

    def lookup(s: str, media_id: str, *, legacy: bool) -> LocalMedia:
        """The uploaded local media, waiting up to ``timeout_ms`` for an async upload."""
        check_ids(s, media_id)
        query_bool("allow_remote", True)
        query_bool("allow_redirect", False)  # accepted; we never redirect
        timeout_ms = query_int("timeout_ms", _DEFAULT_TIMEOUT_MS, minimum=0,
                               maximum=_MAX_TIMEOUT_MS) or 0
        if s != server_name:
            # Remote media needs federation (server-server "Content Repository"), which
            # Atrium does not have yet: until it does, remote media is simply not found.
            raise not_found("Remote media is not available on this server")
        deadline = time.monotonic() + timeout_ms / 1000
        row = store.get_local_media(media_id)
        while row is not None and not row.uploaded:
            if (row.unused_expires_ts or 0) <= now_ms():
                row = None
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
            waiters.wait(media_id, min(remaining, 1.0))
            row = store.get_local_media(media_id)
        if row is None or row.quarantined_by is not None:
            raise not_found("Media not found")
        if legacy and not row.legacy_allowed:
            # Spec 1.11 "freeze": media uploaded while enable_legacy_unauthenticated_media
            # is false is only served by the authenticated endpoints.
            raise not_found("Media not found")
        return row

    def download(s: str, media_id: str, file_name: str | None, *, legacy: bool) -> Response:
        row = lookup(s, media_id, legacy=legacy)
        media_type = served_content_type(row.media_type)
        disposition = content_disposition(media_type, file_name or row.upload_name)
        return file_response(files.content_path(media_id), media_type, disposition,
                             authenticated=not legacy)

    def thumbnail(s: str, media_id: str, *, legacy: bool) -> Response:
        width = _required_dimension("width")
        height = _required_dimension("height")
        method = request.args.get("method", "scale")
        if method not in ("crop", "scale"):
            raise invalid_param("'method' must be crop or scale")
        animated = query_bool("animated", False)
        row = lookup(s, media_id, legacy=legacy)
        if base_type(row.media_type) not in THUMBNAILABLE_TYPES or row.image is None:
            raise MatrixError(400, "M_UNKNOWN",
                              "Cannot generate thumbnails for the requested content")
        if row.image.width * row.image.height > config.max_image_pixels:
            raise MatrixError(413, "M_TOO_LARGE", "Content is too large to thumbnail")
        key = plan(row.image, width, height, method, animated)
        if key is None:  # the original is what the spec asks for here
            media_type = base_type(row.media_type).replace("image/jpg", "image/jpeg")
            path = files.content_path(media_id)
        else:
            try:
                thumb = request_thumbnail(supervisor, media_id, key, ask_timeout,
                                          **sent_from())
            except ThumbnailError:
                raise MatrixError(400, "M_UNKNOWN",
                                  "Cannot generate thumbnails for the requested content")
            except gevent.Timeout:
                raise MatrixError(504, "M_UNKNOWN", "Timed out generating the thumbnail")
            media_type, path = thumb.media_type, files.thumbnail_path(media_id, key)
        ext = media_type.rsplit("/", 1)[-1]
        return file_response(path, media_type,
                             content_disposition(media_type, f"thumbnail.{ext}",
                                                 force_inline=True),
                             authenticated=not legacy)

    # -- config --------------------------------------------------------------------------
    def media_config() -> Response:
        """GET /_matrix/client/v1/media/config (and the deprecated /_matrix/media/v3/config)"""
        require_auth(allow_guest=True)
        return jsonify({"m.upload.size": config.max_upload_size})

    bp.add_url_rule("/_matrix/client/v1/media/config", "config", media_config)
    for prefix in _LEGACY_PREFIXES:
        bp.add_url_rule(f"{prefix}/config", f"config{prefix}", media_config)

    # -- uploads -------------------------------------------------------------------------
    def upload() -> Response:
        """POST /_matrix/media/v3/upload"""
        req = require_auth()
        media_id = receive_and_commit(req.user_id, None)
        return jsonify({"content_uri": f"mxc://{server_name}/{media_id}"})

    for prefix in _LEGACY_PREFIXES:
        bp.add_url_rule(f"{prefix}/upload", f"upload{prefix}", upload, methods=["POST"])

    @bp.post("/_matrix/media/v1/create")
    def create() -> Response:
        """POST /_matrix/media/v1/create"""
        req = require_auth()
        media_id, expires = ask(CreateMedia(req.user_id))
        return jsonify({"content_uri": f"mxc://{server_name}/{media_id}",
                        "unused_expires_at": expires})

    def upload_to(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """PUT /_matrix/media/v3/upload/{serverName}/{mediaId}"""
        req = require_auth()
        check_ids(serverName, mediaId)
        if serverName != server_name:
            raise not_found("Unknown media ID")
        # refuse before reading the body; the actor checks again when it commits
        check_pending_upload(store.get_local_media(mediaId), req.user_id, now_ms())
        receive_and_commit(req.user_id, mediaId)
        return jsonify({})

    for prefix in _LEGACY_PREFIXES:
        bp.add_url_rule(f"{prefix}/upload/<serverName>/<mediaId>", f"upload_to{prefix}",
                        upload_to, methods=["PUT"])

    # -- authenticated downloads (v1.11) ---------------------------------------------------
    @bp.get("/_matrix/client/v1/media/download/<serverName>/<mediaId>")
    @bp.get("/_matrix/client/v1/media/download/<serverName>/<mediaId>/<fileName>")
    def download_authed(serverName: str, mediaId: str,  # noqa: N803
                        fileName: str | None = None) -> Response:  # noqa: N803
        """GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]"""
        require_auth(allow_guest=True)
        return download(serverName, mediaId, fileName, legacy=False)

    @bp.get("/_matrix/client/v1/media/thumbnail/<serverName>/<mediaId>")
    def thumbnail_authed(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"""
        require_auth(allow_guest=True)
        return thumbnail(serverName, mediaId, legacy=False)

    # -- deprecated unauthenticated downloads --------------------------------------------
    def download_legacy(serverName: str, mediaId: str,  # noqa: N803
                        fileName: str | None = None) -> Response:  # noqa: N803
        """GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}]"""
        return download(serverName, mediaId, fileName, legacy=True)

    def thumbnail_legacy(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}"""
        return thumbnail(serverName, mediaId, legacy=True)

    for prefix in _LEGACY_PREFIXES:
        bp.add_url_rule(f"{prefix}/download/<serverName>/<mediaId>",
                        f"download{prefix}", download_legacy)
        bp.add_url_rule(f"{prefix}/download/<serverName>/<mediaId>/<fileName>",
                        f"download_named{prefix}", download_legacy)
        bp.add_url_rule(f"{prefix}/thumbnail/<serverName>/<mediaId>",
                        f"thumbnail{prefix}", thumbnail_legacy)

    # -- admin (Synapse's admin API) -------------------------------------------------------
    @bp.post("/_synapse/admin/v1/media/quarantine/<serverName>/<mediaId>")
    def quarantine(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}"""
        req = require_admin()
        check_ids(serverName, mediaId)
        if serverName == server_name:
            ask(Quarantine(mediaId, req.user_id))
        return jsonify({})

    @bp.post("/_synapse/admin/v1/media/unquarantine/<serverName>/<mediaId>")
    def unquarantine(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}"""
        require_admin()
        check_ids(serverName, mediaId)
        if serverName == server_name:
            ask(Quarantine(mediaId, None))
        return jsonify({})

    @bp.delete("/_synapse/admin/v1/media/<serverName>/<mediaId>")
    def delete(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}"""
        require_admin()
        check_ids(serverName, mediaId)
        if serverName != server_name:
            raise invalid_param("Can only delete local media")
        if not ask(DeleteMedia(mediaId)):
            raise not_found("Unknown media")
        return jsonify({"deleted_media": [mediaId], "total": 1})

    app.register_blueprint(bp)


def _required_dimension(name: str) -> int:
    if name not in request.args:
        raise missing_param(f"Missing query parameter '{name}'")
    value = query_int(name)
    if value is None or value < 1:
        raise invalid_param(f"Query parameter '{name}' must be a positive integer")
    return value
