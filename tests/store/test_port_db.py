"""``python -m atrium port-db`` (atrium/port_db.py): an SQLite database filled through the
stores and with rows in every table is ported into a fresh PostgreSQL schema; every row
arrives as it was, an interrupted run (an exception before a batch's COMMIT, or kill -9)
resumes without duplicates or gaps, and every bad source or target is refused before
anything changes.

These need PostgreSQL whatever ``ATRIUM_TEST_DB`` says (the source is always SQLite); they
skip when it is unreachable, unless ``ATRIUM_REQUIRE_PG=1``."""
from __future__ import annotations

import io
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from atrium.cli import main as cli_main
from atrium.port_db import port_database
from atrium.port_db_copy import (DERIVED, NOT_COPIED, PortFailed, Progress, dependency_order,
                                 source_tables)
from store.account_data import AccountDataStore
from store.accounts import AccountStore, LoginRequest
from store.database import open_database
from store.e2e_keys import E2EKeyStore
from store.testing import drop_schema, pg_conninfo

ROOT = Path(__file__).resolve().parents[2]
ALICE = "@alice:port.test"
N = 7  # synthetic rows per table


def require_pg() -> None:
    import psycopg

    try:
        with psycopg.connect(pg_conninfo(), connect_timeout=3):
            return
    except psycopg.Error as e:
        if os.environ.get("ATRIUM_REQUIRE_PG") == "1":
            pytest.fail(f"ATRIUM_REQUIRE_PG=1 but PostgreSQL is not reachable: {e}")
        pytest.skip(f"port-db needs PostgreSQL, which is not reachable: {e}")


def pg_args(schema: str) -> dict[str, Any]:
    args: dict[str, Any] = {"schema": schema}
    for part in pg_conninfo().split():
        k, _, v = part.partition("=")
        args[{"dbname": "database"}.get(k, k)] = v
    return args


def pg(schema: str) -> Any:
    import psycopg

    return psycopg.connect(pg_conninfo(), autocommit=True,
                           options=f"-c search_path={schema}")


@pytest.fixture
def schema() -> Any:
    require_pg()
    import psycopg

    name = "port_" + secrets.token_hex(5)
    with psycopg.connect(pg_conninfo(), autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {name}")
    yield name
    drop_schema(name)


# --------------------------------------------------------------------------- the source
def _gen(name: str, decl: str, i: int) -> Any:
    decl = decl.upper()
    if "INT" in decl:
        return 2 ** 40 + i if "BIG" in decl else i + 1
    # COPY's special characters, non-ASCII text, and one long value
    return f"{name}-{i} ✓ é\t\\N\\ 'q' \"d\"\n" + ("x" * 20_000 if i == 2 else "")


def fill_generic(path: str, n: int = N, only: set[str] | None = None) -> None:
    """``n`` rows in every copied table (foreign keys honoured, a third of nullable columns
    NULL); rows a table's constraints refuse are left out."""
    src = sqlite3.connect(path, isolation_level=None)
    src.execute("PRAGMA foreign_keys=ON")
    tables, _ = source_tables(src)
    for t in dependency_order(src, [t for t in tables
                                    if t not in DERIVED and t not in NOT_COPIED]):
        if only is not None and t not in only:
            continue
        info = src.execute(f"PRAGMA table_info({t})").fetchall()
        fks = {r[3]: (r[2], r[4]) for r in src.execute(f"PRAGMA foreign_key_list({t})")}
        decl = {(t, r[1]): r[2] for r in info}
        for parent, _ in fks.values():
            decl.update({(parent, r[1]): r[2]
                         for r in src.execute(f"PRAGMA table_info({parent})")})
        marks = ", ".join("?" for _ in info)
        for i in range(n):
            vals = []
            for _, col, typ, notnull, _, pk in info:
                if col in fks:
                    ptable, pcol = fks[col]
                    vals.append(_gen(pcol, decl[(ptable, pcol)], i))
                elif not notnull and not pk and i % 3 == 0:
                    vals.append(None)
                else:
                    vals.append(_gen(col, typ, i))
            try:
                src.execute(f"INSERT INTO {t} VALUES ({marks})", vals)
            except sqlite3.IntegrityError:
                pass
    src.close()


def fill_source(path: str) -> str:
    """Through the stores: a user with a device and token, account data, device keys and a
    one-time key; then synthetic rows everywhere.  The user's access token."""
    db = open_database("sqlite3", {"database": path})
    try:
        session = AccountStore(db).register_user(ALICE, None, displayname="Alice ✓",
                                                 login=LoginRequest(device_id="DEV"))
        AccountDataStore(db).put(ALICE, None, "m.example", {"x": "\u0000 escaped in JSON"})
        E2EKeyStore(db).upload(
            ALICE, "DEV", {"user_id": ALICE, "device_id": "DEV",
                           "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                           "keys": {"curve25519:DEV": "c", "ed25519:DEV": "e"},
                           "signatures": {}},
            {"signed_curve25519:AAAA": {"key": "otk", "signatures": {}}}, {})
    finally:
        db.close()
    fill_generic(path)
    assert session is not None
    return session.access_token


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, str]:
    path = str(tmp_path / "homeserver.db")
    return path, fill_source(path)


