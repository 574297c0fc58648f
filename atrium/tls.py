"""Throwaway TLS material for the demo, the interop tests and the benchmarks: a private
certificate authority and leaf certificates signed by it, written as PEM files.

Federation always runs over TLS (server-server API, "Server discovery" and "TLS"): a server
presents a certificate valid for its server name, and peers verify it.  On loopback the
names are ``localhost`` / ``127.0.0.1``, so every leaf carries ``DNS:localhost`` and
``IP:127.0.0.1`` plus the names asked for; peers trust the CA through
``federation_custom_ca_list`` (Synapse's key, Atrium reads the same).

Nothing here is meant for production: keys are ECDSA P-256, certificates short-lived.
Private keys are written with mode 0600.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 30


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA: its PEM files and the loaded objects used to sign leaves."""

    cert_path: str
    key_path: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class LeafCertificate:
    """A server certificate signed by a :class:`CertificateAuthority`."""

    cert_path: str
    key_path: str
    names: tuple[str, ...]     # DNS names and IP addresses in its subjectAltName


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # created 0600 from the start: never readable by others, not even for a moment
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(directory: str | os.PathLike[str], *, name: str = "Atrium throwaway CA",
            stem: str = "ca", days: int = DEFAULT_DAYS) -> CertificateAuthority:
    """Create a CA in ``directory`` as ``<stem>.pem`` (certificate) and ``<stem>.key``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / f"{stem}.pem", d / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return CertificateAuthority(str(cert_path), str(key_path), cert, key)


def load_ca(cert_path: str | os.PathLike[str],
            key_path: str | os.PathLike[str]) -> CertificateAuthority:
    """Load a CA written by :func:`make_ca` (to sign more leaves later)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return CertificateAuthority(str(cert_path), str(key_path), cert, key)


def _host_of(name: str) -> str:
    """``localhost:8481`` → ``localhost``; ``[::1]:8448`` → ``::1``; a bare host as is."""
    if name.startswith("["):
        return name[1:name.index("]")] if "]" in name else name
    if name.count(":") == 1:
        return name.split(":", 1)[0]
    return name


def _san_entries(names: Iterable[str]) -> tuple[list[x509.GeneralName], tuple[str, ...]]:
    entries: list[x509.GeneralName] = []
    seen: list[str] = []
    for raw in ("localhost", "127.0.0.1", *names):
        host = _host_of(raw.strip())
        if not host or host in seen:
            continue
        seen.append(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries, tuple(seen)


def issue_cert(ca: CertificateAuthority, directory: str | os.PathLike[str],
               names: Iterable[str] = (), *, stem: str = "server",
               days: int = DEFAULT_DAYS) -> LeafCertificate:
    """Sign a server certificate for ``DNS:localhost``, ``IP:127.0.0.1`` and ``names``
    (host names or IP literals; a ``:port`` suffix, as in a server name, is dropped) and
    write ``<stem>.crt`` and ``<stem>.key`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    san, hosts = _san_entries(names)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[-1])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.private_key.public_key()), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    cert_path, key_path = d / f"{stem}.crt", d / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return LeafCertificate(str(cert_path), str(key_path), hosts)
