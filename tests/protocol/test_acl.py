"""protocol/acl.py: m.room.server_acl rules (client-server-api/modules/server_acls.md and the
event schema's ordered rules), including the spec's example content."""
import pytest

from protocol.acl import host_of, is_ip_literal, server_allowed

SPEC_EXAMPLE = {"allow_ip_literals": False, "allow": ["*"], "deny": ["*.evil.com", "evil.com"]}


def test_no_acl_allows_everyone():
    assert server_allowed(None, "evil.com")
    assert server_allowed(None, "1.2.3.4")


@pytest.mark.parametrize("server,allowed", [
    ("matrix.org", True),
    ("evil.com", False),
    ("evil.com:8448", False),           # the port is never considered
    ("evil.com:1234", False),
    ("sub.evil.com", False),
    ("deeper.sub.evil.com:443", False),
    ("notevil.com", True),              # *.evil.com needs the dot
    ("EVIL.COM", False),                # case-insensitive
    ("Sub.Evil.Com:8448", False),
    ("1.2.3.4", False),                 # allow_ip_literals false
    ("1.2.3.4:8448", False),
    ("[::1]", False),
    ("[2001:db8::1]:8448", False),
])
def test_spec_example(server, allowed):
    assert server_allowed(SPEC_EXAMPLE, server) is allowed


def test_ip_literals_allowed_by_default_and_when_not_boolean():
    acl = {"allow": ["*"]}
    assert server_allowed(acl, "1.2.3.4")
    assert server_allowed(acl, "[::1]:8448")
    assert server_allowed({"allow": ["*"], "allow_ip_literals": "false"}, "1.2.3.4")
    assert server_allowed({"allow": ["*"], "allow_ip_literals": 0}, "1.2.3.4")
    assert not server_allowed({"allow": ["*"], "allow_ip_literals": False}, "10.0.0.1")
    # a dotted name that only looks numeric-ish is not a literal
    assert server_allowed({"allow": ["*"], "allow_ip_literals": False}, "1.2.3.example")


def test_missing_or_bad_allow_denies_everyone():
    assert not server_allowed({}, "matrix.org")
    assert not server_allowed({"deny": []}, "matrix.org")
    assert not server_allowed({"allow": "*"}, "matrix.org")       # not a list
    assert not server_allowed({"allow": [1, None]}, "matrix.org")  # no string entries
    assert not server_allowed("garbage", "matrix.org")             # content not an object


def test_deny_wins_over_allow():
    acl = {"allow": ["*.example.org", "example.org"], "deny": ["bad.example.org"]}
    assert server_allowed(acl, "good.example.org")
    assert server_allowed(acl, "example.org:8448")
    assert not server_allowed(acl, "bad.example.org")
    assert not server_allowed(acl, "other.net")


def test_globs_question_mark_and_literal_characters():
    acl = {"allow": ["server?.example.com"]}
    assert server_allowed(acl, "server1.example.com")
    assert not server_allowed(acl, "server12.example.com")
    assert not server_allowed(acl, "server.example.com")
    # '.' is literal, not a regex wildcard
    assert not server_allowed({"allow": ["a.b"]}, "axb")
    # non-string deny entries are ignored, string ones still apply
    assert not server_allowed({"allow": ["*"], "deny": [5, "x.org"]}, "x.org")
    assert server_allowed({"allow": ["*"], "deny": [5, "x.org"]}, "y.org")


def test_ip_literal_glob_matching_when_literals_allowed():
    acl = {"allow": ["*"], "deny": ["10.*"]}
    assert not server_allowed(acl, "10.1.2.3:8448")
    assert server_allowed(acl, "11.1.2.3")
    assert server_allowed({"allow": ["[::1]"]}, "[::1]:8448")


def test_helpers():
    assert host_of("a.example:8448") == "a.example"
    assert host_of("[::1]:8448") == "[::1]"
    assert host_of("a.example") == "a.example"
    assert is_ip_literal("127.0.0.1") and is_ip_literal("[::1]")
    assert not is_ip_literal("localhost") and not is_ip_literal("999.1.1.1")
