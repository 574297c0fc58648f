"""Where the server listens and how a client is seen through a reverse proxy.

Owns three answers, used by ``gunicorn.conf.py`` (what to bind), by the default config and
the CLI (the URL this server is reached at) and by the app (the client's address):

* Synapse's ``listeners`` block (``type: http`` or ``metrics``, ``port``,
  ``bind_addresses``, ``path``, ``tls``, ``x_forwarded``, ``resources``) parsed into
  :class:`Listener`;
* ``ATRIUM_BIND`` (``host:port``, ``[v6]:port``, a port alone = ``127.0.0.1:port``,
  ``unix:/path``; several separated by commas), which overrides the listeners' addresses;
* :class:`ForwardedFor`, the WSGI layer that, on a listener with ``x_forwarded: true``, takes
  the client's address from ``X-Forwarded-For`` when the request comes from a proxy that may
  be trusted (loopback, private networks, the listener's ``trusted_proxies``): its hops are
  read from the right and skipped while ``trusted_proxies`` lists them (chained proxies, a
  CDN); the first other hop is the client.  A request that does not come
  from a trusted proxy keeps its own address, so a client cannot choose the address it is
  rate-limited by.  (Synapse trusts the leftmost entry unconditionally.)
* which paths each listener serves (:meth:`Listener.paths`, Synapse's resource names); the
  WSGI layer that enforces it is in ``atrium/listener_resources.py``.

Only the standard library is imported here: ``gunicorn.conf.py`` imports this module in the
arbiter, before gevent patches anything.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

DEFAULT_BIND = "127.0.0.1:8008"
#: Synapse's addresses for a listener without ``bind_addresses``: every interface
SYNAPSE_DEFAULT_ADDRESSES = ("::", "0.0.0.0")
LISTENER_KEYS = {"port", "bind_addresses", "bind_address", "type", "tls", "x_forwarded",
                 "resources", "path", "mode", "tag", "request_id_header",
                 "additional_resources", "trusted_proxies"}
#: Synapse's resource names → the path prefixes they serve (its homeserver.py: ``client``
#: also serves the admin API, /.well-known and media; ``federation`` keys and media too);
#: Atrium's own /_atrium/* (admin API, console) goes with ``client``.  Names whose paths
#: Atrium does not serve are accepted and named in a warning.
RESOURCE_PATHS: dict[str, tuple[str, ...]] = {
    "client": ("/_matrix/client", "/_synapse/client", "/_synapse/admin", "/_atrium/",
               "/.well-known/", "/_matrix/media"),
    "federation": ("/_matrix/federation", "/_matrix/key", "/_matrix/media",
                   "/.well-known/matrix/server"),
    "media": ("/_matrix/media", "/_matrix/client/v1/media/", "/_matrix/federation/v1/media/"),
    "keys": ("/_matrix/key",),
    "openid": ("/_matrix/federation/v1/openid/",),
    "metrics": ("/_synapse/metrics",),
    "health": (),
    "consent": (), "replication": (), "static": (),
}
RESOURCES = set(RESOURCE_PATHS)
#: accepted, but nothing of theirs is served
UNSERVED_RESOURCES = ("consent", "replication", "static")
#: on every listener, as Synapse
ALWAYS_SERVED = ("/health",)
#: what a ``type: metrics`` listener serves
METRICS_PATHS = ("/_synapse/metrics", "/health")


class BindError(ValueError):
    """``ATRIUM_BIND`` is not an address; ``str()`` is one line."""


@dataclass(frozen=True)
class Listener:
    """One ``type: http`` or ``type: metrics`` entry of ``listeners``."""

    port: int | None                        # None for a unix socket
    bind_addresses: tuple[str, ...] = ()
    path: str | None = None                 # unix socket
    tls: bool = False
    x_forwarded: bool = False
    #: Synapse's resource names; None (no ``resources`` key): every resource
    resources: tuple[str, ...] | None = None
    trusted_proxies: tuple[str, ...] = ()
    kind: str = "http"                      # or "metrics"

    def binds(self) -> list[str]:
        """gunicorn ``bind`` strings."""
        if self.path is not None:
            return [f"unix:{self.path}"]
        return [_hostport(a, self.port or 0) for a in _collapse(self.bind_addresses)]

    def paths(self) -> tuple[str, ...] | None:
        """The path prefixes served here; None for everything."""
        if self.kind == "metrics":
            return METRICS_PATHS
        if self.resources is None:
            return None
        out = dict.fromkeys(ALWAYS_SERVED)
        for name in self.resources:
            out.update(dict.fromkeys(RESOURCE_PATHS[name]))
        return tuple(out)

    @property
    def serves_client(self) -> bool:
        return self.kind == "http" and (self.resources is None or "client" in self.resources)


# --------------------------------------------------------------------------- parsing

def parse_listeners(value: Any, error: Callable[[str], Exception],
                    warn: Callable[[str], None], *, has_certificate: bool = True,
                    enable_metrics: bool | None = None) -> tuple[Listener, ...]:
    """Synapse's ``listeners`` list → the http and metrics listeners; other types are named
    in a warning (they are not served); a bad entry raises ``error`` naming
    ``listeners[i].key``.  With ``enable_metrics`` false a metrics listener is left out with
    a warning, as Synapse does (None: not known here, kept)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise error("config key 'listeners' must be a list of listener mappings")
    out: list[Listener] = []
    bound: dict[str, str] = {}
    for i, entry in enumerate(value):
        key = f"listeners[{i}]"
        if not isinstance(entry, dict):
            raise error(f"config key '{key}' must be a mapping with port and type")
        kind = entry.get("type")
        if kind not in ("http", "metrics", "manhole", "replication"):
            raise error(f"config key '{key}.type' must be http or metrics (got {kind!r})")
        if kind not in ("http", "metrics"):
            warn(f"config: {key} (type {kind}) is not served: Atrium has http and metrics "
                 "listeners only")
            continue
        lst = _one_listener(entry, key, kind, error, warn)
        if kind == "metrics" and enable_metrics is False:
            warn(f"config: {key} (type metrics) is not bound: enable_metrics is false "
                 "(as Synapse)")
            continue
        if (kind == "http" and enable_metrics is False and lst.resources
                and "metrics" in lst.resources):
            warn(f"config: {key}.resources names metrics but enable_metrics is false: "
                 "/_synapse/metrics answers 404 there")
        for b in lst.binds():
            if b in bound:
                raise error(f"config key '{key}' listens on {b}, as {bound[b]} does")
            bound[b] = key
        out.append(lst)
    if value and not any(lst.kind == "http" for lst in out):
        raise error("config key 'listeners' has no listener of type http")
    if any(lst.tls for lst in out) and not has_certificate:
        raise error("config key 'listeners': a listener has tls: true but "
                    "tls_certificate_path and tls_private_key_path are not set")
    if len({lst.tls for lst in out}) > 1:
        warn("config: TLS applies to every listener (gunicorn has one certificate setting "
             "for all its sockets), also to those without tls: true")
    if enable_metrics and out and not any(
            lst.kind == "metrics" or lst.resources is None or "metrics" in lst.resources
            for lst in out):
        warn("config: enable_metrics is true but no listener serves metrics: add metrics to "
             "a listener's resources, or a listener of type metrics (docs/metrics.md)")
    return tuple(out)


