"""URL preview settings, with Synapse's key names (Synapse's ``config/repository.py``):
``url_preview_enabled``, ``url_preview_ip_range_blacklist`` / ``url_preview_ip_range_whitelist``,
``url_preview_url_blacklist``, ``max_spider_size`` and ``url_preview_accept_language``.

Previews are off by default.  When they are on, an explicit ``url_preview_ip_range_blacklist``
is required (start-up stops without it, as Synapse does): a preview makes the server fetch
any URL a user names, and only the blacklist keeps that away from internal services.  As in
Synapse, ``0.0.0.0`` and ``::`` are always blacklisted, and each IPv4 range is also
blacklisted in its IPv6 spellings (IPv4-compatible ``::a.b.c.d`` and 6to4 ``2002:…``; the
IPv4-mapped form ``::ffff:a.b.c.d`` is judged as its IPv4 address by the filter).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

#: ``urllib.parse.urlsplit`` attributes a ``url_preview_url_blacklist`` entry may test.
URL_PARTS = ("scheme", "netloc", "path", "query", "fragment", "username", "password",
             "hostname", "port")
ALWAYS_BLOCKED = ("0.0.0.0/32", "::/128")


@dataclass(frozen=True)
class UrlPreviewConfig:
    enabled: bool = False
    ip_range_blacklist: tuple[str, ...] = ()   # CIDR ranges, IPv6 spellings added
    ip_range_whitelist: tuple[str, ...] = ()
    #: each entry: urlsplit attribute -> glob, or a regular expression when it starts with ^
    url_blacklist: tuple[tuple[tuple[str, str], ...], ...] = ()
    max_spider_size: int = 10 * 1024 * 1024   # bytes fetched per URL at most
    accept_language: tuple[str, ...] = ("en",)


def ipv6_spellings(net: ipaddress.IPv4Network) -> list[ipaddress.IPv6Network]:
    """The IPv4-compatible (``::a.b.c.d``) and 6to4 (``2002:AABB:CCDD::``) ranges of ``net``."""
    v4 = int(net.network_address)
    compat = ipaddress.IPv6Network((v4, 96 + net.prefixlen))
    six_to_four = ipaddress.IPv6Network(((0x2002 << 112) | (v4 << 80), 16 + net.prefixlen))
    return [compat, six_to_four]


def parse_url_preview_config(raw: dict[str, Any], error: type[Exception]) -> UrlPreviewConfig:
    """Validate the URL preview keys of the top-level mapping ``raw``; ``error`` is
    ConfigError (its message is one line naming the key)."""
    from atrium.config import _bool, parse_size  # noqa: PLC0415 - config imports this module

    def bad(key: str, what: str, got: Any) -> Exception:
        return error(f"config key '{key}' must be {what} (got {got!r})")

    enabled = _bool(raw, "url_preview_enabled", False)
    max_spider_size = parse_size("max_spider_size", raw.get("max_spider_size", "10M"))
    if not enabled:
        return UrlPreviewConfig(max_spider_size=max_spider_size)
    if "url_preview_ip_range_blacklist" not in raw:
        raise error("config key 'url_preview_ip_range_blacklist' must be set when "
                    "url_preview_enabled is true: for security, list the IP ranges URL "
                    "previews may never fetch from")

    def ranges(key: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = raw.get(key)
        if v is None:
            v = []
        if not isinstance(v, list):
            raise bad(key, "a list of CIDR ranges", v)
        out: list[str] = []
        for r in [*v, *extra]:
            try:
                net = ipaddress.ip_network(r, strict=False) if isinstance(r, str) else None
            except ValueError:
                net = None
            if net is None:
                raise bad(key, "a list of CIDR ranges", r)
            out.append(str(net))
            if isinstance(net, ipaddress.IPv4Network):
                out += [str(n) for n in ipv6_spellings(net)]
        return tuple(dict.fromkeys(out))

    blacklist = ranges("url_preview_ip_range_blacklist", ALWAYS_BLOCKED)
    whitelist = ranges("url_preview_ip_range_whitelist")

    entries_raw = raw.get("url_preview_url_blacklist") or []
    if not isinstance(entries_raw, list):
        raise bad("url_preview_url_blacklist", "a list of mappings", entries_raw)
    entries = []
    for i, entry in enumerate(entries_raw):
        key = f"url_preview_url_blacklist[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise bad(key, "a mapping of URL part to pattern", entry)
        for part, pattern in entry.items():
            if part not in URL_PARTS:
                raise bad(f"{key}.{part}", "one of " + ", ".join(URL_PARTS), part)
            if not isinstance(pattern, str):
                raise bad(f"{key}.{part}", "a glob or a ^regular expression", pattern)
            if pattern.startswith("^"):
                try:
                    re.compile(pattern)
                except re.error:
                    raise bad(f"{key}.{part}", "a valid regular expression", pattern) from None
        entries.append(tuple((str(k), str(v)) for k, v in entry.items()))

    lang = raw.get("url_preview_accept_language")
    if lang is None:
        lang = ["en"]
    if not isinstance(lang, list) or not lang or not all(
            isinstance(x, str) and x and "\n" not in x and "\r" not in x for x in lang):
        raise bad("url_preview_accept_language", "a list of language ranges", lang)
    return UrlPreviewConfig(True, blacklist, whitelist, tuple(entries), max_spider_size,
                            tuple(lang))

