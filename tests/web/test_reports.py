"""Reporting content (POST /rooms/{roomId}/report[/{eventId}], /users/{userId}/report) and
Synapse's admin API over the reports (event_reports, user_reports, room_reports): who may
report what, the 404s that hide what the reporter cannot see, bad input, the rate limit,
pages / filters / detail / delete, admin-only access and the log line of each deletion."""
from __future__ import annotations

import logging

from store.reports import ReportStore
from tests.rooms.conftest import Client, user
from web.app import runtime_of

C = "/_matrix/client/v3"
A = "/_synapse/admin/v1"
MSG = {"msgtype": "m.text", "body": "spam spam"}


def _room(alice: Client, **extra) -> str:
    return alice.create_room(name="Lounge", room_alias_name="lounge", preset="public_chat",
                             **extra)


def _join(c: Client, room_id: str) -> None:
    c.req("POST", f"{C}/rooms/{room_id}/join", {})


def _report(c: Client, room_id: str, event_id: str, body=None, status=200):
    return c.req("POST", f"{C}/rooms/{room_id}/report/{event_id}",
                 {"reason": "bad", "score": -100} if body is None else body, status=status)


def test_event_report_is_stored_and_listed_as_synapse_lists_it(app):
    alice, bob, admin = user(app, "alice"), user(app, "bob"), user(app, "root", admin=True)
    room = _room(alice)
    _join(bob, room)
    ev = alice.send(room, MSG)["event_id"]
    assert _report(bob, room, ev, {"reason": "this makes me sad", "score": -50}) == {}
    # durable before the 200: a fresh store over the same database sees it
    (rep,), total = ReportStore(runtime_of(app).db).event_reports(0, 10)
    assert total == 1 and rep["event_id"] == ev
    page = admin.req("GET", f"{A}/event_reports")
    assert page["total"] == 1 and "next_token" not in page
    (r,) = page["event_reports"]
    assert set(r) == {"id", "received_ts", "room_id", "name", "event_id", "user_id", "reason",
                      "score", "sender", "canonical_alias"}
    assert (r["room_id"], r["event_id"], r["user_id"], r["sender"]) == (
        room, ev, bob.user_id, alice.user_id)
    assert (r["reason"], r["score"], r["name"], r["canonical_alias"]) == (
        "this makes me sad", -50, "Lounge", "#lounge:test.local")
    detail = admin.req("GET", f"{A}/event_reports/{r['id']}")
    assert detail["event_json"]["content"] == MSG and detail["event_json"]["sender"] == \
        alice.user_id and "event_id" not in detail["event_json"]   # the PDU, as Synapse
    assert {k: v for k, v in detail.items() if k != "event_json"} == r


def test_reason_and_score_are_optional(app):
    alice, bob, admin = user(app, "alice"), user(app, "bob"), user(app, "root", admin=True)
    room = _room(alice)
    _join(bob, room)
    ev = alice.send(room, MSG)["event_id"]
    _report(bob, room, ev, {})
    (r,) = admin.req("GET", f"{A}/event_reports")["event_reports"]
    assert r["reason"] is None and r["score"] is None


def test_event_reports_need_a_joined_reporter_who_can_see_the_event(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    carol, dave = user(app, "carol"), user(app, "dave")
    room = _room(alice)
    other = alice.create_room()
    ev = alice.send(room, MSG)["event_id"]
    elsewhere = alice.send(other, MSG)["event_id"]
    nf = "M_NOT_FOUND"
    assert _report(carol, room, ev, status=404)["errcode"] == nf         # never joined
    _join(bob, room)
    assert _report(bob, room, elsewhere, status=404)["errcode"] == nf    # not in this room
    assert _report(bob, room, "$nosuchevent", status=404)["errcode"] == nf
    assert _report(bob, "!nosuch:test.local", ev, status=404)["errcode"] == nf
    assert _report(bob, "not-a-room", ev, status=404)["errcode"] == nf
    _join(dave, room)
    dave.req("POST", f"{C}/rooms/{room}/leave", {})
    assert _report(dave, room, ev, status=404)["errcode"] == nf          # left since
    redacted = alice.send(room, MSG)["event_id"]
    alice.req("PUT", f"{C}/rooms/{room}/redact/{redacted}/r1", {})
    _join(carol, room)
    assert _report(carol, room, redacted, status=404)["errcode"] == nf
    assert _report(carol, room, ev) == {}
    assert ReportStore(runtime_of(app).db).event_reports(0, 10)[1] == 1


def test_history_visibility_decides_what_a_member_may_report(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    joined_only = alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "",
         "content": {"history_visibility": "joined"}}])
    shared = alice.create_room(preset="public_chat")
    before_j = alice.send(joined_only, MSG)["event_id"]
    before_s = alice.send(shared, MSG)["event_id"]
    _join(bob, joined_only)
    _join(carol, shared)
    assert _report(bob, joined_only, before_j, status=404)["errcode"] == "M_NOT_FOUND"
    after = alice.send(joined_only, MSG)["event_id"]
    assert _report(bob, joined_only, after) == {}
    assert _report(carol, shared, before_s) == {}


