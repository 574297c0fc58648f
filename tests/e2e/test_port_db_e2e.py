"""End to end: a real server on SQLite is filled through the HTTP API (users, a room with
messages, media, E2EE device and one-time keys, account data, a pusher), stopped, ported
with ``python -m atrium port-db`` and started on PostgreSQL with the same signing key, server
name and media folder.  A client with its old access token (and its old /sync token) sees
everything, sends new messages without an id collision, and finds an old message by search
once the rebuilt index has caught up.

Needs PostgreSQL whatever ``ATRIUM_TEST_DB`` says: skipped when it is unreachable, unless
``ATRIUM_REQUIRE_PG=1``."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import yaml

from protocol.signing import encode_verify_key_base64, generate_signing_key, get_verify_key, \
    sign_json
from store.testing import drop_schema, pg_conninfo
from tests.store.test_port_db import require_pg

ROOT = Path(__file__).resolve().parents[2]
V = "/_matrix/client/v3"
WORD = "kumquat"


class Client:
    def __init__(self, base: str, login: dict[str, Any]) -> None:
        self.base, self.user_id = base, login["user_id"]
        self.token, self.device_id = login["access_token"], login["device_id"]

    def req(self, method: str, path: str, body: Any = None, *, status: int = 200,
            **kw: Any) -> Any:
        r = requests.request(method, self.base + path, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"}, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json() if r.headers.get("Content-Type", "").startswith("application/json") \
            else r.content

    def send(self, room_id: str, body: str) -> str:
        txn = secrets.token_hex(6)
        return self.req("PUT", f"{V}/rooms/{room_id}/send/m.room.message/{txn}",
                        {"msgtype": "m.text", "body": body})["event_id"]

    def bodies(self, room_id: str) -> list[str]:
        chunk = self.req("GET", f"{V}/rooms/{room_id}/messages",
                         params={"dir": "f", "limit": 100})["chunk"]
        return [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]


def wait_for(fn: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def test_a_sqlite_server_moves_to_postgresql_and_its_clients_notice_nothing(
        start_atrium, tmp_path):
    require_pg()
    import psycopg

    keep = tmp_path / "keep"      # what the operator keeps: key, media folder, SQLite file
    keep.mkdir()
    same = {"signing_key_path": str(keep / "signing.key"),
            "media_store_path": str(keep / "media")}
    sqlite_path = keep / "homeserver.db"
    old = start_atrium(database={"name": "sqlite3", "args": {"database": str(sqlite_path)}},
                       **same)

    # ---- fill it through the API
    alice = Client(old.base_url, old.register("alice", "alice-password-1"))
    bob = Client(old.base_url, old.register("bob", "bob-password-1"))
    bob.req("PUT", f"{V}/profile/{bob.user_id}/displayname", {"displayname": "Bobby Tables"})
    room = alice.req("POST", f"{V}/createRoom", {"name": "Port room",
                                                 "preset": "public_chat"})["room_id"]
    bob.req("POST", f"{V}/join/{room}", {})
    before = [f"message {i}" + (f" about a {WORD}" if i == 2 else "") for i in range(6)]
    for i, body in enumerate(before):
        (alice if i % 2 == 0 else bob).send(room, body)
    data = os.urandom(50_000)
    mxc = requests.post(old.base_url + "/_matrix/media/v3/upload", data=data, timeout=30,
                        params={"filename": "moved.bin"},
                        headers={"Authorization": f"Bearer {alice.token}",
                                 "Content-Type": "application/octet-stream"}).json()["content_uri"]
    sk = generate_signing_key(alice.device_id)
    device_keys = sign_json({
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{alice.device_id}": "curve-" + alice.device_id,
                 f"ed25519:{alice.device_id}": encode_verify_key_base64(get_verify_key(sk))}},
        alice.user_id, sk)
    otks = {f"signed_curve25519:AAAA{i}": sign_json({"key": f"otk-{i}"}, alice.user_id, sk)
            for i in range(3)}
    counts = alice.req("POST", f"{V}/keys/upload", {"device_keys": device_keys,
                                                    "one_time_keys": otks})
    assert counts["one_time_key_counts"]["signed_curve25519"] == 3
    alice.req("PUT", f"{V}/user/{alice.user_id}/account_data/org.example.port", {"v": 1})
    pusher = {"kind": "http", "app_id": "org.example.port", "pushkey": "pk-alice",
              "app_display_name": "Port", "device_display_name": "phone", "lang": "en",
              "data": {"url": "https://push.invalid/_matrix/push/v1/notify"}}
    alice.req("POST", f"{V}/pushers/set", pusher)
    since = alice.req("GET", f"{V}/sync", params={"timeout": 0})["next_batch"]
    old.stop()

    # ---- port
    schema = "porte2e_" + secrets.token_hex(5)
    with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        args: dict[str, Any] = {"schema": schema}
        for part in pg_conninfo().split():
            k, _, v = part.partition("=")
            args[k] = v
        pg_db = {"name": "psycopg2", "args": args}
        # the operator started the PostgreSQL config once by mistake: no data, still fine
        start_atrium(database=pg_db, **same).stop()
        cfg = tmp_path / "postgres.yaml"
        cfg.write_text(yaml.safe_dump({"server_name": old.server_name, "database": pg_db,
                                       **same}), encoding="utf-8")
        r = subprocess.run([sys.executable, "-m", "atrium", "port-db", "--sqlite",
                            str(sqlite_path), "-c", str(cfg)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "All " in r.stdout and same["media_store_path"] in r.stdout
        assert "events: " in r.stderr           # progress, plain lines off a terminal

        new = start_atrium(database=pg_db, **same)
        alice.base = bob.base = new.base_url
        _check_everything_is_there(new, alice, bob, room, before, mxc, data, device_keys,
                                   since)
    finally:
        drop_schema(schema)


def _check_everything_is_there(new: Any, alice: Client, bob: Client, room: str,
                               before: list[str], mxc: str, data: bytes,
                               device_keys: dict[str, Any], since: str) -> None:
    # the old access token works: still logged in, same device
    who = alice.req("GET", f"{V}/account/whoami")
    assert who["user_id"] == alice.user_id and who["device_id"] == alice.device_id
    # rooms and messages, by /sync and /messages
    joined = alice.req("GET", f"{V}/sync", params={"timeout": 0})["rooms"]["join"]
    assert room in joined
    timeline = [e["content"].get("body") for e in joined[room]["timeline"]["events"]]
    assert before[-1] in timeline
    assert alice.bodies(room) == before
    # the media, from the same folder
    server, media_id = mxc[len("mxc://"):].split("/")
    assert alice.req("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}") == data
    # E2EE keys: bob still sees alice's device keys and can claim her one-time keys
    got = bob.req("POST", f"{V}/keys/query", {"device_keys": {alice.user_id: []}})
    assert got["device_keys"][alice.user_id][alice.device_id]["keys"] == device_keys["keys"]
    claimed = bob.req("POST", f"{V}/keys/claim", {"one_time_keys": {
        alice.user_id: {alice.device_id: "signed_curve25519"}}})["one_time_keys"]
    assert next(iter(claimed[alice.user_id][alice.device_id])).startswith("signed_curve25519:")
    # account data, the pusher, the password
    assert alice.req("GET", f"{V}/user/{alice.user_id}/account_data/org.example.port") == {
        "v": 1}
    assert [p["pushkey"] for p in alice.req("GET", f"{V}/pushers")["pushers"]] == ["pk-alice"]
    r = requests.post(new.base_url + f"{V}/login", timeout=30, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
        "password": "bob-password-1"})
    assert r.status_code == 200, r.text
    # new writes: no id collision, and after the old ones in every order
    after = [alice.send(room, "after the move"), bob.send(room, "me too")]
    assert alice.bodies(room) == before + ["after the move", "me too"]
    incremental = alice.req("GET", f"{V}/sync", params={"since": since, "timeout": 0})
    events = incremental["rooms"]["join"][room]["timeline"]["events"]
    assert [e["event_id"] for e in events] == after      # the old /sync token still works
    # the engine-specific indexes are rebuilt: message search and the user directory
    body = {"search_categories": {"room_events": {"search_term": WORD}}}
    hits = wait_for(lambda: alice.req("POST", f"{V}/search", body)["search_categories"]
                    ["room_events"]["results"], "search to find the old message")
    assert [h["result"]["content"]["body"] for h in hits] == [before[2]]
    found = wait_for(lambda: alice.req("POST", f"{V}/user_directory/search",
                                       {"search_term": "bobby"})["results"],
                     "the user directory to be rebuilt")
    assert [u["user_id"] for u in found] == [bob.user_id]
