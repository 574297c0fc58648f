"""Server-name resolution: where to connect for a server name, with which ``Host`` header and
which name the TLS certificate must be valid for.

Spec: server-server-api.md "Resolving server names" (steps 1-6 and 3.1-3.5) and the
``/.well-known/matrix/server`` schema.

- IP literal → that address, its port or 8448; certificate for the IP.
- hostname with a port → that host and port; certificate for the hostname.
- else ``GET https://<hostname>/.well-known/matrix/server`` (30x followed, at most
  :data:`MAX_REDIRECTS`, loops refused, https only, body at most :data:`MAX_WELL_KNOWN_SIZE`):
  a valid ``m.server`` is resolved with the delegated steps (IP literal / port /
  SRV ``_matrix-fed._tcp`` / deprecated SRV ``_matrix._tcp`` / 8448, ``Host`` and certificate
  = the delegated name); no valid answer → SRV for the original hostname, then 8448.

The hostname a :class:`ResolvedServer` names is turned into addresses (and checked against
the IP blacklist) by the client when it connects.

Well-known cache (per hostname, bounded LRU of :data:`CACHE_ENTRIES`):

- a valid answer: ``Cache-Control: max-age`` (or ``Expires``) if present, else 24 h; never
  more than 48 h, never less than 5 min (so a ``no-cache`` server is not fetched on every
  request);
- an answer that says "no delegation" (404 or other 4xx, non-JSON, no ``m.server``, bad
  name): 1 h;
- a failure that may be temporary (no connection, TLS error, timeout, 5xx, 429): 2 min, doubled
  for each consecutive failure, at most 1 h (the spec's "cached for up to an hour …
  exponentially back off"); if an earlier valid answer is known it is kept in use meanwhile.

Concurrent resolutions of one hostname share one fetch.
"""
from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

from federation.errors import RemoteUnreachable
from protocol.ids import IdError, parse_server_name

log = logging.getLogger(__name__)

DEFAULT_PORT = 8448
MAX_REDIRECTS = 5
MAX_WELL_KNOWN_SIZE = 50 * 1024
CACHE_ENTRIES = 10_000

DEFAULT_TTL = 24 * 3600.0
MAX_TTL = 48 * 3600.0
MIN_TTL = 5 * 60.0
INVALID_TTL = 3600.0
ERROR_TTL_FIRST = 120.0
ERROR_TTL_MAX = 3600.0

SRV_FED = "_matrix-fed._tcp."
SRV_LEGACY = "_matrix._tcp."

#: ``http_get(url, *, timeout, max_size) -> (status, headers, body)``; no redirects followed;
#: raises on a transport failure or an oversize body.
HttpGet = Callable[..., tuple[int, Mapping[str, str], bytes]]
#: ``srv_lookup(name) -> [(priority, weight, port, target)]``; ``[]`` when there is none.
SrvLookup = Callable[[str], Sequence[tuple[int, int, int, str]]]


@dataclass(frozen=True)
class ResolvedServer:
    host: str              # hostname or IP address (IPv6 without brackets) to connect to
    port: int
    host_header: str       # the Host header to send
    tls_server_name: str   # the name (or IP) the certificate must be valid for; also SNI


class _Transient(Exception):
    """A well-known fetch failed in a way that may pass (network, 5xx, 429)."""


@dataclass
class _Entry:
    delegated: str | None     # the m.server value, None = no delegation
    expires_at: float
    failures: int = 0         # consecutive transient failures
    last_good: str | None = None  # a valid delegation seen before the current failure run


def _ip_literal(host: str) -> str | None:
    """The address of an IP-literal host (``1.2.3.4`` or ``[::1]``), else None."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return None


def cache_ttl(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds a response may be cached according to ``Cache-Control``/``Expires``; None if
    they say nothing.  ``no-store``/``no-cache`` count as 0."""
    cc = _header(headers, "cache-control")
    if cc:
        for part in cc.split(","):
            item = part.strip().lower()
            if item in ("no-store", "no-cache"):
                return 0.0
            if item.startswith("max-age="):
                try:
                    return max(0.0, float(int(item[8:].strip().strip('"'))))
                except ValueError:
                    continue
    exp = _header(headers, "expires")
    if exp:
        try:
            when = email.utils.parsedate_to_datetime(exp)
        except (TypeError, ValueError, IndexError):
            return 0.0  # an invalid Expires means "already expired" (RFC 9111 5.3)
        if when is None:
            return 0.0
        return max(0.0, when.timestamp() - now)
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    if v is None:
        for k, val in headers.items():
            if k.lower() == name:
                return val
    return v


