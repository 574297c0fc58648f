"""The operator's console (web/console.py, web/static/console/) and the admin routes it uses
(web/admin.py): the page and its files with their security headers, unknown files as JSON
404s, the console/busiest/failing routes (admin only) and their answers after real sends,
crashes and a park, the sequence shape of traces, and the tracer's per-actor tally that
the rankings read (bounded by the ring, exact across evictions)."""
from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

import pytest

from supervision.render import sequence
from supervision.tracer import Tracer
from tests.web.conftest import SERVER, auth_headers
from web.console import STATIC

A = "/_atrium/admin/v1"
C = "/_matrix/client/v3"
FAST_PARK = {"max_restarts": 2, "restart_delay": "10ms", "restart_window": "60s",
             "park_duration": "60s"}


def make_user(client: Any, name: str, *, admin: bool = False) -> dict[str, str]:
    """Register through the shared-secret API (the way an operator makes an admin)."""
    url = "/_synapse/admin/v1/register"
    nonce = client.get(url).json["nonce"]
    mac = hmac.new(b"s3cret", digestmod=hashlib.sha1)
    mac.update(f"{nonce}\x00{name}\x00pw-{name}\x00".encode()
               + (b"admin" if admin else b"notadmin"))
    r = client.post(url, json={"nonce": nonce, "username": name, "password": f"pw-{name}",
                               "admin": admin, "mac": mac.hexdigest()})
    assert r.status_code == 200, r.json
    return auth_headers(r.json["access_token"])


def create_room(client: Any, headers: dict[str, str]) -> str:
    r = client.post(f"{C}/createRoom", json={"preset": "public_chat"}, headers=headers)
    assert r.status_code == 200, r.json
    return r.json["room_id"]


def send(client: Any, headers: dict[str, str], room_id: str, txn: str) -> Any:
    return client.put(f"{C}/rooms/{room_id}/send/m.room.message/{txn}",
                      json={"msgtype": "m.text", "body": txn}, headers=headers)


# -- the page and its files ------------------------------------------------------------------

def assert_console_headers(r: Any) -> None:
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_page_is_served_with_strict_headers(client) -> None:
    r = client.get("/_atrium/console")
    assert r.status_code == 200
    assert r.content_type == "text/html; charset=utf-8"
    assert_console_headers(r)
    page = r.get_data(as_text=True)
    assert "<script" in page and "Supervision tree" in page
    # no inline script or style, nothing from another origin
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "<style" not in page and " style=" not in page
    assert "http://" not in page and "https://" not in page


def test_every_file_the_page_uses_is_served(client) -> None:
    page = client.get("/_atrium/console").get_data(as_text=True)
    linked = re.findall(r'(?:src|href)="(/_atrium/console/[^"]+)"', page)
    assert sorted(linked) == ["/_atrium/console/console.css", "/_atrium/console/console.js"]
    script = client.get("/_atrium/console/console.js")
    imported = re.findall(r'from "\./([^"]+)"', script.get_data(as_text=True))
    assert imported == ["sequence.js"]
    types = {"console.js": "text/javascript", "sequence.js": "text/javascript",
             "console.css": "text/css", "index.html": "text/html"}
    for name, kind in types.items():
        r = client.get(f"/_atrium/console/{name}")
        assert r.status_code == 200, name
        assert r.content_type.startswith(kind), (name, r.content_type)
        assert_console_headers(r)
        assert r.data == (STATIC / name).read_bytes()
    assert client.head("/_atrium/console/console.js").status_code == 200


