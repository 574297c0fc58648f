"""The copying half of ``python -m atrium port-db`` (the command is :mod:`atrium.port_db`):
which tables are copied and in which order, turning SQLite's loosely typed values into what
PostgreSQL's columns take, the batched keyset copy that commits each batch together with its
progress row, and the progress bar.

A table is copied in keyset order over SQLite's ``rowid`` (or its primary key for a
``WITHOUT ROWID`` table).  Each batch is one PostgreSQL transaction holding the rows *and*
the ``port_db_progress`` row naming the last key copied, so a run killed at any moment
resumes after the last committed batch: nothing copied twice, nothing skipped.
"""
from __future__ import annotations

import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from store.database import is_identifier

#: engine-specific layouts (SQLite FTS5 vs PostgreSQL tsvector) and what is derived from
#: them: not copied; emptied and set back to position 0 on PostgreSQL, so the server's
#: indexers (store/search.py, store/user_directory.py) rebuild them from the events.
DERIVED = {
    "event_search": "message search index",
    "search_index_position": "message search index",
    "user_directory": "user directory",
    "user_directory_search": "user directory",
    "user_directory_rooms": "user directory",
    "user_directory_position": "user directory",
}
#: statements that put the derived tables back to "never indexed" (only those that exist)
DERIVED_RESET = {
    "event_search": "DELETE FROM event_search",
    "search_index_position": "UPDATE search_index_position SET stream_ordering = 0",
    "user_directory": "DELETE FROM user_directory",
    "user_directory_rooms": "DELETE FROM user_directory_rooms",
    "user_directory_position": "UPDATE user_directory_position SET stream_ordering = 0,"
                               " built = 0",
}
#: written by the migrations themselves on PostgreSQL
NOT_COPIED = {"schema_version"}
PROGRESS_TABLE = "port_db_progress"
SOURCE_TABLE = "port_db_source"
_FTS5_SHADOWS = ("_data", "_idx", "_content", "_docsize", "_config")
_INT_RANGE = {"smallint": 2 ** 15, "integer": 2 ** 31, "bigint": 2 ** 63}


class Refused(Exception):
    """The port cannot start (or resume) as asked; nothing was changed. Exit 2."""


class PortFailed(Exception):
    """The port stopped: a value PostgreSQL cannot hold, or the counts differ. Exit 1."""


@dataclass(frozen=True)
class TablePlan:
    name: str
    columns: tuple[str, ...]                 # copied, in the target's order
    key: tuple[str, ...]                     # keyset columns in SQLite: ("rowid",) or the PK
    pk: tuple[str, ...]                      # primary key columns, to name a row in errors
    converters: tuple[Callable[[Any], Any], ...]


def q(name: str) -> str:
    """A checked, quoted identifier (table and column names come from the schemas)."""
    if not is_identifier(name):
        raise Refused(f"unexpected table or column name {name!r}")
    return f'"{name}"'


# --------------------------------------------------------------------------- the plan
def source_tables(src: sqlite3.Connection) -> tuple[list[str], set[str]]:
    """SQLite's ordinary tables, and those skipped: FTS5 virtual tables and their shadows."""
    rows = src.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                       " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").fetchall()
    virtual = {n for n, sql in rows if (sql or "").upper().startswith("CREATE VIRTUAL")}
    skipped = set(virtual) | {v + s for v in virtual for s in _FTS5_SHADOWS}
    return sorted(n for n, _ in rows if n not in skipped), skipped


def dependency_order(src: sqlite3.Connection, tables: list[str]) -> list[str]:
    """``tables`` with every table after the tables its foreign keys point at."""
    parents = {t: sorted({r[2] for r in src.execute(f"PRAGMA foreign_key_list({q(t)})")}
                         & set(tables) - {t}) for t in tables}
    out: list[str] = []
    seen: set[str] = set()

    def visit(t: str, path: tuple[str, ...]) -> None:
        if t in seen:
            return
        if t in path:
            raise Refused(f"foreign keys form a cycle through {t}")
        for p in parents[t]:
            visit(p, path + (t,))
        seen.add(t)
        out.append(t)

    for t in tables:
        visit(t, ())
    return out


def target_columns(pg: Any, table: str) -> dict[str, str]:
    rows = pg.execute("SELECT column_name, data_type FROM information_schema.columns"
                      " WHERE table_schema = current_schema() AND table_name = %s"
                      " ORDER BY ordinal_position", (table,)).fetchall()
    return {r[0]: r[1] for r in rows}


