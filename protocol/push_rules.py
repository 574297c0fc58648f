"""Push rules: the default ruleset, merging a user's rules over it, and evaluating an event.

Spec: client-server-api/modules/push.md ("Push Rules", "Actions", "Conditions", "Predefined
Rules"), the API shapes of data/api/client-server/pushrules.yaml, and the appendices'
"Glob-style matching" and "Dot-separated property paths".

Pure code: an event is a plain dict (see docs/protocol-contract.md); everything the
evaluation needs about the room (member count, the sender's power level, the power-levels
content, the user's display name there) is passed in by the caller.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from protocol.push_rules_defaults import (
    MASTER_RULE_ID,
    default_content_rules,
    default_override_rules,
    default_underride_rules,
)

Rule = dict[str, Any]
Action = str | dict[str, Any]

# push.md "Push Rules": the kinds in the order they are checked.
KINDS: tuple[str, ...] = ("override", "content", "room", "sender", "underride")
# Kinds whose rules carry a `conditions` list; room/sender/content rules have implicit ones.
CONDITION_KINDS = frozenset({"override", "underride"})
# push.md "Historical Actions": MUST be ignored, e.g. by stripping them.
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})
# m.room.power_levels schema: `notifications.room` defaults to 50.  No other key has a
# specified default; we use the same value for them.
DEFAULT_NOTIFICATION_LEVEL = 50

_MIN_SAFE_INT = -(2**53) + 1
_MAX_SAFE_INT = 2**53 - 1
_MISSING = object()


class PushRuleError(ValueError):
    """A user push rule (or where to put it) is not acceptable (pushrules.yaml, PUT)."""


# --------------------------------------------------------------------------- rulesets


def default_ruleset(user_id: str) -> dict[str, dict[str, list[Rule]]]:
    """The server-default rules in the shape of ``GET /pushrules/``:
    ``{"global": {"override": [...], "content": [...], "room": [], "sender": [],
    "underride": [...]}}`` (push.md "Predefined Rules")."""
    return {
        "global": {
            "override": default_override_rules(user_id),
            "content": default_content_rules(user_id),
            "room": [],
            "sender": [],
            "underride": default_underride_rules(user_id),
        }
    }


def strip_historical_actions(actions: Iterable[Action]) -> list[Action]:
    """Drop ``dont_notify`` and ``coalesce`` (push.md "Historical Actions"), so a rule with
    ``["dont_notify"]`` is the same as one with ``[]``.  Object actions are copied."""
    return [
        dict(a) if isinstance(a, Mapping) else a
        for a in actions
        if not (isinstance(a, str) and a in HISTORICAL_ACTIONS)
    ]


def _user_rule_for_api(kind: str, rule: Mapping[str, Any]) -> Rule:
    """A stored user rule in PushRule shape (definitions/push_rule.yaml)."""
    out: Rule = {
        "rule_id": rule["rule_id"],
        "default": False,
        "enabled": bool(rule.get("enabled", True)),
        "actions": strip_historical_actions(rule.get("actions") or []),
    }
    if kind in CONDITION_KINDS:
        out["conditions"] = [dict(c) for c in rule.get("conditions") or []]
    elif kind == "content" and "pattern" in rule:
        out["pattern"] = rule["pattern"]
    return out


def merge_ruleset(
    user_id: str,
    user_rules: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    overrides: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, list[Rule]]]:
    """The user's effective ruleset, in ``GET /pushrules/`` shape.

    ``user_rules`` maps a kind to that kind's user-defined rules, most important first (each
    a dict with ``rule_id``, ``actions`` and, as the kind needs, ``conditions`` or
    ``pattern``; ``enabled`` defaults to true).  ``overrides`` maps ``(kind, rule_id)`` to
    ``{"enabled": bool}`` and/or ``{"actions": [...]}`` — what ``PUT .../enabled`` and
    ``PUT .../actions`` stored — and applies to default and user rules alike; entries for
    rules that do not exist are ignored.

    Order (push.md "Predefined Rules"): server-default rules rank below user-defined rules of
    the same kind, except ``.m.rule.master``, which ranks above everything.  User rules whose
    ``rule_id`` starts with "." are dropped: that namespace belongs to the server.
    """
    defaults = default_ruleset(user_id)["global"]
    user_rules = user_rules or {}
    overrides = overrides or {}
    merged: dict[str, list[Rule]] = {}
    for kind in KINDS:
        mine = [
            _user_rule_for_api(kind, r)
            for r in user_rules.get(kind, ())
            if isinstance(r.get("rule_id"), str) and not r["rule_id"].startswith(".")
        ]
        server = defaults[kind]
        if kind == "override":
            head = [r for r in server if r["rule_id"] == MASTER_RULE_ID]
            rest = [r for r in server if r["rule_id"] != MASTER_RULE_ID]
            rules = head + mine + rest
        else:
            rules = mine + server
        for rule in rules:
            change = overrides.get((kind, rule["rule_id"]))
            if not change:
                continue
            if "enabled" in change:
                rule["enabled"] = bool(change["enabled"])
            if "actions" in change:
                rule["actions"] = strip_historical_actions(change["actions"])
        merged[kind] = rules
    return {"global": merged}


def check_user_rule_id(rule_id: str) -> None:
    """Raise :class:`PushRuleError` unless ``rule_id`` may name a user rule (pushrules.yaml
    PUT: not starting with ".", no "/" or "\\")."""
    if not rule_id or rule_id.startswith(".") or "/" in rule_id or "\\" in rule_id:
        raise PushRuleError(f"invalid rule_id: {rule_id!r}")


def upsert_user_rule(
    rules: Sequence[Mapping[str, Any]],
    rule: Mapping[str, Any],
    *,
    before: str | None = None,
    after: str | None = None,
) -> list[Rule]:
    """A new list of one kind's user rules with ``rule`` added or replaced
    (pushrules.yaml ``PUT /pushrules/global/{kind}/{ruleId}``).

    A new rule without ``before``/``after`` becomes the most important user rule; an updated
    one keeps its place.  ``before`` wins when both are given.  Positions are relative to user
    rules only; an unknown ``before``/``after`` raises :class:`PushRuleError`.
    """
    rule_id = rule["rule_id"]
    check_user_rule_id(rule_id)
    new = dict(rule)
    new.setdefault("enabled", True)  # "When creating push rules, they MUST be enabled"
    out = [dict(r) for r in rules]
    existing = next((i for i, r in enumerate(out) if r["rule_id"] == rule_id), None)
    anchor = before if before is not None else after
    if anchor is None or (anchor == rule_id and existing is not None):
        # no position asked for, or relative to itself: a new rule goes first, an
        # updated one keeps its place
        if existing is None:
            out.insert(0, new)
        else:
            out[existing] = new
        return out
    if existing is not None:
        del out[existing]
    pos = next((i for i, r in enumerate(out) if r["rule_id"] == anchor), None)
    if pos is None:
        raise PushRuleError(f"before/after rule not found: {anchor}")
    out.insert(pos if before is not None else pos + 1, new)
    return out


# --------------------------------------------------------------------------- matching


@lru_cache(maxsize=1024)
def split_key_path(key: str) -> tuple[str, ...]:
    """Split a dot-separated property path (appendices "Dot-separated property paths"):
    ``\\.`` is a literal dot, ``\\\\`` a literal backslash, any other ``\\x`` is kept as is."""
    parts: list[str] = []
    cur: list[str] = []
    i, n = 0, len(key)
    while i < n:
        c = key[i]
        if c == "\\" and i + 1 < n and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return tuple(parts)


def _lookup(ev: Mapping[str, Any], key: str) -> Any:
    """The event property at the dotted path ``key``, or ``_MISSING``."""
    node: Any = ev
    for part in split_key_path(key):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


# Word boundary: start/end of the value or any character outside [A-Za-z0-9_] (push.md).
_WORD_START = r"(?<![A-Za-z0-9_])"
_WORD_END = r"(?![A-Za-z0-9_])"


def _glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    for c in re.sub(r"\*+", "*", pattern):  # runs of * mean the same and backtrack badly
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        else:
            out.append(re.escape(c))
    return "".join(out)


@lru_cache(maxsize=4096)
def _compile_glob(pattern: str, word_boundary: bool) -> re.Pattern[str]:
    """A case-insensitive matcher for a glob (appendices "Glob-style matching": ``*`` is zero
    or more characters, ``?`` exactly one); anchored to the whole value, or with
    ``word_boundary`` to any substring starting and ending on a word boundary."""
    body = _glob_to_regex(pattern)
    if word_boundary:
        body = _WORD_START + body + _WORD_END
    else:
        body = r"\A" + body + r"\Z"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=1024)
def _compile_literal_words(text: str) -> re.Pattern[str]:
    return re.compile(_WORD_START + re.escape(text) + _WORD_END, re.IGNORECASE)


def glob_matches(pattern: str, value: str, *, word_boundary: bool = False) -> bool:
    """Whether ``value`` matches the glob ``pattern`` (case-insensitively)."""
    return _compile_glob(pattern, word_boundary).search(value) is not None


def _is_simple_value(v: Any) -> bool:
    """A non-compound canonical JSON value: string, safe-range integer, boolean or null."""
    if v is None or isinstance(v, (str, bool)):
        return True
    return isinstance(v, int) and _MIN_SAFE_INT <= v <= _MAX_SAFE_INT


def _same_value(a: Any, b: Any) -> bool:
    """Exact equality without casts: ``True`` is not ``1``, ``"1"`` is not ``1``."""
    return _is_simple_value(a) and _is_simple_value(b) and type(a) is type(b) and a == b


_MEMBER_COUNT = re.compile(r"(==|<=|>=|<|>)?([0-9]+)")


def _member_count_matches(spec: Any, count: int | None) -> bool:
    if count is None or not isinstance(spec, str):
        return False
    m = _MEMBER_COUNT.fullmatch(spec)
    if m is None:
        return False
    op, n = m.group(1) or "==", int(m.group(2))
    if op == "==":
        return count == n
    if op == "<":
        return count < n
    if op == ">":
        return count > n
    if op == "<=":
        return count <= n
    return count >= n


def _as_level(v: Any) -> int | None:
    # Rooms v1–v9 allow power levels as strings holding integers.
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    return None


def _pl_content(power_levels: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not power_levels:
        return {}
    # Accept the whole m.room.power_levels event as well as its content.
    if power_levels.get("type") == "m.room.power_levels" and isinstance(
        power_levels.get("content"), Mapping
    ):
        return power_levels["content"]
    return power_levels


def required_notification_level(power_levels: Mapping[str, Any] | None, key: str) -> int:
    """The level ``notifications[key]`` of the power-levels content, default 50."""
    notifications = _pl_content(power_levels).get("notifications")
    if isinstance(notifications, Mapping):
        level = _as_level(notifications.get(key))
        if level is not None:
            return level
    return DEFAULT_NOTIFICATION_LEVEL


class _Context:
    """What the conditions may look at besides the event."""

    __slots__ = ("display_name", "room_member_count", "sender_power_level", "power_levels")

    def __init__(self, display_name: str | None, room_member_count: int | None,
                 sender_power_level: float | None,
                 power_levels: Mapping[str, Any] | None) -> None:
        self.display_name = display_name
        self.room_member_count = room_member_count
        self.sender_power_level = sender_power_level
        self.power_levels = power_levels


def condition_matches(cond: Mapping[str, Any], ev: Mapping[str, Any], ctx: _Context) -> bool:
    """One condition of push.md "Conditions".  Unknown or malformed conditions never match."""
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        value = _lookup(ev, key)
        if not isinstance(value, str):
            return False  # absent or not a string: no match, even for "*"
        return glob_matches(pattern, value, word_boundary=(key == "content.body"))
    if kind == "event_property_is":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        return _same_value(_lookup(ev, key), cond["value"])
    if kind == "event_property_contains":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        values = _lookup(ev, key)
        if not isinstance(values, list):
            return False
        want = cond["value"]
        return any(_same_value(v, want) for v in values)
    if kind == "contains_display_name":
        name = ctx.display_name
        body = _lookup(ev, "content.body")
        if not name or not isinstance(body, str):
            return False
        return _compile_literal_words(name).search(body) is not None
    if kind == "room_member_count":
        return _member_count_matches(cond.get("is"), ctx.room_member_count)
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str) or ctx.sender_power_level is None:
            return False
        return ctx.sender_power_level >= required_notification_level(ctx.power_levels, key)
    return False


def rule_matches(kind: str, rule: Mapping[str, Any], ev: Mapping[str, Any],
                 ctx: _Context) -> bool:
    """Whether an enabled or disabled ``rule`` of ``kind`` matches ``ev`` (push.md "Push
    Rules": content rules glob ``content.body``, room rules match the room id, sender rules
    the sender, override/underride rules need all their conditions)."""
    if kind in CONDITION_KINDS:
        conditions = rule.get("conditions") or []
        return all(condition_matches(c, ev, ctx) for c in conditions)
    if kind == "content":
        pattern = rule.get("pattern")
        body = _lookup(ev, "content.body")
        return isinstance(pattern, str) and isinstance(body, str) and glob_matches(
            pattern, body, word_boundary=True)
    if kind == "room":
        return ev.get("room_id") == rule.get("rule_id")
    if kind == "sender":
        return ev.get("sender") == rule.get("rule_id")
    return False


def find_matching_rule(
    ruleset: Mapping[str, Any],
    ev: Mapping[str, Any],
    *,
    user_id: str,
    display_name: str | None,
    room_member_count: int | None,
    sender_power_level: float | None,
    power_levels: Mapping[str, Any] | None,
) -> tuple[str, Mapping[str, Any]] | None:
    """``(kind, rule)`` of the highest-priority enabled rule matching ``ev``, or ``None``;
    ``None`` too when ``user_id`` sent the event.  Arguments as for :func:`evaluate`."""
    if ev.get("sender") == user_id:
        return None
    rules_by_kind = ruleset.get("global", ruleset)
    ctx = _Context(display_name, room_member_count, sender_power_level, power_levels)
    for kind in KINDS:
        for rule in rules_by_kind.get(kind) or ():
            if not rule.get("enabled", True):
                continue
            if rule_matches(kind, rule, ev, ctx):
                return kind, rule
    return None


def evaluate(
    ruleset: Mapping[str, Any],
    ev: Mapping[str, Any],
    *,
    user_id: str,
    display_name: str | None,
    room_member_count: int | None,
    sender_power_level: float | None,
    power_levels: Mapping[str, Any] | None,
) -> list[Action] | None:
    """The actions of the highest-priority enabled rule matching ``ev`` for ``user_id``.

    ``ruleset`` is the ``GET /pushrules/`` shape (with or without the ``"global"`` level),
    normally from :func:`merge_ruleset`.  Kinds are tried in :data:`KINDS` order and rules in
    list order; disabled rules never match.  Returns ``None`` when no rule matches or the
    user sent the event ("MUST NOT notify ... for events that the user has sent
    themselves"), else the rule's actions without historical ones — possibly ``[]``.  Use
    :func:`notification_effect` to decide whether to notify.

    ``display_name`` is the user's display name in the room, ``room_member_count`` the number
    of joined members, ``sender_power_level`` the sender's level (int or ``inf``), and
    ``power_levels`` the room's ``m.room.power_levels`` content (or event), or ``None``.
    """
    found = find_matching_rule(
        ruleset, ev, user_id=user_id, display_name=display_name,
        room_member_count=room_member_count, sender_power_level=sender_power_level,
        power_levels=power_levels,
    )
    if found is None:
        return None
    return strip_historical_actions(found[1].get("actions") or [])


# --------------------------------------------------------------------------- actions


def tweaks(actions: Iterable[Action] | None) -> dict[str, Any]:
    """The ``tweaks`` dict for the push gateway (push.md "Actions", ``set_tweak``); a
    ``highlight`` tweak without a value means ``true``, a later tweak overrides an earlier."""
    out: dict[str, Any] = {}
    for a in actions or ():
        if isinstance(a, Mapping) and isinstance(a.get("set_tweak"), str):
            name = a["set_tweak"]
            if "value" in a:
                out[name] = a["value"]
            elif name == "highlight":
                out[name] = True
    return out


def notification_effect(actions: Iterable[Action] | None) -> tuple[bool, bool, str | None]:
    """``(notify, highlight, sound)`` for a list of actions (push.md "Actions"): notify iff a
    ``notify`` action is present; highlight is false unless a ``highlight`` tweak says
    otherwise; sound is the ``sound`` tweak's string value or ``None``."""
    actions = list(actions or ())
    notify = "notify" in actions
    tw = tweaks(actions)
    highlight = tw.get("highlight", False)
    sound = tw.get("sound")
    return (
        notify,
        highlight if isinstance(highlight, bool) else False,
        sound if isinstance(sound, str) else None,
    )
