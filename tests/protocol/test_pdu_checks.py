"""protocol.pdu_checks.check_pdu: the receipt checks in order, on real hashed+signed events."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocol.auth import allowed_auth_types
from protocol.events import build_event
from protocol.pdu_checks import MAX_PDU_BYTES, Outcome, PduVerdict, check_pdu, format_problem
from protocol.room_versions import KNOWN_ROOM_VERSIONS as KV
from protocol.signing import (
    SignatureError,
    generate_signing_key,
    get_verify_key,
    verify_event_signature,
)

ALICE, BOB = "@alice:a.org", "@bob:b.org"
KEYS = {"a.org": generate_signing_key("1"), "b.org": generate_signing_key("1")}
ALL = [pytest.param(rv, id=f"v{rv.identifier}") for rv in KV.values()]


def verifier(rv):
    seen: list[frozenset[str]] = []

    def verify(ev, servers):
        seen.append(frozenset(servers))
        try:
            for server in servers:
                verify_event_signature(ev, rv, server, get_verify_key(KEYS[server]))
        except (SignatureError, KeyError):
            return False
        return True
    verify.seen = seen  # type: ignore[attr-defined]
    return verify


class Chain:
    """A linear room DAG built with real events; ``state`` is the current state."""

    def __init__(self, rv):
        self.rv = rv
        self.events: dict[str, dict[str, Any]] = {}
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.last: str | None = None
        self.depth = 0
        self.room_id: str | None = None
        content = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = ALICE
        if not rv.room_id_is_create_event_hash:
            self.room_id = "!room:a.org"
        self.create = self.make("m.room.create", ALICE, content, "")
        self.room_id = self.create["room_id"]
        self.apply(self.create)
        self.apply(self.make("m.room.member", ALICE, {"membership": "join"}, ALICE))
        self.apply(self.make("m.room.power_levels", ALICE,
                             {} if rv.privileged_creators else {"users": {ALICE: 100}}, ""))
        self.apply(self.make("m.room.join_rules", ALICE, {"join_rule": "public"}, ""))

    def make(self, type, sender, content, state_key=None, **kw) -> dict[str, Any]:
        is_create = type == "m.room.create"
        probe = {"type": type, "sender": sender, "content": content, "state_key": state_key}
        auth = [] if is_create else [self.state[k]["event_id"]
                                     for k in sorted(allowed_auth_types(self.rv, probe))
                                     if k in self.state]
        if self.rv.room_id_is_create_event_hash and not is_create:
            auth = [a for a in auth if a != self.create["event_id"]]
        self.depth += 1
        server = sender.split(":", 1)[1]
        return build_event(
            self.rv, room_id=None if (is_create and self.rv.room_id_is_create_event_hash)
            else self.room_id, sender=sender, type=type, content=content,
            state_key=state_key, prev_events=[] if is_create else [self.last],
            auth_events=auth, depth=self.depth, origin_server_ts=1000 + self.depth,
            server_name=server, signing_key=KEYS[server], **kw)

    def apply(self, ev) -> None:
        self.events[ev["event_id"]] = ev
        if "state_key" in ev:
            self.state[(ev["type"], ev["state_key"])] = ev
        self.last = ev["event_id"]

    def check(self, ev, *, before=None, current="same", verify=None) -> PduVerdict:
        before = dict(self.state) if before is None else before
        current_map = dict(self.state) if current == "same" else current
        return check_pdu(self.rv, ev, verify_signatures=verify or verifier(self.rv),
                         get_event=self.events.get, state_before=lambda e: before,
                         current_state=lambda e: current_map)


@pytest.mark.parametrize("rv", ALL)
def test_a_valid_room_is_accepted_event_by_event(rv):
    chain = Chain(rv)
    replay = Chain.__new__(Chain)
    replay.rv, replay.events, replay.state = rv, {}, {}
    for ev in sorted(chain.events.values(), key=lambda e: e["depth"]):
        verdict = replay.check(ev)
        assert verdict.outcome is Outcome.ACCEPTED, verdict.reason
        assert not verdict.redacted and verdict.event is ev
        replay.apply(ev)
    join = chain.make("m.room.member", BOB, {"membership": "join"}, BOB)
    assert chain.check(join).accepted
    chain.apply(join)
    assert chain.check(chain.make("m.room.message", BOB, {"body": "hi"})).accepted


@pytest.mark.parametrize("rv", ALL)
def test_format_problems_drop_the_event(rv):
    chain = Chain(rv)
    good = chain.make("m.room.message", ALICE, {"body": "hi"})
    assert format_problem(rv, good) is None
    cases = [
        {k: v for k, v in good.items() if k != "depth"},
        {**good, "type": "t" * 256},
        {**good, "state_key": 5},
        {**good, "content": []},
        {**good, "depth": -1},
        {**good, "depth": True},
        {**good, "sender": "alice"},
        {**good, "prev_events": good["prev_events"] * 21},
        {**good, "auth_events": good["auth_events"] * 11},
        {**good, "hashes": {}},
        {**good, "content": {"body": "x" * MAX_PDU_BYTES}},
        "not an event",
    ]
    for bad in cases:
        verdict = check_pdu(rv, bad, verify_signatures=lambda e, s: True,  # type: ignore
                            get_event=chain.events.get, state_before=lambda e: chain.state,
                            current_state=lambda e: chain.state)
        assert verdict.dropped and verdict.reason.startswith("format"), bad


@pytest.mark.parametrize("rv", ALL)
def test_floats_and_big_ints_only_in_v1_to_v5(rv):
    chain = Chain(rv)
    ev = dict(chain.make("m.room.message", ALICE, {"body": "hi"}),
              content={"body": "hi", "n": 1.5})
    big = dict(ev, content={"n": 2**60})
    if rv.strict_canonicaljson:
        assert "canonical" in format_problem(rv, ev)
        assert "canonical" in format_problem(rv, big)
    else:
        assert format_problem(rv, ev) is None and format_problem(rv, big) is None


@pytest.mark.parametrize("rv", ALL)
def test_bad_signature_drops_and_signers_are_named(rv):
    chain = Chain(rv)
    ev = chain.make("m.room.member", BOB, {"membership": "join"}, BOB)
    verdict = chain.check(ev, verify=lambda e, s: False)
    assert verdict.dropped and verdict.reason.startswith("signatures")
    forged = dict(ev, signatures={"b.org": ev["signatures"]["b.org"]}, sender="@eve:b.org",
                  state_key="@eve:b.org")
    assert chain.check(forged).dropped
    verify = verifier(rv)
    chain.check(ev, verify=verify)
    expected = {"b.org"} | ({"b.org"} if rv.event_format == 1 else set())
    assert verify.seen == [frozenset(expected)]


@pytest.mark.parametrize("rv", [p for p in ALL if p.values[0].restricted_join_rule])
def test_restricted_join_needs_the_authorising_servers_signature(rv):
    chain = Chain(rv)
    ev = chain.make("m.room.member", BOB, {"membership": "join",
                                           "join_authorised_via_users_server": ALICE}, BOB)
    verify = verifier(rv)
    verdict = chain.check(ev, verify=verify)
    assert verify.seen == [frozenset({"a.org", "b.org"})]
    assert verdict.dropped  # only b.org signed it


@pytest.mark.parametrize("rv", ALL)
def test_content_hash_mismatch_redacts_and_goes_on(rv):
    chain = Chain(rv)
    ev = chain.make("m.room.message", ALICE, {"body": "hi"})
    tampered = dict(ev, content={"body": "evil"})  # signatures cover the redacted form
    verdict = chain.check(tampered)
    assert verdict.accepted and verdict.redacted
    assert verdict.event is not None and verdict.event["content"] == {}


@pytest.mark.parametrize("rv", ALL)
def test_unknown_or_rejected_auth_event_rejects(rv):
    chain = Chain(rv)
    ev = chain.make("m.room.message", ALICE, {"body": "hi"})
    pl_id = chain.state[("m.room.power_levels", "")]["event_id"]
    del chain.events[pl_id]  # get_event returns None for rejected events
    verdict = chain.check(ev)
    assert verdict.rejected
    assert verdict.rule == ("3.3" if rv.room_id_is_create_event_hash else "2.3")


@pytest.mark.parametrize("rv", ALL)
def test_auth_events_outside_the_selection_reject(rv):
    chain = Chain(rv)
    topic = chain.make("m.room.topic", ALICE, {"topic": "t"}, "")
    chain.apply(topic)
    # Cite the join rules for a message: not in the selection (rule 2.2 / v12 3.2).
    ev = chain.make("m.room.message", ALICE, {})
    ev = build_event(rv, room_id=chain.room_id, sender=ALICE, type="m.room.message",
                     content={}, prev_events=[chain.last], depth=50, origin_server_ts=5,
                     auth_events=[e["event_id"] for k, e in chain.state.items()
                                  if k != ("m.room.create", "") or
                                  not rv.room_id_is_create_event_hash],
                     server_name="a.org", signing_key=KEYS["a.org"])
    verdict = chain.check(ev)
    assert verdict.rejected and verdict.rule.endswith(".2")


@pytest.mark.parametrize("rv", [p for p in ALL if p.values[0].room_id_is_create_event_hash])
def test_v12_unknown_create_event_rejects_rule_2(rv):
    chain = Chain(rv)
    ev = chain.make("m.room.message", ALICE, {})
    del chain.events[chain.create["event_id"]]
    verdict = chain.check(ev)
    assert verdict.rejected and verdict.rule == "2"


@pytest.mark.parametrize("rv", ALL)
def test_state_before_failure_rejects_current_state_failure_soft_fails(rv):
    chain = Chain(rv)
    join = chain.make("m.room.member", BOB, {"membership": "join"}, BOB)
    chain.apply(join)
    msg = chain.make("m.room.message", BOB, {"body": "hi"})
    banned = dict(chain.state)
    banned[("m.room.member", BOB)] = chain.make("m.room.member", ALICE,
                                                {"membership": "ban"}, BOB)
    # Fine by its auth events and the state before it, but BOB is banned now: soft fail.
    verdict = chain.check(msg, current=banned)
    assert verdict.soft_failed and verdict.rule is not None
    # Banned already in the state before the event: rejected.
    assert chain.check(msg, before=banned).rejected
    # No current state (e.g. backfill): the soft-fail check is skipped.
    assert chain.check(msg, current=None).accepted


@pytest.mark.parametrize("rv", ALL)
def test_auth_events_lie_about_membership(rv):
    chain = Chain(rv)
    # BOB never joined; his message cites no membership: fails against its auth events.
    msg = chain.make("m.room.message", BOB, {"body": "hi"})
    verdict = chain.check(msg)
    assert verdict.rejected and "not joined" in verdict.reason


def test_state_before_without_create_gets_it_added_in_v12():
    chain = Chain(KV["12"])
    msg = chain.make("m.room.message", ALICE, {})
    before = {k: v for k, v in chain.state.items() if k != ("m.room.create", "")}
    assert chain.check(msg, before=before, current=before).accepted


def test_verdict_is_frozen():
    verdict = PduVerdict(Outcome.ACCEPTED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.outcome = Outcome.REJECTED  # type: ignore[misc]
    assert verdict.accepted and not verdict.rejected and not verdict.soft_failed
