"""Benchmark: resolve two forks of a room with 10,000 state events and 1,000 conflicted keys.

Run: ``.venv/bin/python bench/protocol_stateres.py`` (from the repository root).

The room (version 11 by default, ``--room-version 12`` for v2.1) has a creator, 4,000
joined members and 6,000 other state events.  Fork A changes the power levels, 699 other
state keys and kicks 300 members; fork B changes the same 699 keys and the 300 members'
display names.  Events are plain dicts (no hashes or signatures: resolution never looks at
them); auth decisions are the real ``protocol.auth.check_auth``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from protocol.room_versions import get_room_version  # noqa: E402
from protocol.state_res import resolve_state  # noqa: E402

MEMBERS = 4_000
OTHER_STATE = 6_000
CONFLICTED_OTHER = 699
CONFLICTED_MEMBERS = 300


def build(version: str) -> tuple[Any, list[dict], dict[str, dict]]:
    rv = get_room_version(version)
    assert rv is not None
    v12 = rv.room_id_is_create_event_hash
    events: dict[str, dict] = {}
    counter = [0]

    def new_id(tag: str) -> str:
        counter[0] += 1
        if v12:
            return "$" + f"{tag}{counter[0]}".ljust(43, "_")
        return f"${tag}{counter[0]}"

    create_id = new_id("create")
    room_id = "!" + create_id[1:] if v12 else "!bench:example.com"
    alice = "@alice:example.com"

    def add(sender: str, typ: str, key: str, content: dict, auth: list[str],
            prev: list[str], ts: int, eid: str | None = None) -> str:
        eid = eid or new_id(typ.rsplit(".", 1)[-1])
        if v12:
            auth = [a for a in auth if a != create_id]
        events[eid] = {
            "event_id": eid, "room_id": room_id, "sender": sender, "type": typ,
            "state_key": key, "content": content, "auth_events": auth, "prev_events": prev,
            "depth": ts, "origin_server_ts": ts,
        }
        return eid

    state: dict[tuple[str, str], str] = {}
    ts = 1
    create_content: dict[str, Any] = {"room_version": version}
    if not rv.implicit_room_creator:
        create_content["creator"] = alice
    add(alice, "m.room.create", "", create_content, [], [], ts, eid=create_id)
    state[("m.room.create", "")] = create_id
    ts += 1
    ima = add(alice, "m.room.member", alice, {"membership": "join"}, [create_id], [create_id], ts)
    state[("m.room.member", alice)] = ima
    users = {} if rv.privileged_creators else {alice: 100}
    ts += 1
    pl = add(alice, "m.room.power_levels", "", {"users": users}, [create_id, ima], [ima], ts)
    state[("m.room.power_levels", "")] = pl
    ts += 1
    jr = add(alice, "m.room.join_rules", "", {"join_rule": "public"}, [create_id, pl, ima],
             [pl], ts)
    state[("m.room.join_rules", "")] = jr
    last = jr
    member_ids = []
    for i in range(MEMBERS):
        ts += 1
        user = f"@u{i}:example.org"
        last = add(user, "m.room.member", user, {"membership": "join"}, [create_id, pl, jr],
                   [last], ts)
        state[("m.room.member", user)] = last
        member_ids.append((user, last))
    for i in range(OTHER_STATE):
        ts += 1
        last = add(alice, "org.example.setting", str(i), {"v": 0}, [create_id, pl, ima],
                   [last], ts)
        state[("org.example.setting", str(i))] = last

    fork_a = dict(state)
    fork_b = dict(state)
    ts += 1
    pl2 = add(alice, "m.room.power_levels", "", {"users": users, "kick": 40},
              [create_id, pl, ima], [last], ts)
    fork_a[("m.room.power_levels", "")] = pl2
    prev_a = prev_b = last
    prev_a = pl2
    for i in range(CONFLICTED_OTHER):
        ts += 1
        prev_a = add(alice, "org.example.setting", str(i), {"v": "a"}, [create_id, pl2, ima],
                     [prev_a], ts)
        fork_a[("org.example.setting", str(i))] = prev_a
        ts += 1
        prev_b = add(alice, "org.example.setting", str(i), {"v": "b"}, [create_id, pl, ima],
                     [prev_b], ts)
        fork_b[("org.example.setting", str(i))] = prev_b
    for user, joined in member_ids[:CONFLICTED_MEMBERS]:
        ts += 1
        prev_a = add(alice, "m.room.member", user, {"membership": "leave"},
                     [create_id, pl2, ima, joined], [prev_a], ts)
        fork_a[("m.room.member", user)] = prev_a
        ts += 1
        prev_b = add(user, "m.room.member", user, {"membership": "join", "displayname": "x"},
                     [create_id, pl, jr, joined], [prev_b], ts)
        fork_b[("m.room.member", user)] = prev_b
    return rv, [fork_a, fork_b], events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--room-version", default="11")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rv, forks, events = build(args.room_version)
    conflicted = sum(1 for k in forks[0].keys() | forks[1].keys()
                     if forks[0].get(k) != forks[1].get(k))
    print(f"room v{rv.identifier} (state res {rv.state_res}): {len(forks[0])} state entries, "
          f"{conflicted} conflicted, {len(events)} events")
    pauses = [0]

    def pause() -> None:
        pauses[0] += 1

    best = float("inf")
    result: dict = {}
    for _ in range(args.repeat):
        pauses[0] = 0
        start = time.perf_counter()
        result = resolve_state(rv, forks, events.get, pause=pause)
        best = min(best, time.perf_counter() - start)
    print(f"resolved {len(result)} entries in {best:.3f} s (best of {args.repeat}); "
          f"pause called {pauses[0]} times per resolution")


if __name__ == "__main__":
    main()