# --------------------------------------------------------------------------- comparing
def copied_tables(path: str) -> list[str]:
    src = sqlite3.connect(path)
    try:
        tables, _ = source_tables(src)
    finally:
        src.close()
    return [t for t in tables if t not in DERIVED and t not in NOT_COPIED]


def assert_same(path: str, schema: str) -> None:
    """Every copied table holds the same rows on both sides, and the port's bookkeeping is
    gone."""
    src = sqlite3.connect(path)
    with pg(schema) as conn:
        for t in copied_tables(path):
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({t})")]
            sel = f"SELECT {', '.join(cols)} FROM {t}"
            a = sorted(src.execute(sel).fetchall(), key=repr)
            b = sorted(conn.execute(sel).fetchall(), key=repr)
            assert a == b, t
        left = conn.execute("SELECT table_name FROM information_schema.tables WHERE"
                            " table_schema = current_schema() AND table_name LIKE 'port_db%'"
                            ).fetchall()
        assert left == []
    src.close()


def progress_rows(schema: str) -> dict[str, tuple[int, int]]:
    with pg(schema) as conn:
        return {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(
            "SELECT table_name, copied, done FROM port_db_progress").fetchall()}


def quiet() -> dict[str, Any]:
    return {"out": io.StringIO(), "progress": Progress(io.StringIO(), tty=False)}


# --------------------------------------------------------------------------- porting
def test_every_row_of_every_table_arrives_and_the_server_can_use_it(source, schema):
    path, token = source
    out = io.StringIO()
    rows = port_database(path, pg_args(schema), batch=4, out=out,
                         progress=Progress(io.StringIO(), tty=False))
    assert len(rows) == len(copied_tables(path)) and all(a == b for _, a, b in rows)
    assert sum(a for _, a, _ in rows) > N * len(rows) * 0.8
    assert "All " in out.getvalue() and "media folder" in out.getvalue()
    assert "event_search" in out.getvalue()        # named as rebuilt, not copied
    assert_same(path, schema)

    db = open_database("psycopg2", pg_args(schema))   # migrations: nothing left to do
    try:
        info = AccountStore(db).get_token(token)       # the client stays logged in
        assert info is not None and info.user_id == ALICE and info.device_id == "DEV"
        assert AccountDataStore(db).get(ALICE, None, "m.example") == {
            "x": "\u0000 escaped in JSON"}
        keys = E2EKeyStore(db)
        assert keys.device_keys_of(ALICE)["DEV"]["keys"]["ed25519:DEV"] == "e"
        assert keys.claim([(ALICE, "DEV", "signed_curve25519")])[ALICE]["DEV"] == {
            "signed_curve25519:AAAA": {"key": "otk", "signatures": {}}}

        def _positions(txn):
            return (txn.query_one("SELECT stream_ordering FROM search_index_position"),
                    txn.query_one("SELECT stream_ordering, built FROM user_directory_position"),
                    txn.query_value("SELECT COUNT(*) FROM event_search"),
                    txn.query_value("SELECT COUNT(*) FROM user_directory"))

        # the engine-specific indexes start over, so the server rebuilds them
        assert db.run("positions", _positions) == ((0,), (0, 0), 0, 0)
    finally:
        db.close()


