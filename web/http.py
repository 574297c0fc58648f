"""Request helpers for handlers: JSON bodies with the spec's errors, query parameters."""
from __future__ import annotations

import json
import os
import re
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import HTTPException

from atrium.errors import MatrixError, bad_json, invalid_param, missing_param, not_json, too_large


#: Deepest nesting of arrays/objects a request body may have.  Nothing in the spec comes
#: close; a deeper body would only exhaust the stack later (canonical JSON, hashing).
MAX_JSON_DEPTH = 100
#: The largest integer either database engine stores (BIGINT / SQLite INTEGER).
MAX_INT64 = 2 ** 63 - 1

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "X-Request-Id, Server",
}
#: (lower-case name, name, value) set on every response that does not set them itself
DEFAULT_HEADERS = tuple((k.lower(), k, v) for k, v in {
    **CORS_HEADERS, "Cache-Control": "no-cache, no-store, must-revalidate"}.items())
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id(environ: dict[str, Any]) -> str:
    """The id of a request: the client's ``X-Request-Id`` when it is safe and short (a
    client may name its request to find it in traces), else a fresh one."""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    return given if _REQUEST_ID.match(given) else os.urandom(6).hex()


def loggable_path(path: str, query_string: str) -> str:
    """A request's path and query for the access log, never with an access token in it."""
    if "access_token" in query_string:
        return path + "?<redacted>"
    return f"{path}?{query_string}" if query_string else path


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_surrogate_free(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_value(value: Any) -> None:
    """Reject what parses but cannot be stored, hashed or sent on: lone UTF-16 surrogates
    (``"\\ud800"``) in keys or strings (400 M_INVALID_PARAM, as ``web.uia.storable_text``
    answers for single fields), numbers out of float range (``1e400`` parses as infinity)
    and nesting deeper than ``MAX_JSON_DEPTH`` (400 M_BAD_JSON)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, str):
            if not _is_surrogate_free(v):
                raise invalid_param(f"'{where}' is not valid Unicode (lone surrogate)")
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise bad_json(f"'{where}' is a number out of range")
        elif isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise bad_json(f"Content is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                for k, item in v.items():
                    if not _is_surrogate_free(k):
                        raise invalid_param("A key is not valid Unicode (lone surrogate)")
                    stack.append((item, f"{where}.{k}" if where else k, depth + 1))
            else:
                stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v))


def read_stream(size: int, errcode: str = "M_NOT_JSON") -> bytes:
    """``request.stream.read(size)``.  A body that cannot be read -- the client reset the
    connection, or sent a malformed or truncated chunked encoding (gunicorn raises OSError,
    ``NoMoreData`` or a ``ParseException``) -- is the client's fault: 400, never a 500."""
    try:
        return request.stream.read(size)
    except (MatrixError, HTTPException):
        raise
    except Exception as e:  # noqa: BLE001 - whatever the WSGI server's body reader raises
        raise MatrixError(400, errcode, f"Could not read the request body "
                          f"({type(e).__name__})") from None


def read_body_limited(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(f"Request body is {length} bytes; the limit is {limit}")
    data = read_stream(limit + 1)
    if len(data) > limit:
        raise too_large(f"Request body is over the limit of {limit} bytes")
    return data


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (400 M_NOT_JSON / M_BAD_JSON, 413 M_TOO_LARGE)."""
    cached = request.environ.get("atrium.json_body")
    if cached is not None:
        return cached
    limit = current_app.config["ATRIUM_MAX_BODY"]
    raw = read_body_limited(limit)
    if not raw.strip():
        if optional:
            request.environ["atrium.json_body"] = {}
            return {}
        raise not_json("Request body is empty; expected a JSON object")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise not_json("Content not JSON.") from None
    except RecursionError:
        raise bad_json(f"Content is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise bad_json("Content must be a JSON object.")
    check_json_value(body)
    request.environ["atrium.json_body"] = body
    return body


def require(body: dict[str, Any], key: str, kind: type | tuple[type, ...],
            what: str | None = None) -> Any:
    """A required key of a given JSON type (400 M_MISSING_PARAM / M_BAD_JSON)."""
    if key not in body:
        raise missing_param(f"Missing '{key}'")
    return check_type(body, key, kind, what)


def check_type(body: dict[str, Any], key: str, kind: type | tuple[type, ...],
               what: str | None = None, default: Any = None) -> Any:
    if key not in body or body[key] is None and default is not None:
        return default
    v = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds:
        raise bad_json(f"'{key}' must be {what or _kind_name(kinds)}")
    if not isinstance(v, kinds):
        raise bad_json(f"'{key}' must be {what or _kind_name(kinds)}")
    return v


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object",
             list: "an array", float: "a number", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def query_int(name: str, default: int | None = None, *, minimum: int | None = None,
              maximum: int | None = None) -> int | None:
    return parse_int(name, request.args.get(name), default, minimum=minimum, maximum=maximum)


def parse_int(name: str, v: str | None, default: int | None = None, *,
              minimum: int | None = None, maximum: int | None = None) -> int | None:
    """Query parameter ``name`` (given as ``v``) as an integer; 400 M_INVALID_PARAM if it is
    not one or is below ``minimum``; above ``maximum`` it is capped."""
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        raise invalid_param(f"Query parameter '{name}' must be an integer") from None
    if maximum is None and not -MAX_INT64 <= n <= MAX_INT64:
        raise invalid_param(f"Query parameter '{name}' is out of range")
    if minimum is not None and n < minimum:
        raise invalid_param(f"Query parameter '{name}' must be >= {minimum}")
    if maximum is not None and n > maximum:
        n = maximum
    return n


def query_bool(name: str, default: bool = False) -> bool:
    return parse_bool(name, request.args.get(name), default)


def parse_bool(name: str, v: str | None, default: bool = False) -> bool:
    if v is None:
        return default
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise invalid_param(f"Query parameter '{name}' must be true or false")


def unrecognized_method() -> MatrixError:
    return MatrixError(405, "M_UNRECOGNIZED", "Unrecognized request method")
