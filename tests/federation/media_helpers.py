"""Helpers for the federation media tests: real apps (tests/apps.py) with the inbound test
doubles of ``inbound_helpers`` and ``federation/media.py`` installed (idempotent), a fake
federation client whose ``get_raw`` answers from a script, multipart bodies, PNGs."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Callable

import gevent
import pytest
from PIL import Image

from federation import media as fed_media
from tests.apps import app_factory
from tests.federation.inbound_helpers import REMOTE, SERVER, Server

FED_DOWNLOAD = "/_matrix/federation/v1/media/download/"
LEGACY_DOWNLOAD = f"/_matrix/media/v3/download/{REMOTE}/"


class RawClient:
    """TEST DOUBLE for FederationClient.get_raw: ``answers[path]`` is a (status, headers,
    body) tuple or a callable of (destination, path, kw) returning one (or raising)."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.delay = 0.0

    def get_raw(self, destination: str, path: str, **kw: Any) -> Any:
        self.calls.append((destination, path, kw))
        if self.delay:
            gevent.sleep(self.delay)
        answer = self.answers.get(path)
        if answer is None:
            return 404, {"Content-Type": "application/json"}, \
                b'{"errcode":"M_NOT_FOUND","error":"no"}'
        return answer(destination, path, kw) if callable(answer) else answer

    def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        raise RuntimeError("not used")


def multipart(data: bytes, media_type: str = "text/plain",
              disposition: str | None = 'attachment; filename="a.txt"',
              location: str | None = None, boundary: str = "6b1f0e2a") -> tuple:
    """A 200 answer of the federation download endpoint."""
    second = (f"Location: {location}\r\n\r\n".encode() if location else
              (f"Content-Type: {media_type}\r\n"
               + (f"Content-Disposition: {disposition}\r\n" if disposition else "")
               + "\r\n").encode() + data)
    body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
            f"--{boundary}\r\n").encode() + second + f"\r\n--{boundary}--\r\n".encode()
    return 200, {"Content-Type": f"multipart/mixed; boundary={boundary}"}, body


def error(status: int, errcode: str) -> tuple:
    return status, {"Content-Type": "application/json"}, \
        f'{{"errcode":"{errcode}","error":"x"}}'.encode()


def png(width: int = 200, height: int = 150, color: tuple = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


class MediaServer(Server):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.raw = RawClient()
        self.fed.client = self.raw
        self.fetcher = fed_media.install(app, self.fed, self.runtime.parts)
        assert self.fetcher is not None
        self.url_answers: dict[str, tuple] = {}
        self.url_calls: list[str] = []
        self.fetcher._url_get = self._url_get
        self.alice = self.add_user("alice")

    def _url_get(self, url: str, *, timeout: float, max_size: int) -> tuple:
        self.url_calls.append(url)
        return self.url_answers.get(url, error(404, "M_NOT_FOUND"))

    def get(self, path: str, query: dict[str, str] | None = None, auth: bool = True,
            origin: str | None = None) -> Any:
        headers = {}
        if auth:
            headers["Authorization"] = f"Bearer {self.alice.tokens['A']}"
        if origin:
            headers["X-Test-Origin"] = origin
        return self.http.get(path, query_string=query, headers=headers)

    def upload(self, data: bytes, media_type: str = "text/plain",
               filename: str | None = None) -> str:
        r = self.http.post("/_matrix/media/v3/upload", data=data,
                           query_string={"filename": filename} if filename else None,
                           headers={"Authorization": f"Bearer {self.alice.tokens['A']}",
                                    "Content-Type": media_type})
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()["content_uri"].rsplit("/", 1)[1]


def make_media_server(tmp_path: Any, **overrides: Any) -> Callable[[], Any]:
    gen = app_factory(tmp_path)
    make = next(gen)
    return gen, MediaServer(make(**overrides))


@pytest.fixture
def ms(tmp_path: Any) -> Any:
    gen, server = make_media_server(tmp_path)
    yield server
    with contextlib.suppress(StopIteration):
        next(gen)


__all__ = ["FED_DOWNLOAD", "LEGACY_DOWNLOAD", "REMOTE", "SERVER", "MediaServer", "RawClient",
           "error", "make_media_server", "ms", "multipart", "png"]
