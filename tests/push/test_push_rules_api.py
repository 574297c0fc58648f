"""Every path and error of the push rules API (pushrules.yaml, and Synapse where the spec is
silent): listings per scope and per kind with and without the trailing slash, one rule and
its attributes, before/after, and the 400s, 404s and 413s.  One app for the module; each
test has users of its own."""
import pytest

from tests.apps import app_factory
from tests.push.conftest import PUSH_CONFIG, V, user

R = f"{V}/pushrules"
COND = [{"kind": "event_match", "key": "type", "pattern": "m.cake"}]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("push_rules_api"))
    make = next(factory)
    yield make(push=dict(PUSH_CONFIG))
    next(factory, None)


def ids(rules):
    return [r["rule_id"] for r in rules]


def test_listings_with_and_without_the_trailing_slash(app):
    u = user(app, "lister")
    everything = u.req("GET", f"{R}/")
    assert set(everything) == {"global"}
    assert set(everything["global"]) == {"override", "content", "room", "sender", "underride"}
    assert u.req("GET", R) == everything
    assert u.req("GET", f"{R}/global/") == everything["global"]
    assert u.req("GET", f"{R}/global") == everything["global"]
    for kind in ("override", "content", "room", "sender", "underride"):
        assert u.req("GET", f"{R}/global/{kind}/") == everything["global"][kind]
        assert u.req("GET", f"{R}/global/{kind}") == everything["global"][kind]
    assert ids(u.req("GET", f"{R}/global/underride/"))[-2:] == [".m.rule.message",
                                                                ".m.rule.encrypted"]
    # a user rule shows up in its kind's listing, first among user rules
    u.req("PUT", f"{R}/global/override/cake", {"conditions": COND, "actions": ["notify"]})
    assert ids(u.req("GET", f"{R}/global/override/"))[:2] == [".m.rule.master", "cake"]


def test_errors_of_the_listing_paths(app):
    u = user(app, "lister2")
    for path in (f"{R}/device/", f"{R}/device", f"{R}/device/override/",
                 f"{R}/global/sideways/", f"{R}/global/sideways"):
        assert u.req("GET", path, status=400)["errcode"] == "M_INVALID_PARAM", path
    # a write needs a rule id
    for method in ("PUT", "DELETE"):
        for path in (f"{R}/", f"{R}/global/", f"{R}/global/override/"):
            e = u.req(method, path, {"actions": []}, status=400)
            assert e["errcode"] == "M_UNRECOGNIZED", (method, path)
    assert u.c.get(f"{R}/global/override/").status_code == 401  # no token


def test_one_rule_and_its_attributes(app):
    u = user(app, "getter")
    u.req("PUT", u.rule_path("content", "nocake"), {"pattern": "cake*lie", "actions": []})
    rule = {"rule_id": "nocake", "default": False, "enabled": True, "pattern": "cake*lie",
            "actions": []}
    assert u.req("GET", u.rule_path("content", "nocake")) == rule
    assert u.req("GET", u.rule_path("content", "nocake", "enabled")) == {"enabled": True}
    assert u.req("GET", u.rule_path("content", "nocake", "actions")) == {"actions": []}
    assert u.req("GET", u.rule_path("content", "nocake", "pattern")) == {"pattern": "cake*lie"}
    e = u.req("GET", u.rule_path("content", "nocake", "colour"), status=400)
    assert e["errcode"] == "M_UNRECOGNIZED"
    # a default rule, by its kind only
    got = u.req("GET", u.rule_path("underride", ".m.rule.message"))
    assert got["default"] is True and got["actions"] == ["notify"]
    assert u.req("GET", u.rule_path("override", ".m.rule.message"), status=404)["errcode"] \
        == "M_NOT_FOUND"
    assert u.req("GET", u.rule_path("content", "nocake2"), status=404)["errcode"] == \
        "M_NOT_FOUND"
    assert u.req("GET", u.rule_path("content", "nope", "enabled"), status=404)["errcode"] \
        == "M_NOT_FOUND"
    assert u.req("GET", u.rule_path("sideways", "nocake"), status=400)["errcode"] == \
        "M_INVALID_PARAM"
    # DELETE of an attribute is not a thing
    r = u.c.delete(u.rule_path("content", "nocake", "enabled"), headers=u.h)
    assert r.status_code == 405 and r.get_json()["errcode"] == "M_UNRECOGNIZED"


