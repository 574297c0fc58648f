"""Downloads: the safe-serving headers, Content-Disposition, id validation, remote and
unknown media, the legacy endpoints and their freeze, streaming from disk."""
from __future__ import annotations

import pytest

from tests.media.conftest import SERVER, make_env, upload
from web.media_io import CSP

DL = "/_matrix/client/v1/media/download"
LEGACY_DL = "/_matrix/media/v3/download"


def test_safe_serving_headers(env, alice):
    mid = upload(env, alice, b"\x89PNG...", "image/png", "cat.png")
    for r in (env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice),
              env.client.get(f"{LEGACY_DL}/{SERVER}/{mid}")):
        assert r.headers["Content-Security-Policy"] == CSP
        assert CSP == ("sandbox; default-src 'none'; script-src 'none'; plugin-types "
                       "application/pdf; style-src 'unsafe-inline'; media-src 'self'; "
                       "object-src 'self';")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert r.headers["Content-Disposition"] == 'inline; filename="cat.png"'


@pytest.mark.parametrize("ctype", ["text/html", "image/svg+xml", "application/javascript",
                                   "application/xhtml+xml", "application/pdf"])
def test_unsafe_types_are_served_as_attachment(env, alice, ctype):
    mid = upload(env, alice, b"<script>alert(1)</script>", ctype, "x.html")
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.headers["Content-Disposition"] == 'attachment; filename="x.html"'
    assert r.headers["Content-Security-Policy"] == CSP
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_text_gets_a_charset_and_stays_inline(env, alice):
    mid = upload(env, alice, b"hi", "text/plain")
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Content-Disposition"] == "inline"  # no filename given, none sent


def test_non_ascii_filename_uses_rfc6266_encoding(env, alice):
    mid = upload(env, alice, b"x", "text/plain", 'naïve "quote"\r\n.txt')
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.headers["Content-Disposition"] == (
        "inline; filename*=utf-8''na%C3%AFve%20%22quote%22%0D%0A.txt")


def test_filename_in_the_path_overrides_the_stored_one(env, alice):
    mid = upload(env, alice, b"x", "text/plain", "orig.txt")
    r = env.client.get(f"{DL}/{SERVER}/{mid}/other.txt", headers=alice)
    assert r.headers["Content-Disposition"] == 'inline; filename="other.txt"'
    r = env.client.get(f"{LEGACY_DL}/{SERVER}/{mid}/%C3%A9t%C3%A9.txt")
    assert r.headers["Content-Disposition"] == "inline; filename*=utf-8''%C3%A9t%C3%A9.txt"


def test_authenticated_download_requires_a_token(env, alice):
    mid = upload(env, alice, b"x")
    r = env.client.get(f"{DL}/{SERVER}/{mid}")
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_MISSING_TOKEN"


def test_unknown_media_is_404(env, alice):
    r = env.client.get(f"{DL}/{SERVER}/doesnotexist", headers=alice)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


def test_remote_media_not_cached_and_not_reachable(env, alice):
    # allow_remote=false: only what is cached here (nothing)
    r = env.client.get(f"{DL}/matrix.org/abcdef?allow_remote=false", headers=alice)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    # fetching is tried (federation/media.py), but no other server is reachable from here
    for q in ("", "?allow_remote=true"):
        r = env.client.get(f"{DL}/matrix.org/abcdef{q}", headers=alice)
        assert r.status_code in (502, 504) and r.get_json()["errcode"].startswith("M_")


@pytest.mark.parametrize("path", [
    f"{SERVER}/..", f"{SERVER}/a.b", f"{SERVER}/%2E%2E", f"{SERVER}/..%2F..%2Fetc%2Fpasswd",
    "bad_server!/abcdef", "..%2F../abc", f"{SERVER}/abc%00def", f"{SERVER}/%C3%A9",
])
def test_path_traversal_and_bad_ids_are_refused(env, alice, path):
    for base, h in ((DL, alice), (LEGACY_DL, {})):
        r = env.client.get(f"{base}/{path}", headers=h)
        assert r.status_code == 404, (base, path)
        assert r.get_json()["errcode"] in ("M_NOT_FOUND", "M_UNRECOGNIZED")


def test_bad_timeout_ms_is_invalid_param(env, alice):
    mid = upload(env, alice, b"x")
    for v in ("soon", "-1"):
        r = env.client.get(f"{DL}/{SERVER}/{mid}?timeout_ms={v}", headers=alice)
        assert r.status_code == 400 and r.get_json()["errcode"] == "M_INVALID_PARAM"
    r = env.client.get(f"{DL}/{SERVER}/{mid}?allow_remote=maybe", headers=alice)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_INVALID_PARAM"


def test_download_is_streamed_not_buffered(env, alice):
    data = b"q" * 700_000
    mid = upload(env, alice, data)
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice, buffered=False)
    assert r.is_streamed
    chunks = list(r.response)
    assert len(chunks) > 1 and max(map(len, chunks)) <= 256 * 1024
    assert b"".join(chunks) == data
    r.close()


def test_file_missing_from_disk_is_404(env, alice):
    mid = upload(env, alice, b"x")
    import os

    from store.media import MediaFiles
    os.unlink(MediaFiles(env.store_path).content_path(mid))
    r = env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


@pytest.fixture
def frozen_env(tmp_path):
    yield from make_env(tmp_path, enable_legacy_unauthenticated_media=False)


def test_frozen_legacy_endpoints_hide_new_media(frozen_env):
    h = {"Authorization": f"Bearer {frozen_env.make_user('zoe')}"}
    mid = upload(frozen_env, h, b"new", "text/plain")
    for path in (f"{LEGACY_DL}/{SERVER}/{mid}",
                 f"/_matrix/media/v3/thumbnail/{SERVER}/{mid}?width=32&height=32"):
        r = frozen_env.client.get(path)
        assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    assert frozen_env.client.get(f"{DL}/{SERVER}/{mid}", headers=h).data == b"new"


def test_frozen_legacy_endpoints_still_serve_media_from_before_the_freeze(frozen_env):
    h = {"Authorization": f"Bearer {frozen_env.make_user('yan')}"}
    mid = upload(frozen_env, h, b"old", "text/plain")

    def _unfreeze(txn, media_id):  # as if uploaded before the freeze
        txn.execute("UPDATE local_media SET legacy_allowed = 1 WHERE media_id = ?", (media_id,))

    frozen_env.runtime.db.run("t", _unfreeze, mid, write=True)
    assert frozen_env.client.get(f"{LEGACY_DL}/{SERVER}/{mid}").data == b"old"
