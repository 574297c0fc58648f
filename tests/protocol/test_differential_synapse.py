"""Differential tests: Atrium's redaction, hashes, event ids, signatures and auth-event
selection against the installed ``matrix-synapse`` package, used here only as an oracle.

Events are generated at random (seeded, so failures reproduce) for rooms v1–v12, with
every event type the redaction algorithm treats specially and both protected and
unprotected keys at the top level and in ``content``.
"""
import copy
import hashlib
import random

import pytest

synapse = pytest.importorskip("synapse")

from synapse.api.room_versions import KNOWN_ROOM_VERSIONS as SYN_VERSIONS  # noqa: E402
from synapse.crypto import event_signing as syn_signing  # noqa: E402
from synapse.event_auth import auth_types_for_event as syn_auth_types  # noqa: E402
from synapse.events import make_event_from_dict  # noqa: E402

try:  # recent Synapse moved the redaction algorithm to Rust
    from synapse.synapse_rust.events import redact_event_dict as _syn_redact
except ImportError:  # pragma: no cover - older Synapse
    from synapse.events.utils import prune_event_dict as _syn_redact

from protocol import events, hashing, redaction, signing  # noqa: E402
from protocol.room_versions import KNOWN_ROOM_VERSIONS  # noqa: E402

VERSIONS = [str(i) for i in range(1, 13)]
N_PER_VERSION = 150

SPECIAL_TYPES = [
    "m.room.member", "m.room.create", "m.room.join_rules", "m.room.power_levels",
    "m.room.aliases", "m.room.history_visibility", "m.room.redaction", "m.room.message",
    "m.room.name", "m.room.third_party_invite", "org.example.custom",
]
# Every content key any version keeps for some type, plus ones no version keeps.
CONTENT_KEYS = [
    "membership", "join_authorised_via_users_server", "third_party_invite", "creator",
    "room_version", "m.federate", "additional_creators", "join_rule", "allow", "ban",
    "events", "events_default", "invite", "kick", "redact", "state_default", "users",
    "users_default", "notifications", "aliases", "history_visibility", "redacts", "body",
    "displayname", "reason", "name", "predecessor", "type",
]
TOP_EXTRAS = ["origin", "membership", "prev_state", "redacts", "unsigned", "foo", "outlier_x"]

SK = signing.generate_signing_key("diff")


