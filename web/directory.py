"""Room aliases and the published room directory (client-server-api "Room aliases",
"Published room directory"): ``/directory/room/{roomAlias}``, ``/rooms/{roomId}/aliases``,
``/directory/list/room/{roomId}`` and ``/publicRooms``.  Aliases and room lists of other
servers (``GET /directory/room/{roomAlias}`` of a remote alias, ``/publicRooms?server=``) are
asked over federation through ``fed.queries`` (federation/remote_queries.py); the local
listing is handed to the federation side as ``runtime.parts["public_rooms"]``.

Who may do what:

* create an alias: a joined member of the room, if ``alias_creation_rules`` allow it
  (server admins always);
* delete an alias: its creator, a room admin (power to send ``m.room.canonical_alias``) or a
  server admin;
* publish a room: a joined member with power to send ``m.room.canonical_alias``, if
  ``room_list_publication_rules`` allow it; unpublish: the same power.  Server admins always.

The rule lists follow Synapse's documented semantics: globs over user id, alias and room id;
the first matching rule decides; no match denies; no list configured allows everything.
"""
from __future__ import annotations

import base64
import functools
import json
import re
from functools import lru_cache
from typing import Any, Iterable, Mapping

from flask import Blueprint, Flask, jsonify, request

from atrium.config import Config, DirectoryRule
from atrium.errors import MatrixError, invalid_param
from protocol.ids import is_valid_room_alias, is_valid_room_id, is_valid_server_name, server_of
from protocol.power_levels import get_event_level, get_user_level
from store.directory import DirectoryStore, PublishedRoom
from web.auth import Requester, require_auth
from web.http import check_type, json_body, query_int, require
from web.room_service import RoomService

from actors.room_messages import EventSpec

P = "/_matrix/client/v3"

#: Most rooms one /publicRooms page returns (also the page size when no limit is given).
MAX_PAGE = 500


# ---------------------------------------------------------------------- rules and power
@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.IGNORECASE | re.DOTALL)


def _rules_allow(rules: tuple[DirectoryRule, ...] | None, user_id: str, room_id: str,
                 aliases: Iterable[str]) -> bool:
    """Synapse's rule-list semantics.  A rule's ``alias`` glob must match one of the
    room's aliases, except ``*`` which also matches a room without any."""
    if rules is None:
        return True
    aliases = list(aliases)
    for rule in rules:
        if not (_glob(rule.user_id).match(user_id) and _glob(rule.room_id).match(room_id)):
            continue
        if rule.alias != "*" and not any(_glob(rule.alias).match(a) for a in aliases):
            continue
        return rule.action == "allow"
    return False


def alias_creation_allowed(config: Config, user_id: str, room_id: str, alias: str,
                           is_admin: bool = False) -> bool:
    """``alias_creation_rules`` (server admins bypass them)."""
    return is_admin or _rules_allow(config.alias_creation_rules, user_id, room_id, [alias])


def publication_allowed(config: Config, user_id: str, room_id: str, aliases: Iterable[str],
                        is_admin: bool = False) -> bool:
    """``room_list_publication_rules`` (server admins bypass them); ``aliases`` = the
    room's local aliases plus its canonical alias and alt_aliases."""
    return is_admin or _rules_allow(config.room_list_publication_rules, user_id, room_id,
                                    aliases)


def _content(svc: RoomService, room_id: str, etype: str) -> dict[str, Any] | None:
    se = svc.current_state_event(room_id, etype, "")
    rv = svc.room_version(room_id)
    if se is None or rv is None:
        return None
    c = svc.events.visible_form(se, rv).get("content")
    return c if isinstance(c, dict) else {}


def can_send_state(svc: RoomService, room_id: str, user_id: str, etype: str) -> bool:
    """Whether ``user_id``'s power in the room's current state reaches the level of the
    state event type ``etype`` (a read: the room actor still authorises any real send)."""
    rv = svc.require_room(room_id)
    create = svc.current_state_event(room_id, "m.room.create", "")
    if create is None:
        return False
    pl = _content(svc, room_id, "m.room.power_levels")
    return get_user_level(rv, create.event, pl, user_id) >= get_event_level(
        pl, etype, True, rv=rv)


