"""History visibility for users who are not joined (never were, or left) on every read
path — /messages, /context, /event, /relations, /threads, /state, /state/{type}/{key},
/members — and for state read at a point (``at``) the user could not see."""
from tests.rooms.conftest import user
from tests.rooms.reads_helpers import (V1, V3, get, join, leave, messages, q, relate,
                                       set_visibility, text)


def _room(app, visibility):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="public_chat", name="lobby", initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": visibility}}])
    return alice, room_id


def _now(client, room_id):
    """A token for the room as it is now."""
    return messages(client, room_id, dir="b", limit=1)["start"]


def test_stranger_reads_a_world_readable_room_on_every_path(app):
    alice, room_id = _room(app, "world_readable")
    carol = user(app, "carol")
    root = text(alice, room_id, "root")
    reply = relate(alice, room_id, root, "m.thread", body="in thread")
    assert get(carol, f"{V3}/rooms/{room_id}/event/{q(reply)}")["event_id"] == reply
    ctx = get(carol, f"{V3}/rooms/{room_id}/context/{q(root)}", limit=5)
    assert ctx["event"]["event_id"] == root
    assert reply in [e["event_id"] for e in ctx["events_after"]]
    rel = get(carol, f"{V1}/rooms/{room_id}/relations/{q(root)}")["chunk"]
    assert [e["event_id"] for e in rel] == [reply]
    threads = get(carol, f"{V1}/rooms/{room_id}/threads")["chunk"]
    assert [e["event_id"] for e in threads] == [root]
    assert get(carol, f"{V3}/rooms/{room_id}/state/m.room.name") == {"name": "lobby"}
    members = get(carol, f"{V3}/rooms/{room_id}/members")["chunk"]
    assert [m["state_key"] for m in members] == [alice.user_id]
    assert {e["type"] for e in get(carol, f"{V3}/rooms/{room_id}/state")} >= {
        "m.room.create", "m.room.name", "m.room.history_visibility"}
    bodies = [e["content"].get("body")
              for e in messages(carol, room_id, dir="b", limit=50)["chunk"]]
    assert bodies[:2] == ["in thread", "root"]
    # reading did not make carol a member, and /joined_members stays for members
    carol.req("GET", f"{V3}/rooms/{room_id}/joined_members", status=403)


def test_a_room_that_stops_being_world_readable_closes_to_strangers(app):
    alice, room_id = _room(app, "world_readable")
    carol = user(app, "carol")
    open_eid = text(alice, room_id, "while open")
    set_visibility(alice, room_id, "joined")
    closed_eid = text(alice, room_id, "members only")
    for path in ("messages?dir=b", "members", "state", "state/m.room.name",
                 f"context/{q(open_eid)}"):
        carol.req("GET", f"{V3}/rooms/{room_id}/{path}", status=403)
    get(carol, f"{V1}/rooms/{room_id}/relations/{q(open_eid)}", status=404)
    # a single event is judged by the visibility when it was sent (as Synapse)
    assert get(carol, f"{V3}/rooms/{room_id}/event/{q(open_eid)}")["event_id"] == open_eid
    get(carol, f"{V3}/rooms/{room_id}/event/{q(closed_eid)}", status=404)


def test_state_at_a_point_the_user_could_not_see_is_refused(app):
    alice, room_id = _room(app, "joined")
    bob = user(app, "bob")
    before_bob = _now(alice, room_id)
    join(bob, room_id)
    text(alice, room_id, "hello bob")
    after_bob = _now(alice, room_id)
    path = f"{V3}/rooms/{room_id}/members"
    # alice saw the room then; bob did not ('joined' history), though he is joined now
    assert [m["state_key"] for m in get(alice, path, at=before_bob)["chunk"]] == [
        alice.user_id]
    assert get(bob, path, status=403, at=before_bob)["errcode"] == "M_FORBIDDEN"
    assert {m["state_key"] for m in get(bob, path, at=after_bob)["chunk"]} == {
        alice.user_id, bob.user_id}
    # after leaving: the state at a point he saw, but not before his join, nor after leave
    leave(bob, room_id)
    alice.state(room_id, "m.room.name", body={"name": "renamed"})
    later = _now(alice, room_id)
    get(bob, path, status=403, at=before_bob)
    names = {m["state_key"]: m["content"]["membership"]
             for m in get(bob, path, at=after_bob)["chunk"]}
    assert names == {alice.user_id: "join", bob.user_id: "join"}
    names = {m["state_key"]: m["content"]["membership"]
             for m in get(bob, path, at=later)["chunk"]}
    assert names[bob.user_id] == "leave"    # clamped to his leave
    assert bob.state(room_id, "m.room.name") == {"name": "lobby"}


def test_shared_history_state_at_a_point_before_the_join_is_readable(app):
    alice, room_id = _room(app, "shared")
    bob = user(app, "bob")
    before_bob = _now(alice, room_id)
    join(bob, room_id)
    assert [m["state_key"] for m in get(bob, f"{V3}/rooms/{room_id}/members",
                                        at=before_bob)["chunk"]] == [alice.user_id]


def test_stranger_at_a_point_before_the_room_turned_world_readable(app):
    alice, room_id = _room(app, "shared")
    carol = user(app, "carol")
    closed = _now(alice, room_id)
    set_visibility(alice, room_id, "world_readable")
    opened = _now(alice, room_id)
    path = f"{V3}/rooms/{room_id}/members"
    get(carol, path, status=403, at=closed)
    assert [m["state_key"] for m in get(carol, path, at=opened)["chunk"]] == [alice.user_id]
