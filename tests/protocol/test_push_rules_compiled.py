"""protocol/push_rules_compiled.py gives exactly what protocol.push_rules.evaluate gives."""
from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest

from protocol.push_rules import evaluate, find_matching_rule, merge_ruleset
from protocol.push_rules_compiled import compile_ruleset

ME = "@alice:example.org"
BOB = "@bob:example.org"
ROOM = "!room:example.org"

USER_RULES: dict[str, list[dict[str, Any]]] = {
    "override": [
        {"rule_id": "ov_prop", "actions": ["notify", "coalesce"],
         "conditions": [{"kind": "event_property_is", "key": "content.flag", "value": True}]},
        {"rule_id": "ov_contains", "actions": ["notify", {"set_tweak": "highlight"}],
         "conditions": [{"kind": "event_property_contains", "key": "content.tags",
                         "value": "urgent"}]},
        {"rule_id": "ov_bad_value", "actions": ["notify"],
         "conditions": [{"kind": "event_property_is", "key": "content.n", "value": 1.5}]},
        {"rule_id": "ov_unknown", "actions": ["notify"],
         "conditions": [{"kind": "no_such_kind"}]},
        {"rule_id": "ov_null", "actions": ["notify"],
         "conditions": [{"kind": "event_property_is", "key": "content.x", "value": None}]},
        {"rule_id": "ov_int", "actions": ["notify"],
         "conditions": [{"kind": "event_property_is", "key": "content.n", "value": 3}]},
        {"rule_id": "ov_off", "enabled": False, "actions": ["notify"], "conditions": []},
    ],
    "content": [
        {"rule_id": "c_glob", "pattern": "ca?e*", "actions": ["notify", "dont_notify"]},
        {"rule_id": "c_word", "pattern": "ÉCLAIR", "actions": ["notify"]},
    ],
    "room": [{"rule_id": "!other:example.org", "actions": []}],
    "sender": [{"rule_id": "@carol:example.org", "actions": ["notify"]}],
    "underride": [
        {"rule_id": "u_type_glob", "actions": ["notify"],
         "conditions": [{"kind": "event_match", "key": "type", "pattern": "org.*.ping"},
                        {"kind": "room_member_count", "is": ">=3"}]},
        {"rule_id": "u_perm", "actions": ["notify"],
         "conditions": [{"kind": "sender_notification_permission", "key": "room"}]},
        {"rule_id": "u_count_bad", "actions": ["notify"],
         "conditions": [{"kind": "room_member_count", "is": "lots"}]},
    ],
}

BODIES = [None, "", "hello", "Alice!", "alice", "ALICE rocks", "@room hi", "cake time",
          "cafe", "éclair", "ÉCLAIR", "Kelvin \u212a", "hello world", 5]
TYPES = ["m.room.message", "M.ROOM.MESSAGE", "m.room.encrypted", "m.call.invite",
         "m.room.member", "m.room.tombstone", "org.x.ping", "m.reaction", "m.room.server_acl",
         "m.room.message\u212a"]


def _events(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(400):
        content: dict[str, Any] = {}
        body = rng.choice(BODIES)
        if body is not None:
            content["body"] = body
        if rng.random() < 0.2:
            content["msgtype"] = rng.choice(["m.notice", "m.text", 7])
        if rng.random() < 0.2:
            content["m.mentions"] = rng.choice([{"user_ids": [ME]}, {"room": True},
                                                {"user_ids": "x"}, {}])
        if rng.random() < 0.15:
            content["flag"] = rng.choice([True, 1, "true", False])
        if rng.random() < 0.15:
            content["tags"] = rng.choice([["urgent"], ["x", "urgent"], "urgent", []])
        if rng.random() < 0.1:
            content["n"] = rng.choice([3, 3.0, True, "3", 1.5])
        if rng.random() < 0.05:
            content["x"] = None
        if rng.random() < 0.1:
            content["m.relates_to"] = {"rel_type": "m.replace", "event_id": "$e"}
        ev: dict[str, Any] = {"type": rng.choice(TYPES),
                              "room_id": rng.choice([ROOM, "!other:example.org"]),
                              "sender": rng.choice([BOB, ME, "@carol:example.org"]),
                              "content": content}
        if ev["type"] == "m.room.member" or rng.random() < 0.1:
            ev["state_key"] = rng.choice([ME, "", BOB])
            content["membership"] = rng.choice(["invite", "join"])
        out.append(ev)
    return out


RULESETS = {
    "defaults": merge_ruleset(ME),
    "user": merge_ruleset(ME, USER_RULES),
    "overrides": merge_ruleset(ME, USER_RULES, {
        ("override", ".m.rule.master"): {"enabled": False},
        ("underride", ".m.rule.message"): {"actions": ["notify", {"set_tweak": "sound",
                                                                  "value": "x"}]},
        ("override", ".m.rule.suppress_notices"): {"enabled": False},
    }),
    "master_on": merge_ruleset(ME, None, {("override", ".m.rule.master"): {"enabled": True}}),
}


@pytest.mark.parametrize("name", sorted(RULESETS))
def test_compiled_matches_reference(name: str) -> None:
    ruleset = RULESETS[name]
    compiled = compile_ruleset(ruleset)
    rng = random.Random(4)
    contexts = itertools.product([None, "Alice", "al"], [None, 2, 3, 10],
                                 [None, 0, 50, 100, math.inf],
                                 [None, {}, {"notifications": {"room": 100}},
                                  {"notifications": {"room": "0"}}])
    ctx_list = list(contexts)
    for ev in _events(rng):
        name_, count, level, pl = rng.choice(ctx_list)
        kwargs = dict(user_id=ME, display_name=name_, room_member_count=count,
                      sender_power_level=level, power_levels=pl)
        want = evaluate(ruleset, ev, **kwargs)
        got = compiled.evaluate(ev, **kwargs)
        assert got == want, (ev, kwargs)
        ref = find_matching_rule(ruleset, ev, **kwargs)
        found = compiled.find(ev, **kwargs)
        assert (found[1]["rule_id"] if found else None) == (ref[1]["rule_id"] if ref else None)


def test_compiled_returns_fresh_actions() -> None:
    compiled = compile_ruleset(RULESETS["defaults"])
    ev = {"type": "m.room.message", "room_id": ROOM, "sender": BOB,
          "content": {"body": "hi Alice", "m.mentions": {"user_ids": [ME]}}}
    kwargs = dict(user_id=ME, display_name="Alice", room_member_count=3,
                  sender_power_level=0, power_levels=None)
    first = compiled.evaluate(ev, **kwargs)
    assert first is not None
    for a in first:
        if isinstance(a, dict):
            a["mutated"] = True
    assert compiled.evaluate(ev, **kwargs) == evaluate(RULESETS["defaults"], ev, **kwargs)


def test_non_mapping_rules_fail_like_the_reference() -> None:
    broken = {"global": {"override": ["not a rule"], "underride": []}}
    ev = {"type": "m.room.message", "sender": BOB, "content": {}}
    kwargs = dict(user_id=ME, display_name=None, room_member_count=2,
                  sender_power_level=0, power_levels=None)
    with pytest.raises(AttributeError):
        evaluate(broken, ev, **kwargs)
    with pytest.raises(AttributeError):
        compile_ruleset(broken).evaluate(ev, **kwargs)
