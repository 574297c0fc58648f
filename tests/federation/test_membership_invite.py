"""Invites to our users from another server (``PUT /invite`` v2 and v1): checked,
countersigned, shown in the invitee's /sync with the stripped state; rejecting such an
invite goes back through the inviting server (make_leave / send_leave), or is rejected
locally when that server cannot be reached."""
import pytest

from protocol.events import room_id_for_create_event_id
from protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.membership_helpers import F1, F2, V, event_id_of, network, q, wire

R = "remote.test"


@pytest.fixture
def net(tmp_path):
    yield from network(tmp_path)


@pytest.fixture
def a(net):
    return net.app("a.test")


@pytest.fixture
def remote(net):
    return net.remote(R)


class RemoteRoom:
    """A room held by the hand-made remote server: create, bob's join, power levels,
    join rules (invite) and a name."""

    def __init__(self, remote, version="10", room_id=None):
        self.remote = remote
        self.rv = rv = KNOWN_ROOM_VERSIONS[version]
        self.bob = bob = remote.user("bob")
        content = {"room_version": version}
        if not rv.implicit_room_creator:
            content["creator"] = bob
        rid = None if rv.room_id_is_create_event_hash else (room_id or f"!r{version}:{R}")
        self.create = remote.event(rv, room_id=rid, sender=bob, type="m.room.create",
                                   content=content, state_key="")
        self.room_id = self.create["room_id"]
        cid = self.id(self.create)
        auth0 = [] if rv.room_id_is_create_event_hash else [cid]
        self.join = remote.event(rv, room_id=self.room_id, sender=bob, type="m.room.member",
                                 content={"membership": "join"}, state_key=bob, prev=[cid],
                                 auth=auth0, depth=2)
        jid = self.id(self.join)
        self.pl = remote.event(rv, room_id=self.room_id, sender=bob, type="m.room.power_levels",
                               content={"users": {bob: 100}}, state_key="", prev=[jid],
                               auth=auth0 + [jid], depth=3)
        self.jr = remote.event(rv, room_id=self.room_id, sender=bob, type="m.room.join_rules",
                               content={"join_rule": "invite"}, state_key="",
                               prev=[self.id(self.pl)], auth=auth0 + [jid, self.id(self.pl)],
                               depth=4)
        self.name = remote.event(rv, room_id=self.room_id, sender=bob, type="m.room.name",
                                 content={"name": "Remote room"}, state_key="",
                                 prev=[self.id(self.jr)], auth=auth0 + [jid, self.id(self.pl)],
                                 depth=5)

    def id(self, ev):
        return ev["event_id"]

    def invite(self, target, **content):
        auth = ([] if self.rv.room_id_is_create_event_hash else [self.id(self.create)]) + \
            [self.id(self.join), self.id(self.pl), self.id(self.jr)]
        return self.remote.event(self.rv, room_id=self.room_id, sender=self.bob,
                                 type="m.room.member",
                                 content={"membership": "invite", **content},
                                 state_key=target, prev=[self.id(self.name)], auth=auth,
                                 depth=6)

    def stripped_state(self):
        return [wire(e, self.rv) for e in (self.create, self.jr, self.name)]


def put_invite(a, rr, ev, *, state=None, version="10", origin=R, event_id=None):
    body = {"room_version": version, "event": wire(ev, rr.rv),
            "invite_room_state": rr.stripped_state() if state is None else state}
    eid = event_id or event_id_of(ev, rr.rv)
    return a.fed_req("PUT", f"{F2}/invite/{q(rr.room_id)}/{q(eid)}", body, origin=origin)


@pytest.mark.parametrize("version", ["10", "12"])
def test_invite_v2_is_countersigned_and_shown_in_sync(a, remote, version):
    alice = a.user("alice")
    first = alice.sync()
    rr = RemoteRoom(remote, version)
    ev = rr.invite(alice.user_id)
    r = put_invite(a, rr, ev, version=version)
    assert r.status_code == 200, r.get_data(as_text=True)
    signed = r.get_json()["event"]
    assert set(signed["signatures"]) == {R, "a.test"}
    a.fed.keyring.verify_event(dict(signed, event_id=event_id_of(ev, rr.rv)), rr.rv)
    a.fed.keyring.get_keys("a.test", list(signed["signatures"]["a.test"]))
    # the invitee's /sync, incremental and initial
    for since in (first["next_batch"], None):
        got = alice.sync(since)
        inv = got["rooms"]["invite"][rr.room_id]["invite_state"]["events"]
        by_type = {(e["type"], e["state_key"]): e for e in inv}
        assert by_type[("m.room.name", "")]["content"] == {"name": "Remote room"}
        assert ("m.room.create", "") in by_type
        me = by_type[("m.room.member", alice.user_id)]
        assert (me["sender"], me["content"]["membership"]) == (rr.bob, "invite")
        assert rr.room_id not in got["rooms"]["join"]
    # nothing new afterwards
    again = alice.sync(got["next_batch"])
    assert rr.room_id not in again["rooms"]["invite"]