def _one_listener(entry: dict, key: str, kind: str, error: Callable[[str], Exception],
                  warn: Callable[[str], None]) -> Listener:
    unknown = sorted(set(map(str, entry)) - LISTENER_KEYS)
    if unknown:
        raise error(f"config key '{key}' has unknown fields: {', '.join(unknown)}")
    unused = sorted(k for k in ("tag", "request_id_header", "additional_resources", "mode")
                    if k in entry)
    if unused:
        warn(f"config: {key}: {', '.join(unused)} not implemented (ignored)")
    port, path = entry.get("port"), entry.get("path")
    if path is not None:
        if not isinstance(path, str) or not path or port is not None:
            raise error(f"config key '{key}.path' must be a socket file path, "
                        "without a port")
    elif isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise error(f"config key '{key}.port' must be a port number 1-65535 "
                    f"(got {port!r})")
    addrs = entry.get("bind_addresses")
    if addrs is None:
        addrs = []
    if not isinstance(addrs, list) or not all(isinstance(a, str) and a for a in addrs):
        raise error(f"config key '{key}.bind_addresses' must be a list of addresses")
    if isinstance(entry.get("bind_address"), str):
        addrs = [*addrs, entry["bind_address"]]
    for a in addrs:
        if not _valid_host(a):
            raise error(f"config key '{key}.bind_addresses' holds {a!r}, which is not "
                        "an IP address or host name")
    flags = {}
    for flag in ("tls", "x_forwarded"):
        v = entry.get(flag, flag == "x_forwarded" and path is not None)
        if not isinstance(v, bool):
            raise error(f"config key '{key}.{flag}' must be true or false (got {v!r})")
        flags[flag] = v
    names = _resource_names(entry.get("resources"), key, error)
    if kind == "metrics":
        if names is not None:
            warn(f"config: {key}.resources ignored: a metrics listener serves "
                 "/_synapse/metrics and /health")
        names = None
    elif names is not None:
        unserved = [n for n in UNSERVED_RESOURCES if n in names]
        if not names:
            warn(f"config: {key}.resources names nothing: only /health is served there")
        elif unserved:
            warn(f"config: {key}.resources: Atrium serves nothing for {', '.join(unserved)}")
    trusted = entry.get("trusted_proxies") or []
    if not isinstance(trusted, list):
        raise error(f"config key '{key}.trusted_proxies' must be a list of networks")
    for net in trusted:
        try:
            ipaddress.ip_network(str(net), strict=False)
        except ValueError:
            raise error(f"config key '{key}.trusted_proxies' holds {net!r}, which is "
                        "not an IP address or network") from None
    return Listener(port=None if path is not None else port,
                    bind_addresses=tuple(addrs or SYNAPSE_DEFAULT_ADDRESSES),
                    path=path, tls=flags["tls"], x_forwarded=flags["x_forwarded"],
                    resources=None if names is None else tuple(dict.fromkeys(names)),
                    trusted_proxies=tuple(str(n) for n in trusted), kind=kind)


