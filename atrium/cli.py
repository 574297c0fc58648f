"""Command-line tools: ``python -m atrium register`` (create a user through the shared-secret
admin API, like Synapse's ``register_new_matrix_user``), ``python -m atrium check-config``
(validate the config file and say what is wrong in one line), ``python -m atrium
hash-password`` (a bcrypt hash for the ``users.password_hash`` column, like Synapse's
``hash_password``) and ``python -m atrium demo`` (three federating servers on loopback,
:mod:`atrium.demo`).

Exit codes: 0 success, 1 the server refused or could not be reached, 2 bad usage or config,
130 interrupted, 141 the reader of the output went away (``| head``), like coreutils.

The server's URL (``register --url``) defaults to where the server listens: ``ATRIUM_BIND``,
else the config's ``public_baseurl`` when it is on this machine, else its ``listeners``
(:func:`atrium.listeners.client_url`), so ``ATRIUM_BIND=127.0.0.1:8710`` serves and
registers alike.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import os
import sys
from typing import Any

from atrium.config import Config, ConfigError, config_path_from_env, load_config

DEFAULT_URL = "http://127.0.0.1:8008"


def registration_mac(secret: str, nonce: str, username: str, password: str, admin: bool,
                     user_type: str | None = None) -> str:
    """HMAC-SHA1 over nonce, username, password and admin flag (Synapse's admin API)."""
    parts = [nonce, username, password, "admin" if admin else "notadmin"]
    if user_type:
        parts.append(user_type)
    msg = b"\x00".join(p.encode("utf-8") for p in parts)
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha1).hexdigest()