def plan_table(src: sqlite3.Connection, pg: Any, table: str, strip_nul: bool) -> TablePlan:
    info = src.execute(f"PRAGMA table_info({q(table)})").fetchall()
    src_cols = [r[1] for r in info]
    pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    dst = target_columns(pg, table)
    if not dst:
        raise Refused(f"table {table} is in the SQLite database but not on PostgreSQL")
    if set(src_cols) != set(dst):
        raise Refused(f"table {table} has columns {sorted(src_cols)} in SQLite but "
                      f"{sorted(dst)} on PostgreSQL")
    try:
        src.execute(f"SELECT rowid FROM {q(table)} LIMIT 0")
        key: tuple[str, ...] = ("rowid",)
    except sqlite3.OperationalError:  # WITHOUT ROWID: its primary key orders it
        key = pk
    cols = tuple(dst)
    return TablePlan(table, cols, key, pk or ("rowid",),
                     tuple(converter(dst[c], strip_nul) for c in cols))


# --------------------------------------------------------------------------- values
class BadValue(ValueError):
    pass


def converter(data_type: str, strip_nul: bool) -> Callable[[Any], Any]:
    """SQLite value → what a PostgreSQL column of ``data_type`` takes, or :class:`BadValue`."""
    if data_type in _INT_RANGE:
        bound = _INT_RANGE[data_type]

        def to_int(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            elif isinstance(v, str):
                try:
                    v = int(v.strip())
                except ValueError:
                    raise BadValue(f"text {v[:40]!r} in a {data_type} column") from None
            elif not isinstance(v, int):
                raise BadValue(f"{type(v).__name__} value in a {data_type} column")
            if not -bound <= v < bound:
                raise BadValue(f"{v} does not fit a PostgreSQL {data_type}")
            return int(v)

        return to_int
    if data_type in ("text", "character varying", "character"):
        def to_text(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, bytes):
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadValue("bytes that are not UTF-8 text") from None
            elif not isinstance(v, str):
                v = str(v)
            if "\x00" in v:
                if not strip_nul:
                    raise BadValue("text with a NUL character, which PostgreSQL cannot store"
                                   " (run again with --strip-nul to drop NUL characters)")
                v = v.replace("\x00", "")
            return v

        return to_text
    if data_type == "bytea":
        return lambda v: v.encode("utf-8") if isinstance(v, str) else v
    if data_type == "boolean":
        return lambda v: None if v is None else bool(v)
    if data_type in ("double precision", "real", "numeric"):
        return lambda v: v if v is None or isinstance(v, (int, float)) else float(v)
    return lambda v: v


def _describe_row(plan: TablePlan, row: tuple, key_len: int) -> str:
    if plan.pk == ("rowid",) or not set(plan.pk) <= set(plan.columns):
        return f"rowid {row[0]}"
    by_col = dict(zip(plan.columns, row[key_len:]))
    return ", ".join(f"{c} {str(by_col.get(c))[:80]!r}" for c in plan.pk)


def convert_rows(plan: TablePlan, rows: list[tuple]) -> list[tuple]:
    n = len(plan.key)
    out = []
    for row in rows:
        vals = []
        for col, fn, v in zip(plan.columns, plan.converters, row[n:]):
            try:
                vals.append(fn(v))
            except BadValue as e:
                raise PortFailed(f"table {plan.name}, row with {_describe_row(plan, row, n)},"
                                 f" column {col}: {e}") from None
        out.append(tuple(vals))
    return out


# --------------------------------------------------------------------------- copying
def fetch_batch(src: sqlite3.Connection, plan: TablePlan, after: list[Any] | None,
                limit: int) -> list[tuple]:
    """Up to ``limit`` rows after key ``after``: the key columns, then the copied columns."""
    keys = ", ".join(plan.key if plan.key == ("rowid",) else map(q, plan.key))
    cols = ", ".join(map(q, plan.columns))
    sql = f"SELECT {keys}, {cols} FROM {q(plan.name)}"
    args: list[Any] = []
    if after is not None:
        marks = ", ".join("?" for _ in after)
        sql += f" WHERE ({keys}) > ({marks})" if len(after) > 1 else f" WHERE {keys} > ?"
        args = list(after)
    sql += f" ORDER BY {keys} LIMIT ?"
    return src.execute(sql, (*args, limit)).fetchall()


#: called inside each batch's transaction, before COMMIT, with (table, rows copied so far);
#: tests raise from it to stop a run as kill -9 would
BatchHook = Callable[[str, int], None]


def copy_table(src: sqlite3.Connection, pg: Any, plan: TablePlan,
               state: tuple[list[Any] | None, int, bool] | None, total: int, batch: int,
               progress: "Progress", on_batch: BatchHook | None = None) -> int:
    """Copy what is left of one table; return the rows it holds on PostgreSQL (as counted by
    the progress rows).  ``state``: its progress row (last key, rows copied, done), None
    before its first batch."""
    last_key, copied, done = state if state is not None else (None, 0, False)
    progress.start(plan.name, total, copied)
    started = state is not None
    while not done:
        raw = fetch_batch(src, plan, last_key, batch)
        copied = _commit_batch(pg, plan, raw, last_key, copied, started, batch, on_batch)
        started, last_key = True, list(raw[-1][:len(plan.key)]) if raw else last_key
        done = len(raw) < batch
        progress.update(copied)
    progress.finish()
    return copied


def _commit_batch(pg: Any, plan: TablePlan, raw: list[tuple], last_key: list[Any] | None,
                  copied: int, started: bool, batch: int, on_batch: BatchHook | None) -> int:
    """One transaction: the batch's rows and the table's progress row; rows copied after."""
    import psycopg

    cols = ", ".join(map(q, plan.columns))
    rows = convert_rows(plan, raw)
    new_key = list(raw[-1][:len(plan.key)]) if raw else last_key
    done = len(raw) < batch
    try:
        with pg.transaction():
            with pg.cursor() as cur:
                if not started:
                    # rows a fresh migration put there (position tables); never ported rows
                    cur.execute(f"DELETE FROM {q(plan.name)}")
                if rows:
                    with cur.copy(f"COPY {q(plan.name)} ({cols}) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
                cur.execute(
                    f"INSERT INTO {PROGRESS_TABLE} (table_name, last_key, copied, done)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET"
                    " last_key = excluded.last_key, copied = excluded.copied,"
                    " done = excluded.done",
                    (plan.name, json.dumps(new_key), copied + len(rows), int(done)))
                if on_batch is not None:
                    on_batch(plan.name, copied + len(rows))
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PortFailed(f"table {plan.name}: PostgreSQL refused the rows after key "
                         f"{json.dumps(last_key)}: {first}") from None
    return copied + len(rows)


def sqlite_sequences(src: sqlite3.Connection) -> dict[str, int]:
    """AUTOINCREMENT high-water marks: ids SQLite will never hand out again, even where the
    rows holding the largest were deleted."""
    try:
        return {r[0]: int(r[1] or 0) for r in src.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.OperationalError:  # no AUTOINCREMENT table
        return {}


def reset_sequences(pg: Any, floors: dict[str, int]) -> list[str]:
    """Every sequence owned by a column of the schema (serial / identity) set past the
    column's largest value and the table's SQLite AUTOINCREMENT mark (``floors``), so new
    rows never collide with ported ones and deleted ids stay unused; the names of those set.
    (Stream positions need nothing: the server allocates them from MAX() at start-up,
    store/streams.py, and the position tables are copied.)"""
    rows = pg.execute(
        "SELECT s.relname, t.relname, a.attname FROM pg_class s"
        " JOIN pg_namespace n ON n.oid = s.relnamespace"
        " JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass"
        " JOIN pg_class t ON t.oid = d.refobjid"
        " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid"
        " WHERE s.relkind = 'S' AND n.nspname = current_schema() ORDER BY s.relname").fetchall()
    for seq, table, col in rows:
        top = pg.execute(f"SELECT MAX({q(col)}) FROM {q(table)}").fetchone()[0]
        top = max(int(top or 0), floors.get(table, 0))
        # is_called false at 1: the next value is 1, as on a fresh database
        pg.execute("SELECT setval(%s, %s, %s)", (seq, max(top, 1), top > 0))
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- progress
class Progress:
    """A bar per table on a terminal (redrawn in place); plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.name, self.total, self.done = "", 0, 0
        self._drawn = 0.0
        self._empty = True

    def start(self, name: str, total: int, done: int) -> None:
        self.name, self.total, self.done = name, total, done
        self._drawn = time.monotonic()
        self._empty = not total and not done   # nothing to show for an empty table
        if self._empty:
            return
        if self.tty:
            self._draw()
        elif done:
            self._line(f"{name}: resuming after {done} of {total} rows")

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self._empty:
            return
        if self.tty and now - self._drawn >= 0.1:
            self._draw()
            self._drawn = now
        elif not self.tty and now - self._drawn >= 10:
            self._line(f"{self.name}: {done} / {self.total} rows")
            self._drawn = now

    def finish(self) -> None:
        if self._empty:
            return
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._line(f"{self.name}: {self.done} / {self.total} rows copied")

    def abort(self) -> None:
        """The table stopped half-way: end the bar's line so the error reads cleanly."""
        if self.tty and not self._empty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, width: int = 30) -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(frac * width)
        self.stream.write(f"\r{self.name[:32]:<32} {self.done:>10} / {self.total:<10}"
                          f" [{bar:<{width}}] {int(frac * 100):3d}%")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
