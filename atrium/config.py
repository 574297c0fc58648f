"""Configuration: a YAML file with Synapse's key names where the feature is the same.

The file is chosen by ``ATRIUM_CONFIG``, else ``./homeserver.yaml``.  A missing file is
written with commented defaults (fresh signing key, random registration secret, SQLite under
``./data``).  Every key is validated once at start; a bad value raises :class:`ConfigError`
whose message is one line naming the key.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atrium.captcha_config import CaptchaConfig, parse_captcha_config
from atrium.default_config import write_default_config
from atrium.email_config import ThreepidSettings, parse_email_config
from atrium.federation_config import FederationConfig, parse_federation_config
from atrium.listeners import Listener, parse_listeners
from atrium.server_notices_config import ServerNoticesConfig, parse_server_notices_config
from atrium.synapse_keys import unused_key_warnings
from atrium.url_preview_config import UrlPreviewConfig, parse_url_preview_config
from atrium.voip_config import VoipConfig, parse_voip_config

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "homeserver.yaml"


class ConfigError(Exception):
    """A bad configuration value; ``str()`` is one line naming the key."""


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst_count: float


@dataclass(frozen=True)
class DatabaseConfig:
    name: str  # "sqlite3" or "psycopg2" (Synapse's names; psycopg 3 is used for the latter)
    args: dict[str, Any]


@dataclass(frozen=True)
class ActorConfig:
    ask_timeout: float = 10.0
    mailbox_size: int = 1000
    idle_timeout: float = 300.0
    restart_delay: float = 0.05
    max_restarts: int = 5
    restart_window: float = 60.0
    park_duration: float = 30.0


@dataclass(frozen=True)
class CacheConfig:
    """In-memory cache bounds (``caches:``); each is a number of entries."""

    events: int = 2000          # events by id (EventStore), ~3.5 KB each
    state_groups: int = 1000    # resolved state maps (StateGroupStore)
    push_rooms: int = 500       # push evaluator: members / power levels per room
    push_rulesets: int = 2000   # push evaluator: compiled push rules per user, ~20 KB each
    access_tokens: int = 10000  # access token → user/device (AccountStore)
    unread_counts: int = 20000  # (user, room) unread counts kept current (~0.5 KB each)


@dataclass(frozen=True)
class Config:
    path: str
    server_name: str
    public_baseurl: str
    database: DatabaseConfig
    signing_key_path: str
    media_store_path: str
    max_upload_size: int
    max_request_body_size: int
    enable_registration: bool
    enable_registration_without_verification: bool
    registration_shared_secret: str | None
    registration_requires_token: bool
    bcrypt_rounds: int
    rc_message: RateLimit
    rc_registration: RateLimit
    rc_login_address: RateLimit
    rc_login_account: RateLimit
    rc_login_failed_attempts: RateLimit
    rc_joins_local: RateLimit
    rc_joins_remote: RateLimit
    rc_invites_per_room: RateLimit
    rc_invites_per_user: RateLimit
    rc_admin_redaction: RateLimit | None
    default_room_version: str
    enable_fault_injection: bool
    serve_server_wellknown: bool
    refreshable_access_token_lifetime: float | None
    actors: ActorConfig
    trace_capacity: int
    trace_jsonl_path: str | None
    log_level: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # media repository (Synapse's key names)
    enable_legacy_unauthenticated_media: bool = True
    max_image_pixels: int = 32 * 1024 * 1024
    max_pending_media_uploads: int = 5
    unused_expiration_time: float = 86400.0
    media_upload_limits: tuple[tuple[float, int], ...] = ()  # (time_period s, max_size bytes)
    # room directory (Synapse's key names); None = no list configured = allow all
    room_list_publication_rules: tuple["DirectoryRule", ...] | None = None
    alias_creation_rules: tuple["DirectoryRule", ...] | None = None
    caches: CacheConfig = field(default_factory=CacheConfig)
    federation: "FederationConfig" = field(default_factory=lambda: FederationConfig())
    # guest access (Synapse's key; issue 15 group 2)
    allow_guest_access: bool = False
    # outbound HTTPS to push gateways / identity servers without certificate checks (Synapse's
    # key; only for test set-ups with a private CA)
    use_insecure_ssl_client_just_for_testing_do_not_use: bool = False
    # URL previews and server notices (issue 16; atrium/url_preview_config.py,
    # atrium/server_notices_config.py)
    url_preview: UrlPreviewConfig = field(default_factory=UrlPreviewConfig)
    server_notices: ServerNoticesConfig | None = None
    # e-mail sent by Atrium, 3PID validation (issue 18; atrium/email_config.py)
    threepid: ThreepidSettings = field(default_factory=ThreepidSettings)
    # CAPTCHA at registration and TURN for calls (issue 18; atrium/captcha_config.py,
    # atrium/voip_config.py)
    captcha: CaptchaConfig = field(default_factory=CaptchaConfig)
    voip: VoipConfig = field(default_factory=VoipConfig)
    # Prometheus metrics at /_synapse/metrics (Synapse's key; web/metrics.py, docs/metrics.md)
    enable_metrics: bool = False
    # Synapse's listeners (type http): addresses, tls, x_forwarded (atrium/listeners.py)
    listeners: tuple[Listener, ...] = ()

    @property
    def x_forwarded(self) -> bool:
        """Some listener takes the client's address from X-Forwarded-For."""
        return any(lst.x_forwarded for lst in self.listeners)

    @property
    def serves_tls(self) -> bool:
        """gunicorn serves HTTPS: a certificate is configured and, when there are
        listeners, one of them asks for tls."""
        return (self.federation.tls_certificate_path is not None
                and (not self.listeners or any(lst.tls for lst in self.listeners)))


