"""Per-listener resources: a request for a path outside the resources of the listener it
arrived on answers 404 ``M_UNRECOGNIZED``, as a path no route serves does.

Synapse's ``resources`` names (``client``, ``federation``, ``media``, ``keys``, ``openid``,
``metrics``, ``health``, ...) map to path prefixes in :data:`atrium.listeners.RESOURCE_PATHS`;
a ``type: metrics`` listener serves /_synapse/metrics and /health.  The listener is found
from the accepted socket gunicorn hands the app (``environ["gunicorn.socket"]``): its own
address gives the listener's port (or unix socket path) — never the Host header, which the
client writes.  Per request: one ``getsockname()``, one dict lookup, one prefix check.

Standard library only, like atrium/listeners.py.
"""
from __future__ import annotations

import ipaddress
import os
import time
from typing import Any, Callable, Iterable

from atrium.listeners import Listener


#: what every unknown path answers (web/errors.py): the spec's unknown-endpoint error
UNRECOGNIZED = b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}\n'
_BY_ADDRESS = object()  # several listeners share the port: told apart by address


def _ip(text: str) -> str:
    """An address as compared here: canonical, an IPv4-mapped IPv6 address as IPv4."""
    try:
        a = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


def _common(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if a is None or b is None:
        return b if a is None else a
    return tuple(p for p in a if p in b)


class ListenerRoutes:
    """The path prefixes served behind an accepted socket, by the socket's local address:
    one dict from the port (or unix socket path) to a listener's prefixes; None means every
    path (a socket no listener describes, e.g. gunicorn's own ``-b``).  Listeners sharing a
    port (each on its own address) are told apart by address; an address none of them names
    gets what they all serve."""

    def __init__(self, listeners: Iterable[Listener]) -> None:
        import socket

        ports: dict[Any, list[tuple[str, tuple[str, ...] | None]]] = {}
        for lst in listeners:
            if lst.path is not None:
                ports.setdefault(lst.path, []).append(("", lst.paths()))
                ports.setdefault(os.path.abspath(lst.path), []).append(("", lst.paths()))
            else:
                for a in lst.bind_addresses:
                    ports.setdefault(lst.port, []).append((a, lst.paths()))
        self.table: dict[Any, Any] = {}
        self.by_address: dict[tuple[str, int], tuple[str, ...] | None] = {}
        self.fallback: dict[int, tuple[str, ...] | None] = {}
        for key, entries in ports.items():
            kinds = {paths for _, paths in entries}
            if len(kinds) == 1:
                self.table[key] = kinds.pop()
                continue
            self.table[key] = _BY_ADDRESS
            common: Any = entries[0][1]
            for host, paths in entries:
                common = _common(common, paths)
                try:
                    infos = socket.getaddrinfo(host, key, type=socket.SOCK_STREAM)
                except OSError:
                    infos = []
                for ip in {_ip(host)} | {_ip(str(info[4][0])) for info in infos}:
                    self.by_address[(ip, key)] = paths
            self.fallback[key] = common

    def served(self, local: Any) -> tuple[str, ...] | None:
        """``local`` is the socket's ``getsockname()``: ``(host, port, ...)`` or a path."""
        if type(local) is tuple:
            entry = self.table.get(local[1])
            if entry is _BY_ADDRESS:
                return self.by_address.get((_ip(local[0]), local[1]),
                                           self.fallback[local[1]])
            return entry
        if isinstance(local, bytes):
            local = local.decode("utf-8", "surrogateescape")
        return self.table.get(local)


class ListenerResources:
    """WSGI layer: a request for a path outside the resources of the listener it arrived on
    is answered by ``refuse`` (404 ``M_UNRECOGNIZED``).  The listener is found from the
    accepted socket gunicorn puts in ``environ["gunicorn.socket"]`` (its local address: the
    listener's port, or its unix socket path), never from the Host header; a request without
    one (the Flask test client) is served whatever its path."""

    def __init__(self, wsgi: Any, routes: ListenerRoutes, refuse: Any) -> None:
        self.wsgi = wsgi
        self.routes = routes
        self.refuse = refuse

    def __call__(self, environ: dict, start_response: Any) -> Any:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            try:
                served = self.routes.served(sock.getsockname())
            except Exception:  # noqa: BLE001 -- a closed or odd socket is served nothing
                served = ()
            if served is not None and not environ.get("PATH_INFO", "").startswith(served):
                return self.refuse(environ, start_response)
        return self.wsgi(environ, start_response)


def refusal(headers: Iterable[tuple[str, str]] = (),
            request_id: Callable[[dict], str] | None = None,
            access_log: Callable[..., None] | None = None) -> Callable[[dict, Any], Any]:
    """The WSGI app answering a path the listener does not serve as every unknown path is
    answered: 404, the same body and default ``headers``, an ``X-Request-Id``, and its
    access line."""
    fixed = [("Content-Type", "application/json"),
             ("Content-Length", str(len(UNRECOGNIZED))), *headers]

    def refuse(environ: dict, start_response: Any) -> Any:
        started = time.perf_counter()
        out = list(fixed)
        if request_id is not None:
            out.append(("X-Request-Id", request_id(environ)))
        start_response("404 NOT FOUND", out)
        if access_log is not None:
            access_log(environ, 404, len(UNRECOGNIZED), None, started)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [UNRECOGNIZED]

    return refuse


def listener_resources_layer(listeners: tuple[Listener, ...], enable_metrics: bool, *,
                             refuse: Callable[[dict, Any], Any] | None = None,
                             warn: Callable[[str], None] | None = None,
                             environ: dict[str, str] | None = None,
                             ) -> Callable[[Any], ListenerResources] | None:
    """A wrapper installing :class:`ListenerResources`, or None when every listener serves
    every path (no ``resources`` keys, no metrics listener) or ``ATRIUM_BIND`` replaces the
    listeners' addresses (then every socket serves everything).  Metrics listeners with
    ``enable_metrics`` false are not bound (gunicorn.conf.py): named in ``warn`` here when
    the config's parse did not leave them out already."""
    env = os.environ if environ is None else environ
    if env.get("ATRIUM_BIND"):
        return None
    if not enable_metrics:
        for lst in listeners:
            if lst.kind == "metrics" and warn is not None:
                where = lst.path or ", ".join(lst.binds())
                warn(f"config: the metrics listener on {where} is not bound: "
                     "enable_metrics is false (as Synapse)")
        listeners = tuple(lst for lst in listeners if lst.kind != "metrics")
    if all(lst.paths() is None for lst in listeners):
        return None
    routes = ListenerRoutes(listeners)
    answer = refuse or refusal()
    return lambda wsgi: ListenerResources(wsgi, routes, answer)
