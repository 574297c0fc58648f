"""Event building, wire form, reference accessors and auth events selection."""
import pytest

from protocol import events, hashing, ids, signing
from protocol.canonical import CanonicalJsonError
from protocol.room_versions import KNOWN_ROOM_VERSIONS, V1, V2, V3, V4, V5, V6, V8, V9, V11, V12

SK = signing.decode_signing_key_base64("ed25519", "1",
                                       "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
VK = signing.get_verify_key(SK)


def _build(rv, **kw):
    args = dict(room_id="!r:x.org", sender="@u:x.org", type="m.room.message",
                content={"body": "hi"}, prev_events=[], auth_events=[], depth=3,
                origin_server_ts=1000, server_name="x.org", signing_key=SK)
    args.update(kw)
    return events.build_event(rv, **args)


def test_ref_accessors_handle_both_formats():
    assert events.prev_event_ids({"prev_events": ["$a", "$b"]}) == ["$a", "$b"]
    assert events.prev_event_ids({"prev_events": [["$a:x", {"sha256": "h"}], ["$b:x", {}]]}) == [
        "$a:x", "$b:x"]
    assert events.auth_event_ids({"auth_events": [["$c:x", {}]]}) == ["$c:x"]
    assert events.auth_event_ids({}) == []
    for bad in [{"prev_events": "x"}, {"prev_events": [1]}, {"prev_events": [[]]},
                {"prev_events": [[5, {}]]}]:
        with pytest.raises(ValueError):
            events.prev_event_ids(bad)


@pytest.mark.parametrize("rv", list(KNOWN_ROOM_VERSIONS.values()), ids=lambda r: r.identifier)
def test_built_event_is_hashed_signed_and_identified(rv):
    room_id = "!" + "R" * 43 if rv.room_id_is_create_event_hash else "!r:x.org"
    ev = _build(rv, room_id=room_id, auth_events=[], unsigned={"age_ts": 5},
                prev_events=["$p1:x.org" if rv.event_format == 1 else "$" + "P" * 43])
    assert hashing.check_content_hash(ev, rv)
    signing.verify_event_signature(ev, rv, "x.org", VK)
    assert ids.is_valid_event_id(ev["event_id"], rv)
    assert hashing.compute_event_id(ev, rv) == ev["event_id"]
    assert ev["unsigned"] == {"age_ts": 5}
    wire = events.pdu_for_wire(ev, rv)
    if rv.event_format == 1:
        assert wire["event_id"] == ev["event_id"] and ev["event_id"].endswith(":x.org")
        assert ev["prev_events"] == [["$p1:x.org", {}]]
    else:
        assert "event_id" not in wire
    assert events.prev_event_ids(ev) == events.prev_event_ids(wire)
    assert "origin" not in ev


def test_pdu_for_wire_does_not_mutate():
    ev = _build(V4)
    wire = events.pdu_for_wire(ev, V4)
    assert "event_id" in ev and "event_id" not in wire


def test_v1_event_ids_are_deterministic_and_distinct():
    a, b = _build(V1), _build(V1)
    assert a["event_id"] == b["event_id"]
    assert _build(V1, origin_server_ts=1001)["event_id"] != a["event_id"]
    assert _build(V2, prev_events=[("$p:x", {"sha256": "h"})])["prev_events"] == [
        ["$p:x", {"sha256": "h"}]]


def test_v3_and_v4_event_id_alphabets():
    # a reference hash is random-looking; across a few events both alphabets differ
    v3 = [_build(V3, depth=d)["event_id"] for d in range(40)]
    v4 = [_build(V4, depth=d)["event_id"] for d in range(40)]
    assert all(ids.is_valid_event_id(e, V3) for e in v3)
    assert any(("+" in e or "/" in e) for e in v3)
    assert all(not ("+" in e or "/" in e) for e in v4)


def test_v12_create_event_room_id_from_reference_hash():
    create = _build(V12, room_id=None, type="m.room.create", state_key="",
                    content={"room_version": "12"})
    assert create["room_id"] == "!" + create["event_id"][1:]
    assert ids.is_valid_room_id(create["room_id"], V12)
    assert create["prev_events"] == [] and create["auth_events"] == []
    wire = events.pdu_for_wire(create, V12)
    assert "room_id" not in wire and "event_id" not in wire
    assert hashing.compute_event_id(wire, V12) == create["event_id"]
    signing.verify_event_signature(wire, V12, "x.org", VK)
    assert events.create_event_id_for_room_id(create["room_id"]) == create["event_id"]
    assert events.room_id_for_create_event_id(create["event_id"]) == create["room_id"]
    # a following event in that room: the create event is never in its auth_events
    msg = _build(V12, room_id=create["room_id"], auth_events=[create["event_id"], "$pl"],
                 prev_events=[create["event_id"]])
    assert msg["auth_events"] == ["$pl"]
    assert events.pdu_for_wire(msg, V12)["room_id"] == create["room_id"]


def test_v12_build_rejects_inconsistent_args():
    with pytest.raises(ValueError):
        _build(V12, type="m.room.create", state_key="", content={}, room_id="!r:x.org")
    with pytest.raises(ValueError):
        _build(V12, room_id=None, type="m.room.create", state_key="", content={},
               prev_events=["$x"])
    with pytest.raises(ValueError):
        _build(V12, room_id=None)
    with pytest.raises(ValueError):
        _build(V11, room_id=None)
    with pytest.raises(ValueError):
        _build(V12, room_id="!r:x.org")  # not a v12 room id


def test_v11_pre_v12_create_keeps_room_id():
    create = _build(V11, type="m.room.create", state_key="", content={"room_version": "11"})
    assert events.pdu_for_wire(create, V11)["room_id"] == "!r:x.org"


def test_redacts_placement():
    old = _build(V6, type="m.room.redaction", content={"reason": "x"}, redacts="$t")
    assert old["redacts"] == "$t" and "redacts" not in old["content"]
    new = _build(V11, type="m.room.redaction", content={"reason": "x"}, redacts="$t")
    assert "redacts" not in new and new["content"] == {"reason": "x", "redacts": "$t"}
    assert events.redacts_id(old, V6) == "$t" and events.redacts_id(new, V11) == "$t"
    assert events.redacts_id(new, V6) is None and events.redacts_id({"content": 1}, V11) is None


def test_build_does_not_alias_caller_content():
    content = {"body": "hi", "nested": {"a": 1}}
    ev = _build(V4, content=content)
    content["nested"]["a"] = 2
    assert ev["content"]["nested"] == {"a": 1}
    assert hashing.check_content_hash(ev, V4)


def test_strict_canonical_json_in_v6_plus():
    with pytest.raises(CanonicalJsonError):
        _build(V6, content={"n": 1.5})
    with pytest.raises(CanonicalJsonError):
        _build(V9, content={"n": 2**53})
    ev = _build(V5, content={"n": 1.5, "big": 2**60})  # tolerated before v6
    assert hashing.check_content_hash(ev, V5)


def test_depth_is_capped():
    assert _build(V6, depth=2**60)["depth"] == 2**53 - 1


def _at(rv, type_, sender, state_key, content):
    return events.auth_types_for_event(rv, type_, sender, state_key, content)


def test_auth_selection_create_and_plain_events():
    assert _at(V4, "m.room.create", "@u:x", "", {}) == set()
    base = {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", "@u:x")}
    assert _at(V4, "m.room.message", "@u:x", None, {}) == base
    assert _at(V4, "m.room.name", "@u:x", "", {"name": "n"}) == base
    assert _at(V12, "m.room.message", "@u:x", None, {}) == base - {("m.room.create", "")}
    # a non-state m.room.create is not "the create event"
    assert _at(V4, "m.room.create", "@u:x", None, {}) == base


def test_auth_selection_membership():
    base = {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", "@u:x")}
    target = ("m.room.member", "@v:x")
    jr = ("m.room.join_rules", "")
    for m in ("join", "invite", "knock"):
        assert _at(V9, "m.room.member", "@u:x", "@v:x", {"membership": m}) == base | {target, jr}
    for m in ("leave", "ban"):
        assert _at(V9, "m.room.member", "@u:x", "@v:x", {"membership": m}) == base | {target}
    tpi = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
    assert _at(V4, "m.room.member", "@u:x", "@v:x", tpi) == base | {
        target, jr, ("m.room.third_party_invite", "tok")}
    for junk in [{"signed": {"token": 5}}, {"signed": "x"}, "x", {}]:
        c = {"membership": "invite", "third_party_invite": junk}
        assert _at(V4, "m.room.member", "@u:x", "@v:x", c) == base | {target, jr}
    # a token on a join does not select the third-party invite
    assert _at(V4, "m.room.member", "@u:x", "@v:x", dict(tpi, membership="join")) == base | {
        target, jr}


def test_auth_selection_restricted_joins():
    c = {"membership": "join", "join_authorised_via_users_server": "@r:y"}
    auth = ("m.room.member", "@r:y")
    assert auth in _at(V8, "m.room.member", "@u:x", "@u:x", c)
    assert auth in _at(V12, "m.room.member", "@u:x", "@u:x", c)
    assert ("m.room.create", "") not in _at(V12, "m.room.member", "@u:x", "@u:x", c)
    assert auth not in _at(V6, "m.room.member", "@u:x", "@u:x", c)
    assert auth not in _at(V9, "m.room.member", "@u:x", "@u:x", dict(c, membership="invite"))
