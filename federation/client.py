"""The outbound federation HTTPS client: signed requests to other homeservers.

Owns: ``federation_domain_whitelist`` on destinations, fail-fast while a destination backs
off, server discovery (``federation.discovery``), resolving the target host to addresses and
checking each against ``federation_ip_range_blacklist`` *before* connecting, TLS (SNI and
certificate checked for the server name or delegated name, never the SRV target;
``federation_verify_certificates``, ``federation_certificate_verification_whitelist``,
``federation_custom_ca_list``), pooled keep-alive connections (one ``requests.Session`` per
destination, bounded LRU), connect and whole-request timeouts, bounded response bodies, and
the mapping of every failure to ``federation.errors``.

Spec: server-server-api.md "Resolving server names" (Host header, certificate name),
"Request Authentication" (the ``X-Matrix`` header: ``protocol.xmatrix``), "TLS".

Safe for many greenlets (or threads) at once: sessions are shared, urllib3's pools are
thread-safe, the LRU is behind a lock that is never held across I/O.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager

from federation.discovery import ResolvedServer, Resolver, _ip_literal
from federation.errors import (BadResponse, FederationError, Forbidden, NotRetrying,
                               RemoteHTTPError, RemoteUnreachable)
from federation.ipfilter import IpFilter
from protocol.xmatrix import sign_request

log = logging.getLogger(__name__)

USER_AGENT = "Atrium"
MAX_SESSIONS = 256          # destinations with a pooled session at once
POOL_MAXSIZE = 10           # idle keep-alive connections kept per address
ADDRESS_TTL = 120.0         # s a destination's resolution (discovery + DNS) is reused
MAX_ADDRESSES_TRIED = 3     # addresses tried in turn when connecting fails
ERROR_BODY_LIMIT = 64 * 1024


def _gevent_timer(seconds: float) -> Any:
    """A gevent.Timeout bounding the whole request when the process is monkey-patched
    (a plain thread cannot be interrupted; there the read timeout and the deadline checks
    between body chunks bound it)."""
    try:
        from gevent import monkey  # noqa: PLC0415
        if not monkey.is_module_patched("socket"):
            return None
        import gevent  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    return gevent.Timeout(seconds)


def _connect_failed(e: requests.RequestException) -> bool:
    """Whether ``e`` happened before anything was sent (so another address may be tried)."""
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(reason, (urllib3.exceptions.NewConnectionError,
                               urllib3.exceptions.ConnectTimeoutError))


class _PinnedAdapter(HTTPAdapter):
    """Connects wherever the URL says (a resolved address) but does TLS for
    ``tls_server_name``: SNI and the certificate check use it; requests' own ``verify``
    plumbing is bypassed so the settings here are the only ones."""

    def __init__(self, ssl_context: ssl.SSLContext, tls_server_name: str,
                 verify: bool) -> None:
        sni = tls_server_name
        self._tls: dict[str, Any] = {
            "ssl_context": ssl_context,
            "server_hostname": sni,
            "assert_hostname": tls_server_name if verify else False,
            "cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE",
        }
        super().__init__(pool_connections=4, pool_maxsize=POOL_MAXSIZE, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = PoolManager(num_pools=connections, maxsize=maxsize, block=block,
                                       **self._tls)

    def get_connection_with_tls_context(self, request: Any, verify: Any,
                                        proxies: Any = None, cert: Any = None) -> Any:
        return self.poolmanager.connection_from_url(request.url)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        return None


class Transport:
    """Connect-level policy shared by the client and the well-known fetch: the IP filter,
    whether to verify a name's certificate, the TLS contexts, and one bounded exchange."""

    def __init__(self, config: Any) -> None:
        fc = getattr(config, "federation", config)
        self.fc = fc
        self.ipfilter = IpFilter(fc.ip_range_blacklist, fc.ip_range_whitelist)
        self._verified_ctx: ssl.SSLContext | None = None
        self._unverified_ctx: ssl.SSLContext | None = None
        self._ctx_lock = threading.Lock()
        if not fc.verify_certificates or fc.certificate_verification_whitelist:
            # an operator's explicit choice: say it once, not per request
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            if not fc.verify_certificates:
                log.warning("federation: TLS certificates of other servers are NOT verified "
                            "(federation_verify_certificates: false)")

    # -- TLS ------------------------------------------------------------------------------

    def should_verify(self, *names: str) -> bool:
        if not self.fc.verify_certificates:
            return False
        globs = self.fc.certificate_verification_whitelist
        for name in names:
            if not name:
                continue
            candidates = {name.lower()}
            if not name.startswith("[") and name.count(":") == 1:
                candidates.add(name.split(":", 1)[0].lower())
            if any(fnmatch.fnmatchcase(c, g.lower()) for c in candidates for g in globs):
                return False
        return True

    def context(self, verify: bool) -> ssl.SSLContext:
        with self._ctx_lock:
            if verify:
                if self._verified_ctx is None:
                    self._verified_ctx = self._build_verified()
                return self._verified_ctx
            if self._unverified_ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self._unverified_ctx = ctx
            return self._unverified_ctx

    def _build_verified(self) -> ssl.SSLContext:
        if self.fc.custom_ca_list:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            for path in self.fc.custom_ca_list:
                ctx.load_verify_locations(cafile=path)
        else:
            ctx = ssl.create_default_context()
            try:
                import certifi  # noqa: PLC0415
                ctx.load_verify_locations(cafile=certifi.where())
            except (ImportError, OSError):
                pass
        ctx.check_hostname = False   # urllib3 matches the name itself (assert_hostname)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def adapter(self, tls_server_name: str, verify: bool) -> _PinnedAdapter:
        return _PinnedAdapter(self.context(verify), tls_server_name, verify)

    # -- addresses ------------------------------------------------------------------------

    def addresses(self, destination: str, host: str, port: int) -> list[str]:
        """The allowed addresses of ``host``; RemoteUnreachable when it does not resolve or
        every address is blacklisted."""
        ip = _ip_literal(host)
        if ip is not None:
            found = [ip]
        else:
            try:
                infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except (OSError, UnicodeError) as e:
                raise RemoteUnreachable(destination, f"cannot resolve {host}: {e}") from None
            found = []
            for info in infos:
                addr = str(info[4][0])
                if addr not in found:
                    found.append(addr)
        allowed = [a for a in found if self.ipfilter.allowed(a)]
        if not allowed:
            raise RemoteUnreachable(destination, f"{host} resolves only to blacklisted or no "
                                    f"addresses ({', '.join(found) or 'none'})")
        return allowed

    # -- one exchange -----------------------------------------------------------------------

    def exchange(self, session: requests.Session, destination: str, method: str,
                 addresses: list[str], port: int, target: str, headers: dict[str, str],
                 data: bytes | None, *, timeout: float, max_size: int
                 ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one request to the first address that accepts a connection; the body is
        read whole, at most ``max_size`` bytes.  Raises RemoteUnreachable / BadResponse."""
        deadline = time.monotonic() + timeout
        connect = min(float(self.fc.connect_timeout), timeout)
        timer = _gevent_timer(timeout)
        if timer is not None:
            timer.start()
        try:
            last: Exception | None = None
            for addr in addresses[:MAX_ADDRESSES_TRIED]:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                url = f"https://{netloc}{target}"
                try:
                    return self._once(session, destination, method, url, headers, data,
                                      (min(connect, remaining), remaining), deadline,
                                      max_size)
                except requests.RequestException as e:
                    if _connect_failed(e):
                        last = e
                        continue
                    raise RemoteUnreachable(destination, _describe(e)) from None
            if last is None:
                raise RemoteUnreachable(destination, "timed out")
            raise RemoteUnreachable(destination, _describe(last)) from None
        except BaseException as e:
            if timer is not None and e is timer:
                raise RemoteUnreachable(destination, f"no answer within {timeout:g} s") \
                    from None
            raise
        finally:
            if timer is not None:
                timer.close()

    def _once(self, session: requests.Session, destination: str, method: str, url: str,
              headers: dict[str, str], data: bytes | None, timeouts: tuple[float, float],
              deadline: float, max_size: int) -> tuple[int, Mapping[str, str], bytes]:
        prep = session.prepare_request(requests.Request(method, url, headers=headers,
                                                        data=data))
        prep.url = url   # exactly as signed: no re-quoting by requests
        resp = session.send(prep, timeout=timeouts, stream=True, allow_redirects=False)
        try:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_size:
                raise BadResponse(destination, f"response of {length} bytes is over the "
                                  f"{max_size} byte limit")
            body = bytearray()
            try:
                for chunk in resp.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > max_size:
                        raise BadResponse(destination, f"response over the {max_size} byte "
                                          "limit")
                    if time.monotonic() > deadline:
                        raise RemoteUnreachable(destination, "response body too slow")
            except requests.exceptions.ContentDecodingError as e:
                raise BadResponse(destination, f"undecodable body: {e}") from None
            return resp.status_code, resp.headers, bytes(body)
        finally:
            resp.close()


def _describe(e: Exception) -> str:
    if isinstance(e, requests.exceptions.SSLError):
        return f"TLS failed: {_root(e)}"
    if isinstance(e, requests.exceptions.Timeout):
        return f"timed out: {_root(e)}"
    if isinstance(e, requests.exceptions.ConnectionError):
        return f"connection failed: {_root(e)}"
    return f"{type(e).__name__}: {_root(e)}"


def _root(e: BaseException) -> str:
    seen = 0
    while seen < 5:
        nxt = getattr(e.args[0], "reason", None) if e.args else None
        if not isinstance(nxt, BaseException):
            break
        e = nxt
        seen += 1
    return str(e)[:300]


class WellKnownFetcher:
    """The default ``http_get`` of the Resolver: one GET over the same Transport policy
    (IP blacklist, certificate verification), no redirects followed here."""

    def __init__(self, config: Any, transport: Transport | None = None) -> None:
        self.transport = transport or Transport(config)

    def __call__(self, url: str, *, timeout: float, max_size: int
                 ) -> tuple[int, Mapping[str, str], bytes]:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise RemoteUnreachable(url, "only https URLs are fetched")
        host = parts.hostname
        port = parts.port or 443
        ip = _ip_literal(host)
        tls_name = ip or host
        bracketed = f"[{host}]" if ip and ":" in ip else host
        host_header = bracketed if port == 443 else f"{bracketed}:{port}"
        addresses = self.transport.addresses(host, host, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        with requests.Session() as session:
            session.trust_env = False
            session.mount("https://", self.transport.adapter(
                tls_name, self.transport.should_verify(host)))
            return self.transport.exchange(
                session, host, "GET", addresses, port, target,
                {"Host": host_header, "User-Agent": USER_AGENT, "Accept": "application/json"},
                None, timeout=timeout, max_size=max_size)


@dataclass
class _Dest:
    session: requests.Session
    resolved: ResolvedServer
    addresses: list[str]
    expires_at: float


class FederationClient:
    """See docs/federation.md "Contracts between the parts"."""

    def __init__(self, config: Any, signing_key: Any, *, resolver: Resolver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.fc = config.federation
        self.server_name: str = config.server_name
        self.signing_key = signing_key
        self.transport = Transport(config)
        self.resolver = resolver or Resolver(config,
                                             http_get=WellKnownFetcher(config, self.transport))
        self.clock = clock
        self.backing_off: Callable[[str], int | None] = lambda d: None
        self._dests: OrderedDict[str, _Dest] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    # -- the contract -----------------------------------------------------------------------

    def request(self, method: str, destination: str, path: str, *,
                query: Mapping[str, Any] | None = None, body: Any = None,
                signed: bool = True, timeout: float | None = None, fail_fast: bool = True,
                max_size: int | None = None) -> Any:
        """The parsed JSON of a 2xx answer; raises ``federation.errors.*``."""
        status, headers, raw = self._call(method, destination, path, query, body, signed,
                                          timeout, fail_fast, max_size)
        if not 200 <= status < 300:
            raise _http_error(destination, status, raw)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadResponse(destination, f"HTTP {status} answer is not JSON") from None

    def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        return self.request("GET", destination, path, **kw)

    def put_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", destination, path, body=body, **kw)

    def post_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", destination, path, body=body, **kw)

    def get_raw(self, destination: str, path: str, *, query: Mapping[str, Any] | None = None,
                signed: bool = True, timeout: float | None = None, fail_fast: bool = True,
                max_size: int | None = None) -> tuple[int, Mapping[str, str], bytes]:
        """``(status, headers, body)`` of a GET whatever its status (redirects not followed);
        the body is bounded by ``max_size`` (default ``max_response_size``)."""
        return self._call("GET", destination, path, query, None, signed, timeout, fail_fast,
                          max_size)

    def reset(self, destination: str) -> None:
        """Forget ``destination``'s pooled connections, resolution and well-known answer."""
        with self._lock:
            d = self._dests.pop(destination, None)
        if d is not None:
            d.session.close()
        try:
            host = destination.rsplit(":", 1)[0] if not destination.startswith("[") \
                else destination
            self.resolver.forget(host)
        except AttributeError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            dests = list(self._dests.values())
            self._dests.clear()
        for d in dests:
            d.session.close()

    # -- internals --------------------------------------------------------------------------

    def _call(self, method: str, destination: str, path: str, query: Any, body: Any,
              signed: bool, timeout: float | None, fail_fast: bool, max_size: int | None
              ) -> tuple[int, Mapping[str, str], bytes]:
        if self._closed:
            raise RemoteUnreachable(destination, "client is closed")
        wl = self.fc.domain_whitelist
        if wl is not None and destination not in wl:
            raise Forbidden(destination, "not in federation_domain_whitelist")
        if fail_fast:
            retry_at = self.backing_off(destination)
            if retry_at is not None and retry_at > int(self.clock() * 1000):
                raise NotRetrying(destination, int(retry_at))
        if not path.startswith("/"):
            raise ValueError(f"federation path must start with '/': {path!r}")
        target = path + ("?" + urlencode(_query_pairs(query)) if query else "")
        total = float(self.fc.request_timeout if timeout is None else timeout)
        limit = int(self.fc.max_response_size if max_size is None else max_size)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if signed:
            headers["Authorization"] = sign_request(self.signing_key, method, target,
                                                    self.server_name, destination, body)
        dest = self._dest(destination)
        headers["Host"] = dest.resolved.host_header
        try:
            return self.transport.exchange(dest.session, destination, method, dest.addresses,
                                           dest.resolved.port, target, headers, data,
                                           timeout=total, max_size=limit)
        except RemoteUnreachable:
            self._drop(destination, dest)  # resolve afresh next time
            raise

    def _dest(self, destination: str) -> _Dest:
        now = time.monotonic()
        with self._lock:
            d = self._dests.get(destination)
            if d is not None and d.expires_at > now:
                self._dests.move_to_end(destination)
                return d
        try:
            resolved = self.resolver.resolve(destination)
        except FederationError:
            raise
        except Exception as e:  # noqa: BLE001 - discovery must not leak other errors
            raise RemoteUnreachable(destination, f"discovery failed: {e}") from None
        addresses = self.transport.addresses(destination, resolved.host, resolved.port)
        if d is not None and d.resolved == resolved:
            session = d.session   # same TLS settings: keep the pooled connections
        else:
            session = self._new_session(destination, resolved)
        fresh = _Dest(session, resolved, addresses, now + ADDRESS_TTL)
        evicted: list[_Dest] = []
        with self._lock:
            old = self._dests.get(destination)
            self._dests[destination] = fresh
            self._dests.move_to_end(destination)
            if old is not None and old.session is not session:
                evicted.append(old)
            while len(self._dests) > MAX_SESSIONS:
                evicted.append(self._dests.popitem(last=False)[1])
        for e in evicted:
            e.session.close()
        return fresh

    def _new_session(self, destination: str, resolved: ResolvedServer) -> requests.Session:
        s = requests.Session()
        s.trust_env = False    # no proxies or .netrc from the environment
        verify = self.transport.should_verify(destination, resolved.tls_server_name)
        s.mount("https://", self.transport.adapter(resolved.tls_server_name, verify))
        return s

    def _drop(self, destination: str, dest: _Dest) -> None:
        with self._lock:
            if self._dests.get(destination) is dest:
                del self._dests[destination]
            else:
                return
        dest.session.close()


def _query_pairs(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for k, v in query.items():
        if isinstance(v, (list, tuple)):
            pairs.extend((k, str(x)) for x in v)
        elif v is not None:
            pairs.append((k, str(v)))
    return pairs


def _http_error(destination: str, status: int, raw: bytes) -> RemoteHTTPError:
    body: Any = None
    errcode = error = None
    try:
        body = json.loads(raw[:ERROR_BODY_LIMIT]) if raw else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        ec, er = body.get("errcode"), body.get("error")
        errcode = ec if isinstance(ec, str) else None
        error = er if isinstance(er, str) else None
    return RemoteHTTPError(destination, status, errcode, error, body)
