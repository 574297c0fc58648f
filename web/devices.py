"""Device management (spec: client-server-api, modules/device_management.md):
``GET /devices``, ``GET/PUT/DELETE /devices/{deviceId}``, ``POST /delete_devices``.

Deleting a device deletes its access and refresh tokens (and, through the store's
``on_devices_deleted`` hook, whatever other areas keep per device); it needs UIA
``m.login.password``.  Deleting an unknown device succeeds, as in Synapse.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import bad_json, invalid_param, not_found
from store.accounts import AccountStore
from web.account import password_uia
from web.auth import require_auth
from web.http import check_type, json_body, require
from web.uia import InteractiveAuth, reject_nul_path_values, storable_text

MAX_DEVICE_NAME = 100


def register(app: Flask, runtime: Any) -> None:
    accounts: AccountStore = runtime.parts["accounts"]
    uia: InteractiveAuth = runtime.parts["uia"]
    bp = Blueprint("devices", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    @bp.get("/_matrix/client/v3/devices")
    def list_devices() -> Any:
        """GET /_matrix/client/v3/devices"""
        requester = require_auth(allow_guest=True)
        return jsonify({"devices": [_shape(d) for d in accounts.list_devices(requester.user_id)]})

    @bp.get("/_matrix/client/v3/devices/<device_id>")
    def get_device(device_id: str) -> Any:
        """GET /_matrix/client/v3/devices/{deviceId}"""
        requester = require_auth(allow_guest=True)
        device = accounts.get_device(requester.user_id, device_id)
        if device is None:
            raise not_found("No device with that ID")
        return jsonify(_shape(device))

    @bp.put("/_matrix/client/v3/devices/<device_id>")
    def put_device(device_id: str) -> Any:
        """PUT /_matrix/client/v3/devices/{deviceId}"""
        requester = require_auth(allow_guest=True)
        body = json_body()
        name = check_type(body, "display_name", str)
        if name is not None and len(name) > MAX_DEVICE_NAME:
            raise invalid_param(f"'display_name' may be at most {MAX_DEVICE_NAME} characters")
        if name is not None:
            storable_text("display_name", name)
        if not accounts.rename_device(requester.user_id, device_id, name):
            raise not_found("No device with that ID")
        return jsonify({})

    @bp.delete("/_matrix/client/v3/devices/<device_id>")
    def delete_device(device_id: str) -> Any:
        """DELETE /_matrix/client/v3/devices/{deviceId}"""
        requester = require_auth()
        body = json_body(optional=True)
        sid = password_uia(uia, accounts, requester, body).session_id
        accounts.delete_devices(requester.user_id, [device_id], uia_session=sid)
        return jsonify({})

    @bp.post("/_matrix/client/v3/delete_devices")
    def delete_devices() -> Any:
        """POST /_matrix/client/v3/delete_devices"""
        requester = require_auth()
        body = json_body()
        _device_list(body, required=False)
        result = password_uia(uia, accounts, requester, body)
        devices = _device_list(result.clientdict, required=True)
        accounts.delete_devices(requester.user_id, devices, uia_session=result.session_id)
        return jsonify({})

    app.register_blueprint(bp)


def _device_list(body: dict[str, Any], *, required: bool) -> list[str]:
    if not required and "devices" not in body:
        return []
    devices = require(body, "devices", list)
    if not all(isinstance(d, str) for d in devices):
        raise bad_json("'devices' must be a list of device IDs")
    return devices


def _shape(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"device_id": d["device_id"], "display_name": d["display_name"]}
    if d.get("last_seen_ts") is not None:
        out["last_seen_ts"] = d["last_seen_ts"]
    if d.get("last_seen_ip") is not None:
        out["last_seen_ip"] = d["last_seen_ip"]
    return out
