"""History visibility (client-server-api "History visibility", modules/history_visibility.md)
and what room state a user may read, enforced on every read path.

Rules, applied with the state of the room *at the event* (the state before it; for a
``m.room.history_visibility`` event and for the user's own membership events the state before
*or* after it, whichever allows):

1. ``world_readable``: anyone may see it;
2. the user's membership was ``join``: allowed;
3. ``shared``, and the user joined the room at some point after the event: allowed;
4. ``invited``, and the user's membership was ``invite``: allowed;
5. otherwise denied.

Guests follow the same rules.  Users who never joined (guests or not) read a room only while
it is world-readable (``require_readable`` for timelines, ``visible_state_ids`` for state),
and then see what rule 1 allows: history from before it turned world-readable stays hidden.

Erased senders (Synapse's rule for a user deactivated with ``erase``): an event whose sender
is erased reaches a user who was not joined to the room at the event (a later joiner under
``shared``, a peeker or guest of a world-readable room, an invitee under ``invited``) pruned
as a redaction prunes it (``protocol.redaction``), without ``unsigned``; those who were
joined at the event still see it whole.  :meth:`Visibility.filter` returns the pruned copies
in place of the events, so every read path that serves what it returns serves them pruned.
The erased users are a set in memory (``store.admin_users.erased_users``): a sender outside it
costs one set look-up, and nothing more is read.

A page of events is checked with one :class:`Visibility` per request: each state group of the
page is resolved once (only the two keys that matter), membership contents are fetched in one
batch, and the results are cached for the rest of the request.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Sequence

from atrium.errors import MatrixError
from protocol.redaction import redact
from store.admin_users import erased_users
from store.events import EventStore, StoredEvent
from store.room_reads import RoomReads
from web.pagination import parse_token
from web.room_service import RoomService

StateKey = tuple[str, str]
HV = ("m.room.history_visibility", "")
_VALUES = ("world_readable", "shared", "invited", "joined")


class Visibility:
    """Which events one user may see; caches per request (any number of rooms)."""

    def __init__(self, events: EventStore, user_id: str) -> None:
        self.events = events
        self.user_id = user_id
        self.reads = RoomReads(events.db)
        self._keys = [HV, ("m.room.member", user_id)]
        self._groups: dict[int, dict[StateKey, str]] = {}
        #: the user's last join to each room: (stream position, DAG depth)
        self._last_join: dict[str, tuple[int, int] | None] = {}
        self._content: dict[str, dict[str, Any]] = {}
        #: senders whose events are served pruned to users not joined at them
        self.erased = erased_users(events.db)
        #: the ids of the events this request served pruned (an erased sender)
        self.pruned: set[str] = set()

    # ------------------------------------------------------------------ public
    def filter(self, ses: Iterable[StoredEvent]) -> list[StoredEvent]:
        """The events (in the given order) the user may see, as they may see them: an
        erased sender's event pruned unless the user was joined at it."""
        ses = list(ses)
        self._prepare(ses)
        erased = self.erased
        out = []
        for se in ses:
            if not self._allowed(se):
                continue
            if erased and se.event.get("sender") in erased and se.redacted_by is None \
                    and not self._joined_at(se):
                se = self._prune(se)
            out.append(se)
        return out

    def can_see(self, se: StoredEvent) -> bool:
        return bool(self.filter([se]))

    def served(self, se: StoredEvent) -> StoredEvent | None:
        """``se`` as the user may see it (pruned, for an erased sender), or None."""
        got = self.filter([se])
        return got[0] if got else None

    def readable_at(self, room_id: str, group: int, stream: int) -> bool:
        """Whether the user may see the room as it stood at stream position ``stream``,
        in state group ``group`` (the state after its last event there): the rules above
        applied to that point of the timeline (``/members`` and ``/state`` with ``at``)."""
        if group not in self._groups:
            self._groups.update(self.reads.state_keys_at([group], self._keys))
        state = self._groups.get(group, {})
        self._load(room_id, state.values())
        return self._rule_at(room_id, stream, None, state)

    # ------------------------------------------------------------------ internals
    def _prepare(self, ses: Sequence[StoredEvent]) -> None:
        missing = {se.state_group for se in ses
                   if se.state_group is not None and se.state_group not in self._groups}
        if missing:
            self._groups.update(self.reads.state_keys_at(missing, self._keys))
        ids: set[str] = set()
        for se in ses:
            if se.state_group is not None:
                ids.update(self._groups.get(se.state_group, {}).values())
            replaced = (se.event.get("unsigned") or {}).get("replaces_state")
            if isinstance(replaced, str) and self._state_key(se) in self._keys:
                ids.add(replaced)
        for room_id in {se.room_id for se in ses}:
            self._load(room_id, ())
        self._load_contents(ids)

    def _load(self, room_id: str, ids: Iterable[str]) -> None:
        """The user's last join to ``room_id`` and the contents of ``ids``, unless known."""
        if room_id not in self._last_join:
            joins = self.reads.join_positions(room_id, self.user_id)
            self._last_join[room_id] = joins[-1] if joins else None
        self._load_contents(ids)

    def _load_contents(self, ids: Iterable[str]) -> None:
        todo = [e for e in set(ids) if e not in self._content]
        if todo:
            got = self.events.get_events(todo)
            for eid in todo:
                se = got.get(eid)
                self._content[eid] = se.event.get("content", {}) if se is not None else {}

    @staticmethod
    def _state_key(se: StoredEvent) -> StateKey | None:
        sk = se.event.get("state_key")
        return (se.event.get("type", ""), sk) if isinstance(sk, str) else None

    def _allowed(self, se: StoredEvent) -> bool:
        after = self._groups.get(se.state_group, {}) if se.state_group is not None else {}
        key = self._state_key(se)
        if key not in self._keys:
            return self._rule(se, after)
        before = dict(after)
        replaced = (se.event.get("unsigned") or {}).get("replaces_state")
        if isinstance(replaced, str):
            before[key] = replaced
        else:
            before.pop(key, None)
        # history_visibility changes and the user's own membership: before *or* after
        return self._rule(se, before) or self._rule(se, after)

    def _joined_at(self, se: StoredEvent) -> bool:
        """Whether the user's membership at the event was ``join`` (for their own
        membership events: before or after it)."""
        key = self._keys[1]
        after = self._groups.get(se.state_group, {}) if se.state_group is not None else {}
        ids = [after.get(key)]
        if self._state_key(se) == key:
            ids.append((se.event.get("unsigned") or {}).get("replaces_state"))
        return any(isinstance(mid, str) and self._content.get(mid, {}).get("membership")
                   == "join" for mid in ids)

    def _prune(self, se: StoredEvent) -> StoredEvent:
        """A copy of ``se`` pruned as a redaction prunes it (no ``unsigned``: neither
        ``prev_content`` nor a transaction id goes with it)."""
        rv = self.events.room_version(se.room_id)
        if rv is None:   # not a room served here; keep nothing but the skeleton
            ev = {k: se.event[k] for k in ("type", "sender", "origin_server_ts", "state_key")
                  if k in se.event}
            ev["content"] = {}
        else:
            ev = redact(se.event, rv)
            ev.pop("unsigned", None)
        ev["event_id"] = se.event_id
        ev.setdefault("room_id", se.room_id)
        self.pruned.add(se.event_id)
        return replace(se, event=ev, txn_id=None, txn_device=None)

    def _rule(self, se: StoredEvent, state: dict[StateKey, str]) -> bool:
        return self._rule_at(se.room_id, se.stream_ordering, int(se.event.get("depth", 0)),
                             state)

    def _rule_at(self, room_id: str, stream: int, depth: int | None,
                 state: dict[StateKey, str]) -> bool:
        """The five rules for an event (or a point of the timeline: ``depth`` None) at
        ``stream`` with ``state`` around it."""
        hv_id = state.get(HV)
        vis = self._content.get(hv_id, {}).get("history_visibility") if hv_id else None
        if vis not in _VALUES:
            vis = "shared"
        if vis == "world_readable":
            return True
        mid = state.get(self._keys[1])
        membership = self._content.get(mid, {}).get("membership") if mid else None
        if membership == "join":
            return True
        if vis == "shared":
            last_join = self._last_join.get(room_id)
            if last_join is None:
                return False
            # "joined at some point after the event": by stream position for what arrived
            # in order, by DAG depth for history backfilled from other servers after the
            # join (it gets later stream positions but comes before the join in the DAG)
            return last_join[0] >= stream or (depth is not None and depth < last_join[1])
        return vis == "invited" and membership == "invite"


