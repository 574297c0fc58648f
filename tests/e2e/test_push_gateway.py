"""Push end to end: a real ``gunicorn -k gevent web:app`` Atrium, a push gateway of our own
on loopback, and plain HTTP clients.  A message and a mention reach the gateway as
push-gateway-api ``notify`` payloads whose counts match /sync's; a read receipt resets the
counts; a failing gateway is retried with backoff until it answers."""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests

from tests.e2e.conftest import AtriumServer
from tests.push.conftest import Gateway

V = "/_matrix/client/v3"


class User:
    def __init__(self, server: AtriumServer, name: str) -> None:
        login = server.register(name, "pw-" + name)
        self.base = server.base_url
        self.user_id = login["user_id"]
        self.h = {"Authorization": f"Bearer {login['access_token']}"}
        self.txn = 0

    def req(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        r = requests.request(method, self.base + V + path, json=body, headers=self.h,
                             params=params or None, timeout=10)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
        return r.json()

    def send(self, room_id: str, content: dict[str, Any]) -> str:
        self.txn += 1
        return self.req("PUT", f"/rooms/{room_id}/send/m.room.message/e2e{self.txn}",
                        content)["event_id"]


def wait_for(pred, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    return pred()


def test_notify_payloads_and_counts(start_atrium) -> None:
    server = start_atrium(push={"allow_http_gateways": True, "backoff_base": 0.1,
                                "backoff_max": 1.0})
    gateway = Gateway()
    try:
        alice, bob, carol = (User(server, n) for n in ("alice", "bob", "carol"))
        alice.req("PUT", f"/profile/{quote(alice.user_id)}/displayname",
                  {"displayname": "Alice A"})
        room_id = alice.req("POST", "/createRoom", {"name": "E2E room"})["room_id"]
        for u in (bob, carol):
            alice.req("POST", f"/rooms/{room_id}/invite", {"user_id": u.user_id})
            u.req("POST", f"/join/{quote(room_id)}")
        bob.req("POST", "/pushers/set", {
            "kind": "http", "app_id": "org.example.e2e", "pushkey": "bobs-phone",
            "app_display_name": "E2E", "device_display_name": "phone", "lang": "en",
            "data": {"url": gateway.url, "custom": 1}})
        since = bob.req("GET", "/sync", timeout="0")["next_batch"]

        plain = alice.send(room_id, {"msgtype": "m.text", "body": "hello all"})
        assert wait_for(lambda: len(gateway.received) >= 1), server.log()
        n = gateway.notifications()[0]
        assert n["event_id"] == plain and n["room_id"] == room_id
        assert n["type"] == "m.room.message" and n["sender"] == alice.user_id
        assert n["sender_display_name"] == "Alice A" and n["room_name"] == "E2E room"
        assert n["counts"] == {"unread": 1} and n["prio"] == "low"
        assert n["devices"][0]["pushkey"] == "bobs-phone"
        assert n["devices"][0]["data"] == {"custom": 1}
        assert "tweaks" not in n["devices"][0]  # none: left out, as Synapse does

        mention = alice.send(room_id, {"msgtype": "m.text", "body": "bob, look",
                                       "m.mentions": {"user_ids": [bob.user_id]}})
        assert wait_for(lambda: len(gateway.received) >= 2), server.log()
        n = gateway.notifications()[1]
        assert n["event_id"] == mention and n["counts"] == {"unread": 2}
        assert n["prio"] == "high"
        assert n["devices"][0]["tweaks"] == {"sound": "default", "highlight": True}

        resp = bob.req("GET", "/sync", since=since, timeout="0")
        room = resp["rooms"]["join"][room_id]
        assert room["unread_notifications"] == {"notification_count": 2, "highlight_count": 1}
        since = resp["next_batch"]
        bob.req("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(mention, safe='')}",
                {})
        resp = bob.req("GET", "/sync", since=since, timeout="5000")
        room = resp["rooms"]["join"][room_id]
        assert room["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}

        gateway.script = [(500, {}), (502, {})]
        again = alice.send(room_id, {"msgtype": "m.text", "body": "are you there"})
        assert wait_for(lambda: len(gateway.received) >= 5), server.log()
        retried = gateway.received[2:5]
        assert [b["notification"]["event_id"] for _, _, b in retried] == [again] * 3
        gaps = [b[0] - a[0] for a, b in zip(retried, retried[1:])]
        assert gaps[0] >= 0.08 and gaps[1] >= gaps[0] * 1.5  # exponential backoff
        assert gateway.notifications()[-1]["counts"] == {"unread": 1}
        notes = bob.req("GET", "/notifications")["notifications"]
        assert [x["event"]["event_id"] for x in notes[:3]] == [again, mention, plain]
        assert [x["read"] for x in notes[:3]] == [False, True, True]
    finally:
        gateway.stop()
