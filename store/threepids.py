"""Third-party identifiers bound through this homeserver (table ``user_threepids``,
migration ``schema/070_threepids.sql``).

Spec: client-server-api "Adding Account Administrative Contact Information"
(``/account/3pid``, ``/account/3pid/bind``, ``/unbind``, ``/delete``, ``/add``).  Two kinds
of row share the table, so ``GET /account/3pid`` lists both:

- binds an identity server validated (``/account/3pid/bind``): one row per (3PID, identity
  server), so each can be unbound from the server it was bound on;
- 3PIDs this server validated itself by e-mail (``/account/3pid/add``, registration with
  ``m.login.email.identity``): ``id_server`` is ``''`` (:data:`VALIDATED_HERE`).  Only these
  identify an account (login with ``m.id.thirdparty``, password reset), so an address is
  validated here for one account at most (a unique partial index, migration 076).

Every method is one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from store.database import Database, IntegrityError, Txn

#: ``id_server`` of a 3PID this server validated itself (no identity server involved)
VALIDATED_HERE = ""


class ThreepidInUse(Exception):
    """The 3PID is already validated here for another account."""


@dataclass(frozen=True)
class Threepid:
    medium: str
    address: str
    validated_at: int
    added_at: int

    def to_json(self) -> dict[str, Any]:
        return {"medium": self.medium, "address": self.address,
                "validated_at": self.validated_at, "added_at": self.added_at}


class ThreepidStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_bind(self, user_id: str, medium: str, address: str, id_server: str,
                    validated_at: int, now_ms: int) -> None:
        """Remember that ``id_server`` bound the 3PID to ``user_id`` (a repeated bind
        refreshes ``validated_at`` and keeps the first ``added_at``)."""
        self.db.run("threepid_bind", lambda t: t.execute(
            "INSERT INTO user_threepids (user_id, medium, address, id_server, validated_at,"
            " added_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, medium, address,"
            " id_server) DO UPDATE SET validated_at = excluded.validated_at",
            (user_id, medium, address, id_server, validated_at, now_ms)), write=True)

    def list(self, user_id: str) -> list[Threepid]:
        """The user's 3PIDs, one entry per (medium, address) whatever the number of identity
        servers: the earliest ``added_at``, the latest ``validated_at``."""
        rows = self.db.run("threepids_of", lambda t: t.query(
            "SELECT medium, address, MAX(validated_at), MIN(added_at) FROM user_threepids"
            " WHERE user_id = ? GROUP BY medium, address ORDER BY MIN(added_at), medium,"
            " address", (user_id,)))
        return [Threepid(str(m), str(a), int(v), int(ad)) for m, a, v, ad in rows]

    def add_validated(self, user_id: str, medium: str, address: str, validated_at: int,
                      now_ms: int) -> None:
        """Add a 3PID this server validated to the user's account (again: a fresher
        ``validated_at``).  Raises :class:`ThreepidInUse` if another account has it."""
        def _t(txn: Txn) -> None:
            owner = txn.query_value("SELECT user_id FROM user_threepids WHERE medium = ? AND"
                                    " address = ? AND id_server = ?",
                                    (medium, address, VALIDATED_HERE))
            if owner is not None and owner != user_id:
                raise ThreepidInUse(address)
            txn.execute("INSERT INTO user_threepids (user_id, medium, address, id_server,"
                        " validated_at, added_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT"
                        " (user_id, medium, address, id_server) DO UPDATE SET validated_at ="
                        " excluded.validated_at",
                        (user_id, medium, address, VALIDATED_HERE, validated_at, now_ms))

        try:
            self.db.run("threepid_add_validated", _t, write=True)
        except IntegrityError as e:  # another account added it at the same moment
            raise ThreepidInUse(address) from e

    def owner(self, medium: str, address: str) -> str | None:
        """The account this server validated the 3PID for, if any."""
        return self.db.run("threepid_owner", lambda t: t.query_value(
            "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?"
            " AND id_server = ?", (medium, address, VALIDATED_HERE)))

    def id_servers(self, user_id: str, medium: str, address: str) -> list[str]:
        """The identity servers the 3PID was bound on for the user."""
        rows = self.db.run("threepid_id_servers", lambda t: t.query(
            "SELECT id_server FROM user_threepids WHERE user_id = ? AND medium = ?"
            " AND address = ? AND id_server <> ? ORDER BY id_server",
            (user_id, medium, address, VALIDATED_HERE)))
        return [str(r[0]) for r in rows]

    def all_binds(self, user_id: str) -> list[tuple[str, str, str]]:
        """Every identity-server bind (medium, address, id_server) of the user
        (deactivation unbinds them)."""
        rows = self.db.run("threepid_binds", lambda t: t.query(
            "SELECT medium, address, id_server FROM user_threepids WHERE user_id = ?"
            " AND id_server <> ? ORDER BY medium, address, id_server",
            (user_id, VALIDATED_HERE)))
        return [(str(m), str(a), str(s)) for m, a, s in rows]

    def forget(self, user_id: str, medium: str, address: str,
               id_server: str | None = None) -> int:
        """Forget the 3PID's bind on ``id_server`` (every server when None); rows removed."""
        if id_server is None:
            return self.db.run("threepid_forget", lambda t: t.execute(
                "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
                (user_id, medium, address)), write=True)
        return self.db.run("threepid_forget_on", lambda t: t.execute(
            "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?"
            " AND id_server = ?", (user_id, medium, address, id_server)), write=True)

    @staticmethod
    def delete_for_user(txn: Txn, user_id: str) -> None:
        """AccountStore.on_user_deactivated: a deactivated user keeps no 3PIDs."""
        txn.execute("DELETE FROM user_threepids WHERE user_id = ?", (user_id,))
