"""Configuration: defaults, Synapse key shapes, one clear line per bad key."""
import os
import re
import subprocess
import sys

import pytest
import yaml

from atrium.config import ConfigError, load_config, parse_config, parse_duration, parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_minimal_config_gets_defaults(tmp_path):
    c = parse_config({"server_name": "example.org"}, str(tmp_path / "h.yaml"))
    assert c.database.name == "sqlite3"
    assert c.database.args["database"] == str(tmp_path / "data/homeserver.db")
    assert c.max_upload_size == 50 * 1024 * 1024
    assert c.enable_registration is False
    assert c.default_room_version == "12"
    assert c.public_baseurl == "http://example.org/"


def test_example_config_parses():
    with open(os.path.join(ROOT, "config.example.yaml")) as f:
        raw = yaml.safe_load(f)
    c = parse_config(raw, os.path.join(ROOT, "config.example.yaml"))
    assert c.server_name == "example.org"
    assert c.rc_login_failed_attempts.burst_count == 3
    assert c.actors.idle_timeout == 300


@pytest.mark.parametrize("raw, key", [
    ({}, "server_name"),
    ({"server_name": "bad name!"}, "server_name"),
    ({"server_name": "x", "database": {"name": "mysql"}}, "database.name"),
    ({"server_name": "x", "max_upload_size": "lots"}, "max_upload_size"),
    ({"server_name": "x", "enable_registration": "yes"}, "enable_registration"),
    ({"server_name": "x", "default_room_version": "99"}, "default_room_version"),
    ({"server_name": "x", "rc_message": {"per_second": -1}}, "rc_message.per_second"),
    ({"server_name": "x", "actors": {"mailbox_size": 0}}, "actors.mailbox_size"),
    ({"server_name": "x", "public_baseurl": "ftp://x"}, "public_baseurl"),
    ({"server_name": "x", "bcrypt_rounds": 2}, "bcrypt_rounds"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert f"'{key}'" in str(e.value)
    assert "\n" not in str(e.value)


def test_sizes_and_durations():
    assert parse_size("k", "10K") == 10240
    assert parse_size("k", 5) == 5
    assert parse_duration("k", "5m") == 300
    assert parse_duration("k", "500ms") == 0.5
    assert parse_duration("k", 1500) == 1.5


def test_missing_file_writes_commented_default(tmp_path):
    path = tmp_path / "homeserver.yaml"
    c = load_config(str(path))
    assert path.exists()
    text = path.read_text()
    assert text.startswith("#")
    assert c.server_name == "localhost"
    assert c.registration_shared_secret and len(c.registration_shared_secret) > 20
    # a second load reads the same file
    assert load_config(str(path)).registration_shared_secret == c.registration_shared_secret


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert "line" in str(e.value) and "\n" not in str(e.value)


def test_gunicorn_app_with_bad_config_fails_with_one_line(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("server_name: example.org\ndatabase: {name: oracle}\n")
    env = dict(os.environ, ATRIUM_CONFIG=str(path))
    p = subprocess.run([sys.executable, "-c", "import web; web.app"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 4
    assert "config key 'database.name'" in p.stderr
    assert "Traceback" not in p.stderr


def test_federation_keys(tmp_path):
    base = {"server_name": "example.org"}
    c = parse_config(dict(base), str(tmp_path / "h.yaml")).federation
    assert c.verify_certificates and c.trusted_key_servers[0].server_name == "matrix.org"
    assert "127.0.0.0/8" in c.ip_range_blacklist and c.domain_whitelist is None
    c = parse_config(dict(base, trusted_key_servers=[], federation_ip_range_blacklist=[],
                          federation_domain_whitelist=["a.org"],
                          rc_federation={"window_size": 2000, "concurrent": 1},
                          federation={"queue_size": 5, "min_retry_interval": "2s"}),
                     str(tmp_path / "h.yaml")).federation
    assert c.trusted_key_servers == () and c.ip_range_blacklist == ()
    assert c.domain_whitelist == frozenset({"a.org"})
    assert c.rc_federation.window_size == 2.0 and c.rc_federation.concurrent == 1
    assert c.queue_size == 5 and c.min_retry_interval == 2.0
    for bad, key in (({"federation_ip_range_blacklist": ["nope"]}, "federation_ip_range_blacklist"),
                     ({"trusted_key_servers": [{"verify_keys": {}}]}, "trusted_key_servers[0]"),
                     ({"tls_certificate_path": "missing.pem"}, "tls_certificate_path"),
                     ({"old_signing_keys": {"ed25519:a": {"key": "x"}}}, "old_signing_keys"),
                     ({"federation": {"queue_size": 0}}, "federation.queue_size")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            parse_config(dict(base, **bad), str(tmp_path / "h.yaml"))
