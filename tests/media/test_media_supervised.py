"""The media actor under the ``media`` supervisor: injected crashes (through Atrium's admin
fault-injection endpoint) fail only the request that hit them, the actor restarts and
earlier media stays available, and thumbnail requests never hang on a crashed or stopped
incarnation."""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator

import gevent
import pytest
from gevent import monkey

import actors.media
from actors.media import MEDIA_KEY
from store.media import MediaFiles
from tests.media.conftest import SERVER, MediaEnv, files_under, image_bytes, make_env, upload

FAULT = f"/_atrium/admin/v1/actors/media/{MEDIA_KEY}/fault"
DL = "/_matrix/client/v1/media/download"
TH = "/_matrix/client/v1/media/thumbnail"
_real_sleep: Callable[[float], None] = monkey.get_original("time", "sleep")


@pytest.fixture
def fenv(tmp_path: Any) -> Iterator[MediaEnv]:
    yield from make_env(tmp_path, enable_fault_injection=True)


@pytest.fixture
def users(fenv: MediaEnv) -> tuple[dict[str, str], dict[str, str]]:
    alice = {"Authorization": f"Bearer {fenv.make_user('alice')}"}
    root = {"Authorization": f"Bearer {fenv.make_user('root', admin=True)}"}
    return alice, root


def _sup(env: MediaEnv) -> Any:
    return env.runtime.parts["supervisors"]["media"]


def _arm(env: MediaEnv, admin: dict[str, str], kind: str = "crash", count: int = 1) -> None:
    r = env.client.post(FAULT, json={"kind": kind, "count": count}, headers=admin)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"key": MEDIA_KEY, "kind": kind, "armed": count}


def _post_upload(env: MediaEnv, headers: dict[str, str], data: bytes,
                 content_type: str = "application/octet-stream") -> Any:
    return env.client.post("/_matrix/media/v3/upload", data=data,
                           headers={**headers, "Content-Type": content_type})


def _thumb(env: MediaEnv, headers: dict[str, str], mid: str, w: int = 96, h: int = 96) -> Any:
    return env.client.get(f"{TH}/{SERVER}/{mid}",
                          query_string={"width": w, "height": h, "method": "crop"},
                          headers=headers)


def _tmp_files(env: MediaEnv) -> list[str]:
    return os.listdir(MediaFiles(env.store_path).tmp_dir)


def _thumb_files(env: MediaEnv) -> list[str]:
    return [p for p in files_under(env.store_path) if "local_thumbnails" in p]


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        gevent.sleep(0.01)


def _assert_internal_error(r: Any) -> None:
    assert r.status_code == 500
    assert r.is_json and r.get_json()["errcode"] == "M_UNKNOWN", r.data


