"""Messages a UserActor understands (frozen dataclasses; see supervision.messages).

Every write to a local user's own streams is one of these, sent to that user's actor:
account data (global, per room, tags), receipts and read markers, presence, filters, and the
to-device messages the user sends."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from supervision import message


@message
class PutAccountData:
    room_id: str | None                # None = global
    type: str
    content: Any                       # a JSON object; treated as read-only


@message
class PutTag:
    room_id: str
    tag: str
    content: Any


@message
class DeleteTag:
    room_id: str
    tag: str


@message
class PutReceipt:
    room_id: str
    receipt_type: str                  # m.read | m.read.private
    event_id: str
    event_stream_ordering: int
    thread_id: str | None = None


@message
class ReadMarkers:
    """POST /read_markers: each part is (event_id, stream_ordering) or None."""

    room_id: str
    fully_read: tuple[str, int] | None
    read: tuple[str, int] | None
    read_private: tuple[str, int] | None


@message
class SetPresence:
    state: str
    status_msg: str | None = None
    explicit_status: bool = False      # True: status_msg given (None clears it)


@message
class SyncStarted:
    """A /sync began with ``set_presence``; the user counts as connected until it ends."""

    set_presence: str
    timeout_ms: int


@message
class Active:
    """The user did something pro-active (sent an event): bumps last active."""


@message
class PresenceTick:
    """A presence timer fired: re-check idle (→ unavailable) and gone (→ offline)."""


@message
class CreateFilter:
    definition: Any


@message
class SendToDevice:
    sender_device: str
    txn_id: str
    type: str
    targets: Any                       # tuple of (user_id, device_id, content)


@message
class AckToDevice:
    device_id: str
    upto: int


class SyncWaker(Protocol):
    """What the actor calls after a commit to wake the /syncs concerned (web/notifier.py)."""

    def wake_users(self, user_ids: Iterable[str], stream: Any = None, pos: int = 0) -> None: ...

    def wake_room(self, room_id: str, stream: Any = None, pos: int = 0) -> None: ...

    def audience(self, user_id: str) -> set[str]: ...


Clock = Callable[[], float]
