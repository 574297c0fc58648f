"""The server's ed25519 signing key: read from ``signing_key_path`` (Synapse's file format,
``ed25519 <version> <unpadded base64 seed>``), generated there on first start."""
from __future__ import annotations

import logging
import os
import secrets

from nacl.signing import SigningKey
from signedjson.key import decode_signing_key_base64, encode_signing_key_base64

from atrium.config import ConfigError

log = logging.getLogger(__name__)


def load_or_create_signing_key(path: str) -> SigningKey:
    """Return the server's signing key (with ``.alg`` and ``.version`` set as signedjson does)."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        version = "a_" + secrets.token_hex(2)
        key = SigningKey.generate()
        key.alg = "ed25519"  # type: ignore[attr-defined]
        key.version = version  # type: ignore[attr-defined]
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"ed25519 {version} {encode_signing_key_base64(key)}\n")
        os.replace(tmp, path)
        log.warning("generated a new signing key ed25519:%s at %s", version, path)
        return key
    try:
        with open(path, encoding="ascii") as f:
            line = next((ln for ln in f if ln.strip()), "")
        alg, version, b64 = line.split()
        if alg != "ed25519":
            raise ValueError(alg)
        return decode_signing_key_base64(alg, version, b64)
    except (OSError, ValueError, UnicodeDecodeError):
        raise ConfigError(f"config key 'signing_key_path': {path} is not a valid "
                          f"'ed25519 <version> <base64>' signing key file") from None