def _resource_names(value: Any, key: str, error: Callable[[str], Exception],
                    ) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise error(f"config key '{key}.resources' must be a list of {{names: [...]}} "
                    "mappings")
    names: list[str] = []
    for r in value:
        n = r.get("names") or []
        if not isinstance(n, list) or not all(isinstance(x, str) and x in RESOURCES
                                              for x in n):
            raise error(f"config key '{key}.resources' names must be among "
                        f"{', '.join(sorted(RESOURCES))} (got {n!r})")
        names.extend(n)
    return names


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,253})$")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def parse_bind(value: str) -> list[str]:
    """``ATRIUM_BIND`` → gunicorn ``bind`` strings, or :class:`BindError`."""
    out = []
    for part in (p.strip() for p in value.split(",")):
        out.append(_one_bind(part, value))
    if not out:
        raise BindError(_bind_message(value))
    return out


def _one_bind(part: str, whole: str) -> str:
    if part.startswith("unix:"):
        if len(part) > 5 and not part[5:].startswith(":"):
            return part
        raise BindError(_bind_message(whole))
    if part.isdigit():
        return f"127.0.0.1:{_port(part, whole)}"
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", part)
    if m:
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            raise BindError(_bind_message(whole)) from None
        return f"[{m.group(1)}]:{_port(m.group(2), whole)}"
    host, sep, port = part.rpartition(":")
    if sep and port.isdigit() and host and ":" not in host and _valid_host(host):
        return f"{host}:{_port(port, whole)}"
    raise BindError(_bind_message(whole))


def _port(text: str, whole: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise BindError(_bind_message(whole))
    return port


def _bind_message(value: str) -> str:
    return ("ATRIUM_BIND must be host:port, [IPv6]:port, a port alone (= 127.0.0.1:port) or "
            f"unix:/path, several separated by commas (got {value!r})")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dual_stack() -> bool:
    try:
        with open("/proc/sys/net/ipv6/bindv6only", encoding="ascii") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def _collapse(addresses: Iterable[str]) -> list[str]:
    """Synapse binds both ``::`` and ``0.0.0.0``; on a dual-stack system ``::`` already takes
    IPv4 too, and a second bind of the port would fail."""
    addrs = list(dict.fromkeys(addresses))
    if "::" in addrs and "0.0.0.0" in addrs and _dual_stack():
        addrs.remove("0.0.0.0")
    return addrs


# --------------------------------------------------------------------------- answers

def bind_addresses(listeners: tuple[Listener, ...], environ: dict[str, str] | None = None,
                   ) -> list[str]:
    """What gunicorn binds: ``ATRIUM_BIND`` if set, else the listeners', else 127.0.0.1:8008."""
    env = os.environ if environ is None else environ
    if env.get("ATRIUM_BIND"):
        return parse_bind(env["ATRIUM_BIND"])
    binds = [b for lst in listeners for b in lst.binds()]
    return binds or [DEFAULT_BIND]


def local_url(binds: list[str], tls: bool = False) -> str | None:
    """The URL a client on this machine reaches the first TCP address at (a wildcard address
    is reached on loopback); None when only unix sockets are bound."""
    for b in binds:
        if b.startswith("unix:"):
            continue
        host, _, port = b.rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "127.0.0.1" if _dual_stack() else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if tls else 'http'}://{host}:{port}"
    return None


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_url(public_baseurl: str | None, listeners: tuple[Listener, ...], tls: bool,
               environ: dict[str, str] | None = None) -> str:
    """Where the CLI reaches the server: the address ``ATRIUM_BIND`` binds; else
    ``public_baseurl`` when it is on this machine (loopback, or one of the addresses of a
    listener serving the client API); else such a listener's first address; else
    http://127.0.0.1:8008."""
    env = os.environ if environ is None else environ
    if env.get("ATRIUM_BIND"):
        url = local_url(parse_bind(env["ATRIUM_BIND"]), tls)
        if url:
            return url
    binds = [b for lst in listeners if lst.serves_client for b in lst.binds()]
    if public_baseurl:
        parts = urlsplit(public_baseurl)
        bound = {b.replace("[", "").replace("]", "") for b in binds}
        here = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        if is_loopback_url(public_baseurl) or here in bound:
            return public_baseurl.rstrip("/")
    return local_url(binds, tls) or local_url([DEFAULT_BIND], tls) or ""


