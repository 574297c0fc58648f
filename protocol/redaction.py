"""The redaction algorithm, per room version.

Owns which top-level keys and which ``content`` keys survive redaction.  Used for
redacting events on an ``m.room.redaction``, and — through ``hashing``/``signing`` — for
the reference hash and for event signatures, which cover only the redacted form.

Spec (client-server "Redactions", one fragment per room version):
  rooms/fragments/v1-redactions.md  — v1–v5 (v1–v5 also keep ``aliases`` of m.room.aliases)
  rooms/fragments/v6-redactions.md  — v6, v7: m.room.aliases content no longer kept
  rooms/v8.md "Redactions"          — v8: m.room.join_rules also keeps ``allow``
  rooms/fragments/v9-redactions.md  — v9, v10: m.room.member keeps
                                      ``join_authorised_via_users_server``
  rooms/fragments/v11-redactions.md — v11, v12: top-level origin/membership/prev_state
                                      dropped; m.room.create keeps all content;
                                      power_levels keeps ``invite``; m.room.redaction keeps
                                      ``redacts``; member keeps ``third_party_invite.signed``
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from protocol.room_versions import RoomVersion

__all__ = ["redact", "redact_shallow", "kept_top_level_keys", "kept_content_keys"]

# Top-level keys every version keeps.  ``unsigned`` is not among them: it is stripped.
_TOP_LEVEL_ALL = frozenset({
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
    "signatures", "depth", "prev_events", "auth_events", "origin_server_ts",
})
# Kept before v11 only (v11-redactions: "no longer protected from redaction").
_TOP_LEVEL_PRE_V11 = frozenset({"prev_state", "origin", "membership"})

_POWER_LEVELS_KEYS = frozenset({
    "ban", "events", "events_default", "kick", "redact", "state_default", "users",
    "users_default",
})


def kept_top_level_keys(rv: RoomVersion) -> frozenset[str]:
    """The top-level event keys the redaction algorithm keeps in room version ``rv``."""
    if rv.updated_redaction_rules:
        return _TOP_LEVEL_ALL
    return _TOP_LEVEL_ALL | _TOP_LEVEL_PRE_V11


def kept_content_keys(rv: RoomVersion, event_type: str) -> frozenset[str] | None:
    """The ``content`` keys kept for ``event_type`` in ``rv``; ``None`` means all of them.

    ``third_party_invite`` of m.room.member (v11+) is listed but is itself pruned down to
    its ``signed`` key by :func:`redact`.
    """
    if event_type == "m.room.member":
        keys = {"membership"}
        if rv.restricted_join_rule_fix:  # v9+
            keys.add("join_authorised_via_users_server")
        if rv.updated_redaction_rules:  # v11+
            keys.add("third_party_invite")
        return frozenset(keys)
    if event_type == "m.room.create":
        if rv.updated_redaction_rules:  # v11+: "allows all keys"
            return None
        return frozenset({"creator"})
    if event_type == "m.room.join_rules":
        if rv.restricted_join_rule:  # v8+
            return frozenset({"join_rule", "allow"})
        return frozenset({"join_rule"})
    if event_type == "m.room.power_levels":
        if rv.updated_redaction_rules:  # v11+
            return _POWER_LEVELS_KEYS | {"invite"}
        return _POWER_LEVELS_KEYS
    if event_type == "m.room.history_visibility":
        return frozenset({"history_visibility"})
    if event_type == "m.room.aliases" and rv.special_case_aliases_auth:  # v1–v5 only
        return frozenset({"aliases"})
    if event_type == "m.room.redaction" and rv.updated_redaction_rules:  # v11+
        return frozenset({"redacts"})
    return frozenset()


def redact(ev: Mapping[str, Any], rv: RoomVersion) -> dict[str, Any]:
    """Return a new, redacted copy of ``ev`` (the input is not modified).

    Keeps Atrium's internal ``event_id`` / v12-create ``room_id`` if present (both are on
    the keep list); callers wanting the wire form redact ``pdu_for_wire(ev, rv)``.
    Kept values are deep-copied so the result shares nothing mutable with ``ev``.
    """
    return _redact(ev, rv, copy.deepcopy)


def redact_shallow(ev: Mapping[str, Any], rv: RoomVersion) -> dict[str, Any]:
    """As :func:`redact`, but kept values are shared with ``ev``, not copied.

    For hashing and signing, which only encode the result: avoids a deep copy per event.
    Do not mutate the nested values of the result.
    """
    return _redact(ev, rv, _identity)


def _identity(v: Any) -> Any:
    return v


def _redact(ev: Mapping[str, Any], rv: RoomVersion, cp: Any) -> dict[str, Any]:
    top = kept_top_level_keys(rv)
    out: dict[str, Any] = {}
    for k, v in ev.items():
        if k in top and k != "content":
            out[k] = cp(v)

    content = ev.get("content")
    new_content: dict[str, Any] = {}
    if isinstance(content, Mapping):
        keep = kept_content_keys(rv, ev.get("type"))  # type: ignore[arg-type]
        if keep is None:
            new_content = cp(dict(content))
        else:
            for k in keep:
                if k in content:
                    new_content[k] = cp(content[k])
            if "third_party_invite" in new_content:
                # v11: "allows the `signed` key of the `third_party_invite` key"; a value
                # that is not an object cannot hold `signed` and is dropped.
                tpi = new_content.pop("third_party_invite")
                if isinstance(tpi, Mapping):
                    new_content["third_party_invite"] = (
                        {"signed": tpi["signed"]} if "signed" in tpi else {}
                    )
    # "content" is on every version's keep list; a redacted event always carries one.
    out["content"] = new_content
    return out
