"""JoinFromRemote: a room created on another server becomes a room here from the send_join
answer (state before the join + auth chain): the local joiner's /sync, /messages, state
and further PDUs all work, the actor reloads it after a crash, and a re-join after leaving
goes through the PDU path."""
import itertools

import pytest

from atrium.errors import MatrixError
from protocol.events import auth_types_for_event, build_event
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from actors.room_messages import JoinFromRemote
from tests.federation.room_pdus_helpers import (
    V,
    RemoteServer,
    messages,
    receive,
    rooms,
    snapshot,
    sync_room,
    sync_timeline,
)
from tests.rooms.conftest import user
from web.app import runtime_of

REMOTE = RemoteServer("remote.test")
_SEQ = itertools.count()
ROSE = REMOTE.user("rose")


class RemoteRoom:
    """A room that lives on remote.test, built event by event as its server would."""

    def __init__(self, version):
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.events = {}
        self.state = {}
        self.head = []
        self.depth = 0
        self.room_id = None if self.rv.room_id_is_create_event_hash else \
            f"!r{next(_SEQ)}room:remote.test"
        content = {"room_version": version}
        if not self.rv.room_id_is_create_event_hash and version in [str(i) for i in range(1, 11)]:
            content["creator"] = ROSE
        self.add(ROSE, "m.room.create", content, "")
        self.add(ROSE, "m.room.member", {"membership": "join"}, ROSE)
        self.add(ROSE, "m.room.power_levels", {"users": {ROSE: 100}}, "")
        self.add(ROSE, "m.room.join_rules", {"join_rule": "public"}, "")
        self.add(ROSE, "m.room.history_visibility", {"history_visibility": "shared"}, "")
        self.add(ROSE, "m.room.name", {"name": "Over there"}, "")
        for i in range(3):
            self.add(ROSE, "m.room.message", {"msgtype": "m.text", "body": f"old {i}"})

    def build(self, sender, etype, content, state_key=None, *, server=REMOTE.name,
              key=REMOTE.key):
        types = auth_types_for_event(self.rv, etype, sender, state_key, content)
        ev = build_event(self.rv, room_id=self.room_id if etype != "m.room.create"
                         or not self.rv.room_id_is_create_event_hash else None,
                         sender=sender, type=etype, content=content, state_key=state_key,
                         prev_events=list(self.head),
                         auth_events=[self.state[k] for k in sorted(types) if k in self.state],
                         depth=self.depth + 1, origin_server_ts=1_700_000_000_000 + self.depth,
                         server_name=server, signing_key=key)
        return ev

    def add(self, sender, etype, content, state_key=None, ev=None):
        if ev is None:
                ev = self.build(sender, etype, content, state_key)
        if self.room_id is None:
            self.room_id = ev["room_id"]
        self.events[ev["event_id"]] = ev
        if "state_key" in ev:
            self.state[(ev["type"], ev["state_key"])] = ev["event_id"]
        self.head = [ev["event_id"]]
        self.depth = ev["depth"]
        return ev

    def auth_chain(self, evs):
        out, todo = {}, list(evs)
        while todo:
            ev = todo.pop()
            for a in ev["auth_events"]:
                a = a[0] if isinstance(a, list) else a
                if a not in out:
                    out[a] = self.events[a]
                    todo.append(out[a])
        return list(out.values())

    def send_join_answer(self, join):
        state = [self.events[e] for e in self.state.values()]
        return tuple(state), tuple(self.auth_chain(state + [join]))


def _local_join(app, rr, localpart):
    uid = f"@{localpart}:test.local"
    return rr.build(uid, "m.room.member", {"membership": "join"}, uid, server="test.local",
                    key=runtime_of(app).signing_key)


@pytest.mark.parametrize("version", ["10", "12"])
def test_join_from_remote_creates_a_working_room(app, version):
    alice = user(app, "alice")
    rr = RemoteRoom(version)
    join = _local_join(app, rr, "alice")
    state, chain = rr.send_join_answer(join)
    sent = rooms(app).supervisor.ask(rr.room_id, JoinFromRemote(version, join, state, chain))
    assert sent.event_id == join["event_id"]
    rr.add(None, None, None, ev=join)
    snap = snapshot(app, rr.room_id)
    assert snap["room_version"] == version
    assert snap["extremities"] == [join["event_id"]]
    assert snap["state"] == rr.state
    assert rooms(app).events.room_version(rr.room_id).identifier == version
    # the state events are outliers: known, not in the timeline
    name_id = rr.state[("m.room.name", "")]
    assert rooms(app).events.get_event(name_id).outlier
    # /sync: the room is joined, with the join in the timeline
    room = sync_room(alice, rr.room_id)
    assert [e["event_id"] for e in room["timeline"]["events"]] == [join["event_id"]]
    assert messages(alice, rr.room_id) == [join["event_id"]]
    assert alice.state(rr.room_id, "m.room.name")["name"] == "Over there"
    members = alice.req("GET", f"{V}/rooms/{rr.room_id}/joined_members")["joined"]
    assert set(members) == {ROSE, alice.user_id}
    assert rr.room_id in alice.req("GET", f"{V}/joined_rooms")["joined_rooms"]
    # from now on a normal room: remote PDUs and local sends
    _, since = sync_timeline(alice, rr.room_id)
    m = rr.add(ROSE, "m.room.message", {"msgtype": "m.text", "body": "welcome"})
    assert receive(app, rr.room_id, [m]) == {m["event_id"]: "accepted"}
    ids, _ = sync_timeline(alice, rr.room_id, since)
    assert ids == [m["event_id"]]
    reply = alice.send(rr.room_id)["event_id"]
    se = rooms(app).events.get_event(reply)
    assert se.event["prev_events"] == [m["event_id"]]
    # a restart reloads it from the store
    rooms(app).supervisor.inject_fault(rr.room_id, "crash", 1)
    alice.send(rr.room_id, status=500)
    assert snapshot(app, rr.room_id)["extremities"] == [reply]


