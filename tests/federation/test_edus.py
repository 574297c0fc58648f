"""Inbound EDUs (federation/edus.py): m.direct_to_device delivered once to the right local
devices and seen by their /sync, spoofed senders dropped; m.device_list_update applied in
order, a gap resynced through the (fake) federation client, deletions; m.signing_key_update
stored; remote changes reaching local /sync and /keys/changes."""
import gevent

from tests.federation.inbound_helpers import (  # noqa: F401 - fixture
    REMOTE, V, device_keys, list_update, server, to_device_edu, wait_until, xsign_key)

BOB = "@bob:remote.test"
ALICE_R = "@alice:remote.test"
DEVICES_PATH = "/_matrix/federation/v1/user/devices/%40alice%3Aremote.test"


def _td(sync):
    return sync["to_device"]["events"]


# ---------------------------------------------------------------- m.direct_to_device

def test_to_device_reaches_the_right_device_once(server):
    alice = server.add_user("alice", devices=("A", "B"))
    a0, b0 = alice.sync(device="A"), alice.sync(device="B")
    edu = to_device_edu(BOB, "m1", {alice.user_id: {"A": {"secret": 1}}})
    server.send_edus([edu])
    server.send_edus([edu])  # another transaction repeating the message id
    got = alice.sync(a0["next_batch"], device="A")
    assert _td(got) == [{"sender": BOB, "type": "m.room_key_request",
                         "content": {"secret": 1}}]
    assert _td(alice.sync(b0["next_batch"], device="B")) == []
    # acknowledged by the next since: nothing again
    assert _td(alice.sync(got["next_batch"], device="A")) == []
    assert wait_until(lambda: server.inbox(alice.user_id) == [])  # deleted by the user actor


def test_to_device_star_means_every_device_and_unknown_targets_are_ignored(server):
    alice = server.add_user("alice", devices=("A", "B"))
    carol = server.add_user("carol")
    server.send_edus([to_device_edu(BOB, "m1", {
        alice.user_id: {"*": {"k": "all"}},
        carol.user_id: {"NOSUCH": {"k": "x"}},
        "@dave:test.local": {"*": {"k": "nobody"}},     # no such local user
        "@erin:elsewhere.test": {"*": {"k": "remote"}},  # not ours to deliver
    })])
    rows = server.inbox(alice.user_id)
    assert sorted(r[0] for r in rows) == ["A", "B"]
    assert server.inbox(carol.user_id) == []
    assert server.inbox("@dave:test.local") == []


def test_to_device_wakes_a_waiting_sync(server):
    alice = server.add_user("alice")
    since = alice.sync()["next_batch"]
    waiting = gevent.spawn(alice.sync, since, "A", 10_000)
    gevent.sleep(0.2)
    assert not waiting.ready()
    started = gevent.get_hub().loop.now()
    server.send_edus([to_device_edu(BOB, "m1", {alice.user_id: {"A": {"n": 1}}})])
    waiting.join(timeout=5)
    assert waiting.ready() and gevent.get_hub().loop.now() - started < 2
    assert _td(waiting.value)[0]["content"] == {"n": 1}


def test_to_device_from_another_servers_user_is_dropped(server):
    alice = server.add_user("alice")
    server.send_edus([to_device_edu("@eve:other.test", "m1", {alice.user_id: {"A": {}}})])
    assert server.inbox(alice.user_id) == []
    # the same sender through its own server is delivered
    server.send_edus([to_device_edu("@eve:other.test", "m1", {alice.user_id: {"A": {}}})],
                     origin="other.test")
    assert len(server.inbox(alice.user_id)) == 1


# ---------------------------------------------------------------- m.device_list_update

def _track(server, stream_id=5, devices=None):
    server.remote_devices.set_devices(
        ALICE_R, stream_id, devices if devices is not None else
        [{"device_id": "D1", "keys": device_keys(ALICE_R, "D1"), "device_display_name": "one"}])


def test_updates_in_order_are_applied_and_recorded_in_the_stream(server):
    _track(server)
    rows_before = server.stream_users().count(ALICE_R)
    server.send_edus([list_update(ALICE_R, "D2", 6, [5], keys=device_keys(ALICE_R, "D2"),
                                  device_display_name="two")])
    server.send_edus([list_update(ALICE_R, "D1", 7, [6], keys=device_keys(ALICE_R, "D1", "n"))])
    devices = server.remote_devices.get_devices(ALICE_R)
    assert sorted(devices) == ["D1", "D2"]
    assert devices["D2"]["device_display_name"] == "two"
    assert devices["D1"]["keys"]["keys"]["curve25519:D1"] == "curven"
    assert server.remote_devices.state(ALICE_R).stream_id == "7"
    assert server.stream_users().count(ALICE_R) == rows_before + 2
    assert server.client.calls == []  # no resync was needed


