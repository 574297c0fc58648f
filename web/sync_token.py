"""/sync ``next_batch`` / ``since`` tokens: one position per stream.

Format: ``s{events}_{typing}_{receipts}_{account_data}_{presence}_{to_device}_{device_lists}``,
e.g. ``s1042_1717171717000_3_12_40_0_7``.  The leading ``s{events}`` is the event stream
position, the same "s<stream_ordering>" form /messages tokens use (web/pagination.py), so the
prefix of a sync token names the same point in a room's timeline.

The typing stream lives in memory; its counter starts from the clock in ms at boot, so it
never goes backwards across restarts.  Any malformed token is 400 M_INVALID_PARAM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from atrium.errors import MatrixError

_TOKEN = re.compile(r"^s(\d{1,19})_(\d{1,19})_(\d{1,19})_(\d{1,19})_(\d{1,19})_(\d{1,19})_(\d{1,19})$")


@dataclass(frozen=True)
class SyncToken:
    events: int = 0
    typing: int = 0
    receipts: int = 0
    account_data: int = 0
    presence: int = 0
    to_device: int = 0
    device_lists: int = 0

    def encode(self) -> str:
        return (f"s{self.events}_{self.typing}_{self.receipts}_{self.account_data}"
                f"_{self.presence}_{self.to_device}_{self.device_lists}")

    def max(self, other: "SyncToken") -> "SyncToken":
        """Stream by stream, the later position (tokens never move backwards)."""
        return SyncToken(*(max(getattr(self, f), getattr(other, f)) for f in _FIELDS))

    @classmethod
    def decode(cls, raw: str) -> "SyncToken":
        m = _TOKEN.match(raw or "")
        if m is None:
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid sync token {raw!r}")
        return cls(*(int(g) for g in m.groups()))


_FIELDS = tuple(f.name for f in fields(SyncToken))
assert len(_FIELDS) == 7, "encode() and the token pattern name every stream"


def room_position_token(stream_ordering: int) -> str:
    """A /messages pagination token for the point just after ``stream_ordering``."""
    return f"s{max(0, stream_ordering)}"
