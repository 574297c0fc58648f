"""Helpers for the outbound-PDU tests: the real app (tests/apps.py) with its real
FederationSender, whose HTTP client is replaced by the recording ``FakeClient`` of
sender_helpers (it records every ``PUT /send`` body and can fail or hang per destination).

Remote members are put into rooms through the real RoomActor: a ``Send`` of the remote
user's own join (the room is public), built and persisted by the actor exactly as an
accepted remote join will be (the RoomActor's ReceivePdus does not exist yet; the event is
signed by us, which nothing here checks).  So the membership rows, current_state and the
on_persisted hook all see what they will see in production."""
from __future__ import annotations

from typing import Any

from actors.room_messages import EventSpec, Send
from federation import pdu_out
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from store.accounts import hash_token
from tests.federation.sender_helpers import FakeClient, wait_until
from web.app import runtime_of

V = "/_matrix/client/v3"
US = "test.local"

FAST = {"min_retry_interval": 30, "max_retry_interval": 150, "request_timeout": "2s",
        "connect_timeout": "500ms", "max_concurrent_transactions": 8}


class Hs:
    """One real app with a recording client under its FederationSender."""

    def __init__(self, make: Any, **federation: Any) -> None:
        self.app = make(trusted_key_servers=[], federation={**FAST, **federation})
        self.runtime = runtime_of(self.app)
        self.db = self.runtime.db
        self.fed = self.runtime.parts["federation"]
        self.rooms = self.runtime.parts["rooms"]
        self.client = FakeClient()
        self.sender = self.fed.sender
        self.sender.client = self.client
        self.out = pdu_out.install(self.app, self.fed, self.runtime.parts)
        # these tests count PDUs and which transaction holds them: no presence EDUs of the
        # users beside them (tests/federation/test_edus_rooms.py covers those)
        room_edus = self.fed.extras.get("room_edus_out")
        if room_edus is not None:
            room_edus.presence_enabled = False
        self.http = self.app.test_client()
        self._txn = 0
        self._tokens: dict[str, str] = {}

    # -- users and rooms ------------------------------------------------------------------
    def user(self, localpart: str) -> str:
        user_id = f"@{localpart}:{US}"

        def _add(t: Any) -> None:
            t.execute("INSERT INTO users (name, password_hash, creation_ts) VALUES (?, ?, ?)",
                      (user_id, "x", 0))
            t.execute("INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                      " VALUES (?, 'D', 'd', 0)", (user_id,))
            t.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                      " VALUES (?, ?, 'D', 0)", (hash_token(f"tok_{localpart}"), user_id))
        self.db.run("add_user", _add, write=True)
        self._tokens[user_id] = f"tok_{localpart}"
        return user_id

    def req(self, user_id: str, method: str, path: str, body: Any = None,
            status: int = 200) -> Any:
        r = self.http.open(path, method=method, json=body,
                           headers={"Authorization": f"Bearer {self._tokens[user_id]}"})
        assert r.status_code == status, (path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def public_room(self, creator: str) -> str:
        return self.req(creator, "POST", f"{V}/createRoom",
                        {"preset": "public_chat"})["room_id"]

    def ask(self, room_id: str, spec: EventSpec) -> Any:
        return self.rooms.supervisor.ask(room_id, Send(spec=spec))

    def member(self, room_id: str, sender: str, target: str, membership: str) -> Any:
        """A member event built and persisted by the room's actor (a remote user's own
        join stands for the accepted PDU of their server)."""
        return self.ask(room_id, EventSpec("m.room.member", sender,
                                           {"membership": membership}, target))

    def say(self, room_id: str, sender: str, body: str) -> Any:
        return self.ask(room_id, EventSpec("m.room.message", sender,
                                           {"msgtype": "m.text", "body": body}))

    def say_http(self, room_id: str, sender: str, body: str) -> str:
        self._txn += 1
        return self.req(sender, "PUT", f"{V}/rooms/{room_id}/send/m.room.message/t{self._txn}",
                        {"msgtype": "m.text", "body": body})["event_id"]

    # -- what went out --------------------------------------------------------------------
    def pdus(self, destination: str) -> list[dict[str, Any]]:
        """Every PDU delivered (answered 200) to ``destination``, in order."""
        return [p for a in self.client.delivered(destination) for p in a.body["pdus"]]

    def bodies(self, destination: str) -> list[str]:
        return [label(p) for p in self.pdus(destination)]

    def wait_bodies(self, destination: str, n: int, within: float = 5.0) -> list[str]:
        wait_until(lambda: len(self.pdus(destination)) >= n, within,
                   f"{n} PDUs to {destination} (have {self.bodies(destination)})")
        return self.bodies(destination)

    def position(self, destination: str) -> int | None:
        row = self.sender.store.get(destination)
        return row.pdu_position if row is not None else None

    def room_version(self, room_id: str) -> Any:
        return KNOWN_ROOM_VERSIONS[self.rooms.events.room_version(room_id).identifier]


def label(pdu: dict[str, Any]) -> str:
    """A PDU's short name: a message's body, else ``membership:state_key``."""
    c = pdu.get("content", {})
    if pdu["type"] == "m.room.message":
        return c.get("body", "")
    if pdu["type"] == "m.room.member":
        return f"{c.get('membership')}:{pdu['state_key']}"
    return pdu["type"]
