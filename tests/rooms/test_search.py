"""POST /search (room_events): what is found and what is not (membership, history
visibility, redactions, encryption), keys and filters, both orders with paging exactly
once, groups, event context, include_state, bad input; and the index itself: it follows
commits, resumes after a restart and indexes history that predates it.

One app for the module; every test uses its own users, rooms and words."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from atrium.config import parse_config
from store.testing import database_config, drop_schema
from tests.apps import app_factory
from tests.federation.room_pdus_helpers import RemoteServer, receive
from store.search import run_each
from tests.rooms.conftest import user
from web.app import create_app, runtime_of

S = "/_matrix/client/v3/search"
_n = itertools.count()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("search"))
    yield next(factory)()
    for _ in factory:
        pass


def users(app, *names):
    k = next(_n)
    return [user(app, f"{n}{k}") for n in names]


def search(c, term, status=200, next_batch=None, **crit):
    body = {"search_categories": {"room_events": {"search_term": term, **crit}}}
    path = S + (f"?next_batch={next_batch}" if next_batch else "")
    out = c.req("POST", path, body, status=status)
    return out["search_categories"]["room_events"] if status == 200 else out


def found(c, term, **crit):
    return [r["result"]["event_id"] for r in search(c, term, **crit)["results"]]


def say(c, room, body):
    return c.send(room, {"msgtype": "m.text", "body": body})["event_id"]


def test_finds_messages_names_and_topics_in_the_users_rooms(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat", name="Zebra lounge")
    bob.req("POST", f"/_matrix/client/v3/join/{room}")
    m1 = say(alice, room, "the zebras are grazing")
    m2 = say(bob, room, "a zebra crossing, quickly")
    t = alice.state(room, "m.room.topic", body={
        "topic": "animals", "m.topic": {"m.text": [{"body": "All about zebra herds"}]}})
    say(alice, room, "nothing to see here")
    res = search(bob, "zebra")
    ids = [r["result"]["event_id"] for r in res["results"]]
    assert set(ids) >= {m1, m2, t["event_id"]} and len(ids) == 4   # + the name event
    assert res["count"] == 4
    first = res["results"][0]
    assert first["result"]["room_id"] == room and first["rank"] > 0
    assert "content" in first["result"] and first["context"] == {}
    assert "zebra" in res["highlights"]
    assert all(h == h.lower() for h in res["highlights"])
    # keys narrow what is searched
    assert found(bob, "zebra", keys=["content.name"]) == [
        e["event_id"] for e in [alice.req("GET", f"/_matrix/client/v3/rooms/{room}/state/"
                                                 "m.room.name?format=event")]]
    assert found(bob, "zebra", keys=["content.topic"]) == [t["event_id"]]
    # words are ANDed; "-word" excludes; "or" alternates; phrases
    assert found(bob, "zebra quickly") == [m2]
    assert set(found(bob, "zebra -quickly", keys=["content.body"])) == {m1}
    assert set(found(bob, "grazing or crossing")) == {m1, m2}
    assert found(bob, '"zebra crossing"') == [m2]
    # never in the room: nothing
    (carol,) = users(app, "carol")
    assert search(carol, "zebra") == {"results": [], "count": 0, "highlights": []}


def test_history_visibility_applies_to_every_hit(app):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="private_chat")
    alice.state(room, "m.room.history_visibility", body={"history_visibility": "joined"})
    before = say(alice, room, "walrus before the join")
    alice.req("POST", f"/_matrix/client/v3/rooms/{room}/invite", {"user_id": bob.user_id})
    bob.req("POST", f"/_matrix/client/v3/join/{room}")
    during = say(alice, room, "walrus while joined")
    bob.req("POST", f"/_matrix/client/v3/rooms/{room}/leave")
    after = say(alice, room, "walrus after the leave")
    assert set(found(alice, "walrus")) == {before, during, after}
    assert found(bob, "walrus") == [during]          # a room bob left is still searched
    # shared history: everything up to the leave, nothing after it
    room2 = alice.create_room(preset="private_chat")
    old = say(alice, room2, "narwhal history")
    alice.req("POST", f"/_matrix/client/v3/rooms/{room2}/invite", {"user_id": bob.user_id})
    bob.req("POST", f"/_matrix/client/v3/join/{room2}")
    bob.req("POST", f"/_matrix/client/v3/rooms/{room2}/leave")
    say(alice, room2, "narwhal secret")
    assert found(bob, "narwhal") == [old]
    # a world-readable room bob never joined is not searched
    room3 = alice.create_room(preset="public_chat")
    alice.state(room3, "m.room.history_visibility", body={"history_visibility": "world_readable"})
    say(alice, room3, "narwhal in public")
    assert found(bob, "narwhal") == [old]


def test_redacted_and_encrypted_events_are_not_found(app):
    alice, = users(app, "alice")
    room = alice.create_room(preset="private_chat")
    keep = say(alice, room, "ocelot stays")
    gone = say(alice, room, "ocelot leaves")
    assert set(found(alice, "ocelot")) == {keep, gone}
    alice.req("PUT", f"/_matrix/client/v3/rooms/{room}/redact/{gone}/r1", {})
    assert found(alice, "ocelot") == [keep]
    # the redaction took the text out of the index itself, not only out of the answers
    rt = runtime_of(app)
    so = rt.parts["rooms"].events.get_event(gone).stream_ordering
    col = "stream_ordering" if rt.db.engine == "postgres" else "rowid"
    assert rt.db.run("t", lambda t: t.query_value(
        f"SELECT COUNT(*) FROM event_search WHERE {col} = ?", (so,))) == 0
    so_keep = rt.parts["rooms"].events.get_event(keep).stream_ordering
    assert rt.db.run("t", lambda t: t.query_value(
        f"SELECT COUNT(*) FROM event_search WHERE {col} = ?", (so_keep,))) == 1
    alice.send(room, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x",
                      "body": "ocelot in disguise"}, etype="m.room.encrypted")
    assert found(alice, "ocelot") == [keep]


def test_filter_rooms_senders_types_and_limit(app):
    alice, bob = users(app, "alice", "bob")
    r1 = alice.create_room(preset="public_chat", name="lemur house")
    r2 = alice.create_room(preset="public_chat")
    for r in (r1, r2):
        bob.req("POST", f"/_matrix/client/v3/join/{r}")
    a1, b1 = say(alice, r1, "lemur one"), say(bob, r1, "lemur two")
    a2 = say(alice, r2, "lemur three")
    assert set(found(bob, "lemur", filter={"rooms": [r2]})) == {a2}
    assert set(found(bob, "lemur", filter={"not_rooms": [r1]})) == {a2}
    assert set(found(bob, "lemur", filter={"senders": [bob.user_id]})) == {b1}
    assert set(found(bob, "lemur", filter={"not_senders": [bob.user_id],
                                           "types": ["m.room.message"]})) == {a1, a2}
    assert len(found(bob, "lemur", filter={"types": ["m.room.*"]})) == 4   # name event too
    res = search(bob, "lemur", filter={"limit": 2}, order_by="recent")
    assert [r["result"]["event_id"] for r in res["results"]] == [a2, b1]
    assert res["count"] == 4 and "next_batch" in res


@pytest.mark.parametrize("order", ["recent", "rank"])
def test_next_batch_pages_exactly_once(app, order):
    alice, bob = users(app, "alice", "bob")
    room = alice.create_room(preset="public_chat")
    bob.req("POST", f"/_matrix/client/v3/join/{room}")
    sent = [say(alice if i % 2 else bob, room, f"tapir {'tapir ' * (i % 3)}number {i}")
            for i in range(23)]
    seen, token, pages = [], None, 0
    while True:
        res = search(bob, "tapir", next_batch=token, order_by=order, filter={"limit": 5})
        seen += [r["result"]["event_id"] for r in res["results"]]
        pages += 1
        say(alice, room, "tapir arriving meanwhile")   # never joins a paged search
        token = res.get("next_batch")
        if token is None:
            break
        assert res["count"] == 23
    assert sorted(seen) == sorted(sent) and len(seen) == len(set(seen)) and pages == 5
    if order == "recent":
        assert seen == sent[::-1]
    # a token of one order is refused for the other
    res = search(bob, "tapir", order_by=order, filter={"limit": 1})
    other = "rank" if order == "recent" else "recent"
    err = search(bob, "tapir", status=400, next_batch=res["next_batch"], order_by=other)
    assert err["errcode"] == "M_INVALID_PARAM"


def test_rank_prefers_more_matches_in_shorter_text(app):
    alice, = users(app, "alice")
    room = alice.create_room(preset="private_chat")
    weak = say(alice, room, "an okapi was seen somewhere far away in a long sentence here")
    strong = say(alice, room, "okapi okapi")
    res = search(alice, "okapi")
    assert [r["result"]["event_id"] for r in res["results"]] == [strong, weak]
    assert res["results"][0]["rank"] > res["results"][1]["rank"]


def test_groups_and_their_next_batch(app):
    alice, bob = users(app, "alice", "bob")
    r1 = alice.create_room(preset="public_chat")
    r2 = alice.create_room(preset="public_chat")
    for r in (r1, r2):
        bob.req("POST", f"/_matrix/client/v3/join/{r}")
    in_r1 = [say(alice, r1, f"gecko {i}") for i in range(3)]
    in_r2 = [say(bob, r2, f"gecko {i}") for i in range(3)]
    res = search(bob, "gecko", order_by="recent", filter={"limit": 4},
                 groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]})
    groups = res["groups"]
    assert groups["room_id"][r2]["results"] == in_r2[::-1]
    assert groups["room_id"][r2]["order"] == 1 and groups["room_id"][r1]["order"] == 2
    assert groups["sender"][alice.user_id]["results"] == [in_r1[-1]]
    # a group's token pages within the group only
    more = search(bob, "gecko", next_batch=groups["room_id"][r1]["next_batch"],
                  order_by="recent", filter={"limit": 4})
    assert [r["result"]["event_id"] for r in more["results"]] == in_r1[:2][::-1]
    assert "next_batch" not in more
    more = search(bob, "gecko", next_batch=groups["sender"][bob.user_id]["next_batch"],
                  order_by="recent")
    assert [r["result"]["event_id"] for r in more["results"]] == []


def test_event_context_with_profiles_and_include_state(app):
    alice, bob = users(app, "alice", "bob")
    bob.req("PUT", f"/_matrix/client/v3/profile/{bob.user_id}/displayname",
             {"displayname": "Bobby"})
    room = alice.create_room(preset="public_chat", name="ctx room")
    bob.req("POST", f"/_matrix/client/v3/join/{room}")
    b1 = say(alice, room, "before one")
    b2 = say(bob, room, "before two")
    hit = say(alice, room, "the iguana")
    a1 = say(bob, room, "after one")
    res = search(bob, "iguana", include_state=True,
                 event_context={"before_limit": 2, "after_limit": 3, "include_profile": True})
    (r,) = res["results"]
    assert r["result"]["event_id"] == hit
    ctx = r["context"]
    assert [e["event_id"] for e in ctx["events_before"]] == [b2, b1]
    assert [e["event_id"] for e in ctx["events_after"]] == [a1]
    assert ctx["start"] and ctx["end"]
    assert ctx["profile_info"][bob.user_id] == {"displayname": "Bobby"}
    assert alice.user_id in ctx["profile_info"]
    # the context tokens work with /messages
    page = bob.req("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"
                          f"&from={ctx['start']}")
    assert page["chunk"][0]["type"] == "m.room.member"          # bob's join, before b1
    page = bob.req("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=5"
                          f"&from={ctx['end']}")
    assert page["chunk"] == []                                   # a1 was the last event
    state = res["state"][room]
    assert {(e["type"], e.get("state_key")) for e in state} >= {("m.room.name", ""),
                                                                ("m.room.member", bob.user_id)}
    assert search(bob, "iguana", event_context={})["results"][0]["context"]["events_after"]


def test_remote_users_messages_are_found(app):
    alice, = users(app, "alice")
    remote = RemoteServer("remote.test")
    room = alice.create_room(preset="public_chat")
    join = remote.join(app, room, "dave")
    receive(app, room, [join])
    msg = remote.message(app, room, "dave", "capybara from afar")
    assert receive(app, room, [msg]) == {msg["event_id"]: "accepted"}
    assert found(alice, "capybara") == [msg["event_id"]]


@pytest.mark.parametrize("body, code", [
    ({}, "M_MISSING_PARAM"),
    ({"search_categories": []}, "M_BAD_JSON"),
    ({"search_categories": {}}, "M_MISSING_PARAM"),
    ({"search_categories": {"room_events": {}}}, "M_MISSING_PARAM"),
    ({"search_categories": {"room_events": {"search_term": 3}}}, "M_BAD_JSON"),
    ({"search_categories": {"room_events": {"search_term": "x", "order_by": "best"}}},
     "M_INVALID_PARAM"),
    ({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.url"]}}},
     "M_INVALID_PARAM"),
    ({"search_categories": {"room_events": {"search_term": "x", "keys": "content.body"}}},
     "M_BAD_JSON"),
    ({"search_categories": {"room_events": {"search_term": "x", "filter": {"limit": 0}}}},
     "M_BAD_JSON"),
    ({"search_categories": {"room_events": {"search_term": "x", "filter": []}}}, "M_BAD_JSON"),
    ({"search_categories": {"room_events": {
        "search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}}}, "M_INVALID_PARAM"),
    ({"search_categories": {"room_events": {
        "search_term": "x", "event_context": {"before_limit": -1}}}}, "M_INVALID_PARAM"),
    ({"search_categories": {"room_events": {
        "search_term": "x", "event_context": {"after_limit": "5"}}}}, "M_BAD_JSON"),
    ({"search_categories": {"room_events": {"search_term": "x", "include_state": "yes"}}},
     "M_BAD_JSON"),
])
def test_bad_requests(app, body, code):
    c, = users(app, "eve")
    assert c.req("POST", S, body, status=400)["errcode"] == code


def test_bad_tokens_auth_and_odd_terms(app):
    c, = users(app, "eve")
    body = {"search_categories": {"room_events": {"search_term": "x"}}}
    for token in ("nope", "e30", "WzEsInJhbmsiLDEsMiwzLG51bGwsbnVsbF0x"):
        assert c.req("POST", f"{S}?next_batch={token}", body,
                     status=400)["errcode"] == "M_INVALID_PARAM"
    r = app.test_client().post(S, json=body)
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_MISSING_TOKEN"
    r = c.c.post(S, data="{not json", headers=c.h)
    assert r.status_code == 400 and r.get_json()["errcode"] == "M_NOT_JSON"
    for term in ("", "   ", '"', "-", "-only -negative", "(", "AND", "*", "\x00"):
        assert search(c, term)["results"] == []


def _settings(tmp: Path, dbcfg: dict) -> dict:
    return {"server_name": "test.local", "bcrypt_rounds": 4, "database": dbcfg,
            "signing_key_path": str(tmp / "signing.key"),
            "media_store_path": str(tmp / "media"),
            "rc_message": {"per_second": 1000, "burst_count": 1000}}


def test_index_resumes_after_restart_and_builds_history(tmp_path):
    dbcfg, schema = database_config(str(tmp_path))
    try:
        first = create_app(parse_config(_settings(tmp_path, dbcfg)))
        alice = user(first, "alice")
        room = alice.create_room(preset="private_chat")
        early = say(alice, room, "quokka early")
        indexer = runtime_of(first).parts["search"].indexer
        indexer.stop()                      # down: what follows is committed, not indexed
        late = say(alice, room, "quokka late")
        runtime_of(first).shutdown()

        second = create_app(parse_config(_settings(tmp_path, dbcfg)))
        alice2 = user_client(second, alice)
        assert set(found(alice2, "quokka")) == {early, late}
        # history from before the index existed: an empty index at position 0
        runtime_of(second).db.run("reset", lambda t: (
            t.execute("DELETE FROM event_search"),
            t.execute("UPDATE search_index_position SET stream_ordering = 0")), write=True)
        runtime_of(second).shutdown()

        third = create_app(parse_config(_settings(tmp_path, dbcfg)))
        assert set(found(user_client(third, alice), "quokka")) == {early, late}
        runtime_of(third).shutdown()
    finally:
        drop_schema(schema)


def user_client(app, other):
    from tests.rooms.conftest import Client
    return Client(app, other.user_id, other.h["Authorization"].split()[1])


def test_one_failing_write_is_skipped_not_the_rest(db):
    def bump(txn, i):
        if i == 2:
            raise ValueError("poisoned")
        txn.execute("UPDATE search_index_position SET stream_ordering = stream_ordering + ?"
                    " WHERE id = 1", (i,))

    run_each(db, "test_each", bump, [1, 2, 3])
    assert db.run("pos", lambda t: t.query_value(
        "SELECT stream_ordering FROM search_index_position")) == 4
    db.close()                                  # a database that does not answer: raise
    with pytest.raises(Exception):
        run_each(db, "test_each", bump, [2])


def test_follower_catches_up_in_steps_with_progress_in_the_log(caplog):
    import logging

    from store.search import StreamFollower

    class Stream:
        def current(self):
            return 25_000

    saved = []
    calls = []

    def step(frm, upto):
        calls.append((frm, upto))
        return min(upto, frm + 1000), False

    f = StreamFollower("test index", Stream(), step, saved.append, 0, delay=0, sweep=60)
    with caplog.at_level(logging.INFO, logger="store.search"):
        f.start()
        assert f.wait_for(25_000, 10)
        f.stop()
    assert len(calls) == 25 and calls[0] == (0, 25_000) and f.position == 25_000
    assert saved == [25_000]                      # saved when done (and on stop)
    text = caplog.text
    assert "test index: catching up from stream position 0 to 25000" in text
    assert "test index: caught up at stream position 25000" in text
