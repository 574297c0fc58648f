"""last_access_ts: downloads and thumbnails of local and cached remote media are recorded in
memory and written in one batch (by the timer, when the map is full, at shutdown, before an
admin read); an older time never overwrites a newer one; a failed write keeps the times.
Also: files of deleted media that a crash left behind are removed when the media actor
starts again."""
from __future__ import annotations

import os
import time
from typing import Any

import gevent
import pytest

from atrium.config import parse_config
from store.database import DatabaseError
from store.media import RemoteMedia
from store.media_access import MediaAccess
from store.testing import database_config, drop_schema
from tests.media.conftest import SERVER, image_bytes, upload
from web.app import create_app, runtime_of

DL = "/_matrix/client/v1/media/download"
TH = "/_matrix/client/v1/media/thumbnail"
A = "/_synapse/admin/v1"


def _access_ts(env, media_id: str) -> int | None:
    return env.runtime.db.run("t", lambda txn: txn.query_value(
        "SELECT last_access_ts FROM local_media WHERE media_id = ?", (media_id,)))


def test_downloads_are_kept_in_memory_and_written_in_one_batch(env, alice):
    ids = [upload(env, alice, image_bytes("PNG", (64, 64)), "image/png") for _ in range(3)]
    access = env.runtime.parts["media"].access
    access.flush()
    t0 = int(time.time() * 1000)
    for _ in range(5):   # repeated downloads: still one entry each
        assert env.client.get(f"{DL}/{SERVER}/{ids[0]}", headers=alice).status_code == 200
    r = env.client.get(f"{TH}/{SERVER}/{ids[1]}?width=16&height=16", headers=alice)
    assert r.status_code == 200
    assert env.client.get(f"/_matrix/media/v3/download/{SERVER}/{ids[0]}").status_code == 200
    assert access.pending() == 2
    assert _access_ts(env, ids[0]) is None and _access_ts(env, ids[1]) is None  # no write yet
    assert access.flush() == 2 and access.pending() == 0
    t1 = int(time.time() * 1000)
    assert t0 <= _access_ts(env, ids[0]) <= t1 and t0 <= _access_ts(env, ids[1]) <= t1
    assert _access_ts(env, ids[2]) is None
    assert access.flush() == 0


def test_refused_downloads_are_not_accesses(env, alice, admin):
    mid = upload(env, alice, b"x")
    env.client.post(f"{A}/media/quarantine/{SERVER}/{mid}", headers=admin)
    assert env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice).status_code == 404
    assert env.client.get(f"{DL}/{SERVER}/nosuch", headers=alice).status_code == 404
    assert env.runtime.parts["media"].access.pending() == 0


def test_admin_list_and_info_show_and_order_by_last_access(env, alice, admin):
    a, b, c = (upload(env, alice, b"x", filename=n) for n in ("a", "b", "c"))
    for mid in (c, a):   # c first, then a; b never
        gevent.sleep(0.005)
        assert env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice).status_code == 200
    u = f"{A}/users/@alice:{SERVER}/media"
    # the list writes what is held in memory first
    page = env.client.get(f"{u}?order_by=last_access_ts&dir=b", headers=admin).get_json()
    assert [m["media_id"] for m in page["media"]] == [a, c, b]   # never accessed: last
    assert page["media"][0]["last_access_ts"] > page["media"][1]["last_access_ts"]
    assert page["media"][2]["last_access_ts"] is None
    page = env.client.get(f"{u}?order_by=last_access_ts", headers=admin).get_json()
    assert [m["media_id"] for m in page["media"]] == [b, c, a]
    assert env.client.get(f"{DL}/{SERVER}/{b}", headers=alice).status_code == 200
    info = env.client.get(f"{A}/media/{SERVER}/{b}", headers=admin).get_json()["media_info"]
    assert info["last_access_ts"] is not None and info["last_access_ts"] >= \
        page["media"][2]["last_access_ts"]


