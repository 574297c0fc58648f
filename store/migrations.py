"""Numbered schema migrations, applied in order at start-up.

Each migration is ``store/schema/NNN_name.sql`` (portable SQL), optionally with
``NNN_name.sqlite.sql`` / ``NNN_name.postgres.sql`` overriding it for one engine.  The applied
version is kept in ``schema_version``; each migration runs in its own transaction, so a failed
migration leaves the previous version intact.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from store.database import POSTGRES, Database, Txn

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "schema"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def _migrations(engine: str) -> list[tuple[int, str, Path]]:
    found: dict[int, tuple[str, Path]] = {}
    for p in sorted(SCHEMA_DIR.iterdir()):
        m = _NAME.match(p.name)
        if not m:
            continue
        num, name = int(m.group(1)), m.group(2)
        if name.endswith("_sqlite") or name.endswith("_postgres"):
            continue
        found[num] = (name, p)
    out = []
    suffix = "postgres" if engine == POSTGRES else "sqlite"
    for num, (name, p) in sorted(found.items()):
        override = SCHEMA_DIR / f"{num:03d}_{name}.{suffix}.sql"
        out.append((num, name, override if override.exists() else p))
    return out


def split_statements(sql: str) -> list[str]:
    """Split a migration on ``;`` at line ends; ``--`` comments are dropped."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    stmts, cur = [], []
    for ln in lines:
        cur.append(ln)
        if ln.rstrip().endswith(";"):
            s = "\n".join(cur).strip().rstrip(";").strip()
            if s:
                stmts.append(s)
            cur = []
    tail = "\n".join(cur).strip()
    if tail:
        stmts.append(tail)
    return stmts


def current_version(db: Database) -> int:
    def _q(txn: Txn) -> int:
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        return int(txn.query_value("SELECT MAX(version) FROM schema_version", default=0))

    return db.run("schema_version", _q, write=True)


def apply_migrations(db: Database) -> int:
    """Bring the schema up to date; return the resulting version."""
    version = current_version(db)
    for num, name, path in _migrations(db.engine):
        if num <= version:
            continue
        stmts = split_statements(path.read_text(encoding="utf-8"))

        def _apply(txn: Txn, stmts: list[str] = stmts, num: int = num) -> None:
            txn.execute_script(stmts)
            txn.execute("INSERT INTO schema_version (version) VALUES (?)", (num,))

        db.run(f"migrate_{num:03d}", _apply, write=True)
        log.info("schema: applied %03d_%s", num, name)
        version = num
    return version
