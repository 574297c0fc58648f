"""`make test`: the whole suite on SQLite, then everything that touches the store on
PostgreSQL.  PostgreSQL is used when reachable (``ATRIUM_TEST_PG``, default
``host=127.0.0.1 user=postgres dbname=postgres``); with ``ATRIUM_REQUIRE_PG=1`` (set by
.ci/run, which starts it) an unreachable PostgreSQL is a failure instead of a skip."""
from __future__ import annotations

import os
import subprocess
import sys

# Test folders whose tests never touch a database: run once, not once per engine.
ENGINE_INDEPENDENT = ["tests/protocol", "tests/supervision"]


def pg_reachable() -> bool:
    try:
        import psycopg

        conninfo = os.environ.get("ATRIUM_TEST_PG", "host=127.0.0.1 user=postgres dbname=postgres")
        with psycopg.connect(conninfo, connect_timeout=3):
            return True
    except Exception as e:  # noqa: BLE001
        print(f"PostgreSQL not reachable: {e}".strip(), file=sys.stderr)
        return False


#: the system catalogs a PostgreSQL pass churns: every test creates and drops a schema of
#: ~100 tables, and with autovacuum off (as on this machine) their dead rows pile up run
#: after run (1.7 GB of pg_attribute was seen), slowing every later CREATE and DROP
CATALOGS = ("pg_attribute", "pg_depend", "pg_class", "pg_index", "pg_type", "pg_constraint",
            "pg_attrdef", "pg_trigger", "pg_statistic", "pg_sequence")


def vacuum_catalogs() -> None:
    """Reclaim what earlier passes left in the catalogs (best effort: needs the rights)."""
    try:
        import psycopg

        conninfo = os.environ.get("ATRIUM_TEST_PG", "host=127.0.0.1 user=postgres dbname=postgres")
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
            conn.execute("VACUUM " + ", ".join(f"pg_catalog.{t}" for t in CATALOGS))
    except Exception as e:  # noqa: BLE001 - an optimisation only
        print(f"(catalog vacuum skipped: {e})".strip(), file=sys.stderr)


def pytest(engine: str, extra: list[str]) -> int:
    env = dict(os.environ, ATRIUM_TEST_DB=engine)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    print(f"\n=== tests on {engine}: {' '.join(cmd[3:])}", flush=True)
    return subprocess.call(cmd, env=env)


def main(argv: list[str]) -> int:
    rc = pytest("sqlite", argv)
    if rc not in (0,):
        return rc
    if pg_reachable():
        ignore = [f"--ignore={p}" for p in ENGINE_INDEPENDENT]
        vacuum_catalogs()
        rc = pytest("postgres", ignore + argv)
        vacuum_catalogs()
    elif os.environ.get("ATRIUM_REQUIRE_PG") == "1":
        print("ATRIUM_REQUIRE_PG=1 but PostgreSQL is not reachable", file=sys.stderr)
        return 1
    else:
        print("\n=== PostgreSQL pass skipped (not reachable); SQLite pass only", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