def test_event_report_bad_input(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = _room(alice)
    _join(bob, room)
    ev = alice.send(room, MSG)["event_id"]
    path = f"{C}/rooms/{room}/report/{ev}"
    for body, code in (({"reason": 5}, "M_BAD_JSON"), ({"score": "x"}, "M_BAD_JSON"),
                       ({"score": True}, "M_BAD_JSON"), ({"score": 1.5}, "M_BAD_JSON"),
                       ({"score": 2 ** 64}, "M_INVALID_PARAM"),
                       ({"reason": "a\x00b"}, "M_INVALID_PARAM")):
        assert bob.req("POST", path, body, status=400)["errcode"] == code, body
    r = bob.c.post(path, data=b"not json", headers=bob.h)
    assert r.status_code == 400 and r.json["errcode"] == "M_NOT_JSON"
    r = bob.c.post(path, json={"reason": "x"})
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    assert ReportStore(runtime_of(app).db).event_reports(0, 10)[1] == 0


def test_reports_are_rate_limited_per_reporter(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = _room(alice)
    _join(bob, room)
    _join(carol, room)
    ev = alice.send(room, MSG)["event_id"]
    for _ in range(5):
        _report(bob, room, ev)
    r = _report(bob, room, ev, status=429)
    assert r["errcode"] == "M_LIMIT_EXCEEDED" and r["retry_after_ms"] > 0
    assert bob.req("POST", f"{C}/rooms/{room}/report", {"reason": "x"},
                   status=429)["errcode"] == "M_LIMIT_EXCEEDED"
    _report(carol, room, ev)   # another reporter has a bucket of their own
    assert ReportStore(runtime_of(app).db).event_reports(0, 100)[1] == 6


def test_room_reports(app):
    alice, bob, admin = user(app, "alice"), user(app, "bob"), user(app, "root", admin=True)
    room = _room(alice)
    # the reporter need not be joined (spec v1.13)
    assert bob.req("POST", f"{C}/rooms/{room}/report", {"reason": "nasty room"}) == {}
    assert bob.req("POST", f"{C}/rooms/!nosuch:test.local/report", {"reason": "x"},
                   status=404)["errcode"] == "M_NOT_FOUND"
    assert bob.req("POST", f"{C}/rooms/{room}/report", {}, status=400)["errcode"] == \
        "M_MISSING_PARAM"
    assert bob.req("POST", f"{C}/rooms/{room}/report", {"reason": None},
                   status=400)["errcode"] == "M_BAD_JSON"
    page = admin.req("GET", f"{A}/room_reports")
    assert page["total"] == 1
    (r,) = page["room_reports"]
    assert (r["room_id"], r["user_id"], r["reason"]) == (room, bob.user_id, "nasty room")
    assert admin.req("GET", f"{A}/room_reports/{r['id']}") == r
    assert admin.req("GET", f"{A}/room_reports?room_id=nosuch")["total"] == 0
    assert admin.req("DELETE", f"{A}/room_reports/{r['id']}") == {}
    assert admin.req("GET", f"{A}/room_reports/{r['id']}", status=404)["errcode"] == \
        "M_NOT_FOUND"


def test_user_reports_keep_only_reports_of_existing_local_users(app):
    alice, bob, admin = user(app, "alice"), user(app, "bob"), user(app, "root", admin=True)
    assert bob.req("POST", f"{C}/users/{alice.user_id}/report", {"reason": "rude"}) == {}
    # hidden: nobody of that name here, or not ours to act on (answered the same)
    assert bob.req("POST", f"{C}/users/@ghost:test.local/report", {"reason": "x"}) == {}
    assert bob.req("POST", f"{C}/users/@alice:elsewhere.org/report", {"reason": "x"}) == {}
    assert bob.req("POST", f"{C}/users/{alice.user_id}/report", {"reason": "x" * 1001},
                   status=400)["errcode"] == "M_BAD_JSON"
    assert bob.req("POST", f"{C}/users/nosigil/report", {"reason": "x"},
                   status=400)["errcode"] == "M_INVALID_PARAM"
    page = admin.req("GET", f"{A}/user_reports")
    assert page["total"] == 1
    (r,) = page["user_reports"]
    assert set(r) == {"id", "received_ts", "target_user_id", "user_id", "reason"}
    assert (r["target_user_id"], r["user_id"], r["reason"]) == (alice.user_id, bob.user_id,
                                                                "rude")
    assert admin.req("GET", f"{A}/user_reports?target_user_id=alice")["total"] == 1
    assert admin.req("GET", f"{A}/user_reports?user_id=alice")["total"] == 0


def _three_reports(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    admin = user(app, "root", admin=True)
    room = _room(alice)
    other = alice.create_room(preset="public_chat")
    for c in (bob, carol):
        _join(c, room)
    _join(bob, other)
    ev = alice.send(room, MSG)["event_id"]
    own = bob.send(room, MSG)["event_id"]
    ev2 = alice.send(other, MSG)["event_id"]
    _report(bob, room, ev)
    _report(carol, room, own)
    _report(bob, other, ev2)
    return admin, room, other, bob, carol, alice


def test_event_report_pages_order_and_filters(app):
    admin, room, other, bob, carol, alice = _three_reports(app)
    newest = admin.req("GET", f"{A}/event_reports")["event_reports"]
    assert [r["room_id"] for r in newest] == [other, room, room]
    oldest = admin.req("GET", f"{A}/event_reports?dir=f")["event_reports"]
    assert oldest == newest[::-1]
    p1 = admin.req("GET", f"{A}/event_reports?limit=2")
    assert p1["total"] == 3 and p1["next_token"] == 2 and p1["event_reports"] == newest[:2]
    p2 = admin.req("GET", f"{A}/event_reports?limit=2&from=2")
    assert "next_token" not in p2 and p2["event_reports"] == newest[2:]
    q = admin.req("GET", f"{A}/event_reports?user_id=bob")
    assert q["total"] == 2 and {r["user_id"] for r in q["event_reports"]} == {bob.user_id}
    q = admin.req("GET", f"{A}/event_reports?room_id={other}")
    assert q["total"] == 1 and q["event_reports"][0]["room_id"] == other
    q = admin.req("GET", f"{A}/event_reports?event_sender_user_id={bob.user_id}")
    assert q["total"] == 1 and q["event_reports"][0]["user_id"] == carol.user_id
    # LIKE wildcards in a filter are taken literally
    assert admin.req("GET", f"{A}/event_reports?user_id=%25")["total"] == 0
    assert admin.req("GET", f"{A}/event_reports?user_id=_")["total"] == 0


def test_event_report_delete_logs_the_admin(app, caplog):
    admin, *_ = _three_reports(app)
    rid = admin.req("GET", f"{A}/event_reports")["event_reports"][0]["id"]
    with caplog.at_level(logging.INFO, logger="web.synapse_admin_reports"):
        assert admin.req("DELETE", f"{A}/event_reports/{rid}") == {}
    assert any(admin.user_id in m and f"event report {rid}" in m for m in caplog.messages)
    assert admin.req("GET", f"{A}/event_reports")["total"] == 2
    for method in ("GET", "DELETE"):
        r = admin.req(method, f"{A}/event_reports/{rid}", status=404)
        assert r == {"errcode": "M_NOT_FOUND", "error": "Event report not found"}


def test_admin_report_routes_bad_input_and_access(app):
    admin, _, _, bob, *_ = _three_reports(app)
    for path in ("event_reports", "user_reports", "room_reports"):
        for q in ("from=-1", "limit=-1", "from=x", "dir=x"):
            r = admin.req("GET", f"{A}/{path}?{q}", status=400)
            assert r["errcode"] == "M_INVALID_PARAM", (path, q)
        for rid in ("x", "-1", "1.5", "\u0663"):
            r = admin.req("GET", f"{A}/{path}/{rid}", status=400)
            assert r["errcode"] == "M_INVALID_PARAM"
        assert admin.req("GET", f"{A}/{path}/{'9' * 30}", status=400)["errcode"] == \
            "M_INVALID_PARAM"
        assert admin.req("GET", f"{A}/{path}/99999", status=404)["errcode"] == "M_NOT_FOUND"
        assert bob.req("GET", f"{A}/{path}", status=403)["errcode"] == "M_FORBIDDEN"
        assert bob.req("DELETE", f"{A}/{path}/1", status=403)["errcode"] == "M_FORBIDDEN"
        r = bob.c.get(f"{A}/{path}")
        assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    assert admin.req("GET", f"{A}/event_reports?limit=0")["event_reports"] == []
    assert admin.req("GET", f"{A}/event_reports?user_id=a%00b", status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert admin.req("GET", f"{A}/event_reports/1")["id"] == 1   # untouched by all that