def test_scripts_never_parse_server_data_as_html() -> None:
    for name in ("console.js", "sequence.js"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "eval(" not in text and "document.write" not in text, name


@pytest.mark.parametrize("path", [
    "/_atrium/console/nope.js", "/_atrium/console/sub/console.js",
    "/_atrium/console/..%2F..%2Fweb%2Fconsole.py", "/_atrium/console/%2e%2e/admin.py",
    "/_atrium/console/console.js.bak", "/_atrium/console/CONSOLE.JS",
    "/_atrium/console/a%00b", "/_atrium/consolex",
])
def test_unknown_console_files_are_json_404(client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, path
    assert r.json["errcode"] in ("M_UNRECOGNIZED", "M_NOT_FOUND"), r.json
    assert "error" in r.json


def test_unknown_console_file_is_m_unrecognized(client) -> None:
    r = client.get("/_atrium/console/missing.css")
    assert r.status_code == 404 and r.json["errcode"] == "M_UNRECOGNIZED"


def test_console_answers_other_methods_with_json_405(client) -> None:
    r = client.post("/_atrium/console", json={})
    assert r.status_code == 405 and r.json["errcode"] == "M_UNRECOGNIZED"


# -- the admin routes it uses ---------------------------------------------------------------

ROUTES = [f"{A}/console", f"{A}/rooms/busiest", f"{A}/rooms/failing"]


@pytest.mark.parametrize("path", ROUTES)
def test_new_admin_routes_need_an_admin(client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"
    r = client.get(path, headers=auth_headers("not-a-token"))
    assert r.status_code == 401 and r.json["errcode"] == "M_UNKNOWN_TOKEN"
    user = make_user(client, "mortal")
    r = client.get(path, headers=user)
    assert r.status_code == 403 and r.json["errcode"] == "M_FORBIDDEN"
    admin = make_user(client, "root", admin=True)
    assert client.get(path, headers=admin).status_code == 200


def test_console_info(make_app) -> None:
    client = make_app().test_client()
    admin = make_user(client, "root", admin=True)
    info = client.get(f"{A}/console", headers=admin).json
    assert info["user_id"] == f"@root:{SERVER}" and info["server_name"] == SERVER
    assert info["fault_injection"] is False
    rooms = info["supervisors"]["rooms"]
    assert rooms["max_restarts"] == 5 and rooms["park_duration_ms"] == 30_000
    assert info["trace"]["capacity"] == 10_000 and info["trace"]["records"] >= 0

    on = make_app(enable_fault_injection=True).test_client()
    admin = make_user(on, "root", admin=True)
    assert on.get(f"{A}/console", headers=admin).json["fault_injection"] is True


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=-3"])
def test_rankings_reject_a_bad_limit(client, query: str) -> None:
    admin = make_user(client, "root", admin=True)
    for path in (f"{A}/rooms/busiest", f"{A}/rooms/failing"):
        r = client.get(f"{path}?{query}", headers=admin)
        assert r.status_code == 400 and r.json["errcode"] == "M_INVALID_PARAM"


def test_busiest_rooms_rank_by_recent_messages(client) -> None:
    admin = make_user(client, "root", admin=True)
    quiet, busy, busier = (create_room(client, admin) for _ in range(3))
    for i in range(3):
        assert send(client, admin, busy, f"b{i}").status_code == 200
    for i in range(6):
        assert send(client, admin, busier, f"c{i}").status_code == 200
    body = client.get(f"{A}/rooms/busiest?limit=2", headers=admin).json
    assert [r["room_id"] for r in body["rooms"]] == [busier, busy]
    top = body["rooms"][0]
    # createRoom's messages plus the six sends; every one handled, nothing queued now
    assert top["recent_messages"] >= 7 and top["failed_messages"] == 0
    assert top["state"] == "running" and top["pending"] == 0 and top["restarts"] == 0
    assert body["rooms"][1]["recent_messages"] == top["recent_messages"] - 3
    assert body["window"]["records"] >= 9 and body["window"]["since"] <= time.time()
    everything = client.get(f"{A}/rooms/busiest?limit=50", headers=admin).json["rooms"]
    assert quiet in [r["room_id"] for r in everything][2:]
    # nothing failed: the failing list is empty
    assert client.get(f"{A}/rooms/failing", headers=admin).json["rooms"] == []


def test_actor_rows_carry_recent_traffic_and_last_failure(make_app) -> None:
    client = make_app(enable_fault_injection=True).test_client()
    admin = make_user(client, "root", admin=True)
    room = create_room(client, admin)
    assert client.post(f"{A}/rooms/{room}/fault", json={"kind": "crash", "count": 1},
                       headers=admin).status_code == 200
    assert send(client, admin, room, "boom").status_code == 500
    assert send(client, admin, room, "fine").status_code == 200
    rows = client.get(f"{A}/actors", headers=admin).json["rooms"]["children"]
    row = next(r for r in rows if r["key"] == room)
    assert row["restarts"] == 1 and row["recent_messages"] >= 3
    assert row["failed_messages"] == 1 and row["last_error_outcome"] == "crash"
    assert "InjectedFault" in row["last_error"] and row["last_error_at"] <= time.time()


def test_failing_rooms_show_a_parked_room_until_it_is_unparked(make_app) -> None:
    client = make_app(enable_fault_injection=True, actors=FAST_PARK).test_client()
    admin = make_user(client, "root", admin=True)
    bad, good = create_room(client, admin), create_room(client, admin)
    assert send(client, admin, good, "ok").status_code == 200
    assert client.post(f"{A}/rooms/{bad}/fault", json={"kind": "crash", "count": 100},
                       headers=admin).status_code == 200
    statuses = []
    for i in range(6):
        statuses.append(send(client, admin, bad, f"x{i}").status_code)
        if statuses[-1] == 503:
            break
        time.sleep(0.03)  # let the restart happen
    assert statuses == [500, 500, 500, 503], statuses

    failing = client.get(f"{A}/rooms/failing", headers=admin).json["rooms"]
    assert [r["room_id"] for r in failing] == [bad]
    row = failing[0]
    assert row["state"] == "parked" and 0 < row["retry_after_ms"] <= 60_000
    assert row["recent_failures"] == 3 and row["restarts"] == 2
    assert row["failed_messages"] == 4  # three crashes and the refusal while parked
    assert row["last_error_outcome"] == "parked" and row["last_error"]
    busiest = client.get(f"{A}/rooms/busiest", headers=admin).json["rooms"]
    assert {r["room_id"] for r in busiest} == {bad, good}

    # the console's Unpark button: the existing route, then the lists say so
    client.delete(f"{A}/actors/rooms/{bad}/fault", headers=admin)
    r = client.post(f"{A}/actors/rooms/{bad}/unpark", json={}, headers=admin)
    assert r.status_code == 200 and r.json["unparked"] is True
    assert send(client, admin, bad, "again").status_code == 200
    failing = client.get(f"{A}/rooms/failing", headers=admin).json["rooms"]
    assert failing[0]["room_id"] == bad and failing[0]["state"] == "running"
    assert "retry_after_ms" not in failing[0]


def test_traces_as_a_sequence(client) -> None:
    admin = make_user(client, "root", admin=True)
    room = create_room(client, admin)
    r = send(client, admin, room, "seq1")
    assert r.status_code == 200
    request_id = r.headers["X-Request-Id"]

    seq = client.get(f"{A}/traces/{request_id}?format=sequence", headers=admin).json
    assert seq["trace_id"] == request_id
    assert seq["participants"][:2] == ["web", f"rooms/{room}"]
    first = seq["messages"][0]
    assert first["from"] == "web" and first["to"] == f"rooms/{room}"
    assert first["sender"].startswith("web PUT /_matrix/client/v3/rooms/")
    assert first["type"] == "Send" and first["kind"] == "ask" and first["outcome"] == "ok"
    assert first["at_ms"] == 0 and first["run_ms"] > 0 and first["wait_ms"] >= 0
    assert seq["span_ms"] >= first["run_ms"]

    by_room = client.get(f"{A}/rooms/{room}/traces?format=sequence&limit=5",
                         headers=admin).json
    assert by_room["room_id"] == room and 1 <= len(by_room["messages"]) <= 5
    ats = [m["at_ms"] for m in by_room["messages"]]
    assert ats == sorted(ats) and by_room["messages"][-1]["trace_id"] == request_id
    # one lane for all web requests, however many paths they had
    assert by_room["participants"].count("web") == 1
    assert len({m["sender"] for m in by_room["messages"]}) >= 1
    empty = client.get(f"{A}/traces/nosuch?format=sequence", headers=admin).json
    assert empty["messages"] == [] and empty["participants"] == [] and empty["span_ms"] == 0


# -- the tracer's tally and the sequence helper (no app) ----------------------------------

class Msg:
    pass


def test_tally_follows_the_ring_across_evictions() -> None:
    t = Tracer(capacity=4)
    recs = [t.enqueued("t", "web", "rooms", k, Msg(), "ask") for k in "aab"]
    t.started(recs[0])
    t.finished(recs[0], "crash", RuntimeError("boom"))
    t.finished(recs[1], "ok")
    assert t.activity_of("rooms", "a")["recent_messages"] == 2
    assert t.activity_of("rooms", "a")["failed_messages"] == 1
    assert t.activity_of("rooms", "a")["last_error"] == "RuntimeError: boom"
    assert [k for k, _ in t.top("rooms", 5)] == ["a", "b"]
    assert [k for k, _ in t.top("rooms", 5, failing=True)] == ["a"]
    # two more records push both "a" records out of the ring
    late = t.enqueued("t", "web", "rooms", "b", Msg(), "tell")
    t.enqueued("t", "web", "rooms", "c", Msg(), "tell")
    t.enqueued("t", "web", "rooms", "c", Msg(), "tell")
    assert t.activity_of("rooms", "a") is None
    assert t.activity("rooms") == {k: t.activity_of("rooms", k) for k in "bc"}
    # a record that fails after it fell out of the ring is not counted
    t.enqueued("t", "web", "rooms", "c", Msg(), "tell")
    t.finished(recs[2], "timeout")
    assert t.activity_of("rooms", "b")["failed_messages"] == 0
    t.finished(late, "parked")
    assert t.activity_of("rooms", "b")["failed_messages"] == 1
    counts = {k: v["recent_messages"] for k, v in t.activity("rooms").items()}
    assert counts == {"b": 1, "c": 3} and sum(counts.values()) == len(t) == 4
    assert t.window()["records"] == 4 and t.window()["capacity"] == 4
    assert t.activity("users") == {} and t.top("users", 3) == []


def test_tally_ignores_domain_errors_and_rejections_count() -> None:
    t = Tracer(capacity=100)
    r = t.enqueued("t", "web", "rooms", "a", Msg(), "ask")
    t.finished(r, "domain_error", ValueError("403"))
    t.rejected("t", "web", "rooms", "a", Msg(), "ask", "rejected_full")
    row = t.activity_of("rooms", "a")
    assert row["recent_messages"] == 2 and row["failed_messages"] == 1
    assert row["last_error_outcome"] == "rejected_full"


def test_sequence_shape() -> None:
    t = Tracer()
    a = t.enqueued("T1", "web PUT /x", "rooms", "!a:x", Msg(), "ask")
    t.started(a)
    b = t.enqueued("T1", "rooms/!a:x", "users", "@u:x", Msg(), "tell")
    t.finished(a, "ok")
    c = t.enqueued("T1", "web GET /y", "rooms", "!a:x", Msg(), "ask")
    t.finished(c, "timeout")
    seq = sequence([a, b, c])
    assert seq["participants"] == ["web", "rooms/!a:x", "users/@u:x"]
    assert [m["from"] for m in seq["messages"]] == ["web", "rooms/!a:x", "web"]
    assert [m["outcome"] for m in seq["messages"]] == ["ok", None, "timeout"]
    ma, mb, mc = seq["messages"]
    assert ma["run_ms"] is not None and ma["wait_ms"] is not None
    assert mb["run_ms"] is None and mb["wait_ms"] is None  # still in flight
    assert mc["run_ms"] is None and mc["wait_ms"] is not None  # gave up while queued
    assert seq["started_at"] == a.enqueued_at and seq["span_ms"] >= 0
    assert sequence([]) == {"participants": [], "messages": [], "started_at": None,
                            "span_ms": 0.0}
