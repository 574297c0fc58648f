"""The user directory's storage (client-server-api "User Directory"): who may be found,
the words they are found by, and the search itself.

Who is in ``user_directory``: local users from registration on (their global profile;
deactivated, guest and support users never), and users of other servers seen joined to a room
this server is in (the profile of their membership event; a public room's wins over a
private room's per-room name).  Whether a user may be found by a given searcher is decided
at query time from room state: they are joined to a *public* room this server is in (join
rule ``public`` or history ``world_readable``: the ``in_public_room`` flag), or they are
joined to a room the searcher is joined to (``current_state``).  With
``search_all_users``, every local user and every remote user joined to a room this server
is in (``in_room``).

Kept current by following the events stream (store/search.py's :class:`StreamFollower`):
a membership, join-rule or history-visibility event recomputes, from current state, the
room's row in ``user_directory_rooms`` (is a local user joined? is it public?) and the
flags and profiles of the users concerned — of every member when the room entered or left
the server or changed publicity.  Everything is recomputed from state, never from the
event alone, so handling an event twice or late converges to the same rows.  Profile
changes and deactivations of local users arrive through the accounts hooks.

Matching: names and user ids are broken into normalised words (case-folded, accents
dropped, NFKC) and each word of the search term must prefix-match one (FTS5 prefix
queries on SQLite, ``tsquery`` ``:*`` on PostgreSQL).  A term that looks like a user id
(``@…`` or with ``:``) matches user ids by prefix.  Ranking: (local users first with
``prefer_local_users``), then the whole term equal to the display name or localpart, then
a prefix of either, then the rest; then users with a display name, with an avatar, by name.
"""
from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from store.database import POSTGRES, Database, Txn
from store.search import run_each

log = logging.getLogger(__name__)

MEMBER = "m.room.member"
_TYPES = (MEMBER, "m.room.join_rules", "m.room.history_visibility")
_WORD = re.compile(r"[^\W_]+")
_CHUNK = 200
MAX_WORDS = 10               # words of a search term used
MAX_WORD = 100               # characters of a word kept (PostgreSQL's lexemes are bounded)
MAX_INDEXED = 64             # words a user is indexed under


def words(text: str) -> list[str]:
    """The normalised words of ``text`` (what is indexed and what is searched for)."""
    t = unicodedata.normalize("NFKD", text.casefold())
    t = "".join(c for c in t if not unicodedata.combining(c))
    return [w[:MAX_WORD] for w in _WORD.findall(unicodedata.normalize("NFKC", t))]


def localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


def index_words(user_id: str, display_name: str | None) -> list[str]:
    """The words a user is found by: the localpart's (and, split by punctuation, the
    localpart joined up: ``user-71`` is found as ``user71`` too) and the display name's."""
    lp = words(localpart(user_id))
    out = lp + (["".join(lp)[:MAX_WORD]] if len(lp) > 1 else []) + words(display_name or "")
    return list(dict.fromkeys(out))[:MAX_INDEXED]


