"""What a deactivation reaches beyond the account.  Erased users' events (deactivation with
``erase``, web/visibility.py): a user who was not joined to the room at such an event — a
later joiner, a peeker of a world-readable room, a guest — gets it pruned as a redaction
prunes it, on every read path; those who were joined see it whole; events of other senders
never change.  Over federation an erased sender's events go pruned to every server
(store/room_federation_reads.py ``for_server``).  And invites from rooms on other servers
are rejected through those servers (web/synapse_admin_users.py ``Parter``)."""
from __future__ import annotations

import logging

from urllib.parse import quote

import pytest

from store.admin_users import AdminUserStore
from tests.web.conftest import auth_headers, password_auth, register_via_dummy
from tests.web.test_synapse_admin import _register
from web.app import runtime_of

A1, A2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
C, C1 = "/_matrix/client/v3", "/_matrix/client/v1"
SECRET = {"msgtype": "m.text", "body": "alice's secret words"}
HELLO = {"msgtype": "m.text", "body": "bob says hello"}
LIMIT50 = '{"room": {"timeline": {"limit": 50}}}'


@pytest.fixture
def admin(client):
    return auth_headers(_register(client, "root", admin=True).json["access_token"])


def _user(client, local: str) -> dict:
    r = register_via_dummy(client, local)
    assert r.status_code == 200, r.json
    return dict(r.json, headers=auth_headers(r.json["access_token"]))


def _ok(r):
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def _room(client, user, **body) -> str:
    return _ok(client.post(f"{C}/createRoom", headers=user["headers"], json=body))["room_id"]


def _join(client, user, room):
    _ok(client.post(f"{C}/join/{room}", headers=user["headers"], json={}))


_txn = iter(range(10**6))


def _send(client, user, room, content, etype="m.room.message") -> str:
    return _ok(client.put(f"{C}/rooms/{room}/send/{etype}/t{next(_txn)}",
                          headers=user["headers"], json=content))["event_id"]


def _erase(client, admin, user):
    _ok(client.post(f"{A1}/deactivate/{user['user_id']}", headers=admin, json={"erase": True}))


def _by_id(events) -> dict:
    return {e["event_id"]: e for e in events}


def _messages(client, headers, room) -> dict:
    return _by_id(_ok(client.get(f"{C}/rooms/{room}/messages?dir=b&limit=50",
                                 headers=headers))["chunk"])


def _pruned(ev: dict, sender: str, etype: str = "m.room.message") -> bool:
    return (ev["content"] == {} and ev["sender"] == sender and ev["type"] == etype
            and "prev_content" not in ev.get("unsigned", {})
            and "redacted_because" not in ev.get("unsigned", {}))


