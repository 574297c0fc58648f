"""TLS serving: the throwaway CA and leaf certificates of ``atrium/tls.py``, and
``gunicorn.conf.py`` turning the config's ``tls_certificate_path`` /
``tls_private_key_path`` into HTTPS on the one listener (the command line still wins; a
broken config never breaks the settings file)."""
from __future__ import annotations

import ipaddress
import os
import runpy
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from atrium.tls import issue_cert, load_ca, make_ca
from store.testing import database_config, drop_schema

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "gunicorn.conf.py"


def _verify(ca, leaf_path: str, name: str) -> None:
    leaf = x509.load_pem_x509_certificate(Path(leaf_path).read_bytes())
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(subject)
    verifier.verify(leaf, [])


def test_leaf_certificates_verify_for_their_names_only(tmp_path) -> None:
    ca = make_ca(tmp_path / "ca")
    leaf = issue_cert(ca, tmp_path / "srv", ["localhost:8481", "hs.example.test",
                                             "10.1.2.3", "[::1]:8448"])
    assert leaf.names == ("localhost", "127.0.0.1", "hs.example.test", "10.1.2.3", "::1")
    for name in ("localhost", "127.0.0.1", "hs.example.test", "10.1.2.3", "::1"):
        _verify(ca, leaf.cert_path, name)
    for name in ("other.example.test", "10.1.2.4"):
        with pytest.raises(VerificationError):
            _verify(ca, leaf.cert_path, name)
    # another CA's leaf does not verify against this CA
    other = make_ca(tmp_path / "other")
    stranger = issue_cert(other, tmp_path / "stranger")
    with pytest.raises(VerificationError):
        _verify(ca, stranger.cert_path, "localhost")
    # private keys are owner-only
    for p in (ca.key_path, leaf.key_path):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    # a CA loaded back from its files signs leaves that verify
    again = load_ca(ca.cert_path, ca.key_path)
    _verify(ca, issue_cert(again, tmp_path / "srv2", stem="b").cert_path, "localhost")


def _settings(monkeypatch, cwd: Path, config_text: str | None, env_path: Path | None) -> dict:
    monkeypatch.chdir(cwd)
    if env_path is None:
        monkeypatch.delenv("ATRIUM_CONFIG", raising=False)
    else:
        monkeypatch.setenv("ATRIUM_CONFIG", str(env_path))
    if config_text is not None:
        (env_path or cwd / "homeserver.yaml").write_text(config_text)
    return runpy.run_path(str(CONF))


def test_gunicorn_conf_serves_tls_from_the_config(tmp_path, monkeypatch) -> None:
    ca = make_ca(tmp_path)
    conf_dir = tmp_path / "conf"
    issue_cert(ca, conf_dir / "tls", stem="server")
    cfg = conf_dir / "homeserver.yaml"
    ns = _settings(monkeypatch, tmp_path, yaml.safe_dump({
        "server_name": "x", "tls_certificate_path": "tls/server.crt",
        "tls_private_key_path": "tls/server.key"}), cfg)
    # relative to the config file's folder, not to the working directory
    assert ns["certfile"] == str(conf_dir / "tls" / "server.crt")
    assert ns["keyfile"] == str(conf_dir / "tls" / "server.key")
    # ./homeserver.yaml when ATRIUM_CONFIG is unset
    ns = _settings(monkeypatch, conf_dir, yaml.safe_dump({
        "tls_certificate_path": str(conf_dir / "tls" / "server.crt"),
        "tls_private_key_path": "tls/server.key"}), None)
    assert ns["certfile"].endswith("server.crt") and ns["keyfile"].endswith("server.key")


@pytest.mark.parametrize("text", [
    None,                                              # no config file at all
    "server_name: x\n",                                # no TLS keys: plain HTTP
    "tls_certificate_path: a.crt\n",                   # only one of the two
    "tls_certificate_path: nope.crt\ntls_private_key_path: nope.key\n",   # missing files
    "tls_certificate_path: [1]\ntls_private_key_path: {a: 1}\n",         # wrong types
    "server_name: [unclosed\n",                        # not YAML
    "- a list\n",                                      # not a mapping
])
def test_gunicorn_conf_stays_plain_http_on_anything_else(tmp_path, monkeypatch, text) -> None:
    ns = _settings(monkeypatch, tmp_path, text, tmp_path / "hs.yaml" if text else None)
    assert "certfile" not in ns and "keyfile" not in ns
    assert ns["bind"] == os.environ.get("ATRIUM_BIND", "127.0.0.1:8008")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer_names(port: int, ca_path: str, timeout: float = 20.0) -> list[str]:
    ctx = ssl.create_default_context(cafile=ca_path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return [v for _k, v in s.getpeercert()["subjectAltName"]]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.timeout(60)
def test_https_on_the_listener_and_the_command_line_wins(tmp_path) -> None:
    ca = make_ca(tmp_path)
    from_config = issue_cert(ca, tmp_path / "cfg", ["config.example.test"])
    from_cli = issue_cert(ca, tmp_path / "cli", ["cli.example.test"])
    dbcfg, schema = database_config(str(tmp_path))
    cfg = tmp_path / "homeserver.yaml"
    cfg.write_text(yaml.safe_dump({
        "server_name": "tls.test", "database": dbcfg,
        "signing_key_path": str(tmp_path / "signing.key"),
        "media_store_path": str(tmp_path / "media"),
        "tls_certificate_path": from_config.cert_path,
        "tls_private_key_path": from_config.key_path}))
    procs = []
    try:
        for extra in ([], ["--certfile", from_cli.cert_path, "--keyfile", from_cli.key_path]):
            port = _free_port()
            env = dict(os.environ, ATRIUM_CONFIG=str(cfg), ATRIUM_BIND=f"127.0.0.1:{port}")
            log = open(tmp_path / f"server{len(procs)}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(CONF), *extra,
                 "-k", "gevent", "web:app"], cwd=str(ROOT), env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))
            names = _peer_names(port, ca.cert_path)
            want = "cli.example.test" if extra else "config.example.test"
            assert want in names, (extra, names)
            r = requests.get(f"https://localhost:{port}/_matrix/client/versions",
                             verify=ca.cert_path, timeout=10)
            assert r.status_code == 200 and "versions" in r.json()
            # plain HTTP on the TLS listener gets no Matrix answer
            with pytest.raises(requests.RequestException):
                requests.get(f"http://127.0.0.1:{port}/_matrix/client/versions", timeout=5) \
                    .json()
            if not extra:
                # only one server on this database at a time
                procs[-1].terminate()
                procs[-1].wait(timeout=25)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=25)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
        drop_schema(schema)
