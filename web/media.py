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

Media of another server (``mxc://other/…``) is served from the remote cache; a miss is
fetched by ``federation/media.py``'s ``RemoteMediaFetcher`` (``fed.extras["remote_media"]``,
reached at request time: federation is wired after this area) unless ``allow_remote=false``.
Thumbnails of remote media are rendered here from the cached file.  The parts are shared as
``runtime.parts["media"]`` (``actors.media.MediaParts``) with the federation media routes.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from protocol.ids import is_valid_server_name
from flask import Blueprint, Flask, Response, g, jsonify, request

from actors.media import (MEDIA_KEY, CommitUpload, CreateMedia, DeleteMedia, MediaLimits,
                          MediaParts, Quarantine, UploadWaiters, blocking, check_pending_upload,
                          media_supervisor, thumbnail_file, wait_uploaded)
from actors.thumbnailer import THUMBNAILABLE_TYPES, probe, remove_quietly
from atrium.errors import invalid_param, missing_param, not_found
from store.media import LocalMedia, MediaFiles, MediaStore, RemoteMedia, now_ms, valid_media_id
from store.media_access import MediaAccess
from web.auth import require_admin, require_auth
from web.http import query_bool, query_int
from web.media_io import (base_type, clean_content_type, content_disposition, file_response,
                          receive_upload, served_content_type)

log = logging.getLogger(__name__)
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
    access = MediaAccess(runtime.db)  # last_access_ts, written in batches
    access.start()
    runtime.shutdown_hooks.append(access.stop)  # hooks run in reverse: before the store closes
    media = MediaParts(store, files, limits, waiters, supervisor, ask_timeout, access)
    runtime.parts["media"] = media
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

    def lookup(s: str, media_id: str, *, legacy: bool) -> LocalMedia | RemoteMedia:
        """The uploaded local media (waiting up to ``timeout_ms`` for an async upload), or
        the cached copy of a remote item (fetched first when not cached yet)."""
        check_ids(s, media_id)
        allow_remote = query_bool("allow_remote", True)
        query_bool("allow_redirect", False)  # accepted; we never redirect
        timeout_ms = query_int("timeout_ms", _DEFAULT_TIMEOUT_MS, minimum=0,
                               maximum=_MAX_TIMEOUT_MS) or 0
        if s != server_name:
            return remote(s, media_id, legacy=legacy, allow_remote=allow_remote,
                          timeout_ms=timeout_ms)
        row = wait_uploaded(media, media_id, timeout_ms)
        if legacy and not row.legacy_allowed:
            # Spec 1.11 "freeze": media uploaded while enable_legacy_unauthenticated_media
            # is false is only served by the authenticated endpoints.
            raise not_found("Media not found")
        return row

    def remote(s: str, media_id: str, *, legacy: bool, allow_remote: bool,
               timeout_ms: int) -> RemoteMedia:
        if not is_valid_server_name(s):
            raise not_found("Media not found")  # no server could hold it
        row = store.get_remote_media(s, media_id)
        if row is None:
            fed = runtime.parts.get("federation")
            fetcher = fed.extras.get("remote_media") if fed is not None else None
            if not allow_remote or fetcher is None \
                    or (legacy and not limits.legacy_unauthenticated):
                # the unauthenticated endpoints fetch nothing new once they are frozen
                raise not_found("Remote media is not available on this server")
            row = fetcher.get(s, media_id, timeout_ms=timeout_ms, **sent_from())
        if row.quarantined_by is not None or (legacy and not row.legacy_allowed):
            raise not_found("Media not found")
        access.remote(s, media_id)
        return row

    def download(s: str, media_id: str, file_name: str | None, *, legacy: bool) -> Response:
        row = lookup(s, media_id, legacy=legacy)
        media_type = served_content_type(row.media_type)
        disposition = content_disposition(media_type, file_name or row.upload_name)
        path = (files.remote_content_path(row.filesystem_id) if isinstance(row, RemoteMedia)
                else files.content_path(media_id))
        return file_response(path, media_type, disposition, authenticated=not legacy)

    def thumbnail(s: str, media_id: str, *, legacy: bool) -> Response:
        width = _required_dimension("width")
        height = _required_dimension("height")
        method = request.args.get("method", "scale")
        if method not in ("crop", "scale"):
            raise invalid_param("'method' must be crop or scale")
        animated = query_bool("animated", False)
        row = lookup(s, media_id, legacy=legacy)
        is_remote = isinstance(row, RemoteMedia)
        media_type, path = thumbnail_file(
            media, row.filesystem_id if isinstance(row, RemoteMedia) else media_id,
            row.media_type, row.image, width, height, method, animated, remote=is_remote,
            **sent_from())
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
        ask(Quarantine(mediaId, req.user_id,
                       None if serverName == server_name else serverName))
        log.info("admin %s: quarantined mxc://%s/%s", req.user_id, serverName, mediaId)
        return jsonify({})

    @bp.post("/_synapse/admin/v1/media/unquarantine/<serverName>/<mediaId>")
    def unquarantine(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}"""
        req = require_admin()
        check_ids(serverName, mediaId)
        ask(Quarantine(mediaId, None, None if serverName == server_name else serverName))
        log.info("admin %s: lifted the quarantine of mxc://%s/%s", req.user_id, serverName,
                 mediaId)
        return jsonify({})

    @bp.delete("/_synapse/admin/v1/media/<serverName>/<mediaId>")
    def delete(serverName: str, mediaId: str) -> Response:  # noqa: N803
        """DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}"""
        req = require_admin()
        check_ids(serverName, mediaId)
        if serverName != server_name:
            raise invalid_param("Can only delete local media")
        if not ask(DeleteMedia(mediaId)):
            raise not_found("Unknown media")
        log.info("admin %s: deleted mxc://%s/%s", req.user_id, serverName, mediaId)
        return jsonify({"deleted_media": [mediaId], "total": 1})

    app.register_blueprint(bp)


def _required_dimension(name: str) -> int:
    if name not in request.args:
        raise missing_param(f"Missing query parameter '{name}'")
    value = query_int(name)
    if value is None or value < 1:
        raise invalid_param(f"Query parameter '{name}' must be a positive integer")
    return value
