"""``/timestamp_to_event`` across servers (client-server-api "Room history", server-server-api
``GET /timestamp_to_event``): a late joiner's server holds nothing from before its join, so
it asks the room's other server, fetches the event it names (backfill from that event), and
the client can read it and its context.  Run with the room on each server in turn."""
from __future__ import annotations

import time

import pytest

from tests.interop.conftest import Peers
from tests.interop.helpers import V3, q
from tests.interop.rooms_helpers import join, logs, membership, poll, put_state, send_text

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("host", ["atrium_hosts", "synapse_hosts"])
def test_late_joiner_finds_an_event_from_before_its_join(room_peers: Peers, host: str) -> None:
    peers = room_peers
    a, s = peers.account(peers.atrium), peers.account(peers.synapse)
    owner, late = (a, s) if host == "atrium_hosts" else (s, a)
    room_id = owner.create_room(preset="public_chat")
    put_state(owner, room_id, "m.room.history_visibility", {"history_visibility": "shared"})
    early = send_text(owner, room_id, "long before the join")
    time.sleep(0.05)
    t_mid = int(time.time() * 1000)
    time.sleep(0.05)
    later = send_text(owner, room_id, "still before the join")
    for i in range(5):
        send_text(owner, room_id, f"filler {i}")
    status, j = join(late, room_id, [owner.server_name])
    assert status == 200, (status, j)
    poll(peers, lambda: membership(owner, room_id, late.user_id) == "join",
         "the join", room_id)

    path = f"/_matrix/client/v1/rooms/{q(room_id)}/timestamp_to_event"
    got_b = late.ok("GET", path, query={"ts": str(t_mid), "dir": "b"}, timeout=60)
    assert got_b["event_id"] == early, f"{got_b} (want {early})\n{logs(peers, room_id, early)}"
    got_f = late.ok("GET", path, query={"ts": str(t_mid), "dir": "f"}, timeout=60)
    assert got_f["event_id"] == later, f"{got_f} (want {later})\n{logs(peers, room_id, later)}"
    # the late joiner's server now holds the event: the client reads it and its context
    ctx = late.ok("GET", f"{V3}/rooms/{q(room_id)}/context/{q(early)}",
                  query={"limit": "2"}, timeout=60)
    assert ctx["event"]["event_id"] == early
    assert ctx["event"]["content"]["body"] == "long before the join"