def history_visibility(svc: RoomService, state: dict[StateKey, str]) -> str:
    eid = state.get(HV)
    se = svc.events.get_event(eid) if eid else None
    v = se.event.get("content", {}).get("history_visibility") if se is not None else None
    return v if v in _VALUES else "shared"


def state_at(svc: RoomService, se: StoredEvent) -> dict[StateKey, str]:
    """The room state after ``se``."""
    if se.state_group is None:
        return {}
    return svc.state_groups.get_state(se.state_group)


def can_see_event(svc: RoomService, user_id: str, se: StoredEvent) -> bool:
    """Whether ``se`` may be served to the user (never a rejected, soft-failed or outlier
    event, whoever asks)."""
    return served_event(svc, user_id, se) is not None


def served_event(svc: RoomService, user_id: str, se: StoredEvent) -> StoredEvent | None:
    """``se`` as it may be served to the user (pruned when its sender is erased and the user
    was not joined at it), or None when they may not see it (nor anyone: a rejected,
    soft-failed or outlier event)."""
    if se.rejection is not None or se.soft_failed or se.outlier:
        return None
    return Visibility(svc.events, user_id).served(se)


def require_readable(svc: RoomService, user_id: str, room_id: str, *,
                     status: int = 403) -> str | None:
    """Gate for timeline reads: the user is or was in the room (any membership), or the room
    is world-readable now (peeking).  Returns the user's current membership."""
    membership, _ = svc.membership(room_id, user_id)
    if membership is not None:
        return membership
    if history_visibility(svc, svc.events.get_current_state_ids(room_id)) == "world_readable":
        return None
    if status == 404:
        raise MatrixError(404, "M_NOT_FOUND", "Event not found")
    raise MatrixError(403, "M_FORBIDDEN", "You are not allowed to view this room")


