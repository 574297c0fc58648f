"""Benchmark: build+sign events, then verify them (signature + content hash).

Run: ``.venv/bin/python bench/protocol_signing.py [N] [room_version]`` (defaults: 10000, 12).
Prints events/s for building+signing, for verifying, and for the two together.
Target: sign+verify over 5,000 events/s.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from protocol import events, hashing, signing  # noqa: E402
from protocol.room_versions import KNOWN_ROOM_VERSIONS  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rv = KNOWN_ROOM_VERSIONS[sys.argv[2] if len(sys.argv) > 2 else "12"]
    server = "bench.example.org"
    sk = signing.generate_signing_key("bench")
    vk = signing.get_verify_key(sk)
    room_id = "!" + "R" * 43 if rv.room_id_is_create_event_hash else "!room:" + server
    auth = ["$" + "A" * 43, "$" + "B" * 43] if rv.event_format != 1 else ["$a:" + server]

    built = []
    prev = auth[0]
    t0 = time.perf_counter()
    for i in range(n):
        ev = events.build_event(
            rv, room_id=room_id, sender=f"@user{i % 50}:{server}", type="m.room.message",
            content={"msgtype": "m.text", "body": f"message number {i} with some text"},
            prev_events=[prev], auth_events=auth, depth=i + 2, origin_server_ts=1_700_000_000_000 + i,
            server_name=server, signing_key=sk)
        prev = ev["event_id"]
        built.append(ev)
    t_sign = time.perf_counter() - t0

    t0 = time.perf_counter()
    for ev in built:
        signing.verify_event_signature(ev, rv, server, vk)
        if not hashing.check_content_hash(ev, rv):
            raise SystemExit("content hash mismatch")
    t_verify = time.perf_counter() - t0

    print(f"room version {rv.identifier}, {n} events")
    print(f"build+hash+sign+event_id: {n / t_sign:10.0f} events/s ({t_sign:.2f} s)")
    print(f"verify sig+content hash:  {n / t_verify:10.0f} events/s ({t_verify:.2f} s)")
    print(f"sign+verify combined:     {n / (t_sign + t_verify):10.0f} events/s")


if __name__ == "__main__":
    main()
