"""Fixtures for the hostile-input sweep: one homeserver per test module (SQLite, or
PostgreSQL with ATRIUM_TEST_DB=postgres) holding everything a route can be aimed at — users
with tokens (one an admin), a room with an event, an alias, a filter, a key-backup version
and an uploaded media item — plus throw-away "victims" for routes that destroy what they
touch (logout, leave, upgrade, media delete, ...)."""
from __future__ import annotations

import io
import itertools
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pytest

from atrium.config import parse_config
from store.accounts import hash_token
from store.testing import database_config, drop_schema
from web.app import create_app, runtime_of

SERVER = "test.local"


def _raw_config(tmp_dir: str, dbcfg: dict[str, Any]) -> dict[str, Any]:
    return {"server_name": SERVER, "bcrypt_rounds": 4, "database": dbcfg,
            "signing_key_path": f"{tmp_dir}/signing.key",
            "media_store_path": f"{tmp_dir}/media",
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "registration_shared_secret": "robust-secret",
            "max_upload_size": "2M",
            "rc_message": {"per_second": 100000, "burst_count": 100000},
            "rc_login": {"address": {"per_second": 100000, "burst_count": 100000},
                         "account": {"per_second": 100000, "burst_count": 100000},
                         "failed_attempts": {"per_second": 100000, "burst_count": 100000}},
            "rc_registration": {"per_second": 100000, "burst_count": 100000},
            "rc_joins": {"local": {"per_second": 100000, "burst_count": 100000}},
            "rc_invites": {"per_room": {"per_second": 100000, "burst_count": 100000},
                           "per_user": {"per_second": 100000, "burst_count": 100000}},
            # the sweep signs many federation requests as one origin in a burst
            "rc_federation": {"window_size": 1000, "sleep_limit": 100000,
                              "reject_limit": 100000, "concurrent": 100},
            # hostile input must never make the server call out: no notary, and the
            # default blacklist keeps every fetch off loopback and private ranges
            "trusted_key_servers": []}


def make_app(tmp_dir: str) -> tuple[Any, str | None]:
    dbcfg, schema = database_config(tmp_dir)
    config = parse_config(_raw_config(tmp_dir, dbcfg), f"{tmp_dir}/homeserver.yaml")
    return create_app(config), schema


def list_routes() -> list[tuple[str, str, str]]:
    """(rule, method, endpoint) for every route of a freshly built app (SQLite, throw-away)."""
    with tempfile.TemporaryDirectory() as d:
        dbcfg = {"name": "sqlite3", "args": {"database": f"{d}/routes.db"}}
        app = create_app(parse_config(_raw_config(d, dbcfg), f"{d}/homeserver.yaml"))
        try:
            return rules_of(app)
        finally:
            runtime_of(app).shutdown()


def rules_of(app: Any) -> list[tuple[str, str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.rule, method, rule.endpoint))
    # routes answered in front of Flask (web/sync_endpoint.py)
    out.extend(runtime_of(app).parts.get("outside_flask", []))
    return sorted(out)


