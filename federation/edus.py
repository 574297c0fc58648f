"""Inbound EDUs (server-server-api.md "EDUs", "Send-to-device messaging", "Device
Management", "End-to-End Encryption" / ``m.signing_key_update``).

``EduHandlers.handle(origin, edu)`` dispatches one EDU of a transaction by ``edu_type``.  An
EDU about a user of another server than ``origin`` is dropped; unknown types are ignored; a
malformed EDU is logged and dropped, never failing its transaction (only a database error
propagates, so the sender retries the whole transaction — every handler here is idempotent).

* ``m.direct_to_device``: delivered once per (origin, sender, message_id) into the local
  recipients' to-device inboxes (the inbox local sends use, one write transaction that also
  records the message id), then their /syncs are woken.
* ``m.device_list_update``: applied to the cached list of a tracked remote user when every
  ``prev_id`` is known (the last applied stream_id or one applied since the last resync);
  otherwise the list is marked stale and fetched again with ``GET /_matrix/federation/v1/
  user/devices/{userId}`` in a background greenlet (one per user, a bounded number at once).
* ``m.signing_key_update``: stores the master / self-signing keys.
* ``m.typing``, ``m.receipt``, ``m.presence`` ("Typing Notifications", "Receipts",
  "Presence"): handled by :class:`RoomEdus` once ``federation/edus_out.py`` attached it
  (``EduHandlers.room_edus``).  Typing and receipts only of users of ``origin`` joined to the
  room; receipts of type ``m.read`` (threaded ones keep their ``thread_id``) into the receipts
  store local receipts use; presence only of users of ``origin`` who share a room with this
  server, into the presence store.  Each wakes the local /syncs concerned.

Every applied change is recorded in the device-list stream for the remote user, so local
users who share a room with them see it in /sync ``device_lists.changed`` and
``/keys/changes``.  Users we neither track nor share a room with are ignored (nobody here
needs their devices; a later /keys/query asks their server).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import quote

import gevent
import gevent.lock

from protocol.ids import IdError, is_valid_room_id, parse_user_id
from store.database import DatabaseError
from store.federation_inbound import FederationInboundStore
from store.remote_devices import RemoteDeviceStore

log = logging.getLogger(__name__)

MAX_TO_DEVICE_TARGETS = 10_000
MAX_MESSAGE_ID = 256
MAX_RESYNCS = 10            # resyncs running at once (further requests leave the list stale)
RESYNC_TIMEOUT = 30.0       # seconds, per request
MAX_RESYNC_DEVICES = 10_000
SEEN_USERS = 10_000         # users whose recently applied stream_ids are remembered
SEEN_PER_USER = 64
IGNORED_TYPES = ("m.typing", "m.receipt", "m.presence")  # until RoomEdus is attached
REMOTE_TYPING_TIMEOUT_MS = 60_000   # a remote user's typing ends unless refreshed (Synapse's)
MAX_RECEIPTS = 1_000                # receipts per m.receipt EDU
MAX_PRESENCE = 1_000                # entries per m.presence push
MAX_STATUS = 1024
PRESENCE_STATES = ("online", "unavailable", "offline")
PRESENCE_SAME_MS = 60_000           # an unchanged state with a close last_active is not stored


class BadEdu(ValueError):
    """The EDU is malformed: logged and dropped."""


class KeyedLock:
    """One gevent lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Any, list[Any]] = {}

    @contextmanager
    def __call__(self, key: Any) -> Iterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [gevent.lock.Semaphore(), 0]
        entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)


def _user_of(origin: str, value: Any, what: str = "user_id") -> str | None:
    """A valid user id of ``origin``; None (logged) for another server's user."""
    if not isinstance(value, str) or "\x00" in value:
        raise BadEdu(f"{what} must be a user id")
    try:
        _, server = parse_user_id(value)
    except IdError:
        raise BadEdu(f"{what} is not a valid user id: {value!r}") from None
    if server != origin:
        log.warning("EDU from %s about %s (another server's user) dropped", origin, value)
        return None
    return value


def _text(value: Any, what: str, limit: int = 1024) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise BadEdu(f"{what} must be a non-empty string")
    return value