def _rand_str(rng: random.Random) -> str:
    alphabet = "abcXYZ09 _-:@!$#.é日本\U0001F600\n\"\\"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _rand_value(rng: random.Random, strict: bool, depth: int = 0):
    kinds = ["str", "int", "bool", "null", "list", "dict"]
    if not strict:
        kinds += ["float", "bigint"]
    k = rng.choice(kinds if depth < 3 else kinds[:4])
    if k == "str":
        return _rand_str(rng)
    if k == "int":
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "float":
        return rng.choice([0.5, -1.25, 1e10, 3.0])
    if k == "bigint":
        return rng.choice([2**60, -(2**64)])
    if k == "list":
        return [_rand_value(rng, strict, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_rand_str(rng): _rand_value(rng, strict, depth + 1) for _ in range(rng.randint(0, 3))}


def _event_ref(rng: random.Random, rv) -> object:
    if rv.event_format == 1:
        return [f"${rng.randrange(10**6)}:example.org", {"sha256": "aGFzaA"}]
    return "$" + "".join(rng.choice("ABCdef012-_") for _ in range(43))


def _random_event(rng: random.Random, rv_id: str) -> dict:
    rv = KNOWN_ROOM_VERSIONS[rv_id]
    strict = rv.strict_canonicaljson
    type_ = rng.choice(SPECIAL_TYPES)
    content = {k: _rand_value(rng, strict) for k in rng.sample(CONTENT_KEYS, rng.randint(0, 8))}
    if type_ == "m.room.member" and rng.random() < 0.7:
        content["membership"] = rng.choice(["join", "invite", "leave", "ban", "knock"])
        if rng.random() < 0.5:
            content["third_party_invite"] = rng.choice([
                {"signed": {"token": _rand_str(rng), "mxid": "@a:b"}, "display_name": "x"},
                {"display_name": "no signed"}, "not an object"])
        if rng.random() < 0.4:
            content["join_authorised_via_users_server"] = "@auth:server.org"
    ev = {
        "type": type_,
        "sender": "@user:example.org",
        "content": content,
        "depth": rng.randint(1, 1000),
        "origin_server_ts": rng.randint(0, 2**41),
        "prev_events": [_event_ref(rng, rv) for _ in range(rng.randint(0, 3))],
        "auth_events": [_event_ref(rng, rv) for _ in range(rng.randint(0, 3))],
        "hashes": {"sha256": "placeholder"},
        "signatures": {"other.org": {"ed25519:x": "c2ln"}},
    }
    if rng.random() < 0.8 or type_ in ("m.room.member", "m.room.create"):
        ev["state_key"] = "" if type_ != "m.room.member" else rng.choice(
            ["@user:example.org", "@other:example.org"])
    v12_create = rv.room_id_is_create_event_hash and type_ == "m.room.create" and (
        ev.get("state_key") == "")
    if v12_create:
        ev["prev_events"], ev["auth_events"] = [], []
    elif rv.room_id_is_create_event_hash:
        ev["room_id"] = "!" + "".join(rng.choice("ABCdef012-_") for _ in range(43))
    else:
        ev["room_id"] = "!room:example.org"
    if rv.event_format == 1:
        ev["event_id"] = f"${rng.randrange(10**9)}:example.org"
    for k in rng.sample(TOP_EXTRAS, rng.randint(0, 4)):
        ev[k] = {"age_ts": 5} if k == "unsigned" else _rand_value(rng, strict)
    return ev


def _corpus():
    rng = random.Random(20240611)
    return [(v, _random_event(rng, v)) for v in VERSIONS for _ in range(N_PER_VERSION)]


CORPUS = _corpus()


def _without_unsigned(d: dict) -> dict:
    # Synapse keeps a few Synapse-internal `unsigned` fields through redaction; the spec
    # strips `unsigned`, so it is not compared.
    return {k: v for k, v in d.items() if k != "unsigned"}


def test_corpus_covers_every_special_type_and_version():
    seen = {(v, ev["type"]) for v, ev in CORPUS}
    assert seen >= {(v, t) for v in VERSIONS for t in SPECIAL_TYPES}


@pytest.mark.parametrize("rv_id", VERSIONS)
def test_redaction_matches_synapse(rv_id):
    rv, syn_rv = KNOWN_ROOM_VERSIONS[rv_id], SYN_VERSIONS[rv_id]
    n = 0
    for v, ev in CORPUS:
        if v != rv_id:
            continue
        ours = redaction.redact(ev, rv)
        theirs = _syn_redact(syn_rv, copy.deepcopy(ev))
        assert ours == _without_unsigned(theirs), ev
        assert "unsigned" not in ours
        n += 1
    assert n == N_PER_VERSION


@pytest.mark.parametrize("rv_id", VERSIONS)
def test_content_hash_reference_hash_and_event_id_match_synapse(rv_id):
    rv, syn_rv = KNOWN_ROOM_VERSIONS[rv_id], SYN_VERSIONS[rv_id]
    for v, ev in CORPUS:
        if v != rv_id:
            continue
        _, digest = syn_signing.compute_content_hash(copy.deepcopy(ev), hashlib.sha256)
        assert hashing.compute_content_hash(ev, rv) == hashing.encode_base64(digest)
        syn_ev = make_event_from_dict(copy.deepcopy(ev), syn_rv)
        _, ref = syn_signing.compute_event_reference_hash(syn_ev)
        assert hashing.compute_reference_hash(ev, rv) == ref
        assert hashing.compute_event_id(ev, rv) == syn_ev.event_id
        # Atrium's internal form (event_id, v12 create room_id added) hashes the same.
        internal = dict(ev, event_id=syn_ev.event_id)
        if syn_ev.room_id and "room_id" not in ev:
            internal["room_id"] = syn_ev.room_id
            assert internal["room_id"] == "!" + syn_ev.event_id[1:]
        assert hashing.compute_reference_hash(internal, rv) == ref
        assert hashing.compute_content_hash(internal, rv) == hashing.encode_base64(digest)


@pytest.mark.parametrize("rv_id", VERSIONS)
def test_signatures_match_synapse_and_verify_both_ways(rv_id):
    rv, syn_rv = KNOWN_ROOM_VERSIONS[rv_id], SYN_VERSIONS[rv_id]
    vk = signing.get_verify_key(SK)
    count = 0
    for v, ev in CORPUS:
        if v != rv_id or count >= 60:
            continue
        count += 1
        theirs = copy.deepcopy(ev)
        theirs.pop("unsigned", None)
        theirs["hashes"] = {}
        syn_signing.add_hashes_and_signatures(syn_rv, theirs, "example.org", SK)
        ours = copy.deepcopy(ev)
        ours.pop("unsigned", None)
        ours["hashes"] = {}
        hashing.add_content_hash(ours, rv)
        signing.sign_event(ours, rv, "example.org", SK)
        assert ours["hashes"] == theirs["hashes"]
        assert ours["signatures"]["example.org"] == theirs["signatures"]["example.org"]
        signing.verify_event_signature(theirs, rv, "example.org", vk)
        assert hashing.check_content_hash(theirs, rv)


@pytest.mark.parametrize("rv_id", VERSIONS)
def test_built_events_are_accepted_by_synapse(rv_id):
    rv, syn_rv = KNOWN_ROOM_VERSIONS[rv_id], SYN_VERSIONS[rv_id]
    from signedjson.sign import verify_signed_json as sj_verify

    create = events.build_event(
        rv, room_id=None if rv.room_id_is_create_event_hash else "!r:example.org",
        sender="@u:example.org", type="m.room.create", state_key="",
        content={"room_version": rv_id}, prev_events=[], auth_events=[], depth=1,
        origin_server_ts=1, server_name="example.org", signing_key=SK)
    msg = events.build_event(
        rv, room_id=create["room_id"], sender="@u:example.org", type="m.room.message",
        content={"body": "hi"}, prev_events=[create["event_id"]],
        auth_events=[create["event_id"]], depth=2, origin_server_ts=2,
        server_name="example.org", signing_key=SK)
    for ev in (create, msg):
        wire = events.pdu_for_wire(ev, rv)
        syn_ev = make_event_from_dict(copy.deepcopy(wire), syn_rv)
        assert syn_ev.event_id == ev["event_id"]
        assert syn_ev.room_id == ev["room_id"]
        assert syn_signing.check_event_content_hash(syn_ev)
        redacted = _syn_redact(syn_rv, copy.deepcopy(wire))
        redacted.pop("unsigned", None)
        sj_verify(redacted, "example.org", signing.get_verify_key(SK))


@pytest.mark.parametrize("rv_id", VERSIONS)
def test_auth_types_match_synapse(rv_id):
    rv, syn_rv = KNOWN_ROOM_VERSIONS[rv_id], SYN_VERSIONS[rv_id]
    rng = random.Random(7 + int(rv_id))
    for _ in range(200):
        type_ = rng.choice(["m.room.member", "m.room.message", "m.room.power_levels",
                            "m.room.create", "m.room.name"])
        content: dict = {}
        state_key = None if type_ == "m.room.message" else ""
        if type_ == "m.room.member":
            state_key = rng.choice(["@u:example.org", "@v:example.org"])
            content["membership"] = rng.choice(["join", "invite", "leave", "ban", "knock"])
            if rng.random() < 0.4:
                content["third_party_invite"] = {"signed": {"token": _rand_str(rng)}}
            if rng.random() < 0.4:
                content["join_authorised_via_users_server"] = "@a:auth.org"
        d = {"type": type_, "sender": "@u:example.org", "content": content,
             "room_id": "!" + "A" * 43 if rv.room_id_is_create_event_hash else "!r:example.org",
             "depth": 2, "origin_server_ts": 1, "prev_events": [], "auth_events": [],
             "hashes": {}, "signatures": {}}
        if rv.event_format == 1:
            d["event_id"] = "$1:example.org"
        if state_key is not None:
            d["state_key"] = state_key
        if type_ == "m.room.create" and rv.room_id_is_create_event_hash:
            del d["room_id"]
        theirs = syn_auth_types(syn_rv, make_event_from_dict(d, syn_rv))
        ours = events.auth_types_for_event(rv, type_, "@u:example.org", state_key, content)
        if rv.room_id_is_create_event_hash and type_ != "m.room.create":
            # Synapse selects the create event internally and drops it when building
            # v12 events; the spec (rooms/v12.md) says it is not selected.
            theirs = theirs - {("m.room.create", "")}
        assert ours == theirs, d
