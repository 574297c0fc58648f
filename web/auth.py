"""Access-token authentication for every authenticated route (spec: client-server-api,
"Client Authentication"): ``Authorization: Bearer`` or the deprecated ``access_token``
query parameter; 401 ``M_MISSING_TOKEN`` / ``M_UNKNOWN_TOKEN`` (``soft_logout`` for an
expired token)."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request

from atrium.errors import MatrixError
from store.accounts import AccountStore, now_ms


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str | None
    is_admin: bool
    is_guest: bool
    token_hash: str


def extract_token() -> str | None:
    return token_from(request.headers.get("Authorization"), request.args.get("access_token"))


def token_from(header: str | None, query_token: str | None) -> str | None:
    """The access token of a request from its ``Authorization`` header, else from its
    ``access_token`` query parameter."""
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise MatrixError(401, "M_MISSING_TOKEN", "Invalid Authorization header")
        return value.strip()
    return query_token or None


def require_auth(*, allow_guest: bool = False) -> Requester:
    """The authenticated user of this request, or a 401/403 Matrix error (403
    ``M_GUEST_ACCESS_FORBIDDEN`` for a guest unless ``allow_guest``: client-server-api
    "Guest Access" lists what guests may call)."""
    cached = getattr(g, "requester", None)
    if cached is not None:
        if cached.is_guest and not allow_guest:   # a second check in the same request
            raise _guest_forbidden()
        return cached
    accounts: AccountStore = current_app.extensions["atrium"].parts["accounts"]
    req = authenticate(accounts, extract_token(), allow_guest=allow_guest)
    g.requester = req
    return req


def authenticate(accounts: AccountStore, token: str | None, *,
                 allow_guest: bool = False) -> Requester:
    """Who ``token`` belongs to, or a 401/403 Matrix error."""
    if token is None:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    info = accounts.get_token(token)
    if info is None or info.deactivated:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
    if info.expires_ts is not None and info.expires_ts <= now_ms():
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "Access token has expired", soft_logout=True)
    if info.is_guest and not allow_guest:
        raise _guest_forbidden()
    return Requester(info.user_id, info.device_id, info.is_admin, info.is_guest, info.token_hash)


def _guest_forbidden() -> MatrixError:
    return MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")


def require_admin() -> Requester:
    req = require_auth()
    if not req.is_admin:
        raise MatrixError(403, "M_FORBIDDEN", "You are not a server admin")
    return req
