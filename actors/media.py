"""The media actor: the only writer of the media store, run by the ``media`` supervisor.

It allocates media ids, enforces quotas (``media_upload_limits``) and the pending-upload
limit, commits uploads (a rename of the temp file the HTTP handler streamed, then the row),
records thumbnails, commits remote media fetched by ``federation/media.py``
(:class:`CommitRemote`: a rename of the fetched temp file, then the cache row), and carries
out quarantine and deletion.  Serialising these in one
actor makes check-then-write sequences (quota, "already uploaded?") race-free without locks.

It is a :class:`~supervision.SupervisedActor` under one key (:data:`MEDIA_KEY`) of a
:class:`~supervision.Supervisor` built by :func:`media_supervisor`.  ``MatrixError`` is a
domain error (an answer to the caller); anything else crashes the actor, the request that
caused it gets ``ActorFailed`` (500) and a fresh incarnation takes over the queued messages.
The actor holds no state worth reloading: its store is the database and the disk.

Thumbnails are rendered in gevent's thread pool from a helper greenlet, so the actor keeps
answering while Pillow works; concurrent requests for the same thumbnail share one render.
A :class:`RequestThumbnail` ask answers at once with the stored :class:`Thumbnail` or with
a ticket (a ``gevent.event.AsyncResult``) that the caller waits on (see
:func:`request_thumbnail`).  When the render is done its greenlet tells the supervisor a
``_Rendered`` for the same key; the actor records the thumbnail and settles the tickets.
Tickets never outlive their incarnation unsettled: a crash fails them with ``ActorFailed``,
a clean stop with ``SupervisorStopped``, and a render result that comes back to a later
incarnation is discarded.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable

import gevent
import gevent.event

# the messages (actors/media_messages.py) are importable from here as before
from actors.media_messages import (CommitRemote, CommitUpload, CreateMedia,  # noqa: F401
                                   DeleteMedia, DeleteRemoteMedia, Quarantine,
                                   RequestThumbnail, _Rendered)
from actors.thumbnailer import (THUMBNAILABLE_TYPES, ThumbnailError, plan,
                                remove_quietly, render)
from atrium.errors import MatrixError, forbidden, limit_exceeded, not_found
from store.media import (ImageInfo, LocalMedia, MediaFiles, MediaStore, RemoteMedia, Thumbnail,
                         ThumbnailKey, new_media_id, now_ms)
from store.media_access import MediaAccess
from supervision import (ActorFailed, SupervisedActor, SupervisionError, Supervisor,
                         SupervisorStopped, Tracer)

log = logging.getLogger(__name__)

MEDIA_KEY = "local"
"""The media supervisor's only key: one actor owns all local media."""


def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking file or CPU work in gevent's thread pool (STACK-NOTES)."""
    return gevent.get_hub().threadpool.apply(fn, args)


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


_job_tokens = itertools.count(1)  # unique across incarnations (one process, one thread)


class _RenderJob:
    """One thumbnail render in flight and the tickets waiting for it."""

    __slots__ = ("token", "tickets")

    def __init__(self) -> None:
        self.token = next(_job_tokens)
        self.tickets: list[gevent.event.AsyncResult] = []

    @property
    def open(self) -> bool:
        """Whether new requests may still join (not settled yet)."""
        return self.token > 0

    def settle(self, thumb: Thumbnail) -> None:
        tickets, self.tickets, self.token = self.tickets, [], 0
        for t in tickets:
            t.set(thumb)

    def fail(self, error: BaseException) -> None:
        tickets, self.tickets, self.token = self.tickets, [], 0
        for t in tickets:
            t.set_exception(error)


# --------------------------------------------------------------------------------- actor

