"""Netsplits between Atrium and Synapse in a shared room: the room converges.

* ``test_netsplit_frozen_peer``: Synapse frozen (SIGSTOP) while Atrium's users write
  messages and change state; Synapse back (SIGCONT); both sides write at once.
* ``test_netsplit_both_sides_write``: Synapse restarted over its data directory with a
  ``federation_domain_whitelist`` naming only itself — both servers up, neither can reach
  the other (Synapse refuses Atrium's requests with 403 and sends nothing): each side writes
  messages and a state change of its own (a fork); Synapse restarted without the whitelist;
  one more message each side (whose prev_events name the other fork's events unknown to the
  receiver: ``/get_missing_events``, state resolution at the merge).

Both end with the same current state (the same event id for every (type, state_key)) and
the same events (every message of both forks, each once, in each sender's order, in
``/messages`` on both sides).

Select with ``-k netsplit`` (or ``-m netsplit``).  Spec: server-server-api.md "Transactions",
"Retrieving events" / ``/get_missing_events``, "Backfilling", "Room State Resolution".
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from tests.interop.conftest import Peers
from tests.interop.helpers import Account
from tests.interop.rooms_helpers import (
    bodies, duplicates, get_state, logs, messages, poll, put_state, restart_synapse,
    send_text, shared_room, state_ids, txn,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.netsplit]
CONVERGE = 45.0     # after the heal: retries (≤ 5 s back-off both sides) + fetching the gap


def _power_to(owner: Account, room_id: str, user_id: str, level: int = 100) -> None:
    pl = get_state(owner, room_id, "m.room.power_levels")
    assert pl is not None
    pl.setdefault("users", {})[user_id] = level
    put_state(owner, room_id, "m.room.power_levels", pl)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _converged(peers: Peers, a: Account, s: Account, room_id: str,
               expect: dict[str, list[str]]) -> None:
    """Both servers: the same state map; every expected message exactly once and in each
    sender's order in /messages; the same set of events."""
    def same_state() -> Any:
        sa, ss = state_ids(a, room_id), state_ids(s, room_id)
        return sa == ss or None

    try:
        poll(peers, same_state, "the same current state on both servers", room_id,
             timeout=CONVERGE, interval=1.0)
    except AssertionError:
        sa, ss = state_ids(a, room_id), state_ids(s, room_id)
        diff = {k: (sa.get(k), ss.get(k)) for k in set(sa) | set(ss) if sa.get(k) != ss.get(k)}
        raise AssertionError(f"state differs (atrium, synapse): {diff}\n"
                             f"{logs(peers, room_id)}") from None

    def histories() -> Any:
        hs = [messages(acct, room_id) for acct in (a, s)]
        ok = all(bodies(h, tag) == want for h in hs for tag, want in expect.items())
        return hs if ok else None

    try:
        hs = poll(peers, histories, "every message on both servers", room_id,
                  timeout=CONVERGE, interval=1.0)
    except AssertionError:
        got = {acct.server_name: {tag: bodies(messages(acct, room_id), tag) for tag in expect}
               for acct in (a, s)}
        raise AssertionError(f"messages differ: {got}\nwant {expect}\n"
                             f"{logs(peers, room_id)}") from None
    for acct, h in zip((a, s), hs):
        assert not duplicates(h), f"{acct.server_name}: duplicates {duplicates(h)}"
    ids = [{e["event_id"] for e in h} for h in hs]
    assert ids[0] == ids[1], (f"events only on Atrium: {ids[0] - ids[1]}; only on Synapse: "
                              f"{ids[1] - ids[0]}")


def test_netsplit_frozen_peer(room_peers: Peers) -> None:
    peers = room_peers
    a, s = peers.account(peers.atrium), peers.account(peers.synapse)
    room_id = shared_room(peers, a, s)
    tag_a, tag_s = f"A-{txn()[:6]}", f"S-{txn()[:6]}"
    send_text(a, room_id, f"{tag_a} 000")
    pids = peers.synapse.pids()
    _signal(pids, signal.SIGSTOP)
    try:
        for i in range(1, 8):
            send_text(a, room_id, f"{tag_a} {i:03d}")
        put_state(a, room_id, "m.room.topic", {"topic": "written during the split"})
    finally:
        _signal(pids, signal.SIGCONT)
    # back: both write at once
    errors: list[str] = []

    def write(acct: Account, tag: str, start: int, n: int) -> None:
        try:
            for i in range(start, start + n):
                send_text(acct, room_id, f"{tag} {i:03d}")
        except AssertionError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=write, args=(a, tag_a, 8, 4)),
               threading.Thread(target=write, args=(s, tag_s, 0, 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    _converged(peers, a, s, room_id, {
        tag_a: [f"{tag_a} {i:03d}" for i in range(12)],
        tag_s: [f"{tag_s} {i:03d}" for i in range(4)]})
    assert get_state(s, room_id, "m.room.topic") == {"topic": "written during the split"}


def test_netsplit_both_sides_write(room_peers: Peers) -> None:
    peers = room_peers
    a, s = peers.account(peers.atrium), peers.account(peers.synapse)
    room_id = shared_room(peers, a, s)
    _power_to(a, room_id, s.user_id)
    poll(peers, lambda: (get_state(s, room_id, "m.room.power_levels") or {})
         .get("users", {}).get(s.user_id) == 100, "Synapse sees the new power levels",
         room_id)
    tag_a, tag_s = f"A-{txn()[:6]}", f"S-{txn()[:6]}"
    # the split: Synapse talks to nobody but itself
    restart_synapse(peers, {"federation_domain_whitelist": [peers.synapse.server_name]})
    try:
        for i in range(4):
            send_text(a, room_id, f"{tag_a} {i:03d}")
            send_text(s, room_id, f"{tag_s} {i:03d}")
        put_state(a, room_id, "m.room.topic", {"topic": "Atrium's side"})
        put_state(s, room_id, "m.room.name", {"name": "Synapse's side"})
    finally:
        restart_synapse(peers)       # healed
    send_text(a, room_id, f"{tag_a} 004")
    send_text(s, room_id, f"{tag_s} 004")
    _converged(peers, a, s, room_id, {
        tag_a: [f"{tag_a} {i:03d}" for i in range(5)],
        tag_s: [f"{tag_s} {i:03d}" for i in range(5)]})
    for acct in (a, s):
        assert get_state(acct, room_id, "m.room.topic") == {"topic": "Atrium's side"}, \
            acct.server_name
        assert get_state(acct, room_id, "m.room.name") == {"name": "Synapse's side"}, \
            acct.server_name
