"""Server discovery and capabilities: ``/_matrix/client/versions``, ``/.well-known/matrix/*``,
``/_matrix/client/v3/capabilities``."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify

from atrium.errors import MatrixError
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from web.auth import require_auth

SPEC_VERSIONS = ["r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0",
                 "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
                 "v1.9", "v1.10", "v1.11", "v1.12"]


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    bp = Blueprint("discovery", __name__)

    @bp.get("/_matrix/client/versions")
    def versions() -> Any:
        """GET /_matrix/client/versions"""
        return jsonify({"versions": SPEC_VERSIONS, "unstable_features": {}})

    @bp.get("/.well-known/matrix/client")
    def wellknown_client() -> Any:
        """GET /.well-known/matrix/client"""
        return jsonify({"m.homeserver": {"base_url": config.public_baseurl.rstrip("/")}})

    @bp.get("/.well-known/matrix/server")
    def wellknown_server() -> Any:
        """GET /.well-known/matrix/server (only when serve_server_wellknown is on)"""
        if not config.serve_server_wellknown:
            raise MatrixError(404, "M_NOT_FOUND", "No .well-known/matrix/server configured")
        return jsonify({"m.server": delegated_server(config.public_baseurl)})

    @bp.get("/_matrix/client/v3/capabilities")
    def capabilities() -> Any:
        """GET /_matrix/client/v3/capabilities"""
        require_auth(allow_guest=True)
        return jsonify({"capabilities": {
            "m.change_password": {"enabled": True},
            "m.room_versions": {
                "default": config.default_room_version,
                "available": {v: ("stable" if rv.stable else "unstable")
                              for v, rv in KNOWN_ROOM_VERSIONS.items()},
            },
            "m.set_displayname": {"enabled": True},
            "m.set_avatar_url": {"enabled": True},
            "m.3pid_changes": {"enabled": config.threepid.email is not None},  # e-mail here
            "m.get_login_token": {"enabled": False},
        }})

    app.register_blueprint(bp)


def delegated_server(public_baseurl: str) -> str:
    """Where other servers should reach us, as Synapse announces it: the host of
    ``public_baseurl`` with its port, 443 when it has none (federation is HTTPS, normally
    through the same reverse proxy as the client API)."""
    from urllib.parse import urlsplit

    parts = urlsplit(public_baseurl)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port or 443}"
