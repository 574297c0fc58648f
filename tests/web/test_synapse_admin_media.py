"""Synapse's admin API over media lists (users/{userId}/media GET and DELETE,
room/{roomId}/media, media/{serverName}/{mediaId}), delete by date and size, the remote
cache purge, protection and quarantine by room and user, server_version and background
updates: answers and errors shaped as Synapse's, pages and orders, deletion of rows and
files through the media actor with a log line naming the admin, and admin-only access."""
from __future__ import annotations

import logging
import os
import time

from store.media import RemoteMedia
from tests.rooms.conftest import Client, user
from web.app import runtime_of

A = "/_synapse/admin/v1"
C = "/_matrix/client/v3"
SERVER = "test.local"


def _upload(c: Client, data: bytes, name: str, ctype: str = "text/plain") -> str:
    r = c.c.post(f"/_matrix/media/v3/upload?filename={name}", data=data,
                 headers={**c.h, "Content-Type": ctype})
    assert r.status_code == 200, r.json
    return r.json["content_uri"].rsplit("/", 1)[1]


def _three(app):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    ids = [_upload(alice, b"x" * n, name) for n, name in ((30, "b.txt"), (10, "c.txt"),
                                                           (20, "a.txt"))]
    return alice, admin, ids


def test_user_media_list_as_synapse_lists_it(app):
    alice, admin, ids = _three(app)
    bob = user(app, "bob")
    _upload(bob, b"bob's", "bob.txt")
    page = admin.req("GET", f"{A}/users/{alice.user_id}/media")
    assert page["total"] == 3 and "next_token" not in page
    assert [m["media_id"] for m in page["media"]] == ids[::-1]      # newest first
    m = page["media"][0]
    assert {"media_id", "media_type", "media_length", "upload_name", "created_ts",
            "last_access_ts", "quarantined_by", "safe_from_quarantine"} <= set(m)
    assert (m["media_type"], m["media_length"], m["upload_name"]) == ("text/plain", 20,
                                                                      "a.txt")
    assert m["quarantined_by"] is None and m["safe_from_quarantine"] is False


def test_user_media_order_and_pages(app):
    alice, admin, ids = _three(app)
    u = f"{A}/users/{alice.user_id}/media"

    def names(q: str) -> list[str]:
        return [m["upload_name"] for m in admin.req("GET", f"{u}?{q}")["media"]]

    assert names("order_by=upload_name") == ["a.txt", "b.txt", "c.txt"]   # dir defaults f
    assert names("order_by=media_length&dir=b") == ["b.txt", "a.txt", "c.txt"]
    assert names("dir=f") == ["b.txt", "c.txt", "a.txt"]
    p1 = admin.req("GET", f"{u}?limit=2")
    assert p1["next_token"] == 2 and p1["total"] == 3 and len(p1["media"]) == 2
    p2 = admin.req("GET", f"{u}?limit=2&from=2")
    assert "next_token" not in p2 and [m["media_id"] for m in p2["media"]] == [ids[0]]
    for q, code in (("order_by=size", "M_INVALID_PARAM"), ("dir=x", "M_INVALID_PARAM"),
                    ("from=-1", "M_INVALID_PARAM"), ("limit=x", "M_INVALID_PARAM")):
        assert admin.req("GET", f"{u}?{q}", status=400)["errcode"] == code, q


def test_user_media_errors_and_access(app):
    alice, admin, _ = _three(app)
    assert admin.req("GET", f"{A}/users/@nobody:{SERVER}/media", status=404) == {
        "errcode": "M_NOT_FOUND", "error": "Unknown user"}
    r = admin.req("GET", f"{A}/users/@alice:elsewhere.org/media", status=400)
    assert r["error"] == "Can only look up local users"
    assert admin.req("DELETE", f"{A}/users/@alice:elsewhere.org/media", status=400)
    assert admin.req("GET", f"{A}/users/nosigil/media", status=400)["errcode"] == \
        "M_INVALID_PARAM"
    for method in ("GET", "DELETE"):
        r = alice.req(method, f"{A}/users/{alice.user_id}/media", status=403)
        assert r["errcode"] == "M_FORBIDDEN"
        r = alice.c.open(f"{A}/users/{alice.user_id}/media", method=method)
        assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    assert admin.req("GET", f"{A}/users/{alice.user_id}/media")["total"] == 3


