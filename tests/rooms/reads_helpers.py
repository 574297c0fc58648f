"""Helpers for the room-reads tests (tests/rooms/test_reads_*.py)."""
import json
from urllib.parse import quote, urlencode

from web.app import runtime_of

V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"


def q(event_id):
    return quote(event_id, safe="")


def get(client, path, status=200, **params):
    params = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in params.items()
              if v is not None}
    qs = ("?" + urlencode(params)) if params else ""
    return client.req("GET", path + qs, status=status)


def messages(client, room_id, status=200, **params):
    return get(client, f"{V3}/rooms/{room_id}/messages", status=status, **params)


def page_all(client, room_id, direction, limit, frm=None, between=None, **params):
    """Follow ``end`` until it is omitted; return (event ids in page order, pages)."""
    ids, pages = [], 0
    while True:
        r = messages(client, room_id, dir=direction, limit=limit, **{"from": frm}, **params)
        ids.extend(e["event_id"] for e in r["chunk"])
        pages += 1
        assert pages < 500
        if between is not None:
            between(pages)
        if "end" not in r:
            return ids, pages
        frm = r["end"]


def text(client, room_id, body, **extra):
    return client.send(room_id, {"msgtype": "m.text", "body": body, **extra})["event_id"]


def relate(client, room_id, parent, rel_type, body="reply", etype="m.room.message", **extra):
    content = {"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": rel_type, "event_id": parent}, **extra}
    return client.send(room_id, content, etype=etype)["event_id"]


def stream_of(app, event_id):
    return runtime_of(app).parts["rooms"].events.get_event(event_id).stream_ordering


def set_visibility(client, room_id, value):
    client.state(room_id, "m.room.history_visibility", body={"history_visibility": value})


def join(client, room_id):
    client.req("POST", f"{V3}/rooms/{room_id}/join", {})


def leave(client, room_id):
    client.req("POST", f"{V3}/rooms/{room_id}/leave", {})


def invite(client, room_id, user_id):
    client.req("POST", f"{V3}/rooms/{room_id}/invite", {"user_id": user_id})


def timeline_ids(client, room_id):
    """The whole visible timeline, oldest first, in one request."""
    return [e["event_id"] for e in messages(client, room_id, dir="f", limit=1000)["chunk"]]
