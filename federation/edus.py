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

Every applied change is recorded in the device-list stream for the remote user, so local
users who share a room with them see it in /sync ``device_lists.changed`` and
``/keys/changes``.  Users we neither track nor share a room with are ignored (nobody here
needs their devices; a later /keys/query asks their server).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import quote

import gevent
import gevent.lock

from protocol.ids import IdError, parse_user_id
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
IGNORED_TYPES = ("m.typing", "m.receipt", "m.presence")  # Federation II


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
        self._handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "m.direct_to_device": self.on_direct_to_device,
            "m.device_list_update": self.on_device_list_update,
            "m.signing_key_update": self.on_signing_key_update,
        }

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
