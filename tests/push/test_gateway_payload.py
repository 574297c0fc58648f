"""What a push gateway receives (push-gateway-api, and the fields Synapse sends that Sygnal
and the clients read): room name or alias, sender display name, counts, prio, member events
(local and remote invites), nothing for muted rooms, and a rejected pushkey removing the
pusher.  One app and one gateway for the module; each test has its own users and pushkeys."""
import time

import gevent
import pytest

from tests.apps import app_factory
from tests.push.conftest import PUSH_CONFIG, V, Gateway, set_pusher, user, wait_for
from web.app import runtime_of


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("gateway_payload"))
    make = next(factory)
    yield make(push=dict(PUSH_CONFIG))
    next(factory, None)


@pytest.fixture(scope="module")
def gateway():
    gw = Gateway()
    yield gw
    gw.stop()


def notes(gateway, pushkey):
    return [b["notification"] for _, _, b in gateway.received
            if b["notification"]["devices"][0]["pushkey"] == pushkey]


def wait_notes(gateway, pushkey, n):
    assert wait_for(lambda: len(notes(gateway, pushkey)) >= n), notes(gateway, pushkey)
    return notes(gateway, pushkey)


def room_of(owner, *others, **body):
    room_id = owner.create_room(**body)
    for c in others:
        owner.invite(room_id, c.user_id)
        c.join(room_id)
    return room_id


def test_one_to_one_and_group_messages(app, gateway):
    alice, bob = user(app, "a1", "Alice"), user(app, "b1", "Bob")
    carol = user(app, "c1", "Carol")
    dm = room_of(alice, bob)
    group = room_of(alice, bob, carol, name="Cake room")
    set_pusher(bob, gateway.url, pushkey="k1")
    # one at a time: the badge is counted when the push goes out
    e1 = alice.send(dm, "psst")
    wait_notes(gateway, "k1", 1)
    e2 = alice.send(group, "hello all")
    wait_notes(gateway, "k1", 2)
    e3 = alice.send(group, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"},
                    etype="m.room.encrypted")
    first, second, third = wait_notes(gateway, "k1", 3)
    # a 1:1 message rings (sound): high; it carries the event and who sent it
    assert first["event_id"] == e1 and first["prio"] == "high"
    assert first["type"] == "m.room.message" and first["sender"] == alice.user_id
    assert first["sender_display_name"] == "Alice" and first["content"]["body"] == "psst"
    assert "room_name" not in first and "room_alias" not in first  # a DM has no name
    assert first["devices"][0]["tweaks"] == {"sound": "default"}
    assert first["counts"] == {"unread": 1}
    # a group message only notifies: low; the badge counts across rooms
    assert second["event_id"] == e2 and second["prio"] == "low"
    assert second["room_name"] == "Cake room" and "tweaks" not in second["devices"][0]
    assert second["counts"] == {"unread": 2}
    # encrypted: its effect is unknown, so high (as Synapse)
    assert third["event_id"] == e3 and third["prio"] == "high"
    assert third["type"] == "m.room.encrypted" and third["counts"] == {"unread": 3}
    # reading one room lowers the badge of the next push
    bob.receipt(dm, e1)
    alice.send(group, "more")
    assert wait_notes(gateway, "k1", 4)[3]["counts"] == {"unread": 3}


def test_room_names_alias_and_members(app, gateway):
    alice, bob = user(app, "a2", "Alice"), user(app, "b2")
    carol, dave = user(app, "c2", "Carol"), user(app, "d2")
    aliased = room_of(alice, bob, room_alias_name="cakes")
    two_others = room_of(alice, bob, carol)
    three_others = room_of(alice, bob, carol, dave)
    set_pusher(bob, gateway.url, pushkey="k2")
    for room_id in (aliased, two_others, three_others):
        alice.send(room_id, "hi")
    a, b, c = wait_notes(gateway, "k2", 3)
    assert a["room_alias"] == "#cakes:test.local" and a["room_name"] == "#cakes:test.local"
    assert b["room_name"] == "Alice and Carol" and "room_alias" not in b
    assert c["room_name"] == "Alice and 2 others"
    # a name wins over the alias; a display name change shows in the next push
    alice.req("PUT", f"{V}/rooms/{aliased}/state/m.room.name", {"name": "Cakes!"})
    alice.req("PUT", f"{V}/rooms/{aliased}/state/m.room.member/{alice.user_id}",
              {"membership": "join", "displayname": "Alice B."})
    alice.send(aliased, "renamed")
    last = wait_notes(gateway, "k2", 4)[3]
    assert last["room_name"] == "Cakes!" and last["room_alias"] == "#cakes:test.local"
    assert last["sender_display_name"] == "Alice B."


def test_invite_carries_the_member_event(app, gateway):
    alice, bob = user(app, "a3", "Alice"), user(app, "b3")
    set_pusher(bob, gateway.url, pushkey="k3")
    room_id = alice.create_room(name="Party")
    alice.invite(room_id, bob.user_id)
    (n,) = wait_notes(gateway, "k3", 1)
    assert n["room_id"] == room_id and n["type"] == "m.room.member"
    assert n["membership"] == "invite" and n["user_is_target"] is True
    assert n["content"]["membership"] == "invite"
    assert n["sender"] == alice.user_id and n["sender_display_name"] == "Alice"
    assert n["room_name"] == "Party" and n["prio"] == "high"
    assert n["counts"] == {"unread": 1}                   # the invite is on the badge
    assert n["devices"][0]["tweaks"] == {"sound": "default"}


