"""``GET /_matrix/client/v1/media/preview_url`` and the legacy
``/_matrix/media/v3/preview_url`` (client-server-api "Content repository", authed-content-
repo.yaml): the OpenGraph data of a web page, its image stored as local media and answered
as an ``mxc://`` URI (``og:image`` with ``og:image:type``, ``og:image:width`` / ``height``
and ``matrix:image:size``).  A URL of an image previews as that image.

Off unless ``url_preview_enabled`` (404 ``M_UNRECOGNIZED``, as Synapse).  A preview makes
the server fetch any URL a user names, so the fetch is fenced (atrium/url_preview_config.py):

- only ``http``/``https`` URLs (400 ``M_INVALID_PARAM`` otherwise); a URL matching an
  ``url_preview_url_blacklist`` entry is 403 ``M_UNKNOWN`` before anything is resolved;
- every hop's host is resolved here and *every* address it resolves to is checked against
  ``url_preview_ip_range_blacklist`` (``url_preview_ip_range_whitelist`` wins) before
  connecting; the connection goes to a checked address, never to a second resolution.  An
  IP literal that is blacklisted is 403 ``M_UNKNOWN``; a name with any blacklisted address
  is 502 (Synapse's answers).  Redirects are followed here, hop by hop, with the same
  checks (at most ``MAX_REDIRECTS``); ``requests`` never follows one itself;
- the body is streamed to a temp file in the media store, at most ``max_spider_size``
  bytes (502 ``M_TOO_LARGE`` past it, or at once when Content-Length says so); the whole
  fetch of one URL, redirects included, is bounded by ``timeout`` seconds (502);
- only HTML and images are read; other types are 502, or an empty preview when the server
  names no type.

Answers are cached: in memory for an hour per URL (concurrent requests for one URL share
one fetch; failures are remembered for ``ERROR_TTL``), and in the ``url_previews`` table by
URL and fetch time (store/url_previews.py), which answers ``ts`` — the preview as of that
time — and survives restarts.  The preview image is written through the media actor
(``CommitUpload``), uploaded in the requester's name as Synapse does.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

import gevent
import gevent.event
import requests
from flask import Flask, g, jsonify, request

from actors.media import MEDIA_KEY, CommitUpload, blocking
from actors.thumbnailer import probe, remove_quietly
from atrium.errors import MatrixError, invalid_param, missing_param, unrecognized
from atrium.identity_client import PinnedHTTPS
from atrium.url_preview_config import UrlPreviewConfig
from federation.ipfilter import IpFilter, parse_ip
from store.url_previews import UrlPreviewStore
from web.auth import require_auth
from web.http import query_int
from web.media_io import base_type, clean_content_type
from web.url_preview_html import decode, header_param, open_graph

log = logging.getLogger(__name__)

PREVIEW_TTL_MS = 3600 * 1000   # a preview is fresh for an hour (Synapse's)
ERROR_TTL = 60.0               # s a failed preview is answered from memory
MAX_MEMORY = 1000              # URLs kept in memory
MAX_REDIRECTS = 10
FETCH_TIMEOUT = 30.0           # s for one URL, redirects and body included
CONNECT_TIMEOUT = 10.0         # s per address
MAX_ADDRESSES = 3              # addresses of one host tried
MAX_PARSED = 2 * 1024 * 1024   # bytes of HTML parsed (meta tags live at the top)
MAX_URL = 8192                 # characters
OG_KEY_MAX, OG_VALUE_MAX = 50, 1000
USER_AGENT = "Atrium (bot; URL preview)"
CHUNK = 64 * 1024
_PREVIEW_PATHS = ("/_matrix/client/v1/media/preview_url", "/_matrix/media/v3/preview_url",
                  "/_matrix/media/v1/preview_url")


def _bad_gateway(msg: str, errcode: str = "M_UNKNOWN") -> MatrixError:
    return MatrixError(502, errcode, msg)


def _is_html(media_type: str) -> bool:
    return media_type.startswith(("text/html", "application/xhtml"))


def _is_image(media_type: str) -> bool:
    return media_type.startswith("image/")


@dataclass
class Fetched:
    """One fetched URL; the body (if read) is in the temp file ``path``."""

    url: str                 # after redirects
    media_type: str          # the Content-Type header, "" when there was none
    filename: str | None     # of the Content-Disposition header
    path: str | None = None
    length: int = 0
    sha256: str = ""


def url_blocked(config: UrlPreviewConfig, url: str) -> bool:
    """Whether an ``url_preview_url_blacklist`` entry matches every part it names."""
    parts = urlsplit(url)
    for entry in config.url_blacklist:
        matched = True
        for attr, pattern in entry:
            try:
                value = getattr(parts, attr)
            except ValueError:       # a bad port
                value = None
            if value is None or not (re.match(pattern, str(value)) if pattern.startswith("^")
                                     else fnmatch.fnmatch(str(value), pattern)):
                matched = False
                break
        if matched:
            return True
    return False


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL a preview may fetch, or 400 ``M_INVALID_PARAM``."""
    if len(url) > MAX_URL or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise invalid_param("Invalid URL")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise invalid_param("Invalid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise invalid_param("Only http and https URLs can be previewed")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


class Fetcher:
    """Fetches one URL within the configured fences (see the module docstring).
    ``resolve`` is ``socket.getaddrinfo`` and ``ca_file`` the CA bundle (certifi's when
    None): seams for tests.  ``new_tmp()`` names a temp file inside the media store."""

    def __init__(self, config: UrlPreviewConfig, new_tmp: Callable[[], str], *,
                 resolve: Callable[..., Any] = socket.getaddrinfo, verify_tls: bool = True,
                 timeout: float = FETCH_TIMEOUT) -> None:
        self.config = config
        self.ipfilter = IpFilter(config.ip_range_blacklist, config.ip_range_whitelist)
        self.new_tmp = new_tmp
        self.resolve = resolve
        self.verify_tls = verify_tls
        self.timeout = timeout
        self.ca_file: str | None = None

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` may be reached at; refused when any of them is
        blacklisted (a name must not point us at an internal service even in part)."""
        literal = parse_ip(host)
        if literal is not None:
            if not self.ipfilter.allowed(str(literal)):
                log.info("URL preview: %s is blacklisted", literal)
                raise MatrixError(403, "M_UNKNOWN", "IP address blocked")
            return [str(literal)]
        try:
            infos = self.resolve(host, port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        found = list(dict.fromkeys(str(i[4][0]).split("%", 1)[0] for i in infos))
        if not found or not all(self.ipfilter.allowed(a) for a in found):
            log.info("URL preview: %s resolves to %s: refused", host, found or "nothing")
            raise _bad_gateway("DNS resolution failure during URL preview generation")
        return found

    def fetch(self, url: str, *, read: Callable[[str], bool]) -> Fetched:
        """Fetch ``url`` (following redirects); the body is read when ``read(media_type)``
        says so.  Raises MatrixError (the client's answer)."""
        timer = gevent.Timeout(self.timeout)
        timer.start()
        try:
            for hop in range(MAX_REDIRECTS + 1):
                if hop:
                    try:
                        check_url(url)
                    except MatrixError:
                        raise _bad_gateway("Redirected to a URL that cannot be fetched") \
                            from None
                got = self._hop(url, read)
                if isinstance(got, Fetched):
                    return got
                url = got
            raise _bad_gateway("Too many redirects")
        except gevent.Timeout as e:
            if e is not timer:
                raise
            raise _bad_gateway("Requested URL took too long to download") from None
        finally:
            timer.close()

    def _hop(self, url: str, read: Callable[[str], bool]) -> Fetched | str:
        """One request: a Fetched, or the URL a redirect points to."""
        scheme, host, port = check_url(url)
        if url_blocked(self.config, url):
            raise MatrixError(403, "M_UNKNOWN", "URL blocked by url pattern blocklist entry")
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = 443 if scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        headers = {"Host": host_header, "User-Agent": USER_AGENT,
                   "Accept-Language": ", ".join(self.config.accept_language),
                   "Accept": "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.1"}
        session = requests.Session()
        session.trust_env = False       # never through a proxy: the checks are ours
        session.mount("https://", PinnedHTTPS(host, self.verify_tls, self.ca_file))
        try:
            last: Exception | None = None
            for addr in self.addresses(host, port)[:MAX_ADDRESSES]:
                netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                try:
                    resp = session.get(f"{scheme}://{netloc}{target}", headers=headers,
                                       allow_redirects=False, stream=True,
                                       timeout=(CONNECT_TIMEOUT, self.timeout))
                except requests.ConnectionError as e:
                    last = e
                    continue
                except requests.RequestException as e:
                    raise _bad_gateway(f"Failed to download content: {type(e).__name__}") \
                        from None
                try:
                    return self._answer(url, resp, read)
                finally:
                    resp.close()
            log.info("URL preview: %s unreachable: %s", url, last)
            raise _bad_gateway("Failed to download content: cannot connect")
        finally:
            session.close()

    def _answer(self, url: str, resp: requests.Response, read: Callable[[str], bool]
                ) -> Fetched | str:
        if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
            return urljoin(url, resp.headers["Location"].strip())
        if resp.status_code > 299:
            raise _bad_gateway(f"Got error {resp.status_code}")
        media_type = clean_content_type(resp.headers.get("Content-Type")) \
            if resp.headers.get("Content-Type") else ""
        out = Fetched(url, media_type, header_param(resp.headers.get("Content-Disposition"),
                                                    "filename"))
        if media_type and not (_is_html(base_type(media_type))
                               or _is_image(base_type(media_type))
                               or base_type(media_type) == "application/json"):
            raise _bad_gateway("Requested file's content type not allowed for this "
                               f"operation: {media_type}")
        if not read(base_type(media_type)):
            return out
        limit = self.config.max_spider_size
        declared = resp.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise _bad_gateway(f"Requested file is too large > {limit} bytes", "M_TOO_LARGE")
        out.path = self.new_tmp()
        h = hashlib.sha256()
        f = blocking(open, out.path, "wb")
        try:
            for chunk in resp.iter_content(CHUNK):
                out.length += len(chunk)
                if out.length > limit:
                    raise _bad_gateway(f"Requested file is too large > {limit} bytes",
                                       "M_TOO_LARGE")
                h.update(chunk)
                blocking(f.write, chunk)
            blocking(f.close)
        except requests.RequestException as e:
            f.close()
            remove_quietly(out.path)
            raise _bad_gateway(f"Failed to download remote body: {type(e).__name__}") from None
        except BaseException:
            f.close()
            remove_quietly(out.path)
            raise
        out.sha256 = h.hexdigest()
        return out


@dataclass
class _Memo:
    expires: float               # monotonic
    fetched_ts: int              # ms
    og: dict[str, Any] | None
    error: MatrixError | None = None


class UrlPreviewer:
    """Builds and caches previews.  ``commit(user_id, fetched, image_info)`` stores a
    fetched image as local media and answers its media id."""

    def __init__(self, server_name: str, fetcher: Fetcher, store: UrlPreviewStore,
                 commit: Callable[[str, Fetched, Any], str], *,
                 clock: Callable[[], float] = time.monotonic,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.server_name = server_name
        self.fetcher = fetcher
        self.store = store
        self.commit = commit
        self.clock = clock
        self.now_ms = now_ms
        self._memory: OrderedDict[str, _Memo] = OrderedDict()
        self._inflight: dict[str, gevent.event.AsyncResult] = {}

    def preview(self, url: str, user_id: str, ts: int | None) -> dict[str, Any]:
        memo = self._memory.get(url)
        if memo is not None and memo.expires > self.clock():
            if memo.error is not None:
                raise memo.error
            if ts is not None and ts < memo.fetched_ts:
                older = self.store.lookup(url, ts)   # the preview as it was then, if kept
                if older is not None:
                    return older.og
            return dict(memo.og or {})
        waiting = self._inflight.get(url)
        if waiting is not None:
            return dict(waiting.get())
        result = gevent.event.AsyncResult()
        self._inflight[url] = result
        try:
            og = self._produce(url, user_id, ts)
            result.set(og)
            return dict(og)
        except MatrixError as e:
            self._remember(url, _Memo(self.clock() + ERROR_TTL, self.now_ms(), None, e))
            result.set_exception(e)
            raise
        except BaseException as e:
            result.set_exception(e)
            raise
        finally:
            self._inflight.pop(url, None)

    def _remember(self, url: str, memo: _Memo) -> None:
        self._memory[url] = memo
        self._memory.move_to_end(url)
        while len(self._memory) > MAX_MEMORY:
            self._memory.popitem(last=False)

    def _produce(self, url: str, user_id: str, ts: int | None) -> dict[str, Any]:
        now = self.now_ms()
        stored = self.store.lookup(url, now if ts is None else ts)
        if stored is not None:
            if stored.expires_ts > now:
                self._remember(url, _Memo(self.clock() + (stored.expires_ts - now) / 1000,
                                          stored.fetched_ts, stored.og))
            return stored.og
        og, media_id = self._build(url, user_id)
        self.store.insert(url, now, now + PREVIEW_TTL_MS, og, media_id)
        self._remember(url, _Memo(self.clock() + PREVIEW_TTL_MS / 1000, now, og))
        return og

    # -- building a preview -----------------------------------------------------------------
    def _build(self, url: str, user_id: str) -> tuple[dict[str, Any], str | None]:
        check_url(url)
        page = self.fetcher.fetch(url, read=lambda t: _is_html(t) or _is_image(t))
        try:
            if _is_image(base_type(page.media_type)):
                try:
                    og, media_id = self._image(page, user_id)
                except MatrixError as e:
                    raise _bad_gateway(f"Cannot keep the image: {e.error}", e.errcode) \
                        from None
                if page.filename:
                    og["og:description"] = page.filename
                return _pruned(og), media_id
            if page.path is None or not _is_html(base_type(page.media_type)):
                return {}, None
            body = blocking(_read_head, page.path, MAX_PARSED)
        finally:
            if page.path is not None:
                remove_quietly(page.path)   # gone already if it became media
        og = blocking(lambda: open_graph(decode(body, page.media_type)))
        media_id = None
        image = og.pop("og:image", None)
        if isinstance(image, str) and image.strip() and not image.startswith("data:"):
            try:
                media_id = self._page_image(urljoin(page.url, image.strip()), user_id, og)
            except Exception as e:  # noqa: BLE001 - the page's preview stands without it
                log.info("URL preview of %s: image %s not kept: %s", url, image,
                         getattr(e, "error", None) or type(e).__name__)
        return _pruned(og), media_id

    def _page_image(self, url: str, user_id: str, og: dict[str, Any]) -> str | None:
        fetched = self.fetcher.fetch(url, read=_is_image)
        if fetched.path is None:
            return None
        try:
            image_og, media_id = self._image(fetched, user_id)
        finally:
            remove_quietly(fetched.path)
        og.update(image_og)
        return media_id

    def _image(self, fetched: Fetched, user_id: str) -> tuple[dict[str, Any], str]:
        assert fetched.path is not None
        info = blocking(probe, fetched.path)
        media_id = self.commit(user_id, fetched, info)
        og: dict[str, Any] = {"og:image": f"mxc://{self.server_name}/{media_id}",
                              "og:image:type": fetched.media_type,
                              "matrix:image:size": fetched.length}
        if info is not None:
            og["og:image:width"] = info.width
            og["og:image:height"] = info.height
        return og, media_id


def _read_head(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def _pruned(og: dict[str, Any]) -> dict[str, Any]:
    """Without over-long properties (Synapse's limits)."""
    return {k: v for k, v in og.items()
            if len(k) <= OG_KEY_MAX and len(str(v)) <= OG_VALUE_MAX}


def register(app: Flask, runtime: Any) -> UrlPreviewer | None:
    """The preview routes; the previewer (None when previews are off) is
    ``runtime.parts["url_preview"]``."""
    config = runtime.config
    cfg: UrlPreviewConfig = config.url_preview
    previewer = None
    if cfg.enabled:
        media = runtime.parts["media"]

        def commit(user_id: str, fetched: Fetched, info: Any) -> str:
            return media.supervisor.ask(
                MEDIA_KEY, CommitUpload(user_id, fetched.path, fetched.length, fetched.sha256,
                                        fetched.media_type or "application/octet-stream",
                                        fetched.filename, info),
                timeout=media.ask_timeout, trace_id=getattr(g, "request_id", None),
                sender="web url preview")

        fetcher = Fetcher(cfg, lambda: media.files.new_tmp_path("preview"),
                          verify_tls=not config.use_insecure_ssl_client_just_for_testing_do_not_use)
        previewer = UrlPreviewer(config.server_name, fetcher, UrlPreviewStore(runtime.db),
                                 commit)
    runtime.parts["url_preview"] = previewer

    def preview_url() -> Any:
        """GET /_matrix/client/v1/media/preview_url"""
        req = require_auth()
        if previewer is None:
            raise unrecognized(404, "URL previews are disabled on this server")
        url = request.args.get("url")
        if not url:
            raise missing_param("Missing 'url' parameter")
        ts = query_int("ts", None, minimum=0)
        check_url(url)
        return jsonify(previewer.preview(url, req.user_id, ts))

    for i, path in enumerate(_PREVIEW_PATHS):
        app.add_url_rule(path, f"preview_url_{i}", preview_url, methods=["GET"])
    return previewer
