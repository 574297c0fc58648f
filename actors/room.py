"""RoomActor: one per room, the only writer of the room's DAG, state and forward extremities
(ARCHITECTURE invariant 1).

It loads the room from the store on its first message (version, create event, current
state, extremities, depth).  For each write it builds the event with the protocol core
(prev_events = the forward extremities, auth_events chosen from current state), authorises
it against current state, and persists event + state group + current-state delta +
extremities + stream position in one transaction before replying.  Several writes waiting
in the mailbox are committed in one transaction (group commit) and each gets its own reply.
Memory is only updated after COMMIT, so a failed write leaves the actor consistent; an
unexpected error crashes the actor and its supervisor restarts it from the store.

After commit, ``on_persisted`` hooks run (wake /sync waiters, hand events to federation)
for the events that reach clients' timelines (never outliers, rejected, soft-failed or
backfilled ones).

Rooms across servers (docs/federation.md "Rooms across servers — the contracts"): remote
PDUs arrive as ``ReceivePdus`` (checks and persist plan in ``actors/room_pdus.py``), so the
DAG may fork: the actor then keeps several forward extremities, current state is the state
resolution over their states, and its own next event names up to ten of them (the newest
by depth) as prev_events.  ``BuildEvent`` / ``PersistBuilt`` split a send around a remote
countersignature (invites), ``MakeMembership`` answers make_join / make_leave / make_knock,
and ``JoinFromRemote`` creates the room here from a send_join answer
(``actors/room_join.py``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from atrium.errors import MatrixError
from protocol import auth as protocol_auth
from protocol.canonical import CanonicalJsonError, encode_canonical_json
from protocol.events import auth_types_for_event, build_event, oversized_fields, redacts_id
from protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from store.database import Database, Txn
from store.events import EventStore, PersistItem, RoomDelta
from store.state import StateGroupStore, StateKey
from supervision import SupervisedActor

from actors.room_messages import (
    BuildEvent,
    EventSpec,
    GetRoomSnapshot,
    InitRoom,
    JoinFromRemote,
    MakeMembership,
    PduResult,
    PersistBuilt,
    ReceivePdus,
    Send,
    Sent,
)

log = logging.getLogger(__name__)

MAX_PDU_SIZE = 65536
MAX_PREV_EVENTS = 10

RECENT_TXNS = 64   # txn ids per room answered from memory (the store knows them all)

PersistedHook = Callable[[str, Sequence[tuple[dict[str, Any], int]]], None]
TxnKey = tuple[str, str, str]   # (user_id, device_id, txn_id)


class _KnownTxns(Exception):
    """Raised inside the persist transaction: some txn ids of the batch were used before."""

    def __init__(self, found: dict[TxnKey, tuple[str, int]]) -> None:
        super().__init__(f"{len(found)} txn ids already used")
        self.found = found


@dataclass
class RoomDeps:
    """What every RoomActor is built with (wired once at start-up)."""

    db: Database
    events: EventStore
    state_groups: StateGroupStore
    server_name: str
    signing_key: Any
    on_persisted: list[PersistedHook]
    clock: Callable[[], float] = time.time


class _StateView(Mapping[StateKey, dict[str, Any]]):
    """(type, state_key) → event dict over the actor's state maps, for protocol.auth."""

    def __init__(self, ids: Mapping[StateKey, str], events: Mapping[str, dict[str, Any]],
                 create: dict[str, Any]) -> None:
        self._ids, self._events, self._create = ids, events, create

    def __getitem__(self, key: StateKey) -> dict[str, Any]:
        if key == ("m.room.create", ""):
            return self._create
        return self._events[self._ids[key]]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class _Room:
    """The actor's in-memory view of its room; copied before a tentative batch."""

    __slots__ = ("rv", "create", "state", "state_events", "extremities", "depth", "group")

    def __init__(self, rv: RoomVersion, create: dict[str, Any], state: dict[StateKey, str],
                 state_events: dict[str, dict[str, Any]], extremities: list[str], depth: int,
                 group: int | None) -> None:
        self.rv, self.create, self.state = rv, create, state
        self.state_events, self.extremities, self.depth, self.group = (
            state_events, extremities, depth, group)

    def copy(self) -> "_Room":
        return _Room(self.rv, self.create, dict(self.state), dict(self.state_events),
                     list(self.extremities), self.depth, self.group)


