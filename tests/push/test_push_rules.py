"""Push rules API: the default ruleset, CRUD and ordering of user rules, enabled/actions on
default and user rules, the spec's errors, and ``m.push_rules`` account data in /sync."""
from tests.push.conftest import V, user


def ids(ruleset, kind):
    return [r["rule_id"] for r in ruleset["global"][kind]]


def test_defaults_present(app):
    bob = user(app, "bob")
    rules = bob.req("GET", f"{V}/pushrules/")
    override = ids(rules, "override")
    assert override[0] == ".m.rule.master"
    for rid in (".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
                ".m.rule.is_user_mention", ".m.rule.is_room_mention", ".m.rule.tombstone",
                ".m.rule.reaction", ".m.rule.suppress_edits"):
        assert rid in override
    assert ".m.rule.message" in ids(rules, "underride")
    mention = next(r for r in rules["global"]["override"]
                   if r["rule_id"] == ".m.rule.is_user_mention")
    assert mention["default"] is True and mention["enabled"] is True
    assert mention["conditions"][0]["value"] == bob.user_id
    assert bob.req("GET", f"{V}/pushrules/global/") == rules["global"]
    got = bob.req("GET", bob.rule_path("override", ".m.rule.is_room_mention"))
    assert got["rule_id"] == ".m.rule.is_room_mention"


def test_put_get_update_delete_user_rule(app):
    bob = user(app, "bob")
    path = bob.rule_path("content", "cake")
    bob.req("PUT", path, {"pattern": "cake*lie", "actions": ["notify"]})
    assert bob.req("GET", path) == {"rule_id": "cake", "default": False, "enabled": True,
                                   "pattern": "cake*lie", "actions": ["notify"]}
    bob.req("PUT", path, {"pattern": "pie", "actions": ["dont_notify"]})
    assert bob.req("GET", path)["pattern"] == "pie"
    assert bob.req("GET", path)["actions"] == []  # historical actions are dropped
    bob.req("DELETE", path)
    err = bob.req("GET", path, status=404)
    assert err["errcode"] == "M_NOT_FOUND"
    assert bob.req("DELETE", path, status=404)["errcode"] == "M_NOT_FOUND"


def test_ordering_with_before_and_after(app):
    bob = user(app, "bob")
    rule = {"conditions": [{"kind": "event_match", "key": "type", "pattern": "x"}],
            "actions": ["notify"]}
    for rid in ("a", "b"):
        bob.req("PUT", bob.rule_path("override", rid), rule)
    rules = bob.req("GET", f"{V}/pushrules/")
    # new rules become the most important user rules; master stays above everything
    assert ids(rules, "override")[:3] == [".m.rule.master", "b", "a"]
    bob.req("PUT", bob.rule_path("override", "c") + "?before=a", rule)
    bob.req("PUT", bob.rule_path("override", "d") + "?after=a", rule)
    assert ids(bob.req("GET", f"{V}/pushrules/"), "override")[:5] == [
        ".m.rule.master", "b", "c", "a", "d"]
    bob.req("PUT", bob.rule_path("override", "b") + "?after=d", rule)  # move
    assert ids(bob.req("GET", f"{V}/pushrules/"), "override")[1:5] == ["c", "a", "d", "b"]
    assert ids(bob.req("GET", f"{V}/pushrules/"), "override")[5] == ".m.rule.suppress_notices"
    err = bob.req("PUT", bob.rule_path("override", "e") + "?before=nope", rule, status=400)
    assert "nope" in err["error"]
    bob.req("PUT", bob.rule_path("override", "e") + "?before=.m.rule.member_event", rule,
            status=400)


