"""What the room interop tests share (rooms across servers, server-server-api.md "Rooms"):
sending, joining, state, an incremental /sync collector, full /messages pagination, bounded
polling whose failure message carries the relevant log lines of both servers, and a Synapse
restart that keeps its data directory (netsplits).

Everything goes through the client API of each server (HTTPS, the test CA); the servers
federate by themselves.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any, Callable, Iterable

from tests.interop.helpers import V3, Account, q

WAIT = 20.0            # the longest any single federation effect may take to show
SYNC_FILTER = json.dumps({
    "room": {"timeline": {"limit": 500}, "state": {"lazy_load_members": False}},
    "presence": {"not_types": ["*"]},
})


# --- logs ----------------------------------------------------------------------------------


# polling noise: access-log lines, cached /sync answers, the 403s of a state poll
NOISE = ("synapse.access", "response_cache", "/_matrix/client/v3/sync",
         "room previews are disabled")


def _server_lines(server: Any, needles: Iterable[str], tail: int) -> list[str]:
    lines = [ln for ln in server.log().splitlines() if not any(n in ln for n in NOISE)]
    needles = [n for n in needles if n]
    picked = [ln for ln in lines if any(n in ln for n in needles)] if needles else []
    picked = picked or [ln for ln in lines if "federation" in ln.lower()
                        or "error" in ln.lower() or "warn" in ln.lower()]
    return picked[-tail:]


def logs(peers: Any, *needles: str, tail: int = 30) -> str:
    """The lines of both servers' logs that mention any of ``needles`` (room ids, event ids,
    user ids), else their federation/warning/error lines; the last ``tail`` of each."""
    out = []
    for label, server in (("atrium", peers.atrium), ("synapse", peers.synapse)):
        out.append(f"--- {label} {server.server_name} log ---")
        out += _server_lines(server, needles, tail) or ["(nothing relevant)"]
    return "\n".join(out)


def poll(peers: Any, fn: Callable[[], Any], what: str, *needles: str,
         timeout: float = WAIT, interval: float = 0.25) -> Any:
    """Call ``fn`` until it returns something truthy; on timeout an AssertionError naming
    ``what``, the last value and both servers' log lines about ``needles``."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r:.600})\n"
                                 f"{logs(peers, *needles)}")
        time.sleep(interval)


# --- client-API calls ----------------------------------------------------------------------


def txn() -> str:
    return uuid.uuid4().hex


def send(acct: Account, room_id: str, content: dict[str, Any],
         event_type: str = "m.room.message") -> str:
    return acct.ok("PUT", f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/{txn()}",
                   content)["event_id"]


def send_text(acct: Account, room_id: str, body: str) -> str:
    return send(acct, room_id, {"msgtype": "m.text", "body": body})


def put_state(acct: Account, room_id: str, event_type: str, content: dict[str, Any],
              state_key: str = "") -> str:
    return acct.ok("PUT", f"{V3}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
                   content)["event_id"]


def get_state(acct: Account, room_id: str, event_type: str,
              state_key: str = "") -> dict[str, Any] | None:
    """The content of one state event as ``acct`` sees it, None when absent / not allowed."""
    status, j = acct.call("GET", f"{V3}/rooms/{q(room_id)}/state/{q(event_type)}/"
                                 f"{q(state_key)}")
    return j if status == 200 else None


def membership(acct: Account, room_id: str, user_id: str) -> str | None:
    c = get_state(acct, room_id, "m.room.member", user_id)
    return c.get("membership") if c else None


def state_ids(acct: Account, room_id: str) -> dict[tuple[str, str], str]:
    """The room's current state as ``acct`` sees it: (type, state_key) -> event_id."""
    events = acct.ok("GET", f"{V3}/rooms/{q(room_id)}/state")
    return {(e["type"], e["state_key"]): e["event_id"] for e in events}


def join(acct: Account, room: str, via: list[str] | None = None) -> tuple[int, Any]:
    """``POST /join/{roomIdOrAlias}`` with ``via`` (and the older ``server_name``)."""
    query = {"via": via, "server_name": via} if via else None
    return acct.call("POST", f"{V3}/join/{q(room)}", {}, query=query, timeout=60)


def event(acct: Account, room_id: str, event_id: str) -> tuple[int, Any]:
    return acct.call("GET", f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}")


def messages(acct: Account, room_id: str, *, page: int = 50,
             max_pages: int = 40) -> list[dict[str, Any]]:
    """Every event ``/messages`` gives ``acct`` from the newest back to the room's start
    (backfilling where the server must), oldest first."""
    out: list[dict[str, Any]] = []
    query: dict[str, Any] = {"dir": "b", "limit": str(page)}
    for _ in range(max_pages):
        j = acct.ok("GET", f"{V3}/rooms/{q(room_id)}/messages", query=query, timeout=60)
        out += j.get("chunk", [])
        end = j.get("end")
        if not end or not j.get("chunk"):
            break
        query["from"] = end
    out.reverse()
    return out