def _room_admin(svc: RoomService, room_id: str, user_id: str) -> bool:
    return can_send_state(svc, room_id, user_id, "m.room.canonical_alias")


def _canonical_aliases(content: Mapping[str, Any] | None) -> list[str]:
    if not content:
        return []
    out = [content["alias"]] if isinstance(content.get("alias"), str) else []
    alt = content.get("alt_aliases")
    if isinstance(alt, list):
        out.extend(a for a in alt if isinstance(a, str))
    return out


def room_aliases_for_rules(svc: RoomService, directory: DirectoryStore,
                           room_id: str) -> list[str]:
    aliases = directory.aliases_of_room(room_id)
    aliases += _canonical_aliases(_content(svc, room_id, "m.room.canonical_alias"))
    return list(dict.fromkeys(aliases))


# ---------------------------------------------------------------------- canonical alias
def validate_canonical_alias(svc: RoomService, room_id: str, content: Any) -> None:
    """Check an ``m.room.canonical_alias`` content a client sends (client-server-api
    PUT state: 400 ``M_INVALID_PARAM`` for bad syntax, 400 ``M_BAD_ALIAS`` for a local alias
    that is unknown or points to another room).  Aliases of other servers cannot be
    resolved until federation exists, so only their syntax is checked."""
    if not isinstance(content, Mapping):
        return
    aliases: list[str] = []
    alias = content.get("alias")
    if alias is not None:
        if not isinstance(alias, str):
            raise invalid_param("'alias' must be a string")
        aliases.append(alias)
    alt = content.get("alt_aliases")
    if alt is not None:
        if not isinstance(alt, list) or not all(isinstance(a, str) for a in alt):
            raise invalid_param("'alt_aliases' must be a list of strings")
        aliases.extend(alt)
    directory = DirectoryStore(svc.db)
    for a in aliases:
        if not is_valid_room_alias(a):
            raise invalid_param(f"Invalid room alias {a!r}")
        if server_of(a) != svc.config.server_name:
            continue
        row = directory.get_alias(a)
        if row is None or row.room_id != room_id:
            raise MatrixError(400, "M_BAD_ALIAS", f"The alias {a} does not point to this room")


