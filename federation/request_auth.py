"""Inbound request authentication: the ``Authorization: X-Matrix`` header of a request from
another server, ``federation_domain_whitelist``, and ``rc_federation`` per origin.

Spec: server-server-api.md "Request Authentication" — the signed object is
``{method, uri, origin, destination, content}`` with ``uri`` the request target exactly as
sent (path and query string, still percent-encoded) and ``destination`` our server name;
``destination`` in the header must be our name when present (absent: accepted, older
servers); several X-Matrix credentials may be sent and any one valid signature by the origin
is enough.

For route authors (see :func:`federation_route`)::

    fed_route = federation_route(fed.verifier)

    @app.put("/_matrix/federation/v1/send/<txn_id>")
    @fed_route
    def send(origin, txn_id): ...

Errors (``atrium.errors.MatrixError``): no / malformed X-Matrix header, wrong destination,
key not found or not fetchable, bad signature → 401 ``M_UNAUTHORIZED``; body not JSON → 400
``M_NOT_JSON``; origin not whitelisted → 403 ``M_FORBIDDEN``; too many requests → 429
``M_LIMIT_EXCEEDED``.
"""
from __future__ import annotations

import functools
import json
import logging
from typing import Any, Callable, ContextManager
from urllib.parse import quote, urlsplit

from atrium.access_log import ORIGIN
from atrium.errors import MatrixError, forbidden, not_json
from federation.ratelimit import FederationRateLimiter
from protocol.ids import is_valid_server_name
from protocol.signing import SignatureError
from protocol.xmatrix import (XMatrix, XMatrixError, is_x_matrix, parse_x_matrix,
                              split_credentials, verify_request)

log = logging.getLogger(__name__)

#: the parsed JSON body, left in the WSGI environ for the handler (None: no body)
#: the largest request body a federation route reads
MAX_FEDERATION_BODY = 16 * 1024 * 1024
BODY_ENVIRON_KEY = "atrium.federation.body"
#: where the authenticated origin server is left for the access line (atrium/access_log.py)
ORIGIN_ENVIRON_KEY = ORIGIN


