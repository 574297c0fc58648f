"""GET /rooms/{roomId}/messages: exactly-once pagination both ways, tokens, filters,
lazy-loaded members, event format and errors."""
import random

import pytest

from tests.rooms.conftest import user
from tests.rooms.reads_helpers import (V3, join, messages, page_all, q, stream_of, text,
                                       timeline_ids)


def _room_with(app, n):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat")
    join(bob, room_id)
    for i in range(n):
        text(alice if i % 2 else bob, room_id, f"m{i}")
    return alice, bob, room_id


@pytest.mark.parametrize("seed", range(4))
def test_backward_paging_with_interleaved_sends_is_exactly_once(app, seed):
    rnd = random.Random(seed)
    alice, bob, room_id = _room_with(app, 7)
    before = timeline_ids(alice, room_id)
    sent_during = []

    def send_some(_page):
        for _ in range(rnd.randint(0, 2)):
            sent_during.append(text(bob, room_id, "later"))

    ids, _ = page_all(alice, room_id, "b", rnd.randint(1, 4), between=send_some)
    assert len(ids) == len(set(ids))
    assert ids == list(reversed(before))          # exactly the history at the first page
    assert not set(sent_during) & set(ids)
    assert timeline_ids(alice, room_id) == before + sent_during


@pytest.mark.parametrize("seed", range(4))
def test_forward_paging_with_interleaved_sends_is_exactly_once(app, seed):
    rnd = random.Random(100 + seed)
    alice, bob, room_id = _room_with(app, 6)
    sent_during = []

    def send_some(page):
        if page < 8:
            for _ in range(rnd.randint(0, 3)):
                sent_during.append(text(alice, room_id, "during"))

    ids, _ = page_all(bob, room_id, "f", rnd.randint(1, 3), between=send_some)
    full = timeline_ids(bob, room_id)
    assert len(ids) == len(set(ids))
    assert set(ids) | set(sent_during) == set(full)
    # whatever was sent before the walk ended was seen, in order
    assert ids == full[:len(ids)]


def test_forward_and_backward_agree_and_resume_from_each_others_tokens(app):
    alice, _, room_id = _room_with(app, 9)
    fwd, _ = page_all(alice, room_id, "f", 2)
    bwd, _ = page_all(alice, room_id, "b", 3)
    assert fwd == list(reversed(bwd)) == timeline_ids(alice, room_id)
    # a backward page's end token, used forwards, gives back what came after it
    r = messages(alice, room_id, dir="b", limit=4)
    rest = messages(alice, room_id, dir="f", limit=100, **{"from": r["end"]})
    assert [e["event_id"] for e in rest["chunk"]] == list(reversed(
        [e["event_id"] for e in r["chunk"]]))


def test_start_end_tokens(app):
    alice, _, room_id = _room_with(app, 3)
    r = messages(alice, room_id, dir="b", limit=2)
    assert r["start"] and r["end"] and len(r["chunk"]) == 2
    r2 = messages(alice, room_id, dir="b", limit=2, **{"from": r["end"]})
    assert r2["start"] == r["end"]
    everything = messages(alice, room_id, dir="b", limit=1000)
    assert "end" not in everything                  # reached the start of the room
    assert everything["chunk"][-1]["type"] == "m.room.create"
    empty = messages(alice, room_id, dir="b", limit=0)
    assert empty["chunk"] == []


def test_stream_tokens_from_sync_are_accepted(app):
    alice, _, room_id = _room_with(app, 6)
    full = timeline_ids(alice, room_id)
    mid = full[5]
    pos = stream_of(app, mid)
    back = messages(alice, room_id, dir="b", limit=1000, **{"from": f"s{pos}"})
    assert [e["event_id"] for e in back["chunk"]] == list(reversed(full[:6]))
    fwd = messages(alice, room_id, dir="f", limit=1000, **{"from": f"s{pos}"})
    assert [e["event_id"] for e in fwd["chunk"]] == full[6:]
    upto = messages(alice, room_id, dir="f", limit=1000, **{"from": "s0", "to": f"s{pos}"})
    assert [e["event_id"] for e in upto["chunk"]] == full[:6]


def test_filters_types_senders_and_url(app):
    alice, bob, room_id = _room_with(app, 4)
    text(alice, room_id, "pic", url="mxc://test.local/abc")
    alice.send(room_id, {"x": 1}, etype="org.example.custom")
    all_ids = timeline_ids(alice, room_id)

    def ids(flt, limit=1000):
        got, _ = page_all(alice, room_id, "f", limit, filter=flt)
        return got

    msgs = ids({"types": ["m.room.message"]})
    assert len(msgs) == 5
    assert ids({"types": ["m.room.*"], "not_types": ["m.room.member", "m.room.power*"]}) == [
        e for e in all_ids if e not in ids({"types": ["m.room.member", "m.room.power_levels",
                                                      "org.example.custom"]})]
    assert ids({"not_types": ["*"]}) == []
    assert ids({"senders": [bob.user_id], "types": ["m.room.message"]}) == \
        ids({"not_senders": [alice.user_id], "types": ["m.room.message"]})
    assert len(ids({"types": ["m.room.message"], "senders": [bob.user_id]})) == 2
    assert len(ids({"contains_url": True})) == 1
    assert len(ids({"contains_url": False, "types": ["m.room.message"]})) == 4
    # small pages through a filter still see each match exactly once
    assert ids({"types": ["m.room.message"]}, limit=1) == msgs
    assert ids({"rooms": ["!other:test.local"]}) == []


