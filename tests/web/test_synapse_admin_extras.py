"""More of Synapse's admin API (web/synapse_admin_extras.py, web/synapse_admin_redact.py):
a user's pushers and account data, username availability, the admin join (with the
admin's invite into a private room), make_room_admin, deleting forward extremities only
where the room's state stays the same, media usage per user and the largest rooms, and
redacting a user's events in the background (who sends the redactions, failures, limits,
the status kept in the database and resumed after a restart) — each with its errors, the
admin-only guard and the log line naming the admin."""
from __future__ import annotations

import json
import logging

import pytest

from tests.apps import app_factory
from tests.rooms.conftest import Client, user
from web.app import runtime_of

V = "/_matrix/client/v3"
A1 = "/_synapse/admin/v1"
SERVER = "test.local"


@pytest.fixture
def env(tmp_path):
    factory = app_factory(tmp_path)
    app = next(factory)()
    rt = runtime_of(app)
    yield dict(app=app, rt=rt, root=user(app, "root", admin=True), alice=user(app, "alice"),
               bob=user(app, "bob"), carol=user(app, "carol"))
    for _ in factory:
        pass


def err(client: Client, method: str, path: str, body=None, status=400) -> str:
    return client.req(method, path, body, status=status)["errcode"]


def membership(env, room: str, user_id: str) -> str | None:
    return env["rt"].db.run("m", lambda t: t.query_value(
        "SELECT membership FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
        " AND state_key = ?", (room, user_id)))


def power_levels(env, room: str) -> dict:
    return env["root"].req("GET", f"{A1}/rooms/{room}/state?type=m.room.power_levels"
                           )["state"][0]["content"]


def admin_lines(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("admin @root:test.local: " + what)]


# ---------------------------------------------------------------------------- users

