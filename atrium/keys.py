"""The server's ed25519 signing key: read from ``signing_key_path`` (Synapse's file format,
``ed25519 <version> <unpadded base64 seed>``).  A missing key is generated only for a new,
empty database (:mod:`atrium.server_identity` decides); ``python -m atrium
generate-signing-key`` makes one deliberately."""
from __future__ import annotations

import logging
import os
import secrets

from nacl.signing import SigningKey
from signedjson.key import decode_signing_key_base64, encode_signing_key_base64

from atrium.config import ConfigError

log = logging.getLogger(__name__)


def key_id(key: SigningKey) -> str:
    return f"{key.alg}:{key.version}"  # type: ignore[attr-defined]


def create_signing_key(path: str) -> SigningKey:
    """Generate a key and write it to ``path`` (owner-only; never over an existing file)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        version = "a_" + secrets.token_hex(2)
        key = SigningKey.generate()
        key.alg = "ed25519"  # type: ignore[attr-defined]
        key.version = version  # type: ignore[attr-defined]
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"ed25519 {version} {encode_signing_key_base64(key)}\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except FileExistsError:
        raise ConfigError(f"config key 'signing_key_path': {path} already exists") from None
    except OSError as e:
        raise ConfigError(f"config key 'signing_key_path': cannot write {path}: "
                          f"{e.strerror or e}") from None
    log.warning("generated a new signing key ed25519:%s at %s", version, path)
    return key


def load_signing_key(path: str) -> SigningKey:
    """The key in ``path`` (with ``.alg`` and ``.version`` set as signedjson does);
    ConfigError, one line, when it is missing, unreadable or not a key."""
    try:
        with open(path, encoding="ascii") as f:
            line = next((ln for ln in f if ln.strip()), "")
    except FileNotFoundError:
        raise ConfigError(f"config key 'signing_key_path': {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config key 'signing_key_path': {path} cannot be read: "
                          f"{e.strerror or e}") from None
    except UnicodeDecodeError:
        line = ""
    try:
        alg, version, b64 = line.split()
        if alg != "ed25519":
            raise ValueError(alg)
        return decode_signing_key_base64(alg, version, b64)
    except ValueError:
        raise ConfigError(f"config key 'signing_key_path': {path} is not a valid "
                          f"'ed25519 <version> <base64>' signing key file") from None


def load_or_create_signing_key(path: str) -> SigningKey:
    """The key in ``path``, generated there when the file does not exist (only for a new,
    empty database: start-up goes through :func:`atrium.server_identity.establish`)."""
    if not os.path.lexists(path):
        return create_signing_key(path)
    return load_signing_key(path)
