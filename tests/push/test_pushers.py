"""Pushers API (set, update, delete, append, validation) and the push sender: what it POSTs
to a gateway, backoff and retries when the gateway fails, rejected pushkeys."""
import time

from web.app import runtime_of

from tests.push.conftest import V, push_of, set_pusher, user, wait_for


def pushers(client):
    return client.req("GET", f"{V}/pushers")["pushers"]


def room_of(*clients, name=None):
    owner = clients[0]
    room_id = owner.create_room(**({"name": name} if name else {}))
    for c in clients[1:]:
        owner.invite(room_id, c.user_id)
        c.join(room_id)
    return room_id


def test_set_get_update_delete(app, gateway):
    bob = user(app, "bob")
    assert pushers(bob) == []
    set_pusher(bob, gateway.url, profile_tag="tag")
    assert pushers(bob) == [{"app_id": "org.example.app", "pushkey": "key1", "kind": "http",
                             "app_display_name": "App", "device_display_name": "Phone",
                             "lang": "en", "profile_tag": "tag", "data": {"url": gateway.url}}]
    set_pusher(bob, gateway.url, lang="fr", fmt="event_id_only")
    (p,) = pushers(bob)
    assert p["lang"] == "fr" and p["data"]["format"] == "event_id_only"
    set_pusher(bob, gateway.url, pushkey="key2")
    assert sorted(x["pushkey"] for x in pushers(bob)) == ["key1", "key2"]
    bob.req("POST", f"{V}/pushers/set", {"kind": None, "app_id": "org.example.app",
                                         "pushkey": "key1"})
    assert [x["pushkey"] for x in pushers(bob)] == ["key2"]


def test_append_false_takes_the_pushkey_from_other_users(app, gateway):
    bob, carol, dave = user(app, "bob"), user(app, "carol"), user(app, "dave")
    set_pusher(bob, gateway.url)
    set_pusher(carol, gateway.url, append=True)
    assert len(pushers(bob)) == 1 and len(pushers(carol)) == 1
    set_pusher(dave, gateway.url)
    assert pushers(bob) == [] and pushers(carol) == [] and len(pushers(dave)) == 1


def test_validation(app, hs, gateway):
    bob = user(app, "bob")
    e = bob.req("POST", f"{V}/pushers/set", {"kind": "http", "app_id": "a", "pushkey": "k"},
                status=400)
    assert e["errcode"] == "M_MISSING_PARAM"
    assert bob.req("POST", f"{V}/pushers/set", {"app_id": "a", "pushkey": "k"},
                   status=400)["errcode"] == "M_MISSING_PARAM"
    bad = gateway.url.replace("/_matrix/push/v1/notify", "/notify")
    assert set_pusher(bob, bad, status=400)["errcode"] == "M_INVALID_PARAM"
    assert set_pusher(bob, "not a url", status=400)["errcode"] == "M_INVALID_PARAM"
    set_pusher(bob, gateway.url, kind="email", status=400)
    set_pusher(bob, gateway.url, app_id="x" * 65, status=400)
    set_pusher(bob, gateway.url, data={}, status=400)
    assert pushers(bob) == []
    strict = hs(push={})  # https only by default
    carol = user(strict, "carol")
    assert set_pusher(carol, gateway.url, status=400)["errcode"] == "M_INVALID_PARAM"
    set_pusher(carol, "https://push.example/_matrix/push/v1/notify")


def test_deleting_the_device_or_deactivating_deletes_pushers(app, gateway):
    bob, carol = user(app, "bob"), user(app, "carol")
    set_pusher(bob, gateway.url)
    set_pusher(carol, gateway.url, pushkey="c", append=True)
    accounts = runtime_of(app).parts["accounts"]
    accounts.delete_devices(bob.user_id, [bob.device_id])
    accounts.deactivate(carol.user_id)
    left = runtime_of(app).db.run("p", lambda t: t.query_value("SELECT COUNT(*) FROM pushers"))
    assert left == 0


