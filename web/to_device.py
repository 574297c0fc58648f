"""Send-to-device messaging (modules/send_to_device.md): ``PUT /sendToDevice/{eventType}/
{txnId}``.  Idempotent per (sender, sender's device, txn id); ``*`` means every device of
the target user.

Local targets: the write goes through the sender's actor, delivery through /sync.  Users of
other servers (server-server-api "Send-to-device messaging"): one durable
``m.direct_to_device`` EDU per destination per request (``{sender, type, message_id,
messages: {user: {device: content}}}``), queued with ``fed.sender.enqueue_durable`` in one
write transaction, so the 200 means it is stored; a repeated txn id queues nothing
(``federation_to_device_txns``).  With federation switched off (no ``fed.sender``) remote
targets are dropped.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from protocol.ids import is_valid_user_id, server_of
from web.auth import require_auth
from web.http import json_body, require

from actors.user_messages import SendToDevice

P = "/_matrix/client/v3"
MAX_TARGETS = 10_000
EDU_TYPE = "m.direct_to_device"


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    accounts = runtime.parts["accounts"]
    db = runtime.db
    bp = Blueprint("to_device", __name__)

    def federation_sender() -> Any:
        return getattr(runtime.parts.get("federation"), "sender", None)

    @bp.put(f"{P}/sendToDevice/<event_type>/<txn_id>")
    def send_to_device(event_type: str, txn_id: str) -> Any:
        """PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}"""
        req = require_auth(allow_guest=True)
        body = json_body()
        messages = require(body, "messages", dict)
        targets: list[tuple[str, str, Any]] = []
        remote: dict[str, dict[str, dict[str, Any]]] = {}   # server -> user -> device -> c
        remote_count = 0
        for user_id, by_device in messages.items():
            if not isinstance(by_device, dict):
                raise MatrixError(400, "M_BAD_JSON", "messages must map users to devices")
            for content in by_device.values():
                if not isinstance(content, dict):
                    raise MatrixError(400, "M_BAD_JSON", "message content must be an object")
            if not sync.is_local(user_id):
                if by_device and is_valid_user_id(user_id):
                    remote.setdefault(server_of(user_id), {})[user_id] = dict(by_device)
                    remote_count += len(by_device)
                continue
            known = {d["device_id"] for d in accounts.list_devices(user_id)}
            for device_id, content in by_device.items():
                wanted = sorted(known) if device_id == "*" else \
                    ([device_id] if device_id in known else [])
                targets.extend((user_id, d, content) for d in wanted)
        if len(targets) + remote_count > MAX_TARGETS:
            raise MatrixError(413, "M_TOO_LARGE", "Too many target devices")
        fed_sender = federation_sender()
        if remote and fed_sender is not None:
            db.run("send_to_device_remote", _enqueue_remote, fed_sender, req.user_id,
                   req.device_id or "", txn_id, event_type, remote, write=True)
        sync.ask_user(req.user_id, SendToDevice(sender_device=req.device_id or "",
                                                txn_id=txn_id, type=event_type,
                                                targets=tuple(targets)))
        return jsonify({})

    app.register_blueprint(bp)


def _enqueue_remote(txn: Any, fed_sender: Any, sender: str, sender_device: str, txn_id: str,
                    event_type: str, by_server: dict[str, dict[str, dict[str, Any]]]) -> bool:
    """Inside one write transaction: record the txn id, then one durable EDU per destination.
    False (nothing queued) when this (sender, device, txn id) was queued before."""
    fresh = txn.execute(
        "INSERT INTO federation_to_device_txns (user_id, device_id, txn_id, created_ts)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (sender, sender_device, txn_id, int(time.time() * 1000)))
    if fresh == 0:
        return False
    for destination in sorted(by_server):
        fed_sender.enqueue_durable(txn, destination, EDU_TYPE, {
            "sender": sender, "type": event_type,
            "message_id": secrets.token_urlsafe(16),
            "messages": by_server[destination]})
    return True
