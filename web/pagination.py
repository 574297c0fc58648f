"""Pagination tokens for room reads (/messages, /context, /relations, /threads, /members?at).

A token names a *cut* in a room's timeline: a point between two events, never an event.
Events in a room are totally ordered by the key ``(depth, stream_ordering)`` (topological
order, ties broken by the global stream position).  Two token formats are accepted:

``t{depth}-{stream}``
    Topological: the cut just after the event whose key is ``(depth, stream)``.  Events
    with a key ``<=`` it are *before* the cut, events with a larger key are *after* it.
    Because keys are integer pairs, "just before the event keyed (d, s)" is the same cut as
    ``t{d}-{s-1}``; that is how a backwards page hands out its ``end`` token.  This is what
    /messages and /context return.

``s{stream}``
    A global stream position (what /sync hands out as ``prev_batch`` / ``next_batch``): the
    cut just after every event with ``stream_ordering <= stream``.  In a room it is turned
    into a topological cut at the latest room event at or before that position
    (:func:`store.room_reads.topological_cut`).  Events a room actor writes have depth
    increasing with stream position, so the two agree exactly for local history; events
    backfilled over federation later (low depth, high stream) are placed by depth.
    A /sync token may carry positions of other streams after an underscore
    (``s{stream}_…``); only the leading events position matters here.

Tokens are opaque to clients, but stable: the same token always names the same cut.
Bad tokens are 400 M_INVALID_PARAM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from atrium.errors import invalid_param

_TOPO = re.compile(r"^t(\d{1,18})-(\d{1,18})$")
_STREAM = re.compile(r"^s(\d{1,18})(?:_[A-Za-z0-9_.~-]{0,200})?$")

#: Sorts after every real key: "the end of the room" when a page has no ``from``.
END = (2 ** 62, 2 ** 62)
#: Sorts before every real key (depths start at 1).
START = (0, 0)


@dataclass(frozen=True)
class Token:
    """A parsed token: topological ``(depth, stream)`` or a bare stream position."""

    depth: int | None
    stream: int

    @property
    def is_stream(self) -> bool:
        return self.depth is None

    def __str__(self) -> str:
        if self.depth is None:
            return f"s{self.stream}"
        return f"t{self.depth}-{self.stream}"


def parse_token(raw: str | None, name: str = "from") -> Token | None:
    """The token in a query parameter (None when absent); 400 M_INVALID_PARAM when bad."""
    if raw is None:
        return None
    m = _TOPO.fullmatch(raw)
    if m:
        return Token(int(m.group(1)), int(m.group(2)))
    m = _STREAM.fullmatch(raw)
    if m:
        return Token(None, int(m.group(1)))
    raise invalid_param(f"Invalid pagination token in '{name}'")


def topo_token(key: tuple[int, int]) -> str:
    """The token of the cut just after the event keyed ``key``."""
    return f"t{key[0]}-{key[1]}"


def before_token(key: tuple[int, int]) -> str:
    """The token of the cut just before the event keyed ``key``."""
    return f"t{key[0]}-{key[1] - 1}"


def stream_token(stream: int) -> str:
    return f"s{stream}"