def bodies(events: Iterable[dict[str, Any]], tag: str) -> list[str]:
    """The ``body`` of each ``m.room.message`` whose body starts with ``tag``, in order."""
    return [e["content"]["body"] for e in events
            if e.get("type") == "m.room.message"
            and str(e.get("content", {}).get("body", "")).startswith(tag)]


def duplicates(events: Iterable[dict[str, Any]]) -> list[str]:
    return [eid for eid, n in Counter(e.get("event_id") for e in events).items() if n > 1]


# --- /sync ---------------------------------------------------------------------------------


class SyncCollector:
    """An incremental /sync of one account (its own ``since``), keeping what every answer
    carried: timeline events per joined room (duplicates kept, so they show), ephemeral
    events, the invite and leave sections."""

    def __init__(self, acct: Account):
        self.acct = acct
        self.since: str | None = None
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.ephemeral: dict[str, list[dict[str, Any]]] = {}
        self.invites: dict[str, dict[str, Any]] = {}
        self.left: dict[str, list[dict[str, Any]]] = {}
        self.joined: set[str] = set()
        self.limited: set[str] = set()

    def sync(self, timeout_ms: int = 0) -> dict[str, Any]:
        query: dict[str, Any] = {"timeout": str(timeout_ms), "filter": SYNC_FILTER}
        if self.since is not None:
            query["since"] = self.since
        j = self.acct.ok("GET", f"{V3}/sync", query=query, timeout=timeout_ms / 1000 + 30)
        self.since = j["next_batch"]
        rooms = j.get("rooms", {})
        for room_id, r in rooms.get("join", {}).items():
            self.joined.add(room_id)
            self.invites.pop(room_id, None)
            tl = r.get("timeline", {})
            if tl.get("limited") and self.timeline.get(room_id):
                self.limited.add(room_id)
            self.timeline.setdefault(room_id, []).extend(tl.get("events", []))
            self.ephemeral.setdefault(room_id, []).extend(r.get("ephemeral", {})
                                                          .get("events", []))
        for room_id, r in rooms.get("invite", {}).items():
            self.invites[room_id] = r
        for room_id, r in rooms.get("leave", {}).items():
            self.joined.discard(room_id)
            self.invites.pop(room_id, None)
            self.left.setdefault(room_id, []).extend(r.get("timeline", {}).get("events", []))
        return j

    def until(self, peers: Any, check: Callable[["SyncCollector"], Any], what: str,
              *needles: str, timeout: float = WAIT) -> Any:
        """Sync (long-polling 1 s) until ``check(self)`` is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            got = check(self)
            if got:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what} in {self.acct.user_id}'s /sync: not within "
                                     f"{timeout:.0f}s\n{logs(peers, *needles)}")
            self.sync(1000)

    def settle(self, seconds: float = 1.5) -> None:
        """Keep syncing a little, so that a duplicate or a late extra would show."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sync(300)

    def events(self, room_id: str, event_type: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.timeline.get(room_id, []) + self.left.get(room_id, [])
                if event_type is None or e.get("type") == event_type]


# --- rooms shared by two users on different servers ---------------------------------------


def shared_room(peers: Any, host: Account, guest: Account, **create: Any) -> str:
    """A public room created by ``host`` that ``guest`` (on the other server) joined by id
    with ``via``; returns once both servers show the join."""
    create.setdefault("preset", "public_chat")
    room_id = host.create_room(**create)
    status, j = join(guest, room_id, [host.server_name])
    assert status == 200, (f"{guest.user_id} could not join {room_id} via "
                           f"{host.server_name}: {status} {j}\n{logs(peers, room_id)}")
    poll(peers, lambda: membership(host, room_id, guest.user_id) == "join",
         f"{host.server_name} sees {guest.user_id} joined", room_id, guest.user_id)
    return room_id


def restart_synapse(peers: Any, extra: dict[str, Any] | None = None,
                    timeout: float = 90.0) -> None:
    """Stop ``peers.synapse`` and start it again on the same port over the same data
    directory (database, signing key) with ``extra`` config; ``peers.synapse`` is replaced."""
    from tests.interop.conftest import ROOM_SYNAPSE_EXTRA  # noqa: PLC0415
    from tests.interop.synapse_tls import start_synapse  # noqa: PLC0415

    old = peers.synapse
    old.stop()
    port = int(old.server_name.rsplit(":", 1)[1])
    peers.synapse = start_synapse(old.directory, port, peers.ca, wait=False,
                                  extra={**ROOM_SYNAPSE_EXTRA, **(extra or {})})
    peers.synapse.wait_ready(timeout)