# ---------------------------------------------------------------------- public list
def _token(direction: str, room: PublishedRoom) -> str:
    raw = json.dumps([direction, room.joined, room.room_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_token(token: str) -> tuple[str, tuple[int, str]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, joined, room_id = json.loads(raw)
        if direction in ("n", "p") and isinstance(joined, int) and isinstance(room_id, str):
            return direction, (-joined, room_id)
    except (ValueError, TypeError):
        pass
    raise invalid_param("Invalid pagination token")


def _summary(room: PublishedRoom, contents: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    def c(etype: str) -> dict[str, Any]:
        return contents.get(room.state.get(etype, ""), {})

    out: dict[str, Any] = {"room_id": room.room_id, "num_joined_members": room.joined}
    for key, etype, field in (("name", "m.room.name", "name"),
                              ("topic", "m.room.topic", "topic"),
                              ("canonical_alias", "m.room.canonical_alias", "alias"),
                              ("avatar_url", "m.room.avatar", "url"),
                              ("room_type", "m.room.create", "type")):
        v = c(etype).get(field)
        if isinstance(v, str) and v:
            out[key] = v
    out["world_readable"] = c("m.room.history_visibility").get(
        "history_visibility") == "world_readable"
    out["guest_can_join"] = c("m.room.guest_access").get("guest_access") == "can_join"
    jr = c("m.room.join_rules").get("join_rule")
    out["join_rule"] = jr if isinstance(jr, str) else "public"
    return out


def _listable(summary: Mapping[str, Any]) -> bool:
    """Published rooms nobody could enter or read are left out (the spec's warning lets
    servers filter; an invite-only room that is not world-readable is useless here)."""
    return summary["join_rule"] in ("public", "knock", "knock_restricted") \
        or summary["world_readable"]


def _matches(summary: Mapping[str, Any], term: str | None,
             room_types: list[str | None] | None) -> bool:
    if room_types is not None and summary.get("room_type") not in room_types:
        return False
    if term:
        t = term.casefold()
        return any(t in str(summary.get(k, "")).casefold()
                   for k in ("name", "topic", "canonical_alias"))
    return True


def list_public_rooms(svc: RoomService, directory: DirectoryStore, *, limit: int | None,
                      since: str | None, term: str | None = None,
                      room_types: list[str | None] | None = None) -> dict[str, Any]:
    """One page of the published rooms, most joined members first; ``since`` is a
    next_batch/prev_batch token (keyset pagination over (joined desc, room id))."""
    rooms = directory.published_rooms()
    ids = [eid for r in rooms for eid in r.state.values()]
    evs = svc.events.get_events(ids)
    contents = {eid: (se.event.get("content") if se.redacted_by is None else None) or {}
                for eid, se in evs.items()}
    summaries = [s for s in (_summary(r, contents) for r in rooms)
                 if _listable(s) and _matches(s, term, room_types)]
    keys = [(-s["num_joined_members"], s["room_id"]) for s in summaries]
    page = limit if limit is not None and limit > 0 else MAX_PAGE
    page = min(page, MAX_PAGE)
    if since is None:
        start, end = 0, min(page, len(summaries))
    else:
        direction, key = _parse_token(since)
        if direction == "n":
            start = next((i for i, k in enumerate(keys) if k > key), len(keys))
            end = min(start + page, len(keys))
        else:
            end = next((i for i, k in enumerate(keys) if k >= key), len(keys))
            start = max(0, end - page)
    chunk = summaries[start:end]
    out: dict[str, Any] = {"chunk": chunk, "total_room_count_estimate": len(summaries)}
    pub = [PublishedRoom(s["room_id"], s["num_joined_members"], {}) for s in chunk]
    if chunk and end < len(summaries):
        out["next_batch"] = _token("n", pub[-1])
    if chunk and start > 0:
        out["prev_batch"] = _token("p", pub[0])
    return out


def _remote_server(server_name: str, remote: Any) -> str | None:
    """The ``server`` query parameter when it names another server (None: ours).  Without
    federation (``remote`` None) another server's list is 404, as before federation."""
    server = request.args.get("server")
    if server is None or server == server_name:
        return None
    if not is_valid_server_name(server):
        raise invalid_param(f"Invalid server name {server!r}")
    if remote is None:
        raise MatrixError(404, "M_NOT_FOUND", f"Cannot fetch the room directory of {server}: "
                          "federation is switched off on this server")
    return server


def remote_queries(runtime: Any) -> Any:
    """``fed.queries`` (federation/remote_queries.py) at request time, or None when
    federation is off."""
    return getattr(runtime.parts.get("federation"), "queries", None)


# ---------------------------------------------------------------------- routes
def _local_alias(alias: str, server_name: str) -> str:
    if not is_valid_room_alias(alias) or alias[1:].startswith(":") \
            or any(ch.isspace() for ch in alias):
        raise invalid_param("Room alias invalid")
    if server_of(alias) != server_name:
        raise invalid_param("Room alias must be on this server")
    return alias


def register(app: Flask, runtime: Any) -> None:
    svc: RoomService = runtime.parts["rooms"]
    directory: DirectoryStore = runtime.parts["directory"]
    config: Config = runtime.config
    # the listing, for the federation side (federation/queries.py serves /publicRooms)
    runtime.parts["public_rooms"] = functools.partial(list_public_rooms, svc, directory)
    bp = Blueprint("directory", __name__)

    def room(room_id: str) -> None:
        if not is_valid_room_id(room_id):
            raise invalid_param(f"Invalid room id {room_id!r}")
        svc.require_room(room_id)

    def joined(req: Requester, room_id: str) -> bool:
        return svc.membership(room_id, req.user_id)[0] == "join"

    @bp.put(f"{P}/directory/room/<path:room_alias>")
    def put_alias(room_alias: str) -> Any:
        """PUT /_matrix/client/v3/directory/room/{roomAlias}"""
        req = require_auth()
        body = json_body()
        alias = _local_alias(room_alias, config.server_name)
        room_id = require(body, "room_id", str)
        room(room_id)
        if not req.is_admin and not joined(req, room_id):
            raise MatrixError(403, "M_FORBIDDEN", "You are not joined to this room")
        if not alias_creation_allowed(config, req.user_id, room_id, alias, req.is_admin):
            raise MatrixError(403, "M_FORBIDDEN", "Not allowed to create this alias")
        if not directory.create_alias(alias, room_id, req.user_id):
            raise MatrixError(409, "M_ROOM_IN_USE", f"Room alias {alias} already exists")
        return jsonify({})

    @bp.get(f"{P}/directory/room/<path:room_alias>")
    def get_alias(room_alias: str) -> Any:
        """GET /_matrix/client/v3/directory/room/{roomAlias}"""
        if not is_valid_room_alias(room_alias):
            raise invalid_param("Room alias invalid")
        if server_of(room_alias) != config.server_name:
            remote = remote_queries(runtime)
            if remote is not None:
                return jsonify(remote.directory(room_alias))
        row = directory.get_alias(room_alias) \
            if server_of(room_alias) == config.server_name else None
        if row is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Room alias {room_alias} not found")
        return jsonify({"room_id": row.room_id, "servers": [config.server_name]})

    @bp.delete(f"{P}/directory/room/<path:room_alias>")
    def delete_alias(room_alias: str) -> Any:
        """DELETE /_matrix/client/v3/directory/room/{roomAlias}"""
        req = require_auth()
        alias = _local_alias(room_alias, config.server_name)
        row = directory.get_alias(alias)
        if row is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
        if not (req.is_admin or row.creator == req.user_id
                or (svc.room_version(row.room_id) is not None
                    and _room_admin(svc, row.room_id, req.user_id))):
            raise MatrixError(403, "M_FORBIDDEN", "You may not delete this alias")
        directory.delete_alias(alias)
        _drop_from_canonical(svc, row.room_id, alias, req.user_id)
        return jsonify({})

    @bp.get(f"{P}/rooms/<room_id>/aliases")
    def local_aliases(room_id: str) -> Any:
        """GET /_matrix/client/v3/rooms/{roomId}/aliases"""
        req = require_auth(allow_guest=True)
        room(room_id)
        hv = (_content(svc, room_id, "m.room.history_visibility") or {}).get(
            "history_visibility")
        if not (req.is_admin or joined(req, room_id) or hv == "world_readable"):
            raise MatrixError(403, "M_FORBIDDEN", "You are not a member of the room")
        return jsonify({"aliases": directory.aliases_of_room(room_id)})

    @bp.get(f"{P}/directory/list/room/<room_id>")
    def get_visibility(room_id: str) -> Any:
        """GET /_matrix/client/v3/directory/list/room/{roomId}"""
        if not is_valid_room_id(room_id):
            raise invalid_param(f"Invalid room id {room_id!r}")
        public = directory.is_public(room_id)
        if public is None:
            raise MatrixError(404, "M_NOT_FOUND", "Room not found")
        return jsonify({"visibility": "public" if public else "private"})

    @bp.put(f"{P}/directory/list/room/<room_id>")
    def put_visibility(room_id: str) -> Any:
        """PUT /_matrix/client/v3/directory/list/room/{roomId}"""
        req = require_auth()
        body = json_body(optional=True)
        visibility = check_type(body, "visibility", str, default="public")
        if visibility not in ("public", "private"):
            raise invalid_param("visibility must be 'public' or 'private'")
        room(room_id)
        if not req.is_admin:
            if not joined(req, room_id) or not _room_admin(svc, room_id, req.user_id):
                raise MatrixError(403, "M_FORBIDDEN",
                                  "You need power to set the canonical alias to do this")
            if visibility == "public" and not publication_allowed(
                    config, req.user_id, room_id,
                    room_aliases_for_rules(svc, directory, room_id)):
                raise MatrixError(403, "M_FORBIDDEN", "Not allowed to publish this room")
        directory.set_public(room_id, visibility == "public")
        return jsonify({})

    @bp.get(f"{P}/publicRooms")
    def get_public_rooms() -> Any:
        """GET /_matrix/client/v3/publicRooms"""
        if request.headers.get("Authorization") or request.args.get("access_token"):
            require_auth(allow_guest=True)   # a token, if sent, must be valid
        remote = remote_queries(runtime)
        server = _remote_server(config.server_name, remote)
        limit = query_int("limit", None, minimum=0)
        if server is not None:
            return jsonify(remote.public_rooms(server, limit=limit,
                                               since=request.args.get("since") or None))
        return jsonify(list_public_rooms(svc, directory, limit=limit,
                                         since=request.args.get("since") or None))

    @bp.post(f"{P}/publicRooms")
    def post_public_rooms() -> Any:
        """POST /_matrix/client/v3/publicRooms"""
        require_auth(allow_guest=True)
        body = json_body(optional=True)
        remote = remote_queries(runtime)
        server = _remote_server(config.server_name, remote)
        limit = check_type(body, "limit", int)
        since = check_type(body, "since", str)
        flt = check_type(body, "filter", dict, default={}) or {}
        term = check_type(flt, "generic_search_term", str)
        room_types = check_type(flt, "room_types", list)
        if room_types is not None and not all(t is None or isinstance(t, str)
                                              for t in room_types):
            raise invalid_param("room_types must be a list of strings or null")
        all_networks = check_type(body, "include_all_networks", bool, default=False)
        instance = check_type(body, "third_party_instance_id", str)
        if instance is not None and all_networks:
            raise invalid_param("third_party_instance_id cannot be used with "
                                "include_all_networks")
        if server is not None:
            search = {k: v for k, v in (("generic_search_term", term),
                                        ("room_types", room_types)) if v is not None}
            return jsonify(remote.public_rooms(
                server, limit=limit, since=since or None, search_filter=search or None,
                include_all_networks=all_networks, third_party_instance_id=instance))
        if instance is not None:
            # no application services bridge networks here: that network has no rooms
            return jsonify({"chunk": [], "total_room_count_estimate": 0})
        return jsonify(list_public_rooms(svc, directory, limit=limit, since=since or None,
                                         term=term, room_types=room_types))

    app.register_blueprint(bp)


def _drop_from_canonical(svc: RoomService, room_id: str, alias: str, user_id: str) -> None:
    """After deleting an alias, remove it from the room's canonical alias event if the
    user may change that event (the spec lets the deletion succeed either way)."""
    if svc.room_version(room_id) is None:
        return
    content = _content(svc, room_id, "m.room.canonical_alias")
    if not content or alias not in _canonical_aliases(content):
        return
    new = dict(content)
    if new.get("alias") == alias:
        new.pop("alias")
    if isinstance(new.get("alt_aliases"), list):
        new["alt_aliases"] = [a for a in new["alt_aliases"] if a != alias]
        if not new["alt_aliases"]:
            new.pop("alt_aliases")
    if not can_send_state(svc, room_id, user_id, "m.room.canonical_alias") \
            or svc.membership(room_id, user_id)[0] != "join":
        return
    try:
        svc.send(room_id, EventSpec("m.room.canonical_alias", user_id, new, ""))
    except MatrixError:
        pass