def unauthorized(msg: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", msg)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def request_target(environ: dict[str, Any]) -> str:
    """The request target as the client sent it: gunicorn's ``RAW_URI`` (or
    ``REQUEST_URI``), else rebuilt from the decoded path and the raw query string."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw:
        if not raw.startswith("/"):  # absolute-form target: keep path and query
            parts = urlsplit(raw)
            raw = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        qs = environ.get("QUERY_STRING", "")
        if "?" not in raw and qs:
            raw += "?" + qs   # werkzeug's test client leaves a separate query string out
        return raw
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        path = quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    except UnicodeEncodeError:
        path = quote(path, safe="/:@!$&'()*+,;=-._~")
    qs = environ.get("QUERY_STRING", "")
    return path + ("?" + qs if qs else "")


class RequestVerifier:
    def __init__(self, config: Any, keyring: Any, *,
                 limiter: FederationRateLimiter | None = None) -> None:
        self.server_name: str = config.server_name
        self.fc = config.federation
        self.keyring = keyring
        self.limiter = limiter or FederationRateLimiter(self.fc.rc_federation)
        self.on_origin_seen: Callable[[str], None] = lambda origin: None

    # -- authentication ---------------------------------------------------------------------

    def authenticate(self, flask_request: Any) -> str:
        """The origin server of a correctly signed request; raises MatrixError otherwise."""
        creds = self._credentials(flask_request)
        origin = creds[0].origin
        wl = self.fc.domain_whitelist
        if wl is not None and origin not in wl:
            raise forbidden(f"Federation with {origin} is not allowed on this server")
        content = self._content(flask_request)
        environ = flask_request.environ
        uri = request_target(environ)
        method = flask_request.method
        key_ids = list(dict.fromkeys(c.key for c in creds))
        keys = self._keys(origin, key_ids)
        for cred in creds:
            vk = keys.get(cred.key)
            if vk is None:
                continue
            try:
                verify_request(vk, method, uri, origin, self.server_name, content, cred.sig)
            except SignatureError:
                continue
            self._seen(origin)
            return origin
        if not any(k in keys for k in key_ids):
            raise unauthorized(f"No verify key of {origin} for {', '.join(key_ids)} could "
                               "be found")
        raise unauthorized(f"Invalid request signature from {origin}")

    def _credentials(self, flask_request: Any) -> list[XMatrix]:
        values = flask_request.headers.getlist("Authorization")
        raw = [c for v in values for c in split_credentials(v) if is_x_matrix(c)]
        if not raw:
            raise unauthorized("Missing X-Matrix Authorization header")
        creds: list[XMatrix] = []
        problem = None
        for text in raw:
            try:
                creds.append(parse_x_matrix(text))
            except XMatrixError as e:
                problem = str(e)
        if not creds:
            raise unauthorized(f"Malformed X-Matrix Authorization header: {problem}")
        origins = {c.origin for c in creds}
        if len(origins) > 1:
            raise unauthorized("X-Matrix headers name more than one origin")
        origin = creds[0].origin
        if not is_valid_server_name(origin):
            raise unauthorized(f"Bad origin in X-Matrix header: {origin!r}")
        for c in creds:
            if c.destination is not None and c.destination != self.server_name:
                raise unauthorized(f"Destination mismatch in X-Matrix header: "
                                   f"{c.destination!r} is not {self.server_name!r}")
        return creds

    @staticmethod
    def _content(flask_request: Any) -> Any:
        # bounded before it is read: werkzeug answers 413 past the limit (a transaction of
        # 50 PDUs of 64 KiB and 100 EDUs stays well under it)
        flask_request.max_content_length = MAX_FEDERATION_BODY
        raw = flask_request.get_data(cache=True)
        if not raw:
            flask_request.environ[BODY_ENVIRON_KEY] = None
            return None
        try:
            content = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise not_json("Request body is not valid JSON") from None
        flask_request.environ[BODY_ENVIRON_KEY] = content
        return content

    def _keys(self, origin: str, key_ids: list[str]) -> dict[str, Any]:
        if self.keyring is None:
            raise unauthorized("Server keys of other servers cannot be fetched here")
        try:
            keys = self.keyring.get_keys(origin, key_ids)
        except Exception as e:  # noqa: BLE001 - any lookup failure is a 401 for the caller
            log.info("request auth: keys %s of %s not available: %s", key_ids, origin, e)
            raise unauthorized(f"Failed to fetch verify key {', '.join(key_ids)} of "
                               f"{origin}: {getattr(e, 'message', None) or e}") from None
        return keys if isinstance(keys, dict) else {}

    def _seen(self, origin: str) -> None:
        try:
            self.on_origin_seen(origin)
        except Exception:  # noqa: BLE001 - a hook must never fail the request
            log.exception("on_origin_seen(%s) failed", origin)

    # -- rate limiting ------------------------------------------------------------------------

    def limited(self, origin: str) -> ContextManager[None]:
        """``rc_federation`` for one request of ``origin`` (sleep / 429 / concurrency)."""
        return self.limiter.limited(origin)


View = Callable[..., Any]


def federation_route(verifier: RequestVerifier) -> Callable[[View], View]:
    """Decorator for a federation view: authenticates the request, then runs the view as
    ``view(origin, *args, **kwargs)`` inside ``verifier.limited(origin)``.  The parsed JSON
    body is ``request.environ[BODY_ENVIRON_KEY]`` (``request.get_json()`` works too)."""
    from flask import request  # noqa: PLC0415 - flask only where routes are served

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            origin = verifier.authenticate(request)
            request.environ[ORIGIN_ENVIRON_KEY] = origin   # the access line names the server
            with verifier.limited(origin):
                return view(origin, *args, **kwargs)
        return wrapper
    return decorate


class LazyVerifier:
    """``fed.verifier`` looked up at request time (a test may replace it after the routes
    are installed); 401 while there is none."""

    def __init__(self, fed: Any) -> None:
        self.fed = fed

    def _v(self) -> Any:
        v = self.fed.verifier
        if v is None:
            raise MatrixError(401, "M_UNAUTHORIZED",
                              "Signed federation requests cannot be verified here")
        return v

    def authenticate(self, flask_request: Any) -> str:
        return self._v().authenticate(flask_request)

    def limited(self, origin: str) -> Any:
        return self._v().limited(origin)


def signed_route(fed: Any) -> Callable[[View], View]:
    """:func:`federation_route` over ``fed.verifier`` as it is at each request."""
    return federation_route(LazyVerifier(fed))  # type: ignore[arg-type]


def require_origin(verifier: RequestVerifier) -> str:
    """Authenticate the current Flask request (no rate limiting): its origin."""
    from flask import request  # noqa: PLC0415
    return verifier.authenticate(request)