def test_invite_refusals(a, remote):
    alice = a.user("alice")
    rr = RemoteRoom(remote)
    ev = rr.invite(alice.user_id)

    def refused(r, code, errcode):
        assert r.status_code == code, r.get_data(as_text=True)
        assert r.get_json()["errcode"] == errcode
        return r.get_json()

    # the invitee is not ours
    refused(put_invite(a, rr, rr.invite("@carol:elsewhere.test")), 400, "M_INVALID_PARAM")
    # an unknown user of ours
    refused(put_invite(a, rr, rr.invite("@nobody:a.test")), 403, "M_FORBIDDEN")
    # sent by another server than the inviter's
    refused(put_invite(a, rr, ev, origin="evil.test"), 400, "M_INVALID_PARAM")
    # a forged signature
    forged = dict(ev, signatures={R: {k: "A" * 86 for k in ev["signatures"][R]}})
    refused(put_invite(a, rr, forged, event_id=event_id_of(ev, rr.rv)), 400, "M_INVALID_PARAM")
    # a room version we do not know
    body = refused(put_invite(a, rr, ev, version="99"), 400, "M_INCOMPATIBLE_ROOM_VERSION")
    assert body["room_version"] == "99"
    # not an invite
    leave = remote.event(rr.rv, room_id=rr.room_id, sender=rr.bob, type="m.room.member",
                         content={"membership": "leave"}, state_key=alice.user_id,
                         prev=[rr.id(rr.name)], auth=[rr.id(rr.create)], depth=6)
    refused(put_invite(a, rr, leave), 400, "M_INVALID_PARAM")
    # invite_room_state that is not state
    refused(put_invite(a, rr, ev, state=[{"type": 3}]), 400, "M_INVALID_PARAM")
    assert alice.sync()["rooms"]["invite"] == {}


def test_v12_invite_needs_the_rooms_create_event(a, remote):
    alice = a.user("alice")
    rr = RemoteRoom(remote, "12")
    ev = rr.invite(alice.user_id)
    r = put_invite(a, rr, ev, version="12", state=[wire(rr.name, rr.rv)])
    assert (r.status_code, r.get_json()["errcode"]) == (400, "M_INVALID_PARAM")
    other = RemoteRoom(remote, "12")
    other.create = remote.event(rr.rv, room_id=None, sender=rr.bob, type="m.room.create",
                                content={"room_version": "12", "x": 1}, state_key="")
    assert room_id_for_create_event_id(other.create["event_id"]) != rr.room_id
    r = put_invite(a, rr, ev, version="12", state=[wire(other.create, rr.rv)])
    assert (r.status_code, r.get_json()["errcode"]) == (400, "M_INVALID_PARAM")


def test_invite_v1(a, remote):
    alice = a.user("alice")
    rr = RemoteRoom(remote, "1")
    ev = rr.invite(alice.user_id)
    body = dict(wire(ev, rr.rv), unsigned={"invite_room_state": rr.stripped_state()})
    r = a.fed_req("PUT", f"{F1}/invite/{q(rr.room_id)}/{q(ev['event_id'])}", body, origin=R)
    assert r.status_code == 200, r.get_data(as_text=True)
    status, answer = r.get_json()
    assert status == 200 and set(answer["event"]["signatures"]) == {R, "a.test"}
    assert rr.room_id in alice.sync()["rooms"]["invite"]


