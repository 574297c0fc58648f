"""Differential test: ``protocol.auth.check_auth`` against Synapse's state-dependent auth.

Synapse (installed in the venv for tests only) is used purely as an oracle: thousands of
seeded random (event, auth state) pairs across room versions 1–12 must get the same
allow/deny from both.  Known, deliberate divergences (Synapse is stricter than the spec)
are filtered by :func:`_known_divergence`; anything else that differs fails the test with
the case printed.
"""
from __future__ import annotations

import copy
import random
from typing import Any

import pytest

synapse = pytest.importorskip("synapse")

from synapse.api.errors import AuthError as SynapseAuthError  # noqa: E402
from synapse.api.errors import SynapseError  # noqa: E402
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS as SYN_VERSIONS  # noqa: E402
from synapse.event_auth import check_state_dependent_auth_rules  # noqa: E402
from synapse.events import make_event_from_dict  # noqa: E402

from protocol.auth import AuthError, check_auth  # noqa: E402
from protocol.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion  # noqa: E402

ALICE, BOB, CAROL, DAVE = "@alice:a.org", "@bob:b.org", "@carol:c.org", "@dave:a.org"
USERS = [ALICE, BOB, CAROL, DAVE]
LEVELS = [0, 10, 50, 100]
NAMED = ["users_default", "events_default", "state_default", "ban", "redact", "kick",
         "invite"]
CASES_PER_VERSION = 400
SEED = 20240611


def _domain(user: str) -> str:
    return user.split(":", 1)[1]


