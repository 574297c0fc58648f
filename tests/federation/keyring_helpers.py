"""Fake other servers for the keyring and key-server tests: each has real ed25519 keys and
serves a real signed ``/_matrix/key/v2/server`` response; a fake notary answers
``POST /_matrix/key/v2/query`` from the fake servers it can reach; a fake federation client
routes ``get_json`` / ``post_json`` to them and counts the requests."""
from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace
from typing import Any

import gevent

from atrium.federation_config import FederationConfig, OldSigningKey, TrustedKeyServer
from federation.errors import RemoteHTTPError, RemoteUnreachable
from protocol.signing import (
    encode_verify_key_base64, generate_signing_key, get_verify_key, key_id, sign_json,
)

DAY_MS = 24 * 3600 * 1000
CLIENT_KEYWORDS = {"query", "signed", "timeout", "fail_fast", "max_size"}


def now_ms() -> int:
    return int(time.time() * 1000)


def b64(sk: Any) -> str:
    return encode_verify_key_base64(get_verify_key(sk))


class FakeServer:
    """Another homeserver's key publishing."""

    def __init__(self, name: str, version: str = "k1") -> None:
        self.name = name
        self.sk = generate_signing_key(version)
        self.old: dict[str, tuple[Any, int]] = {}   # key id -> (signing key, expired_ts)
        self.valid_for_ms = DAY_MS
        self.valid_until_ts: int | None = None      # fixed, else now + valid_for_ms
        self.tamper = None                          # fn(response) -> response (after signing)

    @property
    def kid(self) -> str:
        return key_id(self.sk)

    def rotate(self, version: str, expired_ts: int | None = None) -> None:
        """A new current key; the old one goes to old_verify_keys."""
        self.old[self.kid] = (self.sk, now_ms() if expired_ts is None else expired_ts)
        self.sk = generate_signing_key(version)

    def key_response(self) -> dict[str, Any]:
        vut = self.valid_until_ts if self.valid_until_ts is not None else \
            now_ms() + self.valid_for_ms
        resp = {"server_name": self.name,
                "verify_keys": {self.kid: {"key": b64(self.sk)}},
                "old_verify_keys": {k: {"key": b64(sk), "expired_ts": exp}
                                    for k, (sk, exp) in self.old.items()},
                "valid_until_ts": vut}
        sign_json(resp, self.name, self.sk)
        return self.tamper(resp) if self.tamper else resp

    def sign(self, obj: dict[str, Any], sk: Any = None) -> dict[str, Any]:
        return sign_json(obj, self.name, sk or self.sk)


class FakeNotary(FakeServer):
    """A notary: answers key queries about the servers in ``reach`` with its signature."""

    def __init__(self, name: str, reach: dict[str, FakeServer]) -> None:
        super().__init__(name, "notary")
        self.reach = reach
        self.sign_with = None                       # another key: a bad notary signature
        self.queries: list[Any] = []

    def query(self, body: dict[str, Any]) -> dict[str, Any]:
        self.queries.append(copy.deepcopy(body))
        out = []
        for server in body["server_keys"]:
            srv = self.reach.get(server)
            if srv is not None:
                out.append(sign_json(srv.key_response(), self.name, self.sign_with or self.sk))
        return {"server_keys": out}


class FakeClient:
    """Routes federation requests to fake servers; counts them; optional delay."""

    def __init__(self, *servers: FakeServer) -> None:
        self.servers = {s.name: s for s in servers}
        self.calls: list[tuple[str, str, str]] = []
        self.delay = 0.0
        self.down: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *servers: FakeServer) -> None:
        self.servers.update({s.name: s for s in servers})

    def _target(self, method: str, destination: str, path: str,
                kw: dict[str, Any] | None = None) -> FakeServer:
        # only the keywords of the FederationClient contract (docs/federation.md)
        assert set(kw or {}) <= CLIENT_KEYWORDS, kw
        with self._lock:
            self.calls.append((method, destination, path))
        if self.delay:
            gevent.sleep(self.delay)
        srv = self.servers.get(destination)
        if srv is None or destination in self.down:
            raise RemoteUnreachable(destination, "connection refused")
        return srv

    def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        srv = self._target("GET", destination, path, kw)
        if path != "/_matrix/key/v2/server":
            raise RemoteHTTPError(destination, 404, "M_UNRECOGNIZED", "no")
        return srv.key_response()

    def post_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        srv = self._target("POST", destination, path, kw)
        if path != "/_matrix/key/v2/query" or not isinstance(srv, FakeNotary):
            raise RemoteHTTPError(destination, 404, "M_UNRECOGNIZED", "no")
        return srv.query(body)

    def count(self, destination: str | None = None, method: str | None = None) -> int:
        return sum(1 for m, d, _ in self.calls
                   if (destination is None or d == destination)
                   and (method is None or m == method))


def keyring_config(server_name: str = "test.local", *, notaries: tuple = (),
                   old_signing_keys: tuple = ()) -> Any:
    """A minimal config for ``Keyring``: ``notaries`` are (name, verify_keys or None)."""
    fed = FederationConfig(
        trusted_key_servers=tuple(TrustedKeyServer(n, vk) for n, vk in notaries),
        old_signing_keys=tuple(OldSigningKey(*o) for o in old_signing_keys),
        query_timeout=2.0)
    return SimpleNamespace(server_name=server_name, federation=fed)