def test_sender_posts_the_notify_payload(app, gateway):
    alice, bob = user(app, "alice", "Alice"), user(app, "bob")
    carol = user(app, "carol")
    room_id = room_of(alice, bob, carol, name="Cake room")
    set_pusher(bob, gateway.url, data={"url": gateway.url, "extra_key": "kept"})
    eid = alice.send(room_id, {"msgtype": "m.text", "body": "hi bob",
                               "m.mentions": {"user_ids": [bob.user_id]}})
    assert wait_for(lambda: gateway.received), "no push arrived"
    t, path, body = gateway.received[0]
    assert path == "/_matrix/push/v1/notify"
    n = body["notification"]
    assert n["event_id"] == eid and n["room_id"] == room_id
    assert n["type"] == "m.room.message" and n["sender"] == alice.user_id
    assert n["sender_display_name"] == "Alice" and n["room_name"] == "Cake room"
    assert n["content"]["body"] == "hi bob"
    assert n["counts"] == {"unread": 1} and n["prio"] == "high"
    (device,) = n["devices"]
    assert device["app_id"] == "org.example.app" and device["pushkey"] == "key1"
    assert isinstance(device["pushkey_ts"], int)
    assert device["data"] == {"extra_key": "kept"}  # everything but url
    assert device["tweaks"] == {"sound": "default", "highlight": True}
    alice.send(room_id, "second")
    assert wait_for(lambda: len(gateway.received) == 2)
    second = gateway.notifications()[1]
    assert second["counts"] == {"unread": 2} and second["prio"] == "low"
    assert "tweaks" not in second["devices"][0]  # no tweaks: left out, as Synapse does


def test_event_id_only_format(app, gateway):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(alice, bob)
    set_pusher(bob, gateway.url, fmt="event_id_only")
    eid = alice.send(room_id, "secret")
    assert wait_for(lambda: gateway.received)
    n = gateway.notifications()[0]
    assert set(n) == {"event_id", "room_id", "counts", "prio", "devices"}
    assert n["event_id"] == eid and n["devices"][0]["data"] == {"format": "event_id_only"}


def test_no_push_for_history_or_own_events(app, gateway):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(alice, bob)
    alice.send(room_id, "before the pusher")
    set_pusher(bob, gateway.url)
    bob.send(room_id, "my own")
    eid = alice.send(room_id, "after")
    assert wait_for(lambda: gateway.received)
    wait_for(lambda: False, timeout=0.2)
    assert [n["event_id"] for n in gateway.notifications()] == [eid]


def test_backoff_and_retry_until_the_gateway_recovers(app, gateway):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(alice, bob)
    set_pusher(bob, gateway.url)
    gateway.script = [(500, {}), (500, {}), (503, {})]
    eid = alice.send(room_id, "eventually")
    assert wait_for(lambda: len(gateway.received) >= 4, timeout=10)
    times = [t for t, _, _ in gateway.received[:4]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.18  # 0.05, 0.1, 0.2 s
    assert [n["event_id"] for n in gateway.notifications()] == [eid] * 4
    wait_for(lambda: False, timeout=0.3)
    assert len(gateway.received) == 4  # delivered once it succeeded, not again
    row = runtime_of(app).db.run("p", lambda t: t.query_one(
        "SELECT failing_since_ts, last_success_ts FROM pushers WHERE user_id = ?",
        (bob.user_id,)))
    assert row[0] is None and row[1] is not None


def test_a_hanging_gateway_never_blocks_sends(hs, gateway):
    app = hs(push={"allow_http_gateways": True, "gateway_timeout": 0.3,
                   "backoff_base": 0.2, "backoff_max": 5})
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(alice, bob)
    set_pusher(bob, gateway.url)
    gateway.delay = 2.0  # longer than the sender's timeout
    slowest = 0.0
    for i in range(10):
        t0 = time.monotonic()
        alice.send(room_id, f"m{i}")
        slowest = max(slowest, time.monotonic() - t0)
    assert slowest < 0.25  # sends never wait for the gateway
    wait_for(lambda: False, timeout=1.0)
    # timed out, backed off: a couple of attempts, not one per message
    assert 1 <= len(gateway.received) <= 3
    actor_failures = push_of(app).sender.supervisor.inspect(
        bob.user_id, lambda a: dict(a.failures))
    assert actor_failures[("org.example.app", "key1")][0] >= 1
    gateway.delay = 0.0
    assert wait_for(lambda: len({n["event_id"] for n in gateway.notifications()}) == 10,
                    timeout=10)


def test_rejected_pushkey_removes_the_pusher(app, gateway):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(alice, bob)
    set_pusher(bob, gateway.url)
    gateway.script = [(200, {"rejected": ["key1"]})]
    alice.send(room_id, "hello")
    assert wait_for(lambda: pushers(bob) == [])
    alice.send(room_id, "again")
    wait_for(lambda: False, timeout=0.2)
    assert len(gateway.received) == 1
