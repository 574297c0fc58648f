"""The operator's view of outbound federation through the real app: Atrium's
``/_atrium/admin/v1/destinations``, Synapse's ``/_synapse/admin/v1/federation/destinations…``
and the generic unpark / clear-fault routes of ``web/admin.py``."""
from __future__ import annotations

import pytest

from federation.errors import RemoteUnreachable
from federation.sender import FederationSender
from store.accounts import hash_token
from tests.apps import app_factory
from tests.federation.sender_helpers import FakeClient, enqueue, wait_until
from web import admin_federation
from web.app import runtime_of

A = "/_atrium/admin/v1"
S = "/_synapse/admin/v1/federation/destinations"
ROOT = {"Authorization": "Bearer tok_root"}
BOB = {"Authorization": "Bearer tok_bob"}
DEAD, ALIVE, OTHER = "dead.test", "alive.test", "other.test:8448"


@pytest.fixture
def env(tmp_path):
    factory = app_factory(tmp_path)
    make = next(factory)
    app = make(federation={"min_retry_interval": "30s", "max_retry_interval": "1h"})
    runtime = runtime_of(app)
    if "atrium_admin_federation" not in app.blueprints:  # until the wiring installs it
        admin_federation.register(app, runtime)
    fed = runtime.parts["federation"]
    assert isinstance(fed.sender, FederationSender)
    client = FakeClient()
    client.behaviour[DEAD] = RemoteUnreachable(DEAD, "connection refused")
    fed.sender.client = client

    def _users(txn):
        for name, admin in (("root", 1), ("bob", 0)):
            uid = f"@{name}:test.local"
            txn.execute("INSERT INTO users (name, creation_ts, admin) VALUES (?, ?, ?)",
                        (uid, 0, admin))
            txn.execute("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)",
                        (uid, "D" + name, 0))
            txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                        " VALUES (?, ?, ?, ?)", (hash_token(f"tok_{name}"), uid, "D" + name, 0))

    runtime.db.run("users", _users, write=True)
    sender = fed.sender
    enqueue(sender, DEAD, range(3))
    enqueue(sender, ALIVE, range(2))
    enqueue(sender, OTHER, range(1))
    wait_until(lambda: sender.backing_off(DEAD) is not None)
    wait_until(lambda: len(client.delivered(ALIVE)) == 1 and len(client.delivered(OTHER)) == 1)
    wait_until(lambda: sender.store.outbox_count(ALIVE) == 0)
    yield app.test_client(), sender, client
    try:
        next(factory)
    except StopIteration:
        pass


def test_admin_token_required(env):
    c, _, _ = env
    for path in (f"{A}/destinations", S, f"{S}/{DEAD}", f"{A}/destinations/{DEAD}"):
        assert c.get(path).status_code == 401
        r = c.get(path, headers=BOB)
        assert r.status_code == 403 and r.get_json()["errcode"] == "M_FORBIDDEN"
    r = c.post(f"{S}/{DEAD}/reset_connection", json={}, headers=BOB)
    assert r.status_code == 403


def test_atrium_view_states_and_queue_depth(env):
    c, sender, _ = env
    body = c.get(f"{A}/destinations", headers=ROOT).get_json()
    assert body["total"] == 3 and "next_token" not in body
    by = {d["destination"]: d for d in body["destinations"]}
    assert [d["destination"] for d in body["destinations"]] == sorted(by)
    dead = by[DEAD]
    assert dead["state"] == "backing_off" and dead["queue_depth"] == 3
    assert dead["outbox"] == 3 and dead["ephemeral"] == 0
    assert dead["failure_count"] == 1 and "connection refused" in dead["last_failure"]
    assert dead["backoff_until_ts"] == sender.backing_off(DEAD)
    assert dead["last_success_ts"] is None
    alive = by[ALIVE]
    assert alive["state"] == "healthy" and alive["queue_depth"] == 0
    assert alive["last_success_ts"] and alive["backoff_until_ts"] is None
    one = c.get(f"{A}/destinations/{DEAD}", headers=ROOT).get_json()
    assert one["state"] == "backing_off"
    r = c.get(f"{A}/destinations/nowhere.test", headers=ROOT)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


def test_synapse_list_shape_paging_order_and_filter(env):
    c, _, _ = env
    body = c.get(S, headers=ROOT).get_json()
    assert body["total"] == 3
    assert set(body["destinations"][0]) == {"destination", "retry_last_ts", "retry_interval",
                                             "failure_ts", "last_successful_stream_ordering"}
    by = {d["destination"]: d for d in body["destinations"]}
    assert 30_000 <= by[DEAD]["retry_interval"] <= 34_500 and by[DEAD]["retry_last_ts"] > 0
    assert by[DEAD]["failure_ts"] > 0
    assert by[ALIVE] == {"destination": ALIVE, "retry_last_ts": 0, "retry_interval": 0,
                         "failure_ts": None, "last_successful_stream_ordering": None}
    first = c.get(S, query_string={"limit": 2}, headers=ROOT).get_json()
    assert [d["destination"] for d in first["destinations"]] == [ALIVE, DEAD]
    assert first["next_token"] == "2"
    rest = c.get(S, query_string={"from": 2, "limit": 2}, headers=ROOT).get_json()
    assert [d["destination"] for d in rest["destinations"]] == [OTHER]
    assert "next_token" not in rest
    back = c.get(S, query_string={"dir": "b"}, headers=ROOT).get_json()
    assert [d["destination"] for d in back["destinations"]] == [OTHER, DEAD, ALIVE]
    by_retry = c.get(S, query_string={"order_by": "retry_interval", "dir": "b"},
                     headers=ROOT).get_json()
    assert by_retry["destinations"][0]["destination"] == DEAD
    filt = c.get(S, query_string={"destination": "DEAD"}, headers=ROOT).get_json()
    assert filt["total"] == 1 and filt["destinations"][0]["destination"] == DEAD
    for bad in ({"order_by": "nope"}, {"dir": "x"}, {"from": "-1"}, {"limit": "x"}):
        r = c.get(S, query_string=bad, headers=ROOT)
        assert r.status_code == 400 and r.get_json()["errcode"] == "M_INVALID_PARAM", bad


