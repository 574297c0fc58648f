"""SQLite group commit (store/database.py): write interactions queued behind the writer share
one transaction, each in its own SAVEPOINT, so one failing rolls back only its own part."""
import gevent
import pytest

from store.database import SQLITE, IntegrityError


@pytest.fixture
def sqlite_db(db):
    if db.engine != SQLITE:
        pytest.skip("group commit is SQLite's writer")
    return db


def _add(txn, name, seen=None):
    txn.execute("INSERT INTO users (name, creation_ts) VALUES (?, ?)", (name, 1))
    if seen is not None:
        txn.call_after_commit(lambda: seen.append(name))
    return name


def _names(db):
    return db.run("q", lambda t: [r[0] for r in t.query("SELECT name FROM users ORDER BY name")])


def _queued(db, calls):
    """Start ``calls`` while the writer is held, so they queue up and commit as one group."""
    db._write_lock.acquire()
    try:
        jobs = [gevent.spawn(db.run, name, fn, *args, write=True) for name, fn, *args in calls]
        gevent.sleep(0.01)
        assert len(db._pending) == len(calls)
    finally:
        db._write_lock.release()
    gevent.joinall(jobs)
    return jobs


def test_queued_writes_share_one_transaction(sqlite_db):
    db, seen = sqlite_db, []
    groups = db.groups
    jobs = _queued(db, [("add", _add, f"@u{i}:x", seen) for i in range(10)])
    assert [j.value for j in jobs] == [f"@u{i}:x" for i in range(10)]
    assert db.groups == groups + 1
    assert sorted(seen) == sorted(f"@u{i}:x" for i in range(10))  # each its own callbacks
    assert len(_names(db)) == 10


def test_a_failing_write_rolls_back_alone(sqlite_db):
    db, seen = sqlite_db, []
    db.run("add", _add, "@taken:x", write=True)

    def half_then_fail(txn):
        _add(txn, "@half:x")
        txn.call_after_commit(lambda: seen.append("never"))
        raise RuntimeError("boom")

    def duplicate(txn):
        _add(txn, "@dup-first:x")
        _add(txn, "@taken:x")

    jobs = _queued(db, [("a", _add, "@a:x", seen), ("fail", half_then_fail),
                        ("dup", duplicate), ("b", _add, "@b:x", seen)])
    assert jobs[0].value == "@a:x" and jobs[3].value == "@b:x"
    assert isinstance(jobs[1].exception, RuntimeError)
    assert isinstance(jobs[2].exception, IntegrityError)
    assert _names(db) == ["@a:x", "@b:x", "@taken:x"]
    assert sorted(seen) == ["@a:x", "@b:x"]


def test_lost_transaction_reruns_the_others_alone(sqlite_db, monkeypatch):
    """If COMMIT of a group fails, each write that had not failed runs again on its own."""
    db = sqlite_db
    real = db._run_group
    failed = []

    def commit_fails_once(group):
        if len(group) > 1 and not failed:
            failed.append(True)
            for w in group:
                w.fn = _wrap_fail_commit(w.fn)
        return real(group)

    def _wrap_fail_commit(fn):
        def run(txn, *args):
            run.calls = getattr(run, "calls", 0) + 1
            out = fn(txn, *args)
            if run.calls == 1 and fn is _add and args[0] == "@b:x":
                txn._cur.execute("ROLLBACK")  # SQLite lost the whole transaction
                raise RuntimeError("transaction lost")
            return out
        return run

    monkeypatch.setattr(db, "_run_group", commit_fails_once)
    jobs = _queued(db, [("a", _add, "@a:x"), ("b", _add, "@b:x"), ("c", _add, "@c:x")])
    assert jobs[0].value == "@a:x" and jobs[2].value == "@c:x"
    assert isinstance(jobs[1].exception, RuntimeError)
    assert _names(db) == ["@a:x", "@c:x"]


def test_a_killed_waiter_does_not_write(sqlite_db):
    db = sqlite_db
    db._write_lock.acquire()
    try:
        job = gevent.spawn(db.run, "add", _add, "@ghost:x", write=True)
        gevent.sleep(0.01)
        job.kill()
        assert len(db._pending) == 0
    finally:
        db._write_lock.release()
    db.run("add", _add, "@real:x", write=True)
    assert _names(db) == ["@real:x"]


def test_synchronous_is_full_unless_opted_out(tmp_path):
    from store.database import SqliteDatabase

    full = SqliteDatabase(str(tmp_path / "a.db"))
    normal = SqliteDatabase(str(tmp_path / "b.db"), synchronous="normal")
    try:
        assert full._writer.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert normal._writer.execute("PRAGMA synchronous").fetchone()[0] == 1
        with pytest.raises(ValueError):
            SqliteDatabase(str(tmp_path / "c.db"), synchronous="OFF")
    finally:
        full.close()
        normal.close()


def test_inline_reads_skip_the_thread_pool(sqlite_db, monkeypatch):
    import gevent.threadpool

    db = sqlite_db
    db.run("add", _add, "@a:x", write=True)
    used = []
    real = gevent.threadpool.ThreadPool.apply
    monkeypatch.setattr(gevent.threadpool.ThreadPool, "apply",
                        lambda self, *a, **k: (used.append(1), real(self, *a, **k))[1])
    q = "SELECT name FROM users WHERE name = ?"
    assert db.run("q", lambda t: t.query_value(q, ("@a:x",)), inline=True) == "@a:x"
    assert used == []
    assert db.run("q", lambda t: t.query_value(q, ("@a:x",))) == "@a:x"
    assert used == ([1] if db._use_pool else [])
