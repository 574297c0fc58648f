"""Helpers for the PDU pipeline and served room-query tests (test_pdus*.py,
test_room_queries*.py).

The app is real (tests/apps.py); in place of the parts other engineers build or that need a
network there are TEST DOUBLES:

* the verifier and federation client of tests/federation/queries_helpers.py (origin from an
  ``X-Test-Origin`` header; remote answers scripted per destination);
* :class:`FakeKeyring` — checks event signatures against keys given to it (no fetching);
* :class:`FakeRooms` — stands in for ``parts["rooms"]`` where the pipeline hands over
  ``ReceivePdus``: it records each message and answers a result per event, or fails / hangs
  for rooms a test poisons.

A remote server's users are put into a local room with :func:`join_remote`: the real
RoomActor builds a join for the remote user (signed by us; enough to make the remote server
"in the room" for the served queries).
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Callable

import gevent

from actors.room_messages import EventSpec, Send
from federation import pdus as pdus_mod
from federation import room_queries
from protocol.events import build_event
from protocol.hashing import compute_event_id
from protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from protocol.signing import (SignatureError, generate_signing_key, get_verify_key, key_id,
                              required_signers, verify_event_signature)
from tests.federation.queries_helpers import (C3, ORIGIN, SERVER, V1, FakeClient, User,
                                              fed_of, wire)
from web.app import runtime_of

__all__ = ["C3", "ORIGIN", "SERVER", "V1", "FakeClient", "FakeKeyring", "FakeRooms", "Remote",
           "User", "fed_of", "install_parts", "join_remote", "local_send", "room_state",
           "snapshot"]


class Remote:
    """Another server: a name and a signing key; builds events signed by it."""

    def __init__(self, name: str = ORIGIN) -> None:
        self.name = name
        self.sk = generate_signing_key("r1")
        self.vk = get_verify_key(self.sk)
        self._ts = int(time.time() * 1000)

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    def event(self, rv: RoomVersion, room_id: str, sender: str, type: str, content: dict,
              prev: list[str], auth: list[str], depth: int, state_key: str | None = None,
              ts: int | None = None) -> dict[str, Any]:
        self._ts += 1
        return build_event(rv, room_id=room_id, sender=sender, type=type, content=content,
                           state_key=state_key, prev_events=prev, auth_events=auth,
                           depth=depth, origin_server_ts=ts or self._ts, server_name=self.name,
                           signing_key=self.sk)


class FakeKeyring:
    """TEST DOUBLE for federation.keyring.Keyring.verify_event: the keys are given."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = dict(keys)   # server → VerifyKey
        self.verified: list[str] = []

    def verify_event(self, event: dict[str, Any], room_version: Any) -> None:
        rv = KNOWN_ROOM_VERSIONS[room_version] if isinstance(room_version, str) \
            else room_version
        for server in required_signers(event, rv):
            vk = self.keys.get(server)
            if vk is None:
                raise SignatureError(f"no key known for {server}")
            verify_event_signature(event, rv, server, {key_id(vk): vk})
        self.verified.append(event.get("event_id"))


Answer = Callable[[str, Any], Any]


class FakeRooms:
    """TEST DOUBLE for ``parts["rooms"]`` as the pipeline uses it: ``ask(room_id, msg)``
    records ``(room_id, msg)`` (at the START of the call) and answers one result per event:
    ``outcome`` is ``outcomes.get(event_id, "accepted")``.  ``fail[room_id]`` is an exception
    to raise; ``delay[room_id]`` seconds to sleep before answering."""

    def __init__(self) -> None:
        self.asks: list[tuple[str, Any]] = []
        self.outcomes: dict[str, str] = {}
        self.fail: dict[str, Exception] = {}
        self.delay: dict[str, float] = {}

    def ask(self, room_id: str, msg: Any) -> Any:
        self.asks.append((room_id, msg))
        if room_id in self.delay:
            gevent.sleep(self.delay[room_id])
        if room_id in self.fail:
            raise self.fail[room_id]
        return tuple(SimpleNamespace(event_id=ev["event_id"],
                                     outcome=self.outcomes.get(ev["event_id"], "accepted"),
                                     reason="because" if ev["event_id"] in self.outcomes
                                     else None)
                     for ev in msg.events)

    def messages(self, room_id: str | None = None) -> list[Any]:
        return [m for r, m in self.asks if room_id is None or r == room_id]


def install_parts(app: Any, remotes: list[Remote] = (), *, fake_rooms: FakeRooms | None = None,
                  **pipe_kw: Any) -> tuple[Any, FakeClient, Any]:
    """Install room_queries and the PDU pipeline on ``app`` (before its first request),
    with the fake verifier/client and a FakeKeyring knowing ``remotes`` and this server.
    Returns (fed, client, pipeline)."""
    fed = fed_of(app)
    parts = runtime_of(app).parts
    _, client = wire(app)
    keys = {r.name: r.vk for r in remotes}
    keys[SERVER] = get_verify_key(runtime_of(app).signing_key)
    fed.keyring = FakeKeyring(keys)
    if "federation_room_queries" not in app.blueprints:
        room_queries.install(app, fed, parts)
    use = dict(parts)
    if fake_rooms is not None:
        use["rooms"] = fake_rooms
    pipe = pdus_mod.PduPipeline(fed, use, reads=room_queries.room_reads(fed, parts), **pipe_kw)
    fed.pdu_handler = pipe.handle
    return fed, client, pipe


def local_send(app: Any, room_id: str, spec: EventSpec, redacts: str | None = None) -> str:
    """Send through the real RoomActor (no Flask request needed); the new event id."""
    sup = runtime_of(app).parts["rooms"].supervisor
    return sup.ask(room_id, Send(spec=spec, redacts=redacts)).event_id


def join_remote(app: Any, room_id: str, user_id: str) -> str:
    return local_send(app, room_id, EventSpec(type="m.room.member", sender=user_id,
                                              content={"membership": "join"},
                                              state_key=user_id))


def snapshot(app: Any, room_id: str) -> dict[str, Any]:
    from actors.room_messages import GetRoomSnapshot
    return runtime_of(app).parts["rooms"].supervisor.ask(room_id, GetRoomSnapshot())


def room_state(app: Any, room_id: str) -> dict[tuple[str, str], str]:
    return runtime_of(app).parts["rooms"].events.get_current_state_ids(room_id)


def event_id_of(pdu: dict[str, Any], rv: RoomVersion) -> str:
    return compute_event_id(pdu, rv)
