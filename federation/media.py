"""Federation media (server-server-api.md "Content Repository", content_repository.yaml):

* served: ``GET /_matrix/federation/v1/media/download/{mediaId}`` and
  ``GET /_matrix/federation/v1/media/thumbnail/{mediaId}`` — signed requests, OUR local media
  only, answered ``multipart/mixed`` with a boundary: a JSON part ``{}`` then the bytes;
* used: :class:`RemoteMediaFetcher`, which the client API's download / thumbnail of
  ``mxc://other/…`` calls on a cache miss (``fed.extras["remote_media"]``).  It asks the
  origin's authenticated endpoint (signed; the answer's second part is the bytes or a
  ``Location`` to fetch them from), falls back to the deprecated
  ``/_matrix/media/v3/download/{serverName}/{mediaId}?allow_remote=false`` (unsigned) when the
  origin answers 404 ``M_UNRECOGNIZED`` / 400 / 405 / 501, enforces ``max_upload_size`` on
  the bytes, and has the media actor cache them (``CommitRemote``).  Concurrent requests for
  one item share one fetch; a cached item is never fetched again.

Failures a remote server causes answer the client with the spec's codes: 404 M_NOT_FOUND
(the origin has no such media), 502 M_TOO_LARGE (over the limit), 504 M_NOT_YET_UPLOADED,
502 M_UNKNOWN (unreachable, a broken answer), 403 M_FORBIDDEN (a server we may not talk to).

The media parts (store, files, actor) are ``runtime.parts["media"]``
(``actors.media.MediaParts``, built by ``web/media.py``); ``federation/`` never imports
``web/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from typing import IO, Any, Callable, Iterator, Mapping
from urllib.parse import quote, unquote

import gevent
import gevent.event
from flask import Blueprint, Flask, Response, g, request

from actors.media import (MEDIA_KEY, CommitRemote, MediaParts, blocking, thumbnail_file,
                          wait_uploaded)
from actors.thumbnailer import THUMBNAILABLE_TYPES, probe, remove_quietly
from atrium.errors import MatrixError, invalid_param, missing_param, not_found
from federation.request_auth import signed_route
from federation.errors import BadResponse, FederationError, Forbidden, RemoteHTTPError
from store.media import RemoteMedia, valid_media_id

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
CHUNK = 256 * 1024
DEFAULT_TIMEOUT_MS = 20_000
MAX_TIMEOUT_MS = 60_000
FETCH_TIMEOUT = 60.0           # seconds for one remote fetch (each request)
MULTIPART_SLACK = 64 * 1024    # bytes of multipart framing allowed over the size limit
LEGACY_FALLBACK = frozenset({400, 405, 501})
_BOUNDARY_RE = re.compile(r'boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;"]{1,200}))', re.I)
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE_RE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\]*\"))*$")


# ------------------------------------------------------------------------------ multipart

class MultipartError(ValueError):
    """The body is not the two-part multipart/mixed answer the spec describes."""


def _headers_of(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip().lower()] = value.strip()
    return out


def parse_multipart(content_type: str | None, body: bytes
                    ) -> tuple[Any, dict[str, str], bytes]:
    """(JSON of the first part, headers of the second part (lower-case names), bytes of the
    second part) of a ``multipart/mixed`` answer."""
    ct = content_type or ""
    if not ct.lower().startswith("multipart/"):
        raise MultipartError(f"not multipart: {ct[:100]!r}")
    m = _BOUNDARY_RE.search(ct)
    if m is None:
        raise MultipartError("no boundary")
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise MultipartError("boundary not found in the body")
    # the last delimiter closes the second part: the content may hold anything before it
    end = body.rfind(b"\r\n" + delim)
    pos = body.find(b"\r\n", start + len(delim))
    if pos < 0 or end <= pos:
        raise MultipartError("truncated body")
    pos += 2
    first_end = body.find(b"\r\n" + delim, pos)
    if first_end < 0 or first_end >= end:
        raise MultipartError("fewer than two parts")
    first = body[pos:first_end]
    second_start = body.find(b"\r\n", first_end + 2 + len(delim))
    if second_start < 0 or second_start > end:
        raise MultipartError("fewer than two parts")
    second = body[second_start + 2:end]

    def split(part: bytes) -> tuple[dict[str, str], bytes]:
        if part.startswith(b"\r\n"):
            return {}, part[2:]
        head, sep, rest = part.partition(b"\r\n\r\n")
        if not sep:
            return _headers_of(head), b""
        return _headers_of(head), rest

    h1, b1 = split(first)
    try:
        meta = json.loads(b1.decode("utf-8")) if b1.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise MultipartError("the first part is not JSON") from None
    h2, b2 = split(second)
    return meta, h2, b2


def multipart_frame(media_type: str, disposition: str, boundary: str | None = None
                    ) -> tuple[str, bytes, bytes]:
    """(Content-Type, bytes before the file, bytes after it) of a served answer."""
    b = boundary or secrets.token_hex(16)
    head = (f"--{b}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
            f"--{b}\r\nContent-Type: {media_type}\r\nContent-Disposition: {disposition}"
            "\r\n\r\n").encode("utf-8")
    tail = f"\r\n--{b}--\r\n".encode()
    return f"multipart/mixed; boundary={b}", head, tail


# ------------------------------------------------------------------------------ headers

def clean_content_type(value: str | None) -> str:
    v = (value or "").strip()
    if not v or len(v) > 255 or not _CONTENT_TYPE_RE.match(v):
        return "application/octet-stream"
    return v


def filename_of(disposition: str | None) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266, ``filename*`` first)."""
    if not disposition:
        return None
    m = re.search(r"filename\*\s*=\s*([A-Za-z0-9_-]+)''([^;]+)", disposition, re.I)
    name = None
    if m is not None:
        try:
            name = unquote(m.group(2).strip(), encoding=m.group(1), errors="strict")
        except (LookupError, UnicodeDecodeError):
            name = None
    if name is None:
        m = re.search(r'filename\s*=\s*(?:"([^"]*)"|([^;\s]+))', disposition, re.I)
        if m is not None:
            name = m.group(1) if m.group(1) is not None else m.group(2)
    if not name or len(name) > 1024 or "\x00" in name or "/" in name:
        return None
    return name


