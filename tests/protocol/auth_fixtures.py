"""Tiny builders of event dicts and room state for the auth-rule tests.

Events get readable, deterministic ids in the room version's format; no hashes or
signatures (the auth rules never look at them).  ``Room`` holds a state map
``(type, state_key) -> event`` that tests mutate and pass to ``check_auth``.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
from typing import Any

import pytest

from protocol.auth import AuthError, check_auth
from protocol.auth_common import rule
from protocol.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion

ALICE = "@alice:a.org"    # creator
BOB = "@bob:b.org"
CAROL = "@carol:c.org"
DAVE = "@dave:a.org"

ALL_VERSIONS = list(KNOWN_ROOM_VERSIONS.values())
_counter = itertools.count(1)


def make_event_id(rv: RoomVersion, label: str, domain: str = "a.org") -> str:
    n = next(_counter)
    if rv.event_format == EventFormat.V1:
        return f"${label}-{n}:{domain}"
    digest = hashlib.sha256(f"{label}-{n}".encode()).digest()
    if rv.event_format == EventFormat.V2:
        return "$" + base64.b64encode(digest).decode().rstrip("=")
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_ev(rv: RoomVersion, room_id: str | None, type: str, sender: str,
            content: dict[str, Any] | None = None, state_key: str | None = None, *,
            prev: list[str] | None = None, auth: list[str] | None = None,
            depth: int = 2, event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An Atrium event dict (auth/prev as plain ids, or ``[id, {}]`` pairs in v1/v2)."""
    def refs(ids: list[str]) -> list[Any]:
        if rv.event_format == EventFormat.V1:
            return [[i, {"sha256": "x"}] for i in ids]
        return list(ids)

    ev: dict[str, Any] = {
        "event_id": event_id or make_event_id(rv, type.rsplit(".", 1)[-1],
                                              sender.split(":", 1)[1]),
        "type": type,
        "sender": sender,
        "content": content if content is not None else {},
        "auth_events": refs(auth or []),
        "prev_events": refs(prev or []),
        "depth": depth,
        "origin_server_ts": 1000,
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    if room_id is not None:
        ev["room_id"] = room_id
    if state_key is not None:
        ev["state_key"] = state_key
    ev.update(extra)
    return ev


class Room:
    """A room of version ``rv`` created by ALICE, with mutable current state."""

    def __init__(self, rv: RoomVersion, *, creator: str = ALICE,
                 create_content: dict[str, Any] | None = None, join_rule: str | None = "invite",
                 power_levels: dict[str, Any] | None | str = "default",
                 joined: tuple[str, ...] = (ALICE,)) -> None:
        self.rv = rv
        content = dict(create_content or {})
        if not rv.implicit_room_creator:
            content.setdefault("creator", creator)
        content.setdefault("room_version", rv.identifier)
        domain = creator.split(":", 1)[1]
        if rv.room_id_is_create_event_hash:
            create_id = make_event_id(rv, "create", domain)
            self.room_id = "!" + create_id[1:]
        else:
            create_id = make_event_id(rv, "create", domain)
            self.room_id = f"!room:{domain}"
        self.create = make_ev(rv, self.room_id, "m.room.create", creator, content, "",
                              depth=1, event_id=create_id)
        self.state: dict[tuple[str, str], dict[str, Any]] = {("m.room.create", ""): self.create}
        for user in joined:
            self.set_member(user, "join")
        if power_levels == "default":
            power_levels = {} if rv.privileged_creators else {"users": {creator: 100}}
        if power_levels is not None:
            self.set_pl(power_levels)  # type: ignore[arg-type]
        if join_rule is not None:
            self.set_join_rule(join_rule)

    def ev(self, type: str, sender: str, content: dict[str, Any] | None = None,
           state_key: str | None = None, **kw: Any) -> dict[str, Any]:
        kw.setdefault("prev", ["$prev"])
        room_id = kw.pop("room_id", self.room_id)
        return make_ev(self.rv, room_id, type, sender, content, state_key, **kw)

    def member(self, sender: str, membership: str, target: str | None = None, *,
               prev: list[str] | None = None, **content: Any) -> dict[str, Any]:
        return self.ev("m.room.member", sender, {"membership": membership, **content},
                       target if target is not None else sender, prev=prev or ["$prev"])

    def put(self, ev: dict[str, Any]) -> dict[str, Any]:
        self.state[(ev["type"], ev["state_key"])] = ev
        return ev

    def set_member(self, user: str, membership: str) -> None:
        self.put(self.member(user, membership))

    def set_pl(self, content: dict[str, Any]) -> None:
        self.put(self.ev("m.room.power_levels", ALICE, content, ""))

    def set_join_rule(self, join_rule: str) -> None:
        self.put(self.ev("m.room.join_rules", ALICE, {"join_rule": join_rule}, ""))

    def allows(self, ev: dict[str, Any]) -> bool:
        try:
            check_auth(self.rv, ev, self.state)
        except AuthError:
            return False
        return True

    def assert_allowed(self, ev: dict[str, Any]) -> None:
        check_auth(self.rv, ev, self.state)

    def assert_rejected(self, ev: dict[str, Any], *path: str) -> AuthError:
        with pytest.raises(AuthError) as info:
            check_auth(self.rv, ev, self.state)
        expected = rule(self.rv, *path)
        assert info.value.rule == expected, f"{info.value} (expected rule {expected})"
        return info.value
