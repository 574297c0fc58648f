"""Typing, receipts and presence across servers (server-server-api "Typing Notifications",
"Receipts", "Presence"): outbound EDUs built and routed to the servers of the room (a
recording sender), inbound EDUs reaching a local user's /sync, spoofed ones ignored."""
from __future__ import annotations

from tests.federation.edus_rooms_helpers import (OTHER, REMOTE, SERVER, V, ephemeral_of, rs,
                                                 send_message)
from tests.federation.inbound_helpers import wait_until

__all__ = ["rs"]

BOB = f"@bob:{REMOTE}"
CAROL = f"@carol:{OTHER}"


# ------------------------------------------------------------------------------ outbound

def test_typing_goes_to_every_other_server_of_the_room(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB, CAROL)
    alice.req("PUT", f"{V}/rooms/{room}/typing/{alice.user_id}",
              {"typing": True, "timeout": 10000})
    sent = rs.sender.of_type("m.typing")
    assert sorted(d for d, _ in sent) == [OTHER, REMOTE]
    assert all(c == {"room_id": room, "user_id": alice.user_id, "typing": True}
               for _, c in sent)
    # (presence EDUs of the same user may be recorded too, from the presence stream's worker)
    assert all(k == f"{room}|{alice.user_id}" for _, t, _, k in rs.sender.ephemeral
               if t == "m.typing")
    alice.req("PUT", f"{V}/rooms/{room}/typing/{alice.user_id}", {"typing": False})
    stops = [c for _, c in rs.sender.of_type("m.typing") if not c["typing"]]
    assert len(stops) == 2


def test_typing_in_a_room_without_other_servers_sends_nothing(rs):
    alice = rs.add_user("alice")
    room = alice.create_room()
    alice.req("PUT", f"{V}/rooms/{room}/typing/{alice.user_id}", {"typing": True})
    assert rs.sender.ephemeral == []


def test_typing_expiry_is_sent_as_a_stop(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB)
    rs.runtime.parts["sync"].typing.set_typing(room, alice.user_id, True, 50)
    assert wait_until(lambda: any(not c["typing"] for _, c in rs.sender.of_type("m.typing")),
                      2.0)


def test_read_receipt_sent_private_never(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB, CAROL)
    ev = send_message(alice, room)
    alice.req("POST", f"{V}/rooms/{room}/receipt/m.read.private/{ev}", {})
    rs.flush()
    assert rs.sender.of_type("m.receipt") == []
    alice.req("POST", f"{V}/rooms/{room}/receipt/m.read/{ev}", {})
    rs.flush()
    sent = rs.sender.of_type("m.receipt")
    assert sorted(d for d, _ in sent) == [OTHER, REMOTE]
    content = sent[0][1]
    entry = content[room]["m.read"][alice.user_id]
    assert entry["event_ids"] == [ev]
    assert isinstance(entry["data"]["ts"], int) and "thread_id" not in entry["data"]
    # read markers with a private receipt: still nothing private goes out
    ev2 = send_message(alice, room)
    alice.req("POST", f"{V}/rooms/{room}/read_markers", {"m.read.private": ev2})
    rs.flush()
    assert all(ev2 not in str(c) for _, c in rs.sender.of_type("m.receipt"))


def test_threaded_receipt_carries_thread_id(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB)
    root = send_message(alice, room, "root")
    alice.req("POST", f"{V}/rooms/{room}/receipt/m.read/{root}", {"thread_id": root})
    rs.flush()
    (dest, content), = rs.sender.of_type("m.receipt")
    assert dest == REMOTE
    assert content[room]["m.read"][alice.user_id]["data"]["thread_id"] == root


def test_presence_goes_to_servers_sharing_a_room(rs):
    alice = rs.add_user("alice")
    rs.room_with_remotes(alice, BOB)
    rs.add_user("zed")  # shares nothing with anyone
    alice.req("PUT", f"{V}/presence/{alice.user_id}/status",
              {"presence": "online", "status_msg": "here"})
    rs.flush()
    sent = rs.sender.of_type("m.presence")
    assert sent and {d for d, _ in sent} == {REMOTE}
    (push,) = sent[-1][1]["push"]
    assert push["user_id"] == alice.user_id and push["presence"] == "online"
    assert push["status_msg"] == "here" and push["last_active_ago"] >= 0


# ------------------------------------------------------------------------------ inbound

def _typing(user, room, typing=True):
    return {"edu_type": "m.typing", "content": {"room_id": room, "user_id": user,
                                                "typing": typing}}


def test_inbound_typing_reaches_sync_and_spoofs_are_ignored(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB, CAROL)
    first = alice.sync()
    rs.send_edus([_typing(CAROL, room),                 # another server's user: spoof
                  _typing(f"@dan:{REMOTE}", room)])     # not joined
    s = alice.sync(first["next_batch"])
    assert ephemeral_of(s, room, "m.typing") == []
    rs.send_edus([_typing(BOB, room)])
    s = alice.sync(s["next_batch"])
    (typing,) = ephemeral_of(s, room, "m.typing")
    assert typing["content"]["user_ids"] == [BOB]
    rs.send_edus([_typing(BOB, room, False)])
    s = alice.sync(s["next_batch"])
    (typing,) = ephemeral_of(s, room, "m.typing")
    assert typing["content"]["user_ids"] == []
    # inbound typing is never echoed back out
    assert rs.sender.of_type("m.typing") == []


