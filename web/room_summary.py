"""``GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`` (client-server-api "Room
Summaries", data/api/client-server/room_summary.yaml; MSC3266): what a client shows before
joining — name, topic, avatar, canonical alias, member count, join rule, room type,
encryption, room version, ``allowed_room_ids`` of a restricted room, and the requester's
``membership``.

As Synapse answers it:

- A room a user of this server is joined to is summarised from local state
  (federation/hierarchy.py ``Hierarchy``).  Anyone may preview it when its join rule is
  ``public``, ``knock`` or ``knock_restricted`` (the knock rules only in room versions that
  have them) or its history is ``world_readable``; otherwise only a requester who is joined
  or invited, or, in a restricted room, joined to one of the rooms its join rule allows (the
  rule of web/space_hierarchy.py).  Anything else is 404 ``M_NOT_FOUND``, exactly like an
  unknown room, so a user never learns that a room it may not see exists.
- A room this server is not in is asked of other servers' ``GET
  /_matrix/federation/v1/hierarchy/{roomId}`` (the ``via`` servers, the servers an alias
  lookup named, the server a pending invite came from, then the room id's domain).  The
  answer is filtered for the requester like a remote child of a space (the remote server
  only checked that *this server* may see it).  When no server answers and the requester
  holds a pending invite or knock, the summary is built from the stripped state of that
  invite (the spec warns such answers may be partial).
- Authentication is optional (the spec's MAY; Synapse allows it): without an access token
  only rooms anyone may preview are shown and ``membership`` is absent; a bad token is 401.
  Guests may call it.  Unauthenticated requests that would ask another server are rate
  limited per address (the spec's "Servers should consider rate limiting").

Remote answers are cached for ``REMOTE_TTL`` seconds.  Reads only.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from flask import Flask, jsonify, request

from atrium.config import RateLimit
from atrium.errors import MatrixError, invalid_param, not_found
from federation.hierarchy import OPEN_RULES, RESTRICTED_RULES, Hierarchy, RoomView
from protocol.ids import is_valid_room_alias, is_valid_room_id, is_valid_server_name, server_of
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from web.auth import extract_token, require_auth
from web.rooms import resolve_alias

log = logging.getLogger(__name__)

MAX_VIA = 3                  # servers asked for one room
REMOTE_TTL = 60.0            # s a remote answer is reused
MAX_REMOTE_CACHE = 1_000
REMOTE_TIMEOUT = 10.0        # s per server asked
#: unauthenticated requests that ask another server, per client address
UNAUTHENTICATED_REMOTE = RateLimit(per_second=0.2, burst_count=5)

#: the summary fields a remote answer may carry to a client, with their JSON types
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "room_id": str, "name": str, "topic": str, "canonical_alias": str, "avatar_url": str,
    "num_joined_members": int, "world_readable": bool, "guest_can_join": bool,
    "join_rule": str, "room_type": str, "encryption": str, "room_version": str,
    "allowed_room_ids": list}


def _not_found() -> MatrixError:
    return not_found("Room not found or is not accessible")


class RoomSummaries:
    """``hierarchy`` reads local rooms, ``rooms`` is the RoomService (memberships, pending
    remote invites), ``fed()`` the federation service or None (federation off)."""

    def __init__(self, server_name: str, hierarchy: Hierarchy, rooms: Any,
                 fed: Any = lambda: None, clock: Any = time.monotonic) -> None:
        self.server_name = server_name
        self.hierarchy = hierarchy
        self.rooms = rooms
        self.fed = fed
        self.clock = clock
        self._remote: OrderedDict[Any, tuple[float, dict[str, Any] | None]] = OrderedDict()

    # -- who may preview what ---------------------------------------------------------------
    def _membership(self, room_id: str, user_id: str) -> str | None:
        """The user's membership: from the room's state, else from a pending remote
        invite / knock / rejection of a room this server is not in."""
        current = self.rooms.membership(room_id, user_id)[0]
        if current is not None:
            return current
        record = self.rooms.remote_invites.latest_in(user_id, room_id)
        return record.membership if record is not None else None

    def _may_preview(self, user_id: str | None, room_id: str, join_rule: str,
                     world_readable: bool, allowed: list[str]) -> bool:
        if join_rule in OPEN_RULES or world_readable:
            return True
        if user_id is None:
            return False
        if self._membership(room_id, user_id) in ("join", "invite"):
            return True
        return join_rule in RESTRICTED_RULES and any(
            self.rooms.membership(r, user_id)[0] == "join" for r in allowed)

    @staticmethod
    def _local_join_rule(view: RoomView) -> str:
        """The join rule, with the knock rules only where the room version has them."""
        rule = view.join_rule
        rv = KNOWN_ROOM_VERSIONS.get(view.version)
        if rv is not None and ((rule == "knock" and not rv.knock_join_rule) or (
                rule == "knock_restricted" and not rv.knock_restricted_join_rule)):
            return "invite"
        return rule

    # -- the answer -----------------------------------------------------------------------
    def summary(self, user_id: str | None, room_id: str, via: list[str], *,
                may_ask: Any = lambda: None) -> dict[str, Any]:
        """The summary of ``room_id`` for ``user_id`` (None: unauthenticated), or 404.
        ``may_ask()`` runs before another server is asked (it may raise 429)."""
        view = self.hierarchy.view(room_id)
        if view is not None and self.server_name in view.joined_servers:
            if not self._may_preview(user_id, room_id, self._local_join_rule(view),
                                     view.world_readable, view.allowed_room_ids()):
                raise _not_found()
            out = self.hierarchy.summary(view, False)
            out.pop("children_state", None)
        else:
            out = self._remote_summary(user_id, room_id, via, may_ask)
        if user_id is not None:
            out["membership"] = self._membership(room_id, user_id) or "leave"
        return out

    def _remote_summary(self, user_id: str | None, room_id: str, via: list[str],
                        may_ask: Any) -> dict[str, Any]:
        record = self.rooms.remote_invites.latest_in(user_id, room_id) \
            if user_id is not None else None
        servers = list(via)
        if record is not None:
            servers += [record.origin, server_of(record.sender)]
        if ":" in room_id:           # v12 room ids name no server
            servers.append(room_id.split(":", 1)[1])
        servers = [s for s in dict.fromkeys(servers)
                   if s != self.server_name and is_valid_server_name(s)][:MAX_VIA]
        room = self._fetch(room_id, servers, may_ask) if servers else None
        if room is not None:
            allowed = [r for r in room.get("allowed_room_ids", []) if isinstance(r, str)]
            if not self._may_preview(user_id, room_id, room.get("join_rule", "public"),
                                     room.get("world_readable") is True, allowed):
                raise _not_found()
            return room
        if record is not None and record.membership in ("invite", "knock"):
            return self._from_stripped_state(room_id, record)
        raise _not_found()

    def _fetch(self, room_id: str, servers: list[str], may_ask: Any) -> dict[str, Any] | None:
        now = self.clock()
        for key in (room_id, (room_id, tuple(servers))):
            hit = self._remote.get(key)
            if hit is not None and hit[0] > now:
                return dict(hit[1]) if hit[1] is not None else None
        client = getattr(self.fed(), "client", None)
        answer = None
        if client is not None:
            may_ask()
            for server in servers:
                try:
                    got = client.get_json(
                        server, f"/_matrix/federation/v1/hierarchy/{quote(room_id, safe='')}",
                        query={"suggested_only": "true"}, timeout=REMOTE_TIMEOUT)
                except Exception as e:  # noqa: BLE001 - any failure: try the next server
                    log.info("summary of %s from %s failed: %s", room_id, server, e)
                    continue
                answer = _checked(room_id, got)
                if answer is not None:
                    break
        # a summary is cached for the room; "nobody answered" only for these servers
        key = room_id if answer is not None else (room_id, tuple(servers))
        self._remote[key] = (now + REMOTE_TTL, answer)
        self._remote.move_to_end(key)
        while len(self._remote) > MAX_REMOTE_CACHE:
            self._remote.popitem(last=False)
        return dict(answer) if answer is not None else None

    @staticmethod
    def _from_stripped_state(room_id: str, record: Any) -> dict[str, Any]:
        """A partial summary from the stripped state an invite or knock carried."""
        state: dict[str, dict[str, Any]] = {}
        for ev in record.stripped_state:
            if isinstance(ev, dict) and ev.get("state_key") == "" \
                    and isinstance(ev.get("type"), str) and isinstance(ev.get("content"), dict):
                state[ev["type"]] = ev["content"]
        out: dict[str, Any] = {"room_id": room_id, "num_joined_members": 0,
                               "room_version": record.room_version}
        for key, etype, field in (("name", "m.room.name", "name"),
                                  ("topic", "m.room.topic", "topic"),
                                  ("canonical_alias", "m.room.canonical_alias", "alias"),
                                  ("avatar_url", "m.room.avatar", "url"),
                                  ("room_type", "m.room.create", "type"),
                                  ("encryption", "m.room.encryption", "algorithm"),
                                  ("join_rule", "m.room.join_rules", "join_rule")):
            v = state.get(etype, {}).get(field)
            if isinstance(v, str) and v:
                out[key] = v
        out["world_readable"] = state.get("m.room.history_visibility", {}).get(
            "history_visibility") == "world_readable"
        out["guest_can_join"] = state.get("m.room.guest_access", {}).get(
            "guest_access") == "can_join"
        return out


def _checked(room_id: str, got: Any) -> dict[str, Any] | None:
    """The summary fields of a remote hierarchy answer, type-checked; None if unusable."""
    room = got.get("room") if isinstance(got, dict) else None
    if not isinstance(room, dict) or room.get("room_id") != room_id:
        return None
    out = {k: v for k, v in room.items() if k in _FIELDS and isinstance(v, _FIELDS[k])
           and not (isinstance(v, bool) and _FIELDS[k] is int)}
    if "allowed_room_ids" in out:
        out["allowed_room_ids"] = [r for r in out["allowed_room_ids"]
                                   if isinstance(r, str) and is_valid_room_id(r)]
    out.setdefault("num_joined_members", 0)
    out.setdefault("world_readable", False)
    out.setdefault("guest_can_join", False)
    return out


def register(app: Flask, runtime: Any) -> RoomSummaries:
    config = runtime.config
    rooms = runtime.parts["rooms"]
    summaries = RoomSummaries(config.server_name, Hierarchy(runtime.db, rooms), rooms,
                              lambda: runtime.parts.get("federation"))
    runtime.parts["room_summary"] = summaries

    def limit_unauthenticated(user_id: str | None) -> Any:
        def check() -> None:
            if user_id is None:
                runtime.ratelimiter.check("room_summary_remote", request.remote_addr or "",
                                          UNAUTHENTICATED_REMOTE)
        return check

    def resolve(target: str, via: list[str], may_ask: Any) -> tuple[str, list[str]]:
        """The room id of ``target`` and the servers to ask about it."""
        if target.startswith("!") and is_valid_room_id(target):
            return target, via
        if not target.startswith("#") or not is_valid_room_alias(target):
            raise invalid_param(f"{target!r} is not a room id or room alias")
        if server_of(target) == config.server_name:
            return resolve_alias(rooms, target), via
        queries = getattr(summaries.fed(), "queries", None)
        if queries is None:
            raise not_found(f"Room alias {target} not found")
        may_ask()
        found = queries.directory(target)   # 404 / 502 as the directory endpoint answers
        return found["room_id"], [*found.get("servers", []), *via]

    def room_summary(room_id_or_alias: str) -> Any:
        """GET /_matrix/client/v1/room_summary/{roomIdOrAlias}"""
        user_id = require_auth(allow_guest=True).user_id if extract_token() else None
        may_ask = limit_unauthenticated(user_id)
        via = [v for v in request.args.getlist("via") if v]
        room_id, via = resolve(room_id_or_alias, via, may_ask)
        return jsonify(summaries.summary(user_id, room_id, via, may_ask=may_ask))

    app.add_url_rule("/_matrix/client/v1/room_summary/<path:room_id_or_alias>",
                     "room_summary", room_summary, methods=["GET"])
    # MSC3266's unstable path, still asked by some clients
    app.add_url_rule("/_matrix/client/unstable/im.nheko.summary/summary/"
                     "<path:room_id_or_alias>", "room_summary_unstable", room_summary,
                     methods=["GET"])
    return summaries
