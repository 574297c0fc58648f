"""History visibility on every read path: /messages, /event, /context, /state, /members
(with ``at``), for each history_visibility value, users who left, and world-readable peeking."""
from tests.rooms.conftest import user
from tests.rooms.reads_helpers import (V3, get, invite, join, leave, messages, q,
                                       set_visibility, text, timeline_ids)


def _bodies(client, room_id):
    chunk = messages(client, room_id, dir="f", limit=1000)["chunk"]
    return [e["content"].get("body") for e in chunk if e["type"] == "m.room.message"]


def _room(app, visibility, preset="public_chat"):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset=preset, initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": visibility}}])
    return alice, bob, room_id


def test_shared_new_member_sees_earlier_history_left_member_sees_up_to_leave(app):
    alice, bob, room_id = _room(app, "shared")
    text(alice, room_id, "before join")
    join(bob, room_id)
    text(alice, room_id, "while joined")
    alice.state(room_id, "m.room.topic", body={"topic": "old"})
    leave(bob, room_id)
    after = text(alice, room_id, "after leave")
    alice.state(room_id, "m.room.topic", body={"topic": "new"})
    assert _bodies(bob, room_id) == ["before join", "while joined"]
    # the event after the leave is not found, the state is the state at the leave
    get(bob, f"{V3}/rooms/{room_id}/event/{q(after)}", status=404)
    assert bob.state(room_id, "m.room.topic") == {"topic": "old"}
    state = get(bob, f"{V3}/rooms/{room_id}/state")
    assert {"topic": "old"} in [e["content"] for e in state if e["type"] == "m.room.topic"]
    # bob's own leave is visible to him; backwards paging stops there too
    back = messages(bob, room_id, dir="b", limit=1000)["chunk"]
    assert back[0]["type"] == "m.room.member" and back[0]["content"]["membership"] == "leave"
    get(bob, f"{V3}/rooms/{room_id}/context/{q(after)}", status=404)


def test_joined_hides_history_before_join(app):
    alice, bob, room_id = _room(app, "joined")
    early = text(alice, room_id, "before join")
    join(bob, room_id)
    text(alice, room_id, "after join")
    assert _bodies(bob, room_id) == ["after join"]
    get(bob, f"{V3}/rooms/{room_id}/event/{q(early)}", status=404)
    member_events = [e for e in messages(bob, room_id, dir="f", limit=100)["chunk"]
                     if e["type"] == "m.room.member"]
    # alice's join came before the room had any history_visibility (so: 'shared')
    assert [e["state_key"] for e in member_events] == [alice.user_id, bob.user_id]
    assert _bodies(alice, room_id) == ["before join", "after join"]


def test_invited_sees_from_invite_on(app):
    alice, bob, room_id = _room(app, "invited", preset="private_chat")
    text(alice, room_id, "before invite")
    invite(alice, room_id, bob.user_id)
    text(alice, room_id, "while invited")
    join(bob, room_id)
    text(alice, room_id, "joined")
    assert _bodies(bob, room_id) == ["while invited", "joined"]


def test_shared_invited_but_never_joined_sees_nothing_of_history(app):
    alice, bob, room_id = _room(app, "shared", preset="private_chat")
    text(alice, room_id, "history")
    invite(alice, room_id, bob.user_id)
    text(alice, room_id, "while invited")
    # an invite does not open 'shared' history (only 'invited' does), not even the invite
    assert messages(bob, room_id, dir="f", limit=100)["chunk"] == []
    join(bob, room_id)
    assert _bodies(bob, room_id) == ["history", "while invited"]


def test_world_readable_peeking(app):
    alice, _, room_id = _room(app, "world_readable")
    carol = user(app, "carol")
    eid = text(alice, room_id, "hello world")
    assert _bodies(carol, room_id) == ["hello world"]
    assert get(carol, f"{V3}/rooms/{room_id}/event/{q(eid)}")["content"]["body"] == "hello world"
    ctx = get(carol, f"{V3}/rooms/{room_id}/context/{q(eid)}")
    assert ctx["event"]["event_id"] == eid
    assert {e["type"] for e in get(carol, f"{V3}/rooms/{room_id}/state")} >= {"m.room.create"}
    # history from before the room turned world-readable stays hidden from peekers
    set_visibility(alice, room_id, "joined")
    text(alice, room_id, "members only")
    set_visibility(alice, room_id, "world_readable")
    assert _bodies(carol, room_id) == ["hello world"]
    hv = [e for e in messages(carol, room_id, dir="f", limit=100)["chunk"]
          if e["type"] == "m.room.history_visibility"]
    # each change is visible if the visibility before or after it allows
    assert [e["content"]["history_visibility"] for e in hv] == [
        "world_readable", "joined", "world_readable"]