# --------------------------------------------------------------------------- parsing helpers

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                   "y": 31536000}


def _get(raw: dict[str, Any], key: str, default: Any = None) -> Any:
    return raw.get(key, default) if isinstance(raw, dict) else default


def parse_size(key: str, value: Any) -> int:
    """Synapse-style sizes: an int of bytes, or "50M", "10K", "1G"."""
    if isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be a size like 50M (got {value!r})")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
            return int(m.group(1)) * mult
    raise ConfigError(f"config key '{key}' must be a size like 50M (got {value!r})")


def parse_duration(key: str, value: Any) -> float:
    """Durations in seconds; Synapse-style strings ("5m", "1h", "500ms") or numbers (ms)."""
    if isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be a duration like 5m (got {value!r})")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value) / 1000.0  # Synapse: bare numbers are milliseconds
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "ms"]
    raise ConfigError(f"config key '{key}' must be a duration like 5m (got {value!r})")


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    v = _get(raw, key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"config key '{key}' must be true or false (got {v!r})")
    return v


def _num(key: str, v: Any, *, minimum: float = 0, integer: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"config key '{key}' must be {kind} >= {minimum} (got {v!r})")
    if integer and not isinstance(v, int):
        raise ConfigError(f"config key '{key}' must be an integer (got {v!r})")
    return v


def _str(raw: dict[str, Any], key: str, default: str | None) -> str | None:
    v = _get(raw, key, default)
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"config key '{key}' must be a string (got {v!r})")
    return v


def _ratelimit(raw: Any, key: str, per_second: float, burst: float) -> RateLimit:
    if raw is None:
        return RateLimit(per_second, burst)
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}' must be a mapping with per_second/burst_count")
    ps = _num(f"{key}.per_second", raw.get("per_second", per_second))
    bc = _num(f"{key}.burst_count", raw.get("burst_count", burst))
    return RateLimit(float(ps), float(bc))


_SERVER_NAME_RE = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,255})(?::\d{1,5})?$"
)

KNOWN_KEYS = {
    "server_name", "public_baseurl", "database", "signing_key_path", "media_store_path",
    "max_upload_size", "max_request_body_size", "enable_registration",
    "enable_registration_without_verification", "registration_shared_secret",
    "registration_requires_token", "bcrypt_rounds", "rc_message", "rc_registration",
    "rc_login", "rc_joins", "rc_invites", "rc_admin_redaction", "default_room_version",
    "enable_fault_injection", "serve_server_wellknown", "refreshable_access_token_lifetime",
    "enable_metrics", "log_config",
    "actors", "trace", "log_level", "report_stats", "pid_file", "listeners",
    "enable_media_repo", "media", "federation", "enable_legacy_unauthenticated_media",
    "url_preview_enabled", "room_list_publication_rules", "presence", "push",
    "admin_contact", "suppress_key_server_warning", "trusted_key_servers",
    "federation_verify_certificates", "federation_ip_range_blacklist", "tls",
    "max_image_pixels", "max_pending_media_uploads", "unused_expiration_time",
    "media_upload_limits",
    "alias_creation_rules",
    "caches",
    # federation (atrium/federation_config.py)
    "key_refresh_interval", "old_signing_keys", "federation_domain_whitelist",
    "federation_certificate_verification_whitelist", "federation_custom_ca_list",
    "federation_ip_range_whitelist", "rc_federation", "allow_public_rooms_over_federation",
    "tls_certificate_path", "tls_private_key_path",
    "allow_guest_access", "use_insecure_ssl_client_just_for_testing_do_not_use",
    # finding things (issue 16): parsed by their own modules
    "user_directory", "url_preview_ip_range_blacklist", "url_preview_ip_range_whitelist",
    "url_preview_url_blacklist", "max_spider_size", "url_preview_accept_language",
    "server_notices",
    # accounts (issue 18): parsed by their own modules
    "enable_registration_captcha", "recaptcha_public_key", "recaptcha_private_key",
    "recaptcha_siteverify_api", "email", "registrations_require_3pid", "rc_3pid_validation",
    "turn_uris", "turn_shared_secret", "turn_username", "turn_password",
    "turn_user_lifetime", "turn_allow_guests", "request_token_inhibit_3pid_errors",
    "recaptcha_public_key_path", "recaptcha_private_key_path", "turn_shared_secret_path",
}


