"""The URL preview cache (table ``url_previews``, migration ``071_url_previews.sql``): every
preview built, by URL and the time it was fetched, so ``GET /media/preview_url`` can answer
"the preview as of ``ts``" (the newest one fetched at or before ``ts``, else the oldest one
after it; used while it had not expired at ``ts``: Synapse's rule) without fetching again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from store.database import Database, Txn

#: rows are kept this long after they expire (a client may ask for an older ``ts``)
KEEP_EXPIRED_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class StoredPreview:
    url: str
    fetched_ts: int
    expires_ts: int
    og: dict[str, Any]
    media_id: str | None


def _hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


class UrlPreviewStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, url: str, ts: int) -> StoredPreview | None:
        """The preview of ``url`` as of ``ts`` (ms), if one was fetched and had not expired
        at ``ts``."""
        h = _hash(url)
        cols = "url, fetched_ts, expires_ts, og_json, media_id"

        def _q(txn: Txn) -> tuple | None:
            before = txn.query_one(
                f"SELECT {cols} FROM url_previews WHERE url_hash = ? AND fetched_ts <= ?"
                " ORDER BY fetched_ts DESC LIMIT 1", (h, ts))
            return before or txn.query_one(
                f"SELECT {cols} FROM url_previews WHERE url_hash = ? AND fetched_ts > ?"
                " ORDER BY fetched_ts ASC LIMIT 1", (h, ts))

        r = self.db.run("url_preview_lookup", _q)
        if r is None or r[0] != url or int(r[2]) <= ts:
            return None
        try:
            og = json.loads(r[3])
        except ValueError:
            return None
        return StoredPreview(r[0], int(r[1]), int(r[2]), og, r[4]) \
            if isinstance(og, dict) else None

    def insert(self, url: str, fetched_ts: int, expires_ts: int, og: dict[str, Any],
               media_id: str | None) -> None:
        """Keep one preview; rows expired for more than ``KEEP_EXPIRED_MS`` go."""
        payload = json.dumps(og, separators=(",", ":"), ensure_ascii=False)

        def _w(txn: Txn) -> None:
            txn.execute("INSERT INTO url_previews (url_hash, url, fetched_ts, expires_ts,"
                        " og_json, media_id) VALUES (?, ?, ?, ?, ?, ?)",
                        (_hash(url), url, fetched_ts, expires_ts, payload, media_id))
            txn.execute("DELETE FROM url_previews WHERE expires_ts < ?",
                        (fetched_ts - KEEP_EXPIRED_MS,))

        self.db.run("url_preview_insert", _w, write=True)
