"""Helpers for the typing / receipts / presence federation tests: the real app
(tests/apps.py) with the inbound test doubles of ``inbound_helpers`` (origin from a header,
recording sender) plus a sender that records ephemeral EDUs, and ``federation/edus_out.py``
installed (idempotent: a no-op once the wiring installs it)."""
from __future__ import annotations

import contextlib
from typing import Any

import pytest

from federation import edus_out
from tests.apps import app_factory
from tests.federation.inbound_helpers import REMOTE, SERVER, V, FakeSender, Local, Server

OTHER = "other.test"


class EphemeralSender(FakeSender):
    """TEST DOUBLE for FederationSender: records ``send_ephemeral`` calls too."""

    def __init__(self) -> None:
        super().__init__()
        self.ephemeral: list[tuple[str, str, dict[str, Any], str | None]] = []

    def send_ephemeral(self, destination: str, edu_type: str, content: dict[str, Any], *,
                       key: str | None = None) -> None:
        self.ephemeral.append((destination, edu_type, content, key))

    def of_type(self, edu_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [(d, c) for d, t, c, _ in self.ephemeral if t == edu_type]


class RoomsServer(Server):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.sender = EphemeralSender()
        self.fed.sender = self.sender
        self.edus_out = edus_out.install(app, self.fed, self.runtime.parts)
        assert self.fed.edus.room_edus is not None

    def flush(self) -> None:
        self.edus_out.flush(2.0)

    def room_with_remotes(self, owner: Local, *remotes: str) -> str:
        room_id = owner.create_room()
        for user_id in remotes:
            self.join_remote(room_id, user_id)
        self.fed.extras["joined_servers"].invalidate(room_id)
        return room_id


_txn = iter(range(1, 1_000_000))


def send_message(local: Local, room_id: str, body: str = "hi",
                 content: dict[str, Any] | None = None) -> str:
    return local.req("PUT", f"{V}/rooms/{room_id}/send/m.room.message/t{next(_txn)}",
                     content or {"msgtype": "m.text", "body": body})["event_id"]


def ephemeral_of(sync: dict[str, Any], room_id: str, edu_type: str) -> list[dict[str, Any]]:
    room = sync["rooms"]["join"].get(room_id) or {}
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == edu_type]


@pytest.fixture
def rs(tmp_path: Any) -> Any:
    gen = app_factory(tmp_path)
    make = next(gen)
    yield RoomsServer(make())
    with contextlib.suppress(StopIteration):
        next(gen)


__all__ = ["OTHER", "REMOTE", "SERVER", "V", "RoomsServer", "EphemeralSender", "rs",
           "send_message", "ephemeral_of"]