def test_bad_requests(app):
    bob = user(app, "bob")
    e = bob.req("PUT", bob.rule_path("override", ".m.rule.mine"), {"actions": []}, status=400)
    assert e["errcode"] == "M_INVALID_PARAM"
    e = bob.req("PUT", bob.rule_path("sideways", "x"), {"actions": []}, status=400)
    assert e["errcode"] == "M_INVALID_PARAM"
    e = bob.req("GET", bob.rule_path("sideways", "x"), status=400)
    assert e["errcode"] == "M_INVALID_PARAM"
    e = bob.req("PUT", f"{V}/pushrules/device/content/x", {"actions": []}, status=400)
    assert e["errcode"] == "M_INVALID_PARAM"
    bob.req("PUT", bob.rule_path("content", "x"), {"pattern": "x"}, status=400)
    bob.req("PUT", bob.rule_path("content", "x"), {"actions": ["notify"]}, status=400)
    bob.req("PUT", bob.rule_path("content", "x"), {"pattern": "x", "actions": ["boom"]},
            status=400)
    bob.req("PUT", bob.rule_path("content", "x"), {"pattern": "x", "actions": "notify"},
            status=400)
    e = bob.req("DELETE", bob.rule_path("override", ".m.rule.master"), status=400)
    assert e["errcode"] == "M_INVALID_PARAM"
    assert bob.req("GET", bob.rule_path("override", "nope"), status=404)["errcode"] == \
        "M_NOT_FOUND"
    bob.req("GET", f"{V}/pushrules/global/override/nope/enabled", status=404)
    bob.req("PUT", bob.rule_path("override", "nope", "enabled"), {"enabled": True}, status=404)
    bob.req("PUT", bob.rule_path("override", ".m.rule.master", "enabled"), {"enabled": "yes"},
            status=400)
    bob.req("PUT", bob.rule_path("override", "nope", "actions"), {"actions": []}, status=404)
    bob.c.get(f"{V}/pushrules/")  # no token
    assert bob.c.get(f"{V}/pushrules/").status_code == 401


def test_enabled_and_actions_on_default_and_user_rules(app):
    bob = user(app, "bob")
    master = bob.rule_path("override", ".m.rule.master")
    assert bob.req("GET", master + "/enabled") == {"enabled": False}
    bob.req("PUT", master + "/enabled", {"enabled": True})
    assert bob.req("GET", master + "/enabled") == {"enabled": True}
    msg = bob.rule_path("underride", ".m.rule.message")
    bob.req("PUT", msg + "/actions", {"actions": ["notify", {"set_tweak": "sound",
                                                             "value": "bing"}]})
    assert bob.req("GET", msg + "/actions") == {
        "actions": ["notify", {"set_tweak": "sound", "value": "bing"}]}
    assert bob.req("GET", msg)["default"] is True
    mine = bob.rule_path("sender", "@alice:test.local")
    bob.req("PUT", mine, {"actions": ["notify"]})
    bob.req("PUT", mine + "/enabled", {"enabled": False})
    assert bob.req("GET", mine) == {"rule_id": "@alice:test.local", "default": False,
                                   "enabled": False, "actions": ["notify"]}
    bob.req("PUT", mine, {"actions": []})  # an update keeps the switch
    assert bob.req("GET", mine + "/enabled") == {"enabled": False}
    bob.req("PUT", mine + "/actions", {"actions": ["notify"]})
    assert bob.req("GET", mine + "/actions") == {"actions": ["notify"]}
    # another user's rules are untouched
    assert user(app, "carol").req("GET", master + "/enabled") == {"enabled": False}


def test_rule_changes_reach_sync_account_data(app):
    bob = user(app, "bob")
    since = bob.sync()["next_batch"]
    bob.req("PUT", bob.rule_path("room", "!r:test.local"), {"actions": []})
    resp = bob.sync(since=since)
    events = {e["type"]: e["content"] for e in resp["account_data"]["events"]}
    assert "!r:test.local" in ids(events["m.push_rules"], "room")
    # clients cannot write m.push_rules as plain account data
    bob.req("PUT", f"{V}/user/{bob.user_id}/account_data/m.push_rules", {}, status=405)


def test_hooked_user_actor_path(app, monkeypatch):
    """With the 3-line hook in UserActor, writes are plain asks to the user's actor."""
    from actors.user import UserActor
    from actors.user_push import PUSH_RULE_MESSAGES, handle_push_message

    original = UserActor.handle
    seen = []

    def handle(self, msg):
        if isinstance(msg, PUSH_RULE_MESSAGES):
            seen.append(type(msg).__name__)
            return handle_push_message(self, msg)
        return original(self, msg)

    monkeypatch.setattr(UserActor, "handle", handle)
    monkeypatch.setattr(UserActor, "handles_push_rules", True, raising=False)
    bob = user(app, "bob")
    bob.req("PUT", bob.rule_path("content", "pie"), {"pattern": "pie", "actions": ["notify"]})
    bob.req("PUT", bob.rule_path("content", "pie", "enabled"), {"enabled": False})
    assert bob.req("DELETE", bob.rule_path("content", "nope"), status=404)
    assert bob.req("GET", bob.rule_path("content", "pie"))["enabled"] is False
    assert seen == ["PutPushRule", "SetPushRuleEnabled", "DeletePushRule"]
