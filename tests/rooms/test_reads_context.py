"""GET /rooms/{roomId}/context/{eventId}: the limit split, order, state, tokens that continue
into /messages, filters and 404s."""
from tests.rooms.conftest import user
from tests.rooms.reads_helpers import V3, get, join, messages, q, text, timeline_ids


def _ctx(client, room_id, eid, status=200, **params):
    return get(client, f"{V3}/rooms/{room_id}/context/{q(eid)}", status=status, **params)


def _room(app, n=10):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat")
    join(bob, room_id)
    ids = [text(alice if i % 3 else bob, room_id, f"m{i}") for i in range(n)]
    return alice, bob, room_id, ids


def test_context_splits_limit_and_orders_both_sides(app):
    alice, _, room_id, ids = _room(app)
    r = _ctx(alice, room_id, ids[5], limit=4)
    assert r["event"]["event_id"] == ids[5]
    assert [e["event_id"] for e in r["events_before"]] == [ids[4], ids[3]]
    assert [e["event_id"] for e in r["events_after"]] == [ids[6], ids[7]]
    r = _ctx(alice, room_id, ids[5], limit=5)
    assert len(r["events_before"]) == 2 and len(r["events_after"]) == 3
    r = _ctx(alice, room_id, ids[5], limit=0)
    assert r["events_before"] == r["events_after"] == [] and r["event"]["event_id"] == ids[5]


def test_context_tokens_continue_in_messages_without_gaps_or_duplicates(app):
    alice, _, room_id, ids = _room(app)
    full = timeline_ids(alice, room_id)
    r = _ctx(alice, room_id, ids[5], limit=4)
    seen = [e["event_id"] for e in reversed(r["events_before"])] + [ids[5]] + \
        [e["event_id"] for e in r["events_after"]]
    back = messages(alice, room_id, dir="b", limit=1000, **{"from": r["start"]})
    fwd = messages(alice, room_id, dir="f", limit=1000, **{"from": r["end"]})
    stitched = [e["event_id"] for e in reversed(back["chunk"])] + seen + \
        [e["event_id"] for e in fwd["chunk"]]
    assert stitched == full


def test_context_state_and_lazy_members(app):
    alice, bob, room_id, ids = _room(app, 4)
    r = _ctx(alice, room_id, ids[1], limit=2)
    types = {e["type"] for e in r["state"]}
    assert {"m.room.create", "m.room.member", "m.room.power_levels"} <= types
    lazy = _ctx(alice, room_id, ids[1], limit=2, filter={"lazy_load_members": True})
    assert {e["state_key"] for e in lazy["state"]} == {alice.user_id, bob.user_id}
    assert all(e["type"] == "m.room.member" for e in lazy["state"])


def test_context_filter_applies_to_surroundings_not_the_event(app):
    alice, bob, room_id, ids = _room(app, 9)
    r = _ctx(alice, room_id, ids[4], limit=4, filter={"senders": [bob.user_id]})
    assert r["event"]["event_id"] == ids[4]
    around = r["events_before"] + r["events_after"]
    assert around and all(e["sender"] == bob.user_id for e in around)


def test_context_errors(app):
    alice, _, room_id, ids = _room(app, 2)
    private = alice.create_room()
    eid = text(alice, private, "secret")
    mallory = user(app, "mallory")
    _ctx(mallory, private, eid, status=403)
    assert _ctx(alice, room_id, "$nope", status=404)["errcode"] == "M_NOT_FOUND"
    # an event of another room is not found through this room
    _ctx(alice, room_id, eid, status=404)
    assert _ctx(alice, room_id, ids[0], status=400, limit="x")["errcode"] == "M_INVALID_PARAM"
    assert _ctx(alice, room_id, ids[0], status=400, filter="{")["errcode"] == "M_NOT_JSON"
