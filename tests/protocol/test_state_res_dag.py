"""DAG fixtures for the state-resolution tests (helpers; the few tests here check the helpers).

A fixture is a list of events with readable names ("PA", "MB", …) and edge chains such as
``[["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]]`` (each chain lists an event and
then its prev event, newest first).  Every fixture starts from the same room: Alice creates
it, sets power levels and a public join rule, Bob, Charlie and Zara join, Zara says
something ("START"); Alice closes the DAG ("END").  ``origin_server_ts`` follows the order
events are listed in.

:class:`Dag` builds real event dicts from a fixture: depth from the prev events, the state
before each event by resolving the states after its prev events, and ``auth_events`` chosen
from that state by the auth events selection.  It then resolves the state at "END" three
ways — event by event along the DAG, batch by batch (fork states folded pairwise) and all at
once (one call with every fork's state) — in shuffled orders.

Auth decisions are the real ``protocol.auth.check_auth``; every fixture event is also
checked against the state it was sent in, so a fixture cannot describe an impossible room.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from protocol.auth import check_auth
from protocol.events import auth_types_for_event
from protocol.room_versions import EventFormat, RoomVersion, get_room_version
from protocol.state_res import resolve_state

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.org"
EVELYN = "@evelyn:example.net"
ZARA = "@zara:example.net"

CREATE = "m.room.create"
MEMBER = "m.room.member"
PL = "m.room.power_levels"
JR = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"


def join() -> dict[str, Any]:
    return {"membership": "join"}


def member(membership: str, **extra: Any) -> dict[str, Any]:
    return {"membership": membership, **extra}


# --- fixtures -----------------------------------------------------------------------------


@dataclass
class E:
    """A fixture event: readable name, sender, type, state_key (None: message), content."""

    name: str
    sender: str
    type: str
    state_key: str | None
    content: dict[str, Any] = field(default_factory=dict)


def initial_events(rv: RoomVersion) -> list[E]:
    users = {ALICE: 100}
    if rv.privileged_creators:
        users = {}  # v12: creators have infinite power and may not be listed
    create_content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        create_content["creator"] = ALICE
    return [
        E("CREATE", ALICE, CREATE, "", create_content),
        E("IMA", ALICE, MEMBER, ALICE, join()),
        E("IPOWER", ALICE, PL, "", {"users": users}),
        E("IJR", ALICE, JR, "", {"join_rule": "public"}),
        E("IMB", BOB, MEMBER, BOB, join()),
        E("IMC", CHARLIE, MEMBER, CHARLIE, join()),
        E("IMZ", ZARA, MEMBER, ZARA, join()),
        E("START", ZARA, MESSAGE, None, {"body": "start"}),
        E("END", ALICE, MESSAGE, None, {"body": "end"}),
    ]


INITIAL_CHAIN = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


class Dag:
    """The events of one fixture in room version ``rv``, built in a valid order."""

    def __init__(self, rv: RoomVersion, events: list[E], edges: list[list[str]],
                 *, initial: list[E] | None = None, ts_of: Mapping[str, int] | None = None,
                 auth_of: Mapping[str, list[str]] | None = None) -> None:
        self.rv = rv
        init = initial if initial is not None else initial_events(rv)
        # "END" from the initial events goes last so its timestamp is the largest.
        ordered = [e for e in init if e.name != "END"] + events + [e for e in init if e.name == "END"]
        self.spec = {e.name: e for e in ordered}
        self.ts = {e.name: (ts_of or {}).get(e.name, 1000 + 10 * i) for i, e in enumerate(ordered)}
        self.prevs: dict[str, list[str]] = {e.name: [] for e in ordered}
        for chain in [INITIAL_CHAIN] + edges:
            for newer, older in zip(chain, chain[1:]):
                if older not in self.prevs[newer]:
                    self.prevs[newer].append(older)
        self.auth_override = dict(auth_of or {})
        self.room_id = ("!" + self.eid("CREATE")[1:] if rv.room_id_is_create_event_hash
                        else "!room:example.com")
        self.events: dict[str, dict[str, Any]] = {}
        self.state_after: dict[str, dict[tuple[str, str], str]] = {}
        self.state_before: dict[str, dict[tuple[str, str], str]] = {}
        self.name_of: dict[str, str] = {}
        for name in self.topological(random.Random(0)):
            self._build(name)

    # ids ----------------------------------------------------------------------------------
    def eid(self, name: str) -> str:
        if self.rv.event_format == EventFormat.V1:
            return f"${name}:example.com"
        if self.rv.room_id_is_create_event_hash:
            # v12 room ids are "!" + the create event's 43-character hash: pad to that shape.
            return "$" + name.ljust(43, "_")
        return f"${name}"

    def names(self, state: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], str]:
        return {k: self.name_of[v] for k, v in state.items()}

    def _refs(self, ids: Iterable[str]) -> list[Any]:
        if self.rv.event_format == EventFormat.V1:
            return [[i, {"sha256": "fake"}] for i in ids]
        return list(ids)

    def topological(self, rng: random.Random) -> list[str]:
        """A random order in which every event comes after its prev events."""
        done: set[str] = set()
        out: list[str] = []
        pending = set(self.prevs)
        while pending:
            ready = sorted(n for n in pending if all(p in done for p in self.prevs[n]))
            assert ready, f"cycle among {pending}"
            pick = rng.choice(ready)
            pending.remove(pick)
            done.add(pick)
            out.append(pick)
        return out

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        return self.events.get(event_id)

    def resolve(self, states: list[Mapping[tuple[str, str], str]],
                rng: random.Random | None = None) -> dict[tuple[str, str], str]:
        states = [dict(s) for s in states]
        if rng is not None:
            rng.shuffle(states)
            for i, s in enumerate(states):
                items = list(s.items())
                rng.shuffle(items)
                states[i] = dict(items)
        return resolve_state(self.rv, states, self.get_event)

    def _check_valid_at_creation(self, ev: dict[str, Any], before: Mapping) -> None:
        """A fixture event must pass the auth rules against the state it was sent in."""
        state = {k: self.events[v] for k, v in before.items()}
        if ev["type"] != CREATE:
            state.setdefault((CREATE, ""), self.events[self.eid("CREATE")])
        check_auth(self.rv, ev, state)

    def _build(self, name: str, check: bool = True) -> None:
        spec = self.spec[name]
        prevs = self.prevs[name]
        if not prevs:
            before: dict[tuple[str, str], str] = {}
        elif len(prevs) == 1:
            before = dict(self.state_after[prevs[0]])
        else:
            before = self.resolve([self.state_after[p] for p in prevs])
        content = spec.content
        if name in self.auth_override:
            auth = [self.eid(n) for n in self.auth_override[name]]
        elif spec.type == CREATE:
            auth = []
        else:
            keys = auth_types_for_event(self.rv, spec.type, spec.sender, spec.state_key,
                                            spec.content)
            auth = [before[k] for k in sorted(keys) if k in before]
        ev: dict[str, Any] = {
            "event_id": self.eid(name),
            "room_id": self.room_id,
            "sender": spec.sender,
            "type": spec.type,
            "content": content,
            "origin_server_ts": self.ts[name],
            "depth": 1 + max((self.events[self.eid(p)]["depth"] for p in prevs), default=0),
            "prev_events": self._refs(self.eid(p) for p in prevs),
            "auth_events": self._refs(auth),
            "hashes": {"sha256": "fake"},
            "signatures": {},
        }
        if self.rv.event_format == EventFormat.V1:
            ev["origin"] = spec.sender.split(":", 1)[1]
        if spec.state_key is not None:
            ev["state_key"] = spec.state_key
        self.events[ev["event_id"]] = ev
        if check:
            self._check_valid_at_creation(ev, before)
        self.name_of[ev["event_id"]] = name
        self.state_before[name] = before
        after = dict(before)
        if spec.state_key is not None:
            after[(spec.type, spec.state_key)] = ev["event_id"]
        self.state_after[name] = after

    # the three ways to reach the state at END ----------------------------------------------
    def incremental(self, seed: int) -> dict[tuple[str, str], str]:
        """Event by event along the DAG, in a random topological order, resolving at every
        merge with the prev states shuffled."""
        rng = random.Random(seed)
        after: dict[str, dict[tuple[str, str], str]] = {}
        before: dict[str, dict[tuple[str, str], str]] = {}
        for name in self.topological(rng):
            prevs = list(self.prevs[name])
            rng.shuffle(prevs)
            if not prevs:
                state: dict[tuple[str, str], str] = {}
            elif len(prevs) == 1:
                state = dict(after[prevs[0]])
            else:
                state = self.resolve([after[p] for p in prevs], rng)
            before[name] = state
            spec = self.spec[name]
            nxt = dict(state)
            if spec.state_key is not None:
                nxt[(spec.type, spec.state_key)] = self.eid(name)
            after[name] = nxt
        return before["END"]

    def fork_states(self) -> list[dict[tuple[str, str], str]]:
        return [self.state_after[p] for p in self.prevs["END"]]

    def all_at_once(self, seed: int) -> dict[tuple[str, str], str]:
        return self.resolve(self.fork_states(), random.Random(seed))

    def batches(self, seed: int) -> dict[tuple[str, str], str]:
        rng = random.Random(seed)
        states = self.fork_states()
        rng.shuffle(states)
        acc = states[0]
        for state in states[1:]:
            acc = self.resolve([acc, state], rng)
        return acc

    def expected(self, present: Iterable[str], absent: Iterable[tuple[str, str]] = ()
                 ) -> dict[tuple[str, str], str]:
        """The initial room state with ``present`` events replacing their keys."""
        state = dict(self.state_after["START"])
        for name in present:
            spec = self.spec[name]
            assert spec.state_key is not None
            state[(spec.type, spec.state_key)] = self.eid(name)
        for key in absent:
            state.pop(key, None)
        return state


def assert_all_agree(dag: Dag, expected: Mapping[tuple[str, str], str], seeds: int = 3) -> None:
    """Incremental, batched and all-at-once resolution in shuffled orders all give
    ``expected``; failures are shown with readable names."""
    want = dag.names(expected)
    for seed in range(seeds):
        for how in (dag.incremental, dag.batches, dag.all_at_once):
            got = dag.names(how(seed))
            assert got == want, f"{how.__name__} (seed {seed}) in room v{dag.rv.identifier}"


def rv_of(identifier: str) -> RoomVersion:
    rv = get_room_version(identifier)
    assert rv is not None
    return rv


# --- tests of the helpers ------------------------------------------------------------------


def test_dag_builds_linear_room_with_auth_events_from_state_before():
    dag = Dag(rv_of("11"), [E("T1", ALICE, TOPIC, "", {"topic": "hi"})],
              [["END", "T1", "START"]])
    t1 = dag.events["$T1"]
    assert set(t1["auth_events"]) == {"$CREATE", "$IPOWER", "$IMA"}
    assert dag.names(dag.state_before["END"])[(TOPIC, "")] == "T1"


def test_dag_v12_create_is_not_an_auth_event():
    dag = Dag(rv_of("12"), [], [["END", "START"]])
    imb = dag.events[dag.eid("IMB")]
    assert dag.eid("CREATE") not in imb["auth_events"]
    assert imb["room_id"] == "!" + dag.eid("CREATE")[1:]


def test_dag_v1_format_uses_reference_pairs():
    dag = Dag(rv_of("1"), [], [["END", "START"]])
    assert dag.events["$IMB:example.com"]["prev_events"][0][0] == "$IJR:example.com"
    assert all(isinstance(r, list) for r in dag.events["$IMB:example.com"]["auth_events"])