def test_later_joiners_get_an_erased_senders_events_pruned_everywhere(client, admin, app):
    alice, bob, carol = (_user(client, n) for n in ("alice", "bob", "carol"))
    room = _room(client, alice, preset="public_chat")     # history_visibility: shared
    _join(client, bob, room)
    secret = _send(client, alice, room, SECRET)
    topic = _ok(client.put(f"{C}/rooms/{room}/state/m.room.topic", headers=alice["headers"],
                           json={"topic": "alice's topic"}))["event_id"]
    reply = _send(client, bob, room, {"msgtype": "m.text", "body": "bob's reply", "m.relates_to":
                                      {"rel_type": "m.thread", "event_id": secret}})
    hello = _send(client, bob, room, HELLO)
    _erase(client, admin, alice)
    _join(client, carol, room)
    a = alice["user_id"]

    for who, whole in ((bob, True), (carol, False)):
        h = who["headers"]
        # /messages
        seen = _messages(client, h, room)
        if whole:
            assert seen[secret]["content"] == SECRET
            assert seen[topic]["content"] == {"topic": "alice's topic"}
        else:
            assert _pruned(seen[secret], a)
            assert _pruned(seen[topic], a, "m.room.topic")
            assert seen[topic]["state_key"] == ""
        assert seen[hello]["content"] == HELLO and seen[reply]["content"]["body"] == "bob's reply"
        # /event, and the legacy /events/{eventId}
        for path in (f"{C}/rooms/{room}/event/{secret}", f"{C}/events/{secret}"):
            ev = _ok(client.get(path, headers=h))
            assert ev["content"] == SECRET if whole else _pruned(ev, a), path
        # /context: the event itself and the events around it
        ctx = _ok(client.get(f"{C}/rooms/{room}/context/{secret}?limit=10", headers=h))
        assert (ctx["event"]["content"] == SECRET) if whole else _pruned(ctx["event"], a)
        around = _by_id(ctx["events_before"] + ctx["events_after"])
        assert (around[topic]["content"] != {}) is whole
        assert around[hello]["content"] == HELLO
        ctx = _ok(client.get(f"{C}/rooms/{room}/context/{hello}?limit=10", headers=h))
        assert (_by_id(ctx["events_before"])[secret]["content"] == SECRET) is whole
        # /sync (initial, a timeline reaching back past carol's join)
        sync = _ok(client.get(f"{C}/sync?timeline_limit=50&filter={quote(LIMIT50)}",
                              headers=h))
        tl = _by_id(sync["rooms"]["join"][room]["timeline"]["events"])
        assert (tl[secret]["content"] == SECRET) if whole else _pruned(tl[secret], a)
        assert tl[hello]["content"] == HELLO
        # /threads: the root; its bundled latest reply is bob's, whole
        roots = _ok(client.get(f"{C1}/rooms/{room}/threads", headers=h))["chunk"]
        assert [r["event_id"] for r in roots] == [secret]
        assert (roots[0]["content"] == SECRET) if whole else _pruned(roots[0], a)
        latest = roots[0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]
        assert latest["event_id"] == reply and latest["content"]["body"] == "bob's reply"
        # /relations of the root still list the reply
        rel = _ok(client.get(f"{C1}/rooms/{room}/relations/{secret}", headers=h))["chunk"]
        assert [e["event_id"] for e in rel] == [reply]
        # /rooms/{roomId}/initialSync
        init = _ok(client.get(f"{C}/rooms/{room}/initialSync?limit=50", headers=h))
        got = _by_id(init["messages"]["chunk"])
        assert (got[secret]["content"] == SECRET) if whole else _pruned(got[secret], a)
        # /search: a word of the erased content finds nothing for carol
        res = _ok(client.post(f"{C}/search", headers=h, json={"search_categories": {
            "room_events": {"search_term": "secret"}}}))["search_categories"]["room_events"]
        assert [r["result"]["event_id"] for r in res["results"]] == ([secret] if whole else [])
        res = _ok(client.post(f"{C}/search", headers=h, json={"search_categories": {
            "room_events": {"search_term": "hello"}}}))["search_categories"]["room_events"]
        assert [r["result"]["event_id"] for r in res["results"]] == [hello]

    # reactivation lifts the erasure: carol sees the text again
    r = client.put(f"{A2}/users/{a}", headers=admin, json={"deactivated": False,
                                                          "password": "back"})
    assert r.status_code == 200 and r.json["erased"] is False
    assert _messages(client, carol["headers"], room)[secret]["content"] == SECRET