@dataclass
class Actor:
    """One user's identity and the things it owns, for filling in path parameters."""

    user_id: str
    token: str
    device_id: str
    room_id: str = ""
    event_id: str = ""
    alias: str = ""
    media_id: str = ""
    filter_id: str = ""
    backup_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class World:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.runtime = runtime_of(app)
        self.db = self.runtime.db
        self.client = app.test_client()
        self._n = itertools.count()
        self.admin = self.add_user("root", admin=True)
        self.bob = self.add_user("bob")
        self.alice = self.populate(self.add_user("alice"))
        self._tables: list[str] | None = None

    def next(self, prefix: str = "n") -> str:
        return f"{prefix}{next(self._n)}"

    # -- users and their things ---------------------------------------------------------
    def add_user(self, localpart: str, *, admin: bool = False) -> Actor:
        user_id = f"@{localpart}:{SERVER}"
        token = f"tok_{localpart}"
        device = "DEV" + localpart

        def _add(txn: Any) -> None:
            txn.execute("INSERT INTO users (name, creation_ts, admin) VALUES (?, ?, ?)",
                        (user_id, 0, int(admin)))
            for dev in (device, device + "2"):
                txn.execute("INSERT INTO devices (user_id, device_id, created_ts)"
                            " VALUES (?, ?, ?)", (user_id, dev, 0))
            txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                        " VALUES (?, ?, ?, ?)", (hash_token(token), user_id, device, 0))

        self.db.run("add_user", _add, write=True)
        return Actor(user_id, token, device)

    def call(self, who: Actor, method: str, path: str, body: Any = None,
             status: int = 200, **kw: Any) -> Any:
        r = self.client.open(path, method=method, json=body, headers=who.headers, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def populate(self, who: Actor) -> Actor:
        c = "/_matrix/client/v3"
        local = who.user_id[1:].split(":")[0]
        who.room_id = self.call(who, "POST", f"{c}/createRoom",
                                {"preset": "public_chat", "name": "robust"})["room_id"]
        self.call(who, "POST", f"{c}/rooms/{who.room_id}/invite", {"user_id": self.bob.user_id})
        who.event_id = self.call(who, "PUT", f"{c}/rooms/{who.room_id}/send/m.room.message/"
                                 f"{self.next('t')}", {"msgtype": "m.text", "body": "aim"}
                                 )["event_id"]
        who.alias = f"#robust_{local}:{SERVER}"
        self.call(who, "PUT", f"{c}/directory/room/%23robust_{local}:{SERVER}",
                  {"room_id": who.room_id})
        who.filter_id = self.call(who, "POST", f"{c}/user/{who.user_id}/filter",
                                  {"room": {"timeline": {"limit": 5}}})["filter_id"]
        who.backup_version = self.call(
            who, "POST", f"{c}/room_keys/version",
            {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
             "auth_data": {"public_key": "abcdefg"}})["version"]
        up = self.client.post("/_matrix/media/v3/upload?filename=a.txt", headers={
            **who.headers, "Content-Type": "text/plain"}, data=io.BytesIO(b"hello media"))
        assert up.status_code == 200, up.get_data(as_text=True)
        who.media_id = up.get_json()["content_uri"].rsplit("/", 1)[1]
        return who

    def victim(self) -> Actor:
        return self.populate(self.add_user(self.next("victim")))

    def ensure_token(self, who: Actor) -> None:
        """Put a (possibly logged-out) user's token and device back, undeactivate it."""

        def _fix(txn: Any) -> None:
            txn.execute("UPDATE users SET deactivated = 0 WHERE name = ?", (who.user_id,))
            if txn.query_one("SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                             (who.user_id, who.device_id)) is None:
                txn.execute("INSERT INTO devices (user_id, device_id, created_ts)"
                            " VALUES (?, ?, ?)", (who.user_id, who.device_id, 0))
            if txn.query_one("SELECT 1 FROM access_tokens WHERE token_hash = ?",
                             (hash_token(who.token),)) is None:
                txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id,"
                            " created_ts) VALUES (?, ?, ?, ?)",
                            (hash_token(who.token), who.user_id, who.device_id, 0))

        self.db.run("ensure_token", _fix, write=True)

    # -- row counts, to prove a rejected write left nothing behind ------------------------
    def tables(self) -> list[str]:
        if self._tables is None:
            def _list(txn: Any) -> list[str]:
                if txn.engine == "postgres":
                    rows = txn.query("SELECT table_name FROM information_schema.tables"
                                     " WHERE table_schema = current_schema()"
                                     " AND table_type = 'BASE TABLE'")
                else:
                    rows = txn.query("SELECT name FROM sqlite_master WHERE type = 'table'"
                                     " AND name NOT LIKE 'sqlite_%'")
                return sorted(r[0] for r in rows)

            self._tables = self.db.run("list_tables", _list)
        return self._tables

    def counts(self) -> dict[str, int]:
        tables = self.tables()
        sql = "SELECT " + ", ".join(f"(SELECT COUNT(*) FROM {t})" for t in tables)
        row = self.db.run("count_rows", lambda txn: txn.query_one(sql))
        return dict(zip(tables, (int(v) for v in row)))

    def count(self, table: str, where: str = "", params: tuple = ()) -> int:
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(self.db.run("count", lambda txn: txn.query_value(sql, params)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: Any) -> Any:
    tmp = str(tmp_path_factory.mktemp("robust"))
    app, schema = make_app(tmp)
    try:
        yield World(app)
    finally:
        runtime_of(app).shutdown()
        drop_schema(schema)
