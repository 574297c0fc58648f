"""Spaces across Atrium and Synapse (client-server-api "Spaces", server-server-api "Spaces"):
each server's client ``/hierarchy`` summarises child rooms it is not in from the other
server's ``/_matrix/federation/v1/hierarchy``.  Run with the space on each server in turn:
the space's host holds the space and a public child room; the other server's user joins the
space only, so its server must ask the host about the child."""
from __future__ import annotations

import time

import pytest

from tests.interop.conftest import Peers
from tests.interop.helpers import q
from tests.interop.rooms_helpers import logs, put_state, shared_room

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("host", ["atrium_hosts", "synapse_hosts"])
def test_hierarchy_of_a_space_with_a_child_on_the_other_server(room_peers: Peers,
                                                               host: str) -> None:
    peers = room_peers
    a, s = peers.account(peers.atrium), peers.account(peers.synapse)
    owner, other = (a, s) if host == "atrium_hosts" else (s, a)
    space = shared_room(peers, owner, other, name="A space",
                        creation_content={"type": "m.space"})
    child = owner.create_room(preset="public_chat", name="The child", topic="only on the host")
    secret = owner.create_room(preset="private_chat", name="Not for others")
    put_state(owner, space, "m.space.child", {"via": [owner.server_name], "order": "1"}, child)
    put_state(owner, space, "m.space.child", {"via": [owner.server_name], "order": "2"}, secret)

    def rooms_seen_by_other() -> dict[str, dict]:
        j = other.ok("GET", f"/_matrix/client/v1/rooms/{q(space)}/hierarchy", timeout=60)
        return {r["room_id"]: r for r in j["rooms"]}

    deadline = time.monotonic() + 20
    while True:   # the child links reach the other server as PDUs first
        got = rooms_seen_by_other()
        if child in got or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert child in got, f"{other.user_id}'s hierarchy {list(got)}\n{logs(peers, space, child)}"
    assert got[space].get("room_type") == "m.space"
    assert {c["state_key"] for c in got[space]["children_state"]} >= {child}
    assert got[child].get("name") == "The child" and got[child].get("topic") == \
        "only on the host"
    assert got[child].get("join_rule") == "public"
    # the invite-only child is neither shown nor fatal
    assert secret not in got
    # the owner, on its own server, sees both children
    mine = owner.ok("GET", f"/_matrix/client/v1/rooms/{q(space)}/hierarchy")
    assert {r["room_id"] for r in mine["rooms"]} == {space, child, secret}