class Case:
    """One generated (event, state) pair, built for both implementations."""

    def __init__(self, rv: RoomVersion, rng: random.Random) -> None:
        self.rv, self.rng = rv, rng
        self.syn_rv = SYN_VERSIONS[rv.identifier]
        self.n = 0
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        create_content: dict[str, Any] = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            create_content["creator"] = ALICE
        if rng.random() < 0.15:
            create_content["m.federate"] = False
        if rv.privileged_creators and rng.random() < 0.3:
            create_content["additional_creators"] = [BOB]
        self.room_id = "!room:a.org"
        self.create = self._raw("m.room.create", ALICE, create_content, "", prev=[])
        if rv.room_id_is_create_event_hash:
            del self.create["room_id"]
        syn_create = make_event_from_dict(self._for_synapse(self.create), self.syn_rv)
        self.create["event_id"] = syn_create.event_id
        if rv.room_id_is_create_event_hash:
            self.room_id = "!" + syn_create.event_id[1:]
            self.create["room_id"] = self.room_id
        self.state[("m.room.create", "")] = self.create
        self._random_state()
        self.event = self._random_event()

    # -- building -----------------------------------------------------------------------

    def _raw(self, type: str, sender: str, content: dict[str, Any],
             state_key: str | None = None, prev: list[str] | None = None,
             **extra: Any) -> dict[str, Any]:
        self.n += 1
        prev = ["$prev:a.org"] if prev is None else prev
        v1 = self.rv.event_format == EventFormat.V1
        ev = {
            "event_id": f"$e{self.n}:{_domain(sender)}",
            "room_id": self.room_id, "type": type, "sender": sender, "content": content,
            "auth_events": [],
            "prev_events": [[p, {}] for p in prev] if v1 else prev,
            "depth": self.n, "origin_server_ts": self.n, "hashes": {"sha256": "x"},
            "signatures": {},
        }
        if state_key is not None:
            ev["state_key"] = state_key
        ev.update(extra)
        return ev

    def _put(self, ev: dict[str, Any]) -> None:
        self.state[(ev["type"], ev["state_key"])] = ev

    def _creators(self) -> set[str]:
        if not self.rv.privileged_creators:
            return set()
        return {ALICE, *self.create["content"].get("additional_creators", [])}

    def _level(self) -> Any:
        level = self.rng.choice(LEVELS)
        if not self.rv.enforce_int_power_levels and self.rng.random() < 0.15:
            return str(level)
        return level

    def _random_pl_content(self) -> dict[str, Any]:
        rng = self.rng
        users = {u: self._level() for u in USERS
                 if u not in self._creators() and rng.random() < 0.5}
        content: dict[str, Any] = {"users": users}
        for name in NAMED:
            if rng.random() < 0.3:
                content[name] = self._level()
        if rng.random() < 0.4:
            content["events"] = {t: self._level() for t in
                                 rng.sample(["m.room.message", "m.room.topic",
                                             "m.room.power_levels", "m.custom"], 2)}
        if rng.random() < 0.2:
            content["notifications"] = {"room": self._level()}
        return content

    def _random_state(self) -> None:
        rng = self.rng
        memberships = [None, "join", "join", "join", "invite", "leave", "ban"]
        if self.rv.knock_join_rule:
            memberships.append("knock")
        for user in USERS:
            membership = rng.choice(memberships)
            if membership:
                self._put(self._raw("m.room.member", user, {"membership": membership}, user))
        join_rule = rng.choice([None, "public", "invite", "knock", "restricted",
                                "knock_restricted", "private"])
        if join_rule:
            self._put(self._raw("m.room.join_rules", ALICE, {"join_rule": join_rule}, ""))
        if rng.random() < 0.8:
            self._put(self._raw("m.room.power_levels", ALICE, self._random_pl_content(), ""))

    def _random_event(self) -> dict[str, Any]:
        rng = self.rng
        sender = rng.choice(USERS)
        if rng.random() < 0.5:  # bias towards senders who may act at all
            self._put(self._raw("m.room.member", sender, {"membership": "join"}, sender))
        kind = rng.choice(["member"] * 5 + ["message", "state", "power_levels"] * 2)
        if kind == "member":
            membership = rng.choice(["join", "join", "invite", "leave", "ban", "knock",
                                     "dance"])
            target = sender if rng.random() < 0.5 else rng.choice(USERS)
            content: dict[str, Any] = {"membership": membership}
            if self.rv.restricted_join_rule and rng.random() < 0.4:
                content["join_authorised_via_users_server"] = rng.choice(USERS)
            prev = [self.create["event_id"]] if rng.random() < 0.1 else None
            return self._raw("m.room.member", sender, content, target, prev=prev)
        if kind == "message":
            type_ = rng.choice(["m.room.message", "m.reaction", "m.custom", "m.room.redaction"])
            extra: dict[str, Any] = {}
            if type_ == "m.room.redaction":
                extra["redacts"] = f"$target:{rng.choice(['a.org', 'b.org', 'c.org'])}"
            return self._raw(type_, sender, {"body": "x"}, None, **extra)
        if kind == "state":
            type_, key = rng.choice([
                ("m.room.topic", ""), ("m.custom", rng.choice(USERS)), ("m.custom", "k"),
                ("m.room.third_party_invite", "tok"), ("m.room.aliases", _domain(sender)),
                ("m.room.aliases", "c.org"),
            ])
            return self._raw(type_, sender, {}, key)
        current = self.state.get(("m.room.power_levels", ""))
        if current is not None and rng.random() < 0.5:
            # A small edit of the current levels: often allowed, exercises the diffing.
            content = copy.deepcopy(current["content"])
            key = rng.choice(NAMED + ["users", "events", "notifications"])
            if key in NAMED:
                if rng.random() < 0.3:
                    content.pop(key, None)
                else:
                    content[key] = self._level()
            else:
                content.setdefault(key, {})
                target = rng.choice(USERS) if key == "users" else rng.choice(
                    ["m.room.topic", "room", "m.custom"])
                if key == "users" and target in self._creators():
                    target = CAROL
                content[key][target] = self._level()
        else:
            content = self._random_pl_content()
        if rng.random() < 0.2:
            self._corrupt_pl(content)
        return self._raw("m.room.power_levels", sender, content, "")

    def _corrupt_pl(self, content: dict[str, Any]) -> None:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            content["users"]["not-a-user"] = 0
        elif choice == 1:
            content["users"][rng.choice(USERS)] = "fifty"
        elif choice == 2 and self.rv.enforce_int_power_levels:
            content[rng.choice(NAMED)] = "50"
        elif choice == 3 and self.rv.enforce_int_power_levels:
            content["events"] = {"m.room.topic": "50"}
        elif self.rv.privileged_creators:
            content["users"][ALICE] = 100

    # -- verdicts -----------------------------------------------------------------------

    def _for_synapse(self, ev: dict[str, Any]) -> dict[str, Any]:
        """The wire form: no event_id from v3 on, no room_id on a v12 create event."""
        ev = dict(ev)
        if self.rv.event_format != EventFormat.V1:
            ev.pop("event_id", None)
        if ev["type"] == "m.room.create" and self.rv.room_id_is_create_event_hash:
            ev.pop("room_id", None)
        return ev

    def atrium_allows(self) -> bool:
        try:
            check_auth(self.rv, self.event, self.state)
        except AuthError:
            return False
        return True

    def synapse_allows(self) -> bool | None:
        """Synapse's verdict; ``None`` if it crashed (not a verdict)."""
        def syn(ev: dict[str, Any]) -> Any:
            return make_event_from_dict(self._for_synapse(ev), self.syn_rv)
        try:
            check_state_dependent_auth_rules(syn(self.event),
                                             [syn(e) for e in self.state.values()])
        except (SynapseAuthError, SynapseError):
            return False
        except Exception:  # noqa: BLE001 - Synapse crashing on odd input is not a verdict
            return None
        return True

    def describe(self) -> str:
        return f"room v{self.rv.identifier}\nevent={self.event}\nstate=" + "\n  ".join(
            f"{k}: {v['sender']} {v['content']}" for k, v in self.state.items())


def _known_divergence(case: Case) -> bool:
    """Synapse applies ``m.federate`` to the *target* of membership events too; the spec
    (rule 3) looks at the sender only."""
    ev = case.event
    return (ev["type"] == "m.room.member"
            and case.create["content"].get("m.federate") is False
            and _domain(ev["state_key"]) != _domain(case.create["sender"]))


@pytest.mark.parametrize("version", list(KNOWN_ROOM_VERSIONS))
def test_check_auth_agrees_with_synapse(version):
    rv = KNOWN_ROOM_VERSIONS[version]
    rng = random.Random(f"{SEED}-{version}")
    mismatches: list[str] = []
    crashes = allowed = compared = 0
    for _ in range(CASES_PER_VERSION):
        case = Case(rv, rng)
        theirs = case.synapse_allows()
        if theirs is None:
            crashes += 1
            continue
        ours = case.atrium_allows()
        if ours != theirs and not _known_divergence(case):
            mismatches.append(f"atrium={ours} synapse={theirs}\n{case.describe()}")
        compared += 1
        allowed += ours
    assert not mismatches, f"{len(mismatches)} mismatches; first:\n{mismatches[0]}"
    assert crashes < CASES_PER_VERSION // 20, f"Synapse crashed on {crashes} cases"
    # The generator must exercise both outcomes substantially.
    assert compared * 0.1 < allowed < compared * 0.9