class MediaActor(SupervisedActor):
    """The media store's writer (see the module docstring)."""

    domain_errors = (MatrixError,)

    def __init__(self, store: MediaStore, files: MediaFiles, limits: MediaLimits,
                 waiters: UploadWaiters) -> None:
        super().__init__()
        self.store = store
        self.files = files
        self.limits = limits
        self.waiters = waiters
        self._inflight: dict[tuple[bool, str, ThumbnailKey], _RenderJob] = {}

    def load(self) -> None:
        """Best-effort clean-up when an incarnation starts: expired ``/create`` ids and temp
        files left by a crash (older than an hour, so no upload in progress is touched)."""
        try:
            self.store.delete_expired_pending(now_ms())
            blocking(_sweep_tmp, self.files.tmp_dir, 3600.0)
            self._remove_deleted_files()  # of deletions a crash cut short
        except Exception:  # noqa: BLE001 - clean-up failing must not stop uploads
            log.exception("media actor: start-up clean-up failed")

    def handle(self, message: Any) -> Any:
        if isinstance(message, CommitUpload):
            return self._commit(message)
        if isinstance(message, CreateMedia):
            return self._create(message)
        if isinstance(message, RequestThumbnail):
            return self._thumbnail(message)
        if isinstance(message, _Rendered):
            return self._rendered(message)
        if isinstance(message, CommitRemote):
            return self._commit_remote(message)
        if isinstance(message, Quarantine):
            if message.origin is not None:
                return self.store.set_remote_quarantined(message.origin, message.media_id,
                                                         message.by)
            return self.store.set_quarantined(message.media_id, message.by)
        if isinstance(message, DeleteMedia):
            return self._delete(message.media_id)
        if isinstance(message, DeleteRemoteMedia):
            return self._delete_remote(message)
        raise TypeError(f"media actor: unexpected message {type(message).__name__}")

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        """This incarnation crashed: nobody will settle its tickets, so fail them now."""
        cause = exception_value or RuntimeError("media actor crashed")
        self._fail_inflight(lambda: ActorFailed(self.key, cause))

    def on_stop(self) -> None:
        """Passivated or shut down: renders still running report to nobody."""
        self._fail_inflight(lambda: SupervisorStopped(self.key))

    def _fail_inflight(self, make_error: Callable[[], BaseException]) -> None:
        jobs = list(self._inflight.values())
        self._inflight.clear()
        for job in jobs:
            job.fail(make_error())

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

    def _commit_remote(self, m: CommitRemote) -> RemoteMedia:
        existing = self.store.get_remote_media(m.origin, m.media_id)
        if existing is not None:
            remove_quietly(m.tmp_path)
            return existing
        if m.length > self.limits.max_upload_size:
            remove_quietly(m.tmp_path)
            raise MatrixError(502, "M_TOO_LARGE", "Remote content is too large")
        row = RemoteMedia(m.origin, m.media_id, new_media_id(), m.media_type, m.upload_name,
                          m.length, m.sha256, m.image, now_ms(), None,
                          self.limits.legacy_unauthenticated)
        final = self.files.remote_content_path(row.filesystem_id)
        blocking(_place, m.tmp_path, final)
        try:
            self.store.insert_remote_media(row)
        except BaseException:
            remove_quietly(final)
            raise
        return row

    # -- thumbnails ----------------------------------------------------------------------
    def _thumbnail(self, m: RequestThumbnail) -> Thumbnail | gevent.event.AsyncResult:
        existing = (self.store.get_remote_thumbnail(m.media_id, m.key) if m.remote
                    else self.store.get_thumbnail(m.media_id, m.key))
        if existing is not None:
            return existing
        ticket = gevent.event.AsyncResult()
        k = (m.remote, m.media_id, m.key)
        job = self._inflight.get(k)
        if job is None or not job.open:
            job = self._inflight[k] = _RenderJob()
            src = (self.files.remote_content_path(m.media_id) if m.remote
                   else self.files.content_path(m.media_id))
            gevent.spawn(self._render_job, job, m.media_id, m.key, src,
                         self.files.new_tmp_path("thumb"), self.trace_id, m.remote)
        job.tickets.append(ticket)
        return ticket

    def _render_job(self, job: _RenderJob, media_id: str, key: ThumbnailKey, src: str,
                    tmp: str, trace_id: str | None, remote: bool = False) -> None:
        """Runs in its own greenlet, outside the actor; reports back through the supervisor."""
        token = job.token
        result, error = None, None
        try:
            result = blocking(render, src, tmp, key, self.limits.max_image_pixels)
        except Exception as e:  # noqa: BLE001 - handed to the waiters, not a crash
            error = e
        sup = self.supervisor
        assert sup is not None
        try:
            sup.tell(self.key, _Rendered(media_id, key, token, tmp, result, error, remote),
                     trace_id=trace_id, sender=self.name)
        except SupervisionError as e:  # stopped, parked or full: nobody will record it
            remove_quietly(tmp)
            if job.token == token:
                job.fail(e)

    def _rendered(self, m: _Rendered) -> None:
        k = (m.remote, m.media_id, m.key)
        job = self._inflight.get(k)
        if job is None or job.token != m.job:
            remove_quietly(m.tmp_path)  # a job of a crashed incarnation: already failed
            return
        if m.error is not None:
            del self._inflight[k]
            remove_quietly(m.tmp_path)
            job.fail(m.error)
            return
        assert m.result is not None
        width, height, media_type = m.result
        try:
            if m.remote:
                size = blocking(_place, m.tmp_path,
                                self.files.remote_thumbnail_path(m.media_id, m.key))
                thumb = Thumbnail(m.key, width, height, media_type, size)
                self.store.insert_remote_thumbnail(m.media_id, thumb)
            else:
                size = blocking(_place, m.tmp_path, self.files.thumbnail_path(m.media_id, m.key))
                thumb = Thumbnail(m.key, width, height, media_type, size)
                self.store.insert_thumbnail(m.media_id, thumb)
        except BaseException:
            remove_quietly(m.tmp_path)
            raise  # a crash: on_failure fails this job's tickets too
        del self._inflight[k]
        job.settle(thumb)

    # -- admin ---------------------------------------------------------------------------
    def _delete(self, media_id: str) -> bool:
        if not self.store.delete_media(media_id):
            return False
        self._remove_deleted_files()
        return True

    def _delete_remote(self, m: DeleteRemoteMedia) -> bool:
        if not self.store.delete_remote_media(m.origin, m.media_id):
            return False
        self._remove_deleted_files()
        return True

    def _remove_deleted_files(self) -> None:
        """Rows go first, with a record of their files (store/media.py); the files follow
        and then the record, so a crash in between is finished by the next incarnation."""
        for kind, file_id in self.store.pending_file_removals():
            blocking(_remove_media_files, *self.files.paths_of(kind, file_id))
            self.store.forget_file_removal(kind, file_id)