def test_pushers_in_synapse_shape(env):
    alice, root = env["alice"], env["root"]
    alice.req("POST", f"{V}/pushers/set", {
        "pushkey": "pk1", "kind": "http", "app_id": "org.example.app",
        "app_display_name": "Example", "device_display_name": "phone", "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}})
    out = root.req("GET", f"{A1}/users/{alice.user_id}/pushers")
    assert out["total"] == 1
    p = out["pushers"][0]
    assert {k: p[k] for k in ("app_display_name", "app_id", "device_display_name", "kind",
                              "lang", "profile_tag", "pushkey")} == {
        "app_display_name": "Example", "app_id": "org.example.app",
        "device_display_name": "phone", "kind": "http", "lang": "en", "profile_tag": "",
        "pushkey": "pk1"}
    assert p["data"] == {"url": "https://push.example.org/_matrix/push/v1/notify"}
    assert root.req("GET", f"{A1}/users/{env['bob'].user_id}/pushers") == {
        "pushers": [], "total": 0}
    assert err(root, "GET", f"{A1}/users/@nobody:{SERVER}/pushers", status=404) == \
        "M_NOT_FOUND"
    assert err(root, "GET", f"{A1}/users/@x:elsewhere.org/pushers") == "M_UNKNOWN"
    assert err(root, "GET", f"{A1}/users/nosigil/pushers") == "M_INVALID_PARAM"
    assert err(alice, "GET", f"{A1}/users/{alice.user_id}/pushers", status=403) == \
        "M_FORBIDDEN"
    r = env["app"].test_client().get(f"{A1}/users/{alice.user_id}/pushers")
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"


def test_username_available_uses_registrations_rules(env):
    root = env["root"]   # registration is closed on this server: the admin API still answers
    assert root.req("GET", f"{A1}/username_available?username=newbie") == {"available": True}
    assert err(root, "GET", f"{A1}/username_available?username=alice") == "M_USER_IN_USE"
    for bad in ("_hidden", "Alice", "a%20b", "12345", "a" * 300):
        assert err(root, "GET", f"{A1}/username_available?username={bad}") == \
            "M_INVALID_USERNAME", bad
    assert err(root, "GET", f"{A1}/username_available") == "M_MISSING_PARAM"
    assert err(env["alice"], "GET", f"{A1}/username_available?username=x", status=403) == \
        "M_FORBIDDEN"


def test_account_data_global_and_per_room(env):
    alice, root = env["alice"], env["root"]
    room = alice.create_room()
    alice.req("PUT", f"{V}/user/{alice.user_id}/account_data/im.example.g", {"a": 1})
    alice.req("PUT", f"{V}/user/{alice.user_id}/rooms/{room}/account_data/im.example.r",
              {"b": [2]})
    out = root.req("GET", f"{A1}/users/{alice.user_id}/accountdata")["account_data"]
    assert out["global"]["im.example.g"] == {"a": 1}
    assert out["rooms"] == {room: {"im.example.r": {"b": [2]}}}
    assert root.req("GET", f"{A1}/users/{env['bob'].user_id}/accountdata") == {
        "account_data": {"global": {}, "rooms": {}}}
    assert err(root, "GET", f"{A1}/users/@x:elsewhere.org/accountdata") == "M_UNKNOWN"
    assert err(root, "GET", f"{A1}/users/@nobody:{SERVER}/accountdata", status=404) == \
        "M_NOT_FOUND"


# ---------------------------------------------------------------------------- join

def test_join_public_room_by_alias_and_log_line(env, caplog):
    alice, root, bob = env["alice"], env["root"], env["bob"]
    room = alice.create_room(preset="public_chat", room_alias_name="pub")
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_users"):
        out = root.req("POST", f"{A1}/join/%23pub:{SERVER}", {"user_id": bob.user_id})
    assert out == {"room_id": room} and membership(env, room, bob.user_id) == "join"
    assert membership(env, room, root.user_id) is None   # the admin was not needed
    assert admin_lines(caplog, f"joined {bob.user_id}") == [
        f"admin @root:test.local: joined {bob.user_id} room_id={room}"]
    # joined already: the same answer, nothing sent
    assert root.req("POST", f"{A1}/join/{room}", {"user_id": bob.user_id}) == {"room_id": room}


def test_join_private_room_needs_the_admin_to_invite(env):
    alice, root, bob, carol = env["alice"], env["root"], env["bob"], env["carol"]
    room = alice.create_room(preset="private_chat")
    # the admin is not in the room: its invite is refused, the user is not joined
    assert err(root, "POST", f"{A1}/join/{room}", {"user_id": bob.user_id}, status=403) == \
        "M_FORBIDDEN"
    assert membership(env, room, bob.user_id) is None
    # once the admin is a member who may invite, the user is invited and joins
    alice.req("POST", f"{V}/rooms/{room}/invite", {"user_id": root.user_id})
    root.req("POST", f"{V}/rooms/{room}/join", {})
    assert root.req("POST", f"{A1}/join/{room}", {"user_id": bob.user_id}) == {"room_id": room}
    assert membership(env, room, bob.user_id) == "join"
    inviter = env["rt"].db.run("i", lambda t: t.query_value(
        "SELECT sender FROM room_memberships WHERE room_id = ? AND user_id = ? AND"
        " membership = 'invite'", (room, bob.user_id)))
    assert inviter == root.user_id
    # an invited user just joins
    alice.req("POST", f"{V}/rooms/{room}/invite", {"user_id": carol.user_id})
    root.req("POST", f"{A1}/join/{room}", {"user_id": carol.user_id})
    assert membership(env, room, carol.user_id) == "join"


def test_join_errors(env):
    root, alice = env["root"], env["alice"]
    room = alice.create_room(preset="public_chat")
    j = f"{A1}/join/{room}"
    assert err(root, "POST", j, {}) == "M_MISSING_PARAM"
    assert err(root, "POST", j, {"user_id": 5}) == "M_BAD_JSON"
    assert err(root, "POST", j, {"user_id": "nosigil"}) == "M_INVALID_PARAM"
    assert err(root, "POST", j, {"user_id": "@x:elsewhere.org"}) == "M_UNKNOWN"
    assert err(root, "POST", j, {"user_id": f"@nobody:{SERVER}"}, status=404) == "M_NOT_FOUND"
    assert err(root, "POST", f"{A1}/join/!unknown:{SERVER}", {"user_id": alice.user_id},
               status=404) == "M_NOT_FOUND"
    assert err(root, "POST", f"{A1}/join/%23nope:{SERVER}", {"user_id": alice.user_id},
               status=404) == "M_NOT_FOUND"
    assert err(root, "POST", f"{A1}/join/garbage", {"user_id": alice.user_id}) == "M_UNKNOWN"
    root.req("PUT", f"{A1}/rooms/{room}/block", {"block": True})
    assert err(root, "POST", j, {"user_id": env["bob"].user_id}, status=403) == "M_FORBIDDEN"
    assert err(alice, "POST", j, {"user_id": alice.user_id}, status=403) == "M_FORBIDDEN"


# ---------------------------------------------------------------------------- make_room_admin

@pytest.mark.parametrize("version", ["10", "12"])
def test_make_room_admin_grants_the_top_local_level_and_invites(env, caplog, version):
    alice, root = env["alice"], env["root"]
    room = alice.create_room(preset="private_chat", room_version=version)
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_users"):
        assert root.req("POST", f"{A1}/rooms/{room}/make_room_admin", {}) == {}
    pl = power_levels(env, room)
    assert pl["users"][root.user_id] == 100
    if version == "10":
        assert pl["users"][alice.user_id] == 100
    assert membership(env, room, root.user_id) == "invite"   # private room: invited
    sender = env["rt"].db.run("s", lambda t: t.query_value(
        "SELECT sender FROM events WHERE room_id = ? AND type = 'm.room.power_levels'"
        " ORDER BY stream_ordering DESC LIMIT 1", (room,)))
    assert sender == alice.user_id
    assert admin_lines(caplog, f"made room admin in {room}")
    # the invited admin can now join and act with that level
    root.req("POST", f"{V}/rooms/{room}/join", {})
    root.state(room, "m.room.topic", body={"topic": "moderated"})


def test_make_room_admin_for_another_user_in_a_public_room(env):
    alice, root, bob = env["alice"], env["root"], env["bob"]
    room = alice.create_room(preset="public_chat", room_alias_name="adm", room_version="10")
    bob.req("POST", f"{V}/rooms/{room}/join", {})
    assert root.req("POST", f"{A1}/rooms/%23adm:{SERVER}/make_room_admin",
                    {"user_id": bob.user_id}) == {}
    assert power_levels(env, room)["users"][bob.user_id] == 100
    carol = env["carol"].user_id
    root.req("POST", f"{A1}/rooms/{room}/make_room_admin", {"user_id": carol})
    assert membership(env, room, carol) is None   # public: no invite needed


def test_make_room_admin_refusals(env):
    alice, root, bob = env["alice"], env["root"], env["bob"]
    room = alice.create_room(preset="public_chat", room_version="10")
    bob.req("POST", f"{V}/rooms/{room}/join", {})
    alice.req("POST", f"{V}/rooms/{room}/leave", {})
    # bob (level 0) is the only local member left: nobody may change the power levels
    assert root.req("POST", f"{A1}/rooms/{room}/make_room_admin", {}, status=400)[
        "error"] == "No local admin user in room with power to update power levels."
    bob.req("POST", f"{V}/rooms/{room}/leave", {})
    assert root.req("POST", f"{A1}/rooms/{room}/make_room_admin", {}, status=400)[
        "error"] == "No local admin user in room"
    assert err(root, "POST", f"{A1}/rooms/!unknown:{SERVER}/make_room_admin", {}) == \
        "M_UNKNOWN"
    assert err(root, "POST", f"{A1}/rooms/{room}/make_room_admin", {"user_id": 3}) == \
        "M_INVALID_PARAM"
    assert err(bob, "POST", f"{A1}/rooms/{room}/make_room_admin", {}, status=403) == \
        "M_FORBIDDEN"
    # a blocked private room: no invite, so no change either
    private = alice.create_room(preset="private_chat")
    before = power_levels(env, private)
    root.req("PUT", f"{A1}/rooms/{private}/block", {"block": True})
    assert err(root, "POST", f"{A1}/rooms/{private}/make_room_admin", {}, status=403) == \
        "M_FORBIDDEN"
    assert power_levels(env, private) == before


# ---------------------------------------------------------------------------- extremities

def _event_ids(env, room: str) -> list[tuple[str, str, int]]:
    return env["rt"].db.run("e", lambda t: [(r[0], r[1], r[2]) for r in t.query(
        "SELECT event_id, type, state_group FROM events WHERE room_id = ?"
        " ORDER BY stream_ordering", (room,))])


def _set_extremities(env, room: str, ids: list[str]) -> None:
    """A fork, as events from other servers would leave it: the rows the actor would have
    written (the actor restarts from them)."""
    rt = env["rt"]
    assert rt.parts["rooms"].supervisor.retire(room)

    def _t(t):
        t.execute("DELETE FROM room_forward_extremities WHERE room_id = ?", (room,))
        for e in ids:
            t.execute("INSERT INTO room_forward_extremities (room_id, event_id) VALUES (?, ?)",
                      (room, e))

    rt.db.run("fork", _t, write=True)
    rt.parts["rooms"].supervisor.reinstate(room)


def _extremities(env, room: str) -> list[str]:
    got = env["root"].req("GET", f"{A1}/rooms/{room}/forward_extremities")
    return sorted(r["event_id"] for r in got["results"])


def test_delete_extremities_keeps_one_with_the_current_state(env, caplog):
    alice, root = env["alice"], env["root"]
    room = alice.create_room(preset="public_chat")
    m1 = alice.send(room, {"msgtype": "m.text", "body": "one"})["event_id"]
    m2 = alice.send(room, {"msgtype": "m.text", "body": "two"})["event_id"]
    _set_extremities(env, room, [m1, m2])
    assert _extremities(env, room) == sorted([m1, m2])
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_users"):
        assert root.req("DELETE", f"{A1}/rooms/{room}/forward_extremities") == {"deleted": 1}
    assert _extremities(env, room) == [m2]
    assert admin_lines(caplog, f"deleted forward extremities of {room}") == [
        f"admin @root:test.local: deleted forward extremities of {room} deleted=1"]
    # the room goes on from the kept one
    m3 = alice.send(room, {"msgtype": "m.text", "body": "three"})["event_id"]
    ev = env["rt"].parts["rooms"].events.get_event(m3).event
    assert ev["prev_events"] == [m2]
    assert root.req("DELETE", f"{A1}/rooms/{room}/forward_extremities") == {"deleted": 0}


def test_delete_extremities_leaves_the_ones_the_state_needs(env):
    alice, root = env["alice"], env["root"]
    room = alice.create_room(preset="public_chat")
    alice.state(room, "m.room.name", body={"name": "first"})
    a = alice.send(room, {"msgtype": "m.text", "body": "a"})["event_id"]
    b = alice.send(room, {"msgtype": "m.text", "body": "b"})["event_id"]
    alice.state(room, "m.room.topic", body={"topic": "now"})
    join = [e for e, t, _ in _event_ids(env, room) if t == "m.room.member"][0]
    # three branches, none at the current state (the topic is on none of them): a and b
    # hold the same state, so one of them can go; the join's state is needed
    _set_extremities(env, room, [join, a, b])
    assert root.req("DELETE", f"{A1}/rooms/{room}/forward_extremities") == {"deleted": 1}
    assert _extremities(env, room) == sorted([join, b])
    assert root.req("DELETE", f"{A1}/rooms/{room}/forward_extremities") == {"deleted": 0}


def test_delete_extremities_errors(env):
    root, alice = env["root"], env["alice"]
    room = alice.create_room(room_alias_name="fx")
    assert root.req("DELETE", f"{A1}/rooms/%23fx:{SERVER}/forward_extremities") == {
        "deleted": 0}
    assert err(root, "DELETE", f"{A1}/rooms/!unknown:{SERVER}/forward_extremities",
               status=404) == "M_NOT_FOUND"
    assert err(root, "DELETE", f"{A1}/rooms/%23none:{SERVER}/forward_extremities",
               status=404) == "M_NOT_FOUND"
    assert err(root, "DELETE", f"{A1}/rooms/junk/forward_extremities") == "M_UNKNOWN"
    assert err(alice, "DELETE", f"{A1}/rooms/{room}/forward_extremities", status=403) == \
        "M_FORBIDDEN"


# ---------------------------------------------------------------------------- statistics

def _upload(c: Client, size: int) -> None:
    r = c.c.post("/_matrix/media/v3/upload?filename=f.bin", data=b"x" * size,
                 headers={**c.h, "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.json


def test_media_statistics_per_user(env):
    alice, bob, carol, root = env["alice"], env["bob"], env["carol"], env["root"]
    for c, sizes in ((alice, (10, 20)), (bob, (100,)), (carol, (1, 1, 1))):
        for n in sizes:
            _upload(c, n)
    alice.req("PUT", f"{V}/profile/{alice.user_id}/displayname", {"displayname": "Zed"})
    bob.req("PUT", f"{V}/profile/{bob.user_id}/displayname", {"displayname": "Amy"})
    s = f"{A1}/statistics/users/media"
    out = root.req("GET", s)
    assert out["total"] == 3 and "next_token" not in out
    assert out["users"][0] == {"user_id": alice.user_id, "displayname": "Zed",
                               "media_count": 2, "media_length": 30}

    def ids(q: str) -> list[str]:
        return [u["user_id"].split(":")[0] for u in root.req("GET", f"{s}?{q}")["users"]]

    assert ids("order_by=media_length&dir=b") == ["@bob", "@alice", "@carol"]
    assert ids("order_by=media_count") == ["@bob", "@alice", "@carol"]
    assert ids("order_by=displayname") == ["@bob", "@alice", "@carol"]   # no name: last
    assert ids("search_term=ZE") == ["@alice"]   # display name, any case
    assert ids("search_term=car") == ["@carol"]   # user id
    assert ids("search_term=%25") == []          # '%' is not a wildcard
    page = root.req("GET", f"{s}?limit=2")
    assert len(page["users"]) == 2 and page["next_token"] == 2 and page["total"] == 3
    past = root.req("GET", f"{s}?from=5")
    assert past == {"users": [], "total": 3}
    assert root.req("GET", f"{s}?until_ts=1")["total"] == 0
    assert root.req("GET", f"{s}?from_ts=1")["total"] == 3
    for q in ("order_by=size", "dir=x", "from=-1", "limit=x", "search_term=",
              "from_ts=10&until_ts=5"):
        assert err(root, "GET", f"{s}?{q}") == "M_INVALID_PARAM", q
    assert err(alice, "GET", s, status=403) == "M_FORBIDDEN"


def test_largest_rooms(env):
    alice, root = env["alice"], env["root"]
    small = alice.create_room()
    big = alice.create_room()
    for i in range(5):
        alice.send(big, {"msgtype": "m.text", "body": "long message " * 50 + str(i)})
    rooms = root.req("GET", f"{A1}/statistics/database/rooms")["rooms"]
    assert [r["room_id"] for r in rooms] == [big, small]
    assert rooms[0]["estimated_size"] > rooms[1]["estimated_size"] > 0
    assert err(alice, "GET", f"{A1}/statistics/database/rooms", status=403) == "M_FORBIDDEN"


# ---------------------------------------------------------------------------- redaction

def _redaction_of(env, event_id: str) -> tuple[str, dict] | None:
    """(sender, content) of the redaction applied to the event, if any."""
    rt = env["rt"]
    red = rt.db.run("r", lambda t: t.query_value(
        "SELECT redacted_by FROM events WHERE event_id = ?", (event_id,)))
    if red is None:
        return None
    ev = json.loads(rt.db.run("j", lambda t: t.query_value(
        "SELECT json FROM events WHERE event_id = ?", (red,))))
    return ev["sender"], ev["content"]


def _redact(env, user_id: str, body: dict) -> dict:
    root = env["root"]
    rid = root.req("POST", f"{A1}/user/{user_id}/redact", body)["redact_id"]
    env["rt"].parts["redactor"].wait()
    return root.req("GET", f"{A1}/user/redact_status/{rid}")


def test_redact_all_rooms_as_the_user_themselves(env, caplog):
    alice, bob = env["alice"], env["bob"]
    r1 = alice.create_room(preset="public_chat")
    r2 = bob.create_room(preset="public_chat")
    alice.req("POST", f"{V}/rooms/{r2}/join", {})
    mine = [alice.send(r, {"msgtype": "m.text", "body": f"spam {r}"})["event_id"]
            for r in (r1, r2, r1)]
    other = bob.send(r2, {"msgtype": "m.text", "body": "bob's"})["event_id"]
    topic = alice.state(r1, "m.room.topic", body={"topic": "kept"})["event_id"]
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_users"):
        status = _redact(env, alice.user_id, {"rooms": [], "reason": "spam"})
    assert status == {"status": "complete", "failed_redactions": {}}
    for e in mine:
        sender, content = _redaction_of(env, e)
        assert sender == alice.user_id and content["reason"] == "spam"
    joins = env["rt"].db.run("j", lambda t: [r[0] for r in t.query(
        "SELECT event_id FROM events WHERE sender = ? AND type = 'm.room.member'",
        (alice.user_id,))])
    assert all(_redaction_of(env, j) is not None for j in joins)   # joins too, as Synapse
    assert _redaction_of(env, other) is None and _redaction_of(env, topic) is None
    assert admin_lines(caplog, f"redacts the events of {alice.user_id}")
    # again: nothing left to redact, nothing fails
    assert _redact(env, alice.user_id, {"rooms": [r1]}) == {
        "status": "complete", "failed_redactions": {}}


def test_redact_banned_users_events_falls_back_to_a_room_admin(env):
    alice, bob = env["alice"], env["bob"]
    room = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/rooms/{room}/join", {})
    spam = [bob.send(room, {"msgtype": "m.text", "body": f"spam {i}"})["event_id"]
            for i in range(3)]
    alice.req("POST", f"{V}/rooms/{room}/ban", {"user_id": bob.user_id})
    status = _redact(env, bob.user_id, {"rooms": [], "limit": 2})
    assert status == {"status": "complete", "failed_redactions": {}}
    # banned bob may not, the admin is not in the room: alice (the room's admin) did,
    # newest first and at most `limit` of bob's events
    done = [_redaction_of(env, e) for e in spam]
    assert done[0] is None and [d[0] for d in done[1:]] == [alice.user_id] * 2
    assert "reason" not in done[1][1]


def test_redact_use_admin_reports_what_failed(env):
    alice, bob = env["alice"], env["bob"]
    room = alice.create_room(preset="public_chat")
    bob.req("POST", f"{V}/rooms/{room}/join", {})
    e = bob.send(room, {"msgtype": "m.text", "body": "x"})["event_id"]
    status = _redact(env, bob.user_id, {"rooms": [room], "use_admin": True})
    assert status["status"] == "complete"
    assert e in status["failed_redactions"] and _redaction_of(env, e) is None


def test_redact_task_resumes_after_a_restart(env):
    alice = env["alice"]
    room = alice.create_room()
    e = alice.send(room, {"msgtype": "m.text", "body": "x"})["event_id"]
    store = env["rt"].parts["admin_extras"]
    task = store.new_redact_task(alice.user_id, env["root"].user_id, {
        "rooms": [room], "reason": None, "limit": 1000, "use_admin": False,
        "before_ts": None, "after_ts": None})
    task.status = "active"   # as a restart would have left it
    store.update_redact_task(task)
    root = env["root"]
    assert root.req("GET", f"{A1}/user/redact_status/{task.redact_id}") == {"status": "active"}
    # one task per user at a time
    assert root.req("POST", f"{A1}/user/{alice.user_id}/redact", {"rooms": []},
                    status=400)["error"] == f"Redact already in progress for user {alice.user_id}"
    redactor = env["rt"].parts["redactor"]
    redactor.resume()
    redactor.wait()
    assert root.req("GET", f"{A1}/user/redact_status/{task.redact_id}") == {
        "status": "complete", "failed_redactions": {}}
    assert _redaction_of(env, e)[0] == alice.user_id


def test_redact_errors(env):
    root, alice = env["root"], env["alice"]
    r = f"{A1}/user/{alice.user_id}/redact"
    assert err(root, "POST", r, {}) == "M_MISSING_PARAM"
    assert err(root, "POST", r, {"rooms": "all"}) == "M_BAD_JSON"
    assert err(root, "POST", r, {"rooms": [1]}) == "M_BAD_JSON"
    assert err(root, "POST", r, {"rooms": ["nope"]}) == "M_INVALID_PARAM"
    assert err(root, "POST", r, {"rooms": [], "limit": -1}) == "M_UNKNOWN"
    assert err(root, "POST", r, {"rooms": [], "limit": "5"}) == "M_BAD_JSON"
    assert err(root, "POST", r, {"rooms": [], "use_admin": "yes"}) == "M_BAD_JSON"
    assert err(root, "POST", r, {"rooms": [], "reason": 5}) == "M_BAD_JSON"
    assert err(root, "POST", f"{A1}/user/nosigil/redact", {"rooms": []}) == "M_INVALID_PARAM"
    assert err(alice, "POST", r, {"rooms": []}, status=403) == "M_FORBIDDEN"
    assert err(root, "GET", f"{A1}/user/redact_status/nope", status=404) == "M_NOT_FOUND"
    assert err(alice, "GET", f"{A1}/user/redact_status/nope", status=403) == "M_FORBIDDEN"
    assert env["rt"].db.run("n", lambda t: t.query_value(
        "SELECT COUNT(*) FROM admin_redact_tasks")) == 0