def _stream_id(value: Any, what: str = "stream_id") -> str:
    """Stream ids arrive as ints (the spec) or strings (some servers): compared as text."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise BadEdu(f"{what} must be an integer")
    return str(value)


def _cross_signing_key(obj: Any, user_id: str, usage: str) -> dict[str, Any] | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.get("user_id") != user_id \
            or usage not in (obj.get("usage") or ()) or not isinstance(obj.get("keys"), dict):
        raise BadEdu(f"{usage} key is not {user_id}'s {usage} key")
    return obj


class EduHandlers:
    """``to_device`` is the sync area's ToDeviceStore, ``device_lists`` its DeviceListStore
    (their stream generators must be the process's only ones), ``waker`` the notifier
    (``wake_users(users, stream, pos)``); ``client()`` returns the FederationClient (or None
    while there is none)."""

    def __init__(self, server_name: str, store: FederationInboundStore,
                 remote_devices: RemoteDeviceStore, *, to_device: Any, device_lists: Any,
                 waker: Any, client: Callable[[], Any]) -> None:
        self.server_name = server_name
        self.store = store
        self.remote_devices = remote_devices
        self.to_device = to_device
        self.device_lists = device_lists
        self.waker = waker
        self._client = client
        self._user_lock = KeyedLock()
        self._seen: OrderedDict[str, list[str]] = OrderedDict()
        self._resyncing: dict[str, Any] = {}
        self._again: set[str] = set()
        #: typing / receipts / presence, set by federation/edus_out.py's install
        self.room_edus: RoomEdus | None = None
        self._handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "m.direct_to_device": self.on_direct_to_device,
            "m.device_list_update": self.on_device_list_update,
            "m.signing_key_update": self.on_signing_key_update,
            "m.typing": self._room_edu("on_typing"),
            "m.receipt": self._room_edu("on_receipt"),
            "m.presence": self._room_edu("on_presence"),
        }

    def _room_edu(self, name: str) -> Callable[[str, dict[str, Any]], None]:
        def handler(origin: str, content: dict[str, Any]) -> None:
            if self.room_edus is not None:
                getattr(self.room_edus, name)(origin, content)
        return handler

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, origin: str, edu: Any) -> None:
        """One EDU of a transaction from ``origin``."""
        if not isinstance(edu, dict) or not isinstance(edu.get("edu_type"), str):
            log.info("EDU from %s without an edu_type dropped", origin)
            return
        edu_type = edu["edu_type"]
        handler = self._handlers.get(edu_type)
        if handler is None:
            # typing, receipts and presence arrive with Federation II (rooms across
            # servers); other types are not ours to know
            if edu_type not in IGNORED_TYPES:
                log.debug("EDU of unknown type %r from %s ignored", edu_type, origin)
            return
        content = edu.get("content")
        try:
            if not isinstance(content, dict):
                raise BadEdu("content must be an object")
            handler(origin, content)
        except BadEdu as e:
            log.info("%s EDU from %s dropped: %s", edu_type, origin, e)
        except DatabaseError:
            raise  # the transaction fails and is retried; the handlers are idempotent
        except Exception:  # noqa: BLE001 - one EDU must not fail the transaction
            log.exception("%s EDU from %s failed", edu_type, origin)

    # -- m.direct_to_device ---------------------------------------------------------------
    def on_direct_to_device(self, origin: str, content: dict[str, Any]) -> None:
        sender = _user_of(origin, content.get("sender"), "sender")
        if sender is None:
            return
        type_ = _text(content.get("type"), "type", 255)
        message_id = _text(content.get("message_id"), "message_id", MAX_MESSAGE_ID)
        messages = content.get("messages")
        if not isinstance(messages, dict):
            raise BadEdu("messages must map users to devices")
        wanted: dict[str, dict[str, Any]] = {}
        for user_id, by_device in messages.items():
            if not isinstance(by_device, dict) or not self._is_local(user_id):
                continue  # targets that are not our users are not ours to deliver
            wanted[user_id] = by_device
        known = self.store.local_devices(wanted)
        targets: list[tuple[str, str, dict[str, Any]]] = []
        for user_id, by_device in wanted.items():
            devices = known.get(user_id, [])
            for device_id, msg in by_device.items():
                if not isinstance(msg, dict):
                    continue
                if device_id == "*":
                    targets.extend((user_id, d, msg) for d in devices)
                elif device_id in devices:
                    targets.append((user_id, device_id, msg))
                if len(targets) > MAX_TO_DEVICE_TARGETS:
                    raise BadEdu(f"more than {MAX_TO_DEVICE_TARGETS} target devices")
        if not targets:
            return
        pos, fresh = self.to_device.send_claimed(
            sender, type_, targets,
            lambda txn: self.store.claim_to_device(txn, origin, sender, message_id))
        if fresh:
            self.waker.wake_users({u for u, _, _ in targets}, self.to_device.stream, pos)
        else:
            log.debug("to-device %s from %s already delivered", message_id, sender)

    def _is_local(self, user_id: Any) -> bool:
        if not isinstance(user_id, str):
            return False
        try:
            return parse_user_id(user_id)[1] == self.server_name
        except IdError:
            return False

    # -- m.device_list_update -------------------------------------------------------------
    def on_device_list_update(self, origin: str, content: dict[str, Any]) -> None:
        user_id = _user_of(origin, content.get("user_id"))
        if user_id is None:
            return
        device_id = _text(content.get("device_id"), "device_id", 1024)
        stream_id = _stream_id(content.get("stream_id"))
        prev = content.get("prev_id")
        if prev is None:
            prev = []
        if not isinstance(prev, list):
            raise BadEdu("prev_id must be a list")
        prev_ids = [_stream_id(p, "prev_id") for p in prev]
        deleted = content.get("deleted") is True
        keys = content.get("keys")
        if keys is not None:
            if not isinstance(keys, dict) or keys.get("user_id", user_id) != user_id \
                    or keys.get("device_id", device_id) != device_id:
                raise BadEdu("keys must be this device's keys")
        name = content.get("device_display_name")
        name = name if isinstance(name, str) else None
        with self._user_lock(user_id):
            state = self.remote_devices.state(user_id)
            if state is None and not self.store.shares_room(user_id):
                log.debug("device list update for %s (not tracked, no room shared) ignored",
                          user_id)
                return
            seen = self._seen.get(user_id, [])
            if state is not None and not state.stale \
                    and (stream_id == state.stream_id or stream_id in seen):
                return  # applied already (a retried transaction)
            known = set(seen)
            if state is not None and state.stream_id is not None:
                known.add(state.stream_id)
            if state is None or state.stale or not prev_ids \
                    or any(p not in known for p in prev_ids):
                if state is None or not state.stale:
                    self.remote_devices.mark_stale(user_id)
                self.request_resync(user_id)
                return
            self.remote_devices.apply_update(user_id, device_id, stream_id, deleted=deleted,
                                             keys=keys, display_name=name)
            self._remember(user_id, stream_id)
        self._changed(user_id)

    def _remember(self, user_id: str, stream_id: str) -> None:
        seen = self._seen.get(user_id)
        if seen is None:
            seen = self._seen[user_id] = []
            while len(self._seen) > SEEN_USERS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(user_id)
        seen.append(stream_id)
        del seen[:-SEEN_PER_USER]

    def _changed(self, user_id: str) -> None:
        self.device_lists.mark_changed([user_id])

    # -- resync ---------------------------------------------------------------------------
    def request_resync(self, user_id: str) -> bool:
        """Fetch the user's whole list again in the background (at most one fetch per user
        at a time; a request during a fetch makes it fetch once more).  False when it could
        not start (no client, or MAX_RESYNCS running): the list stays stale until the next
        update or request."""
        if user_id in self._resyncing:
            self._again.add(user_id)
            return True
        if len(self._resyncing) >= MAX_RESYNCS or self._client() is None:
            log.info("device list resync for %s not started (busy or no client)", user_id)
            return False
        self._resyncing[user_id] = gevent.spawn(self._resync, user_id)
        return True

    def resyncs_running(self) -> int:
        return len(self._resyncing)

    def wait_for_resyncs(self, timeout: float) -> None:
        """Wait (bounded) for the running resyncs: for tests and shutdown."""
        gevent.joinall(list(self._resyncing.values()), timeout=timeout)

    def _resync(self, user_id: str) -> None:
        try:
            for _ in range(2):
                self._again.discard(user_id)
                self._resync_once(user_id)
                if user_id not in self._again:
                    break
        except Exception as e:  # noqa: BLE001 - the list stays stale; a later update retries
            log.warning("device list resync for %s failed: %s", user_id, e)
        finally:
            self._resyncing.pop(user_id, None)
            self._again.discard(user_id)

    def _resync_once(self, user_id: str) -> None:
        client = self._client()
        if client is None:
            return
        server = parse_user_id(user_id)[1]
        body = client.get_json(server, "/_matrix/federation/v1/user/devices/"
                               + quote(user_id, safe=""), timeout=RESYNC_TIMEOUT)
        if not isinstance(body, dict) or body.get("user_id") != user_id:
            raise BadEdu("the answer is not this user's device list")
        stream_id = _stream_id(body.get("stream_id"))
        raw = body.get("devices")
        if not isinstance(raw, list) or len(raw) > MAX_RESYNC_DEVICES:
            raise BadEdu("devices must be a list")
        devices = []
        for d in raw:
            if not isinstance(d, dict) or not isinstance(d.get("device_id"), str) \
                    or "\x00" in d["device_id"]:
                continue
            keys = d.get("keys")
            if keys is not None and (not isinstance(keys, dict)
                                     or keys.get("user_id", user_id) != user_id):
                keys = None
            devices.append({"device_id": d["device_id"], "keys": keys,
                            "device_display_name": d.get("device_display_name")})
        master = _cross_signing_key(body.get("master_key"), user_id, "master")
        self_signing = _cross_signing_key(body.get("self_signing_key"), user_id,
                                          "self_signing")
        with self._user_lock(user_id):
            self.remote_devices.set_devices(user_id, stream_id, devices, master, self_signing)
            self._seen.pop(user_id, None)
        self._changed(user_id)

    # -- m.signing_key_update -------------------------------------------------------------
    def on_signing_key_update(self, origin: str, content: dict[str, Any]) -> None:
        user_id = _user_of(origin, content.get("user_id"))
        if user_id is None:
            return
        master = _cross_signing_key(content.get("master_key"), user_id, "master")
        self_signing = _cross_signing_key(content.get("self_signing_key"), user_id,
                                          "self_signing")
        if master is None and self_signing is None:
            return
        with self._user_lock(user_id):
            if self.remote_devices.state(user_id) is None \
                    and not self.store.shares_room(user_id):
                log.debug("signing key update for %s (not tracked, no room shared) ignored",
                          user_id)
                return
            self.remote_devices.set_cross_signing(user_id, master, self_signing)
        self._changed(user_id)


# ------------------------------------------------------------------ typing, receipts, presence

class RoomEdus:
    """Inbound ``m.typing`` / ``m.receipt`` / ``m.presence`` (see the module docstring).

    Duck-typed parts (handed over by ``federation/edus_out.py`` from ``runtime.parts``):
    ``typing`` the TypingTracker (``set_typing``), ``receipts`` the ReceiptStore (``put``,
    ``stream``), ``presence`` the PresenceStore (``get``, ``put``, ``stream``), ``notifier``
    (``wake_room``, ``wake_users``, ``audience``); ``membership(room_id, user_id) ->
    (membership, event_id)``, ``event_position(event_id) -> (room_id, stream_ordering) |
    None`` (None also for outliers and rejected events), ``events_position() -> int`` and
    ``shares_room(user_id) -> bool``."""

    def __init__(self, *, typing: Any, receipts: Any, presence: Any, notifier: Any,
                 membership: Callable[[str, str], Any],
                 event_position: Callable[[str], tuple[str, int] | None],
                 events_position: Callable[[], int], shares_room: Callable[[str], bool],
                 presence_enabled: bool = True,
                 clock: Callable[[], float] | None = None) -> None:
        self.typing = typing
        self.receipts = receipts
        self.presence = presence
        self.notifier = notifier
        self.membership = membership
        self.event_position = event_position
        self.events_position = events_position
        self.shares_room = shares_room
        self.presence_enabled = presence_enabled
        self.clock = clock or time.time
        self._user_lock = KeyedLock()
        #: remote user -> time.monotonic() of the last presence update about them (any, even
        #: one that changed nothing): federation/presence_timers.py times out the silent
        self._heard: dict[str, float] = {}
        self.monotonic: Callable[[], float] = time.monotonic

    def heard(self, user_id: str) -> float | None:
        return self._heard.get(user_id)

    def forget(self, user_id: str) -> None:
        self._heard.pop(user_id, None)

    @classmethod
    def from_parts(cls, server_name: str, sync: Any, rooms: Any) -> "RoomEdus":
        """From the sync service and the room service of ``runtime.parts``."""
        inbound = FederationInboundStore(sync.db)

        def event_position(event_id: str) -> tuple[str, int] | None:
            se = rooms.events.get_event(event_id)
            if se is None or se.outlier or se.rejection is not None:
                return None
            return se.room_id, se.stream_ordering

        return cls(typing=sync.typing, receipts=sync.receipts, presence=sync.presence,
                   notifier=sync.notifier, membership=rooms.membership,
                   event_position=event_position,
                   events_position=rooms.events.stream.current,
                   shares_room=inbound.shares_room,
                   presence_enabled=bool(getattr(sync, "presence_enabled", True)))

    def _joined(self, room_id: str, user_id: str) -> bool:
        membership, _ = self.membership(room_id, user_id)
        return membership == "join"

    # -- m.typing -------------------------------------------------------------------------
    def on_typing(self, origin: str, content: dict[str, Any]) -> None:
        room_id = _room_id(content.get("room_id"))
        user_id = _user_of(origin, content.get("user_id"))
        typing = content.get("typing")
        if not isinstance(typing, bool):
            raise BadEdu("typing must be a boolean")
        if user_id is None:
            return
        if not self._joined(room_id, user_id):
            log.info("m.typing from %s: %s is not joined to %s, dropped", origin, user_id,
                     room_id)
            return
        self.typing.set_typing(room_id, user_id, typing, REMOTE_TYPING_TIMEOUT_MS)

    # -- m.receipt ------------------------------------------------------------------------
    def on_receipt(self, origin: str, content: dict[str, Any]) -> None:
        seen = 0
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                raise BadEdu("receipts of a room must be an object")
            room_id = _room_id(room_id)
            for receipt_type, by_user in by_type.items():
                if receipt_type != "m.read":
                    # m.read.private never federates; other types are not ours to know
                    continue
                if not isinstance(by_user, dict):
                    raise BadEdu("receipts of a type must map users")
                for user_id, entry in by_user.items():
                    seen += 1
                    if seen > MAX_RECEIPTS:
                        raise BadEdu(f"more than {MAX_RECEIPTS} receipts")
                    try:
                        self._one_receipt(origin, room_id, user_id, entry)
                    except BadEdu as e:
                        log.info("receipt from %s dropped: %s", origin, e)

    def _one_receipt(self, origin: str, room_id: str, user_id: Any, entry: Any) -> None:
        user = _user_of(origin, user_id)
        if user is None:
            return
        if not isinstance(entry, dict):
            raise BadEdu("a receipt must be an object")
        event_ids = entry.get("event_ids")
        if not isinstance(event_ids, list) or not event_ids:
            raise BadEdu("event_ids must be a non-empty list")
        event_id = _text(event_ids[0], "event id", 255)
        data = entry.get("data")
        data = data if isinstance(data, dict) else {}
        ts = data.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
            ts = int(self.clock() * 1000)
        thread_id = data.get("thread_id")
        thread_id = _text(thread_id, "thread_id", 255) if thread_id is not None else ""
        if not self._joined(room_id, user):
            log.info("m.receipt from %s: %s is not joined to %s, dropped", origin, user,
                     room_id)
            return
        pos = self.event_position(event_id)
        if pos is not None and pos[0] != room_id:
            raise BadEdu(f"{event_id} is not an event of {room_id}")
        # an event not received yet counts as the newest one: the receipt is newer than
        # anything this server holds of the room
        so = pos[1] if pos is not None else self.events_position()
        with self._user_lock(user):
            sid = self.receipts.put(room_id, "m.read", user, thread_id, event_id, so, ts)
        if sid is not None:
            self.notifier.wake_room(room_id, self.receipts.stream, sid)

    # -- m.presence -----------------------------------------------------------------------
    def on_presence(self, origin: str, content: dict[str, Any]) -> None:
        if not self.presence_enabled:
            return
        push = content.get("push")
        if not isinstance(push, list):
            raise BadEdu("push must be a list")
        if len(push) > MAX_PRESENCE:
            raise BadEdu(f"more than {MAX_PRESENCE} presence updates")
        for entry in push:
            try:
                self._one_presence(origin, entry)
            except BadEdu as e:
                log.info("presence from %s dropped: %s", origin, e)

    def _one_presence(self, origin: str, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise BadEdu("a presence update must be an object")
        user = _user_of(origin, entry.get("user_id"))
        if user is None:
            return
        state = entry.get("presence")
        if state not in PRESENCE_STATES:
            raise BadEdu(f"unknown presence {state!r}")
        ago = entry.get("last_active_ago", 0)
        if isinstance(ago, bool) or not isinstance(ago, int) or ago < 0:
            ago = 0
        active = entry.get("currently_active") is True and state == "online"
        status = entry.get("status_msg")
        if status is not None and (not isinstance(status, str) or len(status) > MAX_STATUS
                                   or "\x00" in status):
            status = None
        if not self.shares_room(user):
            log.debug("presence of %s (no room shared) ignored", user)
            return
        last_active = int(self.clock() * 1000) - ago
        self._heard[user] = self.monotonic()
        with self._user_lock(user):
            old = self.presence.get(user)
            if old is not None and (old.state, old.status_msg, old.currently_active) \
                    == (state, status, active) \
                    and abs(old.last_active_ts - last_active) < PRESENCE_SAME_MS:
                return
            sid = self.presence.put(user, state, status, last_active, active)
        self.notifier.wake_users(self.notifier.audience(user), self.presence.stream, sid)


def _room_id(value: Any) -> str:
    if not isinstance(value, str) or not is_valid_room_id(value):
        raise BadEdu("room_id must be a room id")
    return value