def media_supervisor(store: MediaStore, files: MediaFiles, limits: MediaLimits,
                     waiters: UploadWaiters, *, tracer: Tracer | None, max_mailbox: int,
                     ask_timeout: float, restart_delay: float, max_restarts: int,
                     restart_window: float, park_duration: float) -> Supervisor:
    """The ``media`` supervisor: one never-passivated :class:`MediaActor` under
    :data:`MEDIA_KEY` (it is cheap to keep and its render tickets must not be cut short)."""

    def factory(key: str) -> MediaActor:
        if key != MEDIA_KEY:
            raise ValueError(f"media supervisor: unknown key {key!r}")
        return MediaActor(store, files, limits, waiters)

    return Supervisor("media", factory, tracer=tracer, max_mailbox=max_mailbox,
                      ask_timeout=ask_timeout, idle_timeout=None, restart_delay=restart_delay,
                      max_restarts=max_restarts, restart_window=restart_window,
                      park_duration=park_duration)


def check_pending_upload(row: LocalMedia | None, user_id: str, now: int) -> None:
    """Whether ``user_id`` may PUT content to a created id (spec: PUT /upload/{s}/{id})."""
    if row is None or (not row.uploaded and (row.unused_expires_ts or 0) <= now):
        raise not_found("Unknown or expired media ID")
    if row.user_id != user_id:
        raise forbidden("This media ID was created by another user")
    if row.uploaded:
        raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")