def test_inbound_typing_wakes_a_waiting_sync(rs):
    import gevent
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB)
    first = alice.sync()
    g = gevent.spawn(alice.sync, first["next_batch"], timeout=5000)
    gevent.sleep(0.2)
    rs.send_edus([_typing(BOB, room)])
    s = g.get(timeout=3)
    assert ephemeral_of(s, room, "m.typing")[0]["content"]["user_ids"] == [BOB]


def _receipt(room, user, event_id, rtype="m.read", **data):
    return {"edu_type": "m.receipt", "content": {room: {rtype: {user: {
        "event_ids": [event_id], "data": {"ts": 1_700_000_000_123, **data}}}}}}


def test_inbound_receipt_reaches_sync(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB, CAROL)
    ev = send_message(alice, room)
    first = alice.sync()
    rs.send_edus([_receipt(room, BOB, ev), _receipt(room, BOB, ev, thread_id="main")])
    s = alice.sync(first["next_batch"])
    (rec,) = ephemeral_of(s, room, "m.receipt")
    reads = rec["content"][ev]["m.read"]
    assert reads[BOB]["ts"] == 1_700_000_000_123
    assert {r.thread_id for r in rs.runtime.parts["sync"].receipts.for_user(BOB, room)} \
        == {"", "main"}
    # nothing of a remote user goes back out
    rs.flush()
    assert rs.sender.of_type("m.receipt") == []


def test_inbound_receipt_spoofs_private_and_strangers_ignored(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB, CAROL)
    ev = send_message(alice, room)
    rs.send_edus([_receipt(room, CAROL, ev),                    # another server's user
                  _receipt(room, f"@dan:{REMOTE}", ev),         # not joined
                  _receipt(room, BOB, ev, "m.read.private"),    # never federated
                  {"edu_type": "m.receipt", "content": {room: "junk"}},
                  _receipt("!nosuch:" + SERVER, BOB, ev)])
    receipts = rs.runtime.parts["sync"].receipts
    assert receipts.for_user(CAROL, room) == []
    assert receipts.for_user(f"@dan:{REMOTE}", room) == []
    assert receipts.for_user(BOB, room) == []


def test_inbound_receipt_for_an_unknown_event_is_kept(rs):
    alice = rs.add_user("alice")
    room = rs.room_with_remotes(alice, BOB)
    rs.send_edus([_receipt(room, BOB, "$not_here_yet")])
    (r,) = rs.runtime.parts["sync"].receipts.for_user(BOB, room)
    assert r.event_id == "$not_here_yet"


def _presence(user, state="online", **extra):
    return {"edu_type": "m.presence", "content": {"push": [
        {"user_id": user, "presence": state, "last_active_ago": 5000, **extra}]}}


def test_inbound_presence_reaches_sync(rs):
    alice = rs.add_user("alice")
    rs.room_with_remotes(alice, BOB)
    first = alice.sync()
    rs.send_edus([_presence(BOB, currently_active=True, status_msg="busy")])
    s = alice.sync(first["next_batch"])
    (p,) = [e for e in s["presence"]["events"] if e["sender"] == BOB]
    assert p["content"]["presence"] == "online"
    assert p["content"]["status_msg"] == "busy"
    assert p["content"]["currently_active"] is True
    assert p["content"]["last_active_ago"] >= 5000
    got = alice.req("GET", f"{V}/presence/{BOB}/status")
    assert got["presence"] == "online"
    # the same again changes nothing (no stream churn)
    pos = rs.runtime.parts["sync"].presence.stream.current()
    rs.send_edus([_presence(BOB, currently_active=True, status_msg="busy")])
    assert rs.runtime.parts["sync"].presence.stream.current() == pos
    rs.flush()
    assert all(e["user_id"] != BOB for _, c in rs.sender.of_type("m.presence")
               for e in c["push"])  # no echo


def test_inbound_presence_spoofed_or_unshared_ignored(rs):
    alice = rs.add_user("alice")
    rs.room_with_remotes(alice, BOB, CAROL)
    rs.send_edus([_presence(CAROL),                       # another server's user
                  _presence(f"@stranger:{REMOTE}"),       # shares no room
                  _presence(BOB, "dancing")])             # not a presence state
    presence = rs.runtime.parts["sync"].presence
    assert presence.get(CAROL) is None
    assert presence.get(f"@stranger:{REMOTE}") is None
    assert presence.get(BOB) is None


def test_malformed_room_edus_do_not_fail_the_transaction(rs):
    rs.add_user("alice")
    res = rs.send_edus([{"edu_type": "m.typing", "content": {"room_id": 5}},
                        {"edu_type": "m.presence", "content": {"push": "x"}},
                        {"edu_type": "m.receipt", "content": []}])
    assert res == {"pdus": {}}


def test_destinations_follow_membership_events(rs):
    alice = rs.add_user("alice")
    zoe = rs.add_user("zoe")
    room = rs.room_with_remotes(alice, BOB)
    alice.req("PUT", f"{V}/rooms/{room}/typing/{alice.user_id}", {"typing": True})
    assert {d for d, _ in rs.sender.of_type("m.typing")} == {REMOTE}
    rs.join_remote(room, CAROL)          # not a persisted event: the cache still holds
    alice.req("PUT", f"{V}/rooms/{room}/typing/{alice.user_id}", {"typing": True})
    assert {d for d, _ in rs.sender.of_type("m.typing")} == {REMOTE}
    alice.req("POST", f"{V}/rooms/{room}/invite", {"user_id": zoe.user_id})
    rs.sender.ephemeral.clear()          # a membership event drops the room's entry
    alice.req("PUT", f"{V}/rooms/{room}/typing/{alice.user_id}", {"typing": True})
    assert {d for d, _ in rs.sender.of_type("m.typing")} == {REMOTE, OTHER}
