"""Synapse's admin media API: quarantine (and lifting it) and deletion."""
from __future__ import annotations

from tests.media.conftest import SERVER, files_under, image_bytes, upload

DL = "/_matrix/client/v1/media/download"
Q = "/_synapse/admin/v1/media/quarantine"
UNQ = "/_synapse/admin/v1/media/unquarantine"


def test_quarantine_requires_an_admin(env, alice):
    mid = upload(env, alice, b"x")
    r = env.client.post(f"{Q}/{SERVER}/{mid}", headers=alice)
    assert r.status_code == 403 and r.get_json()["errcode"] == "M_FORBIDDEN"
    assert env.client.post(f"{Q}/{SERVER}/{mid}").status_code == 401


def test_quarantined_media_is_404_everywhere_until_lifted(env, alice, admin):
    mid = upload(env, alice, image_bytes("PNG"), "image/png")
    r = env.client.post(f"{Q}/{SERVER}/{mid}", headers=admin)
    assert r.status_code == 200 and r.get_json() == {}
    for path, h in ((f"{DL}/{SERVER}/{mid}", alice),
                    (f"/_matrix/media/v3/download/{SERVER}/{mid}", {}),
                    (f"/_matrix/client/v1/media/thumbnail/{SERVER}/{mid}?width=32&height=32",
                     alice)):
        r = env.client.get(path, headers=h)
        assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND", path
    assert env.client.post(f"{UNQ}/{SERVER}/{mid}", headers=admin).status_code == 200
    assert env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice).status_code == 200


def test_quarantine_of_unknown_or_remote_media_is_accepted_like_synapse(env, admin):
    assert env.client.post(f"{Q}/{SERVER}/nosuch", headers=admin).get_json() == {}
    assert env.client.post(f"{Q}/remote.example/abc", headers=admin).get_json() == {}
    assert env.client.post(f"{Q}/{SERVER}/a.b", headers=admin).status_code == 404


def test_delete_removes_row_file_and_thumbnails(env, alice, admin):
    mid = upload(env, alice, image_bytes("PNG"), "image/png")
    r = env.client.get(f"/_matrix/client/v1/media/thumbnail/{SERVER}/{mid}"
                       "?width=32&height=32&method=crop", headers=alice)
    assert r.status_code == 200
    assert len(files_under(env.store_path)) == 2
    r = env.client.delete(f"/_synapse/admin/v1/media/{SERVER}/{mid}", headers=admin)
    assert r.status_code == 200 and r.get_json() == {"deleted_media": [mid], "total": 1}
    assert files_under(env.store_path) == []
    assert env.client.get(f"{DL}/{SERVER}/{mid}", headers=alice).status_code == 404
    r = env.client.delete(f"/_synapse/admin/v1/media/{SERVER}/{mid}", headers=admin)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


def test_delete_refuses_remote_media_and_non_admins(env, alice, admin):
    r = env.client.delete("/_synapse/admin/v1/media/remote.example/abc", headers=admin)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_INVALID_PARAM"
    mid = upload(env, alice, b"x")
    r = env.client.delete(f"/_synapse/admin/v1/media/{SERVER}/{mid}", headers=alice)
    assert r.status_code == 403
