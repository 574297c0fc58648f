"""What the ``RemoteServerActor`` and the ``FederationSender`` exchange about outbound
transactions (server-server-api "Transactions"): the limits of one transaction, the actor's
messages, a transaction in flight (:class:`Flight`) and its :class:`Outcome`, and the wire form
of one of our events.  The actor's behaviour is in ``federation/remote_server.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.events import pdu_for_wire
from protocol.redaction import redact
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from store.federation_queue import PduRow
from supervision import message

MAX_PDUS = 50
MAX_EDUS = 100
#: catch-up pages (of MAX_PDUS events) read in one actor turn at most; past that the replay
#: goes on in the next turn (so a destination owed nothing in a busy stream never holds the
#: actor for long)
MAX_PAGES_PER_TURN = 10
#: kick, ban, leave (a rescinded invite) and knock events reach the target user's server even
#: when none of its users is joined
TARGET_MEMBERSHIPS = frozenset({"leave", "ban", "knock"})


# -- messages --------------------------------------------------------------------------------

@message
class Wake:
    """Something may be waiting in the store; ``reset`` first clears the back-off (an inbound
    request came from the destination, or the operator asked)."""

    reset: bool = False


@message
class Ephemeral:
    """An ephemeral EDU; ``key`` coalesces (a newer one with the same type and key replaces
    it); ``at`` is when it was queued (seconds, the sender's clock)."""

    edu_type: str
    content: Any
    key: str | None
    at: float


@message
class PdusAvailable:
    """The event of ours at ``stream_ordering`` in ``room_id`` is for this destination."""

    room_id: str
    stream_ordering: int


@message
class TxnResult:
    """The flight ``txn_id`` has its outcome (on the flight in the sender's registry)."""

    txn_id: str


@message
class PutTransaction:
    """Only a tracer record: the HTTP request of one transaction."""

    txn_id: str
    pdus: int
    edus: int


# -- a transaction and its outcome ------------------------------------------------------------

OK, TRANSIENT, REFUSED = "ok", "transient", "refused"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str                      # OK | TRANSIENT | REFUSED
    reason: str = ""
    retry_after_ms: int | None = None


@dataclass(eq=False)
class Flight:
    """One transaction: its body and what it carries, while it is out or held for a resend."""

    destination: str
    txn_id: str
    trace_id: str
    body: dict[str, Any]
    outbox_ids: list[int]
    pdu_upto: int | None
    ephemeral_since: float | None   # when its oldest ephemeral EDU was queued
    greenlet: Any = None
    result: Outcome | None = None
    attempts: int = 0
    started: float = 0.0
    #: the live-window notes it carries (removed from the window once acknowledged)
    window_taken: tuple[int, ...] = ()


def wire_pdu(row: PduRow) -> dict[str, Any] | None:
    """``row``'s event as a PDU on the wire (None for a room version we do not know)."""
    rv = KNOWN_ROOM_VERSIONS.get(row.room_version)
    if rv is None:
        return None
    ev = redact(row.event, rv) if row.redacted else row.event
    pdu = pdu_for_wire(ev, rv)
    pdu.pop("unsigned", None)  # ours (replaces_state, transaction ids): not for other servers
    return pdu
