"""``python -m atrium port-db --sqlite PATH [-c CONFIG]``: move a stopped server's SQLite
database into the PostgreSQL database the config names (what ``synapse_port_db`` does for
Synapse).  See docs/port_db.md.

Order of a run: lock the SQLite file exclusively (a running server holds it open, so this
refuses; and no server can open it while the port runs); check it is an Atrium database at
this code's schema version; connect to PostgreSQL and make sure the target is empty, or an
unfinished port of the same SQLite database; create the schema with Atrium's own
migrations; copy every table in foreign-key order (:mod:`atrium.port_db_copy`: batches,
each committed with its progress row, so a second run resumes); set sequences past the
copied maxima; count the rows of every table on both sides; and only when all agree drop
the bookkeeping tables, which is what makes the database one Atrium starts on normally.

Access tokens are stored as hashes in ``access_tokens``, copied as they are: clients stay
logged in.  Search and the user directory are engine-specific indexes: not copied, rebuilt
by the server from stream position 0 after it starts.  Media files stay on disk.

Exit codes: 0 ported and verified, 1 failed (a value PostgreSQL refuses, counts differ), 2
refused (bad config, source or target; nothing changed), 130 interrupted (run it again).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from typing import Any, TextIO
from urllib.parse import quote

from atrium.port_db_copy import (DERIVED, DERIVED_RESET, NOT_COPIED, PROGRESS_TABLE,
                                 SOURCE_TABLE, BatchHook, PortFailed, Progress, Refused,
                                 copy_table, dependency_order, plan_table, q, reset_sequences,
                                 source_tables, sqlite_sequences)
from store.database import POSTGRES, SQLITE, postgres_conninfo

DEFAULT_BATCH = 1000
#: tables a fresh migration (or a server's mere start) fills: rows there do not mean a server
#: has data in the database
MIGRATION_ROWS = {"schema_version", "device_inbox_position", "push_evaluator_position",
                  "search_index_position", "user_directory_position", "server_identity"}


def code_schema_version() -> int:
    from store.migrations import _migrations  # the list the server itself applies

    return max(num for num, _, _ in _migrations(SQLITE))


# --------------------------------------------------------------------------- the source
def open_source(path: str) -> tuple[sqlite3.Connection, int]:
    """The SQLite database, locked exclusively until closed, and its schema version."""
    if not os.path.isfile(path):
        raise Refused(f"no SQLite database at {path}")
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=2, isolation_level=None)
    except sqlite3.Error as e:
        raise Refused(f"cannot open {path}: {e}") from None
    try:
        # held until the connection closes: no server can read or write it meanwhile
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        conn.close()
        if "locked" in str(e) or "busy" in str(e):
            raise Refused(f"{path} is in use (is the server still running on it? stop it "
                          "first)") from None
        raise Refused(f"cannot lock {path}: {e}") from None
    except sqlite3.DatabaseError as e:
        conn.close()
        raise Refused(f"{path} is not an SQLite database ({e})") from None
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"schema_version", "users", "events"} <= names:
            raise Refused(f"{path} is not an Atrium database (no schema_version, users and "
                          "events tables)")
        version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
                      or 0)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise Refused(f"{path} is not an SQLite database ({e})") from None
    except Refused:
        conn.close()
        raise
    expected = code_schema_version()
    if version != expected:
        conn.close()
        hint = ("start this version of Atrium on it once (it migrates at start-up), stop it, "
                "then port" if version < expected else "port with the Atrium version that "
                "wrote it")
        raise Refused(f"{path} is at schema version {version:03d}, this Atrium's is "
                      f"{expected:03d}: {hint}")
    return conn, version


# --------------------------------------------------------------------------- the target
def describe_target(args: dict[str, Any]) -> str:
    name = args.get("dbname") or args.get("database") or "(default database)"
    where = f"{name} on {args.get('host') or 'localhost'}"
    if args.get("port"):
        where += f":{args['port']}"
    return where + (f", schema {args['schema']}" if args.get("schema") else "")


def connect_target(args: dict[str, Any]) -> Any:
    import psycopg

    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
    if args.get("schema"):
        kwargs["options"] = f"-c search_path={args['schema']}"
    try:
        pg = psycopg.connect(postgres_conninfo(args), **kwargs)
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or ["no answer"])[0]
        raise Refused(f"cannot reach PostgreSQL {describe_target(args)}: {first}") from None
    if pg.execute("SELECT current_schema()").fetchone()[0] is None:
        pg.close()
        raise Refused(f"PostgreSQL {describe_target(args)}: the schema does not exist")
    # one port at a time into this schema (a second run would interleave batches)
    if not pg.execute("SELECT pg_try_advisory_lock(hashtext('atrium port-db ' ||"
                      " current_schema()))").fetchone()[0]:
        pg.close()
        raise Refused(f"another port-db is running into {describe_target(args)}")
    return pg


def target_tables(pg: Any) -> set[str]:
    return {r[0] for r in pg.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema()").fetchall()}


def check_target(pg: Any, where: str, source: str, fingerprint: str, version: int) -> bool:
    """Refuse a target that holds anything but an unfinished port of this very source;
    whether it is such a port (resume)."""
    tables = target_tables(pg)
    if SOURCE_TABLE in tables:
        row = pg.execute(f"SELECT source, fingerprint, started_ts FROM {SOURCE_TABLE}"
                         " WHERE id = 1").fetchone()
        if row is None or row[1] != fingerprint:
            began = time.strftime("%Y-%m-%d %H:%M", time.localtime(row[2] / 1000)) \
                if row else "?"
            raise Refused(f"{where} holds an unfinished port of another SQLite database, or "
                          f"of one that has changed since (from {row[0] if row else '?'}, "
                          f"begun {began}); drop and re-create the PostgreSQL database to "
                          "start over")
        return True
    if not tables:
        return False
    if "schema_version" not in tables:
        raise Refused(f"{where} holds tables that are not Atrium's ({', '.join(sorted(tables)[:3])}"
                      "…): port into an empty database")
    for t in sorted(tables - MIGRATION_ROWS):
        if pg.execute(f"SELECT EXISTS (SELECT 1 FROM {q(t)})").fetchone()[0]:
            raise Refused(f"{where} already holds a server's data (table {t} has rows) that "
                          "did not come from port-db; refusing to overwrite it: port into a "
                          "new, empty database")
    have = int(pg.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
    if have > version:
        raise Refused(f"{where} is at schema version {have:03d}, newer than the SQLite "
                      f"database's {version:03d}")
    return False


def start_bookkeeping(pg: Any, source: str, fingerprint: str) -> None:
    with pg.transaction():
        pg.execute(f"CREATE TABLE {SOURCE_TABLE} (id INTEGER PRIMARY KEY, source TEXT NOT NULL,"
                   " fingerprint TEXT NOT NULL, started_ts BIGINT NOT NULL)")
        pg.execute(f"CREATE TABLE {PROGRESS_TABLE} (table_name TEXT PRIMARY KEY,"
                   " last_key TEXT NOT NULL, copied BIGINT NOT NULL, done INTEGER NOT NULL)")
        pg.execute(f"INSERT INTO {SOURCE_TABLE} VALUES (1, %s, %s, %s)",
                   (source, fingerprint, int(time.time() * 1000)))


def migrate_target(args: dict[str, Any]) -> int:
    """Atrium's own migrations on PostgreSQL; the version reached."""
    from store.database import DatabaseError, open_database
    from store.migrations import apply_migrations

    try:
        db = open_database("psycopg2", dict(args, cp_min=1, cp_max=2), migrate=False)
    except Exception as e:  # noqa: BLE001 - any connection failure: one line
        raise Refused(f"cannot open PostgreSQL {describe_target(args)}: {e}") from None
    try:
        assert db.engine == POSTGRES
        return apply_migrations(db)
    except DatabaseError as e:
        raise PortFailed(f"creating the schema on PostgreSQL failed: {e}") from None
    finally:
        db.close()


