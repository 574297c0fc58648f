"""Media storage: the ``local_media`` / ``local_media_thumbnails`` rows (schema
``010_media.sql``), the remote media cache ``remote_media_cache`` /
``remote_media_thumbnails`` (schema ``064_remote_media.sql``; server-server-api "Content
Repository") and the on-disk layout of the bytes under ``media_store_path``.

Reads are called from the web layer directly; writes are made only by the media actor
(``actors/media.py``), which serialises id allocation, quota checks and commits.

Every path is built from a media id matching ``[A-Za-z0-9_-]+`` (checked again here) and
fixed strings, and is checked to stay under the store's root, so no request can name a
file outside it (spec: content repository, "Security considerations").
"""
from __future__ import annotations

import os
import re
import secrets
import string
import time
from dataclasses import dataclass

from store.database import Database, Txn

MEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_ID_ALPHABET = string.ascii_letters + string.digits


def now_ms() -> int:
    return int(time.time() * 1000)


def new_media_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def valid_media_id(media_id: str) -> bool:
    return bool(MEDIA_ID_RE.match(media_id))


@dataclass(frozen=True)
class ImageInfo:
    """What probing the upload found: its pixel size and whether it has several frames."""

    width: int
    height: int
    animated: bool


@dataclass(frozen=True)
class LocalMedia:
    media_id: str
    user_id: str
    created_ts: int
    uploaded_ts: int | None
    unused_expires_ts: int | None
    media_type: str | None
    upload_name: str | None
    media_length: int | None
    sha256: str | None
    image: ImageInfo | None
    quarantined_by: str | None
    legacy_allowed: bool

    @property
    def uploaded(self) -> bool:
        return self.uploaded_ts is not None


@dataclass(frozen=True)
class ThumbnailKey:
    """A size class: the box asked for (after choosing a preset), method, animation."""

    box_width: int
    box_height: int
    method: str  # "crop" | "scale"
    animated: bool

    def file_name(self) -> str:
        return f"{self.box_width}x{self.box_height}-{self.method}-{'a' if self.animated else 's'}"


@dataclass(frozen=True)
class Thumbnail:
    key: ThumbnailKey
    width: int
    height: int
    media_type: str
    media_length: int


@dataclass(frozen=True)
class RemoteMedia:
    """A cached copy of another server's media; its bytes are named by ``filesystem_id``."""

    origin: str
    media_id: str
    filesystem_id: str
    media_type: str
    upload_name: str | None
    media_length: int
    sha256: str
    image: ImageInfo | None
    created_ts: int
    quarantined_by: str | None
    legacy_allowed: bool


_REMOTE_COLS = ("media_origin, media_id, filesystem_id, media_type, upload_name, media_length,"
                " sha256, image_width, image_height, image_animated, created_ts,"
                " quarantined_by, legacy_allowed")


def _remote(r: tuple) -> RemoteMedia:
    image = ImageInfo(r[7], r[8], bool(r[9])) if r[7] is not None else None
    return RemoteMedia(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], image, int(r[10]),
                       r[11], bool(r[12]))


_MEDIA_COLS = ("media_id, user_id, created_ts, uploaded_ts, unused_expires_ts, media_type, "
               "upload_name, media_length, sha256, image_width, image_height, image_animated,"
               " quarantined_by, legacy_allowed")


def _media(r: tuple) -> LocalMedia:
    image = ImageInfo(r[9], r[10], bool(r[11])) if r[9] is not None else None
    return LocalMedia(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], image, r[12],
                      bool(r[13]))


def _image_cols(image: ImageInfo | None) -> tuple:
    if image is None:
        return (None, None, None)
    return (image.width, image.height, int(image.animated))