def test_peekers_and_guests_of_a_world_readable_room(make_app):
    client = make_app(allow_guest_access=True).test_client()
    admin = auth_headers(_register(client, "root", admin=True).json["access_token"])
    alice, bob, dave = (_user(client, n) for n in ("alice", "bob", "dave"))
    room = _room(client, alice, preset="public_chat", initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": "world_readable"}}])
    _join(client, bob, room)
    since = _ok(client.get(f"{C}/events?room_id={room}&timeout=0",
                           headers=dave["headers"]))["end"]      # dave peeks (legacy)
    secret = _send(client, alice, room, SECRET)
    hello = _send(client, bob, room, HELLO)
    before = _messages(client, dave["headers"], room)
    assert before[secret]["content"] == SECRET          # not erased yet: whole to peekers
    _erase(client, admin, alice)
    guest = _ok(client.post(f"{C}/register?kind=guest", json={}))
    for h in (dave["headers"], auth_headers(guest["access_token"])):
        seen = _messages(client, h, room)
        assert _pruned(seen[secret], alice["user_id"])
        assert seen[hello]["content"] == HELLO
        assert _pruned(_ok(client.get(f"{C}/rooms/{room}/event/{secret}", headers=h)),
                       alice["user_id"])
    # the legacy /events peek of the room
    got = _by_id(_ok(client.get(f"{C}/events?room_id={room}&timeout=0&from={since}",
                                headers=dave["headers"]))["chunk"])
    assert _pruned(got[secret], alice["user_id"]) and got[hello]["content"] == HELLO
    # bob, joined at the time, still reads it
    assert _messages(client, bob["headers"], room)[secret]["content"] == SECRET


def test_nothing_changes_without_erased_senders(client, admin, app):
    alice, bob, carol = (_user(client, n) for n in ("alice", "bob", "carol"))
    room = _room(client, bob, preset="public_chat")
    hello = _send(client, bob, room, HELLO)
    _join(client, carol, room)
    first = _messages(client, carol["headers"], room)
    assert first[hello]["content"] == HELLO
    elsewhere = _room(client, alice)
    _send(client, alice, elsewhere, SECRET)
    _erase(client, admin, alice)            # erased, but never sent anything here
    assert runtime_of(app).parts["user_policy"].erased == {alice["user_id"]}
    again = _messages(client, carol["headers"], room)
    strip = lambda evs: {k: {f: v for f, v in e.items() if f != "unsigned"}  # noqa: E731
                         for k, e in evs.items()}
    assert strip(again) == strip(first)
    # a plain deactivation (no erase) prunes nothing either
    dan = _user(client, "dan")
    _join(client, dan, room)
    said = _send(client, dan, room, {"msgtype": "m.text", "body": "dan was here"})
    _ok(client.post(f"{A1}/deactivate/{dan['user_id']}", headers=admin, json={}))
    eve = _user(client, "eve")
    _join(client, eve, room)
    assert _messages(client, eve["headers"], room)[said]["content"]["body"] == "dan was here"


def test_a_user_erasing_their_own_account_is_erased(client, app):
    frank = _user(client, "frank")
    url = "/_matrix/client/v3/account/deactivate"
    r = client.post(url, headers=frank["headers"], json={})
    r = client.post(url, headers=frank["headers"], json={
        "auth": password_auth(frank["user_id"], "pw", r.json["session"]), "erase": True})
    assert r.status_code == 200, r.json
    assert runtime_of(app).parts["user_policy"].erased == {frank["user_id"]}


def test_the_erased_set_is_loaded_at_start(client, admin, app):
    alice = _user(client, "alice")
    _erase(client, admin, alice)
    rt = runtime_of(app)
    policy = rt.parts["user_policy"]
    policy.erased.clear()                   # what a fresh process holds before loading
    store = AdminUserStore(rt.db, rt.parts["accounts"].tokens)
    assert store.policy.erased == {alice["user_id"]}
    assert store.policy.erased is policy.erased   # the one set the read paths consult


# ---------------------------------------------------------------------------- federation

@pytest.fixture
def net(tmp_path):
    from tests.federation.membership_helpers import network

    yield from network(tmp_path)


def test_other_servers_get_an_erased_senders_events_pruned(net):
    from tests.federation.membership_helpers import F1, q

    a = net.app("a.test")
    net.remote("remote.test")
    alice, bob, root = a.user("alice"), a.user("bob"), a.user("root")
    a.db.run("admin", lambda t: t.execute("UPDATE users SET admin = 1 WHERE name = ?",
                                          (root.user_id,)), write=True)
    room = alice.create_room(preset="public_chat", initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": "world_readable"}}])
    bob.req("POST", f"{C}/join/{q(room)}", {})
    secret = alice.send(room, "alice's secret words")
    hello = bob.send(room, "bob says hello")

    def served(path, query=None):
        r = a.fed_req("GET", path, origin="remote.test", query=query)
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()["pdus"]

    assert served(f"{F1}/event/{q(secret)}")[0]["content"]["body"] == "alice's secret words"
    root.req("POST", f"{A1}/deactivate/{q(alice.user_id)}", {"erase": True})
    pdu = served(f"{F1}/event/{q(secret)}")[0]
    assert pdu["content"] == {} and pdu["sender"] == alice.user_id
    rv = a.rooms.room_version(room)
    a.fed.keyring.verify_event(pdu, rv)      # the pruned form still carries valid signatures
    back = {p["content"].get("body"): p["sender"] for p in
            served(f"{F1}/backfill/{q(room)}", {"v": hello, "limit": "20"})}
    assert back["bob says hello"] == bob.user_id
    assert "alice's secret words" not in back


def test_deactivation_rejects_invites_from_other_servers(net, caplog):
    from tests.federation.membership_helpers import q
    from tests.federation.test_membership_invite import RemoteRoom, leave_handlers, put_invite

    caplog.set_level(logging.INFO, logger="web")
    a = net.app("a.test")
    remote, gone = net.remote("remote.test"), net.remote("gone.test")
    alice, root = a.user("alice"), a.user("root")
    a.db.run("admin", lambda t: t.execute("UPDATE users SET admin = 1 WHERE name = ?",
                                          (root.user_id,)), write=True)
    local = root.create_room(preset="public_chat")
    alice.req("POST", f"{C}/join/{q(local)}", {})
    answering, unreachable = RemoteRoom(remote), RemoteRoom(gone, room_id="!g:gone.test")
    for rr in (answering, unreachable):
        r = put_invite(a, rr, rr.invite(alice.user_id), origin=rr.remote.name)
        assert r.status_code == 200, r.get_data(as_text=True)
    seen: list = []
    leave_handlers(remote, answering, seen)
    net.down.add("gone.test")
    root.req("POST", f"{A1}/deactivate/{q(alice.user_id)}", {"erase": True})
    # the answering server got alice's signed leave; the other is rejected here only
    assert [(o, b["content"]["membership"], b["state_key"]) for o, _, b in seen] == [
        ("a.test", "leave", alice.user_id)]
    invites = a.rooms.remote_invites
    for rr in (answering, unreachable):
        assert invites.latest_in(alice.user_id, rr.room_id).membership == "leave"
    assert a.member(local, alice.user_id) == "leave"
    assert a.runtime.parts["admin_users"].pending_parting() == []
    assert any("rejected the invite of " + answering.room_id in m for m in caplog.messages)
    # a resumed parting (the next start) sends nothing again
    a.runtime.parts["parter"].part(alice.user_id)
    assert len(seen) == 1