def parse_config(raw: Any, path: str = "<memory>", base_dir: str | None = None, *,
                 warn: bool = True) -> Config:
    """Validate a loaded YAML mapping into a :class:`Config`; ``warn`` logs what is ignored
    (Synapse keys Atrium does not implement, unknown keys with a suggestion)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a YAML mapping at the top level")
    say = log.warning if warn else (lambda msg: None)
    for line in unused_key_warnings(raw, KNOWN_KEYS):
        say(line)
    base = Path(base_dir or os.path.dirname(os.path.abspath(path)) or ".")

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else str(base / p)

    server_name = raw.get("server_name")
    if not isinstance(server_name, str) or not _SERVER_NAME_RE.match(server_name):
        raise ConfigError(f"config key 'server_name' must be a server name like example.org "
                          f"(got {server_name!r})")

    public_baseurl = _str(raw, "public_baseurl", None) or f"http://{server_name}/"
    if not re.match(r"^https?://", public_baseurl):
        raise ConfigError(f"config key 'public_baseurl' must be an http(s) URL "
                          f"(got {public_baseurl!r})")
    if not public_baseurl.endswith("/"):
        public_baseurl += "/"

    db_raw = raw.get("database") or {"name": "sqlite3", "args": {"database": "data/homeserver.db"}}
    if not isinstance(db_raw, dict):
        raise ConfigError("config key 'database' must be a mapping with 'name' and 'args'")
    db_name = db_raw.get("name", "sqlite3")
    if db_name not in ("sqlite3", "psycopg2", "psycopg"):
        raise ConfigError(f"config key 'database.name' must be sqlite3 or psycopg2 (got {db_name!r})")
    db_args = db_raw.get("args") or {}
    if not isinstance(db_args, dict):
        raise ConfigError("config key 'database.args' must be a mapping")
    db_args = dict(db_args)
    if db_name == "sqlite3":
        dbfile = db_args.get("database", "data/homeserver.db")
        if not isinstance(dbfile, str) or not dbfile:
            raise ConfigError("config key 'database.args.database' must be a file path")
        db_args["database"] = dbfile if dbfile == ":memory:" else rel(dbfile)
    else:
        db_name = "psycopg2"
        for k in ("cp_min", "cp_max"):
            if k in db_args:
                _num(f"database.args.{k}", db_args[k], minimum=1, integer=True)

    rc_login = raw.get("rc_login") or {}
    rc_joins = raw.get("rc_joins") or {}
    rc_invites = raw.get("rc_invites") or {}
    for k, v in (("rc_login", rc_login), ("rc_joins", rc_joins), ("rc_invites", rc_invites)):
        if not isinstance(v, dict):
            raise ConfigError(f"config key '{k}' must be a mapping")

    room_version = str(raw.get("default_room_version", "12"))
    from protocol.room_versions import KNOWN_ROOM_VERSIONS

    if room_version not in KNOWN_ROOM_VERSIONS:
        raise ConfigError(f"config key 'default_room_version' must be one of "
                          f"{', '.join(KNOWN_ROOM_VERSIONS)} (got {room_version!r})")

    actors_raw = raw.get("actors") or {}
    if not isinstance(actors_raw, dict):
        raise ConfigError("config key 'actors' must be a mapping")
    d = ActorConfig()
    actors = ActorConfig(
        ask_timeout=parse_duration("actors.ask_timeout", actors_raw.get("ask_timeout", "10s")),
        mailbox_size=_num("actors.mailbox_size", actors_raw.get("mailbox_size", d.mailbox_size),
                          minimum=1, integer=True),
        idle_timeout=parse_duration("actors.idle_timeout", actors_raw.get("idle_timeout", "5m")),
        restart_delay=parse_duration("actors.restart_delay",
                                     actors_raw.get("restart_delay", "50ms")),
        max_restarts=_num("actors.max_restarts", actors_raw.get("max_restarts", d.max_restarts),
                          minimum=0, integer=True),
        restart_window=parse_duration("actors.restart_window",
                                      actors_raw.get("restart_window", "1m")),
        park_duration=parse_duration("actors.park_duration",
                                     actors_raw.get("park_duration", "30s")),
    )
    trace_raw = raw.get("trace") or {}
    if not isinstance(trace_raw, dict):
        raise ConfigError("config key 'trace' must be a mapping")
    trace_capacity = _num("trace.capacity", trace_raw.get("capacity", 10000), minimum=1,
                          integer=True)
    trace_jsonl = trace_raw.get("jsonl_path")
    if trace_jsonl is not None and not isinstance(trace_jsonl, str):
        raise ConfigError("config key 'trace.jsonl_path' must be a file path")

    log_level = str(raw.get("log_level", "INFO")).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"config key 'log_level' must be DEBUG, INFO, WARNING or ERROR "
                          f"(got {log_level!r})")

    rtl = raw.get("refreshable_access_token_lifetime")
    secret = _str(raw, "registration_shared_secret", None)
    rc_admin = raw.get("rc_admin_redaction")

    return Config(
        path=path,
        server_name=server_name,
        public_baseurl=public_baseurl,
        database=DatabaseConfig(db_name, db_args),
        signing_key_path=rel(_str(raw, "signing_key_path", "data/signing.key") or ""),
        media_store_path=rel(_str(raw, "media_store_path", "data/media_store") or ""),
        max_upload_size=parse_size("max_upload_size", raw.get("max_upload_size", "50M")),
        max_request_body_size=parse_size("max_request_body_size",
                                         raw.get("max_request_body_size", "1M")),
        enable_registration=_bool(raw, "enable_registration", False),
        enable_registration_without_verification=_bool(
            raw, "enable_registration_without_verification", False),
        registration_shared_secret=secret,
        registration_requires_token=_bool(raw, "registration_requires_token", False),
        bcrypt_rounds=_num("bcrypt_rounds", raw.get("bcrypt_rounds", 12), minimum=4,
                           integer=True),
        rc_message=_ratelimit(raw.get("rc_message"), "rc_message", 0.2, 10),
        rc_registration=_ratelimit(raw.get("rc_registration"), "rc_registration", 0.17, 3),
        rc_login_address=_ratelimit(rc_login.get("address"), "rc_login.address", 0.003, 5),
        rc_login_account=_ratelimit(rc_login.get("account"), "rc_login.account", 0.003, 5),
        rc_login_failed_attempts=_ratelimit(rc_login.get("failed_attempts"),
                                            "rc_login.failed_attempts", 0.17, 3),
        rc_joins_local=_ratelimit(rc_joins.get("local"), "rc_joins.local", 0.1, 10),
        rc_joins_remote=_ratelimit(rc_joins.get("remote"), "rc_joins.remote", 0.01, 10),
        rc_invites_per_room=_ratelimit(rc_invites.get("per_room"), "rc_invites.per_room", 0.3, 10),
        rc_invites_per_user=_ratelimit(rc_invites.get("per_user"), "rc_invites.per_user",
                                       0.003, 5),
        rc_admin_redaction=(_ratelimit(rc_admin, "rc_admin_redaction", 1, 50)
                            if rc_admin is not None else None),
        default_room_version=room_version,
        enable_fault_injection=_bool(raw, "enable_fault_injection", False),
        enable_metrics=_bool(raw, "enable_metrics", False),
        serve_server_wellknown=_bool(raw, "serve_server_wellknown", False),
        refreshable_access_token_lifetime=(
            parse_duration("refreshable_access_token_lifetime", rtl) if rtl is not None else None),
        actors=actors,
        trace_capacity=trace_capacity,
        trace_jsonl_path=rel(trace_jsonl) if trace_jsonl else None,
        log_level=log_level,
        raw=raw,
        enable_legacy_unauthenticated_media=_bool(raw, "enable_legacy_unauthenticated_media",
                                                  True),
        max_image_pixels=parse_size("max_image_pixels", raw.get("max_image_pixels", "32M")),
        max_pending_media_uploads=_num("max_pending_media_uploads",
                                       raw.get("max_pending_media_uploads", 5), minimum=1,
                                       integer=True),
        unused_expiration_time=parse_duration("unused_expiration_time",
                                              raw.get("unused_expiration_time", "24h")),
        media_upload_limits=_media_upload_limits(raw.get("media_upload_limits") or []),
        room_list_publication_rules=_directory_rules(raw, "room_list_publication_rules"),
        alias_creation_rules=_directory_rules(raw, "alias_creation_rules"),
        caches=_caches(raw.get("caches")),
        federation=parse_federation_config(raw, rel, ConfigError),
        allow_guest_access=_bool(raw, "allow_guest_access", False),
        use_insecure_ssl_client_just_for_testing_do_not_use=_bool(
            raw, "use_insecure_ssl_client_just_for_testing_do_not_use", False),
        url_preview=parse_url_preview_config(raw, ConfigError),
        server_notices=parse_server_notices_config(raw, ConfigError),
        threepid=parse_email_config(raw, ConfigError, parse_duration),
        captcha=parse_captcha_config(raw, ConfigError),
        voip=parse_voip_config(raw, ConfigError),
        listeners=parse_listeners(raw.get("listeners"), ConfigError, say,
                                  has_certificate=bool(raw.get("tls_certificate_path")),
                                  enable_metrics=_bool(raw, "enable_metrics", False)),
    )


def _caches(v: Any) -> CacheConfig:
    if v is None:
        return CacheConfig()
    if not isinstance(v, dict):
        raise ConfigError("config key 'caches' must be a mapping")
    d = CacheConfig()
    names = ("events", "state_groups", "push_rooms", "push_rulesets", "access_tokens",
             "unread_counts")
    for k in v:
        if k not in names:
            log.warning("unknown config key 'caches.%s' ignored", k)
    return CacheConfig(**{k: _num(f"caches.{k}", v.get(k, getattr(d, k)), minimum=0,
                                  integer=True) for k in names})


def _media_upload_limits(v: Any) -> tuple[tuple[float, int], ...]:
    """Synapse's ``media_upload_limits``: a list of ``{time_period: 1d, max_size: 1G}``."""
    if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
        raise ConfigError("config key 'media_upload_limits' must be a list of "
                          "{time_period, max_size} mappings")
    return tuple((parse_duration("media_upload_limits.time_period", e.get("time_period")),
                  parse_size("media_upload_limits.max_size", e.get("max_size"))) for e in v)