@pytest.fixture
def gated_render(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Renders wait (in the thread pool, without gevent) until ``gate[0]`` is True."""
    gate = [False]
    real = actors.media.render

    def slow_render(*args: Any) -> Any:
        deadline = time.monotonic() + 10
        while not gate[0] and time.monotonic() < deadline:
            _real_sleep(0.005)
        return real(*args)

    monkeypatch.setattr(actors.media, "render", slow_render)
    try:
        yield gate
    finally:
        gate[0] = True


def _wait_inflight(env: MediaEnv, n: int = 1) -> None:
    _eventually(lambda: _sup(env).inspect(MEDIA_KEY, lambda a: len(a._inflight)) == n)


@pytest.mark.parametrize("kind", ["crash", "fatal"])
def test_injected_crash_fails_one_upload_then_the_actor_recovers(fenv, users, kind):
    alice, root = users
    before = upload(fenv, alice, b"uploaded before the crash", "text/plain")
    _arm(fenv, root, kind)
    r = _post_upload(fenv, alice, b"this one hits the fault")
    _assert_internal_error(r)
    assert not _tmp_files(fenv)  # the handler removed the uncommitted temp file
    after = upload(fenv, alice, b"uploaded after the crash", "text/plain")
    for mid, body in ((before, b"uploaded before the crash"),
                      (after, b"uploaded after the crash")):
        r = fenv.client.get(f"{DL}/{SERVER}/{mid}", headers=alice)
        assert r.status_code == 200 and r.data == body
    child = _sup(fenv).child(MEDIA_KEY)
    assert child["state"] == "running" and child["restarts"] == 1
    assert child["incarnation"] == 2
    stats = fenv.client.get("/_atrium/admin/v1/actors", headers=root).get_json()["media"]
    assert stats["stats"]["crashes"] == 1


def test_media_supervisor_is_registered_and_traced(fenv, users):
    alice, root = users
    upload(fenv, alice, b"traced")
    body = fenv.client.get("/_atrium/admin/v1/actors", headers=root).get_json()
    assert {"media", "rooms"} <= set(body)
    assert [c["key"] for c in body["media"]["children"]] == [MEDIA_KEY]
    tracer = fenv.runtime.parts["tracer"]
    assert _sup(fenv).tracer is tracer
    recs = tracer.recent(MEDIA_KEY, 10)
    assert any(r.to_dict().get("type") == "CommitUpload" for r in recs), \
        [r.to_dict() for r in recs]


def test_fault_endpoint_is_hidden_without_the_setting(env, admin):
    r = env.client.post(FAULT, json={"kind": "crash"}, headers=admin)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_UNRECOGNIZED"


def test_thumbnail_request_that_hits_the_fault_gets_500_then_works(fenv, users):
    alice, root = users
    mid = upload(fenv, alice, image_bytes("PNG", (400, 300)), "image/png")
    _arm(fenv, root)
    _assert_internal_error(_thumb(fenv, alice, mid))
    r = _thumb(fenv, alice, mid)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"


def test_inflight_thumbnail_fails_cleanly_when_the_actor_crashes(fenv, users, gated_render):
    alice, root = users
    mid = upload(fenv, alice, image_bytes("PNG", (400, 300)), "image/png")
    waiting = gevent.spawn(_thumb, fenv, alice, mid)
    _wait_inflight(fenv)
    _arm(fenv, root)
    _assert_internal_error(_post_upload(fenv, alice, b"crashes the actor"))
    # the crashed incarnation's ticket is failed at once, not left to time out
    r = waiting.get(timeout=5)
    _assert_internal_error(r)
    # the old render finishes later; the new incarnation drops its result
    gated_render[0] = True
    _eventually(lambda: not _tmp_files(fenv))
    assert not _thumb_files(fenv)
    assert _sup(fenv).inspect(MEDIA_KEY, lambda a: len(a._inflight)) == 0
    r = _thumb(fenv, alice, mid)
    assert r.status_code == 200 and len(_thumb_files(fenv)) == 1
    assert not _tmp_files(fenv)


def test_thumbnail_and_upload_racing_a_crash_neither_hangs(fenv, users):
    alice, root = users
    mid = upload(fenv, alice, image_bytes("JPEG", (800, 600)), "image/jpeg")
    _arm(fenv, root)
    jobs = [gevent.spawn(_thumb, fenv, alice, mid, 320, 240),
            gevent.spawn(_post_upload, fenv, alice, b"racing")]
    gevent.joinall(jobs, timeout=10)
    assert all(j.ready() for j in jobs)
    statuses = sorted(j.value.status_code for j in jobs)
    assert statuses == [200, 500], statuses  # whichever reached the actor first crashed it
    assert _thumb(fenv, alice, mid, 320, 240).status_code == 200


def test_shutdown_fails_inflight_thumbnails_and_cleans_up(fenv, users, gated_render):
    alice, _ = users
    mid = upload(fenv, alice, image_bytes("PNG", (400, 300)), "image/png")
    waiting = gevent.spawn(_thumb, fenv, alice, mid)
    _wait_inflight(fenv)
    assert _sup(fenv).stop_all(timeout=5)
    r = waiting.get(timeout=5)
    assert r.status_code == 503 and r.get_json()["errcode"] == "M_UNKNOWN"
    assert _post_upload(fenv, alice, b"too late").status_code == 503
    gated_render[0] = True  # the render's report is refused; its temp file goes
    _eventually(lambda: not _tmp_files(fenv))
    assert not _thumb_files(fenv)


def test_repeated_crashes_park_the_media_actor_with_503(tmp_path):
    gen = make_env(tmp_path, enable_fault_injection=True,
                   actors={"max_restarts": 1, "park_duration": "30s"})
    fenv = next(gen)
    try:
        alice = {"Authorization": f"Bearer {fenv.make_user('alice')}"}
        root = {"Authorization": f"Bearer {fenv.make_user('root', admin=True)}"}
        mid = upload(fenv, alice, b"before")
        _arm(fenv, root, count=2)
        _assert_internal_error(_post_upload(fenv, alice, b"one"))
        _eventually(lambda: _sup(fenv).child(MEDIA_KEY)["state"] == "running")
        _assert_internal_error(_post_upload(fenv, alice, b"two"))
        r = _post_upload(fenv, alice, b"parked")
        assert r.status_code == 503 and r.get_json()["errcode"] == "M_UNKNOWN"
        assert "retry_after_ms" in r.get_json()
        # reads do not go through the actor: stored media stays downloadable
        assert fenv.client.get(f"{DL}/{SERVER}/{mid}", headers=alice).data == b"before"
        assert not _tmp_files(fenv)
    finally:
        gen.close()