def register_user(url: str, secret: str, username: str, password: str, *, admin: bool,
                  user_type: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Run the nonce + HMAC exchange against ``url``; the server's JSON answer, or raise
    ``RuntimeError`` with the server's error."""
    import requests

    endpoint = url.rstrip("/") + "/_synapse/admin/v1/register"
    r = requests.get(endpoint, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(_describe(r))
    nonce = r.json()["nonce"]
    body: dict[str, Any] = {"nonce": nonce, "username": username, "password": password,
                            "admin": admin,
                            "mac": registration_mac(secret, nonce, username, password, admin,
                                                    user_type)}
    if user_type:
        body["user_type"] = user_type
    r = requests.post(endpoint, json=body, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(_describe(r))
    return r.json()


def _describe(r: Any) -> str:
    try:
        j = r.json()
        return f"{r.status_code} {j.get('errcode', '')}: {j.get('error', r.text)}"
    except ValueError:
        return f"{r.status_code}: {r.text[:200]}"


def _load(path: str | None, *, warn: bool = True) -> Config:
    return load_config(path or config_path_from_env(), write_default=False, warn=warn)


def server_url(config: Config | None) -> str:
    """Where this machine reaches the server (see the module docstring)."""
    from atrium.listeners import client_url  # noqa: PLC0415

    if config is None:
        return client_url(None, (), False)
    return client_url(config.public_baseurl, config.listeners, config.serves_tls)


def _new_password() -> str:
    """Prompted for twice on a terminal, else one line of stdin; EOFError when stdin is
    closed, ValueError when the two differ."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Confirm password: "):
        raise ValueError("passwords do not match")
    return password


def cmd_register(args: argparse.Namespace) -> int:
    secret = args.shared_secret
    config = None
    if secret is None or args.url is None:
        try:
            config = _load(args.config, warn=False)
        except ConfigError as e:
            if secret is None:
                print(f"atrium: {e}", file=sys.stderr)
                return 2
        if secret is None and config is not None:
            secret = config.registration_shared_secret
    if not secret:
        print("atrium: no registration_shared_secret in the config (or --shared-secret)",
              file=sys.stderr)
        return 2
    from atrium.listeners import BindError  # noqa: PLC0415

    try:
        url = args.url or server_url(config)
    except BindError as e:
        print(f"atrium: {e}", file=sys.stderr)
        return 2
    try:
        username = args.user or input("New user localpart: ").strip()
    except EOFError:
        print("atrium: no user name given (stdin closed)", file=sys.stderr)
        return 2
    password = args.password
    if password is None:
        try:
            password = _new_password()
        except ValueError as e:
            print(f"atrium: {e}", file=sys.stderr)
            return 2
        except EOFError:
            print("atrium: no password given (stdin closed)", file=sys.stderr)
            return 2
    if not username or not password:
        print("atrium: username and password must not be empty", file=sys.stderr)
        return 2
    args.url = url
    try:
        result = register_user(url, secret, username, password, admin=args.admin,
                               user_type=args.user_type)
    except RuntimeError as e:
        print(f"atrium: registration failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"atrium: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    print(f"Success! Registered {result.get('user_id')}"
          f"{' (admin)' if args.admin else ''}.")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """The checks start-up makes, creating nothing: every problem is one line."""
    from atrium.config_checks import bind_problems, check_environment  # noqa: PLC0415
    from atrium.config import KNOWN_KEYS  # noqa: PLC0415
    from atrium.listeners import BindError, bind_addresses  # noqa: PLC0415
    from atrium.synapse_keys import unused_key_warnings  # noqa: PLC0415

    try:
        config = _load(args.config, warn=False)
        binds = bind_addresses(config.listeners)
    except (ConfigError, BindError) as e:
        print(f"atrium: {e}", file=sys.stderr)
        return 2
    for line in unused_key_warnings(config.raw, KNOWN_KEYS):
        print(f"atrium: warning: {line}", file=sys.stderr)
    problems, notes = check_environment(config)
    for p in bind_problems(binds):  # in use: most likely by this server, running
        (notes.append(f"{p} (a running server?)") if "in use" in p else problems.append(p))
    for line in notes:
        print(f"atrium: note: {line}", file=sys.stderr)
    for line in problems:
        print(f"atrium: {line}", file=sys.stderr)
    if problems:
        return 2
    if config.enable_registration and not (config.enable_registration_without_verification
                                           or config.registration_requires_token
                                           or config.captcha.enabled):
        print("atrium: warning: enable_registration is on without "
              "enable_registration_without_verification, registration_requires_token or "
              "enable_registration_captcha; "
              "registration will be refused (this server cannot verify e-mail)",
              file=sys.stderr)
    print(f"config {config.path} is valid (server_name: {config.server_name}, "
          f"database: {config.database.name}, listening on {', '.join(binds)})")
    return 0


def cmd_generate_signing_key(args: argparse.Namespace) -> int:
    """A new signing key at the config's ``signing_key_path`` (never over an existing one)."""
    from atrium.keys import create_signing_key, key_id  # noqa: PLC0415

    try:
        key = create_signing_key(_load(args.config, warn=False).signing_key_path)
    except ConfigError as e:
        print(f"atrium: {e}", file=sys.stderr)
        return 2
    print(f"new signing key {key_id(key)}")
    return 0


#: bcrypt reads this many bytes of a password (the server cuts there too: web/uia.py)
BCRYPT_MAX_BYTES = 72
DEFAULT_BCRYPT_ROUNDS = 12


def hash_password(password: str, rounds: int) -> str:
    """The bcrypt hash the server's login accepts for ``password`` (the same bytes as
    ``web.uia.hash_password``: UTF-8, cut at 72 bytes, no normalisation)."""
    import bcrypt  # noqa: PLC0415

    secret = password.encode("utf-8")[:BCRYPT_MAX_BYTES]
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds)).decode("ascii")


def _read_password(args: argparse.Namespace) -> str:
    """From ``-p``, else a line of a piped stdin, else prompted for twice (ValueError when
    the two differ or it is empty)."""
    if args.password is not None:
        password = args.password
    elif not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if password and password != getpass.getpass("Confirm password: "):
            raise ValueError("passwords do not match")
    if not password:
        raise ValueError("the password must not be empty")
    return password


def cmd_hash_password(args: argparse.Namespace) -> int:
    rounds = DEFAULT_BCRYPT_ROUNDS
    path = args.config or config_path_from_env()
    if args.config is not None or os.path.exists(path):
        try:
            rounds = _load(path).bcrypt_rounds
        except ConfigError as e:
            print(f"atrium: {e}", file=sys.stderr)
            return 2
    else:
        print(f"atrium: no config at {path}: using bcrypt_rounds {rounds}", file=sys.stderr)
    try:
        password = _read_password(args)
    except ValueError as e:
        print(f"atrium: {e}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("", file=sys.stderr)
        return 2
    if len(password.encode("utf-8")) > BCRYPT_MAX_BYTES:
        print(f"atrium: note: only the first {BCRYPT_MAX_BYTES} bytes of the password count "
              "(bcrypt), at login too", file=sys.stderr)
    print(hash_password(password, rounds))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from atrium.demo import main as demo_main  # noqa: PLC0415

    return demo_main(args)


def cmd_port_db(args: argparse.Namespace) -> int:
    from atrium.port_db import main as port_db_main  # noqa: PLC0415

    return port_db_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m atrium", description="Atrium homeserver tools")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="create a user with the shared-secret admin API")
    r.add_argument("-u", "--user", help="localpart of the new user")
    r.add_argument("-p", "--password", help="password (prompted for if omitted)")
    r.add_argument("-a", "--admin", action="store_true", help="make the user a server admin")
    r.add_argument("--no-admin", dest="admin", action="store_false")
    r.add_argument("-t", "--user_type", "--user-type", dest="user_type",
                   choices=["support", "bot"], help="optional user type")
    r.add_argument("-c", "--config", help="config file holding registration_shared_secret "
                                         "(default: $ATRIUM_CONFIG or ./homeserver.yaml)")
    r.add_argument("-k", "--shared-secret", help="the shared secret, instead of a config file")
    r.add_argument("--url", help="server URL (default: where ATRIUM_BIND or the config's "
                                 f"public_baseurl / listeners say, else {DEFAULT_URL})")
    r.set_defaults(func=cmd_register)

    c = sub.add_parser("check-config", help="validate the config file")
    c.add_argument("-c", "--config", help="config file (default: $ATRIUM_CONFIG or "
                                         "./homeserver.yaml)")
    c.set_defaults(func=cmd_check_config)

    k = sub.add_parser("generate-signing-key", help="write a new signing key at the config's "
                                                    "signing_key_path (only if none is there)")
    k.add_argument("-c", "--config", help="config file (default: $ATRIUM_CONFIG or "
                                         "./homeserver.yaml)")
    k.set_defaults(func=cmd_generate_signing_key)

    h = sub.add_parser("hash-password", help="print a bcrypt hash of a password, for "
                                             "users.password_hash (e.g. a forgotten admin "
                                             "password)")
    h.add_argument("-p", "--password", help="the password (prompted for twice if omitted; "
                                            "read from stdin when it is not a terminal)")
    h.add_argument("-c", "--config", help="config file whose bcrypt_rounds to use (default: "
                                         "$ATRIUM_CONFIG or ./homeserver.yaml, if present)")
    h.set_defaults(func=cmd_hash_password)

    d = sub.add_parser("demo", help="three federating servers on loopback (TLS, one "
                                    "user each); Ctrl-C stops them")
    from atrium.demo import build_parser as demo_parser  # noqa: PLC0415

    demo_parser(d)
    d.set_defaults(func=cmd_demo)

    pd = sub.add_parser("port-db", help="copy a stopped server's SQLite database into the "
                                        "PostgreSQL database the config names (resumable)")
    from atrium.port_db import add_arguments as port_db_arguments  # noqa: PLC0415

    port_db_arguments(pd)
    pd.set_defaults(func=cmd_port_db)

    sub.add_parser("trace", help="show actor traces of a running server "
                                 "(python -m atrium trace --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["trace"]:
            # `python -m atrium trace …`: the actor-trace tool (its own options; see --help)
            from atrium.trace_cli import main as trace_main

            code = int(trace_main(argv[1:]))
        else:
            args = build_parser().parse_args(argv)
            code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader went away (`| head -1`): end quietly, and keep Python's exit-time
        # flush of stdout from complaining about the same pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
