"""Helpers for the membership-across-servers tests (test_membership*.py, test_join*.py).

Real Atrium apps (tests/apps.py), each under its own server name, joined into a little
network by a BRIDGE: a federation client (:class:`BridgeClient`) that hands each request to
the destination app's Flask test client, with the origin in an ``X-Test-Origin`` header
that a TEST DOUBLE verifier (:class:`HeaderVerifier`) believes.  Every server's keyring is a
TEST DOUBLE (:class:`NetKeyring`) that knows the real signing key of every server of the
network (the apps' own keys, and those of hand-made :class:`Remote` servers), so event
signatures are really checked, only key fetching is skipped.

``federation/membership.py`` is installed on each app here if the wiring has not done it.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable
from urllib.parse import unquote

from atrium.errors import MatrixError
from federation import membership as membership_mod
from federation.errors import RemoteHTTPError, RemoteUnreachable
from protocol.events import build_event
from protocol.hashing import compute_event_id
from protocol.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from protocol.signing import (SignatureError, generate_signing_key, get_verify_key, key_id,
                              required_signers, verify_event_signature)
from store.accounts import hash_token
from tests.apps import app_factory
from web.app import runtime_of

V = "/_matrix/client/v3"
F1 = "/_matrix/federation/v1"
F2 = "/_matrix/federation/v2"

__all__ = ["V", "F1", "F2", "Network", "Homeserver", "Remote", "network", "q", "wire",
           "event_id_of"]


def q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


class HeaderVerifier:
    """TEST DOUBLE for RequestVerifier: the origin is the ``X-Test-Origin`` header."""

    def authenticate(self, req: Any) -> str:
        origin = req.headers.get("X-Test-Origin")
        if not origin:
            raise MatrixError(401, "M_UNAUTHORIZED", "Missing X-Matrix authorization")
        return origin

    @contextlib.contextmanager
    def limited(self, origin: str) -> Any:
        yield


class NetKeyring:
    """TEST DOUBLE for the Keyring: the verify keys of the network's servers, by name."""

    def __init__(self, network: "Network") -> None:
        self.network = network

    def get_keys(self, server: str, key_ids: Any, *, at_ts: int | None = None) -> dict:
        sk = self.network.keys.get(server)
        if sk is None:
            raise SignatureError(f"no key known for {server}")
        kid = key_id(sk)
        if kid not in list(key_ids):
            raise SignatureError(f"{server} has no key {list(key_ids)}")
        return {kid: get_verify_key(sk)}

    def verify_event(self, event: dict[str, Any], room_version: Any) -> None:
        rv = KNOWN_ROOM_VERSIONS[room_version] if isinstance(room_version, str) \
            else room_version
        for server in sorted(required_signers(event, rv)):
            sigs = (event.get("signatures") or {}).get(server) or {}
            verify_event_signature(event, rv, server, self.get_keys(server, list(sigs)))


class BridgeClient:
    """TEST DOUBLE for FederationClient: requests of ``origin`` go to the destination
    app's test client.  ``tamper[(method, path prefix)] = fn(answer) -> answer`` changes
    answers on the way back; ``down`` lists unreachable servers; ``calls`` records."""

    def __init__(self, network: "Network", origin: str) -> None:
        self.network = network
        self.origin = origin
        self.calls: list[tuple[str, str, str]] = []

    def request(self, method: str, destination: str, path: str, *, query: Any = None,
                body: Any = None, **_: Any) -> Any:
        self.calls.append((method, destination, path))
        if destination in self.network.down or destination not in self.network.servers:
            raise RemoteUnreachable(destination, "connection refused")
        target = self.network.servers[destination]
        if isinstance(target, Homeserver):
            r = target.http.open(unquote(path), method=method, json=body, query_string=query,
                                 headers={"X-Test-Origin": self.origin})
            status, answer = r.status_code, r.get_json(silent=True)
        else:
            status, answer = target.handle(self.origin, method, path, query, body)
        if status >= 300:
            answer = answer if isinstance(answer, dict) else {}
            raise RemoteHTTPError(destination, status, answer.get("errcode"),
                                  answer.get("error"), answer)
        for (m, prefix), fn in self.network.tamper.items():
            if m == method and path.startswith(prefix) and destination == \
                    self.network.tamper_at.get((m, prefix), destination):
                answer = fn(answer)
        return answer

    def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        return self.request("GET", destination, path, **kw)

    def put_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", destination, path, body=body, **kw)

    def post_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", destination, path, body=body, **kw)

    def backing_off(self, destination: str) -> None:
        return None

    def reset(self, destination: str) -> None:
        pass

    def close(self) -> None:
        pass


