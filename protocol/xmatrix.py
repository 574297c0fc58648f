"""The ``Authorization: X-Matrix …`` header of server-server requests: the JSON object a
request signature covers, formatting the header, parsing it, and checking a signature.

Pure (no I/O).  Spec: server-server-api.md "Request Authentication" (the header grammar is
RFC 9110 section 11.4 auth-params: case-insensitive scheme and names, values a token or a
quoted string with backslash escapes, spaces/tabs around commas; colons allowed unquoted for
older servers; unknown parameters ignored), appendices.md "Signing JSON".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import nacl.exceptions

from protocol.canonical import encode_canonical_json
from protocol.hashing import decode_base64
from protocol.signing import SignatureError, SigningKey, VerifyKey, key_id, sign_json

__all__ = ["XMatrix", "XMatrixError", "request_json", "sign_request", "format_header",
           "parse_x_matrix", "is_x_matrix", "split_credentials", "verify_request"]

SCHEME = "X-Matrix"


class XMatrixError(ValueError):
    """An ``Authorization`` header that is not a usable X-Matrix header."""


@dataclass(frozen=True)
class XMatrix:
    origin: str
    destination: str | None   # absent in headers of servers older than spec v1.3
    key: str                  # "ed25519:abc"
    sig: str                  # unpadded base64


def request_json(method: str, uri: str, origin: str, destination: str,
                 content: Any = None) -> dict[str, Any]:
    """The object whose signature is the request's ("Step 1 sign JSON"); ``content`` (the
    parsed JSON body) is left out when None."""
    obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin,
                           "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_header(origin: str, destination: str, key: str, sig: str) -> str:
    """``X-Matrix origin="…",destination="…",key="…",sig="…"`` in the form the spec asks
    senders to use for older servers (one space, lower-case names, no spaces at commas)."""
    return (f"{SCHEME} origin={_quote(origin)},destination={_quote(destination)},"
            f"key={_quote(key)},sig={_quote(sig)}")


def sign_request(signing_key: SigningKey, method: str, uri: str, origin: str,
                 destination: str, content: Any = None) -> str:
    """The ``Authorization`` header value for a request from ``origin`` to ``destination``.
    ``uri`` is the path with its query string exactly as sent (``/_matrix/…?a=b``)."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin,
                       signing_key)
    kid = key_id(signing_key)
    return format_header(origin, destination, kid, signed["signatures"][origin][kid])


def is_x_matrix(header: str) -> bool:
    """Whether an ``Authorization`` value uses the X-Matrix scheme (case-insensitive)."""
    scheme = header.lstrip(" \t").split(" ", 1)[0].split("\t", 1)[0]
    return scheme.lower() == SCHEME.lower()


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        # skip separators: spaces, tabs and commas between parameters
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise XMatrixError(f"parameter without '=': {text[i:]!r}")
        name = text[i:eq].strip(" \t").lower()
        if not name or any(c in name for c in ' \t,"'):
            raise XMatrixError(f"bad parameter name: {text[i:eq]!r}")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise XMatrixError("unterminated quoted value")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise XMatrixError("dangling backslash in quoted value")
                    chars.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                chars.append(c)
                i += 1
            value = "".join(chars)
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ",":
                raise XMatrixError(f"junk after quoted value of {name!r}")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip(" \t")
            if not value or any(c in value for c in ' \t"\\'):
                raise XMatrixError(f"bad unquoted value of {name!r}")
            i = end
        out.setdefault(name, value)
    return out


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
#: after a comma: the start of another credential ("scheme name=…" or "scheme token68"),
#: not another parameter
_NEXT_CREDENTIAL = re.compile(
    rf"[ \t]*{_TOKEN}[ \t]+(?!=)(?:(?={_TOKEN}[ \t]*=)|(?=[-A-Za-z0-9._~+/]+=*[ \t]*(?:,|$)))")


def split_credentials(value: str) -> list[str]:
    """Split one ``Authorization`` value into its credentials.  Several ``Authorization``
    headers reach a WSGI app joined by commas (RFC 9110 5.3; gunicorn does so), e.g.
    ``X-Matrix origin=a,key=k,sig=s,X-Matrix origin=a,key=k2,sig=t``."""
    out: list[str] = []
    start = 0
    i, n = 0, len(value)
    quoted = False
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "," and _NEXT_CREDENTIAL.match(value, i + 1):
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    out.append(value[start:].strip(" \t"))
    return [c for c in out if c]


def parse_x_matrix(header: str) -> XMatrix:
    """Parse one ``Authorization`` value; raises :class:`XMatrixError` when it is not an
    X-Matrix header or lacks ``origin``, ``key`` or ``sig``."""
    if not isinstance(header, str):
        raise XMatrixError("header is not text")
    text = header.strip(" \t")
    scheme, _, rest = text.partition(" ")
    if "\t" in scheme:
        scheme, _, more = scheme.partition("\t")
        rest = more + " " + rest
    if scheme.lower() != SCHEME.lower():
        raise XMatrixError("not an X-Matrix authorization header")
    params = _params(rest)
    missing = [k for k in ("origin", "key", "sig") if not params.get(k)]
    if missing:
        raise XMatrixError(f"X-Matrix header lacks {', '.join(missing)}")
    key = params["key"]
    if ":" not in key:
        raise XMatrixError(f"bad key id {key!r}")
    dest = params.get("destination")
    return XMatrix(params["origin"], dest if dest else None, key, params["sig"])


def verify_request(verify_key: VerifyKey, method: str, uri: str, origin: str,
                   destination: str, content: Any, sig: str) -> None:
    """Check ``sig`` over the request object; raises
    :class:`~protocol.signing.SignatureError` when it does not verify."""
    try:
        message = encode_canonical_json(
            request_json(method, uri, origin, destination, content))
    except (ValueError, TypeError, RecursionError) as e:
        raise SignatureError(f"request from {origin} cannot be canonicalised") from e
    try:
        raw = decode_base64(sig)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"undecodable request signature from {origin}") from e
    try:
        verify_key.verify(message, raw)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as e:
        raise SignatureError(f"bad request signature from {origin}") from e