def test_lazy_load_members(app):
    alice, bob, room_id = _room_with(app, 0)
    carol = user(app, "carol")
    join(carol, room_id)
    text(carol, room_id, "c1")
    text(bob, room_id, "b1")
    r = messages(alice, room_id, dir="b", limit=2, filter={"lazy_load_members": True})
    members = {e["state_key"]: e["content"]["membership"] for e in r["state"]}
    assert members == {carol.user_id: "join", bob.user_id: "join"}
    assert all(e["type"] == "m.room.member" for e in r["state"])
    plain = messages(alice, room_id, dir="b", limit=2)
    assert "state" not in plain


def test_event_format_redaction_prev_content_and_txn_id(app):
    alice, bob, room_id = _room_with(app, 0)
    eid = text(alice, room_id, "secret")
    alice.req("PUT", f"{V3}/rooms/{room_id}/redact/{q(eid)}/r1", {"reason": "oops"})
    alice.state(room_id, "m.room.topic", body={"topic": "one"})
    alice.state(room_id, "m.room.topic", body={"topic": "two"})
    mine = text(alice, room_id, "mine")
    chunk = messages(alice, room_id, dir="b", limit=20)["chunk"]
    by_id = {e["event_id"]: e for e in chunk}
    red = by_id[eid]
    assert red["content"] == {}
    assert red["unsigned"]["redacted_because"]["content"]["reason"] == "oops"
    topic = next(e for e in chunk if e["type"] == "m.room.topic")
    assert topic["content"] == {"topic": "two"}
    assert topic["unsigned"]["prev_content"] == {"topic": "one"}
    assert by_id[mine]["unsigned"]["transaction_id"]
    assert "age" in by_id[mine]["unsigned"]
    bobs_view = {e["event_id"]: e for e in messages(bob, room_id, dir="b", limit=20)["chunk"]}
    assert "transaction_id" not in bobs_view[mine]["unsigned"]
    # alice on another device sees no transaction_id either
    other = _second_device(app, alice)
    theirs = {e["event_id"]: e for e in messages(other, room_id, dir="b", limit=20)["chunk"]}
    assert "transaction_id" not in theirs[mine]["unsigned"]


def _second_device(app, client):
    from store.accounts import hash_token
    from tests.rooms.conftest import Client
    from web.app import runtime_of

    def _add(txn):
        txn.execute("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, ?, ?)",
                    (client.user_id, "OTHERDEV", 0))
        txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                    " VALUES (?, ?, ?, ?)", (hash_token("tok_other"), client.user_id,
                                              "OTHERDEV", 0))

    runtime_of(app).db.run("add_device", _add, write=True)
    return Client(app, client.user_id, "tok_other")


@pytest.mark.parametrize("params,code", [
    ({"dir": "x"}, "M_INVALID_PARAM"),
    ({"dir": "b", "limit": "many"}, "M_INVALID_PARAM"),
    ({"dir": "b", "limit": "-1"}, "M_INVALID_PARAM"),
    ({"dir": "b", "from": "garbage"}, "M_INVALID_PARAM"),
    ({"dir": "b", "to": "t1"}, "M_INVALID_PARAM"),
    ({"dir": "b", "filter": "{not json"}, "M_NOT_JSON"),
    ({"dir": "b", "filter": "[1]"}, "M_BAD_JSON"),
    ({"dir": "b", "filter": '{"types": "m.room.message"}'}, "M_BAD_JSON"),
    ({"dir": "b", "filter": '{"contains_url": "yes"}'}, "M_BAD_JSON"),
])
def test_bad_parameters(app, params, code):
    alice, _, room_id = _room_with(app, 1)
    assert messages(alice, room_id, status=400, **params)["errcode"] == code


def test_non_member_and_unknown_room(app):
    alice, _, room_id = _room_with(app, 1)
    private = alice.create_room()
    mallory = user(app, "mallory")
    assert messages(mallory, private, status=403, dir="b")["errcode"] == "M_FORBIDDEN"
    assert messages(mallory, "!nope:test.local", status=404, dir="b")["errcode"] == \
        "M_NOT_FOUND"
    # a public (shared) room is still not peekable without world_readable
    assert messages(mallory, room_id, status=403, dir="b")["errcode"] == "M_FORBIDDEN"
    # the limit is capped rather than refused
    assert messages(alice, room_id, dir="b", limit=100000)["chunk"]


@pytest.mark.parametrize("column,value", [("soft_failed", 1), ("rejection", "auth"),
                                          ("outlier", 1)])
def test_rejected_soft_failed_and_outlier_events_are_never_served(app, column, value):
    from web.app import runtime_of

    alice, _, room_id = _room_with(app, 2)
    bad = text(alice, room_id, "bad")
    good = text(alice, room_id, "good")
    runtime = runtime_of(app)
    runtime.db.run("mark", lambda t: t.execute(
        f"UPDATE events SET {column} = ? WHERE event_id = ?", (value, bad)), write=True)
    runtime.parts["rooms"].events._cache.pop(bad, None)
    ids = timeline_ids(alice, room_id)
    assert good in ids and bad not in ids
    back, _ = page_all(alice, room_id, "b", 1)
    assert bad not in back and good in back
    alice.req("GET", f"{V3}/rooms/{room_id}/event/{q(bad)}", status=404)
    alice.req("GET", f"{V3}/rooms/{room_id}/context/{q(bad)}", status=404)
