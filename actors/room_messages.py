"""Messages a RoomActor understands (frozen dataclasses; see supervision.messages)."""
from __future__ import annotations

from typing import Any

from supervision import message


@message
class EventSpec:
    """An event to build: what the client asked for, before prev/auth/depth are chosen."""

    type: str
    sender: str
    content: Any                       # a JSON object; treated as read-only
    state_key: str | None = None


@message
class InitRoom:
    """Persist a new room: its (already built) create event, then ``initial`` in order."""

    create_event: Any                  # the signed create event dict (with event_id)
    initial: tuple[EventSpec, ...]
    is_public: bool = False


@message
class Send:
    """Build, authorise and persist one event; reply :class:`Sent`.

    ``txn`` = (device_id, txn_id) makes it idempotent: the same txn in the same room returns
    the first event id, even after a restart.
    """

    spec: EventSpec
    txn: tuple[str, str] | None = None
    redacts: str | None = None


@message
class Sent:
    event_id: str
    stream_ordering: int
    duplicate: bool = False


@message
class GetRoomSnapshot:
    """Reply the actor's view (version, extremities, depth, state ids): tests and admin."""


# ---------------------------------------------------------------------------- federation
# Rooms across servers (docs/federation.md "Rooms across servers — the contracts").

@message
class PduResult:
    """What a RoomActor did with one received PDU.

    ``outcome``: ``accepted`` | ``soft_failed`` | ``rejected`` (stored, never served) |
    ``duplicate`` (already in the timeline) | ``missing`` (its prev_events are unknown and
    no ``state_before`` was given: not stored) | ``error`` (could not be processed — not
    stored; e.g. not an event of this room, an unstorable string, an internal error).
    """

    event_id: str
    outcome: str
    reason: str | None = None


@message
class ReceivePdus:
    """PDUs of ONE room, already checked for format, signatures and content hash
    (a redacted copy where the hash failed); reply ``tuple[PduResult, ...]`` in order.

    ``events`` in topological order (prevs first).  ``outliers``: fetched auth-chain /
    state events, stored first as outliers.  ``state_before``: ``{event_id: {(type,
    state_key): event_id}}``, the state before an event whose prev_events stay unknown.
    ``backfilled``: older history — stored, never moves extremities or current state.
    """

    origin: str
    events: tuple[Any, ...]
    outliers: tuple[Any, ...] = ()
    state_before: Any = None
    backfilled: bool = False


@message
class BuildEvent:
    """Build and authorise an event against current state; do NOT persist.  Reply: the
    signed event dict (e.g. an invite to a remote user, to be countersigned first)."""

    spec: EventSpec
    redacts: str | None = None


@message
class PersistBuilt:
    """Persist an event of ours built by :class:`BuildEvent` (perhaps countersigned since),
    re-authorised against the state before it and the current state.  Reply :class:`Sent`
    (``duplicate=True`` if it was stored already); 403 ``M_FORBIDDEN`` if no longer allowed.
    """

    event: Any


@message
class MakeMembership:
    """Resident side of make_join / make_leave / make_knock.  Reply
    ``{"room_version": str, "event": template}`` (no hashes, signatures or event id);
    404 unknown room, 403 when the user may not, 400 ``M_UNABLE_TO_AUTHORISE_JOIN`` /
    ``M_UNABLE_TO_GRANT_JOIN`` for restricted joins we cannot vouch for."""

    user_id: str
    membership: str                    # "join" | "leave" | "knock"
    content: Any = None


@message
class JoinFromRemote:
    """Joining side: create the room here from a send_join answer (or, for a room already
    known, persist the join through the PDU path).  Reply :class:`Sent` for the join."""

    room_version: str
    join_event: Any
    state: tuple[Any, ...]
    auth_chain: tuple[Any, ...]
