"""/health and /_synapse/metrics (web/metrics.py): off by default (404 M_UNRECOGNIZED); on,
the text format parses, and requests, room sends, waiting /syncs and parked rooms move the
metrics docs/metrics.md names."""
from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps import app_factory
from tests.web.conftest import auth_headers, register_via_dummy
from web.app import runtime_of

C = "/_matrix/client/v3"


@pytest.fixture(scope="module")
def apps(tmp_path_factory: Any) -> Any:
    factory = app_factory(tmp_path_factory.mktemp("metrics"))
    make = next(factory)
    on = make(enable_metrics=True, enable_registration=True,
              enable_registration_without_verification=True,
              actors={"max_restarts": 1, "restart_delay": "10ms", "park_duration": "60s"})
    yield on
    next(factory, None)


@pytest.fixture(scope="module")
def client(apps: Any) -> Any:
    return apps.test_client()


@pytest.fixture(scope="module")
def alice(client: Any) -> dict[str, str]:
    r = register_via_dummy(client, "alice")
    assert r.status_code == 200, r.json
    return auth_headers(r.json["access_token"])


def scrape(client: Any) -> dict[str, Any]:
    r = client.get("/_synapse/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, Any] = {}
    for fam in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict[str, Any], metric: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(metric, ())
               if all(lab.get(k) == want for k, want in labels.items()))


def test_health_is_plain_ok_without_auth(make_app: Any) -> None:
    c = make_app().test_client()
    r = c.get("/health")
    assert r.status_code == 200 and r.get_data() == b"OK"
    assert r.mimetype == "text/plain"
    assert c.head("/health").status_code == 200
    # metrics are off by default: the path does not exist
    r = c.get("/_synapse/metrics")
    assert r.status_code == 404 and r.json["errcode"] == "M_UNRECOGNIZED"


def test_request_counted_by_endpoint_method_and_status(client: Any, alice: Any) -> None:
    before = scrape(client)
    assert value(before, "process_cpu_seconds_total") > 0  # process metrics on our registry
    name = "atrium_http_requests_total"
    key = {"endpoint": "profile.get_profile", "method": "GET"}
    for _ in range(2):
        assert client.get(f"{C}/profile/@alice:test.local", headers=alice).status_code == 200
    assert client.get(f"{C}/profile/@nobody:test.local").status_code == 404
    after = scrape(client)
    assert value(after, name, code="200", **key) - value(before, name, code="200", **key) == 2
    assert value(after, name, code="404", **key) - value(before, name, code="404", **key) == 1
    count = "atrium_http_request_duration_seconds_count"
    assert value(after, count, **key) - value(before, count, **key) == 3
    # an unknown path is one bounded label, not its raw path
    client.get("/_matrix/client/v3/no/such/thing/42")
    assert value(scrape(client), name, endpoint="unknown", code="404") >= 1


def test_room_send_shows_in_actor_and_persist_metrics(client: Any, alice: Any) -> None:
    room = client.post(f"{C}/createRoom", json={}, headers=alice).json["room_id"]
    before = scrape(client)
    r = client.put(f"{C}/rooms/{room}/send/m.room.message/t1",
                   json={"msgtype": "m.text", "body": "hi"}, headers=alice)
    assert r.status_code == 200
    after = scrape(client)
    assert value(after, "atrium_actors", supervisor="rooms", state="running") >= 1
    assert value(after, "atrium_actor_messages_total", supervisor="rooms", outcome="ok") > \
        value(before, "atrium_actor_messages_total", supervisor="rooms", outcome="ok")
    persist = "atrium_db_transaction_duration_seconds_count"
    assert value(after, persist, name="persist_events", kind="write") == \
        value(before, persist, name="persist_events", kind="write") + 1
    assert value(after, "atrium_room_persist_events_sum") == \
        value(before, "atrium_room_persist_events_sum") + 1
    assert value(after, "atrium_actor_mailbox_limit", supervisor="rooms") == 1000
    in_use = value(after, "atrium_db_connections", state="in_use")
    assert 0 <= in_use <= value(after, "atrium_db_connections_max")
    assert value(after, "atrium_cache_size", cache="events") >= 1
    if runtime_of(client.application).db.engine == "sqlite":
        assert value(after, "atrium_db_group_commit_size_count") > \
            value(before, "atrium_db_group_commit_size_count")


def test_sync_waiter_gauge_and_wake_latency(client: Any, alice: Any) -> None:
    room = client.post(f"{C}/createRoom", json={}, headers=alice).json["room_id"]
    since = client.get(f"{C}/sync", headers=alice).json["next_batch"]
    before = scrape(client)
    assert value(before, "atrium_sync_waiters") == 0
    out: dict[str, Any] = {}
    g = gevent.spawn(lambda: out.setdefault(
        "r", client.get(f"{C}/sync?since={since}&timeout=10000", headers=alice)))
    deadline = time.monotonic() + 5
    while value(scrape(client), "atrium_sync_waiters") != 1:
        assert time.monotonic() < deadline, "the /sync never waited"
        gevent.sleep(0.01)
    client.put(f"{C}/rooms/{room}/send/m.room.message/w1",
               json={"msgtype": "m.text", "body": "wake"}, headers=alice)
    g.join(timeout=5)
    assert out["r"].status_code == 200 and room in out["r"].json["rooms"]["join"]
    after = scrape(client)
    assert value(after, "atrium_sync_waiters") == 0
    assert value(after, "atrium_sync_wakeups_total") > value(before, "atrium_sync_wakeups_total")
    assert value(after, "atrium_sync_wake_latency_seconds_count") == \
        value(before, "atrium_sync_wake_latency_seconds_count") + 1
    sync_ok = {"endpoint": "sync.get_sync", "method": "GET", "code": "200"}
    assert value(after, "atrium_http_requests_total", **sync_ok) - \
        value(before, "atrium_http_requests_total", **sync_ok) == 1


def test_parked_room_counts_crashes_restarts_and_parks(client: Any, alice: Any) -> None:
    room = client.post(f"{C}/createRoom", json={}, headers=alice).json["room_id"]
    before = scrape(client)
    rooms = runtime_of(client.application).parts["supervisors"]["rooms"]
    rooms.inject_fault(room, "crash", 100)
    statuses = []
    for i in range(6):
        r = client.put(f"{C}/rooms/{room}/send/m.room.message/p{i}",
                       json={"msgtype": "m.text", "body": "x"}, headers=alice)
        statuses.append(r.status_code)
        if rooms.child(room) and rooms.child(room)["state"] == "parked":
            break
        gevent.sleep(0.03)  # past restart_delay
    rooms.clear_faults(room)
    assert rooms.child(room)["state"] == "parked", statuses
    r = client.put(f"{C}/rooms/{room}/send/m.room.message/late",
                   json={"msgtype": "m.text", "body": "x"}, headers=alice)
    assert r.status_code == 503 and r.json["retry_after_ms"] > 0
    after = scrape(client)
    for metric, grew_by in (("atrium_actor_parks_total", 1),
                            ("atrium_actor_crashes_total", 2),
                            ("atrium_actor_restarts_total", 1)):
        assert value(after, metric, supervisor="rooms") - \
            value(before, metric, supervisor="rooms") >= grew_by, metric
    assert value(after, "atrium_actors", supervisor="rooms", state="parked") >= 1
    assert value(after, "atrium_actor_rejected_total", supervisor="rooms", reason="parked") > \
        value(before, "atrium_actor_rejected_total", supervisor="rooms", reason="parked")
    assert value(after, "atrium_http_requests_total", endpoint="room_events.send_message",
                 method="PUT", code="503") >= 1
    rooms.unpark(room)