def test_peeking_refused_when_not_world_readable(app):
    alice, _, room_id = _room(app, "shared")
    carol = user(app, "carol")
    eid = text(alice, room_id, "members")
    messages(carol, room_id, status=403, dir="b")
    get(carol, f"{V3}/rooms/{room_id}/event/{q(eid)}", status=404)
    get(carol, f"{V3}/rooms/{room_id}/state", status=403)
    get(carol, f"{V3}/rooms/{room_id}/context/{q(eid)}", status=403)


def test_members_at_token(app):
    alice, bob, room_id = _room(app, "shared")
    carol = user(app, "carol")
    join(bob, room_id)
    token = messages(alice, room_id, dir="b", limit=1)["start"]
    join(carol, room_id)
    leave(bob, room_id)
    path = f"{V3}/rooms/{room_id}/members"
    now = {e["state_key"]: e["content"]["membership"] for e in get(alice, path)["chunk"]}
    assert now == {alice.user_id: "join", bob.user_id: "leave", carol.user_id: "join"}
    then = {e["state_key"]: e["content"]["membership"]
            for e in get(alice, path, at=token)["chunk"]}
    assert then == {alice.user_id: "join", bob.user_id: "join"}
    joined_then = get(alice, path, at=token, membership="join")["chunk"]
    assert len(joined_then) == 2
    # bob, who left, sees members as at his leave even with a later token
    later = messages(alice, room_id, dir="b", limit=1)["start"]
    bobs = {e["state_key"]: e["content"]["membership"]
            for e in get(bob, path, at=later)["chunk"]}
    assert bobs[bob.user_id] == "leave"
    assert get(alice, path, status=400, at="nonsense")["errcode"] == "M_INVALID_PARAM"


def test_page_spanning_many_state_groups_matches_single_checks(app):
    """The batched check of a page agrees with checking events one by one."""
    alice, bob, room_id = _room(app, "shared")
    for i in range(4):
        text(alice, room_id, f"a{i}")
        set_visibility(alice, room_id, ["joined", "shared", "invited", "shared"][i])
        if i == 1:
            join(bob, room_id)
        if i == 2:
            leave(bob, room_id)
    ids = timeline_ids(bob, room_id)
    everything = timeline_ids(alice, room_id)
    one_by_one = []
    for eid in everything:
        r = bob.c.get(f"{V3}/rooms/{room_id}/event/{q(eid)}", headers=bob.h)
        if r.status_code == 200:
            one_by_one.append(eid)
    assert ids == one_by_one
    assert 0 < len(ids) < len(everything)


def test_a_page_costs_a_constant_number_of_queries(app):
    """Visibility for a page resolves all its state groups in batches, not per event."""
    from web.app import runtime_of

    alice, bob, room_id = _room(app, "shared")
    join(bob, room_id)
    for i in range(30):
        text(alice, room_id, f"m{i}")
        if i % 3 == 0:
            alice.state(room_id, "m.room.topic", body={"topic": f"t{i}"})
    runtime = runtime_of(app)
    svc = runtime.parts["rooms"]
    svc.events._cache.clear()
    svc.state_groups._cache.clear()
    names = []
    real_run = runtime.db.run

    def counting_run(name, fn, *a, **kw):
        names.append(name)
        return real_run(name, fn, *a, **kw)

    runtime.db.run = counting_run
    try:
        chunk = messages(bob, room_id, dir="b", limit=100)["chunk"]
    finally:
        runtime.db.run = real_run
    assert len(chunk) > 40
    assert len(names) <= 15, names
    assert names.count("state_keys_at") == 1