@dataclass(frozen=True)
class DirectoryRule:
    """One rule of ``alias_creation_rules`` / ``room_list_publication_rules``: globs
    (``*``, ``?``) over the user id, the alias and the room id; the first rule that matches
    decides."""

    user_id: str = "*"
    alias: str = "*"
    room_id: str = "*"
    action: str = "allow"


def _directory_rules(raw: dict[str, Any], key: str) -> tuple[DirectoryRule, ...] | None:
    """Synapse's rule lists: absent means allow everything; ``[]`` denies everything."""
    v = raw.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
        raise ConfigError(f"config key '{key}' must be a list of "
                          "{user_id, alias, room_id, action} mappings")
    rules = []
    for i, e in enumerate(v):
        unknown = set(e) - {"user_id", "alias", "room_id", "action"}
        if unknown:
            raise ConfigError(f"config key '{key}[{i}]' has unknown fields: "
                              f"{', '.join(sorted(map(str, unknown)))}")
        for f in ("user_id", "alias", "room_id"):
            if not isinstance(e.get(f, "*"), str):
                raise ConfigError(f"config key '{key}[{i}].{f}' must be a glob string")
        action = e.get("action", "allow")
        if action not in ("allow", "deny"):
            raise ConfigError(f"config key '{key}[{i}].action' must be allow or deny "
                              f"(got {action!r})")
        rules.append(DirectoryRule(e.get("user_id", "*"), e.get("alias", "*"),
                                   e.get("room_id", "*"), action))
    return tuple(rules)


def config_path_from_env() -> str:
    return os.environ.get("ATRIUM_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str | None = None, *, write_default: bool = True, warn: bool = True,
                binds: list[str] | None = None) -> Config:
    """Load and validate the config file, writing a commented default if it is missing (for
    the addresses ``binds``, else ``ATRIUM_BIND``'s, else 127.0.0.1:8008)."""
    path = path or config_path_from_env()
    if not os.path.exists(path):
        if not write_default:
            raise ConfigError(f"config file {path} does not exist")
        if binds is None:
            from atrium.listeners import BindError, bind_addresses

            try:
                binds = bind_addresses(())
            except BindError as e:
                raise ConfigError(str(e)) from None
        try:
            write_default_config(path, binds=binds)
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be written: "
                              f"{e.strerror or e}") from None
        log.warning("no config at %s: wrote a default one (server_name: localhost, "
                    "SQLite under ./data, listening on %s); edit it and restart",
                    path, ", ".join(binds))
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    return parse_config(raw if raw is not None else {}, path, warn=warn)
