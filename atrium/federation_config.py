"""Federation settings, with Synapse's key names where the feature is the same.

Top-level Synapse keys read here: ``key_refresh_interval``, ``old_signing_keys``,
``trusted_key_servers``, ``federation_domain_whitelist``, ``federation_verify_certificates``,
``federation_certificate_verification_whitelist``, ``federation_custom_ca_list``,
``federation_ip_range_blacklist`` / ``federation_ip_range_whitelist``, ``rc_federation``,
``allow_public_rooms_over_federation``, ``tls_certificate_path`` / ``tls_private_key_path``.
Atrium's own tuning lives under ``federation:`` (queue bound, timeouts, back-off, sizes).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Callable

#: Synapse's default ``federation_ip_range_blacklist``: never send a federation request to
#: these (checked on the resolved address), so a server name cannot aim us at an internal
#: service.  ``[]`` turns it off (test setups on loopback).
DEFAULT_IP_RANGE_BLACKLIST = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "192.0.0.0/24", "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "0.0.0.0/8", "240.0.0.0/4",
    "255.255.255.255/32",
    "::1/128", "::/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8",
    "fec0::/10", "::ffff:0:0/96", "64:ff9b::/96", "100::/64",
)


@dataclass(frozen=True)
class TrustedKeyServer:
    server_name: str
    #: key id -> unpadded base64 verify key; None = trust whatever key it serves (TOFU)
    verify_keys: dict[str, str] | None = None


@dataclass(frozen=True)
class OldSigningKey:
    key_id: str        # "ed25519:abc"
    key: str           # unpadded base64 verify key
    expired_ts: int    # ms


@dataclass(frozen=True)
class RcFederation:
    """Synapse's ``rc_federation``: per origin, requests in a ``window_size`` window beyond
    ``sleep_limit`` are delayed by ``sleep_delay`` each, beyond ``reject_limit`` refused 429;
    at most ``concurrent`` requests of one origin are handled at once (the rest queue)."""

    window_size: float = 1.0     # seconds
    sleep_limit: int = 10
    sleep_delay: float = 0.5     # seconds
    reject_limit: int = 50
    concurrent: int = 3


@dataclass(frozen=True)
class FederationConfig:
    key_refresh_interval: float = 86400.0          # s: valid_until_ts of our key response
    old_signing_keys: tuple[OldSigningKey, ...] = ()
    trusted_key_servers: tuple[TrustedKeyServer, ...] = (TrustedKeyServer("matrix.org"),)
    domain_whitelist: frozenset[str] | None = None  # None = every server may federate
    verify_certificates: bool = True
    certificate_verification_whitelist: tuple[str, ...] = ()  # globs of server names
    custom_ca_list: tuple[str, ...] = ()           # PEM files (replace the system CAs)
    ip_range_blacklist: tuple[str, ...] = DEFAULT_IP_RANGE_BLACKLIST
    ip_range_whitelist: tuple[str, ...] = ()
    rc_federation: RcFederation = field(default_factory=RcFederation)
    allow_public_rooms_over_federation: bool = False
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    # --- Atrium's own (under ``federation:``) ---
    enabled: bool = True
    queue_size: int = 1000             # per destination, in memory, before catch-up mode
    catchup_max_per_room: int = 200    # PDUs replayed per room after an outage (Fed II)
    max_concurrent_transactions: int = 16   # outbound transactions in flight, all destinations
    connect_timeout: float = 10.0      # s
    request_timeout: float = 60.0      # s, whole request (transactions, queries)
    query_timeout: float = 10.0        # s, default for client-triggered queries
    max_response_size: int = 50 * 1024 * 1024
    min_retry_interval: float = 10.0   # s, first back-off after a failure
    max_retry_interval: float = 3600.0  # s, back-off cap
    ephemeral_edu_ttl: float = 60.0    # s, typing/presence older than this are dropped


def parse_federation_config(raw: dict[str, Any], rel: Callable[[str], str],
                            error: type[Exception]) -> FederationConfig:
    """Validate the federation keys of the top-level mapping ``raw``; ``rel`` makes a path
    absolute against the config's folder; ``error`` is ConfigError."""
    from atrium.config import _bool, _num, parse_duration, parse_size  # noqa: PLC0415

    d = FederationConfig()

    def bad(key: str, what: str, got: Any) -> Exception:
        return error(f"config key '{key}' must be {what} (got {got!r})")

    # old_signing_keys: {"ed25519:id": {key: b64, expired_ts: ms}}
    olds = []
    osk = raw.get("old_signing_keys") or {}
    if not isinstance(osk, dict):
        raise bad("old_signing_keys", "a mapping of key id to {key, expired_ts}", osk)
    for kid, v in osk.items():
        if not isinstance(kid, str) or not kid.startswith("ed25519:") or not isinstance(v, dict) \
                or not isinstance(v.get("key"), str) or isinstance(v.get("expired_ts"), bool) \
                or not isinstance(v.get("expired_ts"), int):
            raise bad(f"old_signing_keys.{kid}", "{key: <base64>, expired_ts: <ms>} under an "
                      "'ed25519:…' key id", v)
        olds.append(OldSigningKey(kid, v["key"], v["expired_ts"]))

    tks_raw = raw.get("trusted_key_servers", None)
    if tks_raw is None:
        tks: tuple[TrustedKeyServer, ...] = d.trusted_key_servers
    else:
        if not isinstance(tks_raw, list):
            raise bad("trusted_key_servers", "a list of {server_name, verify_keys}", tks_raw)
        out = []
        for i, e in enumerate(tks_raw):
            if not isinstance(e, dict) or not isinstance(e.get("server_name"), str):
                raise bad(f"trusted_key_servers[{i}]", "a mapping with server_name", e)
            vk = e.get("verify_keys")
            if vk is not None and (not isinstance(vk, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in vk.items())):
                raise bad(f"trusted_key_servers[{i}].verify_keys",
                          "a mapping of key id to base64 key", vk)
            out.append(TrustedKeyServer(e["server_name"], dict(vk) if vk else None))
        tks = tuple(out)

    wl = raw.get("federation_domain_whitelist")
    if wl is not None and (not isinstance(wl, list) or not all(isinstance(x, str) for x in wl)):
        raise bad("federation_domain_whitelist", "a list of server names", wl)

    def str_list(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = raw.get(key)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise bad(key, "a list of strings", v)
        return tuple(v)

    blacklist = str_list("federation_ip_range_blacklist", d.ip_range_blacklist)
    whitelist = str_list("federation_ip_range_whitelist", ())
    for key, ranges in (("federation_ip_range_blacklist", blacklist),
                        ("federation_ip_range_whitelist", whitelist)):
        for r in ranges:
            try:
                ipaddress.ip_network(r, strict=False)
            except ValueError:
                raise bad(key, "a list of CIDR ranges", r) from None

    cas = tuple(rel(p) for p in str_list("federation_custom_ca_list", ()))
    for p in cas:
        if not os.path.isfile(p):
            raise error(f"config key 'federation_custom_ca_list': {p} is not a file")

    rc_raw = raw.get("rc_federation") or {}
    if not isinstance(rc_raw, dict):
        raise bad("rc_federation", "a mapping", rc_raw)
    rd = RcFederation()
    rc = RcFederation(
        window_size=parse_duration("rc_federation.window_size",
                                   rc_raw.get("window_size", 1000)),
        sleep_limit=_num("rc_federation.sleep_limit", rc_raw.get("sleep_limit", rd.sleep_limit),
                         minimum=1, integer=True),
        sleep_delay=parse_duration("rc_federation.sleep_delay",
                                   rc_raw.get("sleep_delay", 500)),
        reject_limit=_num("rc_federation.reject_limit",
                          rc_raw.get("reject_limit", rd.reject_limit), minimum=1, integer=True),
        concurrent=_num("rc_federation.concurrent", rc_raw.get("concurrent", rd.concurrent),
                        minimum=1, integer=True),
    )

    cert = raw.get("tls_certificate_path")
    key = raw.get("tls_private_key_path")
    for k, v in (("tls_certificate_path", cert), ("tls_private_key_path", key)):
        if v is not None and (not isinstance(v, str) or not os.path.isfile(rel(v))):
            raise error(f"config key '{k}': {v!r} is not a readable file")
    if (cert is None) != (key is None):
        raise error("config keys 'tls_certificate_path' and 'tls_private_key_path' must be "
                    "set together")

    fed = raw.get("federation") or {}
    if not isinstance(fed, dict):
        raise bad("federation", "a mapping", fed)

    def fnum(k: str, minimum: float = 0, integer: bool = True) -> Any:
        return _num(f"federation.{k}", fed.get(k, getattr(d, k)), minimum=minimum,
                    integer=integer)

    def fdur(k: str, default: str) -> float:
        return parse_duration(f"federation.{k}", fed.get(k, default))

    return FederationConfig(
        key_refresh_interval=parse_duration("key_refresh_interval",
                                            raw.get("key_refresh_interval", "1d")),
        old_signing_keys=tuple(olds),
        trusted_key_servers=tks,
        domain_whitelist=frozenset(wl) if wl is not None else None,
        verify_certificates=_bool(raw, "federation_verify_certificates", True),
        certificate_verification_whitelist=str_list(
            "federation_certificate_verification_whitelist", ()),
        custom_ca_list=cas,
        ip_range_blacklist=blacklist,
        ip_range_whitelist=whitelist,
        rc_federation=rc,
        allow_public_rooms_over_federation=_bool(raw, "allow_public_rooms_over_federation",
                                                 False),
        tls_certificate_path=rel(cert) if cert else None,
        tls_private_key_path=rel(key) if key else None,
        enabled=_bool(fed, "enabled", True),
        queue_size=fnum("queue_size", 1),
        catchup_max_per_room=fnum("catchup_max_per_room", 1),
        max_concurrent_transactions=fnum("max_concurrent_transactions", 1),
        connect_timeout=fdur("connect_timeout", "10s"),
        request_timeout=fdur("request_timeout", "60s"),
        query_timeout=fdur("query_timeout", "10s"),
        max_response_size=parse_size("federation.max_response_size",
                                     fed.get("max_response_size", "50M")),
        min_retry_interval=fdur("min_retry_interval", "10s"),
        max_retry_interval=fdur("max_retry_interval", "1h"),
        ephemeral_edu_ttl=fdur("ephemeral_edu_ttl", "60s"),
    )