class FakeSender:
    """TEST DOUBLE for the FederationSender: outbound PDUs/EDUs are not these tests'."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **kw: None


class Network:
    """Servers by name: real apps and hand-made remotes."""

    def __init__(self, make_app: Callable[..., Any]) -> None:
        self.make_app = make_app
        self.servers: dict[str, Any] = {}
        self.keys: dict[str, Any] = {}
        self.down: set[str] = set()
        self.tamper: dict[tuple[str, str], Callable[[Any], Any]] = {}
        self.tamper_at: dict[tuple[str, str], str] = {}

    def app(self, name: str, **overrides: Any) -> "Homeserver":
        hs = Homeserver(self, name, self.make_app(name, **overrides))
        self.servers[name] = hs
        self.keys[name] = hs.runtime.signing_key
        return hs

    def remote(self, name: str) -> "Remote":
        r = Remote(name)
        self.servers[name] = r
        self.keys[name] = r.sk
        return r


def network(tmp_path: Any) -> Any:
    """Generator for a fixture: yields a :class:`Network` whose apps are shut down after."""
    gens: list[Any] = []

    def make_app(name: str, **overrides: Any) -> Any:
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        gen = app_factory(d)
        gens.append(gen)
        return next(gen)(server_name=name, **overrides)

    yield Network(make_app)
    for gen in gens:
        next(gen, None)


class Homeserver:
    """One real app on the network."""

    def __init__(self, network: Network, name: str, app: Any) -> None:
        self.network = network
        self.name = name
        self.app = app
        self.runtime = runtime_of(app)
        self.db = self.runtime.db
        self.fed = self.runtime.parts["federation"]
        self.rooms = self.runtime.parts["rooms"]
        self.fed.verifier = HeaderVerifier()
        self.fed.keyring = NetKeyring(network)
        self.client = BridgeClient(network, name)
        self.fed.client = self.client
        self.fed.sender = FakeSender()
        if "membership" not in self.fed.extras:
            membership_mod.install(app, self.fed, self.runtime.parts)
        self.fed.extras.pop("joins", None)
        self.http = app.test_client()
        self._n = 0

    def user(self, localpart: str) -> "User":
        user_id = f"@{localpart}:{self.name}"
        token = f"tok_{localpart}_{self.name}"

        def _add(t: Any) -> None:
            t.execute("INSERT INTO users (name, password_hash, creation_ts) VALUES (?, ?, ?)",
                      (user_id, "x", 0))
            t.execute("INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                      " VALUES (?, ?, ?, ?)", (user_id, "D", "d", 0))
            t.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                      " VALUES (?, ?, ?, ?)", (hash_token(token), user_id, "D", 0))

        self.db.run("add_user", _add, write=True)
        return User(self, user_id, token)

    def fed_req(self, method: str, path: str, body: Any = None, origin: str = "remote.test",
                query: Any = None) -> Any:
        return self.http.open(path, method=method, json=body, query_string=query,
                              headers={"X-Test-Origin": origin})

    def member(self, room_id: str, user_id: str) -> str | None:
        return self.rooms.membership(room_id, user_id)[0]

    def state_event(self, room_id: str, etype: str, skey: str = "") -> dict[str, Any] | None:
        se = self.rooms.current_state_event(room_id, etype, skey)
        return se.event if se is not None else None


class User:
    def __init__(self, hs: Homeserver, user_id: str, token: str) -> None:
        self.hs = hs
        self.user_id = user_id
        self.token = token

    def req(self, method: str, path: str, body: Any = None, status: int = 200,
            query: Any = None) -> Any:
        r = self.hs.http.open(path, method=method, json=body, query_string=query,
                              headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == status, (method, path, r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def create_room(self, **body: Any) -> str:
        return self.req("POST", f"{V}/createRoom", body)["room_id"]

    def send(self, room_id: str, body: str) -> str:
        self.hs._n += 1
        return self.req("PUT", f"{V}/rooms/{q(room_id)}/send/m.room.message/t{self.hs._n}",
                        {"msgtype": "m.text", "body": body})["event_id"]

    def state(self, room_id: str, etype: str, content: dict, skey: str = "") -> str:
        return self.req("PUT", f"{V}/rooms/{q(room_id)}/state/{etype}/{skey}",
                        content)["event_id"]

    def sync(self, since: str | None = None, **query: Any) -> Any:
        qs = {"timeout": "0", **query}
        if since is not None:
            qs["since"] = since
        return self.req("GET", f"{V}/sync", query=qs)


class Remote:
    """A hand-made server: a name and a real signing key; builds and signs events; can
    answer federation requests through ``handlers[(method, path prefix)]``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sk = generate_signing_key("r1")
        self.handlers: dict[tuple[str, str], Callable[..., tuple[int, Any]]] = {}
        self._ts = int(time.time() * 1000)

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    def handle(self, origin: str, method: str, path: str, query: Any, body: Any
               ) -> tuple[int, Any]:
        for (m, prefix), fn in self.handlers.items():
            if m == method and path.startswith(prefix):
                return fn(origin, path, query, body)
        return 404, {"errcode": "M_UNRECOGNIZED", "error": "not here"}

    def sign_template(self, rv: RoomVersion, template: dict[str, Any],
                      **content: Any) -> dict[str, Any]:
        """Fill in a make_* template as a joining server does."""
        self._ts += 1
        body = dict(template["content"])
        body.update(content)
        return build_event(rv, room_id=template["room_id"], sender=template["sender"],
                           type=template["type"], content=body,
                           state_key=template["state_key"],
                           prev_events=template["prev_events"],
                           auth_events=template["auth_events"], depth=template["depth"],
                           origin_server_ts=self._ts, server_name=self.name,
                           signing_key=self.sk)

    def event(self, rv: RoomVersion, *, room_id: str | None, sender: str, type: str,
              content: dict, state_key: str | None = None, prev: list | None = None,
              auth: list | None = None, depth: int = 1) -> dict[str, Any]:
        self._ts += 1
        return build_event(rv, room_id=room_id, sender=sender, type=type, content=content,
                           state_key=state_key, prev_events=prev or [], auth_events=auth or [],
                           depth=depth, origin_server_ts=self._ts, server_name=self.name,
                           signing_key=self.sk)


def wire(ev: dict[str, Any], rv: RoomVersion) -> dict[str, Any]:
    out = {k: v for k, v in ev.items() if k != "unsigned"}
    if rv.event_format != EventFormat.V1:
        out.pop("event_id", None)
    if rv.room_id_is_create_event_hash and ev.get("type") == "m.room.create":
        out.pop("room_id", None)
    return out


def event_id_of(ev: dict[str, Any], rv: RoomVersion) -> str:
    if rv.event_format == EventFormat.V1:
        return ev["event_id"]
    return compute_event_id(wire(ev, rv), rv)
