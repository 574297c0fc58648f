"""Push rules compiled once per ruleset: the same answers as :func:`protocol.push_rules.evaluate`,
without re-reading the rule dicts for every event.

:func:`compile_ruleset` turns a ruleset (``GET /pushrules/`` shape) into a flat list of the
enabled rules, kind order kept, each with its conditions turned into small predicates:
property paths split, globs compiled to regexes, member-count specs parsed, condition values
checked once.  A rule with a condition that can never match is dropped.  Anything unusual (a
rule or condition that is not a mapping) falls back to the reference functions, so even their
errors are the same.  The compiled form is a snapshot: recompile when the ruleset changes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from protocol.push_rules import (
    CONDITION_KINDS,
    KINDS,
    _MAX_SAFE_INT,
    _MIN_SAFE_INT,
    _MISSING,
    Action,
    _compile_glob,
    _compile_literal_words,
    _Context,
    _MEMBER_COUNT,
    condition_matches,
    required_notification_level,
    rule_matches,
    split_key_path,
    strip_historical_actions,
)

Predicate = Callable[[Mapping[str, Any], _Context], bool]
_BODY_PATH = ("content", "body")


def _lookup_path(ev: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = ev
    for part in path:
        if not (type(node) is dict or isinstance(node, Mapping)) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _never(ev: Mapping[str, Any], ctx: _Context) -> bool:
    return False


def _fallback_condition(cond: Any) -> Predicate:
    """A condition that is not a mapping: the reference function (raises the same way)."""
    return lambda ev, ctx: condition_matches(cond, ev, ctx)


def _is_simple(v: Any) -> bool:
    if v is None or isinstance(v, (str, bool)):
        return True
    return isinstance(v, int) and _MIN_SAFE_INT <= v <= _MAX_SAFE_INT


def _glob_predicate(path: tuple[str, ...], pattern: str, word_boundary: bool) -> Predicate:
    search = _compile_glob(pattern, word_boundary).search
    literal = (not word_boundary and pattern.isascii() and "*" not in pattern
               and "?" not in pattern)
    folded = pattern.lower()

    if literal:
        # An anchored ASCII glob without wildcards: for an ASCII value the case-insensitive
        # regex is exactly a lower-case comparison; other values take the regex.
        def match_literal(ev: Mapping[str, Any], ctx: _Context) -> bool:
            value = _lookup_path(ev, path)
            if not isinstance(value, str):
                return False
            if value.isascii():
                return value.lower() == folded
            return search(value) is not None

        return match_literal

    def match(ev: Mapping[str, Any], ctx: _Context) -> bool:
        value = _lookup_path(ev, path)
        if not isinstance(value, str):
            return False
        return search(value) is not None

    return match


_SHARED: dict[tuple, Predicate | None] = {}
_SHARED_MAX = 4096


def _condition_key(cond: Mapping[str, Any]) -> tuple | None:
    """A hashable key for a condition made of simple values (type-exact: True is not 1)."""
    items = []
    for k, v in cond.items():
        if v is not None and not isinstance(v, (str, int, float)):
            return None
        items.append((k, type(v), v))
    return tuple(sorted(items, key=lambda kv: kv[0]))


def _shared_condition(cond: Any) -> Predicate | None:
    """:func:`_compile_condition`, shared between rulesets: most conditions are the same
    for every user (the default rules), so their predicates are built once."""
    if not isinstance(cond, Mapping):
        return _compile_condition(cond)
    key = _condition_key(cond)
    if key is None:
        return _compile_condition(cond)
    try:
        return _SHARED[key]
    except KeyError:
        pred = _compile_condition(cond)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = pred
        return pred


def _compile_condition(cond: Any) -> Predicate | None:
    """A predicate for one condition, or ``None`` when it can never match."""
    if not isinstance(cond, Mapping):
        return _fallback_condition(cond)
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return None
        return _glob_predicate(split_key_path(key), pattern, key == "content.body")
    if kind in ("event_property_is", "event_property_contains"):
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return None
        want = cond["value"]
        if not _is_simple(want):
            return None
        path, want_type = split_key_path(key), type(want)
        if kind == "event_property_is":
            def prop_is(ev: Mapping[str, Any], ctx: _Context) -> bool:
                v = _lookup_path(ev, path)
                return type(v) is want_type and v == want

            return prop_is

        def prop_contains(ev: Mapping[str, Any], ctx: _Context) -> bool:
            values = _lookup_path(ev, path)
            if not isinstance(values, list):
                return False
            return any(type(v) is want_type and v == want for v in values)

        return prop_contains
    if kind == "contains_display_name":
        def display_name(ev: Mapping[str, Any], ctx: _Context) -> bool:
            name = ctx.display_name
            body = _lookup_path(ev, _BODY_PATH)
            if not name or not isinstance(body, str):
                return False
            return _compile_literal_words(name).search(body) is not None

        return display_name
    if kind == "room_member_count":
        spec = cond.get("is")
        m = _MEMBER_COUNT.fullmatch(spec) if isinstance(spec, str) else None
        if m is None:
            return None
        return _member_count_predicate(m.group(1) or "==", int(m.group(2)))
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str):
            return None

        def permission(ev: Mapping[str, Any], ctx: _Context) -> bool:
            level = ctx.sender_power_level
            if level is None:
                return False
            return level >= required_notification_level(ctx.power_levels, key)

        return permission
    return None


def _member_count_predicate(op: str, n: int) -> Predicate:
    compare: Callable[[int], bool] = {
        "==": lambda c: c == n, "<": lambda c: c < n, ">": lambda c: c > n,
        "<=": lambda c: c <= n, ">=": lambda c: c >= n}[op]

    def member_count(ev: Mapping[str, Any], ctx: _Context) -> bool:
        count = ctx.room_member_count
        return count is not None and compare(count)

    return member_count


def _all(preds: list[Predicate]) -> Predicate:
    if not preds:
        return lambda ev, ctx: True
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda ev, ctx: a(ev, ctx) and b(ev, ctx)
    return lambda ev, ctx: all(p(ev, ctx) for p in preds)


def _compile_rule(kind: str, rule: Mapping[str, Any]) -> Predicate | None:
    if kind in CONDITION_KINDS:
        preds: list[Predicate] = []
        may_raise = False
        for cond in rule.get("conditions") or []:
            p = _shared_condition(cond)
            if p is None:
                # conditions are checked in order and stop at the first miss: unless one
                # before this may raise (a non-mapping), the rule can never match
                return _all(preds + [_never]) if may_raise else None
            may_raise = may_raise or not isinstance(cond, Mapping)
            preds.append(p)
        return _all(preds)
    if kind == "content":
        pattern = rule.get("pattern")
        if not isinstance(pattern, str):
            return None
        return _glob_predicate(_BODY_PATH, pattern, True)
    if kind in ("room", "sender"):
        field, want = ("room_id" if kind == "room" else "sender"), rule.get("rule_id")
        return lambda ev, ctx: ev.get(field) == want
    return None


class CompiledRuleset:
    """The enabled rules of one ruleset in evaluation order, ready to run."""

    __slots__ = ("_rules",)

    def __init__(self, rules: list[tuple[str, Any, Predicate | None, list[Action]]]) -> None:
        self._rules = rules

    def __len__(self) -> int:
        return len(self._rules)

    def find(self, ev: Mapping[str, Any], *, user_id: str, display_name: str | None,
             room_member_count: int | None, sender_power_level: float | None,
             power_levels: Mapping[str, Any] | None) -> tuple[str, Any] | None:
        """As :func:`protocol.push_rules.find_matching_rule`."""
        if ev.get("sender") == user_id:
            return None
        ctx = _Context(display_name, room_member_count, sender_power_level, power_levels)
        for kind, rule, pred, _ in self._rules:
            if pred is None:  # not a mapping: the reference path (and its errors)
                if not rule.get("enabled", True) or not rule_matches(kind, rule, ev, ctx):
                    continue
                return kind, rule
            if pred(ev, ctx):
                return kind, rule
        return None

    def evaluate(self, ev: Mapping[str, Any], *, user_id: str, display_name: str | None,
                 room_member_count: int | None, sender_power_level: float | None,
                 power_levels: Mapping[str, Any] | None) -> list[Action] | None:
        """As :func:`protocol.push_rules.evaluate` (a fresh list each call)."""
        if ev.get("sender") == user_id:
            return None
        ctx = _Context(display_name, room_member_count, sender_power_level, power_levels)
        for kind, rule, pred, actions in self._rules:
            if pred is None:
                if not rule.get("enabled", True) or not rule_matches(kind, rule, ev, ctx):
                    continue
                return strip_historical_actions(rule.get("actions") or [])
            if pred(ev, ctx):
                return [dict(a) if isinstance(a, Mapping) else a for a in actions]
        return None


def compile_ruleset(ruleset: Mapping[str, Any]) -> CompiledRuleset:
    """Compile ``ruleset`` (with or without the ``"global"`` level)."""
    rules_by_kind = ruleset.get("global", ruleset)
    out: list[tuple[str, Any, Predicate | None, list[Action]]] = []
    for kind in KINDS:
        for rule in rules_by_kind.get(kind) or ():
            if not isinstance(rule, Mapping):
                out.append((kind, rule, None, []))
                continue
            if not rule.get("enabled", True):
                continue
            pred = _compile_rule(kind, rule)
            if pred is None:
                continue
            out.append((kind, rule, pred, strip_historical_actions(rule.get("actions") or [])))
    return CompiledRuleset(out)
