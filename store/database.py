"""The database engine seam: the only module that knows SQLite from PostgreSQL.

Callers write SQL with ``?`` placeholders and portable syntax (``ON CONFLICT``, ``RETURNING``,
TEXT / BIGINT / INTEGER columns, booleans as 0/1) and run it inside an *interaction*::

    def _get_user(txn: Txn, user_id: str) -> tuple | None:
        return txn.query_one("SELECT name, admin FROM users WHERE name = ?", (user_id,))

    row = db.run("get_user", _get_user, user_id)            # read
    db.run("add_user", _add_user, user_id, write=True)      # one committed transaction

A write interaction is one transaction: it commits when the function returns and rolls back
when it raises, so a half-written row never survives an error.  ``run`` returns only after
COMMIT, which is what lets the web layer say 200 (ARCHITECTURE invariant 3).

SQLite (the embedded default, through sqlite-utils): WAL, ``synchronous=FULL``; one writer
connection behind a lock, a small pool of reader connections; under gevent each interaction
runs in gevent's thread pool so a slow statement never stalls the other greenlets.  Write
interactions that queue up behind the writer (rooms committing concurrently, the push
evaluator) are committed together: one transaction, one fsync, a SAVEPOINT per interaction so
one that fails rolls back alone (see :meth:`SqliteDatabase._run_group`).
PostgreSQL (psycopg 3, imported after gevent's patch so it waits cooperatively): a bounded
pool of connections, interactions run in the calling greenlet.
"""
from __future__ import annotations

import logging
import queue
import re
import sqlite3
import threading
import time
from collections import deque
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

SQLITE = "sqlite"
POSTGRES = "postgres"


class DatabaseError(Exception):
    """The database could not do what was asked (connection lost, constraint, …)."""


class IntegrityError(DatabaseError):
    """A uniqueness or foreign-key constraint refused the write."""


@lru_cache(maxsize=4096)
def _to_pyformat(sql: str) -> str:
    """Translate ``?`` placeholders to psycopg's ``%s`` (escaping literal ``%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Txn:
    """One transaction on one connection. Only valid inside the interaction that got it."""

    __slots__ = ("engine", "_cur", "_after_commit", "name")

    def __init__(self, engine: str, cursor: Any, name: str) -> None:
        self.engine = engine
        self._cur = cursor
        self._after_commit: list[Callable[[], None]] = []
        self.name = name

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        if self.engine == POSTGRES:
            sql = _to_pyformat(sql)
        self._cur.execute(sql, params)
        return self._cur.rowcount

    def execute_script(self, statements: Sequence[str]) -> None:
        """Run statements without parameters (a migration): on PostgreSQL in one round trip
        (a fresh schema takes ~200 statements), on SQLite one by one (sqlite3's
        ``executescript`` would commit the transaction)."""
        if self.engine == POSTGRES:
            self._cur.execute(";\n".join(statements))
        else:
            for s in statements:
                self._cur.execute(s)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        if not seq:
            return
        if self.engine == POSTGRES:
            sql = _to_pyformat(sql)
        self._cur.executemany(sql, seq)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self.execute(sql, params)
        return [tuple(r) for r in self._cur.fetchall()]

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        self.execute(sql, params)
        r = self._cur.fetchone()
        return tuple(r) if r is not None else None

    def query_value(self, sql: str, params: Sequence[Any] = (), default: Any = None) -> Any:
        r = self.query_one(sql, params)
        return r[0] if r is not None and r[0] is not None else default

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.execute(sql, params)
        cols = [d[0] for d in self._cur.description]
        return [dict(zip(cols, r)) for r in self._cur.fetchall()]

    def call_after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the transaction has committed (never if it rolls back)."""
        self._after_commit.append(fn)


