"""Tests for protocol/push_rules.py (spec: client-server-api/modules/push.md)."""
from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from protocol.push_rules import (
    KINDS,
    PushRuleError,
    check_user_rule_id,
    condition_matches,
    default_ruleset,
    evaluate,
    find_matching_rule,
    glob_matches,
    merge_ruleset,
    notification_effect,
    required_notification_level,
    split_key_path,
    strip_historical_actions,
    tweaks,
    upsert_user_rule,
    _Context,
)

ME = "@alice:example.org"
BOB = "@bob:example.org"
ROOM = "!room:example.org"

SOUND = {"set_tweak": "sound", "value": "default"}
HIGHLIGHT = {"set_tweak": "highlight"}


def ev(type: str = "m.room.message", content: dict[str, Any] | None = None, *,
       sender: str = BOB, state_key: str | None = None, room_id: str = ROOM) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": type, "sender": sender, "room_id": room_id, "content": content or {},
        "event_id": "$e", "origin_server_ts": 1,
    }
    if state_key is not None:
        e["state_key"] = state_key
    return e


def text(body: str, **extra: Any) -> dict[str, Any]:
    return ev(content={"msgtype": "m.text", "body": body, **extra})


KW: dict[str, Any] = dict(user_id=ME, display_name="Alice Liddell", room_member_count=5,
                          sender_power_level=0, power_levels=None)


def matched(e: dict[str, Any], ruleset: dict | None = None, **kw: Any) -> str | None:
    """rule_id of the rule that wins for ``e``."""
    args = {**KW, **kw}
    found = find_matching_rule(ruleset or default_ruleset(ME), e, **args)
    return None if found is None else found[1]["rule_id"]


def actions(e: dict[str, Any], ruleset: dict | None = None, **kw: Any):
    return evaluate(ruleset or default_ruleset(ME), e, **{**KW, **kw})


def cond(c: dict[str, Any], e: dict[str, Any], **kw: Any) -> bool:
    args = {"display_name": "Alice Liddell", "room_member_count": 5,
            "sender_power_level": 0, "power_levels": None, **kw}
    return condition_matches(c, e, _Context(**args))


# ----------------------------------------------------------------------- default ruleset


def test_default_ruleset_has_api_shape_and_spec_order():
    rs = default_ruleset(ME)
    assert list(rs) == ["global"]
    assert set(rs["global"]) == set(KINDS)
    assert [r["rule_id"] for r in rs["global"]["override"]] == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
        ".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.is_room_mention",
        ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ]
    assert rs["global"]["content"] == []
    assert rs["global"]["room"] == [] and rs["global"]["sender"] == []
    assert [r["rule_id"] for r in rs["global"]["underride"]] == [
        ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
        ".m.rule.message", ".m.rule.encrypted",
    ]
    for kind in KINDS:
        for r in rs["global"][kind]:
            assert set(r) >= {"rule_id", "default", "enabled", "actions", "conditions"}
            assert r["default"] is True
            assert r["rule_id"].startswith(".")
            assert r["enabled"] is (r["rule_id"] != ".m.rule.master")


def test_default_ruleset_embeds_user_id_and_is_fresh_each_call():
    rs = default_ruleset(ME)
    by_id = {r["rule_id"]: r for r in rs["global"]["override"]}
    assert by_id[".m.rule.invite_for_me"]["conditions"][2] == {
        "kind": "event_match", "key": "state_key", "pattern": ME}
    assert by_id[".m.rule.is_user_mention"]["conditions"] == [{
        "kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
        "value": ME}]
    by_id[".m.rule.master"]["enabled"] = True
    by_id[".m.rule.is_user_mention"]["actions"].append("x")
    again = {r["rule_id"]: r for r in default_ruleset(ME)["global"]["override"]}
    assert again[".m.rule.master"]["enabled"] is False
    assert "x" not in again[".m.rule.is_user_mention"]["actions"]


def test_legacy_body_mention_rules_are_gone():
    """v1.17 removed .m.rule.contains_display_name / contains_user_name / roomnotif."""
    ids = {r["rule_id"] for k in KINDS for r in default_ruleset(ME)["global"][k]}
    assert not ids & {".m.rule.contains_display_name", ".m.rule.contains_user_name",
                      ".m.rule.roomnotif"}
    # So a body mention of the display name or "@room" is just a message.
    assert matched(text("hey Alice Liddell")) == ".m.rule.message"
    assert actions(text("@room look")) == ["notify"]


