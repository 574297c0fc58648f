"""Start-up that cannot mislead: Synapse's ``listeners`` and ``ATRIUM_BIND`` (what is bound,
what URL is advertised and used by the CLI), the generated config (0600, the bound address),
warnings about ignored keys, every environment problem as one line naming the key (at
start-up and in ``check-config``, which creates nothing), and the server identity guard
(server_name and signing key against the database)."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import yaml

from atrium.cli import main
from atrium.config import ConfigError, load_config, parse_config
from atrium.config_checks import bind_problems
from atrium.default_config import write_default_config
from atrium.listeners import BindError, bind_addresses, client_url, parse_bind, parse_listeners
from store.testing import database_config, drop_schema
from store.testing import test_engine as engine
from web.app import create_app, runtime_of


def _listeners(value, warnings=None):
    return parse_listeners(value, ConfigError, (warnings if warnings is not None else
                                                []).append)


# --------------------------------------------------------------------------- listeners, bind

def test_synapse_listeners_are_read():
    warnings: list[str] = []
    ls = _listeners([
        {"port": 8448, "type": "http", "tls": True, "bind_addresses": ["::1", "10.0.0.2"],
         "resources": [{"names": ["federation"]}]},
        {"port": 8008, "type": "http", "x_forwarded": True, "bind_addresses": ["127.0.0.1"],
         "resources": [{"names": ["client", "federation"], "compress": False}]},
        {"port": 9000, "type": "metrics", "bind_addresses": ["127.0.0.1"]},
        {"path": "/run/atrium.sock", "type": "http"},
    ], warnings)
    assert [lst.port for lst in ls] == [8448, 8008, 9000, None]
    assert [lst.kind for lst in ls] == ["http", "http", "metrics", "http"]
    assert ls[0].tls and not ls[0].x_forwarded and ls[1].x_forwarded
    assert ls[0].resources == ("federation",) and ls[3].resources is None
    assert ls[3].x_forwarded  # a unix socket is always behind a proxy (Synapse's default)
    assert bind_addresses(ls, {}) == ["[::1]:8448", "10.0.0.2:8448", "127.0.0.1:8008",
                                      "127.0.0.1:9000", "unix:/run/atrium.sock"]
    text = " | ".join(warnings)
    assert "type metrics" not in text and "resources" not in text
    assert "TLS applies to every listener" in text


def test_a_listener_without_addresses_binds_every_interface_like_synapse():
    (lst,) = _listeners([{"port": 8008, "type": "http"}])
    assert set(lst.bind_addresses) == {"::", "0.0.0.0"}
    assert "[::]:8008" in lst.binds()


@pytest.mark.parametrize("value, key", [
    ("8008", "listeners"),
    ([{"port": "8008", "type": "http"}], "listeners[0].port"),
    ([{"port": 70000, "type": "http"}], "listeners[0].port"),
    ([{"port": 8008, "type": "https"}], "listeners[0].type"),
    ([{"port": 8008, "type": "http", "tls": "yes"}], "listeners[0].tls"),
    ([{"port": 8008, "type": "http", "x_forwarded": 1}], "listeners[0].x_forwarded"),
    ([{"port": 8008, "type": "http", "bind_addresses": "127.0.0.1"}],
     "listeners[0].bind_addresses"),
    ([{"port": 8008, "type": "http", "bind_addresses": ["not an address!"]}],
     "listeners[0].bind_addresses"),
    ([{"port": 8008, "type": "http", "resources": [{"names": ["clients"]}]}],
     "listeners[0].resources"),
    ([{"port": 8008, "type": "http", "trusted_proxies": ["nope"]}],
     "listeners[0].trusted_proxies"),
    ([{"port": 8008, "type": "http", "prot": 1}], "listeners[0]"),
    ([{"port": 9000, "type": "metrics"}], "listeners"),
    ([{"port": 8448, "type": "http", "tls": True}], "listeners"),  # no certificate
])
def test_bad_listeners_name_the_key(value, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"server_name": "x", "listeners": value}, warn=False)
    assert f"'{key}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value, binds", [
    ("127.0.0.1:8710", ["127.0.0.1:8710"]),
    ("8713", ["127.0.0.1:8713"]),
    ("0.0.0.0:8008", ["0.0.0.0:8008"]),
    ("[::1]:8008", ["[::1]:8008"]),
    ("localhost:8008", ["localhost:8008"]),
    ("unix:/run/atrium.sock", ["unix:/run/atrium.sock"]),
    ("127.0.0.1:8008, [::1]:8008", ["127.0.0.1:8008", "[::1]:8008"]),
])
def test_atrium_bind_forms(value, binds):
    assert parse_bind(value) == binds


@pytest.mark.parametrize("value", ["", "abc", "127.0.0.1", "127.0.0.1:", ":8008", "::1:8008",
                                   "127.0.0.1:99999", "0", "[zz]:80", "http://x:80", "unix:",
                                   "a b:80", "127.0.0.1:8008,"])
def test_atrium_bind_anything_else_is_refused_in_one_line(value):
    with pytest.raises(BindError) as e:
        parse_bind(value)
    assert "ATRIUM_BIND" in str(e.value) and "\n" not in str(e.value)


def test_bind_precedence_env_then_listeners_then_default():
    ls = _listeners([{"port": 8448, "type": "http", "bind_addresses": ["127.0.0.1"]}])
    assert bind_addresses(ls, {"ATRIUM_BIND": "9001"}) == ["127.0.0.1:9001"]
    assert bind_addresses(ls, {}) == ["127.0.0.1:8448"]
    assert bind_addresses((), {}) == ["127.0.0.1:8008"]


def test_client_url_follows_the_bound_address():
    ls = _listeners([{"port": 8448, "type": "http", "bind_addresses": ["0.0.0.0"]}])
    # ATRIUM_BIND first: it is where the server listens
    assert client_url("http://127.0.0.1:8008/", ls, False,
                      {"ATRIUM_BIND": "127.0.0.1:8710"}) == "http://127.0.0.1:8710"
    # a public_baseurl on this machine is used as it is (it may be a local proxy)
    assert client_url("http://localhost:8080/", ls, False, {}) == "http://localhost:8080"
    # a public one is the reverse proxy's: the CLI talks to the listener instead
    assert client_url("https://matrix.example.org/", ls, False, {}) == \
        "http://127.0.0.1:8448"
    assert client_url("https://matrix.example.org/", ls, True, {}) == "https://127.0.0.1:8448"
    assert client_url(None, (), False, {}) == "http://127.0.0.1:8008"


def test_bind_problems_name_an_address_in_use():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        (problem,) = bind_problems([f"127.0.0.1:{port}"])
        assert "already in use" in problem and str(port) in problem
    assert bind_problems([f"127.0.0.1:{port}"]) == []


# --------------------------------------------------------------------------- generated config

def test_default_config_is_private_and_advertises_the_bound_address(tmp_path, monkeypatch):
    path = tmp_path / "homeserver.yaml"
    monkeypatch.setenv("ATRIUM_BIND", "127.0.0.1:8710")
    c = load_config(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert c.public_baseurl == "http://127.0.0.1:8710/"
    assert bind_addresses(c.listeners, {}) == ["127.0.0.1:8710"]  # the listeners block too
    assert not list(tmp_path.glob("*.tmp"))
    # a config that exists is never replaced
    write_default_config(str(path), binds=["127.0.0.1:9999"])
    assert load_config(str(path)).registration_shared_secret == c.registration_shared_secret


def test_default_config_for_a_wildcard_and_ipv6(tmp_path):
    write_default_config(str(tmp_path / "a.yaml"), binds=["0.0.0.0:8008"])
    write_default_config(str(tmp_path / "b.yaml"), binds=["[::1]:8448"])
    a, b = load_config(str(tmp_path / "a.yaml")), load_config(str(tmp_path / "b.yaml"))
    assert a.public_baseurl == "http://127.0.0.1:8008/"
    assert b.public_baseurl == "http://[::1]:8448/"
    assert a.listeners[0].bind_addresses == ("0.0.0.0",)


def test_a_bad_atrium_bind_is_a_config_error_when_writing_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("ATRIUM_BIND", "nowhere")
    with pytest.raises(ConfigError, match="ATRIUM_BIND"):
        load_config(str(tmp_path / "homeserver.yaml"))
    assert not (tmp_path / "homeserver.yaml").exists()


# --------------------------------------------------------------------------- ignored keys

def test_synapse_keys_in_one_warning_and_unknown_keys_with_a_suggestion(caplog):
    raw = {"server_name": "x", "auto_join_rooms": ["#a:x"], "modules": [],
           "enable_registraton": True, "log_config": "log.yaml", "zzzz": 1}
    with caplog.at_level(logging.WARNING, logger="atrium.config"):
        parse_config(raw)
    lines = [r.getMessage() for r in caplog.records]
    assert ("config: Synapse keys that Atrium does not implement (ignored): auto_join_rooms, "
            "modules") in lines
    assert "config: unknown key 'enable_registraton' ignored (did you mean " \
           "'enable_registration'?)" in lines
    assert "config: unknown key 'zzzz' ignored" in lines
    assert not any("log_config" in line for line in lines)  # known (atrium/log_config.py)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="atrium.config"):
        parse_config(raw, warn=False)
    assert caplog.records == []


def test_check_config_prints_the_same_warnings(tmp_path, capsys):
    p = tmp_path / "homeserver.yaml"
    p.write_text(yaml.safe_dump({"server_name": "x", "media_store_path": str(tmp_path / "m"),
                                 "enable_registraton": True, "auto_join_rooms": []}))
    assert main(["check-config", "-c", str(p)]) == 0
    err = capsys.readouterr().err
    assert "did you mean 'enable_registration'?" in err and "auto_join_rooms" in err


# --------------------------------------------------------------------------- environment

class Store:
    """A database (fresh, on the engine under test) kept across app builds."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db, self.schema = database_config(str(tmp_path))
        self.apps: list = []

    def raw(self, **overrides):
        raw = {"server_name": "id.test", "bcrypt_rounds": 4, "database": self.db,
               "signing_key_path": str(self.dir / "signing.key"),
               "media_store_path": str(self.dir / "media"),
               "enable_registration": True, "enable_registration_without_verification": True}
        raw.update(overrides)
        return raw

    def config(self, **overrides):
        return parse_config(self.raw(**overrides), str(self.dir / "homeserver.yaml"),
                            warn=False)

    def build(self, **overrides):
        app = create_app(self.config(**overrides))
        self.apps.append(app)
        return app

    def stop(self, app):
        runtime_of(app).shutdown()
        self.apps.remove(app)

    def check(self, **overrides):
        p = self.dir / "homeserver.yaml"
        p.write_text(yaml.safe_dump(self.raw(**overrides)))
        return main(["check-config", "-c", str(p)])


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    for app in list(s.apps):
        runtime_of(app).shutdown()
    drop_schema(s.schema)


