"""Canonical JSON: the byte encoding every hash and signature is computed over.

Owns the encoding (delegated to the ``canonicaljson`` package: shortest UTF-8 JSON, keys
sorted by code point) and the strict value checks that room versions 6+ impose.  Spec:
appendices.md, "Canonical JSON"; rooms/fragments/v1-canonical-json.md (v1–v5 tolerate
out-of-range values) and v6-canonical-json.md (v6+ reject them).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import canonicaljson

__all__ = [
    "CanonicalJsonError",
    "CANONICALJSON_MAX_INT",
    "CANONICALJSON_MIN_INT",
    "encode_canonical_json",
    "check_strict_json",
    "is_strict_json",
]

#: "Numbers in the JSON must be integers in the range [-(2**53)+1, (2**53)-1]"
CANONICALJSON_MAX_INT = 2**53 - 1
CANONICALJSON_MIN_INT = -CANONICALJSON_MAX_INT


class CanonicalJsonError(ValueError):
    """A value cannot appear in strict canonical JSON (room versions 6+)."""


def encode_canonical_json(obj: Any) -> bytes:
    """The canonical JSON encoding of ``obj`` as UTF-8 bytes.

    Floats are encoded as Python writes them: rooms v1–v5 may carry them and the network
    (and its hashes) agree on that encoding; use :func:`check_strict_json` to refuse them.
    NaN/Infinity and lone surrogates raise ``ValueError``.
    """
    return canonicaljson.encode_canonical_json(obj)


def check_strict_json(obj: Any) -> None:
    """Raise :class:`CanonicalJsonError` if ``obj`` holds a float or an out-of-range int.

    Rooms v6+ ("Canonical JSON" in rooms/v6.md): integers must lie in
    ``[-(2**53)+1, 2**53-1]`` and floats are not permitted at all.
    """
    # Iterative walk: event content is attacker-controlled and may be deeply nested.
    stack: list[Any] = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if isinstance(v, int):
            if not CANONICALJSON_MIN_INT <= v <= CANONICALJSON_MAX_INT:
                raise CanonicalJsonError(f"integer out of canonical JSON range: {v}")
        elif isinstance(v, float):
            raise CanonicalJsonError(f"float not allowed in canonical JSON: {v!r}")
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, Mapping):  # e.g. frozen/immutable dicts
            stack.extend(v.values())
        else:
            raise CanonicalJsonError(f"not a JSON value: {type(v).__name__}")


def is_strict_json(obj: Any) -> bool:
    try:
        check_strict_json(obj)
    except CanonicalJsonError:
        return False
    return True
