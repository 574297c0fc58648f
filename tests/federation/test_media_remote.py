"""Remote media through the client API (server-server-api "Content Repository"): fetched
from the origin's authenticated federation endpoint (multipart: bytes or Location), the
legacy fallback, size limits, the cache (no second fetch), one fetch for concurrent
requests, thumbnails of remote media rendered locally."""
from __future__ import annotations

import contextlib
import io

import gevent
from PIL import Image

from federation.errors import BadResponse, RemoteUnreachable
from store.media import ThumbnailKey
from tests.federation.media_helpers import (FED_DOWNLOAD, LEGACY_DOWNLOAD, REMOTE, error,
                                            make_media_server, ms, multipart, png)

__all__ = ["ms"]

C1 = "/_matrix/client/v1/media"
MID = "abcDEF123"


def _fetches(ms, path_prefix):
    return [c for c in ms.raw.calls if c[1].startswith(path_prefix)]


def test_remote_download_via_multipart_then_cached(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"hello remote", "text/plain",
                                                   'attachment; filename="notes.txt"')
    r = ms.get(f"{C1}/download/{REMOTE}/{MID}")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.data == b"hello remote"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "notes.txt" in r.headers["Content-Disposition"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in r.headers["Content-Security-Policy"]
    (dest, path, kw), = ms.raw.calls
    assert dest == REMOTE and kw.get("signed", True) is True
    # cache hit: no second fetch, also with another file name
    r2 = ms.get(f"{C1}/download/{REMOTE}/{MID}/other.txt")
    assert r2.status_code == 200 and r2.data == b"hello remote"
    assert 'other.txt' in r2.headers["Content-Disposition"]
    assert len(ms.raw.calls) == 1
    row = ms.runtime.parts["media"].store.get_remote_media(REMOTE, MID)
    assert row.media_length == 12 and row.upload_name == "notes.txt"


def test_remote_download_follows_location(ms):
    url = "https://cdn.remote.test/blob/1"
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"", location=url)
    ms.url_answers[url] = (200, {"Content-Type": "image/gif"}, b"GIF89a....")
    r = ms.get(f"{C1}/download/{REMOTE}/{MID}")
    assert r.status_code == 200 and r.data == b"GIF89a...."
    assert r.headers["Content-Type"] == "image/gif"
    assert ms.url_calls == [url]


