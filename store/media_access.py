"""When media was last downloaded or thumbnailed: ``last_access_ts`` of ``local_media`` and
``remote_media_cache`` (schema ``084_media_access.sql``), which the media admin API shows,
orders by, and deletes by (Synapse's "Media Admin API").

A download must not cost a write, so an access only sets an entry of an in-memory map
(``actors.media.wait_uploaded`` for local media, served to clients and to other servers;
``web/media.py`` for cached remote media).  The map is written in one transaction every
:data:`FLUSH_INTERVAL` seconds (Synapse's interval), sooner when it holds
:data:`MAX_PENDING` items, at shutdown, and before an admin call that reads or deletes by
these times.  A crash loses at most one interval of access times — a hint, not an
acknowledged write.

This is the only writer of ``last_access_ts``, and the media actor never reads that column,
so the batch goes to the store directly instead of through the actor's mailbox (where it
would queue behind uploads).  An update of a row deleted meanwhile
changes nothing; an older time never overwrites a newer one.
"""
from __future__ import annotations

import logging
import time

import gevent
import gevent.event

from store.database import Database, Txn

log = logging.getLogger(__name__)

#: seconds between two writes of the access times
FLUSH_INTERVAL = 60.0
#: items held in memory before a write is made at once (bounded memory)
MAX_PENDING = 10_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class MediaAccess:
    """The access times not written yet, and the greenlet that writes them."""

    def __init__(self, db: Database, *, interval: float = FLUSH_INTERVAL,
                 max_pending: int = MAX_PENDING) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        self._local: dict[str, int] = {}
        self._remote: dict[tuple[str, str], int] = {}
        self._wake = gevent.event.Event()
        self._worker: gevent.Greenlet | None = None

    # -- recording (no I/O) ----------------------------------------------------------------
    def local(self, media_id: str) -> None:
        """Local media ``media_id`` was served (download or thumbnail) now."""
        self._local[media_id] = _now_ms()
        self._check_size()

    def remote(self, origin: str, media_id: str) -> None:
        """The cached copy of ``mxc://origin/media_id`` was served now."""
        self._remote[(origin, media_id)] = _now_ms()
        self._check_size()

    def pending(self) -> int:
        return len(self._local) + len(self._remote)

    def _check_size(self) -> None:
        if self.pending() >= self.max_pending:
            self._wake.set()

    # -- writing -------------------------------------------------------------------------
    def flush(self) -> int:
        """Write the recorded times in one transaction; how many items were written.  On
        failure the times are kept for the next attempt and the error propagates."""
        # taken and replaced without yielding: accesses meanwhile go to the new maps
        local, self._local = self._local, {}
        remote, self._remote = self._remote, {}
        if not local and not remote:
            return 0
        try:
            self.db.run("flush_media_access", _write, local, remote, write=True)
        except BaseException:
            for k, ts in local.items():
                self._local[k] = max(ts, self._local.get(k, 0))
            for rk, ts in remote.items():
                self._remote[rk] = max(ts, self._remote.get(rk, 0))
            raise
        return len(local) + len(remote)

    def start(self) -> None:
        if self._worker is None:
            self._worker = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the timer and write what is left (a shutdown hook: before the store closes)."""
        if self._worker is not None:
            self._worker.kill(block=True, timeout=5)
            self._worker = None
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - shutting down: say so, lose only the hints
            log.exception("media access times: the last write failed")

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - kept for the next round
                log.exception("media access times: write failed; retrying later")
                gevent.sleep(min(self.interval, 5.0))


def _write(txn: Txn, local: dict[str, int], remote: dict[tuple[str, str], int]) -> None:
    txn.executemany(
        "UPDATE local_media SET last_access_ts = ? WHERE media_id = ?"
        " AND (last_access_ts IS NULL OR last_access_ts < ?)",
        [(ts, media_id, ts) for media_id, ts in sorted(local.items())])
    txn.executemany(
        "UPDATE remote_media_cache SET last_access_ts = ? WHERE media_origin = ?"
        " AND media_id = ? AND (last_access_ts IS NULL OR last_access_ts < ?)",
        [(ts, origin, media_id, ts) for (origin, media_id), ts in sorted(remote.items())])
