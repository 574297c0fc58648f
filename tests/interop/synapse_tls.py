"""Synapse (the ``matrix-synapse`` test dependency in this venv) as a federation peer on
loopback, serving client, federation and key APIs over TLS on one listener.

Its server name is ``localhost:<port>`` (a name with a port is contacted directly, no
well-known/SRV).  Its certificate comes from the test CA (:mod:`atrium.tls`); it verifies
its peers' certificates against that CA (``federation_verify_certificates: true`` with
``federation_custom_ca_list``), may contact loopback (``federation_ip_range_blacklist: []``),
fetches keys from servers directly (``trusted_key_servers: []``), has every rate limit out
of reach and SQLite.  Its signing key is written here, so tests can sign requests as it.

Pure helper (no pytest): used by ``tests/interop/conftest.py`` and
``bench/federation_outage.py``.  Nothing of Synapse's is copied; only its published entry
point ``python -m synapse.app.homeserver`` is run.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atrium.demo import register_user_tls, wait_ready
from atrium.tls import CertificateAuthority, issue_cert
from protocol.signing import SigningKey, decode_signing_key_base64, encode_signing_key_base64

OFF = {"per_second": 1_000_000, "burst_count": 1_000_000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": OFF, "rc_registration": OFF, "rc_registration_token_validity": OFF,
    "rc_login": {"address": OFF, "account": OFF, "failed_attempts": OFF},
    "rc_joins": {"local": OFF, "remote": OFF}, "rc_joins_per_room": OFF,
    "rc_invites": {"per_room": OFF, "per_user": OFF, "per_issuer": OFF},
    "rc_third_party_invite": OFF, "rc_room_creation": OFF, "rc_admin_redaction": OFF,
    "rc_3pid_validation": OFF, "rc_presence": {"per_user": OFF},
    "rc_delayed_event_mgmt": OFF, "rc_reports": OFF, "rc_media_create": OFF,
    "rc_profile": OFF, "rc_user_directory": OFF, "rc_key_requests": OFF,
    "rc_federation": {"window_size": 1000, "sleep_limit": 1_000_000, "sleep_delay": 0,
                      "reject_limit": 1_000_000, "concurrent": 1_000_000},
}
READY_TIMEOUT = 90.0


def synapse_available() -> str | None:
    """Synapse's version if it is importable by this interpreter, else None."""
    r = subprocess.run([sys.executable, "-c", "import synapse; print(synapse.__version__)"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


@dataclass
class SynapseTLS:
    server_name: str
    base_url: str
    directory: Path
    shared_secret: str
    ca_path: str
    signing_key: SigningKey = field(repr=False)
    process: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        return [self.process.pid]

    def log(self) -> str:
        try:
            return (self.directory / "homeserver.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        try:
            wait_ready(self.base_url, self.ca_path, timeout,
                       alive=lambda: self.process.poll() is None)
        except RuntimeError as e:
            self.stop()
            out = (self.directory / "stdout.log")
            tail = out.read_text(errors="replace")[-3000:] if out.exists() else ""
            raise RuntimeError(f"synapse {self.server_name}: {e}\n{tail}\n"
                               f"{self.log()[-3000:]}") from None

    def register(self, username: str, password: str, *, admin: bool = False) -> dict[str, Any]:
        return register_user_tls(self.base_url, self.shared_secret, username, password,
                                 self.ca_path, admin=admin)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


def write_config(directory: Path, port: int, ca: CertificateAuthority, *,
                 log_level: str = "INFO", extra: dict[str, Any] | None = None) -> Path:
    """Synapse's config for a TLS loopback peer on ``port``, and its signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    server_name = f"localhost:{port}"
    leaf = issue_cert(ca, directory, [server_name], stem="tls")
    key_path = directory / "signing.key"
    if not key_path.exists():
        seed = secrets.token_bytes(32)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"ed25519 a_syn {encode_signing_key_base64(_sk(seed))}\n")
    config: dict[str, Any] = {
        "server_name": server_name,
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "tls": True, "x_forwarded": False,
                       "resources": [{"names": ["client", "federation", "keys"],
                                      "compress": False}]}],
        "tls_certificate_path": leaf.cert_path,
        "tls_private_key_path": leaf.key_path,
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "log_config": str(directory / "log.yaml"),
        "media_store_path": str(directory / "media"),
        "signing_key_path": str(key_path),
        "registration_shared_secret": secrets.token_urlsafe(24),
        "macaroon_secret_key": secrets.token_urlsafe(24),
        "form_secret": secrets.token_urlsafe(24),
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_verify_certificates": True,
        "federation_custom_ca_list": [ca.cert_path],
        "federation_ip_range_blacklist": [],
        "ip_range_blacklist": [],
        "allow_public_rooms_over_federation": True,
        "allow_public_rooms_without_auth": True,
        # Synapse's default (no rules) publishes nothing in the room directory
        "room_list_publication_rules": [{"action": "allow"}],
        "enable_registration": False,
        "presence": {"enabled": False},
        **RATE_LIMITS,
    }
    config.update(extra or {})
    path = directory / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "log.yaml").write_text(yaml.safe_dump({
        "version": 1,
        "formatters": {"p": {"format": "%(asctime)s %(name)s %(levelname)s "
                                       "%(request)s %(message)s"}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter",
                                "request": ""}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "p",
                              "filters": ["context"],
                              "filename": str(directory / "homeserver.log")}},
        "root": {"level": log_level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }))
    return path


def _sk(seed: bytes) -> SigningKey:
    from protocol.hashing import encode_base64  # noqa: PLC0415

    return decode_signing_key_base64("ed25519", "a_syn", encode_base64(seed))


def load_signing_key(path: Path) -> SigningKey:
    alg, version, b64 = path.read_text().split()
    return decode_signing_key_base64(alg, version, b64)


def start_synapse(directory: str | os.PathLike[str], port: int, ca: CertificateAuthority, *,
                  extra: dict[str, Any] | None = None, log_level: str = "INFO",
                  wait: bool = True, ready_timeout: float = READY_TIMEOUT) -> SynapseTLS:
    """Start Synapse over TLS on 127.0.0.1:``port`` in its own process group."""
    d = Path(directory)
    config_path = write_config(d, port, ca, log_level=log_level, extra=extra)
    raw = yaml.safe_load(config_path.read_text())
    out = open(d / "stdout.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "synapse.app.homeserver",
                             "-c", str(config_path)],
                            cwd=str(d), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    out.close()
    server = SynapseTLS(raw["server_name"], f"https://localhost:{port}", d,
                        raw["registration_shared_secret"], ca.cert_path,
                        load_signing_key(Path(raw["signing_key_path"])), proc)
    if wait:
        server.wait_ready(ready_timeout)
    return server


def wait_all(servers: list[Any], timeout: float) -> None:
    """Wait for several servers started with ``wait=False``."""
    deadline = time.monotonic() + timeout
    for s in servers:
        s.wait_ready(max(1.0, deadline - time.monotonic()))