def test_sequences_continue_past_sqlite_autoincrement_marks(tmp_path, schema):
    path = str(tmp_path / "homeserver.db")
    fill_source(path)
    src = sqlite3.connect(path, isolation_level=None)
    marks = dict(src.execute("SELECT name, seq FROM sqlite_sequence").fetchall()) \
        if src.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() \
        else {}
    if not marks:
        src.close()
        pytest.skip("no AUTOINCREMENT table in this schema")
    table = sorted(marks)[0]
    # the newest rows were deleted: their ids must still never be handed out again
    src.execute(f"UPDATE sqlite_sequence SET seq = seq + 1000 WHERE name = '{table}'")
    src.close()
    port_database(path, pg_args(schema), **quiet())
    with pg(schema) as conn:
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
        assert seq is not None
        assert conn.execute("SELECT nextval(%s)", (seq,)).fetchone()[0] == marks[table] + 1001


def test_an_interrupted_port_resumes_without_duplicates_or_gaps(source, schema):
    path, _ = source
    calls = {"n": 0}

    def stop_at(k: int):
        def hook(table: str, copied: int) -> None:
            calls["n"] += 1
            if calls["n"] == k:   # inside the batch's transaction: as kill -9 before COMMIT
                raise KeyboardInterrupt
        return hook

    with pytest.raises(KeyboardInterrupt):
        port_database(path, pg_args(schema), batch=3, on_batch=stop_at(12), **quiet())
    first = progress_rows(schema)
    assert first and any(not done for _, done in first.values())
    # resumed with another batch size, and interrupted again further on
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        port_database(path, pg_args(schema), batch=2, on_batch=stop_at(40), **quiet())
    second = progress_rows(schema)
    assert sum(c for c, _ in second.values()) > sum(c for c, _ in first.values())
    out = io.StringIO()
    port_database(path, pg_args(schema), batch=5, out=out,
                  progress=Progress(io.StringIO(), tty=False))
    assert out.getvalue().startswith("Resuming the port of")
    assert_same(path, schema)


def _write_config(tmp_path: Path, database: dict[str, Any]) -> str:
    cfg = {"server_name": "port.test", "database": database,
           "media_store_path": str(tmp_path / "media"),
           "signing_key_path": str(tmp_path / "signing.key")}
    p = tmp_path / "pg.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(p)


