"""A user's devices in Synapse's admin API (docs: Synapse "User Admin API", "Manage
devices"): ``GET/POST /_synapse/admin/v2/users/{userId}/devices``,
``GET/PUT/DELETE …/devices/{deviceId}`` and ``POST …/delete_devices``.  Deleting goes through
``AccountStore.delete_devices`` (tokens, keys, to-device inbox, pushers and the device-list
change follow in its transaction); deleting an unknown device succeeds, as in Synapse."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError, bad_json, missing_param, not_found
from store.accounts import AccountStore
from store.admin_users import AdminUserStore
from web.auth import require_admin
from web.http import json_body
from web.synapse_admin_users import A2, audit, existing_user
from web.uia import reject_nul_path_values, storable_text

MAX_DEVICE_NAME = 100


def register(app: Flask, runtime: Any) -> None:
    accounts: AccountStore = runtime.parts["accounts"]
    store: AdminUserStore = runtime.parts["admin_users"]
    server = runtime.config.server_name
    bp = Blueprint("synapse_admin_devices", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)

    def user(user_id: str, refusal: str = "Can only lookup local users") -> str:
        return existing_user(accounts, user_id, server, refusal, missing="Unknown user")

    @bp.get(f"{A2}/users/<user_id>/devices")
    def list_devices(user_id: str) -> Any:
        """GET /_synapse/admin/v2/users/{userId}/devices"""
        require_admin()
        devices = store.devices(user(user_id))
        return jsonify({"devices": devices, "total": len(devices)})

    @bp.post(f"{A2}/users/<user_id>/devices")
    def create_device(user_id: str) -> Any:
        """POST /_synapse/admin/v2/users/{userId}/devices: a device without a token"""
        require_admin()
        user_id = user(user_id, "Can only create devices for local users")
        body = json_body()
        device_id = body.get("device_id")
        if not device_id:
            raise MatrixError(400, "M_UNKNOWN", "Missing device_id")
        if not isinstance(device_id, str) or len(device_id) > 255:
            raise MatrixError(400, "M_UNKNOWN", "device_id must be a string")
        store.add_device(user_id, storable_text("device_id", device_id))
        return jsonify({}), 201

    @bp.get(f"{A2}/users/<user_id>/devices/<device_id>")
    def get_device(user_id: str, device_id: str) -> Any:
        """GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
        require_admin()
        found = store.devices(user(user_id), device_id)
        if not found:
            raise not_found("No device found")
        return jsonify(found[0])

    @bp.put(f"{A2}/users/<user_id>/devices/<device_id>")
    def put_device(user_id: str, device_id: str) -> Any:
        """PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId} (``display_name``)"""
        require_admin()
        user_id = user(user_id)
        body = json_body(optional=True)
        name = body.get("display_name")
        if name is not None:
            if not isinstance(name, str):
                raise bad_json("'display_name' must be a string")
            if len(name) > MAX_DEVICE_NAME:
                raise MatrixError(400, "M_TOO_LARGE", "Device display name is too long"
                                  f" (max {MAX_DEVICE_NAME})")
            storable_text("display_name", name)
        if not accounts.rename_device(user_id, device_id, name):
            raise not_found("Unknown device")
        return jsonify({})

    @bp.delete(f"{A2}/users/<user_id>/devices/<device_id>")
    def delete_device(user_id: str, device_id: str) -> Any:
        """DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
        req = require_admin()
        user_id = user(user_id)
        accounts.delete_devices(user_id, [device_id])
        audit(req, "deleted a device of", user_id, device_id=device_id)
        return jsonify({})

    @bp.post(f"{A2}/users/<user_id>/delete_devices")
    def delete_devices(user_id: str) -> Any:
        """POST /_synapse/admin/v2/users/{userId}/delete_devices"""
        req = require_admin()
        user_id = user(user_id)
        body = json_body()
        if "devices" not in body:
            raise missing_param("Missing params: ['devices']")
        devices = body["devices"]
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise bad_json("'devices' must be a list of device IDs")
        for d in devices:
            storable_text("devices", d)
        accounts.delete_devices(user_id, list(dict.fromkeys(devices)))
        audit(req, "deleted devices of", user_id, devices=len(devices))
        return jsonify({})

    app.register_blueprint(bp)
