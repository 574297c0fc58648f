"""Throw-away databases for tests, on the engine chosen by ``ATRIUM_TEST_DB``.

``ATRIUM_TEST_DB=sqlite`` (default) gives a fresh SQLite file; ``ATRIUM_TEST_DB=postgres``
gives a fresh schema in the PostgreSQL database named by ``ATRIUM_TEST_PG`` (a conninfo
string, default ``host=127.0.0.1 user=postgres dbname=postgres``), dropped afterwards.
"""
from __future__ import annotations

import os
import secrets
from typing import Any

from store.database import Database, open_database


def test_engine() -> str:
    return os.environ.get("ATRIUM_TEST_DB", "sqlite").lower()


def pg_conninfo() -> str:
    return os.environ.get("ATRIUM_TEST_PG", "host=127.0.0.1 user=postgres dbname=postgres")


def database_config(tmp_dir: str) -> tuple[dict[str, Any], str | None]:
    """A Synapse-shaped ``database`` config for a fresh test database (and its PG schema)."""
    if test_engine() == "postgres":
        import psycopg

        schema = "t_" + secrets.token_hex(6)
        with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        args: dict[str, Any] = {"schema": schema, "cp_max": 5}
        for part in pg_conninfo().split():
            k, _, v = part.partition("=")
            args[{"dbname": "database"}.get(k, k)] = v
        return {"name": "psycopg2", "args": args}, schema
    return {"name": "sqlite3", "args": {"database": os.path.join(tmp_dir, "test.db")}}, None


def drop_schema(schema: str | None) -> None:
    if schema:
        import time

        import psycopg

        for attempt in range(5):
            try:
                with psycopg.connect(pg_conninfo(), autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                return
            except psycopg.errors.DeadlockDetected:
                # a session of a stopped test server still finishing its last transaction
                # (DROP ... CASCADE locks ~100 tables one by one): try again once it is done
                if attempt == 4:
                    raise
                time.sleep(0.2)


def open_test_database(tmp_dir: str) -> tuple[Database, str | None]:
    cfg, schema = database_config(tmp_dir)
    return open_database(cfg["name"], cfg["args"]), schema