def _register(app, name="alice"):
    c = app.test_client()
    r = c.post("/_matrix/client/v3/register", json={"username": name, "password": "pw"})
    r = c.post("/_matrix/client/v3/register", json={
        "username": name, "password": "pw",
        "auth": {"type": "m.login.dummy", "session": r.json["session"]}})
    assert r.status_code == 200, r.json
    return r.json


@pytest.mark.parametrize("setup, key", [
    ("media_under_a_file", "media_store_path"),
    ("media_is_a_file", "media_store_path"),
    ("corrupt_key", "signing_key_path"),
    ("unreadable_tls", "tls_certificate_path"),
])
def test_environment_problems_are_one_line_at_start_and_in_check_config(store, capsys,
                                                                         setup, key):
    d = store.dir
    overrides: dict = {}
    if setup == "media_under_a_file":
        (d / "afile").write_text("x")
        overrides["media_store_path"] = str(d / "afile" / "media")
    elif setup == "media_is_a_file":
        (d / "media").write_text("x")
    elif setup == "corrupt_key":
        (d / "signing.key").write_text("ed25519 a_x not-base64!\n")
    else:
        (d / "crt.pem").write_text("not a certificate")
        (d / "key.pem").write_text("not a key")
        overrides.update(tls_certificate_path=str(d / "crt.pem"),
                         tls_private_key_path=str(d / "key.pem"))
    with pytest.raises(ConfigError) as e:
        store.build(**overrides)
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    assert store.check(**overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(f"'{key}'" in line for line in err), err


def test_a_file_that_is_not_an_sqlite_database(tmp_path, capsys):
    if engine() != "sqlite":
        pytest.skip("SQLite only")
    store = Store(tmp_path)
    Path(store.db["args"]["database"]).write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="'database.args.database'.*not a usable SQLite"):
        store.build()
    assert store.check() == 2


