"""Deleting rooms (Synapse's Delete Room API v2 and v1, its status endpoints) and purging
history (Purge History API): what leaves, what moves, what is blocked, which rows remain
(none, in every table that has a room_id), the room's actor kept stopped meanwhile, the
task status kept in the database and resumed after a restart, the log line naming the
admin, and the errors."""
from __future__ import annotations

import logging

import pytest

from store.database import POSTGRES
from supervision.errors import SupervisorStopped
from tests.apps import app_factory
from tests.rooms.conftest import user
from web.app import runtime_of

V = "/_matrix/client/v3"
A1 = "/_synapse/admin/v1"
A2 = "/_synapse/admin/v2"
#: tables that keep a room's id on purpose after it is purged
KEPT = {"blocked_rooms", "admin_room_tasks", "remote_memberships", "event_reports",
        "room_reports"}


@pytest.fixture
def env(tmp_path):
    factory = app_factory(tmp_path)
    app = next(factory)()
    rt = runtime_of(app)
    yield dict(app=app, rt=rt, root=user(app, "root", admin=True),
               alice=user(app, "alice"), bob=user(app, "bob"), carol=user(app, "carol"))
    for _ in factory:
        pass


def wait(env):
    env["rt"].parts["room_deleter"].wait()


def populated_room(env):
    """A public room with an alias, three members, messages, a tag, a receipt."""
    alice, bob, carol = env["alice"], env["bob"], env["carol"]
    room = alice.create_room(name="doomed", preset="public_chat", room_alias_name="doomed",
                             visibility="public")
    bob.req("POST", f"{V}/rooms/{room}/join", {})
    alice.req("POST", f"{V}/rooms/{room}/invite", {"user_id": carol.user_id})
    eid = alice.send(room, {"msgtype": "m.text", "body": "hello"})["event_id"]
    bob.req("POST", f"{V}/rooms/{room}/receipt/m.read/{eid}", {})
    bob.req("PUT", f"{V}/user/{bob.user_id}/rooms/{room}/tags/u.work", {})
    return room