# --------------------------------------------------------------------------- the run
def port_database(sqlite_path: str, args: dict[str, Any], *, batch: int = DEFAULT_BATCH,
                  strip_nul: bool = False, media_store_path: str | None = None,
                  out: TextIO | None = None, progress: Progress | None = None,
                  on_batch: BatchHook | None = None) -> list[tuple[str, int, int]]:
    """Port (or resume porting) ``sqlite_path`` into the PostgreSQL database of ``args``
    (Synapse's ``database.args``); the verification rows (table, SQLite rows, PostgreSQL
    rows).  Raises :class:`Refused` before changing anything, :class:`PortFailed` when the
    copy stops or the counts differ."""
    out = out or sys.stdout
    progress = progress or Progress()
    where = describe_target(args)
    src, version = open_source(sqlite_path)
    pg = None
    try:
        tables, skipped = source_tables(src)
        copied = [t for t in tables if t not in DERIVED and t not in NOT_COPIED]
        counts = {t: int(src.execute(f"SELECT COUNT(*) FROM {q(t)}").fetchone()[0])
                  for t in copied}
        fingerprint = json.dumps({"version": version, "counts": counts}, sort_keys=True)
        pg = connect_target(args)
        resuming = check_target(pg, where, os.path.abspath(sqlite_path), fingerprint, version)
        if not resuming:
            start_bookkeeping(pg, os.path.abspath(sqlite_path), fingerprint)
        total = sum(counts.values())
        print(f"{'Resuming the port of' if resuming else 'Porting'} {sqlite_path} (schema "
              f"{version:03d}, {total} rows in {len(copied)} tables) into PostgreSQL {where}",
              file=out, flush=True)
        reached = migrate_target(args)
        if reached != version:
            raise Refused(f"{where}: the migrations reached schema version {reached:03d}, "
                          f"the SQLite database is at {version:03d}")
        present = target_tables(pg)
        with pg.transaction():
            for t, sql in DERIVED_RESET.items():
                if t in present:
                    pg.execute(sql)
        plans = [plan_table(src, pg, t, strip_nul) for t in dependency_order(src, copied)]
        state = {r[0]: (json.loads(r[1]), int(r[2]), bool(r[3])) for r in pg.execute(
            f"SELECT table_name, last_key, copied, done FROM {PROGRESS_TABLE}").fetchall()}
        started = time.monotonic()
        for plan in plans:
            try:
                copy_table(src, pg, plan, state.get(plan.name), counts[plan.name], batch,
                           progress, on_batch)
            except BaseException:
                progress.abort()
                raise
        elapsed = time.monotonic() - started
        seqs = reset_sequences(pg, sqlite_sequences(src))
        rows = verify(pg, plans, counts)
        report(out, rows, set(tables) | skipped, seqs, elapsed)
        if any(a != b for _, a, b in rows):
            raise PortFailed("the row counts differ (above); the bookkeeping tables are kept: "
                             "investigate, or drop and re-create the PostgreSQL database and "
                             "port again")
        with pg.transaction():
            pg.execute(f"DROP TABLE {PROGRESS_TABLE}")
            pg.execute(f"DROP TABLE {SOURCE_TABLE}")
        for plan in plans:  # fresh planner statistics for the copied tables
            pg.execute(f"ANALYZE {q(plan.name)}")
        media = media_store_path or "media_store_path"
        print(f"Media files are not in the database: the PostgreSQL server must use the same "
              f"media folder ({media}); keep it, or copy it along if the server moves.\n"
              "Done: start Atrium with this config; clients keep their sessions. Search and "
              "the user directory are rebuilt in the background after start-up.",
              file=out, flush=True)
        return rows
    except sqlite3.Error as e:
        raise PortFailed(f"reading {sqlite_path} failed: {e}") from None
    except Exception as e:
        import psycopg

        if not isinstance(e, psycopg.Error):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PortFailed(f"PostgreSQL {where}: {first}") from None
    finally:
        if pg is not None:
            pg.close()
        src.close()


