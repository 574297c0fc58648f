"""The media actor's messages (actors/media.py), as actors/room_messages.py holds the room
actor's: what handlers and federation/media.py ask of it."""
from __future__ import annotations

from store.media import ImageInfo, ThumbnailKey
from supervision import message

@message
class CreateMedia:
    user_id: str


@message
class CommitUpload:
    user_id: str
    tmp_path: str
    length: int
    sha256: str
    media_type: str
    upload_name: str | None
    image: ImageInfo | None
    media_id: str | None = None  # set for PUT to an id from /create


@message
class CommitRemote:
    """Cache remote media fetched into ``tmp_path``; answers the :class:`RemoteMedia` row
    (the one already cached when another fetch won the race: the temp file is dropped)."""

    origin: str
    media_id: str
    tmp_path: str
    length: int
    sha256: str
    media_type: str
    upload_name: str | None
    image: ImageInfo | None


@message
class RequestThumbnail:
    """Ask: the stored ``Thumbnail``, or an ``AsyncResult`` ticket settled after a render.
    With ``remote`` set, ``media_id`` is a cached remote item's ``filesystem_id``."""

    media_id: str
    key: ThumbnailKey
    remote: bool = False


@message
class _Rendered:
    """Told by a render greenlet when its thread-pool job is over."""

    media_id: str
    key: ThumbnailKey
    job: int  # the _RenderJob's token: results of an older incarnation's jobs are dropped
    tmp_path: str
    result: tuple[int, int, str] | None
    error: BaseException | None
    remote: bool = False


@message
class Quarantine:
    media_id: str
    by: str | None  # None lifts the quarantine
    origin: str | None = None  # set: a cached remote item of that server


@message
class DeleteMedia:
    media_id: str


@message
class DeleteRemoteMedia:
    """Drop a cached remote item (rows, file, thumbnails); answers whether it was cached."""

    origin: str
    media_id: str
