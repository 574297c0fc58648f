"""Who may redact what (client-server-api "Redactions"): a sender its own events, a user
with the ``redact`` level anyone's, nobody an event of another room.  The check sits in the
RoomActor's send path, so both ``/redact`` and ``/send/m.room.redaction`` obey it."""
from urllib.parse import quote

import pytest

from tests.rooms.conftest import user

V = "/_matrix/client/v3"


def q(eid):
    return quote(eid, safe="")


def _room_with_bob(app, version):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    room_id = alice.create_room(preset="public_chat", room_version=version)
    bob.req("POST", f"{V}/join/{room_id}")
    carol.req("POST", f"{V}/join/{room_id}")
    return alice, bob, carol, room_id


@pytest.mark.parametrize("version", ["1", "10", "11", "12"])
def test_user_without_redact_level_cannot_redact_others(app, version):
    alice, bob, carol, room_id = _room_with_bob(app, version)
    theirs = carol.send(room_id)["event_id"]
    err = bob.req("PUT", f"{V}/rooms/{room_id}/redact/{q(theirs)}/r1", {}, status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    # the same through /send: the content's redacts
    err = bob.send(room_id, {"redacts": theirs}, etype="m.room.redaction", status=403)
    assert err["errcode"] == "M_FORBIDDEN"
    ev = alice.req("GET", f"{V}/rooms/{room_id}/event/{q(theirs)}")
    assert ev["content"]["body"] == "hi" and "redacted_because" not in ev.get("unsigned", {})


@pytest.mark.parametrize("version", ["1", "11", "12"])
def test_sender_redacts_own_and_moderator_redacts_anyones(app, version):
    alice, bob, carol, room_id = _room_with_bob(app, version)
    own = bob.send(room_id)["event_id"]
    bob.req("PUT", f"{V}/rooms/{room_id}/redact/{q(own)}/r1", {})
    assert bob.req("GET", f"{V}/rooms/{room_id}/event/{q(own)}")["content"] == {}
    theirs = carol.send(room_id)["event_id"]
    alice.req("PUT", f"{V}/rooms/{room_id}/redact/{q(theirs)}/r2", {})   # creator: level 100
    assert bob.req("GET", f"{V}/rooms/{room_id}/event/{q(theirs)}")["content"] == {}


def test_redact_level_granted_and_lowered(app):
    alice, bob, carol, room_id = _room_with_bob(app, "10")
    pl = alice.state(room_id, "m.room.power_levels")
    pl["redact"] = 0
    alice.state(room_id, "m.room.power_levels", body=pl)
    theirs = carol.send(room_id)["event_id"]
    bob.req("PUT", f"{V}/rooms/{room_id}/redact/{q(theirs)}/r1", {})   # redact: 0 → allowed
    pl["redact"] = 100
    alice.state(room_id, "m.room.power_levels", body=pl)
    other = alice.send(room_id)["event_id"]
    assert carol.req("PUT", f"{V}/rooms/{room_id}/redact/{q(other)}/r2", {},
                     status=403)["errcode"] == "M_FORBIDDEN"


def test_redaction_of_an_event_in_another_room_is_refused(app):
    alice = user(app, "alice")
    room_a = alice.create_room()
    room_b = alice.create_room()
    eid = alice.send(room_b)["event_id"]
    err = alice.req("PUT", f"{V}/rooms/{room_a}/redact/{q(eid)}/r1", {}, status=400)
    assert err["errcode"] == "M_INVALID_PARAM"
    assert alice.req("GET", f"{V}/rooms/{room_b}/event/{q(eid)}")["content"]["body"] == "hi"


def test_redaction_of_unknown_event(app):
    alice, bob, carol, room_id = _room_with_bob(app, "10")
    missing = "$doesnotexist"
    assert bob.req("PUT", f"{V}/rooms/{room_id}/redact/{q(missing)}/r1", {},
                   status=404)["errcode"] == "M_NOT_FOUND"
    alice.req("PUT", f"{V}/rooms/{room_id}/redact/{q(missing)}/r2", {})   # moderators may