def test_delete_user_media_removes_rows_and_files_and_logs(app, caplog):
    alice, admin, ids = _three(app)
    bob = user(app, "bob")
    kept = _upload(bob, b"bob's", "bob.txt")
    files = runtime_of(app).parts["media"].files
    assert all(os.path.exists(files.content_path(i)) for i in ids)
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_media"):
        r = admin.req("DELETE", f"{A}/users/{alice.user_id}/media?limit=2")
    assert r == {"deleted_media": ids[:0:-1], "total": 2}   # the newest page of two
    assert any(admin.user_id in m and alice.user_id in m and ids[2] in m
               for m in caplog.messages)
    for i in ids[1:]:
        assert not os.path.exists(files.content_path(i))
        d = alice.c.get(f"/_matrix/client/v1/media/download/{SERVER}/{i}", headers=alice.h)
        assert d.status_code == 404
    assert os.path.exists(files.content_path(ids[0]))
    left = admin.req("GET", f"{A}/users/{alice.user_id}/media")
    assert left["total"] == 1 and left["media"][0]["media_id"] == ids[0]
    assert admin.req("DELETE", f"{A}/users/{alice.user_id}/media") == {
        "deleted_media": [ids[0]], "total": 1}
    assert admin.req("DELETE", f"{A}/users/{alice.user_id}/media") == {
        "deleted_media": [], "total": 0}
    assert admin.req("GET", f"{A}/users/{bob.user_id}/media")["media"][0]["media_id"] == kept


