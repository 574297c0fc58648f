"""E-mail validation sessions (tables ``threepid_validation_sessions`` and
``threepid_validation_tokens``, migration ``schema/076_threepid_validation.sql``).

Spec: client-server-api, the ``/requestToken`` endpoints and ``submitToken`` of the
Identity Service API (whose request and errors the homeserver's ``submit_url`` shares).
A session is keyed for the client by ``sid`` + ``client_secret``; the server finds an open
one again by (purpose, medium, address, client_secret) so a repeated ``send_attempt`` sends
nothing.  Tokens are kept as sha256 hex only and compared in constant time; each is used
once.  A validated session is spent by the one operation that uses it.  Every method is one
transaction; rows past their expiry are purged when a session is started.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from store.database import Database, Txn

#: how long a validated session may wait for the operation that uses it
VALIDATED_LIFETIME_MS = 24 * 3600 * 1000
#: expired rows are kept this long, then purged
PURGE_GRACE_MS = 24 * 3600 * 1000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Requested:
    """The answer to a /requestToken: the session, and the token to e-mail (None when
    ``send_attempt`` was not new, so nothing is sent)."""

    session_id: str
    token: str | None


@dataclass(frozen=True)
class Validated:
    medium: str
    address: str
    validated_at: int


class ValidationFailed(Exception):
    """A token submission that does not validate: ``errcode`` is the Identity Service
    API's (M_INVALID_PARAM, M_TOKEN_INCORRECT, M_SESSION_EXPIRED)."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.message = message


class ThreepidValidationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def request(self, purpose: str, medium: str, address: str, client_secret: str,
                send_attempt: int, next_link: str | None, lifetime_ms: int,
                now_ms: int) -> Requested:
        """Start a session, or continue the open one of this address and secret: a new
        token when ``send_attempt`` is greater than the last one seen, else none."""
        token = secrets.token_urlsafe(24)

        def _t(txn: Txn) -> Requested:
            _purge(txn, now_ms)
            row = txn.query_one(
                "SELECT session_id, last_send_attempt FROM threepid_validation_sessions"
                " WHERE medium = ? AND address = ? AND client_secret = ? AND purpose = ?"
                " AND validated_at IS NULL AND expires_ts > ? ORDER BY created_ts DESC LIMIT 1",
                (medium, address, client_secret, purpose, now_ms))
            expires = now_ms + lifetime_ms
            if row is not None:
                sid, last = str(row[0]), int(row[1])
                if send_attempt <= last:
                    return Requested(sid, None)
                txn.execute("UPDATE threepid_validation_sessions SET last_send_attempt = ?,"
                            " next_link = ?, expires_ts = ? WHERE session_id = ?",
                            (send_attempt, next_link, expires, sid))
            else:
                sid = secrets.token_urlsafe(18)
                txn.execute("INSERT INTO threepid_validation_sessions (session_id, purpose,"
                            " medium, address, client_secret, last_send_attempt, next_link,"
                            " created_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (sid, purpose, medium, address, client_secret, send_attempt,
                             next_link, now_ms, expires))
            txn.execute("INSERT INTO threepid_validation_tokens (token_hash, session_id,"
                        " expires_ts) VALUES (?, ?, ?)", (token_hash(token), sid, expires))
            return Requested(sid, token)

        return self.db.run("threepid_request_token", _t, write=True)

    def validate(self, session_id: str, client_secret: str, token: str, now_ms: int, *,
                 purpose: str | None = None) -> tuple[str, str | None]:
        """Submit a token: the session becomes validated and the token is spent.  Returns
        (purpose, next_link); raises :class:`ValidationFailed` (also when ``purpose`` is
        given and the session is for another)."""
        presented, expected = token_hash(token), purpose

        def _t(txn: Txn) -> tuple[str, str | None] | ValidationFailed:
            row = txn.query_one("SELECT client_secret, purpose, next_link, validated_at"
                                " FROM threepid_validation_sessions WHERE session_id = ?",
                                (session_id,))
            if row is None or not hmac.compare_digest(str(row[0]).encode("utf-8"),
                                                      client_secret.encode("utf-8")) \
                    or expected not in (None, row[1]):
                return ValidationFailed("M_INVALID_PARAM", "Unknown session, or a client"
                                        " secret that does not match it")
            found, next_link, validated_at = str(row[1]), row[2], row[3]
            match = None
            for stored, expires in txn.query("SELECT token_hash, expires_ts FROM"
                                             " threepid_validation_tokens WHERE session_id = ?",
                                             (session_id,)):
                if hmac.compare_digest(str(stored), presented):
                    match = (str(stored), int(expires))
            if match is None:
                return ValidationFailed("M_TOKEN_INCORRECT", "The token is incorrect, or was"
                                        " already used")
            # used once, also when it is too late
            txn.execute("DELETE FROM threepid_validation_tokens WHERE token_hash = ?",
                        (match[0],))
            if match[1] <= now_ms:
                return ValidationFailed("M_SESSION_EXPIRED", "This token has expired: request"
                                        " a new one")
            if validated_at is None:
                txn.execute("UPDATE threepid_validation_sessions SET validated_at = ?,"
                            " expires_ts = ? WHERE session_id = ?",
                            (now_ms, now_ms + VALIDATED_LIFETIME_MS, session_id))
            return found, next_link

        outcome = self.db.run("threepid_validate", _t, write=True)
        if isinstance(outcome, ValidationFailed):
            raise outcome
        return outcome

    def spend(self, purpose: str, session_id: str, client_secret: str,
              now_ms: int) -> Validated | None:
        """The validated, unexpired session for ``purpose`` with this sid and secret,
        deleted in the same transaction (a proof is used once); None if there is none."""
        def _t(txn: Txn) -> Validated | None:
            row = txn.query_one("SELECT client_secret, purpose, medium, address, validated_at,"
                                " expires_ts FROM threepid_validation_sessions"
                                " WHERE session_id = ?", (session_id,))
            if row is None or row[4] is None or int(row[5]) <= now_ms \
                    or str(row[1]) != purpose \
                    or not hmac.compare_digest(str(row[0]).encode("utf-8"),
                                               client_secret.encode("utf-8")):
                return None
            _delete(txn, session_id)
            return Validated(str(row[2]), str(row[3]), int(row[4]))

        return self.db.run("threepid_spend", _t, write=True)


def _delete(txn: Txn, session_id: str) -> None:
    txn.execute("DELETE FROM threepid_validation_tokens WHERE session_id = ?", (session_id,))
    txn.execute("DELETE FROM threepid_validation_sessions WHERE session_id = ?", (session_id,))


def _purge(txn: Txn, now_ms: int) -> None:
    """Forget what expired more than a grace period ago (until then a late submission is
    told its token expired rather than that it is unknown)."""
    cutoff = now_ms - PURGE_GRACE_MS
    txn.execute("DELETE FROM threepid_validation_tokens WHERE expires_ts <= ?", (cutoff,))
    for (sid,) in txn.query("SELECT session_id FROM threepid_validation_sessions"
                            " WHERE expires_ts <= ?", (cutoff,)):
        _delete(txn, str(sid))