def test_deletion_removes_the_device(server):
    _track(server)
    server.send_edus([list_update(ALICE_R, "D1", 6, [5], deleted=True)])
    assert server.remote_devices.get_devices(ALICE_R) == {}
    assert server.remote_devices.query_keys({ALICE_R: []})["device_keys"] == {ALICE_R: {}}


def test_repeated_update_is_not_applied_twice(server):
    _track(server)
    server.send_edus([list_update(ALICE_R, "D2", 6, [5], keys=device_keys(ALICE_R, "D2"))])
    rows = server.stream_users().count(ALICE_R)
    server.send_edus([list_update(ALICE_R, "D2", 6, [5], keys=device_keys(ALICE_R, "D2"))])
    assert server.stream_users().count(ALICE_R) == rows
    assert server.client.calls == []


def test_gap_marks_stale_and_resyncs_through_the_client(server):
    _track(server)
    server.client.answers[DEVICES_PATH] = {
        "user_id": ALICE_R, "stream_id": 42,
        "devices": [{"device_id": "D9", "keys": device_keys(ALICE_R, "D9"),
                     "device_display_name": "nine"}],
        "master_key": xsign_key(ALICE_R, "master", "M"),
        "self_signing_key": xsign_key(ALICE_R, "self_signing", "S")}
    rows = server.stream_users().count(ALICE_R)
    server.send_edus([list_update(ALICE_R, "D3", 8, [7])])  # 6 and 7 were missed
    server.edus.wait_for_resyncs(timeout=3)
    assert [(d, p) for d, p, _ in server.client.calls] == [(REMOTE, DEVICES_PATH)]
    assert server.client.calls[0][2].get("timeout")  # the request is bounded
    assert sorted(server.remote_devices.get_devices(ALICE_R)) == ["D9"]
    st = server.remote_devices.state(ALICE_R)
    assert st.stream_id == "42" and not st.stale
    keys = server.remote_devices.query_keys({ALICE_R: []})
    assert keys["master_keys"][ALICE_R]["keys"] == {"ed25519:M": "M"}
    assert keys["self_signing_keys"][ALICE_R]["usage"] == ["self_signing"]
    assert server.stream_users().count(ALICE_R) == rows + 1
    # the next update relative to the resync is applied directly
    server.send_edus([list_update(ALICE_R, "D9", 43, [42], deleted=True)])
    assert server.remote_devices.get_devices(ALICE_R) == {}
    assert len(server.client.calls) == 1


def test_failed_resync_leaves_the_list_stale(server):
    _track(server)
    server.send_edus([list_update(ALICE_R, "D3", 8, [7])])  # the client has no answer
    server.edus.wait_for_resyncs(timeout=3)
    assert len(server.client.calls) == 1
    assert server.remote_devices.get_devices(ALICE_R) is None
    assert server.remote_devices.query_keys({ALICE_R: []})["missing"] == [ALICE_R]
    # a later update (even in order) cannot be applied to a stale list: it resyncs again
    server.client.answers[DEVICES_PATH] = {"user_id": ALICE_R, "stream_id": 9, "devices": []}
    server.send_edus([list_update(ALICE_R, "D3", 9, [8])])
    server.edus.wait_for_resyncs(timeout=3)
    assert len(server.client.calls) == 2
    assert server.remote_devices.get_devices(ALICE_R) == {}


def test_one_resync_per_user_at_a_time(server):
    _track(server)
    release = gevent.event.Event()

    def slow(dest, path):
        release.wait(3)
        return {"user_id": ALICE_R, "stream_id": 50, "devices": []}

    server.client.answers[DEVICES_PATH] = slow
    server.send_edus([list_update(ALICE_R, "D3", 8, [7])])
    server.send_edus([list_update(ALICE_R, "D4", 9, [8])])
    server.send_edus([list_update(ALICE_R, "D5", 10, [9])])
    gevent.sleep(0.05)
    assert len(server.client.calls) == 1 and server.edus.resyncs_running() == 1
    release.set()
    server.edus.wait_for_resyncs(timeout=3)
    # updates during the fetch make it fetch once more, not once per update
    assert len(server.client.calls) == 2
    assert server.edus.resyncs_running() == 0


def test_update_for_an_untracked_user_without_a_shared_room_is_ignored(server):
    server.send_edus([list_update(ALICE_R, "D1", 1, None)])
    assert server.client.calls == []
    assert server.remote_devices.state(ALICE_R) is None


