"""State resolution: the room state before an event, from the states after its prev events.

Public API (docs/protocol-contract.md): :func:`resolve_state`.  The algorithm is chosen by
``rv.state_res``: ``"v1"`` (rooms/v1.md, module :mod:`.v1`), ``"v2"`` (rooms/v2.md, rooms v2–v11)
and ``"v2.1"`` (rooms/v12.md) both in :mod:`.v2`.  Pure: event lookups are passed in as
``get_event``, long loops call ``pause`` (the server passes ``lambda: gevent.sleep(0)``).
Auth decisions come from ``protocol.auth.check_auth``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from protocol.room_versions import RoomVersion, StateRes

__all__ = ["resolve_state"]


def resolve_state(
    rv: RoomVersion,
    state_sets: list[Mapping[tuple[str, str], str]],
    get_event: Callable[[str], Mapping[str, Any] | None],
    *,
    pause: Callable[[], None] | None = None,
) -> dict[tuple[str, str], str]:
    """Resolve ``state_sets`` (maps ``(type, state_key) -> event_id``) into one state map."""
    sets = list(state_sets)
    if not sets:
        return {}
    if len(sets) == 1:
        return dict(sets[0])
    if rv.state_res == StateRes.V1:
        from protocol.state_res import v1

        return v1.resolve(rv, sets, get_event, pause=pause)
    if rv.state_res in (StateRes.V2, StateRes.V2_1):
        from protocol.state_res import v2

        return v2.resolve(rv, sets, get_event, pause=pause)
    raise ValueError(f"unknown state resolution algorithm {rv.state_res!r}")
