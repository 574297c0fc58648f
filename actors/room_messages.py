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