def rows_left(rt, room_id):
    """(table, rows) of every table with a room_id column that still names the room."""
    db = rt.db

    def q(t):
        if t.engine == POSTGRES:
            tables = [r[0] for r in t.query(
                "SELECT table_name FROM information_schema.columns WHERE column_name ="
                " 'room_id' AND table_schema = current_schema()")]
        else:
            names = [r[0] for r in t.query(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            tables = [n for n in names if any(c[1] == "room_id" for c in t.query(
                f"PRAGMA table_info({n})"))]
        out = {}
        for table in sorted(set(tables) - KEPT):
            n = t.query_value(f"SELECT COUNT(*) FROM {table} WHERE room_id = ?", (room_id,))
            if n:
                out[table] = n
        return out

    return db.run("rows_left", q)


def test_delete_v2_moves_members_blocks_and_purges_every_row(env, caplog):
    root, alice, bob, carol, rt = env["root"], env["alice"], env["bob"], env["carol"], env["rt"]
    room = populated_room(env)
    assert rows_left(rt, room)
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_rooms"):
        delete_id = root.req("DELETE", f"{A2}/rooms/{room}", {
            "new_room_user_id": alice.user_id, "room_name": "Moved", "message": "Gone.",
            "block": True})["delete_id"]
    logged = [r.getMessage() for r in caplog.records if "delete room" in r.getMessage()]
    assert len(logged) == 1 and root.user_id in logged[0] and room in logged[0]
    assert delete_id in logged[0]
    wait(env)
    st = root.req("GET", f"{A2}/rooms/delete_status/{delete_id}")
    assert st["status"] == "complete" and st["room_id"] == room
    sr = st["shutdown_room"]
    assert sorted(sr["kicked_users"]) == sorted([alice.user_id, bob.user_id, carol.user_id])
    assert sr["failed_to_kick_users"] == [] and sr["local_aliases"] == ["#doomed:test.local"]
    new_room = sr["new_room_id"]
    by_room = root.req("GET", f"{A2}/rooms/{room}/delete_status")["results"]
    assert [r["delete_id"] for r in by_room] == [delete_id]
    # every row of the room is gone; the block stays
    assert rows_left(rt, room) == {}
    root.req("GET", f"{A1}/rooms/{room}", status=404)
    assert root.req("GET", f"{A1}/rooms/{room}/block")["user_id"] == root.user_id
    assert bob.req("POST", f"{V}/rooms/{room}/join", {}, status=403)["errcode"] == \
        "M_FORBIDDEN"
    assert bob.send(room, status=404)["errcode"] == "M_NOT_FOUND"
    # the joined members are in the new room, which has the message and the alias
    members = root.req("GET", f"{A1}/rooms/{new_room}/members")["members"]
    assert sorted(members) == sorted([alice.user_id, bob.user_id])
    details = root.req("GET", f"{A1}/rooms/{new_room}")
    assert details["name"] == "Moved" and details["join_rules"] == "public"
    chunk = bob.req("GET", f"{V}/rooms/{new_room}/messages?dir=b")["chunk"]
    assert [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"] == ["Gone."]
    assert bob.req("GET", f"{V}/directory/room/%23doomed:test.local")["room_id"] == new_room
    assert bob.state(new_room, "m.room.power_levels")["users_default"] == -10
    assert bob.send(new_room, status=403)["errcode"] == "M_FORBIDDEN"
    # the old room left the users' /sync
    rooms = bob.req("GET", f"{V}/sync?timeout=0")["rooms"]
    assert room not in rooms.get("join", {}) and room not in rooms.get("invite", {})


def test_delete_without_purge_shuts_the_room_down(env):
    root, alice, bob, rt = env["root"], env["alice"], env["bob"], env["rt"]
    room = populated_room(env)
    delete_id = root.req("DELETE", f"{A2}/rooms/{room}", {"purge": False})["delete_id"]
    wait(env)
    st = root.req("GET", f"{A2}/rooms/delete_status/{delete_id}")
    assert st["status"] == "complete" and st["shutdown_room"]["new_room_id"] is None
    assert st["shutdown_room"]["local_aliases"] == ["#doomed:test.local"]
    d = root.req("GET", f"{A1}/rooms/{room}")
    assert d["joined_members"] == 0 and d["public"] is False and d["forgotten"] is True
    assert d["canonical_alias"] == "#doomed:test.local"   # the state event stays
    bob.req("GET", f"{V}/directory/room/%23doomed:test.local", status=404)
    assert root.req("GET", f"{A1}/rooms/{room}/block") == {"block": False}
    # their leaves are their own, through the room's actor
    leave = alice.req("GET", f"{V}/rooms/{room}/messages?dir=b&limit=1")
    assert leave["chunk"][0]["type"] == "m.room.member"
    assert rows_left(rt, room)


def test_delete_v1_answers_when_done(env):
    root, bob, rt = env["root"], env["bob"], env["rt"]
    room = populated_room(env)
    out = root.req("DELETE", f"{A1}/rooms/{room}", {})
    assert set(out) == {"kicked_users", "failed_to_kick_users", "local_aliases",
                        "new_room_id"}
    assert len(out["kicked_users"]) == 3 and rows_left(rt, room) == {}
    room2 = bob.create_room()
    out2 = root.req("POST", f"{A1}/rooms/{room2}/delete", {"purge": False})
    assert out2["kicked_users"] == [bob.user_id]


def test_delete_of_an_unknown_room_blocks_it(env):
    root = env["root"]
    unknown = "!unknown:elsewhere.example"
    delete_id = root.req("DELETE", f"{A2}/rooms/{unknown}", {"block": True})["delete_id"]
    wait(env)
    st = root.req("GET", f"{A2}/rooms/delete_status/{delete_id}")
    assert st["status"] == "complete" and st["shutdown_room"]["kicked_users"] == []
    assert root.req("GET", f"{A1}/rooms/{unknown}/block")["block"] is True


def test_delete_errors(env):
    root, alice, rt = env["root"], env["alice"], env["rt"]
    room = alice.create_room()
    for body, code in (({"block": "yes"}, "M_BAD_JSON"), ({"purge": 1}, "M_BAD_JSON"),
                       ({"force_purge": None}, "M_BAD_JSON"),
                       ({"new_room_user_id": "@x:elsewhere.example"}, "M_UNKNOWN"),
                       ({"new_room_user_id": "@ghost:test.local"}, "M_UNKNOWN"),
                       ({"room_name": 5}, "M_BAD_JSON")):
        assert root.req("DELETE", f"{A2}/rooms/{room}", body, status=400)["errcode"] == code
    assert root.req("DELETE", f"{A2}/rooms/not-a-room", {}, status=400)["errcode"] == \
        "M_UNKNOWN"
    r = root.c.delete(f"{A2}/rooms/{room}", data=b"[", headers=root.h)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_NOT_JSON"
    alice.req("DELETE", f"{A2}/rooms/{room}", {}, status=403)
    assert env["app"].test_client().delete(f"{A2}/rooms/{room}", json={}).status_code == 401
    root.req("GET", f"{A2}/rooms/delete_status/nope", status=404)
    root.req("GET", f"{A2}/rooms/{room}/delete_status", status=404)
    # one task per room at a time
    store = rt.parts["admin_rooms"]
    store.new_task("delete", room, root.user_id, {"purge": False})
    r = root.req("DELETE", f"{A2}/rooms/{room}", {}, status=400)
    assert r["errcode"] == "M_UNKNOWN" and "in progress" in r["error"]


def test_an_interrupted_delete_resumes_at_start(env):
    root, alice, rt = env["root"], env["alice"], env["rt"]
    room = populated_room(env)
    store = rt.parts["admin_rooms"]
    task = store.new_task("delete", room, root.user_id,
                          {"block": False, "purge": True, "force_purge": False,
                           "new_room_user_id": None, "room_name": None, "message": None},
                          {"kicked_users": [], "failed_to_kick_users": [],
                           "local_aliases": [], "new_room_id": None})
    task.status = "active"          # as a crash would leave it
    store.update_task(task)
    rt.parts["room_deleter"].resume()
    wait(env)
    st = root.req("GET", f"{A2}/rooms/delete_status/{task.task_id}")
    assert st["status"] == "complete" and alice.user_id in st["shutdown_room"]["kicked_users"]
    assert rows_left(rt, room) == {}


def test_the_room_actor_stays_stopped_while_retired(env):
    alice, rt = env["alice"], env["rt"]
    room = alice.create_room()
    sup = rt.parts["rooms"].supervisor
    assert sup.child(room) is not None
    assert sup.retire(room) is True and sup.child(room) is None
    with pytest.raises(SupervisorStopped):
        sup.inspect(room, lambda actor: actor.room_id)
    assert alice.send(room, status=503)["errcode"]
    sup.reinstate(room)
    alice.send(room)


def test_purge_history_keeps_state_and_the_point(env, caplog):
    root, alice, bob, rt = env["root"], env["alice"], env["bob"], env["rt"]
    room = alice.create_room(preset="public_chat", name="history")
    bob.req("POST", f"{V}/rooms/{room}/join", {})
    old = [alice.send(room, {"msgtype": "m.text", "body": f"old {i}"})["event_id"]
           for i in range(5)]
    alice.state(room, "m.room.topic", body={"topic": "kept"})
    point = bob.send(room, {"msgtype": "m.text", "body": "the point"})["event_id"]
    alice.send(room, {"msgtype": "m.text", "body": "after"})
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_purge_history"):
        purge_id = root.req("POST", f"{A1}/purge_history/{room}/{point}",
                            {"delete_local_events": True})["purge_id"]
    assert [r for r in caplog.records if root.user_id in r.getMessage()
            and "purge history" in r.getMessage()]
    wait(env)
    assert root.req("GET", f"{A1}/purge_history_status/{purge_id}") == {"status": "complete"}
    bodies = [e["content"].get("body") for e in bob.req(
        "GET", f"{V}/rooms/{room}/messages?dir=b&limit=100")["chunk"]]
    assert bodies[:2] == ["after", "the point"] and not any(
        b and b.startswith("old") for b in bodies)
    page = bob.req("GET", f"{V}/rooms/{room}/messages?dir=b&limit=100")
    assert "end" not in page or bob.req(
        "GET", f"{V}/rooms/{room}/messages?dir=b&from={page['end']}")["chunk"] == []
    # the purged events are gone from the store, state is whole
    assert all(rt.parts["rooms"].events.get_event(e) is None for e in old)
    assert bob.state(room, "m.room.topic")["topic"] == "kept"
    assert bob.state(room, "m.room.name")["name"] == "history"
    bob.req("GET", f"{V}/rooms/{room}/context/{old[0]}", status=404)
    # the room goes on
    alice.send(room, {"msgtype": "m.text", "body": "later"})
    bob.req("POST", f"{V}/rooms/{room}/leave", {})
    bob.req("POST", f"{V}/rooms/{room}/join", {})


def test_purge_history_keeps_local_messages_by_default(env):
    root, alice, rt = env["root"], env["alice"], env["rt"]
    room = alice.create_room()
    old = alice.send(room, {"msgtype": "m.text", "body": "mine"})["event_id"]
    point = alice.send(room, {"msgtype": "m.text", "body": "point"})["event_id"]
    purge_id = root.req("POST", f"{A1}/purge_history/{room}",
                        {"purge_up_to_event_id": point})["purge_id"]
    wait(env)
    assert root.req("GET", f"{A1}/purge_history_status/{purge_id}")["status"] == "complete"
    kept = rt.parts["rooms"].events.get_event(old)
    assert kept is not None and kept.outlier   # kept, out of the timeline
    bodies = [e["content"].get("body") for e in alice.req(
        "GET", f"{V}/rooms/{room}/messages?dir=b")["chunk"]]
    assert "mine" not in bodies and "point" in bodies


def test_purge_history_by_timestamp_and_errors(env):
    root, alice, bob = env["root"], env["alice"], env["bob"]
    room = alice.create_room()
    other = bob.create_room()
    alice.send(room)
    foreign = bob.send(other)["event_id"]
    assert root.req("POST", f"{A1}/purge_history/{room}", {}, status=400)["errcode"] == \
        "M_BAD_JSON"
    assert root.req("POST", f"{A1}/purge_history/{room}", {"purge_up_to_ts": "x"},
                    status=400)["errcode"] == "M_BAD_JSON"
    assert root.req("POST", f"{A1}/purge_history/{room}", {"purge_up_to_ts": 1},
                    status=404)["errcode"] == "M_NOT_FOUND"
    root.req("POST", f"{A1}/purge_history/{room}/{foreign}", {}, status=400)
    root.req("POST", f"{A1}/purge_history/{room}/$nope", {}, status=404)
    root.req("GET", f"{A1}/purge_history_status/nope", status=404)
    alice.req("POST", f"{A1}/purge_history/{room}", {"purge_up_to_ts": 1}, status=403)
    purge_id = root.req("POST", f"{A1}/purge_history/{room}",
                        {"purge_up_to_ts": 2 ** 62})["purge_id"]
    wait(env)
    assert root.req("GET", f"{A1}/purge_history_status/{purge_id}")["status"] == "complete"
    alice.send(room)
