"""TURN servers for VoIP calls, with Synapse's keys (Synapse's ``config/voip.py``):
``turn_uris``, ``turn_shared_secret`` (or ``turn_shared_secret_path``), ``turn_username`` /
``turn_password``, ``turn_user_lifetime`` and ``turn_allow_guests``.

With a shared secret, ``GET /voip/turnServer`` hands out the time-limited credentials of the
TURN REST API (coturn's ``use-auth-secret``); with ``turn_username`` / ``turn_password`` it
hands out those.  Without ``turn_uris`` it answers ``{}``.  ``turn_uris`` without either
kind of credentials stops the start-up (Synapse would quietly answer ``{}``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atrium.captcha_config import inline_or_file

#: what a TURN (or STUN) URI may start with (RFC 7065 / RFC 7064)
URI_SCHEMES = ("turn:", "turns:", "stun:", "stuns:")


@dataclass(frozen=True)
class VoipConfig:
    turn_uris: tuple[str, ...] = ()
    turn_shared_secret: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime: float = 3600.0   # seconds
    turn_allow_guests: bool = True

    @property
    def configured(self) -> bool:
        """Whether /voip/turnServer has credentials to hand out."""
        return bool(self.turn_uris) and (self.turn_shared_secret is not None
                                         or self.turn_username is not None)


def parse_voip_config(raw: dict[str, Any], error: type[Exception]) -> VoipConfig:
    """Validate the TURN keys of the top-level mapping ``raw``; ``error`` is ConfigError
    (its message is one line naming the key)."""
    from atrium.config import _bool, parse_duration  # noqa: PLC0415 - config imports us

    uris = raw.get("turn_uris")
    if uris is None:
        uris = []
    if not isinstance(uris, list) or not all(
            isinstance(u, str) and u.lower().startswith(URI_SCHEMES) and u.isprintable()
            and " " not in u for u in uris):
        raise error(f"config key 'turn_uris' must be a list of turn:, turns: (or stun:) URIs "
                    f"(got {uris!r})")
    secret = inline_or_file(raw, "turn_shared_secret", error, strip=False)
    username, password = raw.get("turn_username"), raw.get("turn_password")
    for key, value in (("turn_username", username), ("turn_password", password)):
        if value is not None and (not isinstance(value, str) or not value):
            raise error(f"config key '{key}' must be a non-empty string")
    if (username is None) != (password is None):
        missing = "turn_password" if password is None else "turn_username"
        raise error(f"config key '{missing}' must be set together with "
                    f"'{'turn_username' if missing == 'turn_password' else 'turn_password'}'")
    if uris and secret is None and username is None:
        raise error("config key 'turn_shared_secret' (or turn_username and turn_password) "
                    "must be set when turn_uris is")
    lifetime = parse_duration("turn_user_lifetime", raw.get("turn_user_lifetime", "1h"))
    if lifetime < 1:
        raise error(f"config key 'turn_user_lifetime' must be at least one second "
                    f"(got {raw.get('turn_user_lifetime')!r})")
    return VoipConfig(tuple(uris), secret, username, password, lifetime,
                      _bool(raw, "turn_allow_guests", True))