def test_first_sync_after_a_remote_join_carries_the_state(app):
    alice = user(app, "alice")
    rr = RemoteRoom("10")
    join = _local_join(app, rr, "alice")
    state, chain = rr.send_join_answer(join)
    rooms(app).supervisor.ask(rr.room_id, JoinFromRemote("10", join, state, chain))
    room = sync_room(alice, rr.room_id)
    names = [e for e in room["state"]["events"] if e["type"] == "m.room.name"]
    assert names and names[0]["content"]["name"] == "Over there"


def test_join_from_remote_refuses_bad_answers(app):
    user(app, "alice")
    rr = RemoteRoom("10")
    join = _local_join(app, rr, "alice")
    state, chain = rr.send_join_answer(join)
    ask = rooms(app).supervisor.ask
    # no create event in the state
    no_create = tuple(e for e in state if e["type"] != "m.room.create")
    with pytest.raises(MatrixError) as e:
        ask(rr.room_id, JoinFromRemote("10", join, no_create, chain))
    assert e.value.status == 400
    # a join the state does not allow (the room is invite-only in this answer)
    rr2 = RemoteRoom("10")
    rr2.add(ROSE, "m.room.join_rules", {"join_rule": "invite"}, "")
    join2 = _local_join(app, rr2, "alice")
    state2, chain2 = rr2.send_join_answer(join2)
    with pytest.raises(MatrixError) as e:
        ask(rr2.room_id, JoinFromRemote("10", join2, state2, chain2))
    assert e.value.status == 403
    assert rooms(app).events.room_version(rr2.room_id) is None
    # a remote user's join is not ours to persist this way
    theirs = REMOTE.user("x")
    foreign = rr.build(theirs, "m.room.member", {"membership": "join"}, theirs)
    with pytest.raises(MatrixError) as e:
        ask(rr.room_id, JoinFromRemote("10", foreign, state, chain))
    assert e.value.status == 400
    # and the good answer still works afterwards
    assert ask(rr.room_id, JoinFromRemote("10", join, state, chain)).event_id == join["event_id"]


def test_rejoin_after_leaving_goes_through_the_pdu_path(app):
    alice = user(app, "alice")
    rr = RemoteRoom("10")
    join = _local_join(app, rr, "alice")
    state, chain = rr.send_join_answer(join)
    rooms(app).supervisor.ask(rr.room_id, JoinFromRemote("10", join, state, chain))
    rr.add(None, None, None, ev=join)
    alice.req("POST", f"{V}/rooms/{rr.room_id}/leave", {})
    leave_id = snapshot(app, rr.room_id)["extremities"][0]
    rr.add(None, None, None, ev=rooms(app).events.get_event(leave_id).event)
    # the room goes on without us; we hear nothing of it
    rr.add(ROSE, "m.room.topic", {"topic": "while you were away"}, "")
    gone = rr.add(ROSE, "m.room.message", {"msgtype": "m.text", "body": "unseen"})
    rejoin = _local_join(app, rr, "alice")
    assert rejoin["prev_events"] == [gone["event_id"]]
    state, chain = rr.send_join_answer(rejoin)
    sent = rooms(app).supervisor.ask(rr.room_id, JoinFromRemote("10", rejoin, state, chain))
    assert sent.event_id == rejoin["event_id"] and not sent.duplicate
    snap = snapshot(app, rr.room_id)
    assert snap["extremities"] == [rejoin["event_id"]]
    assert snap["state"][("m.room.member", alice.user_id)] == rejoin["event_id"]
    assert snap["state"][("m.room.topic", "")] == rr.state[("m.room.topic", "")]
    assert rooms(app).events.get_event(rr.state[("m.room.topic", "")]).outlier
    assert rr.room_id in alice.req("GET", f"{V}/joined_rooms")["joined_rooms"]
    again = rooms(app).supervisor.ask(rr.room_id, JoinFromRemote("10", rejoin, state, chain))
    assert again.duplicate