@dataclass
class _Pending:
    item: PersistItem
    state_group_write: tuple[int, int | None, dict[StateKey, str | None],
                             dict[StateKey, str]] | None


class RoomActor(SupervisedActor):
    domain_errors = (MatrixError,)
    batch_types = (Send,)  # group commit: queued sends share one transaction

    def __init__(self, room_id: str, deps: RoomDeps) -> None:
        super().__init__()
        self.room_id = room_id
        self.deps = deps
        self.room: _Room | None = None
        self._recent_txns: dict[TxnKey, tuple[str, int]] = {}  # insertion-ordered, bounded

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        info = self.deps.events.load_room(self.room_id)
        if info is None:
            self.room = None
            return
        rv = KNOWN_ROOM_VERSIONS[info["room_version"]]
        state: dict[StateKey, str] = info["state"]
        stored = self.deps.events.get_events(state.values())
        state_events = {eid: se.event for eid, se in stored.items()}
        create_id = state.get(("m.room.create", ""))
        if create_id is None or create_id not in state_events:
            raise RuntimeError(f"{self.room_id}: no create event in current state")
        self.room = _Room(rv, state_events[create_id], dict(state), state_events,
                          list(info["extremities"]), info["max_depth"],
                          info["current_state_group"])

    def on_stop(self) -> None:
        """Passivated (or stopped): what this room held is garbage now; give the freed
        memory back to the OS once a burst of stops has settled."""
        self.room = None
        self._recent_txns = {}
        release_memory_soon()

    # ------------------------------------------------------------------ messages
    def handle(self, message: Any) -> Any:
        if isinstance(message, Send):
            result = self._write([message])[0]
            if isinstance(result, Exception):
                raise result
            return result
        if isinstance(message, InitRoom):
            return self._init_room(message)
        if isinstance(message, ReceivePdus):
            return self._receive_pdus(message)
        if isinstance(message, BuildEvent):
            room = self._require_room()
            return self._build(room.copy(), message.spec, message.redacts)
        if isinstance(message, PersistBuilt):
            return self._persist_built(message)
        if isinstance(message, MakeMembership):
            from actors.room_join import make_membership

            return make_membership(self, message)
        if isinstance(message, JoinFromRemote):
            from actors.room_join import join_from_remote

            return join_from_remote(self, message)
        if isinstance(message, GetRoomSnapshot):
            r = self._require_room()
            return {"room_version": r.rv.identifier, "extremities": list(r.extremities),
                    "depth": r.depth, "state": dict(r.state), "state_group": r.group}
        raise TypeError(f"RoomActor: unknown message {type(message).__name__}")

    def handle_batch(self, messages: Sequence[Send]) -> list[Any]:
        """Group commit: several Sends in one transaction; one result (or error) each."""
        return self._write(list(messages))

    # ------------------------------------------------------------------ federation
    def _receive_pdus(self, msg: ReceivePdus) -> tuple[PduResult, ...]:
        """Remote PDUs of this room (see actors/room_pdus.py); one result per event."""
        from actors.room_pdus import PduBatch

        events = tuple(msg.events)
        if self.room is None:
            return tuple(PduResult(ev.get("event_id", "") if isinstance(ev, Mapping) else "",
                                   "error", "room not known here") for ev in events)
        batch = PduBatch(self, self.room.copy(), backfilled=msg.backfilled)
        batch.prefetch(events + tuple(msg.outliers))
        batch.stage_outliers(msg.outliers)
        given = msg.state_before if isinstance(msg.state_before, Mapping) else {}
        results = []
        for ev in events:
            eid = ev.get("event_id") if isinstance(ev, Mapping) else None
            results.append(batch.process(ev, given.get(eid) if isinstance(eid, str) else None))
        self._commit_batch(batch)
        return tuple(results)

    def _persist_built(self, msg: PersistBuilt) -> Sent:
        """Persist an event of ours built earlier (BuildEvent), re-checked now."""
        from actors.room_pdus import PduBatch, Refused, refusal_error

        room = self._require_room()
        ev = msg.event
        if not isinstance(ev, Mapping) or not isinstance(ev.get("event_id"), str):
            raise MatrixError(400, "M_BAD_JSON", "not an event")
        sender = ev.get("sender")
        if not isinstance(sender, str) or not sender.endswith(":" + self.deps.server_name):
            raise MatrixError(400, "M_INVALID_PARAM", "not an event of this server")
        batch = PduBatch(self, room.copy(), strict=True)
        batch.prefetch([ev])
        try:
            result = batch.process(ev)
        except Refused as r:
            raise refusal_error(r.result) from None
        if result.outcome == "duplicate":
            stored = self.deps.events.get_event(ev["event_id"])
            return Sent(ev["event_id"], stored.stream_ordering if stored else 0, True)
        self._commit_batch(batch)
        return Sent(ev["event_id"], batch.pendings[-1].item.stream_ordering)

    def _commit_batch(self, batch: Any, *, new_room: tuple[str, str | None] | None = None
                      ) -> list[int]:
        if not batch.pendings:
            return []
        return self._commit(batch.room, batch.pendings, new_room=new_room,
                            groups=batch.group_writes, hooked=batch.hooked, resolved=True)

    def _require_room(self) -> _Room:
        if self.room is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        return self.room

    # ------------------------------------------------------------------ creating
    def _init_room(self, msg: InitRoom) -> list[str]:
        if self.room is not None:
            raise MatrixError(400, "M_ROOM_IN_USE", "Room already exists")
        create = dict(msg.create_event)
        rv = KNOWN_ROOM_VERSIONS[create["content"].get("room_version", "1")]
        if create.get("room_id") != self.room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "create event is for another room")
        protocol_auth.check_state_independent(rv, create)
        tentative = _Room(rv, create, {}, {}, [], 0, None)
        pendings = [self._stage(tentative, create, None, check=False)]
        for spec in msg.initial:
            ev = self._build(tentative, spec, None)
            pendings.append(self._stage(tentative, ev, None))
        creator = create["sender"]
        self._commit(tentative, pendings, new_room=(rv.identifier, creator),
                     is_public=msg.is_public)
        return [p.item.event["event_id"] for p in pendings]

    # ------------------------------------------------------------------ writing
    def _write(self, sends: list[Send]) -> list[Any]:
        """Build, authorise and commit ``sends`` together; one result (or error) each.

        Idempotency: a txn id seen by this actor is answered from memory; the others are
        checked against the store inside the persist transaction (one query for the batch,
        no extra round trip).  If some were already used (a retry after a restart) the
        transaction rolls back and the batch is rebuilt without them."""
        room = self._require_room()
        known: dict[TxnKey, tuple[str, int]] = {}
        while True:
            tentative = room.copy()
            results: list[Any] = [None] * len(sends)
            pendings: list[_Pending] = []
            owners: list[int] = []
            first_of: dict[TxnKey, int] = {}
            annotations: set[tuple[str, ...]] = set()   # this batch's, not yet stored
            for i, msg in enumerate(sends):
                try:
                    key = (msg.spec.sender, msg.txn[0], msg.txn[1]) if msg.txn else None
                    if key is not None:
                        if key in first_of:       # the same txn twice in one batch
                            results[i] = ("dup", first_of[key])
                            continue
                        earlier = self._recent_txns.get(key) or known.get(key)
                        if earlier is not None:
                            results[i] = Sent(earlier[0], earlier[1], True)
                            continue
                        first_of[key] = i
                    same = self._unchanged_state(tentative, msg.spec)
                    if same is not None:
                        results[i] = same
                        continue
                    self._check_annotation(msg.spec, annotations)
                    ev = self._build(tentative, msg.spec, msg.redacts)
                    pendings.append(self._stage(tentative, ev, key))
                    owners.append(i)
                except MatrixError as e:
                    results[i] = e
            if pendings:
                try:
                    orderings = self._commit(tentative, pendings, check_txns=True)
                except _KnownTxns as k:
                    known.update(k.found)
                    continue
                for idx, p, so in zip(owners, pendings, orderings):
                    results[idx] = Sent(p.item.event["event_id"], so)
            break
        for i, r in enumerate(results):
            if isinstance(r, tuple) and r and r[0] == "dup":
                first = results[r[1]]
                results[i] = Sent(first.event_id, first.stream_ordering, True) \
                    if isinstance(first, Sent) else first
        return results

    def _check_annotation(self, spec: EventSpec, batch: set[tuple[str, ...]]) -> None:
        """One annotation per (sender, type, key, target): a second one is 400
        M_DUPLICATE_ANNOTATION (as Synapse; client-server-api "Event annotations and
        reactions" asks servers to refuse duplicates)."""
        content = spec.content if isinstance(spec.content, Mapping) else {}
        rel = content.get("m.relates_to")
        if not isinstance(rel, Mapping) or rel.get("rel_type") != "m.annotation":
            return
        target, key = rel.get("event_id"), rel.get("key")
        if not isinstance(target, str) or not isinstance(key, str):
            return
        ident = (target, spec.sender, spec.type, key)
        if ident in batch or self.deps.events.has_annotation(self.room_id, target, spec.sender,
                                                             spec.type, key):
            raise MatrixError(400, "M_DUPLICATE_ANNOTATION", "Can't send the same reaction"
                              " twice")
        batch.add(ident)

    def _unchanged_state(self, room: _Room, spec: EventSpec) -> Sent | None:
        """Setting state to what it already is (same type, key, sender and content): the
        existing event, and no new one (as Synapse; clients retry state PUTs freely)."""
        if spec.state_key is None or not isinstance(spec.content, Mapping):
            return None
        eid = room.state.get((spec.type, spec.state_key))
        current = room.state_events.get(eid) if eid is not None else None
        if current is None or current.get("sender") != spec.sender:
            return None
        try:
            if encode_canonical_json(current.get("content", {})) != \
                    encode_canonical_json(spec.content):
                return None
        except CanonicalJsonError:
            return None
        stored = self.deps.events.get_event(eid)
        if stored is None:
            return None
        return Sent(eid, stored.stream_ordering, True)

    def _remember_txns(self, pendings: list[_Pending]) -> None:
        recent = self._recent_txns
        for p in pendings:
            if p.item.txn_key is not None:
                recent[p.item.txn_key] = (p.item.event["event_id"], p.item.stream_ordering)
        while len(recent) > RECENT_TXNS:
            del recent[next(iter(recent))]

    def _build(self, room: _Room, spec: EventSpec, redacts: str | None) -> dict[str, Any]:
        rv = room.rv
        content = spec.content
        if not isinstance(content, Mapping):
            raise MatrixError(400, "M_BAD_JSON", "Event content must be a JSON object")
        _check_indexed_strings(spec, redacts)
        content = self._prepare_content(room, spec)
        types = auth_types_for_event(rv, spec.type, spec.sender, spec.state_key, content)
        auth_ids = [room.state[k] for k in sorted(types) if k in room.state]
        try:
            ev = build_event(
                rv, room_id=self.room_id, sender=spec.sender, type=spec.type, content=content,
                state_key=spec.state_key, prev_events=room.extremities[-MAX_PREV_EVENTS:],
                auth_events=auth_ids, depth=room.depth + 1,
                origin_server_ts=int(self.deps.clock() * 1000),
                server_name=self.deps.server_name, signing_key=self.deps.signing_key,
                redacts=redacts)
        except CanonicalJsonError as e:
            raise MatrixError(400, "M_BAD_JSON", f"Event is not canonical JSON: {e}") from None
        too_long = oversized_fields(ev)
        if too_long:
            raise MatrixError(400, "M_BAD_JSON", f"{', '.join(too_long)} longer than 255 bytes"
                              " (client-server-api \"Size limits\")")
        if len(encode_canonical_json(ev)) > MAX_PDU_SIZE:
            raise MatrixError(413, "M_TOO_LARGE", "Event is larger than 65536 bytes")
        view = _StateView(room.state, room.state_events, room.create)
        try:
            protocol_auth.check_auth(rv, ev, view)
        except protocol_auth.AuthError as e:
            raise MatrixError(403, "M_FORBIDDEN", str(e)) from None
        if ev["type"] == "m.room.redaction":
            self._check_redaction(rv, ev, view)
        return ev

    def _check_redaction(self, rv: RoomVersion, ev: dict[str, Any], view: _StateView) -> None:
        """A redaction this server sends: the target must be an event of this room, and
        only its sender or a user with the ``redact`` level may redact it (client-server-api
        "Redactions"; the auth rules of v3+ leave this to the server).  Checked here, on the
        one path every local event takes, so no endpoint can skip it."""
        target_id = redacts_id(ev, rv)
        if target_id is None:
            raise MatrixError(400, "M_BAD_JSON", "m.room.redaction needs 'redacts'")
        target = self.deps.events.get_event(target_id)
        if target is not None and target.room_id != self.room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "Cannot redact an event of another room")
        target_sender = target.event.get("sender") if target is not None else None
        if protocol_auth.may_redact(rv, ev["sender"], target_sender, view):
            return
        if target is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown event {target_id}")
        raise MatrixError(403, "M_FORBIDDEN", "You don't have permission to redact events"
                          " of other users")

    def _prepare_content(self, room: _Room, spec: EventSpec) -> dict[str, Any]:
        """Server-side additions to content (restricted-join authorisation)."""
        content = dict(spec.content)
        if (spec.type == "m.room.member" and content.get("membership") == "join"
                and spec.state_key == spec.sender and room.rv.restricted_join_rule
                and "join_authorised_via_users_server" not in content):
            from actors.room_restricted import authorising_user

            via = authorising_user(self.deps.events, room.rv, self.room_id, room.state,
                                   room.state_events, room.create, spec.sender,
                                   self.deps.server_name)
            if via is not None:
                content["join_authorised_via_users_server"] = via
        return content

    def _stage(self, room: _Room, ev: dict[str, Any], txn_key: tuple[str, str, str] | None,
               check: bool = True) -> _Pending:
        """Apply ``ev`` to the tentative room; return what must be persisted for it."""
        eid = ev["event_id"]
        sg_write = None
        if "state_key" in ev:
            key = (ev["type"], ev["state_key"])
            replaced = room.state.get(key)
            if replaced is not None:
                # not part of the signed PDU: lets clients get prev_content cheaply
                ev.setdefault("unsigned", {})["replaces_state"] = replaced
            new_group = self.deps.state_groups.new_group_id()
            room.state[key] = eid
            room.state_events[eid] = ev
            sg_write = (new_group, room.group, {key: eid}, dict(room.state))
            room.group = new_group
        # the prev_events _build named (the newest ten) are no extremities any more
        room.extremities = room.extremities[:-MAX_PREV_EVENTS] + [eid]
        room.depth = max(room.depth, int(ev["depth"]))
        item = PersistItem(event=ev, stream_ordering=0, state_group=room.group, txn_key=txn_key)
        return _Pending(item, sg_write)

    def _commit(self, tentative: _Room, pendings: list[_Pending], *,
                new_room: tuple[str, str | None] | None = None,
                is_public: bool = False, check_txns: bool = False,
                groups: Sequence[tuple[int, int | None, dict, dict]] = (),
                hooked: Sequence[_Pending] | None = None, resolved: bool = False) -> list[int]:
        """One transaction for ``pendings`` (and the state groups in ``groups``, written
        first, in order); memory replaced after COMMIT; then the ``on_persisted`` hooks for
        ``hooked`` (default: every pending).  ``resolved``: current state may also have lost
        keys (state resolution), so removals are looked for too."""
        before: Mapping[StateKey, str] = self.room.state if self.room is not None else {}
        state_delta: dict[StateKey, str | None] = {
            k: v for k, v in tentative.state.items() if before.get(k) != v}
        if resolved:
            state_delta.update({k: None for k in before if k not in tentative.state})
        old_group = self.room.group if self.room is not None else None
        delta = RoomDelta(room_id=self.room_id, forward_extremities=list(tentative.extremities),
                          state_delta=state_delta,
                          # only when it moved: a plain message leaves the rooms row alone
                          current_state_group=(tentative.group if tentative.group != old_group
                                               else None),
                          new_room=new_room)
        sg = self.deps.state_groups
        txn_keys = [p.item.txn_key for p in pendings if p.item.txn_key is not None] \
            if check_txns else []

        def _persist(txn: Txn, orderings: list[int]) -> None:
            if txn_keys:
                found = self.deps.events.find_txns_txn(txn, self.room_id, txn_keys)
                if found:
                    raise _KnownTxns(found)  # rolls back; the batch is rebuilt without them
            for p, so in zip(pendings, orderings):
                p.item.stream_ordering = so
            for gid, prev, d, full in groups:
                sg.write_group(txn, gid, self.room_id, prev, d, full)
            for p in pendings:
                if p.state_group_write is not None:
                    gid, prev, d, full = p.state_group_write
                    sg.write_group(txn, gid, self.room_id, prev, d, full)
            self.deps.events.persist(txn, [p.item for p in pendings], delta)
            if is_public:
                txn.execute("UPDATE rooms SET is_public = 1 WHERE room_id = ?", (self.room_id,))

        with self.deps.events.stream.allocate(len(pendings)) as orderings:
            self.deps.db.run("persist_events", _persist, orderings, write=True)
        self.room = tentative
        self._remember_txns(pendings)
        persisted = [(p.item.event, p.item.stream_ordering)
                     for p in (pendings if hooked is None else hooked)]
        if not persisted:
            return orderings
        for hook in self.deps.on_persisted:
            try:
                hook(self.room_id, persisted)
            except Exception:
                log.exception("%s: on_persisted hook failed", self.room_id)
        return orderings


