"""The environment a config points at, checked before anything is served: the media folder,
the SQLite file or PostgreSQL database, the signing key, the TLS files and the addresses to
bind.  Every problem is one line naming the config key (or ``ATRIUM_BIND``).

Three callers: :func:`open_store` at start-up (creates what is missing, then opens and
migrates the database and checks the server's identity: :mod:`atrium.server_identity`);
:func:`before_binding` in gunicorn's arbiter (``gunicorn.conf.py``'s ``on_starting``: the
config and the files, before a socket is bound; PostgreSQL is left to the worker, which
imports psycopg only after gevent's patch); and ``python -m atrium check-config``
(:func:`check_environment`: the same checks, creating nothing).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from atrium.config import Config, ConfigError

log = logging.getLogger(__name__)


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- folders, files

def _creatable_dir(path: str, key: str) -> str | None:
    """Can ``path`` be a folder we write into (existing, or creatable under its nearest
    existing ancestor)?  A problem line, or None."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            return f"config key '{key}': {path} exists and is not a folder"
        if not os.access(p, os.W_OK | os.X_OK):
            return f"config key '{key}': {path} is not writable"
        return None
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"config key '{key}': {path} cannot be created: {parent} is a file"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"config key '{key}': {path} cannot be created: {parent} is not writable"
            return None
    return None


def _make_writable_dir(path: str, key: str) -> None:
    """Create the folder and prove it takes a file (catches read-only mounts, also as root)."""
    problem = _creatable_dir(path, key)
    if problem:
        raise ConfigError(problem)
    probe = os.path.join(path, f".atrium-write-check-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"config key '{key}': {path} is not usable: {_reason(e)}") from None


def _sqlite_problem(path: str, create: bool) -> str | None:
    key = "database.args.database"
    if path == ":memory:":
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if create:
        try:
            _make_writable_dir(folder, key)
        except ConfigError as e:
            return str(e)
    else:
        problem = _creatable_dir(folder, key)
        if problem:
            return problem
    if os.path.exists(path):
        if not os.path.isfile(path):
            return f"config key '{key}': {path} is not a file"
        import sqlite3

        try:
            conn = sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=ro",
                                   uri=True, timeout=5)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            return f"config key '{key}': {path} is not a usable SQLite database: {_reason(e)}"
    return None


def _tls_problem(config: Config) -> str | None:
    if not config.serves_tls:
        return None
    import ssl

    cert = config.federation.tls_certificate_path
    key = config.federation.tls_private_key_path
    for k, p in (("tls_certificate_path", cert), ("tls_private_key_path", key)):
        try:
            with open(p or "", "rb"):
                pass
        except OSError as e:
            return f"config key '{k}': {p} cannot be read: {_reason(e)}"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        return (f"config keys 'tls_certificate_path' / 'tls_private_key_path': {cert} and "
                f"{key} are not a PEM certificate and its private key ({_reason(e)})")
    return None


def _key_problem(config: Config) -> str | None:
    """An existing signing key that cannot be used (a missing one needs the database)."""
    if not os.path.lexists(config.signing_key_path):
        return None
    from atrium.keys import load_signing_key

    try:
        load_signing_key(config.signing_key_path)
    except ConfigError as e:
        return str(e)
    return None


def file_problems(config: Config, *, create: bool) -> list[str]:
    """Media folder, SQLite file, signing key, TLS files; ``create`` makes the folders."""
    out: list[str | None] = []
    if create:
        try:
            _make_writable_dir(config.media_store_path, "media_store_path")
        except ConfigError as e:
            out.append(str(e))
    else:
        out.append(_creatable_dir(config.media_store_path, "media_store_path"))
    if config.database.name == "sqlite3":
        out.append(_sqlite_problem(config.database.args["database"], create))
    out.append(_key_problem(config))
    out.append(_tls_problem(config))
    return [p for p in out if p]


# --------------------------------------------------------------------------- PostgreSQL

def _pg_problem(config: Config, e: BaseException) -> str:
    from atrium.server_identity import describe_database

    args = config.database.args
    text = _reason(e)
    low = text.lower()
    if "database" in low and "does not exist" in low:
        key = "database.args." + ("dbname" if "dbname" in args else "database")
    elif ("password" in low or "pg_hba" in low or "role" in low
          or "authentication" in low):
        key = "database.args.user"
    else:
        key = "database.args.host"
    return (f"config key '{key}': cannot connect to {describe_database(config)}: "
            f"{text.removeprefix('connection failed: ')}")


def _pg_connect(config: Config) -> Any:
    import psycopg

    from store.database import postgres_conninfo

    args = config.database.args
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
    if args.get("schema"):
        kwargs["options"] = f"-c search_path={args['schema']}"
    try:
        return psycopg.connect(postgres_conninfo(args), **kwargs)
    except psycopg.Error as e:
        raise ConfigError(_pg_problem(config, e)) from None


def _pg_schema_problem(config: Config, conn: Any) -> str | None:
    schema = config.database.args.get("schema")
    if schema and conn.execute("SELECT 1 FROM information_schema.schemata "
                               "WHERE schema_name = %s", (schema,)).fetchone() is None:
        return f"config key 'database.args.schema': schema {schema!r} does not exist"
    from atrium.port_db_copy import SOURCE_TABLE  # noqa: PLC0415

    # a port-db run that has not finished (it drops its bookkeeping once the counts match)
    name = f"{schema}.{SOURCE_TABLE}" if schema else SOURCE_TABLE
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:
        return ("config key 'database': this PostgreSQL database holds an unfinished "
                "`python -m atrium port-db` run; run the same command again to finish it "
                "before starting the server")
    return None


# --------------------------------------------------------------------------- start-up

