"""Send-to-device messaging (modules/send_to_device.md): ``PUT /sendToDevice/{eventType}/
{txnId}``.  Idempotent per (sender, sender's device, txn id); ``*`` means every device of
the target user.  Local targets only for now (federation EDUs come with the federation
issue); the write goes through the sender's actor, delivery through /sync."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from web.auth import require_auth
from web.http import json_body, require

from actors.user_messages import SendToDevice

P = "/_matrix/client/v3"
MAX_TARGETS = 10_000


def register(app: Flask, runtime: Any) -> None:
    sync = runtime.parts["sync"]
    accounts = runtime.parts["accounts"]
    bp = Blueprint("to_device", __name__)

    @bp.put(f"{P}/sendToDevice/<event_type>/<txn_id>")
    def send_to_device(event_type: str, txn_id: str) -> Any:
        """PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}"""
        req = require_auth()
        body = json_body()
        messages = require(body, "messages", dict)
        targets: list[tuple[str, str, Any]] = []
        for user_id, by_device in messages.items():
            if not isinstance(by_device, dict):
                raise MatrixError(400, "M_BAD_JSON", "messages must map users to devices")
            if not sync.is_local(user_id):
                continue  # remote delivery arrives with federation
            known = {d["device_id"] for d in accounts.list_devices(user_id)}
            for device_id, content in by_device.items():
                if not isinstance(content, dict):
                    raise MatrixError(400, "M_BAD_JSON", "message content must be an object")
                wanted = sorted(known) if device_id == "*" else \
                    ([device_id] if device_id in known else [])
                targets.extend((user_id, d, content) for d in wanted)
        if len(targets) > MAX_TARGETS:
            raise MatrixError(413, "M_TOO_LARGE", "Too many target devices")
        sync.ask_user(req.user_id, SendToDevice(sender_device=req.device_id or "",
                                                txn_id=txn_id, type=event_type,
                                                targets=tuple(targets)))
        return jsonify({})

    app.register_blueprint(bp)
