"""Notification and highlight counts follow the push rules and reset with read receipts and
with the user's own events; /notifications lists what the counts count."""
from store import push as push_store
from web.app import runtime_of

from tests.push.conftest import V, settle, user


def room_of(app, *names, name=None):
    """A room created by the first client, joined by the others."""
    owner = names[0]
    room_id = owner.create_room(**({"name": name} if name else {}))
    for c in names[1:]:
        owner.invite(room_id, c.user_id)
        c.join(room_id)
    return room_id


def counts(client, room_id, filter=None):
    resp = client.sync(filter=filter)
    return resp["rooms"]["join"][room_id]


def unread(client, room_id):
    return counts(client, room_id)["unread_notifications"]


def test_messages_count_and_mentions_highlight(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    assert unread(bob, room_id) == {"notification_count": 0, "highlight_count": 0}
    alice.send(room_id, "one")
    alice.send(room_id, "two")
    assert unread(bob, room_id) == {"notification_count": 2, "highlight_count": 0}
    alice.send(room_id, {"msgtype": "m.text", "body": "hey bob",
                         "m.mentions": {"user_ids": [bob.user_id]}})
    assert unread(bob, room_id) == {"notification_count": 3, "highlight_count": 1}
    assert unread(carol, room_id) == {"notification_count": 3, "highlight_count": 0}
    # the sender is never notified about their own events
    assert unread(alice, room_id) == {"notification_count": 0, "highlight_count": 0}


def test_count_appears_in_the_same_sync_as_the_event(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    since = bob.sync()["next_batch"]
    eid = alice.send(room_id, "ping")
    resp = bob.sync(since=since)  # no settle(): the barrier makes the count consistent
    room = resp["rooms"]["join"][room_id]
    assert [e["event_id"] for e in room["timeline"]["events"]] == [eid]
    assert room["unread_notifications"]["notification_count"] == 1


def test_room_mention_needs_permission(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    mention = {"msgtype": "m.text", "body": "@room", "m.mentions": {"room": True}}
    bob.send(room_id, mention)          # bob has power 0 < notifications.room 50
    assert unread(carol, room_id) == {"notification_count": 1, "highlight_count": 0}
    alice.send(room_id, mention)        # alice created the room: 100
    assert unread(carol, room_id) == {"notification_count": 2, "highlight_count": 1}


def test_read_receipt_resets_counts(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    first = alice.send(room_id, "one")
    alice.send(room_id, {"msgtype": "m.text", "body": "bob!",
                         "m.mentions": {"user_ids": [bob.user_id]}})
    last = alice.send(room_id, "three")
    assert unread(bob, room_id) == {"notification_count": 3, "highlight_count": 1}
    bob.receipt(room_id, first)
    assert unread(bob, room_id) == {"notification_count": 2, "highlight_count": 1}
    bob.receipt(room_id, last, "m.read.private")
    assert unread(bob, room_id) == {"notification_count": 0, "highlight_count": 0}
    alice.send(room_id, "four")
    assert unread(bob, room_id) == {"notification_count": 1, "highlight_count": 0}


def test_incremental_sync_reports_reset_after_receipt(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    eid = alice.send(room_id, "one")
    since = bob.sync()["next_batch"]
    bob.receipt(room_id, eid)
    room = bob.sync(since=since)["rooms"]["join"][room_id]
    assert room["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}


def test_own_message_reads_the_room(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    alice.send(room_id, "one")
    alice.send(room_id, "two")
    bob.send(room_id, "me too")
    assert unread(bob, room_id)["notification_count"] == 0


def test_one_to_one_room_rings_with_sound(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = room_of(app, alice, bob)
    alice.send(room_id, "psst")
    settle(app, room_id)
    notes = bob.req("GET", f"{V}/notifications")["notifications"]
    assert notes[0]["actions"] == ["notify", {"set_tweak": "sound", "value": "default"}]


def test_notices_edits_and_reactions_do_not_count(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    eid = alice.send(room_id, "original")
    alice.send(room_id, {"msgtype": "m.notice", "body": "bot says"})
    alice.send(room_id, {"msgtype": "m.text", "body": "* edited", "m.new_content": {
        "msgtype": "m.text", "body": "edited"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": eid}})
    alice.send(room_id, {"m.relates_to": {"rel_type": "m.annotation", "event_id": eid,
                                          "key": "+1"}}, etype="m.reaction")
    assert unread(bob, room_id)["notification_count"] == 1


def test_user_rules_change_what_counts(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    bob.req("PUT", bob.rule_path("room", room_id), {"actions": []})
    alice.send(room_id, "muted")
    assert unread(bob, room_id)["notification_count"] == 0
    bob.req("DELETE", bob.rule_path("room", room_id))
    bob.req("PUT", bob.rule_path("content", "cake"),
            {"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]})
    alice.send(room_id, "there is CAKE in the kitchen")
    alice.send(room_id, "cakes are not cake?")  # word boundary: "cake?" matches
    alice.send(room_id, "pancakes")             # no word boundary: plain message
    assert unread(bob, room_id) == {"notification_count": 3, "highlight_count": 2}
    bob.req("PUT", bob.rule_path("override", ".m.rule.master", "enabled"), {"enabled": True})
    alice.send(room_id, "cake while muted")
    assert unread(bob, room_id) == {"notification_count": 3, "highlight_count": 2}


def test_invite_notifies_the_invitee(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room()
    alice.invite(room_id, bob.user_id)
    settle(app, room_id)
    notes = bob.req("GET", f"{V}/notifications")["notifications"]
    assert notes and notes[0]["event"]["type"] == "m.room.member"
    assert notes[0]["event"]["state_key"] == bob.user_id


def test_thread_counts_are_partitioned(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    root = alice.send(room_id, "root")
    in_thread = {"msgtype": "m.text", "body": "reply",
                 "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    alice.send(room_id, in_thread)
    last_in_thread = alice.send(room_id, dict(in_thread, body="again"))
    db = runtime_of(app).db
    c = push_store.unread_counts(db, bob.user_id, room_id)
    assert c["notification_count"] == 3
    assert c["main_timeline"]["notification_count"] == 1
    assert c["unread_thread_notifications"] == {
        root: {"notification_count": 2, "highlight_count": 0}}
    # a threaded receipt reads only its thread
    bob.receipt(room_id, last_in_thread, body={"thread_id": root})
    c = push_store.unread_counts(db, bob.user_id, room_id)
    assert c["notification_count"] == 1 and c["unread_thread_notifications"] == {}
    # an unthreaded receipt reads everything before it
    alice.send(room_id, dict(in_thread, body="third"))
    bob.receipt(room_id, root)
    c = push_store.unread_counts(db, bob.user_id, room_id)
    assert c["main_timeline"]["notification_count"] == 0
    assert c["unread_thread_notifications"][root]["notification_count"] == 1
    room = counts(bob, room_id, filter={"room": {"timeline": {
        "unread_thread_notifications": True}}})
    assert room["unread_thread_notifications"] == {
        root: {"notification_count": 1, "highlight_count": 0}}


def test_notifications_endpoint(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = room_of(app, alice, bob, carol)
    ids = [alice.send(room_id, f"m{i}") for i in range(5)]
    ids.append(alice.send(room_id, {"msgtype": "m.text", "body": "hi bob",
                                    "m.mentions": {"user_ids": [bob.user_id]}}))
    bob.receipt(room_id, ids[1])
    settle(app, room_id)
    page = bob.req("GET", f"{V}/notifications", query={"limit": "4"})
    got = [n["event"]["event_id"] for n in page["notifications"]]
    assert got == ids[::-1][:4]
    first = page["notifications"][0]
    assert first["room_id"] == room_id and isinstance(first["ts"], int)
    assert {"set_tweak": "highlight"} in first["actions"] and first["read"] is False
    rest = bob.req("GET", f"{V}/notifications",
                   query={"limit": "4", "from": page["next_token"]})
    notes = rest["notifications"]
    assert [n["event"]["event_id"] for n in notes[:2]] == ids[1::-1]
    assert notes[2]["event"]["type"] == "m.room.member"  # bob's invite (.m.rule.invite_for_me)
    assert [n["read"] for n in notes] == [True, True, True]
    assert "next_token" not in rest
    hl = bob.req("GET", f"{V}/notifications", query={"only": "highlight"})
    assert [n["event"]["event_id"] for n in hl["notifications"]] == [ids[-1]]
    bob.req("GET", f"{V}/notifications", query={"from": "nope"}, status=400)
