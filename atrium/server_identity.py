"""The server's identity, guarded as Synapse guards it: the ``server_name`` a database was
created with never changes, and a lost signing key is never silently replaced.

At start-up (:func:`establish`, after the migrations): the database records its server name
and signing key id in ``server_identity`` (store/schema/081); a database from before that
table records the configured name on its first start, unless its users belong to another
server.  A configured ``server_name`` other than the recorded one is refused, naming both.
A missing signing key file is generated only when the database is new and empty (no users,
rooms or events); otherwise start-up stops and says where the key belongs.  A key whose id
differs from the recorded one (a deliberate rotation) is recorded with a warning.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from atrium.config import Config, ConfigError

log = logging.getLogger(__name__)

#: ``query(sql, params) -> rows`` with ``?`` placeholders (a Txn's ``query``)
Query = Callable[[str, Sequence[Any]], list[tuple]]


@dataclass(frozen=True)
class Identity:
    server_name: str
    signing_key_id: str | None


def read_identity(query: Query) -> Identity | None:
    rows = query("SELECT server_name, signing_key_id FROM server_identity WHERE id = 1", ())
    return Identity(rows[0][0], rows[0][1]) if rows else None


def foreign_user(query: Query, server_name: str) -> str | None:
    """A local account of another server (the database was made for another name)."""
    rows = query("SELECT name FROM users WHERE name NOT LIKE ? LIMIT 1",
                 (f"%:{server_name}",))
    return rows[0][0] if rows else None


def is_empty(query: Query) -> bool:
    """No users, rooms or events: nothing was ever signed with a key."""
    return not any(query(f"SELECT 1 FROM {table} LIMIT 1", ())
                   for table in ("users", "rooms", "events"))


def name_problem(config: Config, recorded: Identity | None, foreign: str | None) -> str | None:
    """The one-line refusal when the configured server_name is not this database's."""
    where = describe_database(config)
    if recorded is not None and recorded.server_name != config.server_name:
        return (f"config key 'server_name' is '{config.server_name}' but the database "
                f"({where}) belongs to '{recorded.server_name}'; a server name cannot "
                "change: set it back, or point 'database' at a new database")
    if recorded is None and foreign is not None:
        other = foreign.split(":", 1)[-1]
        return (f"config key 'server_name' is '{config.server_name}' but the database "
                f"({where}) holds users of '{other}' (e.g. {foreign}); a server name cannot "
                "change: set it back, or point 'database' at a new database")
    return None


def missing_key_problem(config: Config) -> str:
    return (f"config key 'signing_key_path': {config.signing_key_path} does not exist, but the "
            f"database ({describe_database(config)}) already has users, rooms or events of "
            f"{config.server_name}; restore the key file from a backup (other servers know "
            "events by it), or, if it is lost for good, create a new one with "
            "`python -m atrium generate-signing-key` and list the old key id under "
            "old_signing_keys")


def describe_database(config: Config) -> str:
    args = config.database.args
    if config.database.name == "sqlite3":
        return f"SQLite {args.get('database')}"
    name = args.get("dbname") or args.get("database") or "postgres"
    return f"PostgreSQL {name} on {args.get('host') or 'localhost'}"


def establish(db: Any, config: Config) -> Any:
    """Check the database against the config, load (or, for an empty database, create) the
    signing key and record both; ConfigError (one line) when they do not belong together."""
    from atrium.keys import create_signing_key, key_id, load_signing_key

    def _read(txn: Any) -> tuple[Identity | None, str | None, bool]:
        # no raising in here: under gevent a read runs in the thread pool, which prints
        # every exception it carries back
        recorded = read_identity(txn.query)
        foreign = foreign_user(txn.query, config.server_name) if recorded is None else None
        return recorded, foreign, is_empty(txn.query)

    recorded, foreign, empty = db.run("server_identity_check", _read)
    problem = name_problem(config, recorded, foreign)
    if problem:
        raise ConfigError(problem)
    path = config.signing_key_path
    if os.path.lexists(path):
        key = load_signing_key(path)
    elif empty:  # nothing was ever signed: a new key loses nothing
        key = create_signing_key(path)
    else:
        raise ConfigError(missing_key_problem(config))
    kid = key_id(key)
    if recorded is not None and recorded.signing_key_id not in (None, kid):
        log.warning("the signing key changed from %s to %s (%s); other servers accept events "
                    "signed with the old key only while it is listed in old_signing_keys",
                    recorded.signing_key_id, kid, path)

    def _record(txn: Any) -> None:
        if recorded is None:
            txn.execute("INSERT INTO server_identity (id, server_name, signing_key_id, "
                        "recorded_ts) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                        (config.server_name, kid, int(time.time() * 1000)))
        elif recorded.signing_key_id != kid:
            txn.execute("UPDATE server_identity SET signing_key_id = ?, recorded_ts = ? "
                        "WHERE id = 1", (kid, int(time.time() * 1000)))

    db.run("server_identity_record", _record, write=True)
    return key