class Database:
    """A pool of connections to one database, SQLite or PostgreSQL."""

    engine: str
    #: optional hooks (web/metrics.py): ``observe(name, seconds, write)`` after each
    #: transaction that succeeded, ``observe_group(size)`` after each SQLite group commit
    observe: Callable[[str, float, bool], None] | None = None
    observe_group: Callable[[int], None] | None = None

    def run(self, name: str, fn: Callable[..., T], *args: Any, write: bool = False,
            inline: bool = False) -> T:
        """Run ``fn(txn, *args)`` as one transaction.  ``inline`` (reads only) promises a
        tiny read — a few primary-key lookups — that may run in the calling greenlet instead
        of a thread, saving the hand-off; meanwhile every other greenlet waits, so never use
        it for a scan."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _finish(txn: Txn) -> None:
        for cb in txn._after_commit:
            try:
                cb()
            except Exception:  # a failing listener must not undo a committed write
                log.exception("after-commit callback failed (%s)", txn.name)


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover
        return False
    return bool(monkey.is_module_patched("threading"))


def _translate_sqlite_error(e: sqlite3.Error) -> DatabaseError:
    if isinstance(e, sqlite3.IntegrityError):
        return IntegrityError(str(e))
    return DatabaseError(str(e))


class _Write:
    """One write interaction waiting for (or done by) a group commit."""

    __slots__ = ("name", "fn", "args", "done", "result", "txn", "error")

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple) -> None:
        self.name, self.fn, self.args = name, fn, args
        self.done = False
        self.result: Any = None
        self.txn: Txn | None = None
        self.error: BaseException | None = None


class SqliteDatabase(Database):
    """SQLite in WAL mode: one writer connection, a few readers (sqlite-utils for set-up)."""

    engine = SQLITE
    #: most write interactions committed in one transaction
    max_group = 64

    def __init__(self, path: str, *, readers: int = 4, synchronous: str = "FULL") -> None:
        import sqlite_utils

        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        self._use_pool = _gevent_patched()
        self._writer = self._connect()
        sqlite_utils.Database(self._writer).enable_wal()
        self._write_lock = threading.Lock()  # cooperative once gevent has patched threading
        self._pending: deque[_Write] = deque()
        self._readers: queue.Queue[sqlite3.Connection] = queue.Queue()
        self.readers = readers  # reader connections (stats, metrics)
        for _ in range(readers):
            self._readers.put(self._connect())
        self._closed = False
        self.groups = 0            # transactions committed by the writer (stats, tests)
        self.grouped = 0           # interactions that shared a transaction with another

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL (the default): a 200 means on disk, even on power loss.  NORMAL is opt-in.
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _interact(self, conn: sqlite3.Connection, name: str, fn: Callable[..., T],
                  args: tuple, write: bool) -> tuple[T, Txn]:
        cur = conn.cursor()
        txn = Txn(SQLITE, cur, name)
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(txn, *args)
        except BaseException:
            if conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result, txn

    def _run_group(self, group: list[_Write]) -> None:
        """Run ``group`` on the writer in one transaction, a SAVEPOINT per interaction: a
        failing interaction rolls back to its savepoint (its own writes only) and gets its
        error; the others commit together.  Should the transaction itself be lost (COMMIT
        fails, or SQLite rolled everything back), each interaction not yet failed is run
        again alone, so every caller gets the outcome of its own transaction."""
        conn = self._writer
        if len(group) == 1:
            w = group[0]
            try:
                w.result, w.txn = self._interact(conn, w.name, w.fn, w.args, True)
            except BaseException as e:
                w.error = e
            return
        cur = conn.cursor()
        intact = True
        try:
            cur.execute("BEGIN IMMEDIATE")
            for w in group:
                txn = Txn(SQLITE, cur, w.name)
                cur.execute("SAVEPOINT atrium_write")
                try:
                    w.result = w.fn(txn, *w.args)
                except BaseException as e:
                    w.error = e
                    if not conn.in_transaction:
                        intact = False
                        break
                    cur.execute("ROLLBACK TO atrium_write")
                    cur.execute("RELEASE atrium_write")
                    continue
                cur.execute("RELEASE atrium_write")
                w.txn = txn
            if intact:
                cur.execute("COMMIT")
        except sqlite3.Error:
            intact = False
        if intact:
            return
        if conn.in_transaction:
            cur.execute("ROLLBACK")
        for w in group:
            if w.error is not None:
                continue  # failed on its own: its outcome stands
            w.result, w.txn = None, None
            try:
                w.result, w.txn = self._interact(conn, w.name, w.fn, w.args, True)
            except BaseException as e:
                w.error = e

    def _write(self, name: str, fn: Callable[..., T], args: tuple) -> tuple[T, Txn]:
        """Queue the interaction; whoever holds the writer runs what is queued, in groups of
        at most :attr:`max_group`, until its own interaction is done."""
        me = _Write(name, fn, args)
        self._pending.append(me)
        try:
            with self._write_lock:
                while not me.done:
                    group: list[_Write] = []
                    while self._pending and len(group) < self.max_group:
                        group.append(self._pending.popleft())
                    try:
                        self._run_on_writer(group)
                    finally:
                        self.groups += 1
                        if self.observe_group is not None:
                            self.observe_group(len(group))
                        if len(group) > 1:
                            self.grouped += len(group)
                        for w in group:
                            if w.txn is None and w.error is None:
                                w.error = DatabaseError(f"{w.name}: write was not run")
                            w.done = True
        except BaseException:
            if not me.done:  # the caller gave up (killed) before its write started
                try:
                    self._pending.remove(me)
                except ValueError:
                    pass
            raise
        if me.error is not None:
            raise me.error
        assert me.txn is not None
        return me.result, me.txn

    def _run_on_writer(self, group: list[_Write]) -> None:
        """``_run_group`` in gevent's thread pool.  If this greenlet is interrupted meanwhile,
        wait for the thread anyway (the writer connection must not be shared, and the group's
        outcomes must be known), then re-raise the interruption."""
        if not self._use_pool:
            self._run_group(group)
            return
        import gevent

        job = gevent.get_hub().threadpool.spawn(self._run_group, group)
        interrupted: BaseException | None = None
        while not job.ready():
            try:
                job.wait()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                interrupted = e
        job.get()
        if interrupted is not None:
            raise interrupted

    def _read(self, name: str, fn: Callable[..., T], args: tuple,
              inline: bool = False) -> tuple[T, Txn]:
        conn = self._readers.get()
        try:
            if self._use_pool and not inline:
                import gevent

                return gevent.get_hub().threadpool.apply(
                    self._interact, (conn, name, fn, args, False))
            return self._interact(conn, name, fn, args, False)
        finally:
            self._readers.put(conn)

    def run(self, name: str, fn: Callable[..., T], *args: Any, write: bool = False,
            inline: bool = False) -> T:
        if self._closed:
            raise DatabaseError("database is closed")
        started = time.perf_counter()
        try:
            if write:
                result, txn = self._write(name, fn, args)
            else:
                result, txn = self._read(name, fn, args, inline)
        except sqlite3.Error as e:
            raise _translate_sqlite_error(e) from e
        if self.observe is not None:
            self.observe(name, time.perf_counter() - started, write)
        self._finish(txn)
        return result

    def close(self) -> None:
        self._closed = True
        with self._write_lock:
            self._writer.close()
        while not self._readers.empty():
            self._readers.get_nowait().close()


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3 with a small bounded connection pool."""

    engine = POSTGRES

    def __init__(self, conninfo: str, *, min_size: int = 1, max_size: int = 10,
                 schema: str | None = None, options: str | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self.conninfo = conninfo
        self.schema = schema
        self.options = options   # libpq's options (e.g. "-c statement_timeout=60s")
        self.max_size = max_size
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._count = 0
        self._count_lock = threading.Lock()
        self._closed = False
        for _ in range(min_size):
            self._idle.put(self._connect())

    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {"autocommit": True}
        options = [o for o in (self.options,
                               self.schema and f"-c search_path={self.schema}") if o]
        if options:
            kwargs["options"] = " ".join(options)
        conn = self._psycopg.connect(self.conninfo, **kwargs)
        with self._count_lock:
            self._count += 1
        return conn

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self._count_lock:
                can_grow = self._count < self.max_size
            conn = self._connect() if can_grow else self._idle.get(timeout=30)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            if conn.closed or (not ok and conn.info.transaction_status != 0):
                # a broken or mid-transaction connection is not reused
                try:
                    conn.close()
                finally:
                    with self._count_lock:
                        self._count -= 1
            else:
                self._idle.put(conn)

    def run(self, name: str, fn: Callable[..., T], *args: Any, write: bool = False,
            inline: bool = False) -> T:
        if self._closed:
            raise DatabaseError("database is closed")
        psycopg = self._psycopg
        started = time.perf_counter()
        for attempt in range(3):
            try:
                with self._conn() as conn:
                    with conn.transaction():
                        with conn.cursor() as cur:
                            txn = Txn(POSTGRES, cur, name)
                            result = fn(txn, *args)
                if self.observe is not None:
                    self.observe(name, time.perf_counter() - started, write)
                self._finish(txn)
                return result
            except psycopg.errors.SerializationFailure:
                if attempt == 2:
                    raise DatabaseError(f"{name}: serialization failure, gave up")
                time.sleep(0.01 * (attempt + 1))
            except psycopg.IntegrityError as e:
                raise IntegrityError(str(e)) from e
            except psycopg.OperationalError as e:
                raise DatabaseError(str(e)) from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            try:
                self._idle.get_nowait().close()
            except Exception:
                pass


#: libpq connection keywords accepted in ``database.args`` besides the ones above
LIBPQ_KEYWORDS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl",
                  "application_name", "connect_timeout", "keepalives", "keepalives_idle",
                  "keepalives_interval", "keepalives_count", "target_session_attrs",
                  "passfile", "service", "hostaddr")


