"""Device-list tracking: a key change appears in ``device_lists.changed`` for users sharing
a room, ``GET /keys/changes`` reports the same between two sync tokens, and deleting a
device removes its keys (and is announced)."""
from store.accounts import AccountStore
from tests.e2ee.conftest import V, password_auth, user
from web.app import runtime_of


def _shared_room(alice, bob):
    room = alice.create_room(preset="private_chat")
    alice.invite(room, bob.user_id)
    bob.join(room)
    return room


def test_key_upload_marks_device_list_changed_for_room_members(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    _shared_room(alice, bob)
    bob_since = bob.sync()["next_batch"]
    carol_since = carol.sync()["next_batch"]
    alice.upload(device_keys=alice.device_keys())
    b = bob.sync(bob_since)
    assert alice.user_id in b["device_lists"]["changed"]
    assert alice.user_id not in carol.sync(carol_since)["device_lists"]["changed"]
    changes = bob.req("GET", f"{V}/keys/changes",
                      query={"from": bob_since, "to": b["next_batch"]})
    assert alice.user_id in changes["changed"] and changes["left"] == []
    # an identical re-upload is not a change
    alice.upload(device_keys=alice.device_keys())
    assert bob.sync(b["next_batch"])["device_lists"]["changed"] == []


def test_keys_changes_reports_left_users(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = _shared_room(alice, bob)
    since = alice.sync()["next_batch"]
    bob.leave(room)
    upto = alice.sync(since)["next_batch"]
    changes = alice.req("GET", f"{V}/keys/changes", query={"from": since, "to": upto})
    assert changes["left"] == [bob.user_id]
    alice.req("GET", f"{V}/keys/changes", query={"from": since}, status=400)
    alice.req("GET", f"{V}/keys/changes", query={"from": "x", "to": upto}, status=400)


def test_deleting_a_device_removes_its_keys_and_is_announced(app):
    phone, laptop = user(app, "alice", devices=("", "2"))
    bob = user(app, "bob")
    _shared_room(phone, bob)
    laptop.upload(device_keys=laptop.device_keys(), one_time_keys=laptop.otks(3),
                  fallback_keys={"signed_curve25519:F": {"key": "f"}})
    phone.upload(device_keys=phone.device_keys())
    since = bob.sync()["next_batch"]
    assert set(bob.query([phone.user_id])["device_keys"][phone.user_id]) == \
        {phone.device_id, laptop.device_id}
    r = phone.req("DELETE", f"{V}/devices/{laptop.device_id}", {}, status=401)
    phone.req("DELETE", f"{V}/devices/{laptop.device_id}",
              {"auth": password_auth(r["session"], "alice")})
    assert set(bob.query([phone.user_id])["device_keys"][phone.user_id]) == {phone.device_id}
    assert bob.claim({phone.user_id: {laptop.device_id: "signed_curve25519"}})[
        "one_time_keys"] == {}
    assert phone.user_id in bob.sync(since)["device_lists"]["changed"]
    db = runtime_of(app).db
    for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys"):
        assert db.run("n", lambda t: t.query_value(
            f"SELECT COUNT(*) FROM {table} WHERE device_id = ?", (laptop.device_id,))) == 0


def test_deactivation_removes_cross_signing_keys(app):
    from tests.e2ee.conftest import CrossSigning

    alice, bob = user(app, "alice"), user(app, "bob")
    xs = CrossSigning(alice.user_id)
    alice.req("POST", f"{V}/keys/device_signing/upload", xs.upload_body())
    assert alice.user_id in bob.query([alice.user_id])["master_keys"]
    accounts: AccountStore = runtime_of(app).parts["accounts"]
    accounts.deactivate(alice.user_id)
    got = bob.query([alice.user_id])
    assert got["master_keys"] == {} and got["device_keys"][alice.user_id] == {}
