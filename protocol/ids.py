"""Matrix identifier grammar: user ids, room ids, event ids, room aliases, server names.

Owns parsing and validation only (no normalisation, no lookups).  Spec: appendices.md,
"Identifier Grammar" — "Server Name", "Common Identifier Format", "User Identifiers"
(incl. "Historical User IDs"), "Room IDs", "Room Aliases", "Event IDs"; event id formats
per room version in rooms/fragments/v1-event-ids.md and v4-event-ids.md (v3 uses standard
base64), v12 domain-less room ids in rooms/v12.md.
"""
from __future__ import annotations

import ipaddress
import re

from protocol.room_versions import EventFormat, RoomVersion

__all__ = [
    "IdError",
    "MAX_ID_BYTES",
    "parse_server_name",
    "is_valid_server_name",
    "parse_user_id",
    "is_valid_user_id",
    "is_valid_localpart",
    "is_valid_room_id",
    "is_valid_event_id",
    "is_valid_room_alias",
    "server_of",
]

#: Identifiers including sigil and domain MUST NOT exceed 255 bytes (appendices, "User
#: Identifiers", "Room IDs", "Room Aliases", "Event IDs").
MAX_ID_BYTES = 255


class IdError(ValueError):
    """An identifier does not follow the spec's grammar."""


# --- server names (appendices, "Server Name") -------------------------------------------

