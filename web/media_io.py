"""Byte streaming for the media endpoints: an upload body goes to a temp file in the media
store in fixed-size chunks (hashed on the way, never held whole in memory), and a download
is streamed from disk in chunks, with the spec's safe-serving headers (content repository,
"Security considerations" and "Serving inline content").  Disk work runs in gevent's
thread pool."""
from __future__ import annotations

import hashlib
import os
import re
from typing import IO, Any, Iterator
from urllib.parse import quote

from flask import Response, request

from actors.media import blocking
from actors.thumbnailer import remove_quietly
from atrium.errors import not_found, too_large
from web.http import read_stream

CHUNK = 256 * 1024

CSP = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
       "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")

# The spec's list of types that may be served with Content-Disposition: inline.
INLINE_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime", "audio/mp4", "audio/webm",
    "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav", "audio/x-wav",
    "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE_RE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\]*\"))*$")
_PLAIN_FILENAME_RE = re.compile(r"^[A-Za-z0-9 !#$&'()*+,\-.:<=>?@\[\]^_`{|}~]+$")


def base_type(media_type: str | None) -> str:
    return (media_type or "").split(";", 1)[0].strip().lower()


def clean_content_type(value: str | None) -> str:
    """The uploader's Content-Type if well-formed, else application/octet-stream."""
    v = (value or "").strip()
    if not v or len(v) > 255 or not _CONTENT_TYPE_RE.match(v):
        return "application/octet-stream"
    return v


def served_content_type(media_type: str | None) -> str:
    t = clean_content_type(media_type)
    if base_type(t).startswith("text/") and "charset" not in t.lower():
        t += "; charset=utf-8"
    return t


def content_disposition(media_type: str | None, filename: str | None, *,
                        force_inline: bool = False) -> str:
    """``inline`` only for the spec's safe types; the name plain when it is simple ASCII,
    else RFC 6266 / 5987 ``filename*=utf-8''…`` (so no byte of it can break the header)."""
    kind = "inline" if force_inline or base_type(media_type) in INLINE_TYPES else "attachment"
    if not filename:
        return kind
    if _PLAIN_FILENAME_RE.match(filename):
        return f'{kind}; filename="{filename}"'
    return f"{kind}; filename*=utf-8''{quote(filename, safe='')}"


def safe_headers(resp: Response, *, authenticated: bool) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    resp.headers["X-Robots-Tag"] = "noindex, nofollow, noarchive, noimageindex"
    # media never changes once uploaded; authenticated copies must not sit in shared caches
    resp.headers["Cache-Control"] = ("private, max-age=86400" if authenticated
                                     else "public, max-age=86400, s-maxage=86400")
    return resp


def _read_chunks(f: IO[bytes]) -> Iterator[bytes]:
    try:
        while True:
            chunk = blocking(f.read, CHUNK)
            if not chunk:
                return
            yield chunk
    finally:
        f.close()


def _open_sized(path: str) -> tuple[IO[bytes], int]:
    f = open(path, "rb")  # noqa: SIM115 - closed by the streaming generator
    return f, os.fstat(f.fileno()).st_size


def file_response(path: str, media_type: str, disposition: str, *,
                  authenticated: bool) -> Response:
    """Stream a stored file in CHUNK-sized reads; 404 if it is gone from disk."""
    try:
        f, size = blocking(_open_sized, path)
    except FileNotFoundError:
        raise not_found("Media not found") from None
    resp = Response(_read_chunks(f), status=200, content_type=media_type,
                    direct_passthrough=True)
    resp.headers["Content-Length"] = str(size)
    resp.headers["Content-Disposition"] = disposition
    return safe_headers(resp, authenticated=authenticated)


def _write_chunk(f: IO[bytes], h: Any, chunk: bytes) -> None:
    h.update(chunk)  # hashlib releases the GIL for large buffers
    f.write(chunk)


def _finish_file(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())  # a 200 means the bytes are on disk
    f.close()


def receive_upload(tmp_path: str, max_size: int) -> tuple[int, str]:
    """Stream the request body to ``tmp_path``; return (length, sha256 hex).

    413 M_TOO_LARGE if Content-Length says too much (before reading anything) or once the
    bytes read pass the limit.  The temp file is removed on any failure."""
    length = request.content_length
    if length is not None and length > max_size:
        raise too_large(f"Cannot upload files larger than {max_size} bytes")
    f = blocking(open, tmp_path, "wb")
    h = hashlib.sha256()
    total = 0
    try:
        while True:
            chunk = read_stream(CHUNK, "M_UNKNOWN")  # a reset or bad chunking: 400
            if not chunk:
                break
            total += len(chunk)
            if total > max_size:
                raise too_large(f"Cannot upload files larger than {max_size} bytes")
            blocking(_write_chunk, f, h, chunk)
        blocking(_finish_file, f)
    except BaseException:
        f.close()
        remove_quietly(tmp_path)
        raise
    return total, h.hexdigest()