class MediaFiles:
    """Where bytes live: ``local_content/ab/cd/<rest>``, thumbnails beside them, temp files
    in ``tmp/`` (same filesystem, so committing an upload is a rename)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.tmp_dir, exist_ok=True)

    def _jail(self, path: str) -> str:
        real = os.path.realpath(path)
        if not real.startswith(self.root + os.sep):
            raise ValueError("media path escapes the store")
        return real

    @staticmethod
    def _shard(media_id: str) -> tuple[str, str, str]:
        if not valid_media_id(media_id):
            raise ValueError(f"invalid media id {media_id!r}")
        padded = media_id if len(media_id) > 4 else media_id + "_" * (5 - len(media_id))
        return padded[0:2], padded[2:4], padded[4:]

    def content_path(self, media_id: str) -> str:
        a, b, rest = self._shard(media_id)
        return self._jail(os.path.join(self.root, "local_content", a, b, rest))

    def thumbnail_dir(self, media_id: str) -> str:
        a, b, rest = self._shard(media_id)
        return self._jail(os.path.join(self.root, "local_thumbnails", a, b, rest))

    def thumbnail_path(self, media_id: str, key: ThumbnailKey) -> str:
        return self._jail(os.path.join(self.thumbnail_dir(media_id), key.file_name()))

    def remote_content_path(self, filesystem_id: str) -> str:
        a, b, rest = self._shard(filesystem_id)
        return self._jail(os.path.join(self.root, "remote_content", a, b, rest))

    def remote_thumbnail_dir(self, filesystem_id: str) -> str:
        a, b, rest = self._shard(filesystem_id)
        return self._jail(os.path.join(self.root, "remote_thumbnails", a, b, rest))

    def remote_thumbnail_path(self, filesystem_id: str, key: ThumbnailKey) -> str:
        return self._jail(os.path.join(self.remote_thumbnail_dir(filesystem_id),
                                       key.file_name()))

    def new_tmp_path(self, prefix: str = "upload") -> str:
        return os.path.join(self.tmp_dir, f"{prefix}-{secrets.token_hex(12)}")

    def paths_of(self, kind: str, file_id: str) -> tuple[str, str]:
        """(content file, thumbnail folder) of a ``media_file_removals`` entry."""
        if kind == "remote":
            return self.remote_content_path(file_id), self.remote_thumbnail_dir(file_id)
        return self.content_path(file_id), self.thumbnail_dir(file_id)


class MediaStore:
    """Rows of ``local_media`` and ``local_media_thumbnails``; the remote cache's rows
    (``remote_media_cache``, ``remote_media_thumbnails``) too."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads ---------------------------------------------------------------------------
    def get_local_media(self, media_id: str) -> LocalMedia | None:
        def _q(txn: Txn) -> LocalMedia | None:
            r = txn.query_one(f"SELECT {_MEDIA_COLS} FROM local_media WHERE media_id = ?",
                              (media_id,))
            return _media(r) if r is not None else None

        return self.db.run("get_local_media", _q)

    def get_thumbnail(self, media_id: str, key: ThumbnailKey) -> Thumbnail | None:
        def _q(txn: Txn) -> Thumbnail | None:
            r = txn.query_one(
                "SELECT width, height, media_type, media_length FROM local_media_thumbnails"
                " WHERE media_id = ? AND box_width = ? AND box_height = ? AND method = ?"
                " AND animated = ?",
                (media_id, key.box_width, key.box_height, key.method, int(key.animated)))
            return Thumbnail(key, r[0], r[1], r[2], r[3]) if r is not None else None

        return self.db.run("get_thumbnail", _q)

    def uploaded_bytes_since(self, user_id: str, since_ts: int) -> int:
        def _q(txn: Txn) -> int:
            return int(txn.query_value(
                "SELECT SUM(media_length) FROM local_media WHERE user_id = ?"
                " AND uploaded_ts >= ?", (user_id, since_ts),
                default=0))

        return self.db.run("uploaded_bytes_since", _q)

    def count_pending(self, user_id: str, now: int) -> tuple[int, int | None]:
        """How many created-but-not-uploaded ids the user holds, and the earliest expiry."""
        def _q(txn: Txn) -> tuple[int, int | None]:
            r = txn.query_one(
                "SELECT COUNT(*), MIN(unused_expires_ts) FROM local_media WHERE user_id = ?"
                " AND uploaded_ts IS NULL AND unused_expires_ts > ?", (user_id, now))
            return (int(r[0]), r[1]) if r is not None else (0, None)

        return self.db.run("count_pending_media", _q)

    # -- writes (media actor only) ---------------------------------------------------------
    def insert_media(self, media: LocalMedia) -> None:
        def _w(txn: Txn) -> None:
            txn.execute(
                f"INSERT INTO local_media ({_MEDIA_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (media.media_id, media.user_id, media.created_ts, media.uploaded_ts,
                 media.unused_expires_ts, media.media_type, media.upload_name,
                 media.media_length, media.sha256, *_image_cols(media.image),
                 media.quarantined_by, int(media.legacy_allowed)))

        self.db.run("insert_media", _w, write=True)

    def complete_pending(self, media_id: str, *, uploaded_ts: int, media_type: str,
                         upload_name: str | None, media_length: int, sha256: str,
                         image: ImageInfo | None, legacy_allowed: bool) -> bool:
        """Fill in a pending (created) media row; False if it was already uploaded."""
        def _w(txn: Txn) -> bool:
            return txn.execute(
                "UPDATE local_media SET uploaded_ts = ?, unused_expires_ts = NULL,"
                " media_type = ?, upload_name = ?, media_length = ?, sha256 = ?,"
                " image_width = ?, image_height = ?, image_animated = ?,"
                " legacy_allowed = ? WHERE media_id = ? AND uploaded_ts IS NULL",
                (uploaded_ts, media_type, upload_name, media_length, sha256,
                 *_image_cols(image), int(legacy_allowed), media_id)) == 1

        return self.db.run("complete_pending_media", _w, write=True)

    def delete_expired_pending(self, now: int) -> int:
        def _w(txn: Txn) -> int:
            return txn.execute("DELETE FROM local_media WHERE uploaded_ts IS NULL"
                               " AND unused_expires_ts <= ?", (now,))

        return self.db.run("delete_expired_pending_media", _w, write=True)

    def insert_thumbnail(self, media_id: str, thumb: Thumbnail) -> None:
        k = thumb.key

        def _w(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO local_media_thumbnails (media_id, box_width, box_height, method,"
                " animated, width, height, media_type, media_length)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (media_id, k.box_width, k.box_height, k.method, int(k.animated), thumb.width,
                 thumb.height, thumb.media_type, thumb.media_length))

        self.db.run("insert_thumbnail", _w, write=True)

    def set_quarantined(self, media_id: str, by: str | None) -> bool:
        """False also when quarantining media protected from it (``safe_from_quarantine``)."""
        protected = "" if by is None else " AND safe_from_quarantine = 0"

        def _w(txn: Txn) -> bool:
            return txn.execute("UPDATE local_media SET quarantined_by = ? WHERE media_id = ?"
                               + protected, (by, media_id)) == 1

        return self.db.run("set_media_quarantined", _w, write=True)

    def delete_media(self, media_id: str) -> bool:
        """Rows first (with the record of the files to remove, in the same transaction):
        a crash before the files go leaves no row naming a missing file."""
        def _w(txn: Txn) -> bool:
            txn.execute("DELETE FROM local_media_thumbnails WHERE media_id = ?", (media_id,))
            if txn.execute("DELETE FROM local_media WHERE media_id = ?", (media_id,)) != 1:
                return False
            txn.execute("DELETE FROM url_previews WHERE media_id = ?", (media_id,))
            _record_removal(txn, "local", media_id)
            return True

        return self.db.run("delete_media", _w, write=True)

    def delete_remote_media(self, origin: str, media_id: str) -> bool:
        """Drop a cached remote item's rows, recording its files for removal."""
        def _w(txn: Txn) -> bool:
            fsid = txn.query_value("SELECT filesystem_id FROM remote_media_cache"
                                   " WHERE media_origin = ? AND media_id = ?",
                                   (origin, media_id))
            if fsid is None:
                return False
            txn.execute("DELETE FROM remote_media_thumbnails WHERE filesystem_id = ?", (fsid,))
            txn.execute("DELETE FROM remote_media_cache WHERE filesystem_id = ?", (fsid,))
            _record_removal(txn, "remote", fsid)
            return True

        return self.db.run("delete_remote_media", _w, write=True)

    def pending_file_removals(self) -> list[tuple[str, str]]:
        """(kind, file id) of deleted media whose files may still be on disk."""
        return self.db.run("pending_file_removals", lambda txn: txn.query(
            "SELECT kind, file_id FROM media_file_removals ORDER BY kind, file_id"))

    def forget_file_removal(self, kind: str, file_id: str) -> None:
        self.db.run("forget_file_removal", lambda txn: txn.execute(
            "DELETE FROM media_file_removals WHERE kind = ? AND file_id = ?",
            (kind, file_id)), write=True)

    # -- the remote media cache (writes: media actor only) ----------------------------------
    def get_remote_media(self, origin: str, media_id: str) -> RemoteMedia | None:
        def _q(txn: Txn) -> RemoteMedia | None:
            r = txn.query_one(f"SELECT {_REMOTE_COLS} FROM remote_media_cache"
                              " WHERE media_origin = ? AND media_id = ?", (origin, media_id))
            return _remote(r) if r is not None else None

        return self.db.run("get_remote_media", _q)

    def insert_remote_media(self, media: RemoteMedia) -> bool:
        """False when the item is cached already (the existing row stays)."""
        def _w(txn: Txn) -> bool:
            return txn.execute(
                f"INSERT INTO remote_media_cache ({_REMOTE_COLS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (media.origin, media.media_id, media.filesystem_id, media.media_type,
                 media.upload_name, media.media_length, media.sha256,
                 *_image_cols(media.image), media.created_ts, media.quarantined_by,
                 int(media.legacy_allowed))) == 1

        return self.db.run("insert_remote_media", _w, write=True)

    def get_remote_thumbnail(self, filesystem_id: str, key: ThumbnailKey) -> Thumbnail | None:
        def _q(txn: Txn) -> Thumbnail | None:
            r = txn.query_one(
                "SELECT width, height, media_type, media_length FROM remote_media_thumbnails"
                " WHERE filesystem_id = ? AND box_width = ? AND box_height = ? AND method = ?"
                " AND animated = ?",
                (filesystem_id, key.box_width, key.box_height, key.method, int(key.animated)))
            return Thumbnail(key, r[0], r[1], r[2], r[3]) if r is not None else None

        return self.db.run("get_remote_thumbnail", _q)

    def insert_remote_thumbnail(self, filesystem_id: str, thumb: Thumbnail) -> None:
        k = thumb.key

        def _w(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO remote_media_thumbnails (filesystem_id, box_width, box_height,"
                " method, animated, width, height, media_type, media_length)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (filesystem_id, k.box_width, k.box_height, k.method, int(k.animated),
                 thumb.width, thumb.height, thumb.media_type, thumb.media_length))

        self.db.run("insert_remote_thumbnail", _w, write=True)

    def set_remote_quarantined(self, origin: str, media_id: str, by: str | None) -> bool:
        def _w(txn: Txn) -> bool:
            return txn.execute("UPDATE remote_media_cache SET quarantined_by = ?"
                               " WHERE media_origin = ? AND media_id = ?",
                               (by, origin, media_id)) == 1

        return self.db.run("set_remote_quarantined", _w, write=True)


def _record_removal(txn: Txn, kind: str, file_id: str) -> None:
    txn.execute("INSERT INTO media_file_removals (kind, file_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING", (kind, file_id))