def test_put_validation(app):
    u = user(app, "putter")
    cases = [
        ("override", "x", {"actions": ["notify"]}, "M_MISSING_PARAM"),          # no conditions
        ("underride", "x", {"actions": []}, "M_MISSING_PARAM"),
        ("override", "x", {"conditions": {}, "actions": []}, "M_INVALID_PARAM"),
        ("override", "x", {"conditions": [{"key": "type"}], "actions": []}, "M_INVALID_PARAM"),
        ("override", "x", {"conditions": ["type"], "actions": []}, "M_INVALID_PARAM"),
        ("override", "x", {"conditions": [{"kind": "event_match", "key": "type"}],
                           "actions": []}, "M_INVALID_PARAM"),              # no pattern
        ("override", "x", {"conditions": [{"kind": "room_member_count", "is": "two"}],
                           "actions": []}, "M_INVALID_PARAM"),
        ("override", "x", {"conditions": [{"kind": "event_property_is", "key": "a",
                                           "value": {"b": 1}}], "actions": []},
         "M_INVALID_PARAM"),
        ("content", "x", {"actions": ["notify"]}, "M_MISSING_PARAM"),          # no pattern
        ("content", "x", {"pattern": 5, "actions": ["notify"]}, "M_INVALID_PARAM"),
        ("content", "x", {"pattern": "x"}, "M_MISSING_PARAM"),                 # no actions
        ("content", "x", {"pattern": "x", "actions": ["boom"]}, "M_INVALID_PARAM"),
        ("content", "x", {"pattern": "x", "actions": [{"tweak": 1}]}, "M_INVALID_PARAM"),
        ("content", "x", {"pattern": "x", "actions": "notify"}, "M_BAD_JSON"),
        ("room", ".m.rule.mine", {"actions": []}, "M_INVALID_PARAM"),          # reserved id
        ("room", "a\\b", {"actions": []}, "M_INVALID_PARAM"),
        ("room", "a%2Fb", {"actions": []}, "M_INVALID_PARAM"),                 # a slash
        ("sideways", "x", {"actions": []}, "M_INVALID_PARAM"),
    ]
    for kind, rid, body, errcode in cases:
        path = f"{R}/global/{kind}/{rid}"
        assert u.req("PUT", path, body, status=400)["errcode"] == errcode, (kind, rid, body)
    assert u.req("PUT", f"{R}/device/room/x", {"actions": []}, status=400)["errcode"] == \
        "M_INVALID_PARAM"
    # unknown condition kinds are kept (they never match); dont_notify is accepted
    u.req("PUT", u.rule_path("override", "future"),
          {"conditions": [{"kind": "org.example.future"}], "actions": ["dont_notify"]})
    assert u.req("GET", u.rule_path("override", "future"))["conditions"] == [
        {"kind": "org.example.future"}]
    # an empty conditions list is a rule that always matches
    u.req("PUT", u.rule_path("override", "always"), {"conditions": [], "actions": []})
    # room and sender rules ignore conditions and pattern
    u.req("PUT", u.rule_path("sender", "@x:test.local"), {"actions": [], "pattern": "p"})
    assert u.req("GET", u.rule_path("sender", "@x:test.local")) == {
        "rule_id": "@x:test.local", "default": False, "enabled": True, "actions": []}
    # Synapse's limits: rule id 300 bytes, conditions + actions 1024 bytes
    assert u.req("PUT", u.rule_path("room", "r" * 301), {"actions": []},
                 status=413)["errcode"] == "M_TOO_LARGE"
    big = [{"kind": "event_match", "key": "content.body", "pattern": "x" * 1100}]
    assert u.req("PUT", u.rule_path("override", "big"), {"conditions": big, "actions": []},
                 status=413)["errcode"] == "M_TOO_LARGE"
    listed = ids(u.req("GET", f"{R}/global/override/"))
    assert "x" not in listed and "big" not in listed


def test_order_new_rules_first_and_before_after(app):
    u = user(app, "orderer")

    def put(rid, query="", status=200):
        return u.req("PUT", u.rule_path("room", rid) + query, {"actions": []}, status=status)

    def order():
        return ids(u.req("GET", f"{R}/global/room/"))

    for rid in ("!a", "!b", "!c"):
        put(rid)
    assert order() == ["!c", "!b", "!a"]           # newer before older
    put("!a", "")                                  # an update keeps its place
    assert order() == ["!c", "!b", "!a"]
    put("!d", "?after=!c")
    assert order() == ["!c", "!d", "!b", "!a"]
    put("!e", "?before=!a")
    assert order() == ["!c", "!d", "!b", "!e", "!a"]
    put("!c", "?before=!a&after=!d")               # both: before wins; a move
    assert order() == ["!d", "!b", "!e", "!c", "!a"]
    put("!b", "?before=!b")                        # relative to itself: stays
    assert order() == ["!d", "!b", "!e", "!c", "!a"]
    e = put("!f", "?before=!nope", status=400)
    assert e["errcode"] == "M_UNKNOWN" and "!nope" in e["error"]
    # not relative to a server-default rule, nor to a rule of another kind
    put("!f", "?after=.m.rule.master", status=400)
    u.req("PUT", u.rule_path("sender", "@s:test.local"), {"actions": []})
    put("!f", "?before=@s:test.local", status=400)
    assert "!f" not in order()
    # enabled survives an update; a new rule is enabled
    u.req("PUT", u.rule_path("room", "!d", "enabled"), {"enabled": False})
    put("!d")
    assert u.req("GET", u.rule_path("room", "!d", "enabled")) == {"enabled": False}
    assert u.req("GET", u.rule_path("room", "!e", "enabled")) == {"enabled": True}