def test_cached_remote_media_access_is_recorded(env, alice, admin):
    media = env.runtime.parts["media"]
    path = media.files.remote_content_path("fsidremote1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"remote bytes")
    media.store.insert_remote_media(RemoteMedia(
        "remote.example", "rmid", "fsidremote1", "text/plain", "r.txt", 12, "00", None,
        1_000, None, True))
    info = env.client.get(f"{A}/media/remote.example/rmid", headers=admin).get_json()
    assert info["media_info"]["last_access_ts"] is None
    r = env.client.get(f"{DL}/remote.example/rmid", headers=alice)
    assert r.status_code == 200 and r.data == b"remote bytes"
    info = env.client.get(f"{A}/media/remote.example/rmid", headers=admin).get_json()
    assert info["media_info"]["last_access_ts"] >= int(time.time() * 1000) - 60_000


def test_an_older_time_never_overwrites_a_newer_one(env, alice):
    mid = upload(env, alice, b"x")
    older, newer = MediaAccess(env.runtime.db), MediaAccess(env.runtime.db)
    older.local(mid)
    gevent.sleep(0.005)
    newer.local(mid)
    newer.flush()
    written = _access_ts(env, mid)
    older.flush()
    assert _access_ts(env, mid) == written


def test_the_timer_writes_and_a_full_map_is_written_at_once(env, alice):
    ids = [upload(env, alice, b"x") for _ in range(3)]
    timed = MediaAccess(env.runtime.db, interval=0.05)
    timed.start()
    try:
        timed.local(ids[0])
        gevent.sleep(0.5)
        assert timed.pending() == 0 and _access_ts(env, ids[0]) is not None
    finally:
        timed.stop()
    full = MediaAccess(env.runtime.db, interval=3600, max_pending=2)
    full.start()
    try:
        full.local(ids[1])
        gevent.sleep(0.2)
        assert full.pending() == 1   # below the bound: waits for the hour
        full.local(ids[2])
        gevent.sleep(0.5)
        assert full.pending() == 0 and _access_ts(env, ids[2]) is not None
    finally:
        full.stop()


def test_a_failed_write_keeps_the_times(db):
    access = MediaAccess(db)
    access.local("someid")
    access.remote("remote.example", "rid")
    db.close()
    with pytest.raises(DatabaseError):
        access.flush()
    assert access.pending() == 2


# -- across a restart ----------------------------------------------------------------------

def _config(tmp_path: Any, dbcfg: dict[str, Any]) -> Any:
    return parse_config({"server_name": SERVER, "database": dbcfg, "bcrypt_rounds": 4,
                         "media_store_path": str(tmp_path / "media"),
                         "signing_key_path": str(tmp_path / "signing.key")},
                        base_dir=str(tmp_path))


@pytest.fixture
def lives(tmp_path: Any) -> Any:
    """Start the server again and again on one database and media store."""
    dbcfg, schema = database_config(str(tmp_path))
    apps: list[Any] = []

    def start() -> Any:
        app = create_app(_config(tmp_path, dbcfg))
        apps.append(app)
        return app

    try:
        yield start
    finally:
        for app in apps:
            runtime_of(app).shutdown()
        drop_schema(schema)


def _user(app: Any, local: str) -> dict[str, str]:
    from tests.media.conftest import _insert_user

    runtime_of(app).db.run("u", _insert_user, f"@{local}:{SERVER}", f"tok_{local}", False,
                           write=True)
    return {"Authorization": f"Bearer tok_{local}"}


def _upload(app: Any, h: dict[str, str], data: bytes) -> str:
    r = app.test_client().post("/_matrix/media/v3/upload", data=data,
                               headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["content_uri"].rsplit("/", 1)[1]


def test_access_times_held_in_memory_are_written_at_shutdown(lives):
    app = lives()
    alice = _user(app, "alice")
    mid = _upload(app, alice, b"x")
    assert app.test_client().get(f"{DL}/{SERVER}/{mid}", headers=alice).status_code == 200
    assert runtime_of(app).parts["media"].access.pending() == 1
    runtime_of(app).shutdown()
    again = lives()
    ts = runtime_of(again).db.run("t", lambda txn: txn.query_value(
        "SELECT last_access_ts FROM local_media WHERE media_id = ?", (mid,)))
    assert ts is not None


def test_files_of_a_deletion_cut_short_are_removed_at_the_next_start(lives):
    app = lives()
    alice = _user(app, "alice")
    mid, kept = _upload(app, alice, b"doomed"), _upload(app, alice, b"kept")
    media = runtime_of(app).parts["media"]
    content = media.files.content_path(mid)
    # the rows went (with the record of the files), then the process died
    assert media.store.delete_media(mid)
    assert os.path.exists(content)
    runtime_of(app).shutdown()
    again = lives()
    media = runtime_of(again).parts["media"]
    assert media.store.pending_file_removals() == [("local", mid)]
    _upload(again, alice, b"anything")   # the media actor starts: load() finishes the job
    assert not os.path.exists(content)
    assert media.store.pending_file_removals() == []
    assert os.path.exists(media.files.content_path(kept))
