"""Rooms across Atrium and Synapse over TLS on loopback, both ways: each test runs once with
the room created on Atrium and joined from Synapse (``atrium_hosts``), once the mirror
(``synapse_hosts``).

Spec: server-server-api.md "Joining Rooms" (make_join / send_join, via), "Inviting to a
room" (invite v2, ``invite_room_state``), "Leaving Rooms (Rejecting Invites)"
(make_leave / send_leave), "Transactions" (PDUs, EDUs), "Backfilling and retrieving missing
events", "Typing Notifications", "Receipts"; client-server-api "Room aliases", "Event
replacements", "Event annotations and reactions", "Redactions", "Room history visibility",
"Stripped state".
"""
from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.interop.conftest import Peers, selfcheck
from tests.interop.helpers import V3, Account, q
from tests.interop.rooms_helpers import (
    SyncCollector, bodies, duplicates, event, get_state, join, logs, membership, messages,
    poll, send, send_text, shared_room, state_ids, txn,
)

pytestmark = pytest.mark.timeout(120)
HOSTS = ["atrium_hosts", "synapse_hosts"]


def _pair(peers: Peers, host: str) -> tuple[Account, Account]:
    """(a user of the hosting server, a user of the other one)."""
    a, s = peers.account(peers.atrium), peers.account(peers.synapse)
    return (a, s) if host == "atrium_hosts" else (s, a)


# --- joins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_join_by_alias(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    local = f"rooms{txn()[:10]}"
    room_id = owner.create_room(preset="public_chat", room_alias_name=local, name="by alias")
    alias = f"#{local}:{owner.server_name}"
    status, j = join(guest, alias)         # no via: the alias's server answers the directory
    assert status == 200 and j.get("room_id") == room_id, \
        f"join of {alias}: {status} {j}\n{logs(peers, room_id, alias)}"
    poll(peers, lambda: membership(owner, room_id, guest.user_id) == "join",
         f"{owner.server_name} sees the join", room_id, guest.user_id)
    assert get_state(guest, room_id, "m.room.name") == {"name": "by alias"}
    # a message each way after the join
    gs, os_ = SyncCollector(guest), SyncCollector(owner)
    gs.sync(), os_.sync()
    e1 = send_text(owner, room_id, "from the owner")
    e2 = send_text(guest, room_id, "from the guest")
    gs.until(peers, lambda s: e1 in {e["event_id"] for e in s.events(room_id)},
             "the owner's message", room_id, e1)
    os_.until(peers, lambda s: e2 in {e["event_id"] for e in s.events(room_id)},
              "the guest's message", room_id, e2)