def request_thumbnail(supervisor: Supervisor, media_id: str, key: ThumbnailKey,
                      timeout: float, *, trace_id: str | None = None,
                      sender: str | None = None, remote: bool = False) -> Thumbnail:
    """The stored thumbnail of ``media_id`` for ``key``, rendering it first if needed.

    Asks the media actor (supervision errors propagate: ``MailboxFull``, ``ActorFailed``,
    ``AskTimeout``…), then waits on the returned ticket for what is left of ``timeout``:
    ``gevent.Timeout`` if the render does not finish in time, ``ThumbnailError`` if the
    content cannot be thumbnailed, ``ActorFailed`` if the actor crashed meanwhile.
    """
    deadline = time.monotonic() + timeout
    answer = supervisor.ask(MEDIA_KEY, RequestThumbnail(media_id, key, remote), timeout=timeout,
                            trace_id=trace_id, sender=sender)
    if isinstance(answer, Thumbnail):
        return answer
    assert isinstance(answer, gevent.event.AsyncResult)
    thumb: Thumbnail = answer.get(timeout=max(0.0, deadline - time.monotonic()))
    return thumb


# ------------------------------------------------------------ shared by web/ and federation/

@dataclass
class MediaParts:
    """The media area's parts, built by ``web/media.py`` and shared as
    ``runtime.parts["media"]`` (the federation media routes and the remote fetcher use the
    same store, files, waiters and actor)."""

    store: MediaStore
    files: MediaFiles
    limits: MediaLimits
    waiters: UploadWaiters
    supervisor: Supervisor
    ask_timeout: float
    access: MediaAccess | None = None  # last_access_ts, written in batches


def wait_uploaded(parts: MediaParts, media_id: str, timeout_ms: int) -> LocalMedia:
    """The uploaded, not quarantined local media ``media_id``, waiting up to ``timeout_ms``
    for an asynchronous upload (404 M_NOT_FOUND; 504 M_NOT_YET_UPLOADED when time is up)."""
    deadline = time.monotonic() + timeout_ms / 1000
    row = parts.store.get_local_media(media_id)
    while row is not None and not row.uploaded:
        if (row.unused_expires_ts or 0) <= now_ms():
            row = None
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
        parts.waiters.wait(media_id, min(remaining, 1.0))
        row = parts.store.get_local_media(media_id)
    if row is None or row.quarantined_by is not None:
        raise not_found("Media not found")
    if parts.access is not None:
        parts.access.local(media_id)
    return row


def _base_type(media_type: str | None) -> str:
    return (media_type or "").split(";", 1)[0].strip().lower()


def thumbnail_file(parts: MediaParts, source_id: str, media_type: str | None,
                   image: ImageInfo | None, width: int, height: int, method: str,
                   animated: bool, *, remote: bool = False, trace_id: str | None = None,
                   sender: str | None = None) -> tuple[str, str]:
    """(media type, path on disk) of the thumbnail to serve for a stored item: a local
    media id, or with ``remote`` a cached remote item's filesystem id.  The spec's errors:
    400 M_UNKNOWN (not thumbnailable), 413 (502 for remote content) M_TOO_LARGE, 504."""
    if _base_type(media_type) not in THUMBNAILABLE_TYPES or image is None:
        raise MatrixError(400, "M_UNKNOWN", "Cannot generate thumbnails for the requested content")
    if image.width * image.height > parts.limits.max_image_pixels:
        raise MatrixError(502 if remote else 413, "M_TOO_LARGE",
                          "Content is too large to thumbnail")
    key = plan(image, width, height, method, animated)
    if key is None:  # the original is what the spec asks for here
        path = (parts.files.remote_content_path(source_id) if remote
                else parts.files.content_path(source_id))
        return _base_type(media_type).replace("image/jpg", "image/jpeg"), path
    try:
        thumb = request_thumbnail(parts.supervisor, source_id, key, parts.ask_timeout,
                                  trace_id=trace_id, sender=sender, remote=remote)
    except ThumbnailError:
        raise MatrixError(400, "M_UNKNOWN",
                          "Cannot generate thumbnails for the requested content") from None
    except gevent.Timeout:
        raise MatrixError(504, "M_UNKNOWN", "Timed out generating the thumbnail") from None
    path = (parts.files.remote_thumbnail_path(source_id, key) if remote
            else parts.files.thumbnail_path(source_id, key))
    return thumb.media_type, path


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
