"""Helpers for the RoomActor's federation tests (tests/rooms/test_room_pdus*.py,
test_room_join_remote*.py): remote servers with real signing keys that build events of a
room the way their homeserver would (prev_events, auth events chosen from a state map,
depth), and small readers over the app's room service."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from protocol.events import auth_types_for_event, build_event
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from protocol.signing import generate_signing_key

from actors.room_messages import GetRoomSnapshot, ReceivePdus
from web.app import runtime_of

V = "/_matrix/client/v3"


def rooms(app) -> Any:
    return runtime_of(app).parts["rooms"]


def snapshot(app, room_id) -> dict:
    return rooms(app).supervisor.ask(room_id, GetRoomSnapshot())


def receive(app, room_id, events, *, origin="remote.test", outliers=(), state_before=None,
            backfilled=False) -> dict[str, str]:
    """Ask the room to take ``events``; {event_id: outcome}."""
    res = rooms(app).supervisor.ask(room_id, ReceivePdus(
        origin=origin, events=tuple(events), outliers=tuple(outliers),
        state_before=state_before, backfilled=backfilled))
    return {r.event_id: r.outcome for r in res}


class RemoteServer:
    """Another homeserver: builds and signs events of a room with its own key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = generate_signing_key("a_" + name.replace(".", "_")[:8])

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    def event(self, app, room_id: str, sender: str, etype: str, content: Mapping[str, Any],
              *, state_key: str | None = None, prevs: Iterable[str] | None = None,
              state: Mapping[tuple[str, str], str] | None = None, depth: int | None = None,
              ts: int = 1_700_000_000_000, redacts: str | None = None) -> dict[str, Any]:
        """A signed event on ``prevs`` (default: the room's extremities), its auth events
        chosen from ``state`` (default: the state after the single prev, or current)."""
        svc = rooms(app)
        snap = snapshot(app, room_id)
        rv = KNOWN_ROOM_VERSIONS[snap["room_version"]]
        prevs = list(prevs) if prevs is not None else list(snap["extremities"])
        if state is None:
            state = (svc.events.state_ids_after(prevs[0]) if len(prevs) == 1
                     else snap["state"]) or snap["state"]
        if depth is None:
            stored = svc.events.get_events(prevs)
            depth = max((int(se.event["depth"]) for se in stored.values()), default=0) + 1
        types = auth_types_for_event(rv, etype, sender, state_key, dict(content))
        auth = [state[k] for k in sorted(types) if k in state]
        return build_event(rv, room_id=room_id, sender=sender, type=etype, content=content,
                           state_key=state_key, prev_events=prevs, auth_events=auth,
                           depth=depth, origin_server_ts=ts, server_name=self.name,
                           signing_key=self.key, redacts=redacts)

    def join(self, app, room_id, localpart, **kw) -> dict[str, Any]:
        uid = self.user(localpart)
        return self.event(app, room_id, uid, "m.room.member", {"membership": "join"},
                          state_key=uid, **kw)

    def message(self, app, room_id, localpart, body, **kw) -> dict[str, Any]:
        return self.event(app, room_id, self.user(localpart), "m.room.message",
                          {"msgtype": "m.text", "body": body}, **kw)


def sync_timeline(client, room_id, since=None) -> tuple[list[str], str]:
    q = "?timeout=0" + (f"&since={since}" if since else "")
    body = client.req("GET", f"{V}/sync{q}")
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])], \
        body["next_batch"]


def sync_room(client, room_id, since=None) -> dict:
    q = "?timeout=0" + (f"&since={since}" if since else "")
    return client.req("GET", f"{V}/sync{q}").get("rooms", {}).get("join", {}).get(room_id, {})


def messages(client, room_id, limit=100) -> list[str]:
    body = client.req("GET", f"{V}/rooms/{room_id}/messages?dir=b&limit={limit}")
    return [e["event_id"] for e in body["chunk"]]