def postgres_conninfo(args: dict[str, Any]) -> str:
    """Synapse's ``database.args`` (user, password, database/dbname, host, port) → conninfo."""
    parts = []
    mapping = {"user": "user", "password": "password", "database": "dbname", "dbname": "dbname",
               "host": "host", "port": "port"}
    # libpq's other keywords pass through as Synapse passes them to psycopg2
    mapping.update((k, k) for k in LIBPQ_KEYWORDS)
    for k, v in args.items():
        if k in mapping and v is not None:
            s = str(v).replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"{mapping[k]}='{s}'")
    return " ".join(parts)


def open_database(name: str, args: dict[str, Any], *, migrate: bool = True) -> Database:
    """Open the configured database and bring its schema up to date."""
    db: Database
    if name == "sqlite3":
        import os

        path = args["database"]
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # synchronous: FULL unless the operator opts into less (database.args.synchronous)
        db = SqliteDatabase(path, synchronous=str(args.get("synchronous", "FULL")))
    else:
        db = PostgresDatabase(postgres_conninfo(args), min_size=int(args.get("cp_min", 1)),
                              max_size=int(args.get("cp_max", 10)), schema=args.get("schema"),
                              options=args.get("options"))
    if migrate:
        from store.migrations import apply_migrations

        apply_migrations(db)
    return db


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_identifier(s: str) -> bool:
    return bool(_IDENT.match(s))