def verify(pg: Any, plans: list[Any], counts: dict[str, int]) -> list[tuple[str, int, int]]:
    return [(p.name, counts[p.name],
             int(pg.execute(f"SELECT COUNT(*) FROM {q(p.name)}").fetchone()[0]))
            for p in sorted(plans, key=lambda p: p.name)]


def report(out: TextIO, rows: list[tuple[str, int, int]], source: set[str], seqs: list[str],
           elapsed: float) -> None:
    print("Verification, rows per table (SQLite / PostgreSQL):", file=out)
    for name, a, b in rows:
        print(f"  {name:<34} {a:>10} {b:>10}  {'ok' if a == b else 'DIFFERENT'}", file=out)
    rebuilt: dict[str, list[str]] = {}
    for t in sorted(set(DERIVED) & source):
        rebuilt.setdefault(DERIVED[t], []).append(t)
    for what, names in rebuilt.items():
        print(f"  not copied: {', '.join(names)} ({what}: rebuilt by the server)", file=out)
    if seqs:
        print(f"  sequences set past the copied rows: {', '.join(seqs)}", file=out)
    total = sum(a for _, a, _ in rows)
    same = all(a == b for _, a, b in rows)
    rate = f", {total / elapsed:.0f} rows/s" if elapsed > 0 else ""
    print(f"{'All' if same else 'NOT all'} {len(rows)} tables match ({total} rows, "
          f"{elapsed:.1f} s{rate}).", file=out, flush=True)


# --------------------------------------------------------------------------- the command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sqlite", required=True, metavar="PATH",
                   help="the stopped server's SQLite database file")
    p.add_argument("-c", "--config", help="config naming the PostgreSQL database to fill "
                                         "(default: $ATRIUM_CONFIG or ./homeserver.yaml)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"rows per transaction (default {DEFAULT_BATCH})")
    p.add_argument("--strip-nul", action="store_true",
                   help="drop NUL characters from text (PostgreSQL cannot store them) "
                        "instead of stopping at the first")


def main(args: argparse.Namespace) -> int:
    from atrium.config import ConfigError, config_path_from_env, load_config

    def fail(msg: str, code: int) -> int:
        print(f"atrium: port-db: {msg}", file=sys.stderr)
        return code

    if args.batch < 1:
        return fail("--batch must be at least 1", 2)
    try:
        config = load_config(args.config or config_path_from_env(), write_default=False)
    except ConfigError as e:
        return fail(str(e), 2)
    if config.database.name != "psycopg2":
        return fail(f"the config {config.path} names an SQLite database (database.name: "
                    f"{config.database.name}); port-db fills the PostgreSQL database a config "
                    "names: use one with database.name: psycopg2", 2)
    try:
        port_database(args.sqlite, config.database.args, batch=args.batch,
                      strip_nul=args.strip_nul, media_store_path=config.media_store_path)
    except Refused as e:
        return fail(str(e), 2)
    except PortFailed as e:
        return fail(f"{e}\n(the rows copied so far are kept: the same command resumes; after "
                    "changing the SQLite database, port into a new, empty PostgreSQL "
                    "database)", 1)
    except KeyboardInterrupt:
        return fail("interrupted; the rows copied so far are kept: run the same command "
                    "again to resume", 130)
    return 0
