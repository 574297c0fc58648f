"""Interop fixtures: Synapse (``matrix-synapse`` from the test venv) and Atrium (a real
``gunicorn -k gevent web:app``) federating over TLS on loopback.

``peers`` (one pair per test module) makes a throwaway CA (:mod:`atrium.tls`), starts both
servers at once on free ports — server names ``localhost:<port>``, each serving HTTPS with
a certificate from that CA on its one listener, each verifying the other against the CA
(``federation_custom_ca_list``), loopback allowed (``federation_ip_range_blacklist: []``),
no notaries (``trusted_key_servers: []``), rate limits out of reach — and stops both by PID
at the end.  Atrium's database is on the engine under test (``ATRIUM_TEST_DB``).
"""
from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from atrium.demo import RunningServer, start_server
from atrium.tls import CertificateAuthority, make_ca
from store.testing import database_config, drop_schema
from tests.interop.helpers import Account
from tests.interop.synapse_tls import SynapseTLS, start_synapse, synapse_available

GENEROUS = {"per_second": 10_000, "burst_count": 10_000}
ATRIUM_OVERRIDES: dict[str, Any] = {
    "bcrypt_rounds": 4,
    "rc_message": GENEROUS, "rc_registration": GENEROUS,
    "rc_login": {"address": GENEROUS, "account": GENEROUS, "failed_attempts": GENEROUS},
    "rc_joins": {"local": GENEROUS, "remote": GENEROUS},
    "rc_invites": {"per_room": GENEROUS, "per_user": GENEROUS},
    "rc_federation": {"window_size": 1000, "sleep_limit": 100_000, "sleep_delay": 0,
                      "reject_limit": 100_000, "concurrent": 100},
}
PASSWORD = "interop-password"
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Peers:
    ca: CertificateAuthority
    atrium: RunningServer
    synapse: SynapseTLS

    def account(self, server: Any, localpart: str | None = None) -> Account:
        """A fresh user on ``server`` (shared-secret registration), logged in."""
        localpart = localpart or f"u{next(_names)}"
        return Account(server.base_url, self.ca.cert_path, server.register(localpart, PASSWORD))


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[Peers]:
    if synapse_available() is None:
        pytest.skip("matrix-synapse is not installed in this venv")
    base: Path = tmp_path_factory.mktemp("interop")
    ca = make_ca(base, name="Atrium interop test CA")
    dbcfg, schema = database_config(str(base / "atrium"))
    synapse = start_synapse(base / "synapse", free_port(), ca, wait=False)
    atrium = None
    try:
        atrium = start_server(base / "atrium", free_port(), ca, database=dbcfg,
                              overrides=ATRIUM_OVERRIDES, wait=False)
        synapse.wait_ready(90)
        atrium.wait_ready(30)
        yield Peers(ca, atrium, synapse)
    finally:
        if atrium is not None:
            atrium.stop()
        synapse.stop()
        drop_schema(schema)
