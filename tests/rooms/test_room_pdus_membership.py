"""BuildEvent / PersistBuilt (an invite countersigned by the invitee's server) and
MakeMembership (make_join / make_leave / make_knock templates and their errors)."""
import pytest

from atrium.errors import MatrixError
from protocol.events import build_event
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from protocol.signing import sign_event
from actors.room_messages import BuildEvent, EventSpec, MakeMembership, PersistBuilt
from tests.federation.room_pdus_helpers import RemoteServer, receive, rooms, snapshot, sync_room
from tests.rooms.conftest import user

REMOTE = RemoteServer("remote.test")
DAVE = REMOTE.user("dave")


def _ask(app, room_id, msg):
    return rooms(app).supervisor.ask(room_id, msg)


def test_build_then_persist_a_countersigned_invite(app):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="private_chat")
    head = snapshot(app, room_id)
    ev = _ask(app, room_id, BuildEvent(EventSpec("m.room.member", alice.user_id,
                                                 {"membership": "invite"}, DAVE)))
    assert ev["prev_events"] == head["extremities"] and "test.local" in ev["signatures"]
    assert snapshot(app, room_id) == head                       # not persisted
    assert rooms(app).events.get_event(ev["event_id"]) is None
    rv = KNOWN_ROOM_VERSIONS[head["room_version"]]
    sign_event(ev, rv, REMOTE.name, REMOTE.key)                 # the invitee's server
    sent = _ask(app, room_id, PersistBuilt(ev))
    assert sent.event_id == ev["event_id"] and not sent.duplicate
    stored = rooms(app).events.get_event(ev["event_id"])
    assert set(stored.event["signatures"]) == {"test.local", "remote.test"}
    snap = snapshot(app, room_id)
    assert snap["state"][("m.room.member", DAVE)] == ev["event_id"]
    assert snap["extremities"] == [ev["event_id"]]
    # alice sees the invite in her timeline
    ids = [e["event_id"] for e in sync_room(alice, room_id)["timeline"]["events"]]
    assert ev["event_id"] in ids
    again = _ask(app, room_id, PersistBuilt(ev))
    assert again.duplicate and again.stream_ordering == sent.stream_ordering


def test_persist_built_rechecks_against_current_state(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat",
                                power_level_content_override={"invite": 0})
    bob.req("POST", f"/_matrix/client/v3/join/{room_id}")
    # bob may invite now (invite level 0) ...
    ev = _ask(app, room_id, BuildEvent(EventSpec("m.room.member", bob.user_id,
                                                 {"membership": "invite"}, DAVE)))
    # ... but before the invitee's server answers, bob is kicked
    alice.req("POST", f"/_matrix/client/v3/rooms/{room_id}/kick", {"user_id": bob.user_id})
    head = snapshot(app, room_id)
    with pytest.raises(MatrixError) as e:
        _ask(app, room_id, PersistBuilt(ev))
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    assert snapshot(app, room_id) == head
    assert rooms(app).events.get_event(ev["event_id"]) is None
    # events that are not ours are refused outright
    foreign = REMOTE.join(app, room_id, "zed")
    with pytest.raises(MatrixError) as e:
        _ask(app, room_id, PersistBuilt(foreign))
    assert e.value.status == 400


def test_build_event_is_authorised(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="private_chat")
    with pytest.raises(MatrixError) as e:
        _ask(app, room_id, BuildEvent(EventSpec("m.room.member", bob.user_id,
                                                {"membership": "invite"}, DAVE)))
    assert e.value.status == 403


def test_make_join_template(app):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="public_chat")
    snap = snapshot(app, room_id)
    out = _ask(app, room_id, MakeMembership(DAVE, "join", {"displayname": "Dave"}))
    assert out["room_version"] == snap["room_version"]
    t = out["event"]
    assert t["type"] == "m.room.member" and t["sender"] == t["state_key"] == DAVE
    assert t["content"] == {"membership": "join", "displayname": "Dave"}
    assert t["prev_events"] == snap["extremities"]
    assert t["depth"] == snap["depth"] + 1
    assert t["origin"] == "test.local" and t["room_id"] == room_id
    assert isinstance(t["origin_server_ts"], int)
    wanted = {snap["state"][("m.room.power_levels", "")],
              snap["state"][("m.room.join_rules", "")]}
    assert wanted <= set(t["auth_events"])
    assert "hashes" not in t and "signatures" not in t and "event_id" not in t
    # the remote server signs it and sends it back as a PDU: accepted
    rv = KNOWN_ROOM_VERSIONS[out["room_version"]]
    ev = build_event(rv, room_id=room_id, sender=DAVE, type="m.room.member",
                     content=t["content"], state_key=DAVE, prev_events=t["prev_events"],
                     auth_events=t["auth_events"], depth=t["depth"],
                     origin_server_ts=t["origin_server_ts"], server_name=REMOTE.name,
                     signing_key=REMOTE.key)
    assert receive(app, room_id, [ev]) == {ev["event_id"]: "accepted"}