def stream_of_token(raw: str) -> int:
    """The stream position a pagination/sync token stands for (``at`` of /members)."""
    tok = parse_token(raw, "at")
    assert tok is not None
    return tok.stream


def state_ids_at_stream(svc: RoomService, room_id: str, stream: int) -> dict[StateKey, str]:
    group = RoomReads(svc.db).state_group_at(room_id, stream)
    return svc.state_groups.get_state(group) if group is not None else {}


def visible_state_ids(svc: RoomService, user_id: str, room_id: str,
                      at: str | None = None) -> dict[StateKey, str]:
    """The room state the user may read (client-server-api "Room state", /members ``at``):
    current state while joined, and for anyone (guests too, never joined or not) while the
    room is world-readable; for a user who left or was banned, the state at their leave.
    With ``at``, the state at that point (no later than the leave), if the history
    visibility rules let the user see the room at that point — else 403, as Synapse."""
    at_stream = stream_of_token(at) if at is not None else None
    membership, member_eid = svc.membership(room_id, user_id)
    current = svc.events.get_current_state_ids(room_id)
    if membership != "join" and history_visibility(svc, current) != "world_readable":
        left = svc.events.get_event(member_eid) \
            if membership in ("leave", "ban") and member_eid is not None else None
        if left is None:
            raise MatrixError(403, "M_FORBIDDEN", "You are not allowed to view this room's"
                              " state")
        if at_stream is None or at_stream >= left.stream_ordering:
            return state_at(svc, left)
    if at_stream is None:
        return current
    group = RoomReads(svc.db).state_group_at(room_id, at_stream)
    if group is None:
        return {}
    if not Visibility(svc.events, user_id).readable_at(room_id, group, at_stream):
        raise MatrixError(403, "M_FORBIDDEN", "You are not allowed to view the room's state"
                          " at that point")
    return svc.state_groups.get_state(group)