def test_enabled_and_actions_of_default_and_user_rules(app):
    u = user(app, "switcher")
    for rid, kind in ((".m.rule.suppress_notices", "override"), (".m.rule.call", "underride")):
        u.req("PUT", u.rule_path(kind, rid, "enabled"), {"enabled": False})
        assert u.req("GET", u.rule_path(kind, rid, "enabled")) == {"enabled": False}
        u.req("PUT", u.rule_path(kind, rid, "actions"), {"actions": ["notify"]})
        got = u.req("GET", u.rule_path(kind, rid))
        assert (got["default"], got["enabled"], got["actions"]) == (True, False, ["notify"])
    errors = [
        ("PUT", u.rule_path("override", ".m.rule.nope", "enabled"), {"enabled": True}, 404),
        ("PUT", u.rule_path("override", ".m.rule.call", "enabled"), {"enabled": True}, 404),
        ("PUT", u.rule_path("override", "nope", "actions"), {"actions": []}, 404),
        ("PUT", u.rule_path("override", ".m.rule.master", "enabled"), {"enabled": "no"}, 400),
        ("PUT", u.rule_path("override", ".m.rule.master", "enabled"), {}, 400),
        ("PUT", u.rule_path("override", ".m.rule.master", "actions"), {}, 400),
        ("PUT", u.rule_path("override", ".m.rule.master", "actions"), {"actions": ["x"]}, 400),
        ("PUT", u.rule_path("override", ".m.rule.master", "colour"), {"colour": 1}, 400),
        ("PUT", u.rule_path("sideways", ".m.rule.master", "enabled"), {"enabled": True}, 400),
    ]
    for method, path, body, status in errors:
        u.req(method, path, body, status=status)
    assert u.req("GET", u.rule_path("override", ".m.rule.master"))["enabled"] is False


def test_delete(app):
    u = user(app, "deleter")
    u.req("PUT", u.rule_path("room", "!gone"), {"actions": []})
    u.req("PUT", u.rule_path("room", "!gone", "enabled"), {"enabled": False})
    u.req("DELETE", u.rule_path("room", "!gone"))
    assert u.req("GET", u.rule_path("room", "!gone"), status=404)["errcode"] == "M_NOT_FOUND"
    assert u.req("DELETE", u.rule_path("room", "!gone"), status=404)["errcode"] == \
        "M_NOT_FOUND"
    # re-created: enabled again (the old switch went with the rule)
    u.req("PUT", u.rule_path("room", "!gone"), {"actions": []})
    assert u.req("GET", u.rule_path("room", "!gone", "enabled")) == {"enabled": True}
    assert u.req("DELETE", u.rule_path("override", ".m.rule.master"),
                 status=400)["errcode"] == "M_INVALID_PARAM"
    assert u.req("DELETE", u.rule_path("sideways", "x"), status=400)["errcode"] == \
        "M_INVALID_PARAM"
    assert u.req("DELETE", f"{R}/device/room/x", status=400)["errcode"] == "M_INVALID_PARAM"


def test_a_user_holds_a_bounded_number_of_rules():
    from actors.user_push import MAX_USER_RULES, PutPushRule, apply_change
    from atrium.errors import MatrixError
    from store.push_rules import UserPushRules

    stored = UserPushRules(rules={"room": [{"rule_id": f"!r{i}", "actions": []}
                                           for i in range(MAX_USER_RULES)]})
    with pytest.raises(MatrixError) as e:
        apply_change("@u:test.local", stored, PutPushRule("sender", "@x:test.local",
                                                          {"actions": []}))
    assert (e.value.status, e.value.errcode) == (413, "M_TOO_LARGE")
    # replacing one of them is still fine
    apply_change("@u:test.local", stored, PutPushRule("room", "!r5", {"actions": ["notify"]}))
    assert stored.rules["room"][5]["actions"] == ["notify"]