def test_kill_9_mid_table_then_the_same_command_finishes_the_job(tmp_path, source, schema):
    path, _ = source
    src = sqlite3.connect(path, isolation_level=None)
    src.executemany("INSERT INTO events (stream_ordering, event_id, room_id, type, sender,"
                    " depth, origin_server_ts, received_ts, json) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(10_000 + i, f"$big{i}", "!r:port.test", "m.room.message", ALICE, i, i,
                      i, "{}") for i in range(600)])
    src.close()
    cfg = _write_config(tmp_path, {"name": "psycopg2", "args": pg_args(schema)})
    cmd = [sys.executable, "-m", "atrium", "port-db", "--sqlite", path, "-c", cfg]
    proc = subprocess.Popen(cmd + ["--batch", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    killed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = progress_rows(schema)
        except Exception:  # noqa: BLE001 - not created yet
            rows = {}
        if rows.get("events", (0, 1))[1] == 0 and rows.get("events", (0, 0))[0] > 50:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert killed, "the port finished before it could be killed mid-table"
    copied, done = progress_rows(schema)["events"]
    assert not done and 50 < copied < 600 + N
    # the server refuses to start on the half-ported database, with one line
    from atrium.config import ConfigError, load_config
    from atrium.config_checks import open_store

    with pytest.raises(ConfigError, match="unfinished `python -m atrium port-db` run"):
        open_store(load_config(cfg, write_default=False))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Resuming the port of" in r.stdout and "All " in r.stdout
    assert "events: resuming after" in r.stderr       # plain lines: stderr is not a terminal
    assert_same(path, schema)


# --------------------------------------------------------------------------- values
def test_a_nul_in_text_stops_the_port_naming_the_row_until_strip_nul(tmp_path, schema):
    path = str(tmp_path / "homeserver.db")
    db = open_database("sqlite3", {"database": path})
    AccountStore(db).register_user(ALICE, None, displayname="Al\x00ice")
    db.close()
    with pytest.raises(PortFailed) as e:
        port_database(path, pg_args(schema), **quiet())
    assert "table profiles" in str(e.value) and ALICE in str(e.value)
    assert "column displayname" in str(e.value) and "--strip-nul" in str(e.value)
    port_database(path, pg_args(schema), strip_nul=True, **quiet())  # resumes
    with pg(schema) as conn:
        assert conn.execute("SELECT displayname FROM profiles").fetchone()[0] == "Alice"


def test_blobs_in_text_columns_are_decoded_or_named(tmp_path, schema):
    path = str(tmp_path / "homeserver.db")
    db = open_database("sqlite3", {"database": path})
    db.close()
    src = sqlite3.connect(path, isolation_level=None)
    src.execute("INSERT INTO users (name, creation_ts) VALUES (?, 1)", ("@u:port.test",))
    src.execute("INSERT INTO users (name, creation_ts, user_type) VALUES (?, 2, ?)",
                ("@v:port.test", "bot".encode()))
    src.execute("INSERT INTO users (name, creation_ts, user_type) VALUES (?, 3, ?)",
                ("@w:port.test", b"\xff\xfe"))
    src.close()
    with pytest.raises(PortFailed) as e:
        port_database(path, pg_args(schema), **quiet())
    assert "table users" in str(e.value) and "@w:port.test" in str(e.value)
    assert "not UTF-8" in str(e.value)
    src = sqlite3.connect(path, isolation_level=None)
    src.execute("DELETE FROM users WHERE name = '@w:port.test'")
    src.close()
    # a changed source is not resumed into the half-filled target ...
    with pytest.raises(Exception, match="unfinished port of another SQLite database"):
        port_database(path, pg_args(schema), **quiet())
    # ... but ports into a fresh one
    drop_schema(schema)
    with pg("public") as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    port_database(path, pg_args(schema), **quiet())
    with pg(schema) as conn:
        assert conn.execute("SELECT user_type FROM users WHERE name = '@v:port.test'"
                            ).fetchone()[0] == "bot"


# --------------------------------------------------------------------------- refusals
def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = cli_main(["port-db", *argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_refuses_a_config_that_names_sqlite(tmp_path, source, capsys):
    cfg = _write_config(tmp_path, {"name": "sqlite3", "args": {"database": source[0]}})
    rc, err = run_cli(capsys, "--sqlite", source[0], "-c", cfg)
    assert rc == 2 and "names an SQLite database" in err and "\n" not in err


def test_refuses_an_unreachable_postgresql(tmp_path, source, capsys):
    cfg = _write_config(tmp_path, {"name": "psycopg2", "args": {
        "host": "127.0.0.1", "port": 1, "user": "postgres", "dbname": "postgres"}})
    rc, err = run_cli(capsys, "--sqlite", source[0], "-c", cfg)
    assert rc == 2 and "cannot reach PostgreSQL" in err and "\n" not in err


@pytest.mark.parametrize("what", ["missing", "garbage", "foreign", "newer", "older", "in-use"])
def test_refuses_a_bad_or_busy_source_and_changes_nothing(tmp_path, schema, capsys, what):
    path = str(tmp_path / "homeserver.db")
    expect = {"missing": "no SQLite database", "garbage": "not an SQLite database",
              "foreign": "not an Atrium database", "newer": "schema version",
              "older": "start this version of Atrium on it once", "in-use": "in use"}[what]
    holder = None
    if what == "garbage":
        Path(path).write_bytes(os.urandom(4096))
    elif what == "foreign":
        c = sqlite3.connect(path)
        c.execute("CREATE TABLE things (x)")
        c.close()
    elif what != "missing":
        db = open_database("sqlite3", {"database": path})
        if what == "in-use":
            holder = db        # a server's connections, open
        else:
            sql = ("INSERT INTO schema_version VALUES (999)" if what == "newer"
                   else "DELETE FROM schema_version WHERE version = (SELECT MAX(version)"
                        " FROM schema_version)")
            db.run("v", lambda t: t.execute(sql), write=True)
            db.close()
    try:
        cfg = _write_config(tmp_path, {"name": "psycopg2", "args": pg_args(schema)})
        rc, err = run_cli(capsys, "--sqlite", path, "-c", cfg)
    finally:
        if holder is not None:
            holder.close()
    assert rc == 2 and expect in err and "\n" not in err, err
    with pg(schema) as conn:
        assert conn.execute("SELECT COUNT(*) FROM information_schema.tables"
                            " WHERE table_schema = current_schema()").fetchone()[0] == 0


def test_refuses_a_target_a_server_already_uses(tmp_path, source, schema, capsys):
    db = open_database("psycopg2", pg_args(schema))
    db.run("u", lambda t: t.execute("INSERT INTO users (name, creation_ts) VALUES (?, 1)",
                                    ("@live:port.test",)), write=True)
    db.close()
    cfg = _write_config(tmp_path, {"name": "psycopg2", "args": pg_args(schema)})
    rc, err = run_cli(capsys, "--sqlite", source[0], "-c", cfg)
    assert rc == 2 and "already holds a server's data" in err and "table users" in err
    with pg(schema) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("@live:port.test",)]
        assert conn.execute("SELECT COUNT(*) FROM information_schema.tables WHERE"
                            " table_schema = current_schema() AND table_name LIKE 'port_db%'"
                            ).fetchone()[0] == 0


def test_an_empty_migrated_target_is_accepted(tmp_path, source, schema):
    open_database("psycopg2", pg_args(schema)).close()   # a server started once, no data
    port_database(source[0], pg_args(schema), **quiet())
    assert_same(source[0], schema)


def test_refuses_a_target_with_tables_that_are_not_atriums(tmp_path, source, schema, capsys):
    with pg(schema) as conn:
        conn.execute("CREATE TABLE event_json (x TEXT)")
    cfg = _write_config(tmp_path, {"name": "psycopg2", "args": pg_args(schema)})
    rc, err = run_cli(capsys, "--sqlite", source[0], "-c", cfg)
    assert rc == 2 and "not Atrium's" in err


def test_refuses_to_resume_from_another_source(tmp_path, source, schema, capsys):
    with pytest.raises(KeyboardInterrupt):
        port_database(source[0], pg_args(schema), batch=2, on_batch=_raise_at(5), **quiet())
    other = str(tmp_path / "other.db")
    open_database("sqlite3", {"database": other}).close()
    cfg = _write_config(tmp_path, {"name": "psycopg2", "args": pg_args(schema)})
    rc, err = run_cli(capsys, "--sqlite", other, "-c", cfg)
    assert rc == 2 and "unfinished port of another SQLite database" in err
    rc, err = run_cli(capsys, "--sqlite", source[0], "-c", cfg, "--batch", "0")
    assert rc == 2 and "--batch" in err
    assert cli_main(["port-db", "--sqlite", source[0], "-c", cfg]) == 0
    assert_same(source[0], schema)


def _raise_at(k: int):
    seen = {"n": 0}

    def hook(table: str, copied: int) -> None:
        seen["n"] += 1
        if seen["n"] == k:
            raise KeyboardInterrupt
    return hook


# --------------------------------------------------------------------------- progress
def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    tty = io.StringIO()
    p = Progress(tty, tty=True)
    p.start("events", 200, 0)
    p.update(100)
    p.update(200)
    p.finish()
    text = tty.getvalue()
    assert "\revents" in text and "[" + "#" * 30 + "]" in text and "100%" in text
    assert text.endswith("\n") and " 200 / 200" in text
    plain = io.StringIO()
    p = Progress(plain, tty=False)
    p.start("events", 200, 50)
    p.update(200)
    p.finish()
    assert plain.getvalue().splitlines() == ["events: resuming after 50 of 200 rows",
                                             "events: 200 / 200 rows copied"]
    assert "\r" not in plain.getvalue()


def test_refuses_a_second_port_into_the_same_database_while_one_runs(tmp_path, source, schema,
                                                                    capsys):
    with pg(schema) as running:   # what the first port holds for its whole run
        assert running.execute("SELECT pg_try_advisory_lock(hashtext('atrium port-db ' ||"
                               " current_schema()))").fetchone()[0]
        cfg = _write_config(tmp_path, {"name": "psycopg2", "args": pg_args(schema)})
        rc, err = run_cli(capsys, "--sqlite", source[0], "-c", cfg)
        assert rc == 2 and "another port-db is running" in err
    assert cli_main(["port-db", "--sqlite", source[0], "-c", cfg]) == 0