def _chunks(seq: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), _CHUNK):
        yield seq[i:i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(frozen=True)
class SearchOptions:
    all_users: bool = False
    prefer_local: bool = False
    exclude_remote: bool = False


class DirectoryStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.pg = db.engine == POSTGRES
        self.suffix = ":" + server_name

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(self.suffix)

    # ------------------------------------------------------------------ position
    def position(self) -> tuple[int, bool]:
        r = self.db.run("user_dir_position", lambda t: t.query_one(
            "SELECT stream_ordering, built FROM user_directory_position WHERE id = 1"))
        return (int(r[0]), bool(r[1])) if r else (0, False)

    def save_position(self, position: int) -> None:
        self.db.run("user_dir_save_position", lambda t: t.execute(
            "UPDATE user_directory_position SET stream_ordering = ? WHERE id = 1",
            (position,)), write=True)

    # ------------------------------------------------------------------ rows
    def _upsert(self, txn: Txn, user_id: str, display_name: str | None,
                avatar_url: str | None, profile_public: int) -> None:
        lp_norm = " ".join(words(localpart(user_id)))
        dn_norm = " ".join(words(display_name or ""))
        toks = index_words(user_id, display_name)
        cols = ("user_id, display_name, avatar_url, is_local, localpart_norm, display_norm,"
                " profile_public")
        args = [user_id, display_name, avatar_url, int(self.is_local(user_id)), lp_norm,
                dn_norm, profile_public]
        update = ("display_name = excluded.display_name, avatar_url = excluded.avatar_url,"
                  " display_norm = excluded.display_norm,"
                  " profile_public = excluded.profile_public")
        if self.pg:
            txn.execute(f"INSERT INTO user_directory ({cols}, vector) VALUES"
                        " (?, ?, ?, ?, ?, ?, ?, ?::tsvector) ON CONFLICT (user_id) DO UPDATE"
                        f" SET {update}, vector = excluded.vector",
                        [*args, " ".join(f"'{w}'" for w in toks)])
            return
        row_id = txn.query_value(
            f"INSERT INTO user_directory ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (user_id) DO UPDATE SET {update} RETURNING id", args)
        txn.execute("DELETE FROM user_directory_search WHERE rowid = ?", (row_id,))
        txn.execute("INSERT INTO user_directory_search (rowid, value) VALUES (?, ?)",
                    (row_id, " ".join(toks)))

    def delete_user_txn(self, txn: Txn, user_id: str) -> None:
        """Take a user out of the directory (accounts' deactivation hook)."""
        if not self.pg:
            txn.execute("DELETE FROM user_directory_search WHERE rowid IN"
                        " (SELECT id FROM user_directory WHERE user_id = ?)", (user_id,))
        txn.execute("DELETE FROM user_directory WHERE user_id = ?", (user_id,))

    def refresh_local_txn(self, txn: Txn, user_ids: Sequence[str], *,
                          only_missing: bool = False) -> None:
        """Local users' rows from their accounts and global profiles (deactivated, guest
        and support users: none).  ``only_missing``: leave existing rows alone."""
        for chunk in _chunks(list(user_ids)):
            todo = list(chunk)
            if only_missing:
                have = {r[0] for r in txn.query(
                    f"SELECT user_id FROM user_directory WHERE user_id IN ({_marks(len(todo))})",
                    todo)}
                todo = [u for u in todo if u not in have]
            if not todo:
                continue
            rows = txn.query(
                "SELECT u.name, p.displayname, p.avatar_url FROM users u"
                " LEFT JOIN profiles p ON p.user_id = u.name"
                f" WHERE u.name IN ({_marks(len(todo))}) AND u.deactivated = 0"
                " AND u.is_guest = 0 AND (u.user_type IS NULL OR u.user_type <> 'support')",
                todo)
            for user_id, dn, av in rows:
                self._upsert(txn, user_id, dn, av, 0)
            for user_id in set(todo) - {r[0] for r in rows}:
                self.delete_user_txn(txn, user_id)

    def refresh_local(self, user_id: str) -> None:
        """A local user's profile changed: their row follows (if they are listed)."""
        self.db.run("user_dir_profile", lambda t: self.refresh_local_txn(t, [user_id]),
                    write=True)

    # ------------------------------------------------------------------ following rooms
    def step(self, frm: int, upto: int, batch: int) -> tuple[int, bool]:
        """Handle the membership / join-rule / history-visibility events in (frm, upto]
        (at most ``batch``); the position reached, saved with the rows when any."""
        rows = self.db.run("user_dir_read", lambda t: t.query(
            "SELECT stream_ordering, room_id, type, state_key FROM events"
            " WHERE stream_ordering > ? AND stream_ordering <= ?"
            f" AND type IN ({_marks(len(_TYPES))}) AND outlier = 0 AND rejection IS NULL"
            " AND soft_failed = 0 ORDER BY stream_ordering LIMIT ?",
            (frm, upto, *_TYPES, batch)))
        reached = int(rows[-1][0]) if len(rows) == batch else upto
        if not rows:
            return reached, False
        rooms: dict[str, None] = {}
        members: dict[str, dict[str, None]] = {}
        for _, room_id, etype, skey in rows:
            if etype != MEMBER or self.is_local(skey or ""):
                rooms[room_id] = None
            if etype == MEMBER and isinstance(skey, str):
                members.setdefault(room_id, {})[skey] = None
        todo = list(dict.fromkeys([*rooms, *members]))

        def _room(txn: Txn, room_id: str) -> None:
            if room_id in rooms and self._room_txn(txn, room_id):
                self._members_txn(txn, room_id, None)
            elif room_id in members:
                self._members_txn(txn, room_id, list(members[room_id]))

        def _t(txn: Txn) -> None:
            for room_id in todo:
                _room(txn, room_id)
            txn.execute("UPDATE user_directory_position SET stream_ordering = ? WHERE id = 1",
                        (reached,))

        try:
            self.db.run("user_dir_step", _t, write=True)
        except Exception:  # noqa: BLE001 - find the room at fault, keep the rest
            log.warning("user directory: events %d..%d failed; room by room", frm, reached)
            run_each(self.db, "user_dir_room", _room, todo)
            self.save_position(reached)
        return reached, True

    def _room_txn(self, txn: Txn, room_id: str) -> bool:
        """Recompute the room's row (present while a local user is joined; public or
        not); whether it changed."""
        n = len(self.suffix)
        joined = txn.query_one(
            "SELECT 1 FROM current_state WHERE room_id = ? AND type = ? AND membership = 'join'"
            " AND substr(state_key, length(state_key) - ? + 1) = ? LIMIT 1",
            (room_id, MEMBER, n, self.suffix)) is not None
        before = txn.query_value("SELECT is_public FROM user_directory_rooms WHERE room_id = ?",
                                 (room_id,))
        if not joined:
            if before is None:
                return False
            txn.execute("DELETE FROM user_directory_rooms WHERE room_id = ?", (room_id,))
            return True
        public = False
        for etype, raw in txn.query(
                "SELECT c.type, e.json FROM current_state c JOIN events e"
                " ON e.event_id = c.event_id WHERE c.room_id = ? AND c.state_key = ''"
                " AND c.type IN ('m.room.join_rules', 'm.room.history_visibility')",
                (room_id,)):
            content = _content(raw)
            if etype == "m.room.join_rules" and content.get("join_rule") == "public":
                public = True
            if etype == "m.room.history_visibility" \
                    and content.get("history_visibility") == "world_readable":
                public = True
        if before is not None and bool(before) == public:
            return False
        txn.execute("INSERT INTO user_directory_rooms (room_id, is_public) VALUES (?, ?)"
                    " ON CONFLICT (room_id) DO UPDATE SET is_public = excluded.is_public",
                    (room_id, int(public)))
        return True

    def _members_txn(self, txn: Txn, room_id: str, user_ids: list[str] | None) -> None:
        """Bring the rows and flags of the room's members (``None``: all) up to date."""
        public = txn.query_value("SELECT is_public FROM user_directory_rooms WHERE room_id = ?",
                                 (room_id,))
        sql = ("SELECT c.state_key, c.membership, e.json FROM current_state c"
               " LEFT JOIN events e ON e.event_id = c.event_id"
               " WHERE c.room_id = ? AND c.type = ?")
        if user_ids is None:
            found = txn.query(sql, (room_id, MEMBER))
        else:
            found = []
            for chunk in _chunks(user_ids):
                found.extend(txn.query(sql + f" AND c.state_key IN ({_marks(len(chunk))})",
                                       (room_id, MEMBER, *chunk)))
        everyone = [r[0] for r in found]
        self.refresh_local_txn(txn, [u for u in everyone if self.is_local(u)],
                               only_missing=True)
        remote = [(u, _content(raw)) for u, membership, raw in found
                  if not self.is_local(u) and membership == "join"]
        if public is not None and remote:
            self._remote_profiles_txn(txn, remote, bool(public))
        self._flags_txn(txn, everyone)

    def _remote_profiles_txn(self, txn: Txn, remote: list[tuple[str, dict[str, Any]]],
                             public: bool) -> None:
        """Remote members' profiles from their join events in a room this server is in;
        a private room's does not replace one taken from a public room the user is still
        in (a per-room name stays in its room)."""
        current: dict[str, tuple[Any, Any, int, int]] = {}
        for chunk in _chunks([u for u, _ in remote]):
            for u, dn, av, pub, in_pub in txn.query(
                    "SELECT user_id, display_name, avatar_url, profile_public, in_public_room"
                    f" FROM user_directory WHERE user_id IN ({_marks(len(chunk))})", chunk):
                current[u] = (dn, av, int(pub), int(in_pub))
        for user_id, content in remote:
            dn = content.get("displayname")
            av = content.get("avatar_url")
            dn = dn.replace("\x00", "") if isinstance(dn, str) else None
            av = av.replace("\x00", "") if isinstance(av, str) else None
            have = current.get(user_id)
            if have is not None and (have[2] and have[3] and not public
                                     or have[:3] == (dn, av, int(public))):
                continue
            self._upsert(txn, user_id, dn, av, int(public))

    def _flags_txn(self, txn: Txn, user_ids: Sequence[str]) -> None:
        joined = ("SELECT 1 FROM current_state m JOIN user_directory_rooms r"
                  " ON r.room_id = m.room_id WHERE m.state_key = user_directory.user_id"
                  " AND m.type = 'm.room.member' AND m.membership = 'join'")
        for chunk in _chunks(list(dict.fromkeys(user_ids))):
            txn.execute(
                f"UPDATE user_directory SET in_room = CASE WHEN EXISTS ({joined}) THEN 1"
                f" ELSE 0 END, in_public_room = CASE WHEN EXISTS ({joined}"
                " AND r.is_public = 1) THEN 1 ELSE 0 END"
                f" WHERE user_id IN ({_marks(len(chunk))})", chunk)

    # ------------------------------------------------------------------ first build
    def build_plan(self) -> tuple[list[str], list[str]]:
        """The first build's plan: every local user, and every room with a local member."""
        n = len(self.suffix)

        def _q(txn: Txn) -> tuple[list[str], list[str]]:
            users = [r[0] for r in txn.query("SELECT name FROM users WHERE deactivated = 0")]
            rooms = [r[0] for r in txn.query(
                "SELECT DISTINCT room_id FROM current_state WHERE type = ?"
                " AND membership = 'join' AND substr(state_key, length(state_key) - ? + 1) = ?",
                (MEMBER, n, self.suffix))]
            return users, rooms

        return self.db.run("user_dir_build_plan", _q)

    def build_users(self, user_ids: Sequence[str]) -> None:
        self.db.run("user_dir_build_users", lambda t: self.refresh_local_txn(t, user_ids),
                    write=True)

    def build_room(self, room_id: str) -> None:
        def _t(txn: Txn) -> None:
            self._room_txn(txn, room_id)
            self._members_txn(txn, room_id, None)

        self.db.run("user_dir_build_room", _t, write=True)

    def finish_build(self, upto: int) -> None:
        self.db.run("user_dir_built", lambda t: t.execute(
            "UPDATE user_directory_position SET stream_ordering = ?, built = 1 WHERE id = 1",
            (upto,)), write=True)

    # ------------------------------------------------------------------ searching
    def search(self, searcher: str, term: str, limit: int, opts: SearchOptions
               ) -> tuple[list[dict[str, str]], bool]:
        """Up to ``limit`` users ``searcher`` may find by ``term``, best first, and whether
        there were more."""
        t = term.replace("\x00", "").strip()
        args: list[Any] = []
        if t.startswith("@") or ":" in t:
            prefix = ("@" + t.lstrip("@")).lower()
            frm = "user_directory d"
            where = "substr(lower(d.user_id), 1, ?) = ?"
            args += [len(prefix), prefix]
            tier = "CASE WHEN lower(d.user_id) = ? THEN 0 ELSE 1 END"
            tier_args: list[Any] = [prefix]
        else:
            qw = words(t)[:MAX_WORDS]
            if not qw:
                return [], False
            if self.pg:
                frm = "user_directory d"
                where = "d.vector @@ ?::tsquery"
                args.append(" & ".join(f"'{w}':*" for w in qw))
            else:
                frm = ("user_directory_search CROSS JOIN user_directory d"
                       " ON d.id = user_directory_search.rowid")
                where = "user_directory_search MATCH ?"
                args.append(" AND ".join(f'"{w}"*' for w in qw))
            q = " ".join(qw)
            tier = ("CASE WHEN d.localpart_norm = ? OR d.display_norm = ? THEN 0"
                    " WHEN substr(d.localpart_norm, 1, ?) = ? OR substr(d.display_norm, 1, ?) = ?"
                    " THEN 1 ELSE 2 END")
            tier_args = [q, q, len(q), q, len(q), q]
        if opts.all_users:
            where += " AND d.user_id <> ? AND (d.is_local = 1 OR d.in_room = 1)"
            args.append(searcher)
        else:
            where += (" AND (d.in_public_room = 1 OR d.user_id IN (SELECT m.state_key"
                      " FROM current_state me JOIN user_directory_rooms r"
                      " ON r.room_id = me.room_id AND r.is_public = 0"
                      " JOIN current_state m ON m.room_id = me.room_id"
                      " AND m.type = 'm.room.member' AND m.membership = 'join'"
                      " WHERE me.type = 'm.room.member' AND me.state_key = ?"
                      " AND me.membership = 'join' AND m.state_key <> ?))")
            args += [searcher, searcher]
        if opts.exclude_remote:
            where += " AND d.is_local = 1"
        order = "d.is_local DESC, " if opts.prefer_local else ""
        sql = (f"SELECT d.user_id, d.display_name, d.avatar_url, {tier} AS tier FROM {frm}"
               f" WHERE {where} ORDER BY {order}tier, d.display_name IS NULL,"
               " d.avatar_url IS NULL, d.display_norm, d.user_id LIMIT ?")
        rows = self.db.run("user_dir_search", lambda t_: t_.query(
            sql, [*tier_args, *args, limit + 1]))
        out = []
        for user_id, dn, av, _ in rows[:limit]:
            entry = {"user_id": user_id}
            if dn is not None:
                entry["display_name"] = dn
            if av is not None:
                entry["avatar_url"] = av
            out.append(entry)
        return out, len(rows) > limit


def _content(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        c = json.loads(raw).get("content")
    except (ValueError, AttributeError):
        return {}
    return c if isinstance(c, dict) else {}