def test_make_membership_errors(app):
    alice = user(app, "alice")
    public = alice.create_room(preset="public_chat")
    private = alice.create_room(preset="private_chat")
    # banned: 403
    alice.req("POST", f"/_matrix/client/v3/rooms/{public}/ban", {"user_id": DAVE})
    for membership in ("join", "knock"):
        with pytest.raises(MatrixError) as e:
            _ask(app, public, MakeMembership(DAVE, membership))
        assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
    # invite-only room: no join, no knock (the join rule is not "knock")
    for membership in ("join", "knock"):
        with pytest.raises(MatrixError) as e:
            _ask(app, private, MakeMembership(REMOTE.user("erin"), membership))
        assert e.value.status == 403
    # leaving a room one is not in
    with pytest.raises(MatrixError) as e:
        _ask(app, private, MakeMembership(REMOTE.user("erin"), "leave"))
    assert e.value.status == 403
    # unknown room: 404
    with pytest.raises(MatrixError) as e:
        _ask(app, "!nowhere:test.local", MakeMembership(DAVE, "join"))
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    with pytest.raises(MatrixError) as e:
        _ask(app, public, MakeMembership(DAVE, "ban"))
    assert e.value.status == 400


def test_make_knock_and_leave_templates(app):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="private_chat", room_version="10",
                                initial_state=[{"type": "m.room.join_rules", "state_key": "",
                                                "content": {"join_rule": "knock"}}])
    out = _ask(app, room_id, MakeMembership(DAVE, "knock", {"reason": "hi"}))
    assert out["event"]["content"] == {"membership": "knock", "reason": "hi"}
    # an invited user may leave (reject the invite) through make_leave
    invite = _ask(app, room_id, BuildEvent(EventSpec("m.room.member", alice.user_id,
                                                     {"membership": "invite"}, DAVE)))
    _ask(app, room_id, PersistBuilt(invite))
    out = _ask(app, room_id, MakeMembership(DAVE, "leave"))
    assert out["event"]["content"] == {"membership": "leave"}


def test_make_join_of_a_restricted_room(app):
    alice = user(app, "alice")
    space = alice.create_room(preset="public_chat")
    rules = {"join_rule": "restricted",
             "allow": [{"type": "m.room_membership", "room_id": space}]}
    room_id = alice.create_room(preset="private_chat", room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": rules}])
    # dave is not in the space: 403
    with pytest.raises(MatrixError) as e:
        _ask(app, room_id, MakeMembership(DAVE, "join"))
    assert e.value.status == 403
    # once dave is in the space, alice (who can invite) vouches for him
    join = REMOTE.join(app, space, "dave")
    assert receive(app, space, [join]) == {join["event_id"]: "accepted"}
    out = _ask(app, room_id, MakeMembership(DAVE, "join"))
    assert out["event"]["content"]["join_authorised_via_users_server"] == alice.user_id
    assert snapshot(app, room_id)["state"][("m.room.member", alice.user_id)] in \
        out["event"]["auth_events"]
    # a room allowing only rooms this server does not know: M_UNABLE_TO_AUTHORISE_JOIN
    rules2 = {"join_rule": "restricted",
              "allow": [{"type": "m.room_membership", "room_id": "!elsewhere:far.away"}]}
    room2 = alice.create_room(preset="private_chat", room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": rules2}])
    with pytest.raises(MatrixError) as e:
        _ask(app, room2, MakeMembership(DAVE, "join"))
    assert (e.value.status, e.value.errcode) == (400, "M_UNABLE_TO_AUTHORISE_JOIN")
    # nobody here may invite: M_UNABLE_TO_GRANT_JOIN
    room3 = alice.create_room(preset="private_chat", room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": rules}],
        power_level_content_override={"invite": 101})
    with pytest.raises(MatrixError) as e:
        _ask(app, room3, MakeMembership(DAVE, "join"))
    assert (e.value.status, e.value.errcode) == (400, "M_UNABLE_TO_GRANT_JOIN")


def test_make_join_template_in_a_v1_room_cites_hashes(app):
    alice = user(app, "alice")
    room_id = alice.create_room(preset="public_chat", room_version="1")
    snap = snapshot(app, room_id)
    t = _ask(app, room_id, MakeMembership(DAVE, "join"))["event"]
    assert [p[0] for p in t["prev_events"]] == snap["extremities"]
    head = rooms(app).events.get_event(snap["extremities"][0]).event
    assert t["prev_events"][0][1] == {"sha256": head["hashes"]["sha256"]}
    assert all(isinstance(a, list) and "sha256" in a[1] for a in t["auth_events"])
