"""E-mail settings: Synapse's ``email`` section, ``registrations_require_3pid``,
``rc_3pid_validation`` and ``request_token_inhibit_3pid_errors`` (Synapse's
``config/emailconfig.py``, ``config/registration.py``, ``config/ratelimiting.py``).

    email:
      smtp_host: mail.example.org          # required
      smtp_port: 587                       # default 25, or 465 with force_tls
      smtp_user: matrix                    # optional: AUTH when set
      smtp_pass: secret
      force_tls: false                     # implicit TLS from the first byte (port 465)
      require_transport_security: false    # refuse to send unless STARTTLS works
      enable_tls: true                     # use STARTTLS when the server offers it
      tlsname: mail.example.org            # name checked in the certificate (default smtp_host)
      notif_from: "Your %(app)s homeserver <noreply@example.org>"   # required
      app_name: Matrix
      client_base_url: https://app.element.io
      validation_token_lifetime: 1h
      enable_notifs: false                 # parsed; missed-message mails are not sent yet
    registrations_require_3pid: [email]
    rc_3pid_validation: {per_second: 0.003, burst_count: 5}

Without the ``email`` section the server sends no e-mail and the ``requestToken`` endpoints
refuse with the spec's errors.  Unlike Synapse, ``smtp_host`` has no ``localhost`` default:
naming the mail server is what turns e-mail on.
"""
from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_LIFETIME_S = 3600.0


@dataclass(frozen=True)
class EmailConfig:
    smtp_host: str
    notif_from: str
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_pass: str | None = None
    force_tls: bool = False
    require_transport_security: bool = False
    enable_tls: bool = True
    tlsname: str | None = None
    app_name: str = "Matrix"
    client_base_url: str | None = None
    validation_token_lifetime: float = DEFAULT_LIFETIME_S   # seconds
    enable_notifs: bool = False
    notif_for_new_users: bool = True

    def from_header(self) -> str:
        """``notif_from`` with ``%(app)s`` filled in (as Synapse does; left as written if
        it has no such placeholder or a malformed one)."""
        try:
            return self.notif_from % {"app": self.app_name}
        except (KeyError, TypeError, ValueError):
            return self.notif_from


@dataclass(frozen=True)
class ThreepidSettings:
    """What the server does with e-mail addresses: ``email`` is None when no e-mail is
    sent.  ``rc_3pid_validation`` is an ``atrium.config.RateLimit``."""

    email: EmailConfig | None = None
    registrations_require_3pid: tuple[str, ...] = ()
    rc_3pid_validation: Any = None
    inhibit_3pid_errors: bool = False

    @property
    def require_email(self) -> bool:
        return "email" in self.registrations_require_3pid


def parse_email_config(raw: dict[str, Any], error: type[Exception],
                       parse_duration: Callable[[str, Any], float]) -> ThreepidSettings:
    """Validate the e-mail keys of the top-level mapping ``raw``.  ``error`` is
    ConfigError (one line naming the key); ``parse_duration`` is atrium.config's."""
    from atrium.config import RateLimit  # imported late: atrium.config imports this module

    section = raw.get("email")
    cfg: EmailConfig | None = None
    if section is not None:
        if not isinstance(section, dict):
            raise error(f"config key 'email' must be a mapping (got {section!r})")
        cfg = _parse_section(section, error, parse_duration)

    required = raw.get("registrations_require_3pid") or []
    if not isinstance(required, list) or any(m not in ("email", "msisdn") for m in required):
        raise error("config key 'registrations_require_3pid' must be a list of 'email' /"
                    f" 'msisdn' (got {required!r})")
    if "msisdn" in required:
        raise error("config key 'registrations_require_3pid' lists msisdn, but this server"
                    " cannot validate phone numbers")
    if "email" in required and cfg is None:
        raise error("config key 'registrations_require_3pid' lists email, but no 'email'"
                    " section configures how to send the validation e-mail")

    rc = raw.get("rc_3pid_validation")
    per_second, burst = 0.003, 5.0
    if rc is not None:
        if not isinstance(rc, dict):
            raise error("config key 'rc_3pid_validation' must be a mapping with"
                        " per_second/burst_count")
        per_second = _number(rc, "per_second", per_second, "rc_3pid_validation", error)
        burst = _number(rc, "burst_count", burst, "rc_3pid_validation", error)
    inhibit = raw.get("request_token_inhibit_3pid_errors", False)
    if not isinstance(inhibit, bool):
        raise error("config key 'request_token_inhibit_3pid_errors' must be true or false"
                    f" (got {inhibit!r})")
    return ThreepidSettings(email=cfg, registrations_require_3pid=tuple(dict.fromkeys(required)),
                            rc_3pid_validation=RateLimit(per_second, burst),
                            inhibit_3pid_errors=inhibit)


def _number(section: dict[str, Any], key: str, default: float, where: str,
            error: type[Exception]) -> float:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise error(f"config key '{where}.{key}' must be a number >= 0 (got {v!r})")
    return float(v)


def _parse_section(section: dict[str, Any], error: type[Exception],
                   parse_duration: Callable[[str, Any], float]) -> EmailConfig:
    def text(key: str, *, required: bool = False) -> str | None:
        v = section.get(key)
        if v is None:
            if required:
                raise error(f"config key 'email.{key}' is required when 'email' is set")
            return None
        if not isinstance(v, str) or not v.strip() or "\x00" in v:
            raise error(f"config key 'email.{key}' must be a non-empty string (got {v!r})")
        return v

    def flag(key: str, default: bool) -> bool:
        v = section.get(key, default)
        if not isinstance(v, bool):
            raise error(f"config key 'email.{key}' must be true or false (got {v!r})")
        return v

    host = text("smtp_host", required=True)
    notif_from = text("notif_from", required=True)
    assert host is not None and notif_from is not None
    force_tls, enable_tls = flag("force_tls", False), flag("enable_tls", True)
    require_tls = flag("require_transport_security", False)
    if force_tls and not enable_tls:
        raise error("config key 'email.force_tls' requires 'email.enable_tls' to be true")
    if require_tls and not enable_tls:
        raise error("config key 'email.require_transport_security' requires"
                    " 'email.enable_tls' to be true")
    port = section.get("smtp_port", 465 if force_tls else 25)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise error(f"config key 'email.smtp_port' must be a port number (got {port!r})")
    user, password = text("smtp_user"), text("smtp_pass")
    if (user is None) != (password is None):
        raise error("config key 'email.smtp_user' and 'email.smtp_pass' go together")
    probe = EmailConfig(host, notif_from, app_name=text("app_name") or "Matrix")
    if "@" not in email.utils.parseaddr(probe.from_header())[1]:
        raise error(f"config key 'email.notif_from' must hold an e-mail address"
                    f" (got {notif_from!r})")
    base_url = text("client_base_url") or text("riot_base_url")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise error(f"config key 'email.client_base_url' must be an http(s) URL"
                    f" (got {base_url!r})")
    lifetime = parse_duration("email.validation_token_lifetime",
                              section.get("validation_token_lifetime", "1h"))
    if lifetime <= 0:
        raise error("config key 'email.validation_token_lifetime' must be positive")
    return EmailConfig(
        smtp_host=host, notif_from=notif_from, smtp_port=port, smtp_user=user,
        smtp_pass=password, force_tls=force_tls, require_transport_security=require_tls,
        enable_tls=enable_tls, tlsname=text("tlsname"), app_name=probe.app_name,
        client_base_url=base_url, validation_token_lifetime=lifetime,
        enable_notifs=flag("enable_notifs", False),
        notif_for_new_users=flag("notif_for_new_users", True))