# --------------------------------------------------------------------------- reverse proxy

_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10"))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """One X-Forwarded-For entry (may carry a port, or brackets) → an address, or None."""
    s = text.strip().strip('"')
    if s.startswith("["):
        s = s[1:].split("]", 1)[0]
    elif s.count(":") == 1:
        s = s.split(":", 1)[0]
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


class ForwardedFor:
    """WSGI layer (outermost): on the listeners with ``x_forwarded: true``, a request from a
    trusted proxy gets ``REMOTE_ADDR`` from ``X-Forwarded-For`` (and ``wsgi.url_scheme`` from
    ``X-Forwarded-Proto``); the proxy's own address is kept in ``atrium.proxy_addr``.

    ``ports`` limits it to requests that arrived on those listener ports (gunicorn's
    ``SERVER_PORT`` is the listening socket's); None means every listener."""

    def __init__(self, wsgi: Any, trusted: Iterable[str] = (),
                 ports: frozenset[str] | None = None) -> None:
        self.wsgi = wsgi
        self.listed = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self.networks = _PRIVATE + self.listed
        self.ports = ports

    def trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """The peer that connected may be a proxy: loopback, private or listed."""
        return any(addr in net for net in self.networks if net.version == addr.version)

    def trusted_hop(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """A hop inside ``X-Forwarded-For`` is a proxy only when ``trusted_proxies`` lists it:
        a client on the proxy's own network could otherwise name any address it likes."""
        return any(addr in net for net in self.listed if net.version == addr.version)

    def client(self, peer: str, header: str) -> str | None:
        """The client's address for a request from ``peer`` with this X-Forwarded-For, or
        None to keep the peer's."""
        p = _address(peer) if peer else None
        if peer and (p is None or not self.trusted(p)):
            return None  # not from a proxy we trust (an empty peer is a unix socket)
        client = None
        for hop in reversed(header.split(",")):
            a = _address(hop)
            if a is None:
                break  # garbage: keep the hop that reported it
            client = str(a)
            if not self.trusted_hop(a):
                break
        return client

    def __call__(self, environ: dict, start_response: Any) -> Any:
        header = environ.get("HTTP_X_FORWARDED_FOR")
        if header and (self.ports is None or environ.get("SERVER_PORT") in self.ports):
            peer = environ.get("REMOTE_ADDR") or ""
            client = self.client(peer, header)
            if client is not None:
                environ["atrium.proxy_addr"] = peer
                environ["REMOTE_ADDR"] = client
                proto = (environ.get("HTTP_X_FORWARDED_PROTO") or "").strip().lower()
                if proto in ("http", "https"):
                    environ["wsgi.url_scheme"] = proto
        return self.wsgi(environ, start_response)


def forwarded_for_layer(listeners: tuple[Listener, ...],
                        environ: dict[str, str] | None = None,
                        ) -> Callable[[Any], ForwardedFor] | None:
    """A wrapper installing :class:`ForwardedFor` when a listener has ``x_forwarded: true``;
    None otherwise (then ``X-Forwarded-For`` is ignored: a client cannot spoof its address).
    With ``ATRIUM_BIND`` the listeners' ports no longer apply, so it covers every socket."""
    env = os.environ if environ is None else environ
    proxied = [lst for lst in listeners if lst.x_forwarded]
    if not proxied:
        return None
    trusted = [n for lst in proxied for n in lst.trusted_proxies]
    if env.get("ATRIUM_BIND") or any(lst.path is not None for lst in proxied):
        ports = None
    else:
        ports = frozenset(str(lst.port) for lst in proxied)
    return lambda wsgi: ForwardedFor(wsgi, trusted, ports)