def _pick_srv(records: Sequence[tuple[int, int, int, str]]) -> tuple[str, int] | None:
    """RFC 2782: lowest priority first, weighted random within it.  A single record with
    target ``.`` means the service is decidedly not available."""
    if not records:
        return None
    if len(records) == 1 and records[0][3].rstrip(".") == "":
        raise LookupError("SRV says the service is not available here")
    recs = [r for r in records if r[3].rstrip(".")]
    if not recs:
        return None
    best = min(r[0] for r in recs)
    group = [r for r in recs if r[0] == best]
    total = sum(max(0, r[1]) for r in group)
    if total <= 0:
        choice = group[0]
    else:
        x = random.uniform(0, total)
        acc = 0
        choice = group[-1]
        for r in group:
            acc += max(0, r[1])
            if x <= acc:
                choice = r
                break
    return choice[3].rstrip("."), int(choice[2])


class DnsSrvLookup:
    """The default SRV lookup: dnspython (cooperative under gevent once patched), answers
    cached for their TTL (at least 30 s, at most 1 h), bounded."""

    def __init__(self, *, timeout: float = 5.0, clock: Callable[[], float] = time.time,
                 max_entries: int = CACHE_ENTRIES) -> None:
        self.timeout = timeout
        self.clock = clock
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, list[tuple[int, int, int, str]]]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> list[tuple[int, int, int, str]]:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(name)
                return hit[1]
        import dns.exception  # noqa: PLC0415
        import dns.resolver  # noqa: PLC0415
        ttl = 300.0
        try:
            answer = dns.resolver.resolve(name, "SRV", lifetime=self.timeout)
            recs = [(int(r.priority), int(r.weight), int(r.port), r.target.to_text())
                    for r in answer]
            ttl = float(answer.rrset.ttl) if answer.rrset is not None else ttl
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            recs = []
        except dns.exception.DNSException as e:
            log.info("SRV lookup of %s failed: %s", name, e)
            return []  # not cached: try again next time
        with self._lock:
            self._cache[name] = (now + min(3600.0, max(30.0, ttl)), recs)
            self._cache.move_to_end(name)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return recs