@pytest.mark.parametrize("room_version", ["10", "12"])
@pytest.mark.parametrize("host", HOSTS)
def test_join_by_id_with_via(room_peers: Peers, host: str, room_version: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = owner.create_room(preset="public_chat", room_version=room_version,
                                topic="by id")
    status, j = join(guest, room_id, [owner.server_name])
    assert status == 200 and j.get("room_id") == room_id, \
        f"join of {room_id} via {owner.server_name}: {status} {j}\n{logs(peers, room_id)}"
    poll(peers, lambda: membership(owner, room_id, guest.user_id) == "join",
         f"{owner.server_name} sees the join", room_id, guest.user_id)
    create = get_state(guest, room_id, "m.room.create")
    assert create is not None and create.get("room_version", "1") == room_version, create
    # both servers hold the same current state: the same event for every (type, state_key)
    poll(peers, lambda: state_ids(guest, room_id) == state_ids(owner, room_id),
         "the same state on both servers", room_id)


def test_join_unknown_room_via_answers_404(room_peers: Peers) -> None:
    """A join through a server that has no such room fails with the spec's error, not 500."""
    peers = room_peers
    a = peers.account(peers.atrium)
    room_id = f"!nosuchroom{txn()[:8]}:{peers.synapse.server_name}"
    status, j = join(a, room_id, [peers.synapse.server_name])
    assert isinstance(j, dict) and j.get("errcode", "").startswith("M_"), (status, j)
    # Synapse answers 502 M_UNKNOWN ("Failed to make_join via any server"); the spec's
    # answers for a room that cannot be joined are 403 / 404
    assert status in ((403, 404, 502) if selfcheck() else (403, 404)), (status, j)


# --- messages ------------------------------------------------------------------------------


def _send_many(acct: Account, room_id: str, tag: str, n: int, errors: list[str]) -> None:
    try:
        for i in range(n):
            send_text(acct, room_id, f"{tag} {i:03d}")
    except AssertionError as e:   # Account.ok
        errors.append(str(e))


def _check_stream(peers: Peers, events: list[dict[str, Any]], tags: list[str], n: int,
                  where: str, room_id: str) -> None:
    dups = duplicates([e for e in events if e.get("type") == "m.room.message"])
    assert not dups, f"{where}: duplicated events {dups}\n{logs(peers, room_id, *dups)}"
    for tag in tags:
        got = bodies(events, tag)
        want = [f"{tag} {i:03d}" for i in range(n)]
        assert got == want, (f"{where}: {tag}'s messages {got} (want {want} exactly once, "
                             f"in order)\n{logs(peers, room_id)}")


@pytest.mark.parametrize("host", HOSTS)
def test_concurrent_messages_arrive_once_in_order(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    syncs = [SyncCollector(owner), SyncCollector(guest)]
    for s in syncs:
        s.sync()
    n = 15
    tags = [f"own-{txn()[:6]}", f"gst-{txn()[:6]}"]
    errors: list[str] = []
    threads = [threading.Thread(target=_send_many, args=(acct, room_id, tag, n, errors))
               for acct, tag in zip((owner, guest), tags)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for s in syncs:
        s.until(peers, lambda c: all(len(bodies(c.events(room_id), t)) >= n for t in tags),
                f"all {2 * n} messages", room_id)
        s.settle()
        assert room_id not in s.limited, f"{s.acct.user_id}'s /sync timeline was limited"
        _check_stream(peers, s.events(room_id), tags, n, f"/sync of {s.acct.user_id}",
                      room_id)
    histories = [messages(acct, room_id) for acct in (owner, guest)]
    for acct, hist in zip((owner, guest), histories):
        _check_stream(peers, hist, tags, n, f"/messages of {acct.user_id}", room_id)
    ids = [{e["event_id"] for e in h if e.get("type") == "m.room.message"} for h in histories]
    assert ids[0] == ids[1], (f"the servers hold different messages: only on the owner's "
                              f"{ids[0] - ids[1]}, only on the guest's {ids[1] - ids[0]}")


@pytest.mark.parametrize("host", HOSTS)
def test_edit_reaction_and_redaction_arrive_intact(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    gs, os_ = SyncCollector(guest), SyncCollector(owner)
    gs.sync(), os_.sync()
    original = send_text(owner, room_id, "typo'd mesage")
    doomed = send_text(owner, room_id, "to be redacted")
    gs.until(peers, lambda s: {original, doomed} <= {e["event_id"] for e in s.events(room_id)},
             "the two messages", room_id, original, doomed)
    edit_content = {"msgtype": "m.text", "body": "* fixed message",
                    "m.new_content": {"msgtype": "m.text", "body": "fixed message"},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": original}}
    edit = send(owner, room_id, edit_content)
    reaction_content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": original,
                                         "key": "👍"}}
    reaction = send(guest, room_id, reaction_content, "m.reaction")
    redaction = owner.ok("PUT", f"{V3}/rooms/{q(room_id)}/redact/{q(doomed)}/{txn()}",
                         {"reason": "oops"})["event_id"]

    def by_id(s: SyncCollector, eid: str) -> dict[str, Any] | None:
        return next((e for e in s.events(room_id) if e["event_id"] == eid), None)

    got_edit = gs.until(peers, lambda s: by_id(s, edit), "the edit", room_id, edit)
    assert got_edit["content"] == edit_content and got_edit["sender"] == owner.user_id
    got_reaction = os_.until(peers, lambda s: by_id(s, reaction), "the reaction", room_id,
                             reaction)
    assert got_reaction["type"] == "m.reaction" and got_reaction["content"] == reaction_content
    got_redaction = gs.until(peers, lambda s: by_id(s, redaction), "the redaction", room_id,
                             redaction)
    assert got_redaction["type"] == "m.room.redaction"
    assert (got_redaction.get("redacts") or got_redaction["content"].get("redacts")) == doomed
    assert got_redaction["content"].get("reason") == "oops"
    # the redacted message, fetched again on the other server: content gone, the redaction
    # named in unsigned.redacted_because
    status, ev = event(guest, room_id, doomed)
    assert status == 200, (status, ev)
    assert ev["content"] == {} and \
        ev.get("unsigned", {}).get("redacted_because", {}).get("event_id") == redaction, ev
    # the original on the other server, with the edit still intact and not redacted
    status, ev = event(guest, room_id, original)
    assert status == 200 and ev["content"]["body"] == "typo'd mesage", ev


# --- EDUs ----------------------------------------------------------------------------------


def _typing(s: SyncCollector, room_id: str) -> list[str] | None:
    typing = [e for e in s.ephemeral.get(room_id, []) if e.get("type") == "m.typing"]
    return typing[-1]["content"].get("user_ids", []) if typing else None


@pytest.mark.parametrize("host", HOSTS)
def test_typing_both_ways(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    for typist, watcher in ((owner, guest), (guest, owner)):
        w = SyncCollector(watcher)
        w.sync()
        typist.ok("PUT", f"{V3}/rooms/{q(room_id)}/typing/{q(typist.user_id)}",
                  {"typing": True, "timeout": 20000})
        w.until(peers, lambda s: typist.user_id in (_typing(s, room_id) or []),
                f"{typist.user_id} typing", room_id, "typing")
        typist.ok("PUT", f"{V3}/rooms/{q(room_id)}/typing/{q(typist.user_id)}",
                  {"typing": False})
        w.until(peers, lambda s: _typing(s, room_id) is not None
                and typist.user_id not in _typing(s, room_id),
                f"{typist.user_id} no longer typing", room_id, "typing")


def _receipt(s: SyncCollector, room_id: str, event_id: str, user_id: str
             ) -> dict[str, Any] | None:
    for e in s.ephemeral.get(room_id, []):
        if e.get("type") == "m.receipt":
            got = e["content"].get(event_id, {}).get("m.read", {}).get(user_id)
            if got is not None:
                return got
    return None


@pytest.mark.parametrize("host", HOSTS)
def test_receipts_both_ways(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    for writer, reader, body in ((owner, guest, {}), (guest, owner, {"thread_id": "main"})):
        w = SyncCollector(writer)
        w.sync()
        eid = send_text(writer, room_id, f"read me, {reader.user_id}")
        poll(peers, lambda: event(reader, room_id, eid)[0] == 200,
             f"{reader.server_name} has the message", room_id, eid)
        reader.ok("POST", f"{V3}/rooms/{q(room_id)}/receipt/m.read/{q(eid)}", body)
        got = w.until(peers, lambda s: _receipt(s, room_id, eid, reader.user_id),
                      f"{reader.user_id}'s read receipt", room_id, eid, "receipt")
        assert isinstance(got.get("ts"), int), got
        if body:
            assert got.get("thread_id") == "main", got


# --- membership ----------------------------------------------------------------------------


def _invite(peers: Peers, owner: Account, guest: Account) -> tuple[str, SyncCollector]:
    room_id = owner.create_room(preset="private_chat", name="Secret plans",
                                topic="stripped state")
    gs = SyncCollector(guest)
    gs.sync()
    owner.ok("POST", f"{V3}/rooms/{q(room_id)}/invite", {"user_id": guest.user_id})
    gs.until(peers, lambda s: room_id in s.invites, "the invite", room_id, guest.user_id)
    return room_id, gs


@pytest.mark.parametrize("host", HOSTS)
def test_invite_with_stripped_state_then_accept(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id, gs = _invite(peers, owner, guest)
    stripped = {(e["type"], e.get("state_key")): e
                for e in gs.invites[room_id].get("invite_state", {}).get("events", [])}
    where = f"invite_state {sorted(stripped)}\n{logs(peers, room_id)}"
    assert ("m.room.create", "") in stripped, where                 # required since v1.16
    assert stripped.get(("m.room.name", ""), {}).get("content") == {"name": "Secret plans"}, \
        where
    assert stripped.get(("m.room.join_rules", ""), {}).get("content", {}) \
        .get("join_rule") == "invite", where
    me = stripped.get(("m.room.member", guest.user_id))
    assert me and me["content"]["membership"] == "invite" and me["sender"] == owner.user_id, \
        where
    # accept
    status, j = guest.call("POST", f"{V3}/rooms/{q(room_id)}/join", {}, timeout=60)
    assert status == 200, f"accepting the invite: {status} {j}\n{logs(peers, room_id)}"
    poll(peers, lambda: membership(owner, room_id, guest.user_id) == "join",
         f"{owner.server_name} sees the accepted invite", room_id, guest.user_id)
    gs.until(peers, lambda s: room_id in s.joined, "the room under join", room_id)
    assert (get_state(guest, room_id, "m.room.topic") or {}).get("topic") == "stripped state"


@pytest.mark.parametrize("host", HOSTS)
def test_invite_rejected(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id, gs = _invite(peers, owner, guest)
    status, j = guest.call("POST", f"{V3}/rooms/{q(room_id)}/leave", {}, timeout=60)
    assert status == 200, f"rejecting the invite: {status} {j}\n{logs(peers, room_id)}"
    poll(peers, lambda: membership(owner, room_id, guest.user_id) == "leave",
         f"{owner.server_name} sees the rejection", room_id, guest.user_id)
    gs.until(peers, lambda s: room_id not in s.invites and room_id in s.left,
             "the room under leave", room_id)


@pytest.mark.parametrize("host", HOSTS)
def test_kick(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    gs = SyncCollector(guest)
    gs.sync()
    owner.ok("POST", f"{V3}/rooms/{q(room_id)}/kick",
             {"user_id": guest.user_id, "reason": "out"})

    def kicked(s: SyncCollector) -> dict[str, Any] | None:
        return next((e for e in s.events(room_id, "m.room.member")
                     if e["state_key"] == guest.user_id
                     and e["content"].get("membership") == "leave"), None)

    ev = gs.until(peers, kicked, "the kick", room_id, guest.user_id)
    assert ev["sender"] == owner.user_id and ev["content"].get("reason") == "out", ev
    assert room_id in gs.left, "the room is not under leave in the kicked user's /sync"
    status, j = guest.call("PUT", f"{V3}/rooms/{q(room_id)}/send/m.room.message/{txn()}",
                           {"msgtype": "m.text", "body": "still here?"})
    assert status == 403 and j.get("errcode") == "M_FORBIDDEN", (status, j)


@pytest.mark.parametrize("host", HOSTS)
def test_ban_refuses_rejoin(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    gs = SyncCollector(guest)
    gs.sync()
    owner.ok("POST", f"{V3}/rooms/{q(room_id)}/ban", {"user_id": guest.user_id,
                                                      "reason": "spam"})

    def banned(s: SyncCollector) -> dict[str, Any] | None:
        return next((e for e in s.events(room_id, "m.room.member")
                     if e["state_key"] == guest.user_id
                     and e["content"].get("membership") == "ban"), None)

    ev = gs.until(peers, banned, "the ban", room_id, guest.user_id)
    assert ev["sender"] == owner.user_id and ev["content"].get("reason") == "spam", ev
    assert room_id in gs.left, "the room is not under leave in the banned user's /sync"
    status, j = join(guest, room_id, [owner.server_name])
    assert status == 403 and isinstance(j, dict) and j.get("errcode") == "M_FORBIDDEN", \
        f"a banned user's re-join answered {status} {j}\n{logs(peers, room_id)}"
    assert membership(owner, room_id, guest.user_id) == "ban"


@pytest.mark.parametrize("host", HOSTS)
def test_leave(room_peers: Peers, host: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = shared_room(peers, owner, guest)
    gs = SyncCollector(guest)
    gs.sync()
    guest.ok("POST", f"{V3}/rooms/{q(room_id)}/leave", {})
    poll(peers, lambda: membership(owner, room_id, guest.user_id) == "leave",
         f"{owner.server_name} sees the leave", room_id, guest.user_id)
    gs.until(peers, lambda s: room_id in s.left and room_id not in s.joined,
             "the room under leave", room_id)
    # the guest's server is out of the room: what the owner writes next never reaches it
    after = send_text(owner, room_id, "after the leave")
    status, j = event(guest, room_id, after)
    assert status in (403, 404), (status, j)


# --- history: a late joiner backfills what its visibility allows ---------------------------


@pytest.mark.parametrize("visibility", ["shared", "joined"])
@pytest.mark.parametrize("host", HOSTS)
def test_late_joiner_backfills_what_visibility_allows(room_peers: Peers, host: str,
                                                      visibility: str) -> None:
    peers = room_peers
    owner, guest = _pair(peers, host)
    room_id = owner.create_room(preset="public_chat", initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": visibility}}])
    tag = f"hist-{txn()[:6]}"
    before = [f"{tag} {i:03d}" for i in range(30)]
    for body in before:
        send_text(owner, room_id, body)
    # the guest's server has never been in the room: its history comes only by backfill
    status, j = join(guest, room_id, [owner.server_name])
    assert status == 200, f"join: {status} {j}\n{logs(peers, room_id)}"
    poll(peers, lambda: membership(owner, room_id, guest.user_id) == "join",
         f"{owner.server_name} sees the join", room_id)
    send_text(owner, room_id, f"{tag} after")
    poll(peers, lambda: f"{tag} after" in bodies(messages(guest, room_id), tag),
         "the message after the join in the guest's /messages", room_id)
    hist = messages(guest, room_id)
    seen = bodies(hist, tag)
    want = (before if visibility == "shared" else []) + [f"{tag} after"]
    assert seen == want, (f"history_visibility={visibility}: the late joiner's /messages "
                          f"shows {seen}, want {want}\n{logs(peers, room_id, 'backfill')}")
    assert not duplicates(hist), duplicates(hist)
    if visibility == "shared":
        types = [e["type"] for e in hist]
        assert types and types[0] == "m.room.create", \
            f"pagination did not reach the room's start: {types[:5]}"