def test_room_media_lists_the_mxc_uris_of_the_rooms_events(app):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    bob = user(app, "bob")
    room = alice.create_room(preset="public_chat")
    img = _upload(alice, b"\x89PNG-ish", "p.png", "image/png")
    thumb = _upload(alice, b"thumb", "t.png", "image/png")
    alice.send(room, {"msgtype": "m.image", "body": "p.png", "url": f"mxc://{SERVER}/{img}",
                      "info": {"thumbnail_url": f"mxc://{SERVER}/{thumb}"}})
    alice.send(room, {"msgtype": "m.file", "body": "f", "url": "mxc://remote.org/abc123"})
    alice.send(room, {"msgtype": "m.text", "body": "mxc://not.a/url in text"})
    alice.send(room, {"msgtype": "m.file", "body": "bad", "url": "mxc://remote.org/../x"})
    alice.state(room, "m.room.avatar", body={"url": f"mxc://{SERVER}/{img}"})
    other = bob.create_room()
    bob.send(other, {"msgtype": "m.file", "body": "f", "url": "mxc://elsewhere.org/zzz"})
    r = admin.req("GET", f"{A}/room/{room}/media")
    assert r == {"local": [f"mxc://{SERVER}/{img}", f"mxc://{SERVER}/{thumb}"],
                 "remote": ["mxc://remote.org/abc123"]}
    assert admin.req("GET", f"{A}/room/!nosuch:{SERVER}/media") == {"local": [],
                                                                   "remote": []}
    assert admin.req("GET", f"{A}/room/nosigil/media", status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert alice.req("GET", f"{A}/room/{room}/media", status=403)["errcode"] == "M_FORBIDDEN"


def test_room_media_reads_past_one_batch(app):
    admin = user(app, "root", admin=True)   # admins' sends are not rate limited
    room = admin.create_room()
    for i in range(205):
        admin.send(room, {"msgtype": "m.file", "body": "f", "url": f"mxc://r.org/m{i}"})
    remote = admin.req("GET", f"{A}/room/{room}/media")["remote"]
    assert remote == [f"mxc://r.org/m{i}" for i in range(204, -1, -1)]


def test_media_info_local_and_remote(app):
    alice, admin, ids = _three(app)
    info = admin.req("GET", f"{A}/media/{SERVER}/{ids[0]}")["media_info"]
    assert info["media_id"] == ids[0] and info["user_id"] == alice.user_id
    assert (info["media_origin"], info["media_length"], info["upload_name"]) == (
        None, 30, "b.txt")
    runtime_of(app).parts["media"].store.insert_remote_media(RemoteMedia(
        "remote.org", "abc", "fsid123", "image/png", "r.png", 7, "00", None, 1234, None,
        True))
    info = admin.req("GET", f"{A}/media/remote.org/abc")["media_info"]
    assert (info["media_origin"], info["user_id"], info["filesystem_id"],
            info["created_ts"]) == ("remote.org", None, "fsid123", 1234)
    for path in (f"{SERVER}/nosuch", "remote.org/nosuch", f"{SERVER}/bad%20id"):
        assert admin.req("GET", f"{A}/media/{path}", status=404)["errcode"] == "M_NOT_FOUND"
    assert alice.req("GET", f"{A}/media/{SERVER}/{ids[0]}", status=403)


def test_server_version(app):
    admin, alice = user(app, "root", admin=True), user(app, "alice")
    import atrium

    assert admin.req("GET", f"{A}/server_version") == {
        "server_version": f"Atrium {atrium.__version__}"}
    assert alice.req("GET", f"{A}/server_version", status=403)["errcode"] == "M_FORBIDDEN"


def test_background_updates_report_a_follower_that_is_behind(app):
    admin, alice = user(app, "root", admin=True), user(app, "alice")
    rt = runtime_of(app)
    stream = rt.parts["rooms"].events.stream
    indexer = rt.parts["search"].indexer
    room = alice.create_room()
    alice.send(room, {"msgtype": "m.text", "body": "indexed"})
    assert indexer.wait_for(stream.current(), 10)
    assert rt.parts["user_directory_follower"].wait_for(stream.current(), 10)
    assert admin.req("GET", f"{A}/background_updates/status") == {
        "enabled": True, "current_updates": {}}
    indexer.stop()          # a follower that falls behind (as after a restart, in bulk)
    search = rt.parts["background_progress"][0]
    assert search.name == "search_index"
    search.threshold = 1
    for i in range(3):
        alice.send(room, {"msgtype": "m.text", "body": f"late {i}"})
    st = admin.req("GET", f"{A}/background_updates/status")
    assert st["enabled"] is True
    up = st["current_updates"]["master"]
    assert up["name"] == "search_index" and up["items_remaining"] >= 3
    assert up["total_item_count"] >= 1 and up["total_duration_ms"] > 0
    assert up["average_items_per_ms"] > 0
    assert alice.req("GET", f"{A}/background_updates/status", status=403)


def test_background_updates_enabled_and_start_job(app):
    admin, alice = user(app, "root", admin=True), user(app, "alice")
    en = f"{A}/background_updates/enabled"
    assert admin.req("GET", en) == {"enabled": True}
    assert admin.req("POST", en, {"enabled": True}) == {"enabled": True}
    r = admin.req("POST", en, {"enabled": False}, status=400)
    assert "cannot be paused" in r["error"]
    assert admin.req("POST", en, {"enabled": "no"}, status=400)["errcode"] == "M_UNKNOWN"
    job = f"{A}/background_updates/start_job"
    assert admin.req("POST", job, {}, status=400)["errcode"] == "M_MISSING_PARAM"
    assert admin.req("POST", job, {"job_name": 5}, status=400)["errcode"] == "M_BAD_JSON"
    r = admin.req("POST", job, {"job_name": "regenerate_directory"}, status=400)
    assert "regenerate_directory" in r["error"]
    assert admin.req("POST", job, {"job_name": "nope"}, status=400)["error"] == \
        "Invalid job_name"
    assert alice.req("POST", en, {"enabled": True}, status=403)["errcode"] == "M_FORBIDDEN"


# -- delete by date, purge the remote cache, protect, quarantine by room and user ---------

def _now() -> int:
    return int(time.time() * 1000)


def _age(app, media_id: str, created_ts: int, last_access_ts: int | None = None) -> None:
    runtime_of(app).db.run("age", lambda txn: txn.execute(
        "UPDATE local_media SET created_ts = ?, last_access_ts = ? WHERE media_id = ?",
        (created_ts, last_access_ts, media_id)), write=True)


def _exists(app, media_id: str) -> bool:
    return runtime_of(app).parts["media"].store.get_local_media(media_id) is not None


def test_delete_by_date_and_size_keeps_recent_small_avatars_quarantined_and_protected(
        app, caplog):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    old = _now() - 86_400_000
    names = ("gone", "used", "small", "avatar", "roomav", "quar", "prot", "new")
    ids = {n: _upload(alice, b"x" * (3 if n == "small" else 50), f"{n}.txt") for n in names}
    for n in names[:-1]:
        _age(app, ids[n], old)
    _age(app, ids["used"], old, _now() - 1000)          # accessed lately
    alice.req("PUT", f"{C}/profile/{alice.user_id}/avatar_url",
              {"avatar_url": f"mxc://{SERVER}/{ids['avatar']}"})
    room = alice.create_room()
    alice.state(room, "m.room.avatar", body={"url": f"mxc://{SERVER}/{ids['roomav']}"})
    admin.req("POST", f"{A}/media/quarantine/{SERVER}/{ids['quar']}", {})
    admin.req("POST", f"{A}/media/protect/{ids['prot']}", {})
    files = runtime_of(app).parts["media"].files
    before = _now() - 60_000
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_media"):
        r = admin.req("POST", f"{A}/media/{SERVER}/delete?before_ts={before}&size_gt=10")
    assert r == {"deleted_media": [ids["gone"]], "total": 1}
    assert any(admin.user_id in m and ids["gone"] in m for m in caplog.messages)
    assert not _exists(app, ids["gone"]) and not os.path.exists(files.content_path(ids["gone"]))
    assert all(_exists(app, ids[n]) for n in names[1:])
    # the newer path; keep_profiles=false takes the avatars too
    r = admin.req("POST", f"{A}/media/delete?before_ts={before}&keep_profiles=false")
    assert sorted(r["deleted_media"]) == sorted([ids["small"], ids["avatar"], ids["roomav"]])
    assert r["total"] == 3
    assert all(_exists(app, ids[n]) for n in ("used", "quar", "prot", "new"))


def test_delete_by_date_counts_a_download_held_in_memory(app):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    mid = _upload(alice, b"x" * 20, "x.txt")
    _age(app, mid, _now() - 86_400_000)
    d = alice.c.get(f"/_matrix/client/v1/media/download/{SERVER}/{mid}", headers=alice.h)
    assert d.status_code == 200
    r = admin.req("POST", f"{A}/media/delete?before_ts={_now() - 60_000}")
    assert r == {"deleted_media": [], "total": 0}
    assert admin.req("POST", f"{A}/media/delete?before_ts={_now() + 1}")["total"] == 1


def test_delete_by_date_errors_as_synapse(app):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    now = _now()
    for path in (f"{A}/media/delete", f"{A}/media/{SERVER}/delete"):
        for q, code in (("", "M_MISSING_PARAM"), ("before_ts=x", "M_INVALID_PARAM"),
                        ("before_ts=-1", "M_INVALID_PARAM"), ("before_ts=1000",
                                                              "M_INVALID_PARAM"),
                        (f"before_ts={now}&size_gt=-1", "M_INVALID_PARAM"),
                        (f"before_ts={now}&keep_profiles=maybe", "M_INVALID_PARAM")):
            assert admin.req("POST", f"{path}?{q}", status=400)["errcode"] == code, (path, q)
        assert alice.req("POST", f"{path}?before_ts={now}", status=403)["errcode"] == \
            "M_FORBIDDEN"
        assert alice.c.post(f"{path}?before_ts={now}").status_code == 401
    r = admin.req("POST", f"{A}/media/elsewhere.org/delete?before_ts={now}", status=400)
    assert r == {"errcode": "M_UNKNOWN", "error": "Can only delete local media"}
    r = admin.req("POST", f"{A}/media/{SERVER}/delete?before_ts=1000", status=400)
    assert "year 1970" in r["error"]


def _cache_remote(app, origin: str, media_id: str, created_ts: int,
                  quarantined_by: str | None = None) -> str:
    media = runtime_of(app).parts["media"]
    fsid = f"fs{media_id}"
    for path in (media.files.remote_content_path(fsid),
                 os.path.join(media.files.remote_thumbnail_dir(fsid), "32x32-crop-s")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"bytes")
    media.store.insert_remote_media(RemoteMedia(
        origin, media_id, fsid, "image/png", None, 5, "00", None, created_ts, quarantined_by,
        True))
    return fsid


def test_purge_media_cache_drops_old_remote_media_rows_and_files(app, caplog):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    old, media = _now() - 86_400_000, runtime_of(app).parts["media"]
    fs_old = _cache_remote(app, "r.org", "old1", old)
    _cache_remote(app, "r.org", "quar1", old, quarantined_by=admin.user_id)
    _cache_remote(app, "r.org", "fresh1", _now())
    _cache_remote(app, "r.org", "used1", old)
    d = alice.c.get("/_matrix/client/v1/media/download/r.org/used1", headers=alice.h)
    assert d.status_code == 200          # held in memory: written before the purge reads
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_media"):
        r = admin.req("POST", f"{A}/purge_media_cache?before_ts={_now() - 60_000}")
    assert r == {"deleted": 1}
    assert any(admin.user_id in m and "purged 1" in m for m in caplog.messages)
    assert media.store.get_remote_media("r.org", "old1") is None
    assert not os.path.exists(media.files.remote_content_path(fs_old))
    assert not os.path.exists(media.files.remote_thumbnail_dir(fs_old))
    for kept in ("quar1", "fresh1", "used1"):
        assert media.store.get_remote_media("r.org", kept) is not None
    assert media.store.pending_file_removals() == []
    assert admin.req("POST", f"{A}/purge_media_cache", status=400)["errcode"] == \
        "M_MISSING_PARAM"
    assert admin.req("POST", f"{A}/purge_media_cache?before_ts=5", status=400)["errcode"] \
        == "M_INVALID_PARAM"
    assert alice.req("POST", f"{A}/purge_media_cache?before_ts={_now()}", status=403)


def test_protected_media_is_never_quarantined(app, caplog):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    mid, other = _upload(alice, b"safe", "s.txt"), _upload(alice, b"not", "n.txt")
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_media"):
        assert admin.req("POST", f"{A}/media/protect/{mid}", {}) == {}
    assert any(admin.user_id in m and "protected" in m and mid in m for m in caplog.messages)
    info = admin.req("GET", f"{A}/media/{SERVER}/{mid}")["media_info"]
    assert info["safe_from_quarantine"] is True
    listed = {m["media_id"]: m["safe_from_quarantine"]
              for m in admin.req("GET", f"{A}/users/{alice.user_id}/media")["media"]}
    assert listed == {mid: True, other: False}
    admin.req("POST", f"{A}/media/quarantine/{SERVER}/{mid}", {})
    dl = f"/_matrix/client/v1/media/download/{SERVER}/{mid}"
    assert alice.c.get(dl, headers=alice.h).status_code == 200
    r = admin.req("POST", f"{A}/user/{alice.user_id}/media/quarantine", {})
    assert r == {"num_quarantined": 1}                 # the other one
    assert alice.c.get(dl, headers=alice.h).status_code == 200
    order = admin.req("GET", f"{A}/users/{alice.user_id}/media?order_by=safe_from_quarantine")
    assert [m["media_id"] for m in order["media"]] == [other, mid]
    assert admin.req("POST", f"{A}/media/unprotect/{mid}", {}) == {}
    assert admin.req("GET", f"{A}/media/{SERVER}/{mid}")["media_info"][
        "safe_from_quarantine"] is False
    assert admin.req("POST", f"{A}/user/{alice.user_id}/media/quarantine", {}) == {
        "num_quarantined": 1}
    assert alice.c.get(dl, headers=alice.h).status_code == 404
    for path in ("protect/nosuch", "unprotect/nosuch", "protect/a.b"):
        assert admin.req("POST", f"{A}/media/{path}", {}, status=404)["errcode"] == \
            "M_NOT_FOUND"
    assert alice.req("POST", f"{A}/media/protect/{mid}", {}, status=403)
    assert alice.c.post(f"{A}/media/unprotect/{mid}").status_code == 401


def test_quarantine_room_media_local_and_remote(app, caplog):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    room = alice.create_room()
    img, safe, elsewhere = (_upload(alice, b"i", "i.png"), _upload(alice, b"s", "s.png"),
                            _upload(alice, b"e", "e.png"))
    _cache_remote(app, "r.org", "remote1", _now())
    admin.req("POST", f"{A}/media/protect/{safe}", {})
    alice.send(room, {"msgtype": "m.image", "body": "i", "url": f"mxc://{SERVER}/{img}",
                      "info": {"thumbnail_url": f"mxc://{SERVER}/{safe}"}})
    alice.send(room, {"msgtype": "m.file", "body": "f", "url": "mxc://r.org/remote1"})
    alice.send(room, {"msgtype": "m.file", "body": "f", "url": "mxc://r.org/notcached"})
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_media"):
        r = admin.req("POST", f"{A}/room/{room}/media/quarantine", {})
    assert r == {"num_quarantined": 2}        # img and the cached remote item
    assert any(admin.user_id in m and room in m and "quarantined 2" in m
               for m in caplog.messages)
    dl = "/_matrix/client/v1/media/download"
    for path, code in ((f"{SERVER}/{img}", 404), (f"{SERVER}/{safe}", 200),
                       (f"{SERVER}/{elsewhere}", 200), ("r.org/remote1", 404)):
        assert alice.c.get(f"{dl}/{path}", headers=alice.h).status_code == code, path
    info = admin.req("GET", f"{A}/media/{SERVER}/{img}")["media_info"]
    assert info["quarantined_by"] == admin.user_id
    # the legacy path does the same (already quarantined items are counted again, as Synapse)
    assert admin.req("POST", f"{A}/quarantine_media/{room}", {}) == {"num_quarantined": 2}
    assert admin.req("POST", f"{A}/room/!nosuch:{SERVER}/media/quarantine", {}) == {
        "num_quarantined": 0}
    assert admin.req("POST", f"{A}/room/nosigil/media/quarantine", {},
                     status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.req("POST", f"{A}/room/{room}/media/quarantine", {}, status=403)


def test_quarantine_user_media_errors(app):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    q = "media/quarantine"
    assert admin.req("POST", f"{A}/user/{alice.user_id}/{q}", {}) == {"num_quarantined": 0}
    assert admin.req("POST", f"{A}/user/@nobody:{SERVER}/{q}", {}, status=404)["errcode"] \
        == "M_NOT_FOUND"
    assert admin.req("POST", f"{A}/user/@a:elsewhere.org/{q}", {}, status=400)["errcode"] \
        == "M_UNKNOWN"
    assert admin.req("POST", f"{A}/user/nosigil/{q}", {}, status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert alice.req("POST", f"{A}/user/{alice.user_id}/{q}", {}, status=403)


def test_delete_one_media_logs_the_admin(app, caplog):
    alice, admin = user(app, "alice"), user(app, "root", admin=True)
    mid = _upload(alice, b"x", "x.txt")
    with caplog.at_level(logging.INFO, logger="web.media"):
        assert admin.req("DELETE", f"{A}/media/{SERVER}/{mid}") == {
            "deleted_media": [mid], "total": 1}
    assert [m for m in caplog.messages if admin.user_id in m and mid in m
            and "deleted" in m]
