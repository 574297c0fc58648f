"""Send-to-device: delivered exactly once per device (kept until a later `since` acknowledges
it, then deleted), idempotent per txn, "*" for all devices; device-list changes."""
import gevent

from store.device_lists import mark_devices_changed
from tests.sync.conftest import V, user
from web.app import runtime_of


def _send(client, messages, txn, etype="m.test", status=200):
    return client.req("PUT", f"{V}/sendToDevice/{etype}/{txn}", {"messages": messages},
                      status=status)


def _td(resp):
    return [(e["sender"], e["type"], e["content"]) for e in resp["to_device"]["events"]]


def _inbox_rows(app):
    return runtime_of(app).db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM device_inbox"))


def test_to_device_delivered_exactly_once(app):
    alice = user(app, "alice")
    bob1, bob2 = user(app, "bob", devices=("1", "2"))
    s1 = bob1.sync()
    _send(alice, {bob1.user_id: {bob1.device_id: {"n": 1}}}, "txn1")
    got = bob1.sync(since=s1["next_batch"])
    assert _td(got) == [(alice.user_id, "m.test", {"n": 1})]
    # the same request again (response lost): delivered again, nothing lost
    again = bob1.sync(since=s1["next_batch"])
    assert _td(again) == _td(got)
    assert _inbox_rows(app) == 1
    # the next since acknowledges: never again, and the row is deleted
    after = bob1.sync(since=got["next_batch"])
    assert _td(after) == []
    gevent.sleep(0.05)
    assert _inbox_rows(app) == 0
    assert _td(bob1.sync(since=after["next_batch"])) == []
    assert _td(bob2.sync()) == []  # the other device got nothing


def test_to_device_txn_is_idempotent_and_star_reaches_all_devices(app):
    alice = user(app, "alice")
    bob1, bob2 = user(app, "bob", devices=("1", "2"))
    since1, since2 = bob1.sync()["next_batch"], bob2.sync()["next_batch"]
    _send(alice, {bob1.user_id: {"*": {"k": "v"}}}, "same")
    _send(alice, {bob1.user_id: {"*": {"k": "v"}}}, "same")
    assert _td(bob1.sync(since=since1)) == [(alice.user_id, "m.test", {"k": "v"})]
    assert _td(bob2.sync(since=since2)) == [(alice.user_id, "m.test", {"k": "v"})]
    # unknown devices and remote users are skipped, bad bodies rejected
    _send(alice, {bob1.user_id: {"NOPE": {}}, "@x:remote.example": {"D": {}}}, "t2")
    assert _send(alice, {bob1.user_id: ["x"]}, "t3", status=400)["errcode"] == "M_BAD_JSON"


def test_to_device_wakes_long_poll_and_paginates(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    since = bob.sync()["next_batch"]
    out = {}
    g = gevent.spawn(lambda: out.setdefault("r", bob.sync(since=since, timeout=5000)))
    gevent.sleep(0.05)
    _send(alice, {bob.user_id: {bob.device_id: {"i": -1}}}, "wake")
    g.join(timeout=3)
    assert _td(out["r"]) == [(alice.user_id, "m.test", {"i": -1})]
    since = out["r"]["next_batch"]
    for i in range(3):
        for j in range(60):
            _send(alice, {bob.user_id: {bob.device_id: {"i": i * 100 + j}}}, f"b{i}-{j}")
    seen = []
    while True:
        r = bob.sync(since=since)
        got = [c["i"] for _, _, c in _td(r)]
        assert len(got) <= 100
        if not got:
            break
        seen.extend(got)
        since = r["next_batch"]
    assert seen == [i * 100 + j for i in range(3) for j in range(60)]


def test_device_deletion_clears_inbox_and_marks_device_list(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = alice.sync()["next_batch"]
    _send(alice, {bob.user_id: {bob.device_id: {"x": 1}}}, "t")
    runtime_of(app).parts["accounts"].delete_devices(bob.user_id, [bob.device_id])
    assert _inbox_rows(app) == 0
    s = alice.sync(since=since)
    assert bob.user_id in s["device_lists"]["changed"]


def test_device_lists_changed_and_left(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = alice.sync()["next_batch"]
    mark_devices_changed(runtime_of(app).db, bob.user_id)
    mark_devices_changed(runtime_of(app).db, carol.user_id)  # shares no room with alice
    s = alice.sync(since=since)
    assert s["device_lists"]["changed"] == [bob.user_id]
    carol.join(room)
    s2 = alice.sync(since=s["next_batch"])
    assert s2["device_lists"]["changed"] == [carol.user_id]
    bob.leave(room)
    s3 = alice.sync(since=s2["next_batch"])
    assert s3["device_lists"]["left"] == [bob.user_id]
    # bob's own view: leaving the only shared room means alice and carol are "left"
    bob_since = bob.sync()["next_batch"]
    bob.join(room)
    s4 = bob.sync(since=bob_since)
    assert set(s4["device_lists"]["changed"]) == {alice.user_id, carol.user_id}