def open_store(config: Config) -> tuple[Any, Any]:
    """Check the environment (creating the folders), open and migrate the database, check
    the server's identity and load the signing key: ``(db, signing_key)``, or ConfigError."""
    from atrium.server_identity import describe_database, establish
    from store.database import open_database

    problems = file_problems(config, create=True)
    if problems:
        raise ConfigError(problems[0])
    if config.database.name != "sqlite3":
        conn = _pg_connect(config)
        try:
            problem = _pg_schema_problem(config, conn)
        finally:
            conn.close()
        if problem:
            raise ConfigError(problem)
    try:
        db = open_database(config.database.name, config.database.args)
    except Exception as e:  # noqa: BLE001 -- one line at start-up; details at DEBUG
        log.debug("opening the database failed", exc_info=True)
        raise ConfigError(f"config key 'database': cannot open {describe_database(config)}: "
                          f"{_reason(e)}") from None
    try:
        return db, establish(db, config)
    except BaseException:
        db.close()
        raise


def _print_and_exit(message: str, pidfile: Any = None) -> None:
    print(f"atrium: {message}", file=sys.stderr, flush=True)
    if pidfile is not None:
        try:
            pidfile.unlink()
        except Exception:  # noqa: BLE001
            pass
    sys.exit(4)


def before_binding(server: Any) -> None:
    """gunicorn ``on_starting`` (arbiter, before binding): write a default config for the
    addresses about to be bound, check the config and its files, and that the addresses can
    be bound; a problem is one line on stderr and exit status 4, no traceback."""
    from atrium.config import load_config

    cfg = server.cfg
    binds = list(cfg.bind or [])
    try:
        config = load_config(binds=binds, warn=False)
        if config.database.name == "sqlite3":  # also the identity; psycopg waits for gevent
            problems = check_environment(config)[0]
        else:
            problems = file_problems(config, create=False)
    except ConfigError as e:
        problems = [str(e)]
    inherited = any(k in os.environ for k in ("GUNICORN_FD", "LISTEN_FDS"))
    if not problems and not inherited and not getattr(cfg, "reuse_port", False):
        for _attempt in range(5):  # as gunicorn: a server stopping may still hold the port
            problems = bind_problems(binds)
            if not any("in use" in p for p in problems):
                break
            time.sleep(1)
    if problems:
        _print_and_exit(problems[0], getattr(server, "pidfile", None))


def bind_problems(binds: list[str]) -> list[str]:
    """Addresses that cannot be bound now (in use, not on this machine, privileged)."""
    where = "ATRIUM_BIND" if os.environ.get("ATRIUM_BIND") else "listeners"
    out = []
    for b in binds:
        if b.startswith("unix:") or b.startswith("fd://"):
            continue
        host, _, port = b.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as e:
            out.append(f"{where}: cannot resolve {b}: {_reason(e)}")
            continue
        family, _, _, _, addr = infos[0]
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
            s.bind(addr)
        except OSError as e:
            why = {errno.EADDRINUSE: "the address is already in use",
                   errno.EADDRNOTAVAIL: "the address is not on this machine",
                   errno.EACCES: "permission denied (a port below 1024 needs root)"}.get(
                       e.errno, _reason(e))
            out.append(f"{where}: cannot listen on {b}: {why}")
        finally:
            s.close()
    return out


# --------------------------------------------------------------------------- check-config

def check_environment(config: Config) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` for check-config, creating nothing: the files, the database
    (reachable; its recorded identity against the config) and the signing key."""
    from atrium.server_identity import (foreign_user, is_empty, missing_key_problem,
                                        name_problem, read_identity)

    problems = file_problems(config, create=False)
    notes: list[str] = []
    if any("'database" in p for p in problems):
        return problems, notes
    try:
        query, tables, close = _read_only(config)
    except ConfigError as e:
        return problems + [str(e)], notes
    try:
        if query is None:
            notes.append("the database does not exist yet: it is created at the first start")
        elif tables("users"):
            recorded = read_identity(query) if tables("server_identity") else None
            foreign = foreign_user(query, config.server_name) if recorded is None else None
            problem = name_problem(config, recorded, foreign)
            if problem:
                problems.append(problem)
            if not os.path.lexists(config.signing_key_path) and not is_empty(query):
                problems.append(missing_key_problem(config))
    finally:
        close()
    if not os.path.lexists(config.signing_key_path) and not any(
            "signing_key_path" in p for p in problems):
        notes.append(f"no signing key at {config.signing_key_path}: one is generated at the "
                     "first start (the database is empty)")
    return problems, notes


def _read_only(config: Config) -> tuple[Any, Callable[[str], bool], Callable[[], None]]:
    """``(query, has_table, close)`` over a read-only connection; query is None when the
    SQLite file does not exist yet."""
    if config.database.name == "sqlite3":
        import sqlite3

        path = config.database.args["database"]
        if path == ":memory:" or not os.path.exists(path):
            return None, lambda t: False, lambda: None
        conn = sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=ro", uri=True)

        def has(t: str) -> bool:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                "name = ?", (t,)).fetchone() is not None

        return (lambda sql, p: conn.execute(sql, p).fetchall()), has, conn.close
    conn = _pg_connect(config)
    problem = _pg_schema_problem(config, conn)
    if problem:
        conn.close()
        raise ConfigError(problem)

    def pg_has(t: str) -> bool:
        return conn.execute("SELECT 1 FROM information_schema.tables WHERE table_name = %s "
                            "AND table_schema = current_schema()", (t,)).fetchone() is not None

    def pg_query(sql: str, p: Any) -> list[tuple]:
        return conn.execute(sql.replace("?", "%s"), p).fetchall()

    return pg_query, pg_has, conn.close
