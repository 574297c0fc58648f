"""The engine seam: the same behaviour on SQLite and PostgreSQL."""
import gevent
import pytest

from store.database import IntegrityError
from store.migrations import apply_migrations, current_version, split_statements


def _add(txn, name):
    txn.execute("INSERT INTO users (name, creation_ts) VALUES (?, ?)", (name, 1))


def test_migrations_applied_and_idempotent(db):
    v = current_version(db)
    assert v >= 1
    assert apply_migrations(db) == v


def test_write_commits_and_read_sees_it(db):
    db.run("add", _add, "@a:x", write=True)
    rows = db.run("q", lambda t: t.query("SELECT name, admin FROM users"))
    assert rows == [("@a:x", 0)]


def test_failed_interaction_leaves_no_half_written_row(db):
    def two_then_fail(txn):
        _add(txn, "@a:x")
        _add(txn, "@b:x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        db.run("fail", two_then_fail, write=True)
    assert db.run("q", lambda t: t.query_value("SELECT COUNT(*) FROM users")) == 0


def test_integrity_error_is_translated_and_rolled_back(db):
    db.run("add", _add, "@a:x", write=True)

    def dup(txn):
        _add(txn, "@c:x")
        _add(txn, "@a:x")

    with pytest.raises(IntegrityError):
        db.run("dup", dup, write=True)
    names = db.run("q", lambda t: [r[0] for r in t.query("SELECT name FROM users ORDER BY name")])
    assert names == ["@a:x"]


def test_after_commit_callbacks_run_only_on_commit(db):
    seen = []

    def ok(txn):
        _add(txn, "@a:x")
        txn.call_after_commit(lambda: seen.append("ok"))

    def bad(txn):
        txn.call_after_commit(lambda: seen.append("bad"))
        raise ValueError

    db.run("ok", ok, write=True)
    with pytest.raises(ValueError):
        db.run("bad", bad, write=True)
    assert seen == ["ok"]


def test_upsert_and_returning_are_portable(db):
    db.run("add", _add, "@a:x", write=True)

    def upsert(txn, name):
        txn.execute(
            "INSERT INTO profiles (user_id, displayname) VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname",
            ("@a:x", name))
        return txn.query_one("SELECT displayname FROM profiles WHERE user_id = ?", ("@a:x",))

    assert db.run("u", upsert, "one", write=True) == ("one",)
    assert db.run("u", upsert, "two %s ? literal", write=True) == ("two %s ? literal",)


def test_concurrent_writers_from_greenlets_all_commit(db):
    names = [f"@u{i}:x" for i in range(40)]
    jobs = [gevent.spawn(db.run, "add", _add, n, write=True) for n in names]
    gevent.joinall(jobs, raise_error=True)
    count = db.run("q", lambda t: t.query_value("SELECT COUNT(*) FROM users"))
    assert count == 40


def test_split_statements():
    sql = "-- c\nCREATE TABLE a (x INTEGER);\nCREATE TABLE b (\n y TEXT\n);\n"
    assert split_statements(sql) == ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (\n y TEXT\n)"]


def test_libpq_keywords_pass_through_as_synapse_passes_them():
    from store.database import postgres_conninfo

    info = postgres_conninfo({"user": "a", "database": "d", "host": "h", "sslmode": "require",
                              "sslrootcert": "/ca.pem", "application_name": "atrium",
                              "cp_max": 10, "schema": "s", "options": "-c x=y"})
    assert info.split() == ["user='a'", "dbname='d'", "host='h'", "sslmode='require'",
                            "sslrootcert='/ca.pem'", "application_name='atrium'"]


def test_postgres_options_reach_the_server_beside_the_schema(tmp_path):
    from store.testing import database_config, drop_schema, test_engine
    from store.database import open_database

    if test_engine() != "postgres":
        pytest.skip("PostgreSQL only")
    cfg, schema = database_config(str(tmp_path))
    args = dict(cfg["args"], options="-c statement_timeout=12345")
    db = open_database(cfg["name"], args, migrate=False)
    try:
        got = db.run("show", lambda t: (t.query_value("SHOW statement_timeout"),
                                        t.query_value("SHOW search_path")))
        assert got == ("12345ms", schema)
    finally:
        db.close()
        drop_schema(schema)
