"""The config file written when there is none (``make run`` on a fresh clone).

It holds the registration shared secret, so it is created owner-only (0600) and appears whole
or not at all (written to a temporary file, then renamed).  ``public_baseurl`` and the
``listeners`` block are the address the server is bound to (``ATRIUM_BIND``, gunicorn's
``-b``, or 127.0.0.1:8008), so ``/.well-known/matrix/client`` and the CLI point at it.
"""
from __future__ import annotations

import os
import secrets

from atrium.listeners import DEFAULT_BIND, local_url

DEFAULT_TEMPLATE = """\
# Atrium configuration, written because {path} did not exist.
# Every key is documented in config.example.yaml; key names follow Synapse's.

# The domain part of your users' ids (@alice:SERVER_NAME). Cannot be changed later.
server_name: "{server_name}"

# Where clients reach this server (advertised in /.well-known/matrix/client). Behind a
# reverse proxy: its https:// URL, and x_forwarded: true below.
public_baseurl: "{public_baseurl}"

# Where gunicorn listens (Synapse's listeners block); ATRIUM_BIND=host:port overrides it.
listeners:
{listeners}
# SQLite (embedded) by default. For PostgreSQL use:
#   database: {{name: psycopg2, args: {{user: atrium, dbname: atrium, host: 127.0.0.1}}}}
database:
  name: sqlite3
  args:
    database: data/homeserver.db

signing_key_path: data/signing.key
media_store_path: data/media_store
max_upload_size: 50M

# Open registration is off; create users with `python -m atrium register`.
enable_registration: false
registration_shared_secret: "{secret}"

# Federation: other servers' signing keys are asked of this notary first, then of each
# server directly (Synapse's default; [] = always ask each server itself).
trusted_key_servers:
  - server_name: matrix.org
"""


def _listener_yaml(bind: str) -> str:
    if bind.startswith("unix:"):
        where = f"    path: \"{bind[5:]}\"\n"
    else:
        host, _, port = bind.rpartition(":")
        where = f"    port: {int(port)}\n    bind_addresses: ['{host.strip('[]')}']\n"
    return ("  - type: http\n" + where + "    tls: false\n    x_forwarded: false\n"
            "    resources:\n      - names: [client, federation]\n")


def write_default_config(path: str, server_name: str = "localhost",
                         binds: list[str] | None = None) -> None:
    """Write a commented default config for the bound addresses (default 127.0.0.1:8008);
    a config that another process wrote meanwhile is kept."""
    binds = binds or [DEFAULT_BIND]
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    text = DEFAULT_TEMPLATE.format(
        path=path, server_name=server_name,
        public_baseurl=(local_url(binds) or local_url([DEFAULT_BIND])) + "/",
        listeners="".join(_listener_yaml(b) for b in binds),
        secret=secrets.token_urlsafe(32))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a config that appeared meanwhile
        except FileExistsError:
            pass
        except OSError:  # no hard links here
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
