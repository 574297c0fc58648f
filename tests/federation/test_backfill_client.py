"""Client-side backfill (federation/backfill.py through web/room_reads.py): b.test's user
joins a.test's room late; b.test holds only the state and the join, and its backward
/messages fetches the older history from a.test's /backfill, in the same request, with no
duplicates, within history visibility, and answers what it has when a.test is down."""
from collections import Counter

import pytest

from tests.federation.membership_helpers import F1, V, network, q

A, B = "a.test", "b.test"

# web/visibility.py compares a "shared" event's stream position with the user's last join;
# backfilled events get stream positions after the join, so they stay hidden until it
# compares topologically (depth) — a change outside this area, asked for in the report.
@pytest.fixture
def net(tmp_path):
    yield from network(tmp_path)


@pytest.fixture
def a(net):
    return net.app(A)


@pytest.fixture
def b(net):
    return net.app(B)


def make_room(a, b, visibility, n=30, version="10"):
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room(preset="public_chat", room_version=version, initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": visibility}}])
    sent = [alice.send(room, f"old {i:03d}") for i in range(n)]
    assert bob.req("POST", f"{V}/join/{q(room)}", {}, query={"via": A}) == {"room_id": room}
    return alice, bob, room, sent


def page(user, room, **query):
    return user.req("GET", f"{V}/rooms/{q(room)}/messages", query={"dir": "b", **query})


def all_pages(user, room, limit=10, max_pages=30):
    out, query, pages = [], {"limit": str(limit)}, 0
    while pages < max_pages:
        pages += 1
        j = page(user, room, **query)
        out += j["chunk"]
        if not j.get("end") or not j["chunk"]:
            break
        query["from"] = j["end"]
    return list(reversed(out)), pages


def bodies(events):
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def backfill_calls(hs):
    return [c for c in hs.client.calls if c[2].startswith(f"{F1}/backfill/")]


@pytest.mark.parametrize("version", ["10", "12"])
def test_shared_history_is_backfilled_page_by_page(a, b, version):
    alice, bob, room, sent = make_room(a, b, "shared", version=version)
    events, pages = all_pages(bob, room, limit=10)
    assert bodies(events) == [f"old {i:03d}" for i in range(30)]
    assert not [e for e, n in Counter(e["event_id"] for e in events).items() if n > 1]
    assert [e["event_id"] for e in events if e["type"] == "m.room.message"] == sent
    assert events[-1]["type"] == "m.room.member" and events[-1]["state_key"] == bob.user_id
    assert pages >= 4
    # the start of the room: the create event, held as an outlier since the join, is
    # reached by backfill and served
    assert any(e["type"] == "m.room.create" for e in events), [e["type"] for e in events][:5]
    assert backfill_calls(b), "b.test never asked a.test's /backfill"
    # the history now held: paging again asks nobody
    n = len(backfill_calls(b))
    again, _ = all_pages(bob, room, limit=10)
    assert [e["event_id"] for e in again] == [e["event_id"] for e in events]
    assert len(backfill_calls(b)) == n


def test_one_request_returns_the_backfilled_events(a, b):
    alice, bob, room, sent = make_room(a, b, "shared", n=12)
    j = page(bob, room, limit="8")
    msgs = [e["event_id"] for e in j["chunk"] if e["type"] == "m.room.message"]
    assert msgs and set(msgs) <= set(sent)
    assert "end" in j
    assert len(j["chunk"]) == 8


def test_joined_visibility_shows_no_earlier_messages(a, b):
    alice, bob, room, sent = make_room(a, b, "joined", n=15)
    after = alice.send(room, "after")   # not delivered (fake sender): only local history
    events, _ = all_pages(bob, room, limit=10)
    assert bodies(events) == []
    assert backfill_calls(b)
    assert after not in {e["event_id"] for e in events}


def test_backfilled_events_never_reach_sync(a, b):
    alice, bob, room, sent = make_room(a, b, "shared", n=5)
    first = bob.sync()
    all_pages(bob, room)
    later = bob.sync(since=first["next_batch"])
    tl = later["rooms"].get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
    assert not {e["event_id"] for e in tl} & set(sent)


def test_peer_down_answers_what_is_held(net, a, b):
    alice, bob, room, sent = make_room(a, b, "shared", n=5)
    net.down.add(A)
    j = page(bob, room, limit="50")
    assert bodies(j["chunk"]) == []
    assert any(e.get("state_key") == bob.user_id for e in j["chunk"])
    assert "end" not in j
    # given up for a while: a second page does not ask again
    n = len([c for c in b.client.calls if "/backfill/" in c[2]])
    page(bob, room, limit="50")
    assert len([c for c in b.client.calls if "/backfill/" in c[2]]) == n
    net.down.discard(A)


def test_forward_messages_and_local_rooms_never_backfill(a, b):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat")
    for i in range(3):
        alice.send(room, f"m{i}")
    events, _ = all_pages(alice, room)
    assert events[0]["type"] == "m.room.create"
    assert not backfill_calls(a)
