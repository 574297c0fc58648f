"""Uploads: plain POST, async create + PUT, the size limit, quotas and the media config."""
from __future__ import annotations

import io
import time

import gevent
import pytest

from tests.media.conftest import SERVER, files_under, make_env, upload

DL = "/_matrix/client/v1/media/download"
LEGACY_DL = "/_matrix/media/v3/download"


def test_upload_then_download_is_byte_identical_on_both_endpoint_families(env, alice):
    data = bytes(range(256)) * 3000  # > one streaming chunk
    mid = upload(env, alice, data, "application/x-thing", "blob.bin")
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.status_code == 200 and r.data == data
    assert r.headers["Content-Type"] == "application/x-thing"
    assert r.headers["Content-Length"] == str(len(data))
    r = env.client.get(f"{LEGACY_DL}/{SERVER}/{mid}")
    assert r.status_code == 200 and r.data == data
    r = env.client.get(f"/_matrix/media/r0/download/{SERVER}/{mid}")
    assert r.status_code == 200 and r.data == data


def test_upload_requires_an_access_token(env):
    r = env.client.post("/_matrix/media/v3/upload", data=b"x")
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_MISSING_TOKEN"


def test_empty_upload_is_allowed(env, alice):
    mid = upload(env, alice, b"", "text/plain")
    assert env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice).data == b""


def test_missing_or_malformed_content_type_is_stored_as_octet_stream(env, alice):
    mid = upload(env, alice, b"abc", "not a type\x7f")
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == "attachment"


def test_content_length_over_the_limit_is_refused_before_reading(env, alice):
    r = env.client.post("/_matrix/media/v3/upload", data=b"x" * (1024 * 1024 + 1),
                        headers=alice)
    assert r.status_code == 413 and r.get_json()["errcode"] == "M_TOO_LARGE"
    assert files_under(env.store_path) == []


def test_chunked_body_over_the_limit_is_refused_while_streaming(env, alice):
    body = io.BytesIO(b"y" * (1024 * 1024 + 10))  # no Content-Length: checked as it streams
    r = env.client.post("/_matrix/media/v3/upload", input_stream=body,
                        headers={**alice, "Transfer-Encoding": "chunked"},
                        environ_overrides={"wsgi.input_terminated": True})
    assert r.status_code == 413 and r.get_json()["errcode"] == "M_TOO_LARGE"
    assert files_under(env.store_path) == []  # the temp file is gone too


def test_exactly_the_limit_is_accepted(env, alice):
    upload(env, alice, b"z" * (1024 * 1024))


def test_media_config_on_both_paths(env, alice):
    for path in ("/_matrix/client/v1/media/config", "/_matrix/media/v3/config"):
        r = env.client.get(path, headers=alice)
        assert r.status_code == 200 and r.get_json() == {"m.upload.size": 1024 * 1024}
        assert env.client.get(path).status_code == 401


def test_async_upload_flow(env, alice, bob):
    r = env.client.post("/_matrix/media/v1/create", headers=alice)
    assert r.status_code == 200
    body = r.get_json()
    uri, expires = body["content_uri"], body["unused_expires_at"]
    assert uri.startswith(f"mxc://{SERVER}/") and expires > time.time() * 1000 + 3600_000
    mid = uri.rsplit("/", 1)[1]
    put = f"/_matrix/media/v3/upload/{SERVER}/{mid}"
    # not yet uploaded: 504 M_NOT_YET_UPLOADED once timeout_ms passes
    r = env.client.get(f"{DL}/{SERVER}/{mid}?timeout_ms=50", headers=alice)
    assert r.status_code == 504 and r.get_json()["errcode"] == "M_NOT_YET_UPLOADED"
    # another user may not fill it
    r = env.client.put(put, data=b"evil", headers={**bob, "Content-Type": "text/plain"})
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_FORBIDDEN"
    r = env.client.put(put, data=b"payload", query_string={"filename": "p.txt"},
                       headers={**alice, "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.get_json() == {}
    r = env.client.put(put, data=b"again", headers={**alice, "Content-Type": "text/plain"})
    assert r.status_code == 409 and r.get_json()["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.data == b"payload"
    assert r.headers["Content-Disposition"] == 'inline; filename="p.txt"'


def test_download_waits_for_an_async_upload(env, alice):
    mid = env.client.post("/_matrix/media/v1/create",
                          headers=alice).get_json()["content_uri"].rsplit("/", 1)[1]

    def later() -> None:
        gevent.sleep(0.2)
        env.client.put(f"/_matrix/media/v3/upload/{SERVER}/{mid}", data=b"late",
                       headers={**alice, "Content-Type": "text/plain"})

    g = gevent.spawn(later)
    t0 = time.monotonic()
    r = env.client.get(f"{DL}/{SERVER}/{mid}?timeout_ms=5000", headers=alice)
    g.join()
    assert r.status_code == 200 and r.data == b"late"
    assert time.monotonic() - t0 < 3


def test_put_to_unknown_or_remote_or_invalid_id_is_not_found(env, alice):
    for path in (f"/_matrix/media/v3/upload/{SERVER}/nosuchmedia",
                 f"/_matrix/media/v3/upload/other.example/abc",
                 f"/_matrix/media/v3/upload/{SERVER}/a.b"):
        r = env.client.put(path, data=b"x", headers=alice)
        assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND", path


def test_pending_upload_limit_gives_429(env, alice):
    for _ in range(5):
        assert env.client.post("/_matrix/media/v1/create", headers=alice).status_code == 200
    r = env.client.post("/_matrix/media/v1/create", headers=alice)
    assert r.status_code == 429 and r.get_json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert r.get_json()["retry_after_ms"] > 0


@pytest.fixture
def short_env(tmp_path):
    yield from make_env(tmp_path, unused_expiration_time="200ms",
                        media_upload_limits=[{"time_period": "1h", "max_size": "10K"}])


def test_expired_created_id_cannot_be_uploaded_or_downloaded(short_env):
    h = {"Authorization": f"Bearer {short_env.make_user('carol')}"}
    mid = short_env.client.post("/_matrix/media/v1/create",
                                headers=h).get_json()["content_uri"].rsplit("/", 1)[1]
    gevent.sleep(0.3)
    r = short_env.client.put(f"/_matrix/media/v3/upload/{SERVER}/{mid}", data=b"x", headers=h)
    assert r.status_code == 404
    r = short_env.client.get(f"{DL}/{SERVER}/{mid}?timeout_ms=1000", headers=h)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


def test_upload_quota_gives_403(short_env):
    h = {"Authorization": f"Bearer {short_env.make_user('dave')}"}
    upload(short_env, h, b"a" * 6000)
    r = short_env.client.post("/_matrix/media/v3/upload", data=b"b" * 6000, headers=h)
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_FORBIDDEN"
    assert len(files_under(short_env.store_path)) == 1
    # another user has their own quota
    h2 = {"Authorization": f"Bearer {short_env.make_user('erin')}"}
    upload(short_env, h2, b"c" * 6000)
