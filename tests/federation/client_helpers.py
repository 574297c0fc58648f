"""A real HTTPS "other homeserver" on loopback for the client and request-auth tests: a CA and
leaf certificates made with ``cryptography``, a Flask app served by werkzeug's threaded server
(greenlets once patched) with TLS, the SNI each handshake asked for, and a fake keyring with
the ``Keyring.get_keys`` signature."""
from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from werkzeug.serving import make_server

from atrium.config import parse_config
from protocol.signing import generate_signing_key, get_verify_key, key_id


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """A throw-away certificate authority writing PEM files under ``folder``."""

    def __init__(self, folder: Path, cn: str = "Atrium Test CA") -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = folder / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str, tag: str = "leaf") -> tuple[str, str]:
        """(cert path, key path) of a server certificate for DNS names / IP addresses."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(names[0]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(sans), False)
                .sign(self.key, hashes.SHA256()))
        cp, kp = self.folder / f"{tag}.pem", self.folder / f"{tag}.key"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        return str(cp), str(kp)


class TlsServer:
    """Serves ``app`` over TLS on 127.0.0.1:<free port>; records the SNI of each handshake.

    ``kind="werkzeug"`` sets ``RAW_URI`` like gunicorn but closes every connection;
    ``kind="gevent"`` (gevent.pywsgi) keeps connections alive (for pooling tests)."""

    def __init__(self, app: Any, cert: str, key: str, kind: str = "werkzeug") -> None:
        self.sni: list[str | None] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = lambda sock, name, c: self.sni.append(name)
        self.kind = kind
        if kind == "gevent":
            from gevent.pywsgi import WSGIServer
            self.server = WSGIServer(("127.0.0.1", 0), app, ssl_context=ctx, log=None)
            self.server.start()
            self.port = self.server.server_port
            return
        self.server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.kind == "gevent":
            self.server.stop(timeout=2)
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Listener:
    """A bare TCP listener counting the connections it accepts (to prove none was made)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


class FakeKeyring:
    """``get_keys(server_name, key_ids, *, at_ts=None) -> {key_id: VerifyKey}``."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.fail: Exception | None = None
        self.asked: list[tuple[str, list[str]]] = []

    def add(self, server_name: str, signing_key: Any) -> None:
        self.keys.setdefault(server_name, {})[key_id(signing_key)] = get_verify_key(signing_key)

    def get_keys(self, server_name: str, key_ids: list[str], *, at_ts: int | None = None
                 ) -> dict[str, Any]:
        self.asked.append((server_name, list(key_ids)))
        if self.fail is not None:
            raise self.fail
        known = self.keys.get(server_name, {})
        return {k: known[k] for k in key_ids if k in known}


class StaticResolver:
    """A resolver answering one fixed ResolvedServer for every name, counting calls."""

    def __init__(self, resolved: Any) -> None:
        self.resolved = resolved
        self.calls = 0

    def resolve(self, server_name: str) -> Any:
        self.calls += 1
        return self.resolved

    def forget(self, hostname: str) -> None:
        pass


def config_for(tmp_path: Path, server_name: str = "origin.test", **raw: Any) -> Any:
    base: dict[str, Any] = {"server_name": server_name,
                            "federation": {"connect_timeout": "2s", "request_timeout": "5s"}}
    base.update(raw)
    return parse_config(base, str(tmp_path / "homeserver.yaml"))


def new_signing_key(version: str = "k1") -> Any:
    return generate_signing_key(version)


def wait_until(pred: Any, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
