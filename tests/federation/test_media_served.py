"""Served federation media (content_repository.yaml): ``GET /_matrix/federation/v1/media/
download/{mediaId}`` and ``/thumbnail/{mediaId}`` for OUR media, signed requests, answered
multipart/mixed (a JSON part ``{}``, then the file) — and a round trip: another server's
fetcher parses what we serve."""
from __future__ import annotations

import contextlib
import io

from PIL import Image

from federation.media import parse_multipart
from tests.federation.media_helpers import MediaServer, ms, png
from tests.apps import app_factory

__all__ = ["ms"]

F1 = "/_matrix/federation/v1/media"


def test_download_multipart(ms):
    mid = ms.upload(b"local bytes\r\n--not-a-boundary", "text/plain", "l.txt")
    r = ms.get(f"{F1}/download/{mid}", auth=False, origin="remote.test")
    assert r.status_code == 200, r.get_data(as_text=True)
    ct = r.headers["Content-Type"]
    assert ct.startswith("multipart/mixed") and "boundary=" in ct
    assert int(r.headers["Content-Length"]) == len(r.data)
    meta, part, data = parse_multipart(ct, r.data)
    assert meta == {}
    assert data == b"local bytes\r\n--not-a-boundary"
    assert part["content-type"] == "text/plain"
    assert "l.txt" in part["content-disposition"]
    # the raw framing: the first part is JSON with its own Content-Type
    boundary = ct.split("boundary=", 1)[1]
    assert r.data.startswith(f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}".encode())
    assert r.data.endswith(f"\r\n--{boundary}--\r\n".encode())


def test_download_needs_a_signed_request_and_known_media(ms):
    mid = ms.upload(b"x")
    r = ms.get(f"{F1}/download/{mid}", auth=False)
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_UNAUTHORIZED"
    r = ms.get(f"{F1}/download/nosuchmedia", auth=False, origin="remote.test")
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    r = ms.get(f"{F1}/download/bad..id", auth=False, origin="remote.test")
    assert r.status_code == 404


def test_download_not_yet_uploaded_is_504(ms):
    created = ms.http.post("/_matrix/media/v1/create",
                           headers={"Authorization": f"Bearer {ms.alice.tokens['A']}"})
    mid = created.get_json()["content_uri"].rsplit("/", 1)[1]
    r = ms.get(f"{F1}/download/{mid}", {"timeout_ms": "0"}, auth=False, origin="remote.test")
    assert r.status_code == 504 and r.get_json()["errcode"] == "M_NOT_YET_UPLOADED"


def test_thumbnail_multipart(ms):
    mid = ms.upload(png(400, 300), "image/png")
    r = ms.get(f"{F1}/thumbnail/{mid}", {"width": "96", "height": "96", "method": "crop"},
               auth=False, origin="remote.test")
    assert r.status_code == 200, r.get_data(as_text=True)
    meta, part, data = parse_multipart(r.headers["Content-Type"], r.data)
    assert meta == {} and part["content-type"] == "image/png"
    assert Image.open(io.BytesIO(data)).size == (96, 96)


def test_thumbnail_bad_requests(ms):
    mid = ms.upload(png(), "image/png")
    txt = ms.upload(b"not an image", "text/plain")
    for query, status in (({"height": "32"}, 400), ({"width": "0", "height": "32"}, 400),
                          ({"width": "32", "height": "32", "method": "zoom"}, 400)):
        r = ms.get(f"{F1}/thumbnail/{mid}", query, auth=False, origin="remote.test")
        assert r.status_code == status and "errcode" in r.get_json()
    r = ms.get(f"{F1}/thumbnail/{txt}", {"width": "32", "height": "32"}, auth=False,
               origin="remote.test")
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_UNKNOWN"


def test_round_trip_between_two_servers(tmp_path):
    """Server A serves its media; server B's fetcher gets it through a client that forwards
    B's request to A's app (as A's federation endpoint would receive it)."""
    gen_a = app_factory(tmp_path / "a")
    gen_b = app_factory(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        a = MediaServer(next(gen_a)(server_name="a.test"))
        b = MediaServer(next(gen_b)(server_name="b.test"))
        mid = a.upload(png(64, 64), "image/png", "pic.png")

        def forward(dest, path, kw):
            assert dest == "a.test"
            r = a.http.get(path, query_string=kw.get("query"),
                           headers={"X-Test-Origin": "b.test"})
            return r.status_code, dict(r.headers), r.data

        b.raw.answers[f"/_matrix/federation/v1/media/download/{mid}"] = forward
        r = b.get(f"/_matrix/client/v1/media/download/a.test/{mid}")
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(r.data)).size == (64, 64)
        row = b.runtime.parts["media"].store.get_remote_media("a.test", mid)
        assert row.upload_name == "pic.png" and row.image.width == 64
    finally:
        for gen in (gen_a, gen_b):
            with contextlib.suppress(StopIteration):
                next(gen)
