"""Presence across servers over time (federation/presence_timers.py): local users' presence
is sent again every keep-alive interval while they are not offline, and a remote user whose
server stays silent for the timeout becomes offline here (seen in /sync); any update from
their server, even one that changes nothing, restarts the clock."""
from __future__ import annotations

from federation.presence_timers import PresenceTimers
from tests.federation.edus_rooms_helpers import REMOTE, V, rs  # noqa: F401 - fixture

BOB = f"@bob:{REMOTE}"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _push(user, state="online"):
    return {"edu_type": "m.presence", "content": {"push": [
        {"user_id": user, "presence": state, "last_active_ago": 1000}]}}


def _timers(rs, clock):
    sync = rs.runtime.parts["sync"]
    assert "presence_timers" in rs.fed.extras   # the wiring starts one
    return PresenceTimers(rs.fed.server_name, sync.presence, rs.fed.edus.room_edus,
                          rs.edus_out, sync.notifier, clock=clock, ping_interval=100,
                          remote_timeout=300)


def test_silent_remote_user_times_out_to_offline(rs):
    alice = rs.add_user("alice")
    rs.room_with_remotes(alice, BOB)
    clock = Clock()
    rs.fed.edus.room_edus.monotonic = clock
    timers = _timers(rs, clock)
    rs.send_edus([_push(BOB)])
    presence = rs.runtime.parts["sync"].presence
    assert presence.get(BOB).state == "online"
    first = alice.sync()
    clock.t += 299
    assert timers.tick() == (0, 0)
    # an update that changes nothing still counts as hearing from them
    rs.send_edus([_push(BOB)])
    clock.t += 299
    assert timers.tick()[1] == 0 and presence.get(BOB).state == "online"
    clock.t += 2
    assert timers.tick()[1] == 1
    assert presence.get(BOB).state == "offline"
    s = alice.sync(first["next_batch"])
    (p,) = [e for e in s["presence"]["events"] if e["sender"] == BOB]
    assert p["content"]["presence"] == "offline"
    # offline stays offline: nothing more to do
    clock.t += 1000
    assert timers.tick()[1] == 0


def test_after_a_restart_remote_users_get_a_whole_timeout(rs):
    alice = rs.add_user("alice")
    rs.room_with_remotes(alice, BOB)
    rs.send_edus([_push(BOB, "unavailable")])
    clock = Clock()
    timers = _timers(rs, clock)
    rs.fed.edus.room_edus.forget(BOB)          # as after a restart: nothing heard yet
    clock.t += 299
    assert timers.tick()[1] == 0
    clock.t += 2
    assert timers.tick()[1] == 1
    assert rs.runtime.parts["sync"].presence.get(BOB).state == "offline"


def test_local_presence_is_sent_again_while_not_offline(rs):
    alice = rs.add_user("alice")
    rs.room_with_remotes(alice, BOB)
    alice.req("PUT", f"{V}/presence/{alice.user_id}/status", {"presence": "online"})
    rs.flush()
    clock = Clock()
    timers = _timers(rs, clock)
    before = len(rs.sender.of_type("m.presence"))
    assert timers.tick() == (0, 0)           # first seen: the change itself went out
    clock.t += 99
    assert timers.tick() == (0, 0)
    clock.t += 2
    assert timers.tick() == (1, 0)
    sent = rs.sender.of_type("m.presence")[before:]
    assert [d for d, _ in sent] == [REMOTE]
    assert sent[0][1]["push"][0]["user_id"] == alice.user_id
    assert sent[0][1]["push"][0]["presence"] == "online"
    clock.t += 101
    assert timers.tick() == (1, 0)
    # offline: no more keep-alives
    alice.req("PUT", f"{V}/presence/{alice.user_id}/status", {"presence": "offline"})
    rs.flush()
    clock.t += 500
    assert timers.tick() == (0, 0)
