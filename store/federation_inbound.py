"""What inbound federation transactions leave behind (server-server-api.md "Transactions",
"Send-to-device messaging"; tables ``federation_inbound_txns`` and
``federation_to_device_seen`` of migration 062), and the few reads the inbound handlers need
about local rooms and devices.

* the answer to each (origin, txn id), so a retried transaction gets it back and nothing is
  applied twice;
* the (origin, sender, message_id) of every delivered ``m.direct_to_device`` EDU, claimed in
  the same write transaction as the inbox rows (``claim_to_device``).
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable

from store.database import Database, Txn

TXN_MAX_AGE_MS = 24 * 3600 * 1000
TO_DEVICE_SEEN_MAX_AGE_MS = 7 * 24 * 3600 * 1000
_CHUNK = 200


def _now() -> int:
    return int(time.time() * 1000)


class FederationInboundStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- transactions ---------------------------------------------------------------------
    def get_response(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        row = self.db.run("inbound_txn_get", lambda t: t.query_one(
            "SELECT response_json FROM federation_inbound_txns WHERE origin = ? AND txn_id = ?",
            (origin, txn_id)))
        return None if row is None else json.loads(row[0])

    def put_response(self, origin: str, txn_id: str, response: dict[str, Any]) -> None:
        """Keep the first answer (a concurrent duplicate never overwrites it)."""
        j = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        self.db.run("inbound_txn_put", lambda t: t.execute(
            "INSERT INTO federation_inbound_txns (origin, txn_id, response_json, received_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (origin, txn_id, j, _now())),
            write=True)

    # -- to-device ------------------------------------------------------------------------
    @staticmethod
    def claim_to_device(txn: Txn, origin: str, sender: str, message_id: str) -> bool:
        """Inside the delivering transaction: True the first time (origin, sender,
        message_id) is seen, False for a repeat."""
        return txn.execute(
            "INSERT INTO federation_to_device_seen (origin, sender, message_id, received_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (origin, sender, message_id, _now())) == 1

    def local_devices(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """``{user: [device ids]}`` of the given (local) users that have devices."""
        users = sorted(set(user_ids))

        def _q(txn: Txn) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for i in range(0, len(users), _CHUNK):
                chunk = users[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for u, d in txn.query("SELECT user_id, device_id FROM devices"
                                      f" WHERE user_id IN ({marks}) ORDER BY device_id", chunk):
                    out.setdefault(u, []).append(d)
            return out

        return self.db.run("inbound_local_devices", _q) if users else {}

    # -- rooms ----------------------------------------------------------------------------
    def room_version(self, room_id: str) -> str | None:
        return self.db.run("inbound_room_version", lambda t: t.query_value(
            "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)))

    def shares_room(self, user_id: str) -> bool:
        """Is the (remote) user joined to a room this server is in?"""
        return self.db.run("inbound_shares_room", lambda t: t.query_one(
            "SELECT 1 FROM current_state WHERE type = 'm.room.member' AND state_key = ?"
            " AND membership = 'join' LIMIT 1", (user_id,))) is not None

    # -- housekeeping ---------------------------------------------------------------------
    def prune(self, now_ms: int | None = None, *, txn_max_age_ms: int = TXN_MAX_AGE_MS,
              seen_max_age_ms: int = TO_DEVICE_SEEN_MAX_AGE_MS) -> None:
        now = _now() if now_ms is None else now_ms

        def _t(txn: Txn) -> None:
            txn.execute("DELETE FROM federation_inbound_txns WHERE received_ts < ?",
                        (now - txn_max_age_ms,))
            txn.execute("DELETE FROM federation_to_device_seen WHERE received_ts < ?",
                        (now - seen_max_age_ms,))

        self.db.run("inbound_prune", _t, write=True)