def test_legacy_fallback_on_unrecognized(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = error(404, "M_UNRECOGNIZED")
    ms.raw.answers[LEGACY_DOWNLOAD + MID] = (200, {"Content-Type": "application/pdf",
                                                   "Content-Disposition":
                                                   "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf"},
                                             b"%PDF-1.4 legacy")
    r = ms.get(f"{C1}/download/{REMOTE}/{MID}")
    assert r.status_code == 200 and r.data == b"%PDF-1.4 legacy"
    assert r.headers["Content-Disposition"].startswith("attachment")
    legacy = _fetches(ms, "/_matrix/media/v3/download/")
    assert len(legacy) == 1
    kw = legacy[0][2]
    assert kw["signed"] is False and kw["query"]["allow_remote"] == "false"
    row = ms.runtime.parts["media"].store.get_remote_media(REMOTE, MID)
    assert row.upload_name == "résumé.pdf"


def test_legacy_fallback_on_400(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = error(400, "M_UNKNOWN")
    ms.raw.answers[LEGACY_DOWNLOAD + MID] = (200, {"Content-Type": "text/plain"}, b"old")
    assert ms.get(f"{C1}/download/{REMOTE}/{MID}").data == b"old"


def test_no_fallback_on_plain_not_found(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = error(404, "M_NOT_FOUND")
    r = ms.get(f"{C1}/download/{REMOTE}/{MID}")
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    assert _fetches(ms, "/_matrix/media/v3/") == []


def test_remote_failures_answer_the_spec_codes(ms):
    def unreachable(d, p, kw):
        raise RemoteUnreachable(d, "connection refused")

    ms.raw.answers[FED_DOWNLOAD + "down"] = unreachable
    r = ms.get(f"{C1}/download/{REMOTE}/down")
    assert r.status_code == 502 and r.get_json()["errcode"] == "M_UNKNOWN"
    ms.raw.answers[FED_DOWNLOAD + "junk"] = (200, {"Content-Type": "multipart/mixed"}, b"x")
    r = ms.get(f"{C1}/download/{REMOTE}/junk")
    assert r.status_code == 502 and r.get_json()["errcode"] == "M_UNKNOWN"
    ms.raw.answers[FED_DOWNLOAD + "later"] = error(504, "M_NOT_YET_UPLOADED")
    r = ms.get(f"{C1}/download/{REMOTE}/later")
    assert r.status_code == 504 and r.get_json()["errcode"] == "M_NOT_YET_UPLOADED"
    # a failed fetch is not cached: the next request asks again
    ms.raw.answers[FED_DOWNLOAD + "down"] = multipart(b"back")
    assert ms.get(f"{C1}/download/{REMOTE}/down").data == b"back"


def test_allow_remote_false_and_bad_ids_fetch_nothing(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"x")
    r = ms.get(f"{C1}/download/{REMOTE}/{MID}", {"allow_remote": "false"})
    assert r.status_code == 404
    r = ms.get(f"{C1}/download/{REMOTE}/bad..id")
    assert r.status_code == 404
    assert ms.raw.calls == []
    r = ms.get(f"{C1}/download/{REMOTE}/{MID}", auth=False)
    assert r.status_code == 401


def test_size_limit(tmp_path):
    gen, ms = make_media_server(tmp_path, max_upload_size=1000)
    try:
        ms.raw.answers[FED_DOWNLOAD + "big"] = multipart(b"x" * 2000)
        r = ms.get(f"{C1}/download/{REMOTE}/big")
        assert r.status_code == 502 and r.get_json()["errcode"] == "M_TOO_LARGE"

        def too_big(d, p, kw):
            assert kw["max_size"] < 1000 + 100_000  # the client is told the bound
            raise BadResponse(d, "response of 99999999 bytes is over the 66536 byte limit")

        ms.raw.answers[FED_DOWNLOAD + "huge"] = too_big
        r = ms.get(f"{C1}/download/{REMOTE}/huge")
        assert r.status_code == 502 and r.get_json()["errcode"] == "M_TOO_LARGE"
        assert ms.runtime.parts["media"].store.get_remote_media(REMOTE, "big") is None
        ms.raw.answers[FED_DOWNLOAD + "ok"] = multipart(b"y" * 1000)
        assert ms.get(f"{C1}/download/{REMOTE}/ok").status_code == 200
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


def test_concurrent_requests_share_one_fetch(ms):
    ms.raw.delay = 0.2
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"shared")
    gs = [gevent.spawn(ms.get, f"{C1}/download/{REMOTE}/{MID}") for _ in range(5)]
    gevent.joinall(gs, timeout=5)
    assert [g.value.data for g in gs] == [b"shared"] * 5
    assert len(ms.raw.calls) == 1
    assert ms.fetcher.fetches == 1


def test_thumbnail_of_remote_media_rendered_locally(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(png(400, 300), "image/png",
                                                   'inline; filename="p.png"')
    r = ms.get(f"{C1}/thumbnail/{REMOTE}/{MID}",
               {"width": "32", "height": "32", "method": "crop"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(r.data)).size == (32, 32)
    r = ms.get(f"{C1}/thumbnail/{REMOTE}/{MID}",
               {"width": "320", "height": "240", "method": "scale"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size == (320, 240)
    assert len(ms.raw.calls) == 1  # one fetch, both thumbnails from the cached file
    store = ms.runtime.parts["media"].store
    fs_id = store.get_remote_media(REMOTE, MID).filesystem_id
    thumb = store.get_remote_thumbnail(fs_id, ThumbnailKey(32, 32, "crop", False))
    assert thumb is not None and (thumb.width, thumb.height) == (32, 32)


def test_thumbnail_of_remote_non_image_is_400(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"text", "text/plain")
    r = ms.get(f"{C1}/thumbnail/{REMOTE}/{MID}", {"width": "32", "height": "32"})
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_UNKNOWN"


def test_quarantined_remote_media_is_not_served(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"bad")
    assert ms.get(f"{C1}/download/{REMOTE}/{MID}").status_code == 200
    ms.runtime.parts["media"].store.set_remote_quarantined(REMOTE, MID, "@admin:x")
    assert ms.get(f"{C1}/download/{REMOTE}/{MID}").status_code == 404


def test_legacy_unauthenticated_endpoint_serves_remote(ms):
    ms.raw.answers[FED_DOWNLOAD + MID] = multipart(b"legacy ok")
    r = ms.get(f"/_matrix/media/v3/download/{REMOTE}/{MID}", auth=False)
    assert r.status_code == 200 and r.data == b"legacy ok"