def test_postgres_problems_name_the_key(tmp_path, capsys):
    if engine() != "postgres":
        pytest.skip("PostgreSQL only")
    store = Store(tmp_path)
    try:
        bad_db = dict(store.db["args"], database="atrium_no_such_db")
        with pytest.raises(ConfigError) as e:
            store.build(database={"name": "psycopg2", "args": bad_db})
        assert "'database.args.database'" in str(e.value)
        assert "does not exist" in str(e.value) and "\n" not in str(e.value)
        closed = dict(store.db["args"], port=1, host="127.0.0.1")
        with pytest.raises(ConfigError, match="'database.args.host'.*cannot connect"):
            store.build(database={"name": "psycopg2", "args": closed})
        no_schema = dict(store.db["args"], schema="t_missing_schema")
        with pytest.raises(ConfigError, match="'database.args.schema'"):
            store.build(database={"name": "psycopg2", "args": no_schema})
        capsys.readouterr()
        assert store.check(database={"name": "psycopg2", "args": bad_db}) == 2
        assert "does not exist" in capsys.readouterr().err
    finally:
        drop_schema(store.schema)


def test_check_config_creates_nothing(store, capsys):
    assert store.check() == 0
    out = capsys.readouterr()
    assert "is valid" in out.out and "generated at the first start" in out.err
    assert not (store.dir / "media").exists() and not (store.dir / "signing.key").exists()
    if engine() == "sqlite":
        assert not Path(store.db["args"]["database"]).exists()


