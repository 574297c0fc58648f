"""Outbound device-list updates (server-server-api.md "Device Management",
``m.device_list_update``; "End-to-End Encryption", ``m.signing_key_update``).

When a local user's devices, device keys or cross-signing keys change, every change is
already recorded in the device-list stream (``DeviceListStore.mark_changed``: key uploads,
signatures, device deletion, deactivation).  ``DeviceListSender`` listens there
(``DeviceListStore.on_change``) and, in one worker greenlet, diffs the user's current devices
and keys against what other servers were last told (``store.device_lists.
OutboundDeviceLists``).  Each changed or deleted device becomes one ``m.device_list_update``
and a changed master / self-signing key one ``m.signing_key_update``, queued as durable EDUs
(``fed.sender.enqueue_durable``) to every other server with a user joined to a room the user
is in — in the same write transaction that moves the snapshot, so nothing is sent twice or
lost across a restart.

Stream ids come from the device-list stream (unique per user, increasing); each update's
``prev_id`` is the previous update's ``stream_id``, so updates sent in series form one chain
and a server that missed one resyncs with ``GET /user/devices/{userId}``, whose ``stream_id``
is the user's newest position in that stream (``store.device_lists.latest_stream_id``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from typing import Any, Callable

import gevent

from federation.edus import KeyedLock
from store.database import Txn
from store.device_lists import OutboundDeviceLists
from store.e2e_keys import E2EKeyStore

log = logging.getLogger(__name__)

MAX_PENDING_USERS = 10_000
CROSS_SIGNING = (("master", "master_key"), ("self_signing", "self_signing_key"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()[:32]


class DeviceListSender:
    """``accounts.list_devices(user)`` and ``e2e_keys.query(requester, wanted)`` are the
    stores of local devices and keys; ``sender()`` returns ``fed.sender`` (None: nothing is
    sent)."""

    def __init__(self, server_name: str, outbound: OutboundDeviceLists, *, accounts: Any,
                 e2e_keys: Any, sender: Callable[[], Any]) -> None:
        self.server_name = server_name
        self.outbound = outbound
        self.accounts = accounts
        self.e2e_keys = e2e_keys
        self._sender = sender
        self._suffix = ":" + server_name
        self._pending: OrderedDict[str, int | None] = OrderedDict()
        self._worker: Any = None
        self._user_lock = KeyedLock()

    # -- the hook -------------------------------------------------------------------------
    def on_change(self, user_ids: list[str], pos: int) -> None:
        """DeviceListStore.on_change listener (after commit): queue the local users."""
        for user_id in user_ids:
            if not user_id.endswith(self._suffix):
                continue  # remote users' lists are their servers' to announce
            # ``pos`` is this user's own stream row only when the change was for one user
            own = pos if len(user_ids) == 1 else None
            if user_id in self._pending:
                prev = self._pending[user_id]
                self._pending[user_id] = max(own, prev) if own and prev else None
            elif len(self._pending) >= MAX_PENDING_USERS:
                # the snapshot diff sends it with the user's next change
                log.warning("device-list outbound queue full: %s's change waits", user_id)
                continue
            else:
                self._pending[user_id] = own
        if self._pending and self._worker is None:
            self._worker = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            while self._pending:
                user_id, pos = self._pending.popitem(last=False)
                try:
                    self.process(user_id, pos)
                except Exception:  # noqa: BLE001 - the next change of the user retries
                    log.exception("device-list update for %s not sent", user_id)
        finally:
            self._worker = None
            if self._pending:  # queued while the last one was being sent
                self._worker = gevent.spawn(self._run)

    def flush(self, timeout: float) -> None:
        """Wait (bounded) until the queue is empty: for tests and shutdown."""
        deadline = gevent.get_hub().loop.now() + timeout
        while self._worker is not None and gevent.get_hub().loop.now() < deadline:
            self._worker.join(timeout=max(0.0, deadline - gevent.get_hub().loop.now()))

    # -- one user -------------------------------------------------------------------------
    def current(self, user_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """{item: (digest, payload)} of what other servers should know now: ``d:<device>``
        → {"device_id", "keys"?, "device_display_name"?}; ``x:<key type>`` → key object."""
        res = self.e2e_keys.query("", {user_id: []})
        keys_of = res.device_keys.get(user_id, {})
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for dev in self.accounts.list_devices(user_id):
            device_id = dev["device_id"]
            payload: dict[str, Any] = {"device_id": device_id}
            keys = keys_of.get(device_id)
            if keys is not None:
                keys = {k: v for k, v in keys.items() if k != "unsigned"}
                payload["keys"] = keys
            if dev.get("display_name") is not None:
                payload["device_display_name"] = dev["display_name"]
            out["d:" + device_id] = (_digest(payload), payload)
        for key_type, _ in CROSS_SIGNING:
            obj = getattr(res, f"{key_type}_keys", {}).get(user_id)
            if obj is not None:
                out["x:" + key_type] = (_digest(obj), obj)
        return out

    def process(self, user_id: str, pos: int | None = None) -> int:
        """Send what changed for one local user; returns the number of EDUs queued per
        destination (0 when there is no other server to tell or nothing changed)."""
        with self._user_lock(user_id):  # one diff per user at a time (worker vs. callers)
            return self._process(user_id, pos)

    def _process(self, user_id: str, pos: int | None) -> int:
        sender = self._sender()
        if sender is None:
            return 0
        destinations = sorted(self.outbound.remote_servers(user_id, self.server_name))
        if not destinations:
            return 0
        now = self.current(user_id)
        told, last = self.outbound.snapshot(user_id)
        devices: list[tuple[str, dict[str, Any] | None]] = []  # (device id, payload | deleted)
        digests: dict[str, str | None] = {}
        xsign = False
        for item in sorted(set(now) | set(told)):
            new = now.get(item)
            if (new[0] if new else None) == told.get(item):
                continue
            digests[item] = new[0] if new else None
            if item.startswith("d:"):
                devices.append((item[2:], new[1] if new else None))
            else:
                xsign = True
        if not digests:
            return 0
        reuse = [pos] if devices and pos is not None and (last is None or pos > last) else []
        cross = {field: now["x:" + kt][1] for kt, field in CROSS_SIGNING if "x:" + kt in now}

        def write(txn: Txn, ids: list[int]) -> None:
            prev = [last] if last is not None else []
            for (device_id, payload), sid in zip(devices, ids):
                content: dict[str, Any] = {"user_id": user_id, "device_id": device_id,
                                           "stream_id": sid, "prev_id": prev,
                                           "deleted": payload is None}
                if payload is not None:
                    content.update({k: v for k, v in payload.items() if k != "device_id"})
                for dest in destinations:
                    sender.enqueue_durable(txn, dest, "m.device_list_update", content)
                prev = [sid]
            if xsign and cross:
                content = {"user_id": user_id, **cross}
                for dest in destinations:
                    sender.enqueue_durable(txn, dest, "m.signing_key_update", content)

        self.outbound.record(user_id, digests, reuse, len(devices) - len(reuse), write)
        return len(devices) + (1 if xsign and cross else 0)


def install(fed: Any, parts: dict[str, Any]) -> DeviceListSender:
    """Hang the sender off the device-list stream (called by federation.inbound.install)."""
    device_lists = parts["sync"].device_lists
    e2e_keys = parts.get("e2e_keys") or E2EKeyStore(fed.db)
    sender = DeviceListSender(fed.server_name, OutboundDeviceLists(fed.db, device_lists),
                              accounts=parts["accounts"], e2e_keys=e2e_keys,
                              sender=lambda: fed.sender)
    device_lists.on_change.append(sender.on_change)
    fed.extras["device_lists_out"] = sender
    return sender
