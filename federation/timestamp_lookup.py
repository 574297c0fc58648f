"""The client's ``/timestamp_to_event`` asks other servers when this one may not know the
closest event (client-server-api "Room history" ``timestamp_to_event``, server-server-api
"Backfilling and retrieving missing events" ``GET /timestamp_to_event``).

``TimestampLookup.closest(room_id, ts, direction)`` returns ``(event_id, origin_server_ts)``
or None.  The local answer is the store's closest timeline event.  Other servers are asked
when there is none, or when it may not be the closest: going forwards ("f"), the local event
has prev events this server does not hold (history before it, and so maybe closer to ``ts``,
is missing — a late joiner's first event, the edge of what was backfilled).  Up to
``MAX_SERVERS`` servers with joined members are asked, in order, until one answers; an
answer on the right side of ``ts`` and closer than the local one wins, and the event is
backfilled from that server (``Backfiller.fetch_at``: the event and a few before it, checked
like any backfilled PDU) so that the client can read it and its ``/context`` here.  An answer
whose event cannot be fetched and checked is not used.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from federation.backfill import backfiller
from federation.room_queries import room_reads
from protocol.events import prev_event_ids
from protocol.ids import is_valid_event_id

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
MAX_SERVERS = 5
TIMEOUT = 10.0   # s per server asked


def _closer(direction: str, ts: int, candidate: int, local: int | None) -> bool:
    if direction == "f":
        return candidate >= ts and (local is None or candidate < local)
    return candidate <= ts and (local is None or candidate > local)


class TimestampLookup:
    def __init__(self, fed: Any, parts: dict[str, Any]) -> None:
        self.fed = fed
        self.parts = parts

    def _maybe_incomplete(self, room_id: str, se: Any, direction: str) -> bool:
        if se is None:
            return True
        if direction != "f":
            return False
        prevs = prev_event_ids(se.event)
        reads = room_reads(self.fed, self.parts)
        return bool(prevs) and len(reads.known_ids(prevs, outliers=False)) < len(set(prevs))

    def closest(self, room_id: str, ts: int, direction: str) -> tuple[str, int] | None:
        reads = room_reads(self.fed, self.parts)
        local = reads.closest_event(room_id, ts, direction)
        found = (local.event_id, int(local.event.get("origin_server_ts", 0))) if local else None
        if self.fed.client is None or not self._maybe_incomplete(room_id, local, direction):
            return found
        servers = sorted(reads.servers_in_room(room_id) - {self.fed.server_name})
        for server in servers[:MAX_SERVERS]:
            got = self._ask(server, room_id, ts, direction)
            if got is None:
                continue
            event_id, remote_ts = got
            if found is not None and event_id == found[0]:
                return found
            if not _closer(direction, ts, remote_ts, found[1] if found else None):
                return found      # the other server knows nothing closer
            bf = backfiller(self.fed, self.parts)
            if bf is not None and bf.fetch_at(room_id, event_id, server):
                return event_id, remote_ts
            log.info("timestamp_to_event: %s from %s could not be fetched", event_id, server)
        return found

    def _ask(self, server: str, room_id: str, ts: int, direction: str
             ) -> tuple[str, int] | None:
        try:
            resp = self.fed.client.get_json(
                server, f"{V1}/timestamp_to_event/{quote(room_id, safe='')}",
                query={"ts": str(ts), "dir": direction}, timeout=TIMEOUT)
        except Exception as e:  # noqa: BLE001 - the next server
            log.info("timestamp_to_event of %s from %s failed: %s", room_id, server, e)
            return None
        if not isinstance(resp, dict):
            return None
        eid, rts = resp.get("event_id"), resp.get("origin_server_ts")
        if not isinstance(eid, str) or not is_valid_event_id(eid) \
                or not isinstance(rts, int) or isinstance(rts, bool):
            return None
        return eid, rts


def lookup(fed: Any, parts: dict[str, Any]) -> TimestampLookup:
    """The server's TimestampLookup (built on first use)."""
    tl = fed.extras.get("timestamp_lookup")
    if tl is None:
        tl = fed.extras["timestamp_lookup"] = TimestampLookup(fed, parts)
    return tl