def test_invite_from_another_server(app, gateway):
    bob = user(app, "b4")
    set_pusher(bob, gateway.url, pushkey="k4")
    room_id = "!far:remote.example"
    invite = {"event_id": "$invite-b4", "room_id": room_id, "type": "m.room.member",
              "state_key": bob.user_id, "sender": "@zoe:remote.example",
              "content": {"membership": "invite"}, "origin_server_ts": int(time.time() * 1000)}
    stripped = [
        {"type": "m.room.name", "state_key": "", "sender": "@zoe:remote.example",
         "content": {"name": "Far away"}},
        {"type": "m.room.member", "state_key": "@zoe:remote.example",
         "sender": "@zoe:remote.example", "content": {"membership": "join",
                                                     "displayname": "Zoe"}}]
    runtime_of(app).parts["rooms"].remote_invites.record(
        bob.user_id, room_id, "invite", invite, room_version="10", stripped_state=stripped,
        origin="remote.example")
    (n,) = wait_notes(gateway, "k4", 1)
    assert n["event_id"] == "$invite-b4" and n["room_id"] == room_id
    assert n["type"] == "m.room.member" and n["membership"] == "invite"
    assert n["user_is_target"] is True and n["content"] == {"membership": "invite"}
    assert n["room_name"] == "Far away" and n["sender_display_name"] == "Zoe"
    assert n["counts"] == {"unread": 1} and n["prio"] == "high"


def test_no_push_for_muted_rooms(app, gateway):
    alice, bob = user(app, "a5", "Alice"), user(app, "b5")
    quiet = room_of(alice, bob, name="Quiet")
    muted = room_of(alice, bob, name="Muted")
    loud = room_of(alice, bob, name="Loud")
    set_pusher(bob, gateway.url, pushkey="k5")
    # "mentions and keywords": a room rule that does not notify
    bob.req("PUT", bob.rule_path("room", quiet), {"actions": ["dont_notify"]})
    # "mute": an override rule for the room with no actions
    bob.req("PUT", bob.rule_path("override", muted), {
        "conditions": [{"kind": "event_match", "key": "room_id", "pattern": muted}],
        "actions": []})
    alice.send(quiet, "chatter")
    alice.send(muted, "chatter")
    alice.send(muted, {"msgtype": "m.text", "body": "bob!",
                       "m.mentions": {"user_ids": [bob.user_id]}})
    mention = alice.send(quiet, {"msgtype": "m.text", "body": "bob!",
                                 "m.mentions": {"user_ids": [bob.user_id]}})
    last = alice.send(loud, "the end")
    # pushes go out in order, so once the last one is in, nothing else is coming
    got = wait_notes(gateway, "k5", 2)
    gevent.sleep(0.05)
    assert [n["event_id"] for n in notes(gateway, "k5")] == [mention, last]
    assert got[0]["prio"] == "high"                       # a mention highlights


def test_rejected_pushkey_removes_only_that_pusher(app, gateway):
    alice, bob, carol = user(app, "a6"), user(app, "b6"), user(app, "c6")
    room_id = room_of(alice, bob, carol)
    set_pusher(bob, gateway.url, pushkey="k6", data={"url": gateway.url, "who": "bob"})
    set_pusher(carol, gateway.url, pushkey="k6", append=True)   # one device, two accounts
    set_pusher(bob, gateway.url, pushkey="k6-other")

    def reply(body):
        device = body["notification"]["devices"][0]
        if device["pushkey"] == "k6" and device["data"].get("who") == "bob":
            return 200, {"rejected": ["k6"]}
        return None

    gateway.reply = reply
    alice.send(room_id, "hello")
    assert wait_for(lambda: [p["pushkey"] for p in bob.req("GET", f"{V}/pushers")["pushers"]]
                    == ["k6-other"])
    assert [p["pushkey"] for p in carol.req("GET", f"{V}/pushers")["pushers"]] == ["k6"]
    wait_notes(gateway, "k6-other", 1)
    alice.send(room_id, "again")
    wait_notes(gateway, "k6-other", 2)
    assert wait_for(lambda: len(notes(gateway, "k6")) == 3)   # bob's once, carol's twice
    gevent.sleep(0.05)
    gateway.reply = None
    who = [n["devices"][0]["data"].get("who") for n in notes(gateway, "k6")]
    assert sorted(who, key=str) == [None, None, "bob"]


def test_counts_left_out_when_zero(app, gateway):
    alice, bob = user(app, "a7"), user(app, "b7")
    room_id = room_of(alice, bob)
    set_pusher(bob, gateway.url, pushkey="k7")
    failed = []

    def reply(body):
        if body["notification"]["devices"][0]["pushkey"] == "k7" and not failed:
            failed.append(1)
            return 500, {}
        return None

    gateway.reply = reply
    gateway.delay = 0.3          # the failing attempt is slow: read the room meanwhile
    try:
        eid = alice.send(room_id, "read me")
        assert wait_for(lambda: notes(gateway, "k7"))
        gateway.delay = 0.0
        bob.receipt(room_id, eid)
        retried = wait_notes(gateway, "k7", 2)[1]
    finally:
        gateway.delay = 0.0
        gateway.reply = None
    assert retried["event_id"] == eid and retried["counts"] == {}
