"""Identifier grammar (appendices.md "Identifier Grammar")."""
import pytest

from protocol import ids
from protocol.room_versions import V1, V3, V4, V11, V12

H43 = "Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"  # from rooms/fragments/v4-event-ids.md


@pytest.mark.parametrize("name,host,port", [
    ("matrix.org", "matrix.org", None),
    ("matrix.org:8888", "matrix.org", 8888),
    ("1.2.3.4", "1.2.3.4", None),
    ("1.2.3.4:1234", "1.2.3.4", 1234),
    ("[1234:5678::abcd]", "[1234:5678::abcd]", None),
    ("[1234:5678::abcd]:5678", "[1234:5678::abcd]", 5678),
    ("localhost", "localhost", None),
    ("MATRIX.ORG", "MATRIX.ORG", None),
    ("[::1]:65535", "[::1]", 65535),
])
def test_parse_server_name_accepts_spec_examples(name, host, port):
    assert ids.parse_server_name(name) == (host, port)
    assert ids.is_valid_server_name(name)


@pytest.mark.parametrize("name", [
    "", ":8080", "matrix.org:", "matrix.org:abc", "matrix.org:123456", "matrix.org:70000",
    "ma trix.org", "matrix_org", "matrix.org/path", "[1234:5678::abcd", "[1234::abcd]x",
    "[not-ipv6]", "[1:2:3:4:5:6:7:8:9]", "[fe80::1%eth0]", "256.1.1.1", "1.2.3.999:80",
    "a" * 256, "exämple.org",
])
def test_parse_server_name_rejects_bad_names(name):
    assert not ids.is_valid_server_name(name)
    with pytest.raises(ids.IdError):
        ids.parse_server_name(name)


def test_id_error_is_a_value_error():
    assert issubclass(ids.IdError, ValueError)


@pytest.mark.parametrize("lp", ["alice", "a.b_c=d-e/f+g", "0", "_"])
def test_localpart_current_grammar_accepts(lp):
    assert ids.is_valid_localpart(lp)


@pytest.mark.parametrize("lp", ["", "Alice", "a b", "a:b", "a*b", "é", "a#b"])
def test_localpart_current_grammar_rejects(lp):
    assert not ids.is_valid_localpart(lp)


def test_parse_user_id_splits_at_first_colon():
    assert ids.parse_user_id("@alice:example.org:8448") == ("alice", "example.org:8448")
    assert ids.parse_user_id("@a:[::1]:80") == ("a", "[::1]:80")


@pytest.mark.parametrize("uid", ["@Alice:example.org", "@a b:example.org", "@:example.org",
                                 "@é\x01:example.org"])
def test_historical_user_ids_only_allowed_when_asked(uid):
    assert ids.is_valid_user_id(uid)  # historical=True is the default
    assert ids.is_valid_user_id(uid, historical=True)
    assert not ids.is_valid_user_id(uid, historical=False)


@pytest.mark.parametrize("uid", ["alice:example.org", "@alice", "@alice:", "@al\x00ice:ex.org",
                                 "@alice:bad host", "!alice:example.org", "@a\ud800:ex.org",
                                 None, 42])
def test_invalid_user_ids(uid):
    assert not ids.is_valid_user_id(uid)
    with pytest.raises(ids.IdError):
        ids.parse_user_id(uid)


def test_user_id_length_limit_is_255_bytes():
    base = "@:example.org"
    ok = "@" + "a" * (255 - len(base)) + ":example.org"
    assert len(ok.encode()) == 255 and ids.is_valid_user_id(ok, historical=False)
    assert not ids.is_valid_user_id("@" + "a" * (256 - len(base)) + ":example.org")
    # bytes, not characters: 2-byte characters count twice
    multi = "@" + "é" * 122 + ":example.org"
    assert len(multi) < 255 < len(multi.encode())
    assert not ids.is_valid_user_id(multi)


def test_room_ids_with_domain_and_v12_hash():
    assert ids.is_valid_room_id("!opaque:example.org")
    assert ids.is_valid_room_id("!" + H43)
    assert ids.is_valid_room_id("!" + H43, V12)
    assert not ids.is_valid_room_id("!" + H43, V11)
    assert ids.is_valid_room_id("!opaque:example.org", V11)
    assert not ids.is_valid_room_id("!opaque:example.org", V12)


@pytest.mark.parametrize("rid", ["opaque:example.org", "!opaque", "!" + H43[:-1],
                                 "!" + H43 + "A", "!" + H43.replace("-", "+"), "#a:b.org",
                                 "!a\x00b:example.org", "!x:" + "a" * 260, "", None])
def test_invalid_room_ids(rid):
    assert not ids.is_valid_room_id(rid)


def test_event_id_formats_per_room_version():
    v1_id, v3_id, v4_id = "$abc:example.org", "$" + H43.replace("-", "+").replace("_", "/"), "$" + H43
    assert ids.is_valid_event_id(v1_id, V1) and not ids.is_valid_event_id(v1_id, V4)
    assert ids.is_valid_event_id(v3_id, V3) and not ids.is_valid_event_id(v3_id, V4)
    assert ids.is_valid_event_id(v4_id, V4) and not ids.is_valid_event_id(v4_id, V1)
    assert all(ids.is_valid_event_id(i) for i in (v1_id, v3_id, v4_id))


@pytest.mark.parametrize("eid", ["abc:example.org", "$abc", "$" + H43[:40], "$" + "=" * 43,
                                 "!" + H43, "$a:" + "b" * 300, None])
def test_invalid_event_ids(eid):
    assert not ids.is_valid_event_id(eid)


def test_room_aliases():
    assert ids.is_valid_room_alias("#room:example.org")
    assert ids.is_valid_room_alias("#Ünïcode room:example.org:8448")
    for bad in ["room:example.org", "#room", "#a:b:c:d", "#a\x00:ex.org", "#" + "a" * 255 + ":x.org"]:
        assert not ids.is_valid_room_alias(bad), bad


def test_server_of():
    assert ids.server_of("@a:example.org") == "example.org"
    assert ids.server_of("!r:example.org:8448") == "example.org:8448"
    assert ids.server_of("$e:[::1]") == "[::1]"
    assert ids.server_of("#a:b.org") == "b.org"
    for bad in ["$" + H43, "!" + H43, "alice", "", "@a:bad host"]:
        with pytest.raises(ids.IdError):
            ids.server_of(bad)
