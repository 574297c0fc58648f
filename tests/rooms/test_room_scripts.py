"""Scripted message sequences against real RoomActors over a temporary store: each test
reads as the sequence it proves (supervision.testing.ScriptHarness driving the app's own
room supervisor). The "outbound" messages are what the actor hands to its on_persisted
hooks after commit — where /sync wake-ups and, later, federation hang."""
from atrium.errors import MatrixError

from actors.room_messages import EventSpec, GetRoomSnapshot, Send, Sent
from supervision import ActorFailed
from supervision.testing import (Ask, Crash, Do, ExpectChild, ExpectRestart,
                                 ScriptFailure, ScriptHarness)
from tests.rooms.conftest import user
from web.app import runtime_of


def _text(sender, body):
    return Send(EventSpec("m.room.message", sender, {"msgtype": "m.text", "body": body}))


def _setup(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room()
    svc = runtime_of(app).parts["rooms"]
    outbound = []
    svc.on_persisted.append(lambda rid, evs: outbound.extend(
        (rid, ev["type"], ev["content"].get("body")) for ev, _ in evs))
    return svc, room_id, alice, bob, outbound


def test_send_reply_outbound_crash_restart_and_state(app):
    svc, room, alice, bob, outbound = _setup(app)
    h = ScriptHarness(supervisor=svc.supervisor)
    acked = []

    def remember(harness):
        acked.append(harness.last_reply.event_id)

    h.play(
        Ask(room, _text(alice.user_id, "one"), expect=lambda r: isinstance(r, Sent)),
        Do(remember),
        Do(lambda _: _expect(outbound[-1] == (room, "m.room.message", "one"))),
        Ask(room, _text(bob.user_id, "intruder"), raises=MatrixError),      # not joined: 403
        Crash(room),
        Ask(room, _text(alice.user_id, "lost"), raises=ActorFailed),        # only this fails
        ExpectRestart(room, restarts=1),
        Ask(room, _text(alice.user_id, "two"), expect=lambda r: isinstance(r, Sent)),
        Do(remember),
        Ask(room, GetRoomSnapshot(), expect=lambda snap: snap["extremities"] == [acked[-1]]),
        ExpectChild(room, state="running"),
    )
    bodies = [b for r, t, b in outbound if t == "m.room.message"]
    assert bodies == ["one", "two"]          # the crashed send was never persisted or sent on
    stored = svc.events.get_events(acked)
    assert stored[acked[1]].event["prev_events"] == [acked[0]]


def test_outcomes_are_traced_in_order(app):
    svc, room, alice, bob, _ = _setup(app)
    h = ScriptHarness(supervisor=svc.supervisor)
    h.play(
        Ask(room, _text(alice.user_id, "a")),
        Ask(room, _text(bob.user_id, "b"), raises=MatrixError),
        Crash(room),
        Ask(room, _text(alice.user_id, "c"), raises=ActorFailed),
        ExpectRestart(room),
        Ask(room, _text(alice.user_id, "d")),
    )
    rows = [r.outcome for r in svc.supervisor.tracer.recent(room, limit=50)
            if r.message_type == "Send"]
    assert rows[-4:] == ["ok", "domain_error", "crash", "ok"]


def _expect(ok):
    if not ok:
        raise ScriptFailure("expectation failed")
