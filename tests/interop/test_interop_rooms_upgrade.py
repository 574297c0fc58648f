"""Room upgrades with members on both servers (client-server-api "Room Upgrades",
server-server-api "Joining Rooms"): the upgrading server sends the tombstone into the old
room and creates the new one with ``predecessor``; the other server's member sees the
tombstone, joins the replacement through the tombstone sender's server, and both talk there.
Run once with the room on Atrium and once on Synapse.
"""
from __future__ import annotations

import pytest

from tests.interop.conftest import Peers
from tests.interop.helpers import V3, q
from tests.interop.rooms_helpers import (
    SyncCollector, get_state, join, logs, membership, poll, send_text, shared_room,
)

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("host", ["atrium_hosts", "synapse_hosts"])
def test_upgrade_with_a_remote_member(room_peers: Peers, host: str) -> None:
    peers = room_peers
    a, s = peers.account(peers.atrium), peers.account(peers.synapse)
    owner, other = (a, s) if host == "atrium_hosts" else (s, a)
    old = shared_room(peers, owner, other, room_version="10", name="before the upgrade",
                      topic="carried over")
    send_text(owner, old, "in the old room")

    new = owner.ok("POST", f"{V3}/rooms/{q(old)}/upgrade", {"new_version": "11"},
                   timeout=60)["replacement_room"]
    assert new != old
    # the other server sees the tombstone pointing at the replacement
    tomb = poll(peers, lambda: get_state(other, old, "m.room.tombstone"),
                "the tombstone on the other server", old, new)
    assert tomb.get("replacement_room") == new, tomb
    # it joins the replacement through the upgrading server, as clients do
    status, j = join(other, new, [owner.server_name])
    assert status == 200 and j.get("room_id") == new, \
        f"join of the replacement {new}: {status} {j}\n{logs(peers, old, new)}"
    poll(peers, lambda: membership(owner, new, other.user_id) == "join",
         "the upgrading server sees the join of the replacement", new, other.user_id)
    create = get_state(other, new, "m.room.create")
    assert create is not None and create.get("room_version") == "11", create
    assert create.get("predecessor", {}).get("room_id") == old, create
    # the state that an upgrade carries over arrived with the join
    assert get_state(other, new, "m.room.name") == {"name": "before the upgrade"}
    assert (get_state(other, new, "m.room.topic", "") or {}).get("topic") == "carried over"
    # a message each way in the new room
    so, sx = SyncCollector(owner), SyncCollector(other)
    so.sync(), sx.sync()
    e1 = send_text(owner, new, "new room, from the owner")
    e2 = send_text(other, new, "new room, from the other")
    sx.until(peers, lambda c: e1 in {e["event_id"] for e in c.events(new)},
             "the owner's message in the replacement", new, e1)
    so.until(peers, lambda c: e2 in {e["event_id"] for e in c.events(new)},
             "the other's message in the replacement", new, e2)
    # the old room refuses ordinary messages from non-admins only where power levels say;
    # both servers agree the old room has been replaced
    assert get_state(owner, old, "m.room.tombstone").get("replacement_room") == new