# ----------------------------------------------------------------------- default rules


def test_master_rule_disabled_by_default_and_silences_all_when_enabled():
    rs = merge_ruleset(ME, overrides={("override", ".m.rule.master"): {"enabled": True}})
    mention = text("hi", **{"m.mentions": {"user_ids": [ME]}})
    assert matched(mention) == ".m.rule.is_user_mention"
    assert matched(mention, rs) == ".m.rule.master"
    assert actions(mention, rs) == []
    assert notification_effect(actions(mention, rs)) == (False, False, None)


def test_suppress_notices():
    notice = ev(content={"msgtype": "m.notice", "body": "bot says"})
    assert matched(notice) == ".m.rule.suppress_notices"
    assert actions(notice) == []
    assert matched(text("human says")) == ".m.rule.message"


def test_invite_for_me_notifies_with_sound():
    invite = ev("m.room.member", {"membership": "invite"}, state_key=ME)
    assert matched(invite) == ".m.rule.invite_for_me"
    assert notification_effect(actions(invite)) == (True, False, "default")


def test_invite_for_someone_else_and_other_member_events_are_silent():
    other = ev("m.room.member", {"membership": "invite"}, state_key="@carol:example.org")
    join = ev("m.room.member", {"membership": "join"}, state_key=BOB)
    for e in (other, join):
        assert matched(e) == ".m.rule.member_event"
        assert actions(e) == []


def test_user_mention_via_m_mentions_highlights():
    e = text("hello", **{"m.mentions": {"user_ids": ["@x:y", ME]}})
    assert matched(e) == ".m.rule.is_user_mention"
    assert notification_effect(actions(e)) == (True, True, "default")


def test_user_mention_of_someone_else_or_malformed_is_not_a_mention():
    assert matched(text("hi", **{"m.mentions": {"user_ids": [BOB]}})) == ".m.rule.message"
    assert matched(text("hi", **{"m.mentions": {"user_ids": ME}})) == ".m.rule.message"
    assert matched(text("hi", **{"m.mentions": {}})) == ".m.rule.message"
    # A top-level "m" object with a "mentions" key is a different path.
    assert matched(text("hi", m={"mentions": {"user_ids": [ME]}})) == ".m.rule.message"


def test_room_mention_needs_power():
    e = text("everyone!", **{"m.mentions": {"room": True}})
    assert matched(e, sender_power_level=50) == ".m.rule.is_room_mention"
    assert notification_effect(actions(e, sender_power_level=50)) == (True, True, None)
    assert matched(e, sender_power_level=49) == ".m.rule.message"
    pl = {"users": {}, "notifications": {"room": 10}}
    assert matched(e, sender_power_level=10, power_levels=pl) == ".m.rule.is_room_mention"
    assert matched(e, sender_power_level=9, power_levels=pl) == ".m.rule.message"
    assert matched(e, sender_power_level=math.inf) == ".m.rule.is_room_mention"


def test_room_mention_requires_boolean_true():
    for room in ("true", 1, False, None):
        e = text("x", **{"m.mentions": {"room": room}})
        assert matched(e, sender_power_level=100) == ".m.rule.message", room


def test_tombstone_highlights_only_as_state_event():
    tomb = ev("m.room.tombstone", {"replacement_room": "!new:x"}, state_key="")
    assert matched(tomb) == ".m.rule.tombstone"
    assert notification_effect(actions(tomb)) == (True, True, None)
    assert matched(ev("m.room.tombstone", {})) is None  # no state_key: not state
    assert matched(ev("m.room.tombstone", {}, state_key="x")) is None


def test_reactions_are_silent():
    r = ev("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a",
                                           "key": "👍"}})
    assert matched(r) == ".m.rule.reaction"
    assert actions(r) == []


def test_server_acl_is_silent():
    acl = ev("m.room.server_acl", {"allow": ["*"]}, state_key="")
    assert matched(acl) == ".m.rule.room.server_acl"
    assert actions(acl) == []


