"""Interop fixtures: Synapse (``matrix-synapse`` from the test venv) and Atrium (a real
``gunicorn -k gevent web:app``) federating over TLS on loopback.

``peers`` (one pair per test module) makes a throwaway CA (:mod:`atrium.tls`), starts both
servers at once on free ports — server names ``localhost:<port>``, each serving HTTPS with
a certificate from that CA on its one listener, each verifying the other against the CA
(``federation_custom_ca_list``), loopback allowed (``federation_ip_range_blacklist: []``),
no notaries (``trusted_key_servers: []``), rate limits out of reach — and stops both by PID
at the end.  Atrium's database is on the engine under test (``ATRIUM_TEST_DB``).

``room_peers`` (rooms across servers, ``test_interop_rooms*.py``) is the same pair with
short federation back-offs on both sides (a netsplit heals in seconds, not Synapse's default
10 minutes); :func:`start_pair` builds either.  With ``ATRIUM_INTEROP_SELFCHECK=synapse`` the
"Atrium" of ``room_peers`` is a second Synapse, which checks the room tests themselves
against two servers that already federate.  Markers: ``netsplit``, ``e2ee_room``.
"""
from __future__ import annotations

import itertools
import os
import socket
from contextlib import contextmanager
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
    with start_pair(tmp_path_factory.mktemp("interop")) as pair:
        yield pair


# --- rooms across servers (Federation II) -------------------------------------------------

# retries after a failure within seconds on both sides (defaults: Atrium 10 s doubling to 1 h,
# Synapse 10 min), a stopped peer noticed within 10 s instead of 60
ROOM_ATRIUM_OVERRIDES: dict[str, Any] = {
    **ATRIUM_OVERRIDES,
    "federation": {"min_retry_interval": "1s", "max_retry_interval": "5s",
                   "request_timeout": "10s", "connect_timeout": "5s"},
}
ROOM_SYNAPSE_EXTRA: dict[str, Any] = {
    "federation": {"destination_min_retry_interval": "1s",
                   "destination_max_retry_interval": "5s",
                   "destination_retry_multiplier": 2},
}
SELFCHECK_ENV = "ATRIUM_INTEROP_SELFCHECK"


def selfcheck() -> bool:
    """True when the room tests run against two Synapses (checking the tests themselves)."""
    return os.environ.get(SELFCHECK_ENV, "") == "synapse"


@contextmanager
def start_pair(base: Path, *, atrium_overrides: dict[str, Any] | None = None,
               synapse_extra: dict[str, Any] | None = None,
               atrium_is_synapse: bool = False) -> Iterator[Peers]:
    """Atrium and Synapse over TLS on loopback (both started at once), stopped by PID at the
    end — whatever ``peers.atrium`` / ``peers.synapse`` then hold (a test may restart one)."""
    ca = make_ca(base, name="Atrium interop test CA")
    dbcfg, schema = database_config(str(base / "atrium"))
    pair: Peers | None = None
    synapse = start_synapse(base / "synapse", free_port(), ca, wait=False, extra=synapse_extra)
    atrium: Any = None
    try:
        if atrium_is_synapse:
            atrium = start_synapse(base / "synapse2", free_port(), ca, wait=False,
                                   extra=synapse_extra)
        else:
            atrium = start_server(base / "atrium", free_port(), ca, database=dbcfg,
                                  overrides=atrium_overrides or ATRIUM_OVERRIDES, wait=False)
        synapse.wait_ready(90)
        atrium.wait_ready(90 if atrium_is_synapse else 30)
        pair = Peers(ca, atrium, synapse)
        yield pair
    finally:
        for server in ((pair.atrium, pair.synapse) if pair is not None else (atrium, synapse)):
            if server is not None:
                server.stop()
        drop_schema(schema)


@pytest.fixture(scope="module")
def room_peers(tmp_path_factory) -> Iterator[Peers]:
    """A fresh pair per module, for rooms shared across servers."""
    if synapse_available() is None:
        pytest.skip("matrix-synapse is not installed in this venv")
    with start_pair(tmp_path_factory.mktemp("interop-rooms"),
                    atrium_overrides=ROOM_ATRIUM_OVERRIDES, synapse_extra=ROOM_SYNAPSE_EXTRA,
                    atrium_is_synapse=selfcheck()) as pair:
        yield pair


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "netsplit: a peer cut off and back (rooms converge)")
    config.addinivalue_line("markers", "e2ee_room: end-to-end encrypted room across servers")
