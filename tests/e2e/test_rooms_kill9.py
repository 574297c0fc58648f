"""kill -9 durability end to end: a 200 for a send means the event is committed
(ARCHITECTURE invariant 3), and a send is idempotent per device and txn id across a restart.

Several clients send with distinct txn ids into one room (and one client into a second
room) against a real ``gunicorn -k gevent web:app``; mid-stream the whole process group
(master and worker) gets SIGKILL.  The server is restarted on the same config and data;
then every acknowledged event id is there (``/event`` and ``/messages``), retrying an
acknowledged txn id returns the same event id, requests that were in flight at the kill
resolve to one event at most, and new sends extend the DAG.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import pytest
import requests

from rooms_server import (BASE_OVERRIDES, Client, Launched, group_pids, kill_group, launch)

SENDERS = 4
MIN_ACKED_BEFORE_KILL = 60


@pytest.fixture
def relaunch(start_atrium: Callable[..., Any]) -> Iterator[Callable[[Any], Launched]]:
    """Restart a server from ``start_atrium`` on its own config; stopped before the
    ``start_atrium`` teardown drops its database."""
    started: list[Launched] = []

    def _relaunch(server: Any) -> Launched:
        from pathlib import Path

        launched = launch(server.config_path, Path(server.log_path))
        started.append(launched)
        return launched

    yield _relaunch
    for launched in started:
        launched.stop()


class Sender(threading.Thread):
    """Sends numbered messages until the connection dies; remembers what was acknowledged."""

    def __init__(self, client: Client, room_id: str, name: str) -> None:
        super().__init__(daemon=True)
        self.client, self.room_id, self.name_ = client, room_id, name
        self.acked: dict[str, str] = {}       # txn -> event_id
        self.in_flight: list[str] = []        # txn ids whose reply never came
        self.errors: list[Any] = []

    def run(self) -> None:
        for n in range(20_000):               # bounded; the kill ends it long before
            txn = f"{self.name_}-{n}"
            try:
                rep = self.client.send(self.room_id, f"{self.name_} {n}", txn=txn, timeout=10)
            except requests.RequestException:
                self.in_flight.append(txn)
                return
            if rep.status != 200:
                self.errors.append((txn, rep.status, rep.body))
                return
            self.acked[txn] = rep.body["event_id"]


def test_kill9_loses_no_acknowledged_event(start_atrium: Callable[..., Any],
                                           relaunch: Callable[[Any], Launched]) -> None:
    server = start_atrium(**BASE_OVERRIDES)
    logins = [server.register(f"k{i}", f"pw-k{i}") for i in range(SENDERS)]
    clients = [Client(server.base_url, lg) for lg in logins]
    room = clients[0].create_room(preset="public_chat")
    other = clients[0].create_room(preset="public_chat")
    for c in clients[1:]:
        c.join(room)

    senders = [Sender(c, room, f"s{i}") for i, c in enumerate(clients)]
    senders.append(Sender(Client(server.base_url, logins[0]), other, "o"))
    for s in senders:
        s.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sum(len(s.acked) for s in senders) >= MIN_ACKED_BEFORE_KILL:
            break
        if any(s.errors for s in senders):
            break
        time.sleep(0.02)
    pids = group_pids(server.process.pid)
    assert len(pids) >= 2, pids                       # master and worker
    kill_group(server.process)                        # SIGKILL, mid-stream
    for s in senders:
        s.join(timeout=15)
    assert not any(s.is_alive() for s in senders)
    assert not [e for s in senders for e in s.errors], [s.errors for s in senders]
    assert sum(len(s.acked) for s in senders) >= MIN_ACKED_BEFORE_KILL
    assert all(not any(p == pid for pid in group_pids(server.process.pid)) for p in pids)

    new = relaunch(server)
    for s in senders:
        s.client.base_url = new.base_url

    # every acknowledged event is there, with the content that was sent
    for s in senders:
        for txn, event_id in s.acked.items():
            rep = s.client.event(s.room_id, event_id)
            assert rep.status == 200, (txn, event_id, rep.status, rep.body)
            assert rep.body["content"]["body"] == f"{s.name_} {txn.split('-')[1]}"
    listed = clients[0].messages_ids(room)
    if listed is not None:  # /messages: every event exactly once, all acknowledged ones in it
        assert len(listed) == len(set(listed))
        for s in senders[:-1]:
            missing = set(s.acked.values()) - set(listed)
            assert not missing, sorted(missing)[:5]

    # retrying an acknowledged txn id returns the same event id (idempotent across restart)
    for s in senders:
        for txn, event_id in s.acked.items():
            rep = s.client.send(s.room_id, "retry", txn=txn)
            assert rep.status == 200, rep.body
            assert rep.body["event_id"] == event_id, (txn, rep.body, event_id)

    # a request in flight at the kill resolves to one event, however often it is retried
    for s in senders:
        for txn in s.in_flight:
            first = s.client.send(s.room_id, f"{s.name_} {txn.split('-')[1]}", txn=txn)
            again = s.client.send(s.room_id, "again", txn=txn)
            assert first.status == again.status == 200, (first.body, again.body)
            assert first.body["event_id"] == again.body["event_id"]

    # the DAG is intact: new sends after the restart succeed and are readable
    fresh = []
    for i, c in enumerate(clients):
        rep = c.send(room, f"after restart {i}", txn=f"after-{i}")
        assert rep.status == 200, rep.body
        fresh.append(rep.body["event_id"])
    for eid in fresh:
        ev = clients[0].event(room, eid)
        assert ev.status == 200, ev.body
    after = clients[0].messages_ids(room)
    if after is not None:
        # newest first: the new events on top of everything acknowledged before the kill,
        # each event exactly once
        assert len(after) == len(set(after))
        assert set(after[:len(fresh)]) == set(fresh), (after[:len(fresh)], fresh)
        before = set(after[len(fresh):])
        for s in senders[:-1]:
            assert set(s.acked.values()) <= before
    print(f"\nkill -9: {sum(len(s.acked) for s in senders)} acknowledged, "
          f"{sum(len(s.in_flight) for s in senders)} in flight at the kill")
