"""The media actor: the only writer of the media store.

It allocates media ids, enforces quotas (``media_upload_limits``) and the pending-upload
limit, commits uploads (a rename of the temp file the HTTP handler streamed, then the row),
records thumbnails, and carries out quarantine and deletion.  Serialising these in one
actor makes check-then-write sequences (quota, "already uploaded?") race-free without locks.

Thumbnails are rendered in gevent's thread pool from a helper greenlet, so the actor keeps
answering while Pillow works; concurrent requests for the same thumbnail share one render.
Web handlers talk to it with ``ask(msg, timeout=…)``; a thumbnail request is a ``tell`` that
carries its own reply future (see :func:`request_thumbnail`).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent
import gevent.event
import pykka

from actors.thumbnailer import remove_quietly, render
from atrium.errors import MatrixError, forbidden, limit_exceeded, not_found
from store.media import (ImageInfo, LocalMedia, MediaFiles, MediaStore, Thumbnail,
                         ThumbnailKey, new_media_id, now_ms)

log = logging.getLogger(__name__)


def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking file or CPU work in gevent's thread pool (STACK-NOTES)."""
    return gevent.get_hub().threadpool.apply(fn, args)


# ------------------------------------------------------------------------------ messages

@dataclass(frozen=True)
class CreateMedia:
    user_id: str


@dataclass(frozen=True)
class CommitUpload:
    user_id: str
    tmp_path: str
    length: int
    sha256: str
    media_type: str
    upload_name: str | None
    image: ImageInfo | None
    media_id: str | None = None  # set for PUT to an id from /create


@dataclass(frozen=True)
class RequestThumbnail:
    media_id: str
    key: ThumbnailKey
    reply: pykka.Future = field(compare=False)


@dataclass(frozen=True)
class _Rendered:
    media_id: str
    key: ThumbnailKey
    tmp_path: str
    result: tuple[int, int, str] | None
    error: BaseException | None


@dataclass(frozen=True)
class Quarantine:
    media_id: str
    by: str | None  # None lifts the quarantine


@dataclass(frozen=True)
class DeleteMedia:
    media_id: str


@dataclass(frozen=True)
class MediaLimits:
    max_upload_size: int
    max_pending: int
    unused_expiration_ms: int
    upload_limits: tuple[tuple[float, int], ...]
    max_image_pixels: int
    legacy_unauthenticated: bool


class UploadWaiters:
    """Wakes downloads that wait (``timeout_ms``) for an async upload to arrive."""

    def __init__(self) -> None:
        self._events: dict[str, gevent.event.Event] = {}
        self._waiting: dict[str, int] = {}

    def wait(self, media_id: str, timeout: float) -> None:
        ev = self._events.setdefault(media_id, gevent.event.Event())
        self._waiting[media_id] = self._waiting.get(media_id, 0) + 1
        try:
            ev.wait(timeout)
        finally:
            left = self._waiting.pop(media_id) - 1
            if left:
                self._waiting[media_id] = left
            elif self._events.get(media_id) is ev:
                del self._events[media_id]  # nobody waits: never-uploaded ids do not pile up

    def notify(self, media_id: str) -> None:
        ev = self._events.pop(media_id, None)
        if ev is not None:
            ev.set()


# --------------------------------------------------------------------------------- actor