_trim_timer: Any = None
TRIM_EVERY = 1.0   # seconds: at most one trim this often while rooms keep stopping


def release_memory_soon(delay: float = TRIM_EVERY) -> None:
    """Within ``delay`` seconds of a room stopping: collect young cycles and ask glibc to
    return free heap pages to the OS (``malloc_trim``), so RSS follows the active rooms down
    instead of staying at its peak.  One pending timer at a time, so a burst of passivations
    trims about once per ``delay`` and once after the last; a no-op without glibc."""
    global _trim_timer
    if _trim_timer is None:
        import gevent

        _trim_timer = gevent.spawn_later(delay, _release_memory)


def _release_memory() -> None:
    global _trim_timer
    _trim_timer = None
    import ctypes
    import gc

    gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _check_indexed_strings(spec: EventSpec, redacts: str | None) -> None:
    """The strings the store copies into indexed columns (type, state key, membership,
    relation targets) must be storable text on both engines: no NUL (PostgreSQL refuses
    it).  A bad one is the client's error, not a reason for the room to crash."""
    rel = spec.content.get("m.relates_to") if isinstance(spec.content, Mapping) else None
    values = [spec.type, spec.state_key, redacts, spec.content.get("membership")]
    if isinstance(rel, Mapping):
        values += [rel.get("event_id"), rel.get("rel_type"), rel.get("key")]
    for v in values:
        if isinstance(v, str) and "\x00" in v:
            raise MatrixError(400, "M_BAD_JSON", "NUL characters are not allowed here")


def iter_state_events(room: _Room) -> Iterable[dict[str, Any]]:
    return (room.state_events[e] for e in room.state.values())