def test_edits_are_silent():
    edit = text("* fixed", **{"m.new_content": {"body": "fixed"},
                              "m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}})
    assert matched(edit) == ".m.rule.suppress_edits"
    assert actions(edit) == []
    reply = text("re", **{"m.relates_to": {"m.in_reply_to": {"event_id": "$a"}}})
    assert matched(reply) == ".m.rule.message"


def test_call_invite_rings():
    call = ev("m.call.invite", {"call_id": "c", "version": 1})
    assert matched(call) == ".m.rule.call"
    assert notification_effect(actions(call)) == (True, False, "ring")


def test_one_to_one_rooms_get_sound():
    assert matched(text("hi"), room_member_count=2) == ".m.rule.room_one_to_one"
    assert notification_effect(actions(text("hi"), room_member_count=2)) == (
        True, False, "default")
    assert matched(text("hi"), room_member_count=3) == ".m.rule.message"
    assert notification_effect(actions(text("hi"), room_member_count=3)) == (
        True, False, None)


def test_encrypted_events():
    enc = ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"})
    assert matched(enc, room_member_count=2) == ".m.rule.encrypted_room_one_to_one"
    assert notification_effect(actions(enc, room_member_count=2)) == (True, False, "default")
    assert matched(enc, room_member_count=7) == ".m.rule.encrypted"
    assert actions(enc, room_member_count=7) == ["notify"]


def test_unmatched_events_return_none():
    assert actions(ev("m.room.topic", {"topic": "x"}, state_key="")) is None
    assert notification_effect(None) == (False, False, None)


def test_own_events_never_notify():
    own = text("hi", **{"m.mentions": {"user_ids": [ME]}})
    own["sender"] = ME
    assert actions(own) is None
    assert actions(own, room_member_count=2) is None


# ----------------------------------------------------------------------- conditions


def test_event_match_positive_and_negative():
    c = {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"}
    topic = lambda t: ev("m.room.topic", {"topic": t}, state_key="")  # noqa: E731
    assert cond(c, topic("Lunch plans"))
    assert cond(c, topic("LUNCH"))
    assert not cond(c, topic(" lunch"))
    assert not cond(c, topic("lunc"))
    assert not cond(c, topic(None))
    assert not cond(c, ev("m.room.topic", {}, state_key=""))


def test_event_match_star_does_not_match_absent_or_non_string():
    c = {"kind": "event_match", "key": "content.x", "pattern": "*"}
    assert cond(c, ev(content={"x": ""}))
    assert not cond(c, ev(content={}))
    assert not cond(c, ev(content={"x": 1}))
    assert not cond(c, ev(content={"x": ["a"]}))


def test_event_match_is_whole_value_except_body():
    c = {"kind": "event_match", "key": "content.msgtype", "pattern": "text"}
    assert not cond(c, text("a"))
    assert cond({"kind": "event_match", "key": "content.msgtype", "pattern": "m.TEXT"},
                text("a"))


def test_event_match_on_body_uses_word_boundaries():
    c = {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"}
    assert cond(c, text("An example event."))
    assert cond(c, text("exple"))
    assert cond(c, text("An exciting triple-whammy"))
    assert not cond(c, text("Anexample event"))
    assert not cond(c, text("examples"))
    w = {"kind": "event_match", "key": "content.body", "pattern": "cake"}
    assert cond(w, text("I like CAKE!"))
    assert cond(w, text("cake"))
    assert not cond(w, text("cakes"))
    assert not cond(w, text("pancake"))
    assert not cond(w, text("cake_lover"))  # "_" is a word character
    assert cond(w, text("über-cake"))  # "-" is a boundary


def test_glob_question_mark_and_literal_characters():
    assert glob_matches("a?c", "abc")
    assert not glob_matches("a?c", "ac")
    assert glob_matches("a.c", "a.c")
    assert not glob_matches("a.c", "abc")  # "." is literal, not a regex wildcard
    assert glob_matches("[x]", "[x]")
    assert not glob_matches("[x]", "x")
    assert glob_matches("a**b", "a-long-b")
    assert glob_matches("*", "line1\nline2")


def test_event_property_is_exact_types():
    c = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
    assert cond(c, ev("m.room.create", {"m.federate": True}, state_key=""))
    assert not cond(c, ev("m.room.create", {"m.federate": "true"}, state_key=""))
    assert not cond(c, ev("m.room.create", {"m.federate": 1}, state_key=""))
    assert not cond(c, ev("m.room.create", {}, state_key=""))
    one = {"kind": "event_property_is", "key": "content.n", "value": 1}
    assert cond(one, ev(content={"n": 1}))
    assert not cond(one, ev(content={"n": True}))
    assert not cond(one, ev(content={"n": 1.0}))
    null = {"kind": "event_property_is", "key": "content.n", "value": None}
    assert cond(null, ev(content={"n": None}))
    assert not cond(null, ev(content={}))
    s = {"kind": "event_property_is", "key": "content.s", "value": "Ab"}
    assert cond(s, ev(content={"s": "Ab"}))
    assert not cond(s, ev(content={"s": "ab"}))  # exact, not case-insensitive
    assert not cond({"kind": "event_property_is", "key": "content.s"}, ev(content={"s": None}))
    big = 2**53
    assert not cond({"kind": "event_property_is", "key": "content.n", "value": big},
                    ev(content={"n": big}))
    assert not cond({"kind": "event_property_is", "key": "content.o", "value": None},
                    ev(content={"o": {}}))


def test_event_property_contains():
    c = {"kind": "event_property_contains", "key": "content.alt_aliases",
         "value": "#myroom:example.com"}
    alias = lambda v: ev("m.room.canonical_alias", {"alt_aliases": v}, state_key="")  # noqa
    assert cond(c, alias(["#somewhere:example.org", "#myroom:example.com"]))
    assert not cond(c, alias([":example.com"]))
    assert not cond(c, alias("#myroom:example.com"))  # not an array
    assert not cond(c, ev("m.room.canonical_alias", {}, state_key=""))
    n = {"kind": "event_property_contains", "key": "content.l", "value": 1}
    assert cond(n, ev(content={"l": [{"a": 1}, [1], 1]}))  # compound entries ignored
    assert not cond(n, ev(content={"l": [True, "1"]}))


def test_contains_display_name_word_boundaries():
    c = {"kind": "contains_display_name"}
    assert cond(c, text("hey alice liddell, look"))
    assert cond(c, text("Alice Liddell"))
    assert not cond(c, text("Alice Liddells"))
    assert not cond(c, text("hey alice"))
    assert not cond(c, text("hey Alice Liddell"), display_name=None)
    assert not cond(c, text("hey Alice Liddell"), display_name="")
    assert not cond(c, ev("m.room.message", {"msgtype": "m.image"}))
    # The display name is literal text, not a glob.
    assert cond(c, text("ping a*b now"), display_name="a*b")
    assert not cond(c, text("ping axxb now"), display_name="a*b")


def test_room_member_count_operators():
    def rmc(spec: Any, n: int | None) -> bool:
        return cond({"kind": "room_member_count", "is": spec}, text("x"), room_member_count=n)
    assert rmc("2", 2) and not rmc("2", 3)
    assert rmc("==2", 2) and not rmc("==2", 1)
    assert rmc("<3", 2) and not rmc("<3", 3)
    assert rmc(">3", 4) and not rmc(">3", 3)
    assert rmc("<=3", 3) and not rmc("<=3", 4)
    assert rmc(">=3", 3) and not rmc(">=3", 2)
    for bad in ("", "=2", "two", "2.0", "<", 2, None, "!=2"):
        assert not rmc(bad, 2), bad
    assert not rmc("2", None)


def test_sender_notification_permission():
    c = {"kind": "sender_notification_permission", "key": "room"}
    assert cond(c, text("x"), sender_power_level=50)
    assert not cond(c, text("x"), sender_power_level=49)
    assert not cond(c, text("x"), sender_power_level=None)
    pl = {"notifications": {"room": "20"}}  # string levels in rooms v1-v9
    assert cond(c, text("x"), sender_power_level=20, power_levels=pl)
    pl_event = {"type": "m.room.power_levels", "state_key": "", "content":
                {"notifications": {"room": 100}}}
    assert not cond(c, text("x"), sender_power_level=99, power_levels=pl_event)
    custom = {"kind": "sender_notification_permission", "key": "custom"}
    assert cond(custom, text("x"), sender_power_level=5,
                power_levels={"notifications": {"custom": 5}})
    assert required_notification_level({"notifications": {"room": True}}, "room") == 50
    assert not cond({"kind": "sender_notification_permission"}, text("x"),
                    sender_power_level=100)


def test_unknown_condition_disables_the_rule():
    assert not cond({"kind": "org.example.unknown"}, text("x"))
    assert not cond({}, text("x"))
    rs = merge_ruleset(ME, {"override": [{"rule_id": "weird", "actions": ["notify", HIGHLIGHT],
                                          "conditions": [{"kind": "org.example.x"}]}]})
    assert matched(text("x"), rs) == ".m.rule.message"


def test_rule_with_no_conditions_always_matches():
    rs = merge_ruleset(ME, {"underride": [{"rule_id": "all", "actions": ["notify"]}]})
    assert matched(ev("m.room.topic", {"topic": "x"}, state_key=""), rs) == "all"


# ----------------------------------------------------------------------- dotted paths


def test_split_key_path_escaping():
    assert split_key_path("content.body") == ("content", "body")
    assert split_key_path("content.m\\.relates_to") == ("content", "m.relates_to")
    assert split_key_path("content.m\\\\foo") == ("content", "m\\foo")
    assert split_key_path("content.a\\x") == ("content", "a\\x")  # other escapes kept
    assert split_key_path("a\\") == ("a\\",)
    assert split_key_path("a\\\\.b") == ("a\\", "b")
    assert split_key_path("") == ("",)


def test_dotted_paths_reach_escaped_keys_in_events():
    e = ev(content={"m.relates_to": {"rel_type": "m.thread"}, "m\\foo": "bar",
                    "m": {"relates_to": {"rel_type": "other"}}})
    is_ = lambda key, v: cond({"kind": "event_property_is", "key": key, "value": v}, e)  # noqa
    assert is_("content.m\\.relates_to.rel_type", "m.thread")
    assert is_("content.m.relates_to.rel_type", "other")
    assert is_("content.m\\\\foo", "bar")
    assert not is_("content.m\\.relates_to.missing", None)
    assert not is_("content.m\\.relates_to.rel_type.deeper", "m.thread")


# ----------------------------------------------------------------------- merging / overrides


def test_merge_without_user_data_equals_defaults():
    assert merge_ruleset(ME) == default_ruleset(ME)


def test_merge_priority_master_then_user_then_server_defaults():
    user = {
        "override": [{"rule_id": "o1", "conditions": [], "actions": []},
                     {"rule_id": "o2", "conditions": [], "actions": []}],
        "content": [{"rule_id": "c1", "pattern": "cake", "actions": ["notify"]}],
        "room": [{"rule_id": ROOM, "actions": []}],
        "sender": [{"rule_id": BOB, "actions": ["notify"]}],
        "underride": [{"rule_id": "u1", "conditions": [], "actions": ["notify"]}],
    }
    g = merge_ruleset(ME, user)["global"]
    ids = [r["rule_id"] for r in g["override"]]
    assert ids[:4] == [".m.rule.master", "o1", "o2", ".m.rule.suppress_notices"]
    assert [r["rule_id"] for r in g["underride"]][:2] == ["u1", ".m.rule.call"]
    assert g["content"] == [{"rule_id": "c1", "default": False, "enabled": True,
                             "actions": ["notify"], "pattern": "cake"}]
    assert g["room"] == [{"rule_id": ROOM, "default": False, "enabled": True, "actions": []}]
    assert g["sender"][0]["rule_id"] == BOB
    assert g["override"][1] == {"rule_id": "o1", "default": False, "enabled": True,
                                "actions": [], "conditions": []}


def test_user_override_beats_default_override_but_not_master():
    quiet = {"rule_id": "quiet", "actions": [],
             "conditions": [{"kind": "event_match", "key": "room_id", "pattern": ROOM}]}
    rs = merge_ruleset(ME, {"override": [quiet]})
    mention = text("hi", **{"m.mentions": {"user_ids": [ME]}})
    assert matched(mention, rs) == "quiet"
    master_on = merge_ruleset(ME, {"override": [quiet]},
                              {("override", ".m.rule.master"): {"enabled": True}})
    assert matched(mention, master_on) == ".m.rule.master"


def test_kind_order_content_room_sender_before_underride():
    user = {
        "content": [{"rule_id": "cake", "pattern": "cake", "actions": ["notify", SOUND]}],
        "room": [{"rule_id": ROOM, "actions": []}],
        "sender": [{"rule_id": BOB, "actions": ["notify", HIGHLIGHT]}],
    }
    rs = merge_ruleset(ME, user)
    assert matched(text("cake time"), rs) == "cake"
    assert matched(text("tea time"), rs) == ROOM
    assert actions(text("tea time"), rs) == []
    elsewhere = text("tea time")
    elsewhere["room_id"] = "!other:example.org"
    assert matched(elsewhere, rs) == BOB
    carol = text("tea time")
    carol["room_id"], carol["sender"] = "!other:example.org", "@carol:example.org"
    assert matched(carol, rs) == ".m.rule.message"
    # Default override rules still beat user content rules.
    notice = ev(content={"msgtype": "m.notice", "body": "cake"})
    assert matched(notice, rs) == ".m.rule.suppress_notices"


def test_custom_content_rule_glob_on_word_boundaries():
    rs = merge_ruleset(ME, {"content": [
        {"rule_id": "nocake", "pattern": "cake*lie", "actions": ["notify"]},
        {"rule_id": "cake", "pattern": "cake", "actions": ["notify", {"set_tweak": "sound",
                                                                      "value": "cake.wav"}]},
    ]})
    assert matched(text("the cake is a lie!"), rs) == "nocake"
    assert notification_effect(actions(text("cake?"), rs)) == (True, False, "cake.wav")
    assert matched(text("cupcakes"), rs) == ".m.rule.message"
    assert matched(ev(content={"msgtype": "m.text"}), rs) == ".m.rule.message"
    broken = merge_ruleset(ME, {"content": [{"rule_id": "nopattern", "actions": ["notify"]}]})
    assert matched(text("anything"), broken) == ".m.rule.message"


def test_disabled_default_rule_falls_through():
    rs = merge_ruleset(ME, overrides={("override", ".m.rule.suppress_notices"):
                                      {"enabled": False}})
    notice = ev(content={"msgtype": "m.notice", "body": "bot"})
    assert matched(notice, rs) == ".m.rule.message"
    g = {r["rule_id"]: r for r in rs["global"]["override"]}
    assert g[".m.rule.suppress_notices"]["enabled"] is False


def test_disabled_user_rule_never_matches():
    rs = merge_ruleset(ME, {"sender": [{"rule_id": BOB, "actions": [], "enabled": False}]})
    assert matched(text("hi"), rs) == ".m.rule.message"
    rs2 = merge_ruleset(ME, {"sender": [{"rule_id": BOB, "actions": []}]},
                        {("sender", BOB): {"enabled": False}})
    assert matched(text("hi"), rs2) == ".m.rule.message"


def test_changed_actions_on_default_rule():
    rs = merge_ruleset(ME, overrides={
        ("underride", ".m.rule.message"): {"actions": ["notify", SOUND]},
        ("override", ".m.rule.is_user_mention"): {"actions": ["dont_notify"]},
    })
    assert notification_effect(actions(text("hi"), rs)) == (True, False, "default")
    mention = text("hi", **{"m.mentions": {"user_ids": [ME]}})
    assert actions(mention, rs) == []
    assert {r["rule_id"]: r for r in rs["global"]["override"]}[
        ".m.rule.is_user_mention"]["actions"] == []


def test_overrides_for_unknown_rules_and_kinds_are_ignored():
    rs = merge_ruleset(ME, overrides={("override", "gone"): {"enabled": False},
                                      ("content", ".m.rule.message"): {"actions": []}})
    assert rs == default_ruleset(ME)


def test_user_rules_cannot_take_the_server_namespace():
    rs = merge_ruleset(ME, {"override": [{"rule_id": ".m.rule.master", "actions": [],
                                          "conditions": [], "enabled": True}]})
    assert rs == default_ruleset(ME)


def test_merge_does_not_mutate_inputs():
    user = {"override": [{"rule_id": "o", "actions": ["notify", "coalesce"],
                          "conditions": [{"kind": "event_match", "key": "type",
                                          "pattern": "x"}]}]}
    ov = {("override", "o"): {"enabled": False}}
    before = copy.deepcopy((user, ov))
    rs = merge_ruleset(ME, user, ov)
    rs["global"]["override"][1]["conditions"][0]["pattern"] = "changed"
    assert (user, ov) == before


def test_evaluate_accepts_inner_ruleset():
    inner = default_ruleset(ME)["global"]
    assert evaluate(inner, text("hi"), **KW) == ["notify"]


# ----------------------------------------------------------------------- actions


def test_historical_actions_are_stripped():
    assert strip_historical_actions(["dont_notify"]) == []
    assert strip_historical_actions(["notify", "coalesce", SOUND]) == ["notify", SOUND]
    rs = merge_ruleset(ME, {"override": [{"rule_id": "old", "actions": ["dont_notify"],
                                          "conditions": []}]})
    assert rs["global"]["override"][1]["actions"] == []
    raw = {"override": [{"rule_id": "old", "enabled": True, "actions": ["coalesce", "notify"],
                         "conditions": []}]}
    assert evaluate(raw, text("x"), **KW) == ["notify"]


def test_notification_effect_and_tweaks():
    assert notification_effect([]) == (False, False, None)
    assert notification_effect(["notify"]) == (True, False, None)
    assert notification_effect(["notify", HIGHLIGHT]) == (True, True, None)
    assert notification_effect(["notify", {"set_tweak": "highlight", "value": False}]) == (
        True, False, None)
    assert notification_effect(["notify", {"set_tweak": "highlight", "value": "yes"}]) == (
        True, False, None)
    assert notification_effect([HIGHLIGHT]) == (False, True, None)
    assert notification_effect(["notify", {"set_tweak": "sound", "value": 3}]) == (
        True, False, None)
    assert tweaks(["notify", SOUND, HIGHLIGHT, {"set_tweak": "led", "value": "red"},
                   {"set_tweak": "novalue"}]) == {
        "sound": "default", "highlight": True, "led": "red"}


# ----------------------------------------------------------------------- rule editing


def test_check_user_rule_id():
    check_user_rule_id("nocake")
    for bad in ("", ".m.rule.x", "a/b", "a\\b"):
        with pytest.raises(PushRuleError):
            check_user_rule_id(bad)


def test_upsert_user_rule_positions():
    rules = [{"rule_id": "a", "actions": []}, {"rule_id": "b", "actions": []}]
    new = upsert_user_rule(rules, {"rule_id": "n", "actions": ["notify"]})
    assert [r["rule_id"] for r in new] == ["n", "a", "b"]
    assert new[0]["enabled"] is True
    assert [r["rule_id"] for r in rules] == ["a", "b"]  # input untouched
    same = upsert_user_rule(rules, {"rule_id": "b", "actions": ["notify"]})
    assert [r["rule_id"] for r in same] == ["a", "b"] and same[1]["actions"] == ["notify"]
    assert [r["rule_id"] for r in upsert_user_rule(rules, {"rule_id": "n", "actions": []},
                                                   after="a")] == ["a", "n", "b"]
    assert [r["rule_id"] for r in upsert_user_rule(rules, {"rule_id": "b", "actions": []},
                                                   before="a")] == ["b", "a"]
    assert [r["rule_id"] for r in upsert_user_rule(rules, {"rule_id": "n", "actions": []},
                                                   before="b", after="a")] == ["a", "n", "b"]
    with pytest.raises(PushRuleError):
        upsert_user_rule(rules, {"rule_id": "n", "actions": []}, before="missing")
    with pytest.raises(PushRuleError):
        upsert_user_rule(rules, {"rule_id": ".m.rule.master", "actions": []})


def test_word_boundary_is_ascii_per_spec():
    """push.md: a boundary is any character not in [A-Za-z0-9_], so non-ASCII letters count."""
    w = {"kind": "event_match", "key": "content.body", "pattern": "cake"}
    assert cond(w, text("écake"))
    assert cond(w, text("CAKEé"))
    assert cond({"kind": "event_match", "key": "content.body", "pattern": "ÉCLAIR"},
                text("an éclair"))  # case-insensitive beyond ASCII


def test_returned_actions_are_copies():
    rs = default_ruleset(ME)
    got = actions(text("hi"), rs, room_member_count=2)
    got[1]["value"] = "changed"
    assert actions(text("hi"), rs, room_member_count=2)[1] == SOUND