class MediaActor(pykka.ThreadingActor):
    def __init__(self, store: MediaStore, files: MediaFiles, limits: MediaLimits,
                 waiters: UploadWaiters) -> None:
        super().__init__()
        self.store = store
        self.files = files
        self.limits = limits
        self.waiters = waiters
        self._inflight: dict[tuple[str, ThumbnailKey], list[pykka.Future]] = {}

    def on_start(self) -> None:
        try:
            self.store.delete_expired_pending(now_ms())
            blocking(_sweep_tmp, self.files.tmp_dir, 3600.0)
        except Exception:  # an exception in on_start would kill the actor silently
            log.exception("media actor: start-up clean-up failed")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, CommitUpload):
            return self._commit(message)
        if isinstance(message, CreateMedia):
            return self._create(message)
        if isinstance(message, RequestThumbnail):
            return self._thumbnail(message)
        if isinstance(message, _Rendered):
            return self._rendered(message)
        if isinstance(message, Quarantine):
            return self.store.set_quarantined(message.media_id, message.by)
        if isinstance(message, DeleteMedia):
            return self._delete(message.media_id)
        raise TypeError(f"media actor: unexpected message {type(message).__name__}")

    # -- uploads -------------------------------------------------------------------------
    def _create(self, m: CreateMedia) -> tuple[str, int]:
        now = now_ms()
        self.store.delete_expired_pending(now)
        count, earliest = self.store.count_pending(m.user_id, now)
        if count >= self.limits.max_pending:
            raise limit_exceeded((earliest or now + 60_000) - now)
        media_id = new_media_id()
        expires = now + self.limits.unused_expiration_ms
        self.store.insert_media(LocalMedia(
            media_id, m.user_id, now, None, expires, None, None, None, None, None, None,
            self.limits.legacy_unauthenticated))
        return media_id, expires

    def _check_quota(self, user_id: str, length: int, now: int) -> None:
        for period, max_size in self.limits.upload_limits:
            used = self.store.uploaded_bytes_since(user_id, now - int(period * 1000))
            if used + length > max_size:
                raise forbidden("You have reached your media upload quota")

    def _commit(self, m: CommitUpload) -> str:
        now = now_ms()
        if m.length > self.limits.max_upload_size:
            raise MatrixError(413, "M_TOO_LARGE", "Upload is over the size limit")
        if m.media_id is not None:
            check_pending_upload(self.store.get_local_media(m.media_id), m.user_id, now)
        self._check_quota(m.user_id, m.length, now)
        media_id = m.media_id or new_media_id()
        final = self.files.content_path(media_id)
        blocking(_place, m.tmp_path, final)
        try:
            if m.media_id is None:
                self.store.insert_media(LocalMedia(
                    media_id, m.user_id, now, now, None, m.media_type, m.upload_name, m.length,
                    m.sha256, m.image, None, self.limits.legacy_unauthenticated))
            elif not self.store.complete_pending(
                    media_id, uploaded_ts=now, media_type=m.media_type,
                    upload_name=m.upload_name, media_length=m.length, sha256=m.sha256,
                    image=m.image, legacy_allowed=self.limits.legacy_unauthenticated):
                raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
        except BaseException:
            remove_quietly(final)
            raise
        self.waiters.notify(media_id)
        return media_id

    # -- thumbnails ----------------------------------------------------------------------
    def _thumbnail(self, m: RequestThumbnail) -> None:
        # a tell: an exception escaping here would stop the actor, so every path replies
        try:
            existing = self.store.get_thumbnail(m.media_id, m.key)
            if existing is not None:
                m.reply.set(existing)
                return
            k = (m.media_id, m.key)
            if k in self._inflight:
                self._inflight[k].append(m.reply)
                return
            self._inflight[k] = [m.reply]
            src = self.files.content_path(m.media_id)
            gevent.spawn(self._render_job, m.media_id, m.key, src,
                         self.files.new_tmp_path("thumb"))
        except Exception:
            m.reply.set_exception(sys.exc_info())

    def _render_job(self, media_id: str, key: ThumbnailKey, src: str, tmp: str) -> None:
        """Runs in its own greenlet, outside the actor; reports back with a tell."""
        result, error = None, None
        try:
            result = blocking(render, src, tmp, key, self.limits.max_image_pixels)
        except Exception as e:
            error = e
        try:
            self.actor_ref.tell(_Rendered(media_id, key, tmp, result, error))
        except pykka.ActorDeadError:
            remove_quietly(tmp)

    def _rendered(self, m: _Rendered) -> None:
        waiters = self._inflight.pop((m.media_id, m.key), [])
        try:
            if m.error is not None:
                raise m.error
            assert m.result is not None
            width, height, media_type = m.result
            dst = self.files.thumbnail_path(m.media_id, m.key)
            size = blocking(_place, m.tmp_path, dst)
            thumb = Thumbnail(m.key, width, height, media_type, size)
            self.store.insert_thumbnail(m.media_id, thumb)
        except Exception:
            remove_quietly(m.tmp_path)
            exc = sys.exc_info()
            for f in waiters:
                f.set_exception(exc)
            return
        for f in waiters:
            f.set(thumb)

    # -- admin ---------------------------------------------------------------------------
    def _delete(self, media_id: str) -> bool:
        if not self.store.delete_media(media_id):
            return False
        blocking(_remove_media_files, self.files.content_path(media_id),
                 self.files.thumbnail_dir(media_id))
        return True


def check_pending_upload(row: LocalMedia | None, user_id: str, now: int) -> None:
    """Whether ``user_id`` may PUT content to a created id (spec: PUT /upload/{s}/{id})."""
    if row is None or (not row.uploaded and (row.unused_expires_ts or 0) <= now):
        raise not_found("Unknown or expired media ID")
    if row.user_id != user_id:
        raise forbidden("This media ID was created by another user")
    if row.uploaded:
        raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")


def request_thumbnail(ref: pykka.ActorRef, media_id: str, key: ThumbnailKey,
                      timeout: float) -> Thumbnail:
    """Ask the actor for a thumbnail, generating it if needed; raises pykka.Timeout."""
    reply = pykka.ThreadingFuture()
    ref.tell(RequestThumbnail(media_id, key, reply))
    return reply.get(timeout=timeout)


# ------------------------------------------------------------------ blocking file helpers

def _place(tmp: str, final: str) -> int:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(tmp, final)
    return os.path.getsize(final)


def _remove_media_files(content: str, thumbs: str) -> None:
    remove_quietly(content)
    shutil.rmtree(thumbs, ignore_errors=True)


def _sweep_tmp(tmp_dir: str, older_than: float) -> None:
    cutoff = time.time() - older_than
    for entry in os.scandir(tmp_dir):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            pass
