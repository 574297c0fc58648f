"""``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` (client-server-api "Spaces",
data/api/client-server/space_hierarchy.yaml): the rooms of a space tree, depth first, in
the spec's child order, paginated.

The walk, as Synapse does it for clients: the root must be a room this server is in and that
the user may see (403 ``M_FORBIDDEN`` otherwise).  Each room popped from the queue is
summarised from local state when a local user is joined to it, else from a remote server's
``/_matrix/federation/v1/hierarchy`` answer (asked of the ``via`` servers of the
``m.space.child`` event that led to it; an answer's children summaries are used for
non-space children without asking again).  A room the user may not see is left out with its
subtree.  Only spaces (``m.room.create`` ``type: m.space``) have children; ``max_depth``
stops the descent, ``suggested_only`` keeps suggested links only.  A page holds at most
``limit`` rooms (default and cap 50); the rest of the queue is kept server-side under the
``next_batch`` token for ``PAGINATION_TTL`` seconds, bound to the requester and the query's
parameters (any change: 400 ``M_INVALID_PARAM``, as an unknown token).

What the user may see (Synapse's rule): a join rule of ``public``, ``knock`` or
``knock_restricted``, history ``world_readable``, the user joined or invited, or a
restricted join rule naming a room the user is joined to.

Reads only; remote answers are cached for ``REMOTE_TTL`` seconds.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from flask import Flask, jsonify, request

from atrium.errors import MatrixError, invalid_param
from federation.hierarchy import OPEN_RULES, RESTRICTED_RULES, Hierarchy
from protocol.ids import is_valid_room_id, is_valid_server_name
from web.auth import require_auth
from web.http import query_bool, query_int

log = logging.getLogger(__name__)

MAX_ROOMS = 50               # rooms per page (default and cap)
MAX_VIA = 3                  # servers asked for one remote room
PAGINATION_TTL = 300.0       # s a next_batch token stays valid
MAX_SESSIONS = 10_000
REMOTE_TTL = 300.0           # s a remote hierarchy answer is reused
FAILURE_TTL = 30.0           # s no answer from any via server is remembered
MAX_REMOTE_CACHE = 1_000
REMOTE_TIMEOUT = 10.0        # s per remote server asked
_BAD_ORDER = re.compile(r"[^\x20-\x7E]")


@dataclass
class Entry:
    """One room waiting in the walk's queue."""
    room_id: str
    via: tuple[str, ...]
    depth: int
    remote: dict[str, Any] | None = None   # a summary a parent's remote answer carried


@dataclass
class Session:
    key: tuple[Any, ...]                   # requester, root, suggested_only, max_depth
    queue: list[Entry]
    processed: set[str] = field(default_factory=set)
    expires: float = 0.0


def child_order(child: dict[str, Any]) -> tuple[bool, str, int, str]:
    """The spec's "Ordering of children within a space": a valid ``order`` first (by it),
    then ``origin_server_ts``, then the child's room id."""
    content = child.get("content") if isinstance(child.get("content"), dict) else {}
    order = content.get("order")
    if not isinstance(order, str) or len(order) > 50 or _BAD_ORDER.search(order):
        order = None
    ts = child.get("origin_server_ts")
    return (order is None, order or "", ts if isinstance(ts, int) else 0,
            str(child.get("state_key", "")))


def _valid_child(ev: Any, suggested_only: bool) -> bool:
    if not isinstance(ev, dict) or ev.get("type") != "m.space.child":
        return False
    content = ev.get("content")
    if not isinstance(content, dict) or not isinstance(ev.get("state_key"), str) \
            or not is_valid_room_id(ev["state_key"]):
        return False
    via = content.get("via")
    if not isinstance(via, list) or not via:
        return False
    return not suggested_only or content.get("suggested") is True