def test_synapse_single_destination(env):
    c, _, _ = env
    one = c.get(f"{S}/{DEAD}", headers=ROOT).get_json()
    assert one["destination"] == DEAD and 30_000 <= one["retry_interval"] <= 34_500
    assert one["failure_ts"] > 0 and one["last_successful_stream_ordering"] is None
    r = c.get(f"{S}/nowhere.test", headers=ROOT)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


def test_reset_connection(env):
    c, sender, client = env
    r = c.post(f"{S}/nowhere.test/reset_connection", json={}, headers=ROOT)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    r = c.post(f"{S}/{ALIVE}/reset_connection", json={}, headers=ROOT)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_UNKNOWN"
    client.behaviour.pop(DEAD)  # it is back
    r = c.post(f"{S}/{DEAD}/reset_connection", json={}, headers=ROOT)
    assert r.status_code == 200 and r.get_json() == {}
    wait_until(lambda: len(client.delivered_edus(DEAD)) == 3, what="resent after the reset")
    wait_until(lambda: c.get(f"{A}/destinations/{DEAD}", headers=ROOT).get_json()["state"]
               == "healthy")
    assert c.get(f"{S}/{DEAD}", headers=ROOT).get_json()["retry_interval"] == 0


def test_unpark_and_clear_fault_for_any_supervisor(env):
    c, sender, client = env
    sup = sender.supervisor
    sup.inject_fault(ALIVE, "crash", 50)
    enqueue(sender, ALIVE, range(10, 12))
    wait_until(lambda: (sup.child(ALIVE) or {}).get("state") == "parked", what="parked")
    assert c.get(f"{A}/destinations/{ALIVE}", headers=ROOT).get_json()["state"] == "parked"
    r = c.post(f"{A}/actors/remote/{ALIVE}/unpark", headers=BOB)
    assert r.status_code == 403
    r = c.delete(f"{A}/actors/remote/{ALIVE}/fault", headers=ROOT)
    assert r.status_code == 200 and r.get_json()["cleared"] > 0
    assert sup.pending_faults(ALIVE) == 0
    r = c.post(f"{A}/actors/remote/{ALIVE}/unpark", headers=ROOT)
    assert r.status_code == 200 and r.get_json()["unparked"] is True
    assert (sup.child(ALIVE) or {}).get("state") != "parked"
    r = c.post(f"{A}/actors/remote/{ALIVE}/unpark", headers=ROOT)
    assert r.get_json()["unparked"] is False
    r = c.post(f"{A}/actors/nosuch/{ALIVE}/unpark", headers=ROOT)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"
    c.post(f"{S}/{ALIVE}/reset_connection", json={}, headers=ROOT)  # nudges it (400: healthy)
    enqueue(sender, ALIVE, range(12, 13))
    wait_until(lambda: len(client.delivered_edus(ALIVE)) == 5, what="delivered after unpark")
    # rooms too: the routes are generic, and need no fault injection setting
    r = c.delete(f"{A}/actors/rooms/!x:test.local/fault", headers=ROOT)
    assert r.status_code == 200 and r.get_json() == {"key": "!x:test.local", "cleared": 0}
    r = c.post(f"{A}/actors/rooms/!x:test.local/unpark", headers=ROOT)
    assert r.status_code == 200 and r.get_json()["unparked"] is False


def test_hostile_parameters_answer_errors_not_500(env):
    c, _, _ = env
    for q in ({"destination": "a\x00b"}, {"from": "1" * 30}, {"limit": "-5"},
              {"order_by": "destination; DROP TABLE x"}, {"dir": ""}):
        r = c.get(S, query_string=q, headers=ROOT)
        assert r.status_code == 400 and r.get_json()["errcode"] == "M_INVALID_PARAM", q
    r = c.get(S, query_string={"destination": "%_"}, headers=ROOT)
    assert r.status_code == 200
    r = c.get(S, query_string={"from": "99999", "limit": "99999"}, headers=ROOT)
    assert r.status_code == 200 and r.get_json()["destinations"] == []
    for name in ("a%00b", "x" * 2000, "%F0%9F%98%80"):
        r = c.get(f"{S}/{name}", headers=ROOT)
        assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND", name
        r = c.post(f"{S}/{name}/reset_connection", json={}, headers=ROOT)
        assert r.status_code == 404, name
