"""/sync through the HTTP API: initial, incremental, full_state, tokens, the timeline's
limited flag and prev_batch, state deltas, and no event missing or duplicated while messages
arrive concurrently."""
import gevent
import pytest

from tests.sync.conftest import V, bodies, timeline_ids, user


def test_initial_sync_has_room_state_and_timeline(app):
    alice = user(app, "alice")
    room = alice.create_room(name="Room", topic="Topic")
    alice.send(room, "one")
    s = alice.sync()
    assert s["next_batch"].startswith("s")
    joined = s["rooms"]["join"][room]
    types = [e["type"] for e in joined["timeline"]["events"] + joined["state"]["events"]]
    assert "m.room.create" in types and "m.room.name" in types
    assert bodies(s, room) == ["one"]
    assert joined["summary"]["m.joined_member_count"] == 1
    assert joined["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}
    assert s["device_lists"] == {"changed": [], "left": []}
    assert isinstance(s["device_one_time_keys_count"], dict)  # filled once E2EE keys exist
    assert isinstance(s["device_unused_fallback_key_types"], list)


def test_token_encodes_every_stream_and_bad_tokens_are_rejected(app):
    alice = user(app, "alice")
    tok = alice.sync()["next_batch"]
    assert len(tok[1:].split("_")) == 7
    for bad in ("garbage", "s1_2", "s1_2_3_4_5_6_x", "t1-2"):
        err = alice.sync(since=bad, status=400)
        assert err["errcode"] == "M_INVALID_PARAM"
    assert alice.sync(filter="{not json", status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.sync(set_presence="busy", status=400)["errcode"] == "M_INVALID_PARAM"


def test_incremental_sync_returns_only_new_events(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    first = bob.sync()
    alice.send(room, "a")
    alice.send(room, "b")
    second = bob.sync(since=first["next_batch"])
    assert bodies(second, room) == ["a", "b"]
    assert second["rooms"]["join"][room]["timeline"]["limited"] is False
    assert second["rooms"]["join"][room]["state"]["events"] == []
    third = bob.sync(since=second["next_batch"])
    assert third["rooms"]["join"] == {}
    assert third["next_batch"] == second["next_batch"]


def test_own_events_carry_transaction_id(app):
    alice = user(app, "alice")
    room = alice.create_room()
    since = alice.sync()["next_batch"]
    alice.send(room, "mine", txn="txn-42")
    ev = alice.sync(since=since)["rooms"]["join"][room]["timeline"]["events"][0]
    assert ev["unsigned"]["transaction_id"] == "txn-42"


def test_full_state_returns_every_joined_room_with_state(app):
    alice = user(app, "alice")
    r1 = alice.create_room(name="one")
    r2 = alice.create_room(name="two")
    since = alice.sync()["next_batch"]
    alice.send(r1, "x")
    s = alice.sync(since=since, full_state=True)
    assert set(s["rooms"]["join"]) == {r1, r2}
    names = [e["content"]["name"] for e in s["rooms"]["join"][r2]["state"]["events"]
             if e["type"] == "m.room.name"]
    assert names == ["two"]
    assert bodies(s, r1) == ["x"]


def test_limited_timeline_has_state_delta_and_prev_batch(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync()["next_batch"]
    alice.req("PUT", f"{V}/rooms/{room}/state/m.room.topic/", {"topic": "in the gap"})
    for i in range(15):
        alice.send(room, f"m{i}")
    s = bob.sync(since=since, filter={"room": {"timeline": {"limit": 5}}})
    joined = s["rooms"]["join"][room]
    assert joined["timeline"]["limited"] is True
    assert bodies(s, room) == [f"m{i}" for i in range(10, 15)]
    topics = [e["content"] for e in joined["state"]["events"] if e["type"] == "m.room.topic"]
    assert topics == [{"topic": "in the gap"}]
    assert joined["timeline"]["prev_batch"].startswith("s")


def test_prev_batch_and_messages_reconstruct_the_gap(app):
    pytest.importorskip("web.room_reads", reason="/messages (web/room_reads.py) not present")
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat")
    bob.join(room)
    since = bob.sync()["next_batch"]
    sent = [alice.send(room, f"m{i}")["event_id"] for i in range(12)]
    s = bob.sync(since=since, filter={"room": {"timeline": {"limit": 4}}})
    tl = s["rooms"]["join"][room]["timeline"]
    assert tl["limited"]
    got = [e["event_id"] for e in tl["events"]]
    page = bob.req("GET", f"{V}/rooms/{room}/messages",
                   query={"from": tl["prev_batch"], "dir": "b", "limit": "50"})
    older = [e["event_id"] for e in page["chunk"]]
    gap = [e for e in reversed(older) if e in sent]
    assert gap + got == sent


def test_no_event_missing_or_duplicated_with_concurrent_senders(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room = alice.create_room(preset="public_chat")
    other = carol.create_room(preset="public_chat")
    bob.join(room)
    carol.join(room)
    since = bob.sync()["next_batch"]
    per_sender = 25

    def sender(client, target, tag):
        for i in range(per_sender):
            client.send(target, f"{tag}{i}")
            gevent.sleep(0)

    workers = [gevent.spawn(sender, alice, room, "a"), gevent.spawn(sender, carol, room, "c"),
               gevent.spawn(sender, carol, other, "x")]
    seen: list[str] = []
    while not all(w.dead for w in workers):
        s = bob.sync(since=since, timeout=200, filter={"room": {"timeline": {"limit": 100}}})
        assert not s["rooms"]["join"].get(room, {}).get("timeline", {}).get("limited", False)
        seen.extend(bodies(s, room))
        since = s["next_batch"]
    gevent.joinall(workers, raise_error=True)
    s = bob.sync(since=since, filter={"room": {"timeline": {"limit": 100}}})
    seen.extend(bodies(s, room))
    expected = {f"a{i}" for i in range(per_sender)} | {f"c{i}" for i in range(per_sender)}
    assert len(seen) == len(set(seen)), "duplicated events"
    assert set(seen) == expected
    assert [b for b in seen if b.startswith("a")] == [f"a{i}" for i in range(per_sender)]


def test_newly_joined_room_gets_full_state(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="public_chat", name="Named")
    for i in range(3):
        alice.send(room, f"before{i}")
    since = bob.sync()["next_batch"]
    bob.join(room)
    s = bob.sync(since=since)
    joined = s["rooms"]["join"][room]
    state_types = {e["type"] for e in joined["state"]["events"]}
    timeline_types = {e["type"] for e in joined["timeline"]["events"]}
    assert "m.room.create" in state_types | timeline_types
    assert "m.room.name" in state_types | timeline_types
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id
               for e in joined["timeline"]["events"])
    assert joined["summary"]["m.joined_member_count"] == 2