# --------------------------------------------------------------------------- identity

def test_server_name_cannot_change(store, capsys):
    app = store.build()
    _register(app)
    store.stop(app)
    with pytest.raises(ConfigError) as e:
        store.build(server_name="other.test")
    msg = str(e.value)
    assert "'server_name'" in msg and "'other.test'" in msg and "'id.test'" in msg
    capsys.readouterr()
    assert store.check(server_name="other.test") == 2
    assert "belongs to 'id.test'" in capsys.readouterr().err
    store.stop(store.build())  # the recorded name still starts


def test_an_upgraded_database_records_its_name_unless_users_are_of_another(store):
    app = store.build()
    _register(app)
    db = runtime_of(app).db
    db.run("forget", lambda t: t.execute("DELETE FROM server_identity"), write=True)
    store.stop(app)
    # as on the first start after the upgrade: the users say whose database it is
    with pytest.raises(ConfigError, match="holds users of 'id.test'"):
        store.build(server_name="other.test")
    app = store.build()
    name = runtime_of(app).db.run("read", lambda t: t.query_value(
        "SELECT server_name FROM server_identity WHERE id = 1"))
    assert name == "id.test"


def test_a_missing_key_is_generated_only_for_an_empty_database(store, capsys):
    app = store.build()  # new and empty: the key is generated
    key_path = store.dir / "signing.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    store.stop(app)
    key_path.unlink()
    app = store.build()  # still empty: nothing was signed with the lost key
    _register(app)
    store.stop(app)
    key_path.unlink()
    with pytest.raises(ConfigError) as e:
        store.build()
    assert "'signing_key_path'" in str(e.value) and str(key_path) in str(e.value)
    assert "restore" in str(e.value) and "\n" not in str(e.value)
    assert not key_path.exists()
    capsys.readouterr()
    assert store.check() == 2
    assert "generate-signing-key" in capsys.readouterr().err
    # a deliberate new key: generate-signing-key, then the start records it with a warning
    cfg = store.dir / "homeserver.yaml"
    assert main(["generate-signing-key", "-c", str(cfg)]) == 0
    assert main(["generate-signing-key", "-c", str(cfg)]) == 2  # never over a key
    app = store.build()
    kid = runtime_of(app).db.run("read", lambda t: t.query_value(
        "SELECT signing_key_id FROM server_identity WHERE id = 1"))
    sk = runtime_of(app).signing_key
    assert kid == f"ed25519:{sk.version}"
