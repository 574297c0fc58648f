"""Content/reference hashes, event ids, JSON and event signatures.

Vectors: appendices.md "Cryptographic Test Vectors".
"""
import copy
import hashlib

import pytest

from protocol import hashing, signing
from protocol.canonical import encode_canonical_json
from protocol.redaction import redact
from protocol.room_versions import KNOWN_ROOM_VERSIONS, V1, V3, V4, V8, V10, V11, V12

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


@pytest.fixture
def sk():
    return signing.decode_signing_key_base64("ed25519", "1", SEED)


def test_unpadded_base64_spec_examples():
    for raw, enc in [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"),
                     (b"foob", "Zm9vYg"), (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy")]:
        assert hashing.encode_base64(raw) == enc
        assert hashing.decode_base64(enc) == raw
        assert hashing.decode_base64(enc + "=" * (-len(enc) % 4)) == raw  # padding accepted
    assert hashing.encode_base64(b"\xfb\xff", urlsafe=True) == "-_8"
    assert hashing.encode_base64(b"\xfb\xff") == "+/8"
    assert hashing.decode_base64("-_8", urlsafe=True) == b"\xfb\xff"
    for bad in ["Z", "Zm9v!", "-_8", "Zm 9v"]:
        with pytest.raises(ValueError):
            hashing.decode_base64(bad)


def test_json_signing_vectors(sk):
    assert signing.key_id(sk) == "ed25519:1"
    assert signing.sign_json({}, "domain", sk) == {"signatures": {"domain": {
        "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}}
    signed = signing.sign_json({"one": 1, "two": "Two"}, "domain", sk)
    assert signed["signatures"]["domain"]["ed25519:1"] == (
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw")


def test_event_signing_vector_minimal(sk):
    ev = {"room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
          "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
          "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
          "unsigned": {"age_ts": 1000000}}
    hashing.add_content_hash(ev, V1)
    signing.sign_event(ev, V1, "domain", sk)
    assert ev["hashes"] == {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"}
    assert ev["signatures"] == {"domain": {"ed25519:1": (
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg")}}
    assert ev["unsigned"] == {"age_ts": 1000000}


def test_event_signing_vector_redactable(sk):
    ev = {"content": {"body": "Here is the message content"}, "event_id": "$0:domain",
          "origin": "domain", "origin_server_ts": 1000000, "type": "m.room.message",
          "room_id": "!r:domain", "sender": "@u:domain", "signatures": {},
          "unsigned": {"age_ts": 1000000}}
    hashing.add_content_hash(ev, V1)
    signing.sign_event(ev, V1, "domain", sk)
    assert ev["hashes"]["sha256"] == "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    assert ev["signatures"]["domain"]["ed25519:1"] == (
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA")
    vk = signing.get_verify_key(sk)
    signing.verify_event_signature(ev, V1, "domain", vk)
    # The signature covers only the redacted form: still valid after redaction ...
    signing.verify_event_signature(redact(ev, V1), V1, "domain", vk)
    # ... and the content hash is what catches tampering with redactable content.
    tampered = copy.deepcopy(ev)
    tampered["content"]["body"] = "evil"
    signing.verify_event_signature(tampered, V1, "domain", vk)
    assert hashing.check_content_hash(ev, V1)
    assert not hashing.check_content_hash(tampered, V1)


def _v4_event():
    return {"type": "m.room.message", "room_id": "!r:example.org", "sender": "@u:example.org",
            "content": {"body": "hi"}, "depth": 5, "origin_server_ts": 123,
            "prev_events": ["$a"], "auth_events": ["$b", "$c"]}


def test_content_hash_ignores_unsigned_signatures_hashes_and_internal_event_id():
    ev = _v4_event()
    h = hashing.compute_content_hash(ev, V4)
    expected = hashing.encode_base64(hashlib.sha256(encode_canonical_json(ev)).digest())
    assert h == expected
    noisy = dict(ev, unsigned={"age": 1}, signatures={"x": {}}, hashes={"sha256": "zz"},
                 event_id="$" + "A" * 43)
    assert hashing.compute_content_hash(noisy, V4) == h
    assert hashing.compute_content_hash(noisy) == h  # rv inferred from the id's shape
    # but for v1 the event_id is part of the wire form and so of the hash
    v1 = dict(ev, event_id="$x:example.org")
    assert hashing.compute_content_hash(v1, V1) != h
    assert hashing.compute_content_hash(v1) == hashing.compute_content_hash(v1, V1)
    assert hashing.compute_content_hash(dict(ev, depth=6), V4) != h


def test_check_content_hash_negative_cases():
    ev = hashing.add_content_hash(_v4_event(), V4)
    assert hashing.check_content_hash(ev, V4)
    padded = dict(ev, hashes={"sha256": ev["hashes"]["sha256"] + "="})
    assert hashing.check_content_hash(padded, V4)
    for hashes in [None, {}, {"sha256": 5}, {"sha256": "!!"}, {"sha512": ev["hashes"]["sha256"]},
                   "str", {"sha256": hashing.encode_base64(b"\0" * 32)}]:
        bad = dict(ev, hashes=hashes) if hashes is not None else {
            k: v for k, v in ev.items() if k != "hashes"}
        assert not hashing.check_content_hash(bad, V4), hashes


def test_add_content_hash_keeps_other_algorithms():
    ev = dict(_v4_event(), hashes={"sha512": "x"})
    hashing.add_content_hash(ev, V4)
    assert set(ev["hashes"]) == {"sha256", "sha512"}
    assert hashing.check_content_hash(ev, V4)


def test_reference_hash_covers_only_redacted_form():
    ev = hashing.add_content_hash(_v4_event(), V4)
    ref = hashing.compute_reference_hash(ev, V4)
    assert len(ref) == 32
    # unsigned, signatures and redactable content do not change it ...
    same = dict(ev, unsigned={"x": 1}, signatures={"s": {"ed25519:1": "x"}},
                content={"body": "other"}, event_id="$whatever")
    assert hashing.compute_reference_hash(same, V4) == ref
    # ... but the hashes (hence the content, indirectly) and essential keys do.
    assert hashing.compute_reference_hash(dict(ev, hashes={"sha256": "AA"}), V4) != ref
    assert hashing.compute_reference_hash(dict(ev, depth=9), V4) != ref
    assert hashing.compute_reference_hash(redact(ev, V4), V4) == ref
    expected = hashlib.sha256(encode_canonical_json(redact(ev, V4))).digest()
    assert ref == expected


def test_event_id_formats():
    ev = hashing.add_content_hash(_v4_event(), V4)
    ref = hashing.compute_reference_hash(ev, V4)
    import base64
    assert hashing.compute_event_id(ev, V4) == "$" + base64.urlsafe_b64encode(ref).decode().rstrip("=")
    assert hashing.compute_event_id(ev, V3) == "$" + base64.b64encode(
        hashing.compute_reference_hash(ev, V3)).decode().rstrip("=")
    assert hashing.compute_event_id(dict(ev, event_id="$e:x.org"), V1) == "$e:x.org"
    with pytest.raises(ValueError):
        hashing.compute_event_id(ev, V1)


def test_v12_create_room_id_is_not_hashed():
    create = {"type": "m.room.create", "state_key": "", "sender": "@a:x.org",
              "content": {"room_version": "12"}, "depth": 1, "origin_server_ts": 1,
              "prev_events": [], "auth_events": []}
    hashing.add_content_hash(create, V12)
    eid = hashing.compute_event_id(create, V12)
    internal = dict(create, event_id=eid, room_id="!" + eid[1:])
    assert hashing.compute_event_id(internal, V12) == eid
    assert hashing.check_content_hash(internal, V12)
    assert hashing.check_content_hash(internal)  # inferred without rv too


def test_signing_key_roundtrip_and_generation():
    sk = signing.generate_signing_key("abc")
    assert signing.key_id(sk) == "ed25519:abc"
    b64 = signing.encode_signing_key_base64(sk)
    sk2 = signing.decode_signing_key_base64("ed25519", "abc", b64)
    assert bytes(sk2) == bytes(sk) and signing.key_id(sk2) == "ed25519:abc"
    vk = signing.get_verify_key(sk)
    assert signing.key_id(vk) == "ed25519:abc"
    vk2 = signing.decode_verify_key_base64("ed25519", "abc", signing.encode_verify_key_base64(vk))
    assert bytes(vk2) == bytes(vk)
    with pytest.raises(ValueError):
        signing.decode_signing_key_base64("curve25519", "1", b64)
    with pytest.raises(ValueError):
        signing.decode_signing_key_base64("ed25519", "1", "AAAA")


def test_verify_signed_json_negative_cases(sk):
    vk = signing.get_verify_key(sk)
    obj = signing.sign_json({"a": 1, "unsigned": {"x": 1}}, "domain", sk)
    signing.verify_signed_json(obj, "domain", vk)
    signing.verify_signed_json(dict(obj, unsigned={"y": 2}), "domain", vk)  # not covered
    signing.verify_signed_json(obj, "domain", {"ed25519:1": vk})
    other = signing.generate_signing_key("1")
    cases = [
        (dict(obj, a=2), "domain", vk),  # tampered
        (obj, "other.org", vk),  # no signature from that server
        ({"a": 1}, "domain", vk),  # unsigned
        (obj, "domain", signing.get_verify_key(other)),  # wrong key, same key id
        (obj, "domain", {"ed25519:2": vk}),  # no known key id
        (dict(obj, signatures={"domain": {"ed25519:1": "!!"}}), "domain", vk),
        (dict(obj, signatures={"domain": {"ed25519:1": "AAAA"}}), "domain", vk),
        (dict(obj, signatures="x"), "domain", vk),
    ]
    for o, server, key in cases:
        with pytest.raises(signing.SignatureError):
            signing.verify_signed_json(o, server, key)


def test_sign_json_keeps_other_signatures(sk):
    obj = {"a": 1, "signatures": {"other.org": {"ed25519:x": "sig"}}}
    signing.sign_json(obj, "domain", sk)
    assert obj["signatures"]["other.org"] == {"ed25519:x": "sig"}
    signing.verify_signed_json(obj, "domain", signing.get_verify_key(sk))


@pytest.mark.parametrize("rv", list(KNOWN_ROOM_VERSIONS.values()), ids=lambda r: r.identifier)
def test_event_signature_survives_redaction_and_detects_essential_tampering(rv, sk):
    ev = {"type": "m.room.member", "state_key": "@u:domain", "room_id": "!r:domain",
          "sender": "@u:domain", "content": {"membership": "join", "displayname": "U"},
          "depth": 2, "origin_server_ts": 5, "prev_events": [], "auth_events": []}
    if rv.event_format == 1:
        ev["event_id"] = "$e:domain"
    hashing.add_content_hash(ev, rv)
    signing.sign_event(ev, rv, "domain", sk)
    vk = signing.get_verify_key(sk)
    if rv.event_format != 1:
        ev["event_id"] = hashing.compute_event_id(ev, rv)  # internal field, not signed
    signing.verify_event_signature(ev, rv, "domain", vk)
    signing.verify_event_signature(redact(ev, rv), rv, "domain", vk)
    for key, value in [("sender", "@evil:domain"), ("depth", 3),
                       ("content", {"membership": "leave"}), ("hashes", {"sha256": "AAAA"})]:
        with pytest.raises(signing.SignatureError):
            signing.verify_event_signature(dict(ev, **{key: value}), rv, "domain", vk)


def test_sign_event_requires_hashes(sk):
    with pytest.raises(ValueError):
        signing.sign_event(_v4_event(), V4, "domain", sk)


def test_required_signers():
    base = {"type": "m.room.message", "sender": "@u:a.org", "content": {}}
    assert signing.required_signers(base, V4) == {"a.org"}
    assert signing.required_signers(dict(base, event_id="$x:b.org"), V1) == {"a.org", "b.org"}
    tpi = {"type": "m.room.member", "sender": "@u:a.org", "state_key": "@v:c.org",
           "content": {"membership": "invite", "third_party_invite": {"signed": {}}}}
    assert signing.required_signers(tpi, V4) == set()
    restricted = {"type": "m.room.member", "sender": "@u:a.org", "state_key": "@u:a.org",
                  "content": {"membership": "join",
                              "join_authorised_via_users_server": "@r:d.org"}}
    assert signing.required_signers(restricted, V8) == {"a.org", "d.org"}
    assert signing.required_signers(restricted, V10) == {"a.org", "d.org"}
    assert signing.required_signers(restricted, V4) == {"a.org"}  # no restricted rooms
    from protocol.ids import IdError
    with pytest.raises(IdError):
        signing.required_signers(dict(base, sender="nope"), V11)