_DNS_NAME = re.compile(r"[A-Za-z0-9.\-]{1,255}\Z")
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def _parse_host(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise IdError(f"unterminated IPv6 literal: {host!r}")
        inner = host[1:-1]
        if not _IPV6_CHARS.match(inner):
            raise IdError(f"bad IPv6 literal: {host!r}")
        try:
            # "must be as specified by RFC3513, section 2.2"
            ipaddress.IPv6Address(inner)
        except ValueError as e:
            raise IdError(f"bad IPv6 literal: {host!r}") from e
        return host
    if not _DNS_NAME.match(host):
        raise IdError(f"bad hostname: {host!r}")
    if _IPV4_SHAPE.match(host) and any(int(octet) > 255 for octet in host.split(".")):
        # a dotted quad is an IPv4 literal, whose parts must be 0–255
        raise IdError(f"bad IPv4 literal: {host!r}")
    return host


def parse_server_name(s: str) -> tuple[str, int | None]:
    """Split ``hostname[:port]`` into (host, port or None); raises :class:`IdError`.

    An IPv6 host is returned with its brackets, as it appears in the server name.
    """
    if not isinstance(s, str) or not s:
        raise IdError("empty server name")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise IdError(f"unterminated IPv6 literal: {s!r}")
        host, rest = s[: end + 1], s[end + 1:]
        if rest and not rest.startswith(":"):
            raise IdError(f"junk after IPv6 literal: {s!r}")
        port_s = rest[1:] if rest else None
    else:
        host, sep, port_s_ = s.partition(":")
        port_s = port_s_ if sep else None
    _parse_host(host)
    port: int | None = None
    if port_s is not None:
        if not _PORT.match(port_s):
            raise IdError(f"bad port in server name: {s!r}")
        port = int(port_s)
        if port > 65535:
            raise IdError(f"port out of range in server name: {s!r}")
    return host, port


def is_valid_server_name(s: str) -> bool:
    try:
        parse_server_name(s)
    except IdError:
        return False
    return True


# --- localparts ----------------------------------------------------------------------------

_NEW_LOCALPART = re.compile(r"[a-z0-9._=/+\-]+\Z")


def is_valid_localpart(s: str) -> bool:
    """True if ``s`` is a user id localpart allowed for *new* users: ``[a-z0-9._=/+-]+``."""
    return isinstance(s, str) and bool(_NEW_LOCALPART.match(s))


def _is_historical_opaque(s: str) -> bool:
    """Any non-surrogate code points except ``:`` and NUL (the empty string is allowed)."""
    for ch in s:
        if ch == ":" or ch == "\x00" or "\ud800" <= ch <= "\udfff":
            return False
    return True


def _too_long(s: str) -> bool:
    return len(s.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES


def _split_sigil_id(s: object, sigil: str) -> tuple[str, str]:
    """Split ``<sigil>localpart:domain``, checking the length and the server name."""
    if not isinstance(s, str) or not s.startswith(sigil):
        raise IdError(f"identifier must start with {sigil!r}: {s!r}")
    if _too_long(s):
        raise IdError(f"identifier longer than {MAX_ID_BYTES} bytes")
    localpart, sep, domain = s[1:].partition(":")
    if not sep:
        raise IdError(f"identifier has no domain: {s!r}")
    parse_server_name(domain)
    return localpart, domain


# --- user ids (appendices, "User Identifiers", "Historical User IDs") -----------------------

def parse_user_id(s: str, *, historical: bool = True) -> tuple[str, str]:
    """``@localpart:domain`` -> (localpart, domain); raises :class:`IdError`.

    With ``historical`` (the default, as events over federation must be accepted) the
    localpart may be any non-surrogate code points except ``:`` and NUL, even empty;
    otherwise it must match the current grammar ``[a-z0-9._=/+-]+``.
    """
    localpart, domain = _split_sigil_id(s, "@")
    if historical:
        ok = _is_historical_opaque(localpart)
    else:
        ok = is_valid_localpart(localpart)
    if not ok:
        raise IdError(f"bad user id localpart: {s!r}")
    return localpart, domain


def is_valid_user_id(s: str, historical: bool = True) -> bool:
    try:
        parse_user_id(s, historical=historical)
    except IdError:
        return False
    return True


# --- event ids and room ids ---------------------------------------------------------------

# The reference hash is sha256 (32 bytes) -> 43 unpadded base64 characters.
_B64_STD_ID = re.compile(r"[A-Za-z0-9+/]{43}\Z")  # room v3 (EventFormat.V2)
_B64_URL_ID = re.compile(r"[A-Za-z0-9\-_]{43}\Z")  # rooms v4+ (EventFormat.V3)


def _is_domain_id(s: str, sigil: str) -> bool:
    try:
        localpart, _ = _split_sigil_id(s, sigil)
    except IdError:
        return False
    return _is_historical_opaque(localpart)


def is_valid_event_id(s: str, rv: RoomVersion | None = None) -> bool:
    """True if ``s`` is an event id; with ``rv``, in that room version's format.

    v1/v2: ``$opaque:domain``; v3: ``$`` + unpadded base64 of the reference hash; v4+:
    the same in URL-safe base64.  Without ``rv`` any of these is accepted.
    """
    if not isinstance(s, str) or not s.startswith("$"):
        return False
    fmt = rv.event_format if rv is not None else None
    if fmt in (None, EventFormat.V1) and _is_domain_id(s, "$"):
        return True
    if fmt in (None, EventFormat.V2) and _B64_STD_ID.match(s, 1):
        return True
    if fmt in (None, EventFormat.V3) and _B64_URL_ID.match(s, 1):
        return True
    return False


def is_valid_room_id(s: str, rv: RoomVersion | None = None) -> bool:
    """True if ``s`` is a room id; with ``rv``, in that room version's format.

    Before v12: ``!opaque:domain``.  v12: the create event's id with ``!`` as sigil, i.e.
    ``!`` + 43 URL-safe unpadded base64 characters and no domain.
    """
    if not isinstance(s, str) or not s.startswith("!"):
        return False
    hashed = rv.room_id_is_create_event_hash if rv is not None else None
    if hashed in (None, False) and _is_domain_id(s, "!"):
        return True
    if hashed in (None, True) and _B64_URL_ID.match(s, 1):
        return True
    return False


# --- room aliases (appendices, "Room Aliases") --------------------------------------------

def is_valid_room_alias(s: str) -> bool:
    """``#localpart:domain``; the localpart is any non-surrogate code points but ``:``/NUL."""
    return isinstance(s, str) and _is_domain_id(s, "#")


def server_of(id_: str) -> str:
    """The domain of a ``&localpart:domain`` identifier; raises :class:`IdError`.

    Domain-less ids (v3+ event ids, v12 room ids) have no server and raise.
    """
    if not isinstance(id_, str) or not id_ or id_[0] not in "@!$#":
        raise IdError(f"not a sigil identifier: {id_!r}")
    _, domain = _split_sigil_id(id_, id_[0])
    return domain