def test_invite_of_a_user_already_joined_is_refused(a, remote):
    alice = a.user("alice")
    room = alice.create_room(preset="public_chat", room_version="10")
    rv = KNOWN_ROOM_VERSIONS["10"]
    bob = remote.user("bob")
    tpl = a.fed_req("GET", f"{F1}/make_join/{q(room)}/{q(bob)}", origin=R,
                    query={"ver": ["10"]}).get_json()["event"]
    ev = remote.sign_template(rv, tpl)
    assert a.fed_req("PUT", f"{F2}/send_join/{q(room)}/{q(event_id_of(ev, rv))}",
                     wire(ev, rv), origin=R).status_code == 200
    inv = remote.event(rv, room_id=room, sender=bob, type="m.room.member",
                       content={"membership": "invite"}, state_key=alice.user_id,
                       prev=[event_id_of(ev, rv)], auth=[], depth=20)
    body = {"room_version": "10", "event": wire(inv, rv), "invite_room_state": []}
    r = a.fed_req("PUT", f"{F2}/invite/{q(room)}/{q(event_id_of(inv, rv))}", body, origin=R)
    assert (r.status_code, r.get_json()["errcode"]) == (403, "M_FORBIDDEN")


def leave_handlers(remote, rr, seen):
    """The remote answers make_leave / send_leave for its room."""

    def make_leave(origin, path, query, body):
        user = path.rsplit("/", 1)[1].replace("%40", "@").replace("%3A", ":")
        return 200, {"room_version": rr.rv.identifier, "event": {
            "type": "m.room.member", "room_id": rr.room_id, "sender": user, "state_key": user,
            "content": {"membership": "leave"}, "depth": 7, "origin": R,
            "origin_server_ts": 1, "prev_events": [rr.id(rr.name)],
            "auth_events": [rr.id(rr.create), rr.id(rr.pl)]}}

    def send_leave(origin, path, query, body):
        seen.append((origin, path, body))
        return 200, {}

    remote.handlers[("GET", f"{F1}/make_leave/")] = make_leave
    remote.handlers[("PUT", f"{F2}/send_leave/")] = send_leave


def test_rejecting_a_remote_invite_goes_through_the_inviting_server(a, remote):
    alice = a.user("alice")
    rr = RemoteRoom(remote)
    assert put_invite(a, rr, rr.invite(alice.user_id)).status_code == 200
    mid = alice.sync()
    assert rr.room_id in mid["rooms"]["invite"]
    seen = []
    leave_handlers(remote, rr, seen)
    alice.req("POST", f"{V}/rooms/{q(rr.room_id)}/leave", {"reason": "no thanks"})
    assert len(seen) == 1
    origin, path, body = seen[0]
    assert origin == "a.test"
    assert body["content"] == {"membership": "leave", "reason": "no thanks"}
    assert body["signatures"]["a.test"]
    got = alice.sync(mid["next_batch"])
    assert rr.room_id not in got["rooms"]["invite"]
    left = got["rooms"]["leave"][rr.room_id]
    assert [e["content"]["membership"] for e in left["timeline"]["events"]] == ["leave"]
    assert rr.room_id not in alice.sync()["rooms"]["invite"]
    # leaving again is a no-op
    alice.req("POST", f"{V}/rooms/{q(rr.room_id)}/leave", {})
    assert len(seen) == 1


def test_rejecting_when_the_inviting_server_is_gone_is_local(net, a, remote):
    alice = a.user("alice")
    rr = RemoteRoom(remote)
    assert put_invite(a, rr, rr.invite(alice.user_id)).status_code == 200
    net.down.add(R)
    alice.req("POST", f"{V}/rooms/{q(rr.room_id)}/leave", {})
    got = alice.sync()
    assert rr.room_id not in got["rooms"]["invite"]
    assert rr.room_id not in got["rooms"]["join"]


def test_remote_invite_rows_survive_a_restart_of_the_stream(a, remote):
    """The rows' positions come from the events stream; a new store over the same database
    moves the stream past them (no position handed out twice)."""
    from store.remote_invites import RemoteInviteStore

    alice = a.user("alice")
    rr = RemoteRoom(remote)
    assert put_invite(a, rr, rr.invite(alice.user_id)).status_code == 200
    row = a.rooms.remote_invites.latest_in(alice.user_id, rr.room_id)

    class Stream:
        def __init__(self, at):
            self.at, self.allocated = at, 0

        def current(self):
            return self.at

        def allocate(self, n):
            import contextlib

            self.allocated += n
            self.at += n
            return contextlib.nullcontext(list(range(self.at - n + 1, self.at + 1)))

    s = Stream(row.stream_ordering - 3)
    store = RemoteInviteStore(a.db, s)
    assert s.current() == row.stream_ordering
    assert store.latest_in(alice.user_id, rr.room_id).event_id == row.event_id