class Resolver:
    def __init__(self, config: Any, *, http_get: HttpGet | None = None,
                 srv_lookup: SrvLookup | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.fc = getattr(config, "federation", config)
        self._config = config
        self._http_get = http_get
        self.srv_lookup: SrvLookup = srv_lookup or DnsSrvLookup(clock=clock)
        self.clock = clock
        self.timeout = float(getattr(self.fc, "query_timeout", 10.0))
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # -- public -------------------------------------------------------------------------

    def resolve(self, server_name: str) -> ResolvedServer:
        """Where to connect for ``server_name``; raises RemoteUnreachable for a server name
        that is not one, or whose SRV record says there is no service."""
        try:
            host, port = parse_server_name(server_name)
        except IdError as e:
            raise RemoteUnreachable(str(server_name), f"invalid server name: {e}") from None
        ip = _ip_literal(host)
        if ip is not None:                                   # step 1
            return ResolvedServer(ip, port or DEFAULT_PORT, server_name, ip)
        if port is not None:                                 # step 2
            return ResolvedServer(host, port, server_name, host)
        delegated = self.well_known(host)                    # step 3
        if delegated is not None:
            return self._resolve_delegated(server_name, delegated)
        return self._srv_or_default(server_name, host)      # steps 4-6

    def well_known(self, hostname: str) -> str | None:
        """The ``m.server`` delegation of ``hostname`` (cached), or None."""
        now = self.clock()
        with self._lock:
            entry = self._cache.get(hostname)
            if entry is not None and entry.expires_at > now:
                self._cache.move_to_end(hostname)
                return entry.delegated
            event = self._inflight.get(hostname)
            mine = event is None
            if mine:
                event = self._inflight[hostname] = threading.Event()
        if not mine:
            # another caller is fetching it: share its answer
            event.wait(self.timeout * (MAX_REDIRECTS + 1) + 1)
            with self._lock:
                done = self._cache.get(hostname)
            return done.delegated if done is not None else None
        try:
            return self._refresh(hostname, entry)
        finally:
            with self._lock:
                self._inflight.pop(hostname, None)
            event.set()

    def forget(self, hostname: str) -> None:
        """Drop the cached well-known answer of ``hostname`` (admin "reset connection")."""
        with self._lock:
            self._cache.pop(hostname, None)

    # -- steps ----------------------------------------------------------------------------

    def _resolve_delegated(self, server_name: str, delegated: str) -> ResolvedServer:
        host, port = parse_server_name(delegated)            # validated when cached
        ip = _ip_literal(host)
        if ip is not None:                                   # 3.1
            return ResolvedServer(ip, port or DEFAULT_PORT, delegated, ip)
        if port is not None:                                 # 3.2
            return ResolvedServer(host, port, delegated, host)
        return self._srv_or_default(server_name, host)      # 3.3-3.5

    def _srv_or_default(self, server_name: str, host: str) -> ResolvedServer:
        for prefix in (SRV_FED, SRV_LEGACY):
            try:
                records = self.srv_lookup(prefix + host)
                target = _pick_srv(records)
            except LookupError as e:
                raise RemoteUnreachable(server_name, f"{prefix}{host}: {e}") from None
            except Exception as e:  # noqa: BLE001 - a broken lookup is "no record"
                log.info("SRV lookup %s%s failed: %s", prefix, host, e)
                target = None
            if target is not None:
                return ResolvedServer(target[0], target[1], host, host)
        return ResolvedServer(host, DEFAULT_PORT, host, host)

    # -- well-known fetch and cache ---------------------------------------------------------

    def _refresh(self, hostname: str, old: _Entry | None) -> str | None:
        now = self.clock()
        try:
            delegated, ttl = self._fetch(hostname)
        except _Transient as e:
            failures = (old.failures if old is not None else 0) + 1
            backoff = min(ERROR_TTL_MAX, ERROR_TTL_FIRST * 2 ** (failures - 1))
            last_good = None
            if old is not None:
                last_good = old.delegated if old.failures == 0 else old.last_good
            log.info("well-known of %s failed (%s); again in %.0f s", hostname, e, backoff)
            self._store(hostname, _Entry(last_good, now + backoff, failures, last_good))
            return last_good
        self._store(hostname, _Entry(delegated, now + ttl))
        return delegated

    def _store(self, hostname: str, entry: _Entry) -> None:
        with self._lock:
            self._cache[hostname] = entry
            self._cache.move_to_end(hostname)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)

    def _get(self, url: str) -> tuple[int, Mapping[str, str], bytes]:
        if self._http_get is None:
            from federation.client import WellKnownFetcher  # noqa: PLC0415 - avoids a cycle
            self._http_get = WellKnownFetcher(self._config)
        return self._http_get(url, timeout=self.timeout, max_size=MAX_WELL_KNOWN_SIZE)

    def _fetch(self, hostname: str) -> tuple[str | None, float]:
        """(delegation or None, seconds to cache); raises _Transient."""
        url = f"https://{hostname}/.well-known/matrix/server"
        seen = {url}
        for _ in range(MAX_REDIRECTS + 1):
            try:
                status, headers, body = self._get(url)
            except Exception as e:  # noqa: BLE001 - any transport failure
                raise _Transient(f"{type(e).__name__}: {e}") from None
            if status in (301, 302, 303, 307, 308):
                loc = _header(headers, "location")
                if not loc:
                    return None, INVALID_TTL
                nxt = urljoin(url, loc)
                if urlsplit(nxt).scheme != "https" or nxt in seen:
                    log.info("well-known of %s: refusing redirect to %s", hostname, nxt)
                    return None, INVALID_TTL
                seen.add(nxt)
                url = nxt
                continue
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status}")
            if status != 200:
                return None, INVALID_TTL
            delegated = _parse_body(body)
            if delegated is None:
                return None, INVALID_TTL
            ttl = cache_ttl(headers, self.clock())
            ttl = DEFAULT_TTL if ttl is None else ttl
            return delegated, min(MAX_TTL, max(MIN_TTL, ttl))
        log.info("well-known of %s: too many redirects", hostname)
        return None, INVALID_TTL


def _parse_body(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    server = obj.get("m.server")
    if not isinstance(server, str):
        return None
    try:
        parse_server_name(server)
    except IdError:
        return None
    return server