class SpaceWalker:
    """``hierarchy`` reads local rooms (federation/hierarchy.py), ``rooms`` is the
    RoomService (memberships), ``fed()`` the federation service or None (no remote rooms:
    ``federation.enabled: false``)."""

    def __init__(self, server_name: str, hierarchy: Hierarchy, rooms: Any,
                 fed: Any = lambda: None, clock: Any = time.monotonic) -> None:
        self.server_name = server_name
        self.hierarchy = hierarchy
        self.rooms = rooms
        self.fed = fed            # () -> the federation service or None
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._remote: OrderedDict[tuple[str, bool], tuple[float, dict[str, Any] | None]] = \
            OrderedDict()
        self._lock = threading.Lock()

    # -- who may see what ---------------------------------------------------------------------
    def _joined(self, room_id: str, user_id: str) -> bool:
        return self.rooms.membership(room_id, user_id)[0] == "join"

    def _user_may_see(self, user_id: str, room_id: str, join_rule: str,
                      world_readable: bool, allowed: list[str]) -> bool:
        if join_rule in OPEN_RULES or world_readable:
            return True
        if self.rooms.membership(room_id, user_id)[0] in ("join", "invite"):
            return True
        return join_rule in RESTRICTED_RULES and any(self._joined(r, user_id) for r in allowed)

    def _local(self, room_id: str, user_id: str, suggested_only: bool
               ) -> tuple[bool, dict[str, Any] | None]:
        """(this server is in the room, the room's summary if the user may see it)."""
        view = self.hierarchy.view(room_id)
        if view is None or self.server_name not in view.joined_servers:
            return False, None
        if not self._user_may_see(user_id, room_id, view.join_rule, view.world_readable,
                                  view.allowed_room_ids()):
            return True, None
        return True, self.hierarchy.summary(view, suggested_only)

    # -- remote rooms -------------------------------------------------------------------------
    def _fetch_remote(self, room_id: str, via: tuple[str, ...], suggested_only: bool
                      ) -> dict[str, Any] | None:
        key = (room_id, suggested_only)
        now = self.clock()
        with self._lock:
            hit = self._remote.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        answer = None
        client = getattr(self.fed(), "client", None)
        for server in [v for v in via if isinstance(v, str) and is_valid_server_name(v)
                       and v != self.server_name][:MAX_VIA]:
            if client is None:
                break
            try:
                got = client.get_json(
                    server, f"/_matrix/federation/v1/hierarchy/{quote(room_id, safe='')}",
                    query={"suggested_only": "true" if suggested_only else "false"},
                    timeout=REMOTE_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - any failure: try the next server
                log.info("hierarchy of %s from %s failed: %s", room_id, server, e)
                continue
            answer = self._checked(room_id, got)
            if answer is not None:
                break
        with self._lock:
            # a failure is remembered briefly: the via servers may be back soon
            self._remote[key] = (now + (REMOTE_TTL if answer is not None else FAILURE_TTL),
                                 answer)
            self._remote.move_to_end(key)
            while len(self._remote) > MAX_REMOTE_CACHE:
                self._remote.popitem(last=False)
        return answer

    @staticmethod
    def _checked(room_id: str, got: Any) -> dict[str, Any] | None:
        """The remote answer with what a client may be shown, or None when it is unusable."""
        if not isinstance(got, dict) or not isinstance(got.get("room"), dict) \
                or got["room"].get("room_id") != room_id:
            return None
        children = [c for c in got.get("children") or [] if isinstance(c, dict)
                    and isinstance(c.get("room_id"), str) and is_valid_room_id(c["room_id"])] \
            if isinstance(got.get("children"), list) else []
        inaccessible = [r for r in got.get("inaccessible_children") or []
                        if isinstance(r, str)] \
            if isinstance(got.get("inaccessible_children"), list) else []
        return {"room": got["room"], "children": children, "inaccessible": inaccessible}

    def _remote_entry(self, user_id: str, summary: dict[str, Any]) -> bool:
        """Whether the user may see a room known only from a remote summary."""
        jr = summary.get("join_rule")
        join_rule = jr if isinstance(jr, str) else "invite"
        allowed = summary.get("allowed_room_ids")
        allowed = [r for r in allowed if isinstance(r, str)] if isinstance(allowed, list) \
            else []
        return self._user_may_see(user_id, str(summary.get("room_id")), join_rule,
                                  summary.get("world_readable") is True, allowed)

    @staticmethod
    def _clean(summary: dict[str, Any], suggested_only: bool) -> dict[str, Any]:
        out = dict(summary)
        kids = summary.get("children_state")
        out["children_state"] = [c for c in kids if _valid_child(c, suggested_only)] \
            if isinstance(kids, list) and summary.get("room_type") == "m.space" else []
        if not isinstance(out.get("num_joined_members"), int):
            out["num_joined_members"] = 0
        for flag in ("world_readable", "guest_can_join"):
            out[flag] = out.get(flag) is True
        return out

    # -- the walk -----------------------------------------------------------------------------
    def page(self, user_id: str, root: str, *, suggested_only: bool, max_depth: int | None,
             limit: int | None, token: str | None) -> dict[str, Any]:
        _, root_summary = self._local(root, user_id, suggested_only)
        if root_summary is None:
            raise MatrixError(403, "M_FORBIDDEN",
                              f"User {user_id} not in room {root}, and room previews are "
                              "disabled")
        key = (user_id, root, suggested_only, max_depth)
        if token is not None:
            session = self._take(token, key)
        else:
            session = Session(key, [Entry(root, (), 0)])
        limit = MAX_ROOMS if limit is None else min(limit, MAX_ROOMS)
        rooms: list[dict[str, Any]] = []
        queue, processed = session.queue, session.processed
        while queue and len(rooms) < limit:
            entry = queue.pop()
            if entry.room_id in processed:
                continue
            processed.add(entry.room_id)
            known, summary = self._local(entry.room_id, user_id, suggested_only)
            children_summaries: dict[str, dict[str, Any]] = {}
            inaccessible: set[str] = set()
            if not known:
                summary = None
                if entry.remote is not None and (
                        entry.remote.get("room_type") != "m.space"
                        or (max_depth is not None and entry.depth >= max_depth)):
                    summary = entry.remote
                else:
                    got = self._fetch_remote(entry.room_id, entry.via, suggested_only)
                    if got is not None:
                        summary = got["room"]
                        children_summaries = {c["room_id"]: c for c in got["children"]}
                        inaccessible = set(got["inaccessible"])
                if summary is not None and not self._remote_entry(user_id, summary):
                    summary = None
                if summary is not None:
                    summary = self._clean(summary, suggested_only)
            if summary is None:
                continue
            if summary.get("room_type") != "m.space":
                summary["children_state"] = []
            rooms.append(summary)
            if max_depth is None or entry.depth < max_depth:
                kids = sorted(summary["children_state"], key=child_order)
                for child in reversed(kids):
                    cid = child["state_key"]
                    if cid in inaccessible or cid in processed:
                        continue
                    via = tuple(v for v in child["content"]["via"] if isinstance(v, str))
                    queue.append(Entry(cid, via, entry.depth + 1, children_summaries.get(cid)))
        out: dict[str, Any] = {"rooms": rooms}
        if queue:
            out["next_batch"] = self._keep(session)
        return out

    # -- pagination sessions ------------------------------------------------------------------
    def _keep(self, session: Session) -> str:
        token = secrets.token_urlsafe(12)
        session.expires = self.clock() + PAGINATION_TTL
        with self._lock:
            self._sessions[token] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return token

    def _take(self, token: str, key: tuple[Any, ...]) -> Session:
        with self._lock:
            session = self._sessions.get(token)
            if session is None or session.expires < self.clock() or session.key != key:
                raise invalid_param("Unknown pagination token")
            # a token may be used again (a client retrying a page): copy, never consume
            return Session(session.key, list(session.queue), set(session.processed))


def register(app: Flask, runtime: Any) -> SpaceWalker:
    rooms = runtime.parts["rooms"]
    walker = SpaceWalker(runtime.config.server_name, Hierarchy(runtime.db, rooms), rooms,
                         lambda: runtime.parts.get("federation"))
    runtime.parts["space_hierarchy"] = walker

    @app.get("/_matrix/client/v1/rooms/<room_id>/hierarchy")
    def space_hierarchy(room_id: str) -> Any:
        """GET /_matrix/client/v1/rooms/{roomId}/hierarchy"""
        req = require_auth()
        suggested_only = query_bool("suggested_only")
        limit = query_int("limit", minimum=1, maximum=MAX_ROOMS)
        max_depth = query_int("max_depth", minimum=0)
        token = request.args.get("from")
        if not is_valid_room_id(room_id):
            raise MatrixError(403, "M_FORBIDDEN", "Not a room id")
        return jsonify(walker.page(req.user_id, room_id, suggested_only=suggested_only,
                                   max_depth=max_depth, limit=limit, token=token))

    return walker
