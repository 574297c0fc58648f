"""The redaction algorithm per room version (rooms/fragments/*-redactions.md, rooms/v8.md)."""
import copy

import pytest

from protocol.redaction import redact, redact_shallow
from protocol.room_versions import KNOWN_ROOM_VERSIONS

RV = KNOWN_ROOM_VERSIONS
ALL = [str(i) for i in range(1, 13)]

TOP = {"event_id": "$e:x", "type": "m.room.message", "room_id": "!r:x", "sender": "@u:x",
       "state_key": "", "hashes": {"sha256": "h"}, "signatures": {"x": {"ed25519:1": "s"}},
       "depth": 4, "prev_events": ["$p"], "auth_events": ["$a"], "origin": "x",
       "origin_server_ts": 9, "membership": "join", "prev_state": [], "unsigned": {"age": 1},
       "redacts": "$t", "extra": 1, "content": {}}


def _content_after(rv_id, type_, content):
    return redact({"type": type_, "content": content}, RV[rv_id])["content"]


@pytest.mark.parametrize("v", ALL)
def test_top_level_keys(v):
    out = redact(TOP, RV[v])
    always = {"event_id", "type", "room_id", "sender", "state_key", "hashes", "signatures",
              "depth", "prev_events", "auth_events", "origin_server_ts", "content"}
    old = {"origin", "membership", "prev_state"}
    expected = always | (old if int(v) < 11 else set())
    assert set(out) == expected
    assert "unsigned" not in out and "redacts" not in out and "extra" not in out


@pytest.mark.parametrize("v", ALL)
def test_message_content_is_emptied(v):
    assert _content_after(v, "m.room.message", {"body": "secret", "msgtype": "m.text"}) == {}
    assert _content_after(v, "org.example.custom", {"membership": "join"}) == {}


@pytest.mark.parametrize("v", ALL)
def test_member_content(v):
    content = {"membership": "join", "displayname": "D", "avatar_url": "mxc://a/b",
               "join_authorised_via_users_server": "@r:x",
               "third_party_invite": {"display_name": "d", "signed": {"token": "t"}}}
    expected = {"membership": "join"}
    if int(v) >= 9:
        expected["join_authorised_via_users_server"] = "@r:x"
    if int(v) >= 11:
        expected["third_party_invite"] = {"signed": {"token": "t"}}
    assert _content_after(v, "m.room.member", content) == expected


def test_v11_third_party_invite_edge_cases():
    assert _content_after("11", "m.room.member", {"membership": "invite",
                                                  "third_party_invite": {"x": 1}}) == {
        "membership": "invite", "third_party_invite": {}}
    assert _content_after("11", "m.room.member", {"membership": "invite",
                                                  "third_party_invite": "str"}) == {
        "membership": "invite"}


@pytest.mark.parametrize("v", ALL)
def test_create_content(v):
    content = {"creator": "@u:x", "room_version": v, "m.federate": False,
               "additional_creators": ["@b:x"], "type": "m.space"}
    out = _content_after(v, "m.room.create", content)
    assert out == (content if int(v) >= 11 else {"creator": "@u:x"})


@pytest.mark.parametrize("v", ALL)
def test_join_rules_content(v):
    content = {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1}
    expected = {"join_rule": "restricted"}
    if int(v) >= 8:
        expected["allow"] = content["allow"]
    assert _content_after(v, "m.room.join_rules", content) == expected


@pytest.mark.parametrize("v", ALL)
def test_power_levels_content(v):
    kept = {"ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "kick": 50,
            "redact": 50, "state_default": 50, "users": {"@u:x": 100}, "users_default": 0}
    content = dict(kept, invite=0, notifications={"room": 50}, historical=100)
    expected = dict(kept, invite=0) if int(v) >= 11 else kept
    assert _content_after(v, "m.room.power_levels", content) == expected


@pytest.mark.parametrize("v", ALL)
def test_aliases_content_only_kept_before_v6(v):
    out = _content_after(v, "m.room.aliases", {"aliases": ["#a:x"], "other": 1})
    assert out == ({"aliases": ["#a:x"]} if int(v) <= 5 else {})


@pytest.mark.parametrize("v", ALL)
def test_history_visibility_content(v):
    out = _content_after(v, "m.room.history_visibility",
                         {"history_visibility": "shared", "x": 1})
    assert out == {"history_visibility": "shared"}


@pytest.mark.parametrize("v", ALL)
def test_redaction_event_content(v):
    out = _content_after(v, "m.room.redaction", {"redacts": "$t", "reason": "spam"})
    assert out == ({"redacts": "$t"} if int(v) >= 11 else {})


@pytest.mark.parametrize("v", ALL)
def test_state_events_not_special_are_emptied(v):
    for t in ["m.room.name", "m.room.topic", "m.room.third_party_invite", "m.room.encryption",
              "m.room.canonical_alias", "m.room.guest_access", "m.room.server_acl"]:
        assert _content_after(v, t, {"name": "n", "topic": "t", "algorithm": "a"}) == {}


def test_redact_returns_deep_copy_and_does_not_mutate_input():
    ev = {"type": "m.room.power_levels", "content": {"users": {"@u:x": 100}, "x": 1},
          "prev_events": ["$p"], "signatures": {"x": {"k": "s"}}}
    snapshot = copy.deepcopy(ev)
    out = redact(ev, RV["10"])
    assert ev == snapshot
    out["content"]["users"]["@v:x"] = 1
    out["prev_events"].append("$q")
    assert ev == snapshot
    shallow = redact_shallow(ev, RV["10"])
    assert shallow == redact(ev, RV["10"])
    assert shallow["prev_events"] is ev["prev_events"]


def test_redaction_is_idempotent_and_content_always_present():
    for v in ALL:
        once = redact(TOP, RV[v])
        assert redact(once, RV[v]) == once
        assert redact({"type": "m.room.message"}, RV[v]) == {"type": "m.room.message",
                                                             "content": {}}
        assert redact({"type": "m.room.member", "content": "junk"}, RV[v])["content"] == {}
