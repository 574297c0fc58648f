"""Request helpers for handlers: JSON bodies with the spec's errors, query parameters."""
from __future__ import annotations

import json
from typing import Any

from flask import current_app, request

from atrium.errors import MatrixError, bad_json, invalid_param, missing_param, not_json, too_large


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_body_limited(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(f"Request body is {length} bytes; the limit is {limit}")
    data = request.stream.read(limit + 1)
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
    if not isinstance(body, dict):
        raise not_json("Content must be a JSON object.")
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
    v = request.args.get(name)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        raise invalid_param(f"Query parameter '{name}' must be an integer") from None
    if minimum is not None and n < minimum:
        raise invalid_param(f"Query parameter '{name}' must be >= {minimum}")
    if maximum is not None and n > maximum:
        n = maximum
    return n


def query_bool(name: str, default: bool = False) -> bool:
    v = request.args.get(name)
    if v is None:
        return default
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise invalid_param(f"Query parameter '{name}' must be true or false")


def unrecognized_method() -> MatrixError:
    return MatrixError(405, "M_UNRECOGNIZED", "Unrecognized request method")
