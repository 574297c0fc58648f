"""Cross-signing (client-server-api modules/end_to_end_encryption.md "Cross-signing",
cross_signing.yaml): ``POST /keys/device_signing/upload`` and
``POST /keys/signatures/upload``.

Uploading cross-signing keys needs User-Interactive Auth (``m.login.password``) except for
the first upload, or a repeat of exactly the keys already stored (cross_signing.yaml, v1.11).
Every accepted change is announced in the device-list stream of the key's owner.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from protocol.e2e_keys import InvalidKey
from store.e2e_cross_signing import (CrossSigningStore, check_cross_signing_upload, differs,
                                     needs_auth)
from web.account import password_uia
from web.auth import require_auth
from web.http import json_body

P = "/_matrix/client/v3"
MAX_SIGNED_KEYS = 1000


def register(app: Flask, runtime: Any) -> None:
    xsign: CrossSigningStore = runtime.parts["cross_signing"]
    accounts = runtime.parts["accounts"]
    uia = runtime.parts["uia"]
    device_lists = runtime.parts["sync"].device_lists
    bp = Blueprint("cross_signing", __name__)

    @bp.post(f"{P}/keys/device_signing/upload")
    def device_signing_upload() -> Any:
        """POST /_matrix/client/v3/keys/device_signing/upload"""
        req = require_auth()
        body = json_body()
        existing = xsign.keys_of(req.user_id)
        session = None
        try:
            keys = check_cross_signing_upload(req.user_id, body, existing)
            if needs_auth(keys, existing):
                result = password_uia(uia, accounts, req, body)
                session = result.session_id
                keys = check_cross_signing_upload(req.user_id, result.clientdict, existing)
        except InvalidKey as e:
            raise MatrixError(400, e.errcode, e.error) from None
        if differs(keys, existing):
            xsign.upload(req.user_id, keys, uia_session=session)
            device_lists.mark_changed([req.user_id])
        return jsonify({})

    @bp.post(f"{P}/keys/signatures/upload")
    def signatures_upload() -> Any:
        """POST /_matrix/client/v3/keys/signatures/upload"""
        req = require_auth(allow_guest=True)
        body = json_body()
        if sum(len(v) if isinstance(v, dict) else 1 for v in body.values()) > MAX_SIGNED_KEYS:
            raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_SIGNED_KEYS} keys")
        checked = xsign.check_signatures(req.user_id, body)
        xsign.store_signatures(checked.rows)
        if checked.changed_users:
            device_lists.mark_changed(checked.changed_users)
        return jsonify({"failures": checked.failures})

    app.register_blueprint(bp)
