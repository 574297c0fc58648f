"""GET /threads: thread roots by latest activity, ``include=participated``, pagination, and
the bundled m.thread aggregation (latest_event, count, current_user_participated)."""
from tests.rooms.conftest import user
from tests.rooms.reads_helpers import V1, V3, get, join, messages, q, relate, text


def _threads(client, room_id, status=200, **params):
    return get(client, f"{V1}/rooms/{room_id}/threads", status=status, **params)


def _setup(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = alice.create_room(preset="public_chat")
    join(bob, room_id)
    join(carol, room_id)
    a = text(alice, room_id, "thread A")
    b = text(bob, room_id, "thread B")
    c = text(carol, room_id, "thread C")
    relate(bob, room_id, a, "m.thread", "a1")
    relate(carol, room_id, b, "m.thread", "b1")
    relate(carol, room_id, c, "m.thread", "c1")
    last_a = relate(alice, room_id, a, "m.thread", "a2")          # A is now the most recent
    text(alice, room_id, "not a thread")
    return alice, bob, carol, room_id, a, b, c, last_a


def test_threads_ordered_by_latest_activity_with_bundled_summary(app):
    alice, bob, carol, room_id, a, b, c, last_a = _setup(app)
    r = _threads(alice, room_id)
    assert [e["event_id"] for e in r["chunk"]] == [a, c, b]
    assert "next_batch" not in r
    summary = r["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 2
    assert summary["latest_event"]["event_id"] == last_a
    assert summary["latest_event"]["content"]["body"] == "a2"
    assert summary["current_user_participated"] is True             # alice started A
    for_b = _threads(bob, room_id)["chunk"]
    by_id = {e["event_id"]: e["unsigned"]["m.relations"]["m.thread"] for e in for_b}
    assert by_id[a]["current_user_participated"] is True             # bob replied in A
    assert by_id[c]["current_user_participated"] is False


def test_threads_participated_filter(app):
    alice, bob, carol, room_id, a, b, c, _ = _setup(app)
    assert [e["event_id"] for e in _threads(bob, room_id, include="participated")["chunk"]] \
        == [a, b]
    assert [e["event_id"] for e in _threads(alice, room_id, include="participated")["chunk"]] \
        == [a]
    assert [e["event_id"] for e in _threads(carol, room_id, include="participated")["chunk"]] \
        == [c, b]


def test_threads_pagination(app):
    alice, bob, carol, room_id, a, b, c, _ = _setup(app)
    got, frm = [], None
    while True:
        r = _threads(alice, room_id, limit=1, **{"from": frm})
        got.extend(e["event_id"] for e in r["chunk"])
        if "next_batch" not in r:
            break
        frm = r["next_batch"]
    assert got == [a, c, b]


def test_thread_bundle_on_messages_and_latest_edit_nested(app):
    alice, bob, carol, room_id, a, b, c, last_a = _setup(app)
    alice.send(room_id, {"msgtype": "m.text", "body": "* a2!",
                         "m.new_content": {"msgtype": "m.text", "body": "a2!"},
                         "m.relates_to": {"rel_type": "m.replace", "event_id": last_a}})
    chunk = messages(bob, room_id, dir="b", limit=50)["chunk"]
    root = next(e for e in chunk if e["event_id"] == a)
    latest = root["unsigned"]["m.relations"]["m.thread"]["latest_event"]
    assert latest["event_id"] == last_a
    assert latest["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"] == {
        "msgtype": "m.text", "body": "a2!"}
    # a redacted reply no longer counts
    alice.req("PUT", f"{V3}/rooms/{room_id}/redact/{q(last_a)}/r", {})
    summary = get(bob, f"{V3}/rooms/{room_id}/context/{q(a)}", limit=0)["event"]["unsigned"][
        "m.relations"]["m.thread"]
    assert summary["count"] == 1 and summary["latest_event"]["content"]["body"] == "a1"


def test_threads_errors(app):
    alice, bob, carol, room_id, *_ = _setup(app)
    mallory = user(app, "mallory")
    assert _threads(mallory, room_id, status=403)["errcode"] == "M_FORBIDDEN"
    assert _threads(alice, room_id, status=400, include="some")["errcode"] == "M_INVALID_PARAM"
    assert _threads(alice, room_id, status=400, limit="0")["errcode"] == "M_INVALID_PARAM"
    assert _threads(alice, room_id, status=400, **{"from": "zzz"})["errcode"] == \
        "M_INVALID_PARAM"