def test_first_update_for_a_user_sharing_a_room_resyncs(server):
    alice = server.add_user("alice")
    server.join_remote(alice.create_room(), ALICE_R)
    server.client.answers[DEVICES_PATH] = {"user_id": ALICE_R, "stream_id": 3,
                                           "devices": [{"device_id": "D1", "keys": None}]}
    server.send_edus([list_update(ALICE_R, "D1", 3, [2])])
    server.edus.wait_for_resyncs(timeout=3)
    assert list(server.remote_devices.get_devices(ALICE_R)) == ["D1"]


def test_updates_about_another_servers_users_are_dropped(server):
    _track(server)
    server.send_edus([list_update(ALICE_R, "D1", 6, [5], deleted=True),
                      {"edu_type": "m.signing_key_update", "content": {
                          "user_id": ALICE_R, "master_key": xsign_key(ALICE_R, "master", "X")}}],
                     origin="other.test")
    assert list(server.remote_devices.get_devices(ALICE_R)) == ["D1"]
    assert server.remote_devices.cross_signing_keys(ALICE_R) == {}


# ---------------------------------------------------------------- m.signing_key_update

def test_signing_key_update_is_stored_and_recorded(server):
    _track(server)
    rows = server.stream_users().count(ALICE_R)
    server.send_edus([{"edu_type": "m.signing_key_update", "content": {
        "user_id": ALICE_R, "master_key": xsign_key(ALICE_R, "master", "M1"),
        "self_signing_key": xsign_key(ALICE_R, "self_signing", "S1")}}])
    server.send_edus([{"edu_type": "m.signing_key_update", "content": {
        "user_id": ALICE_R, "master_key": xsign_key(ALICE_R, "master", "M2")}}])
    keys = server.remote_devices.cross_signing_keys(ALICE_R)
    assert keys["master"]["keys"] == {"ed25519:M2": "M2"}
    assert keys["self_signing"]["keys"] == {"ed25519:S1": "S1"}
    assert server.stream_users().count(ALICE_R) == rows + 2
    # a key that is not the user's master key is refused
    server.send_edus([{"edu_type": "m.signing_key_update", "content": {
        "user_id": ALICE_R, "master_key": xsign_key("@bob:remote.test", "master", "M3")}}])
    assert server.remote_devices.cross_signing_keys(ALICE_R)["master"]["keys"] == \
        {"ed25519:M2": "M2"}


# ---------------------------------------------------------------- reaching local clients

def test_remote_change_reaches_local_sync_and_keys_changes(server):
    alice = server.add_user("alice")
    room_id = alice.create_room()
    server.join_remote(room_id, ALICE_R)
    _track(server)
    since = alice.sync()["next_batch"]
    waiting = gevent.spawn(alice.sync, since, "A", 10_000)
    gevent.sleep(0.2)
    server.send_edus([list_update(ALICE_R, "D2", 6, [5], keys=device_keys(ALICE_R, "D2"))])
    waiting.join(timeout=5)
    assert waiting.ready(), "the device-list change did not wake the sync"
    assert ALICE_R in waiting.value["device_lists"]["changed"]
    changes = alice.req("GET", f"{V}/keys/changes",
                        query={"from": since, "to": waiting.value["next_batch"]})
    assert ALICE_R in changes["changed"]


def test_remote_change_is_not_shown_to_users_without_a_shared_room(server):
    alice = server.add_user("alice")
    _track(server)
    since = alice.sync()["next_batch"]
    server.send_edus([list_update(ALICE_R, "D2", 6, [5], keys=device_keys(ALICE_R, "D2"))])
    assert wait_until(lambda: server.remote_devices.state(ALICE_R).stream_id == "6")
    assert ALICE_R not in alice.sync(since)["device_lists"]["changed"]


def test_query_keys_shapes(server):
    _track(server, devices=[
        {"device_id": "D1", "keys": device_keys(ALICE_R, "D1"), "device_display_name": "one"},
        {"device_id": "D2", "keys": device_keys(ALICE_R, "D2")},
        {"device_id": "NOKEYS"}])
    server.remote_devices.set_cross_signing(ALICE_R, xsign_key(ALICE_R, "master", "M"))
    out = server.remote_devices.query_keys({ALICE_R: ["D1"], "@zed:remote.test": []})
    assert out["missing"] == ["@zed:remote.test"]
    d1 = out["device_keys"][ALICE_R]["D1"]
    assert list(out["device_keys"][ALICE_R]) == ["D1"]
    assert d1["unsigned"] == {"device_display_name": "one"}
    assert d1["keys"] == device_keys(ALICE_R, "D1")["keys"]
    assert out["master_keys"][ALICE_R]["usage"] == ["master"]
    assert sorted(server.remote_devices.query_keys({ALICE_R: []})["device_keys"][ALICE_R]) \
        == ["D1", "D2"]
    assert sorted(server.remote_devices.get_devices(ALICE_R)) == ["D1", "D2", "NOKEYS"]
