"""Server ACLs: whether a server may take part in a room, from the room's
``m.room.server_acl`` content.

Spec: client-server-api/modules/server_acls.md and the event schema
(data/event-schemas/schema/m.room.server_acl.yaml), applied by server-server-api.md
"Server Access Control Lists (ACLs)":

1. no ``m.room.server_acl`` in the room state → allow;
2. the server name is an IP literal (v4, or v6 in brackets) and ``allow_ip_literals`` is
   present and ``false`` → deny (a value that is not a boolean counts as ``true``);
3. the name matches a ``deny`` glob → deny;
4. the name matches an ``allow`` glob → allow;
5. otherwise deny (a missing or malformed ``allow`` is an empty list).

The port is never considered (``evil.com:8448`` is ``evil.com``); globs (appendices
"Glob-style matching": ``*`` any run, ``?`` one character) match case-insensitively.
Entries that are not strings are ignored.  Pure: no I/O.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from protocol.push_rules import glob_matches

__all__ = ["server_allowed", "host_of", "is_ip_literal"]


def host_of(server_name: str) -> str:
    """``server_name`` without its port: ``[::1]:8448`` → ``[::1]``, ``a.b:1`` → ``a.b``."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end >= 0 else server_name
    return server_name.split(":", 1)[0]


def is_ip_literal(host: str) -> bool:
    """Whether a host (port stripped) is an IPv4 literal or a bracketed IPv6 literal."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
    else:
        inner = host
    try:
        ipaddress.ip_address(inner)
    except ValueError:
        return False
    # a bare IPv6 address cannot be a server name; count it as a literal all the same
    return True


def _globs(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        return []
    return [g for g in value if isinstance(g, str)]


def server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether ``server_name`` passes the ACL whose content is ``acl_content`` (``None``:
    the room has no ``m.room.server_acl``, everyone is allowed)."""
    if acl_content is None:
        return True
    if not isinstance(acl_content, Mapping):
        acl_content = {}
    host = host_of(server_name)
    allow_ip = acl_content.get("allow_ip_literals", True)
    if allow_ip is False and is_ip_literal(host):
        return False
    if any(glob_matches(g, host) for g in _globs(acl_content.get("deny"))):
        return False
    return any(glob_matches(g, host) for g in _globs(acl_content.get("allow")))
