"""CAPTCHA at registration, with Synapse's keys (Synapse's ``config/captcha.py``):
``enable_registration_captcha``, ``recaptcha_public_key`` / ``recaptcha_private_key`` (or
``recaptcha_public_key_path`` / ``recaptcha_private_key_path``: a file holding the key) and
``recaptcha_siteverify_api``.

The stage is ``m.login.recaptcha``; any service with reCAPTCHA's siteverify protocol works
(hCaptcha, Cloudflare Turnstile): point ``recaptcha_siteverify_api`` at it, and the fallback
page loads that service's widget (web/captcha.py).  Turning the CAPTCHA on without both keys
stops the start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Synapse's default: Google's reCAPTCHA, on the domain that is also reachable from China
DEFAULT_SITEVERIFY_API = "https://www.recaptcha.net/recaptcha/api/siteverify"


@dataclass(frozen=True)
class CaptchaConfig:
    enabled: bool = False
    public_key: str | None = None
    private_key: str | None = None
    siteverify_api: str = DEFAULT_SITEVERIFY_API


def inline_or_file(raw: dict[str, Any], key: str, error: type[Exception], *,
                   strip: bool = True) -> str | None:
    """``key`` given inline or as ``key_path`` (a file holding it), not both (Synapse's
    secrets: the CAPTCHA keys, ``turn_shared_secret``).  The file's text is stripped; the
    inline value too unless ``strip`` is false."""
    value, path = raw.get(key), raw.get(f"{key}_path")
    if value is not None and (not isinstance(value, str)
                              or not (value.strip() if strip else value)):
        raise error(f"config key '{key}' must be a non-empty string")
    if path is None:
        return (value.strip() if strip else value) if value is not None else None
    if value is not None:
        raise error(f"config key '{key}_path' cannot be used together with '{key}'")
    if not isinstance(path, str) or not path:
        raise error(f"config key '{key}_path' must be a file path (got {path!r})")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as e:
        raise error(f"config key '{key}_path' names a file that cannot be read: "
                    f"{e.strerror}") from None
    if not text:
        raise error(f"config key '{key}_path' names an empty file")
    return text


def parse_captcha_config(raw: dict[str, Any], error: type[Exception]) -> CaptchaConfig:
    """Validate the CAPTCHA keys of the top-level mapping ``raw``; ``error`` is ConfigError
    (its message is one line naming the key)."""
    from atrium.config import _bool  # noqa: PLC0415 - config imports this module

    enabled = _bool(raw, "enable_registration_captcha", False)
    public_key = inline_or_file(raw, "recaptcha_public_key", error)
    private_key = inline_or_file(raw, "recaptcha_private_key", error)
    api = raw.get("recaptcha_siteverify_api", DEFAULT_SITEVERIFY_API)
    parts = urlsplit(api) if isinstance(api, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(f"config key 'recaptcha_siteverify_api' must be an http(s) URL "
                    f"(got {api!r})")
    if enabled:
        for key, value in (("recaptcha_public_key", public_key),
                           ("recaptcha_private_key", private_key)):
            if value is None:
                raise error(f"config key '{key}' must be set when "
                            f"enable_registration_captcha is true")
    return CaptchaConfig(enabled, public_key, private_key, api)
