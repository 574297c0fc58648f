"""Test-wide set-up. gevent is patched before anything imports threading, ssl or psycopg,
exactly as in the server (STACK-NOTES: patch first)."""
from gevent import monkey

if not monkey.is_module_patched("threading"):
    monkey.patch_all()

import pytest  # noqa: E402

from store.testing import drop_schema, open_test_database, test_engine  # noqa: E402


def pytest_report_header(config):  # noqa: ARG001
    return f"atrium test database engine: {test_engine()}"


@pytest.fixture
def db(tmp_path):
    """A fresh, migrated database on the engine under test (SQLite or PostgreSQL)."""
    database, schema = open_test_database(str(tmp_path))
    try:
        yield database
    finally:
        database.close()
        drop_schema(schema)