def _disposition(upload_name: str | None) -> str:
    if not upload_name:
        return "attachment"
    return f"attachment; filename*=utf-8''{quote(upload_name, safe='')}"


# ------------------------------------------------------------------------------ fetching

class RemoteMediaFetcher:
    """Fetches and caches media of other servers (see the module docstring).

    ``client()`` returns the FederationClient (None: nothing can be fetched); ``url_get(url,
    *, timeout, max_size) -> (status, headers, body)`` fetches a ``Location`` (default: an
    HTTPS GET over the client's transport, its IP blacklist applied)."""

    def __init__(self, server_name: str, media: MediaParts, client: Callable[[], Any], *,
                 max_size: int, url_get: Callable[..., Any] | None = None,
                 timeout: float = FETCH_TIMEOUT) -> None:
        self.server_name = server_name
        self.media = media
        self._client = client
        self.max_size = max_size
        self._url_get = url_get
        self.timeout = timeout
        self._inflight: dict[tuple[str, str], gevent.event.AsyncResult] = {}
        self.fetches = 0  # remote fetches started (tests and stats)

    def get(self, origin: str, media_id: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS,
            trace_id: str | None = None, sender: str | None = None) -> RemoteMedia:
        """The cached copy of ``mxc://origin/media_id``, fetched first on a miss."""
        if origin == self.server_name or not valid_media_id(media_id):
            raise not_found("Media not found")
        row = self.media.store.get_remote_media(origin, media_id)
        if row is not None:
            return row
        key = (origin, media_id)
        result = self._inflight.get(key)
        if result is None:
            result = self._inflight[key] = gevent.event.AsyncResult()
            self.fetches += 1
            # its own greenlet: a client that goes away does not cut the shared fetch short
            gevent.spawn(self._run, key, result, timeout_ms, trace_id)
        try:
            return result.get(timeout=2 * self.timeout + self.media.ask_timeout)
        except gevent.Timeout:
            raise MatrixError(504, "M_UNKNOWN", "Timed out fetching remote media") from None

    def _run(self, key: tuple[str, str], result: gevent.event.AsyncResult, timeout_ms: int,
             trace_id: str | None) -> None:
        try:
            result.set(self._fetch(key[0], key[1], timeout_ms, trace_id))
        except MatrixError as e:
            result.set_exception(e)
        except Exception as e:  # noqa: BLE001 - every failure becomes a Matrix answer
            log.warning("fetching mxc://%s/%s failed: %s", key[0], key[1], e)
            result.set_exception(MatrixError(502, "M_UNKNOWN", "Failed to fetch remote media"))
        finally:
            self._inflight.pop(key, None)

    # -- one fetch ------------------------------------------------------------------------
    def _fetch(self, origin: str, media_id: str, timeout_ms: int,
               trace_id: str | None) -> RemoteMedia:
        client = self._client()
        if client is None:
            raise not_found("Remote media is not available on this server")
        try:
            media_type, disposition, data = self._download(client, origin, media_id,
                                                           timeout_ms)
        except Forbidden:
            raise MatrixError(403, "M_FORBIDDEN",
                              "Federation with this server is not allowed") from None
        except BadResponse as e:
            if "limit" in e.message:
                raise _too_large() from None
            raise MatrixError(502, "M_UNKNOWN", "Bad answer from the remote server") from None
        except FederationError as e:
            log.info("remote media mxc://%s/%s: %s", origin, media_id, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch remote media") from None
        if len(data) > self.max_size:
            raise _too_large()
        media_type = clean_content_type(media_type)
        tmp = self.media.files.new_tmp_path("remote")
        try:
            sha256 = blocking(_write_file, tmp, data)
            image = (blocking(probe, tmp)
                     if media_type.split(";")[0].strip().lower() in THUMBNAILABLE_TYPES
                     else None)
            row: RemoteMedia = self.media.supervisor.ask(
                MEDIA_KEY, CommitRemote(origin, media_id, tmp, len(data), sha256, media_type,
                                        filename_of(disposition), image),
                timeout=self.media.ask_timeout, trace_id=trace_id,
                sender=f"fetch mxc://{origin}/{media_id}"[:120])
            return row
        finally:
            remove_quietly(tmp)  # gone already when the actor committed it

    def _download(self, client: Any, origin: str, media_id: str, timeout_ms: int
                  ) -> tuple[str | None, str | None, bytes]:
        """(content type, content disposition, bytes) from the origin."""
        limit = self.max_size + MULTIPART_SLACK
        status, headers, body = client.get_raw(
            origin, f"{V1}/media/download/{media_id}",
            query={"timeout_ms": str(timeout_ms)}, timeout=self.timeout, max_size=limit)
        if status == 200:
            try:
                _, part, data = parse_multipart(_header(headers, "content-type"), body)
            except MultipartError as e:
                raise BadResponse(origin, f"media answer: {e}") from None
            location = part.get("location")
            if location:
                return self._follow(origin, location)
            return part.get("content-type"), part.get("content-disposition"), data
        errcode = _errcode(body)
        if (status == 404 and errcode == "M_UNRECOGNIZED") or status in LEGACY_FALLBACK:
            return self._legacy(client, origin, media_id, timeout_ms)
        _raise_for(origin, status, errcode)
        raise AssertionError("unreachable")

    def _legacy(self, client: Any, origin: str, media_id: str, timeout_ms: int
                ) -> tuple[str | None, str | None, bytes]:
        status, headers, body = client.get_raw(
            origin, f"/_matrix/media/v3/download/{quote(origin, safe='')}/{media_id}",
            query={"allow_remote": "false", "allow_redirect": "true",
                   "timeout_ms": str(timeout_ms)},
            signed=False, timeout=self.timeout, max_size=self.max_size)
        if status in (301, 302, 307, 308) and _header(headers, "location"):
            return self._follow(origin, _header(headers, "location") or "")
        if status == 200:
            return (_header(headers, "content-type"), _header(headers, "content-disposition"),
                    body)
        _raise_for(origin, status, _errcode(body))
        raise AssertionError("unreachable")

    def _follow(self, origin: str, url: str) -> tuple[str | None, str | None, bytes]:
        get = self._url_get
        if get is None:
            client = self._client()
            from federation.client import WellKnownFetcher  # the same transport policy
            get = self._url_get = WellKnownFetcher(client.config, client.transport)
        status, headers, body = get(url, timeout=self.timeout, max_size=self.max_size)
        if status != 200:
            _raise_for(origin, status, _errcode(body))
        return _header(headers, "content-type"), _header(headers, "content-disposition"), body


def _too_large() -> MatrixError:
    return MatrixError(502, "M_TOO_LARGE", "Remote content is too large")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    if v is None:
        for k, val in headers.items():
            if k.lower() == name:
                return val
    return v


def _errcode(body: bytes) -> str | None:
    try:
        obj = json.loads(body[:65536].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    code = obj.get("errcode") if isinstance(obj, dict) else None
    return code if isinstance(code, str) else None


def _raise_for(origin: str, status: int, errcode: str | None) -> None:
    if status == 404:
        raise not_found("Remote media not found")
    if status == 504 and errcode == "M_NOT_YET_UPLOADED":
        raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
    if errcode == "M_TOO_LARGE" or status == 413:
        raise _too_large()
    raise RemoteHTTPError(origin, status, errcode)


def _write_file(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ serving

def _stream(path: str, head: bytes, tail: bytes) -> tuple[Iterator[bytes], int]:
    try:
        f: IO[bytes] = blocking(open, path, "rb")
    except FileNotFoundError:
        raise not_found("Media not found") from None
    size = os.fstat(f.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        try:
            yield head
            while True:
                chunk = blocking(f.read, CHUNK)
                if not chunk:
                    break
                yield chunk
            yield tail
        finally:
            f.close()

    return chunks(), len(head) + size + len(tail)


def multipart_response(path: str, media_type: str, disposition: str) -> Response:
    content_type, head, tail = multipart_frame(media_type, disposition)
    body, length = _stream(path, head, tail)
    resp = Response(body, status=200, content_type=content_type, direct_passthrough=True)
    resp.headers["Content-Length"] = str(length)
    return resp


def _int_arg(name: str, default: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid_param(f"'{name}' must be an integer") from None


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise invalid_param(f"'{name}' must be true or false")
    return raw == "true"


def _timeout_ms() -> int:
    t = _int_arg("timeout_ms", DEFAULT_TIMEOUT_MS)
    return max(0, min(int(t if t is not None else DEFAULT_TIMEOUT_MS), MAX_TIMEOUT_MS))


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> RemoteMediaFetcher | None:
    """Set ``fed.extras["remote_media"]`` and register the served media routes (once)."""
    if "remote_media" in fed.extras:
        return fed.extras["remote_media"]
    media: MediaParts | None = parts.get("media")
    if media is None:
        log.info("federation media: no media area, nothing served or fetched")
        return None
    fetcher = RemoteMediaFetcher(fed.server_name, media, lambda: fed.client,
                                 max_size=int(fed.config.max_upload_size))
    fed.extras["remote_media"] = fetcher
    bp = Blueprint("federation_media", __name__)

    signed = signed_route(fed)

    def trace() -> dict[str, str | None]:
        return {"trace_id": getattr(g, "request_id", None),
                "sender": f"federation {request.path}"[:120]}

    @bp.get(f"{V1}/media/download/<media_id>")
    @signed
    def download(origin: str, media_id: str) -> Response:
        """GET /_matrix/federation/v1/media/download/{mediaId}"""
        if not valid_media_id(media_id):
            raise not_found("Media not found")
        row = wait_uploaded(media, media_id, _timeout_ms())
        return multipart_response(media.files.content_path(media_id),
                                  clean_content_type(row.media_type),
                                  _disposition(row.upload_name))

    @bp.get(f"{V1}/media/thumbnail/<media_id>")
    @signed
    def thumbnail(origin: str, media_id: str) -> Response:
        """GET /_matrix/federation/v1/media/thumbnail/{mediaId}"""
        dims = []
        for name in ("width", "height"):
            if name not in request.args:
                raise missing_param(f"Missing query parameter '{name}'")
            v = _int_arg(name)
            if v is None or v < 1:
                raise invalid_param(f"Query parameter '{name}' must be a positive integer")
            dims.append(v)
        method = request.args.get("method", "scale")
        if method not in ("crop", "scale"):
            raise invalid_param("'method' must be crop or scale")
        animated = _bool_arg("animated")
        if not valid_media_id(media_id):
            raise not_found("Media not found")
        row = wait_uploaded(media, media_id, _timeout_ms())
        media_type, path = thumbnail_file(media, media_id, row.media_type, row.image,
                                          dims[0], dims[1], method, animated, **trace())
        ext = media_type.rsplit("/", 1)[-1]
        return multipart_response(path, media_type, f'inline; filename="thumbnail.{ext}"')

    app.register_blueprint(bp)
    return fetcher
