"""GET /voip/turnServer (TURN REST API credentials, static credentials, none, guests) and
the signalling of a call in an encrypted 1:1 room: the callee's /sync and its pushes with
the default rules.  The credentials against a real coturn: tests/e2e/test_turn_coturn.py."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from atrium.config import ConfigError, parse_config
from tests.apps import app_factory
from tests.push.conftest import PUSH_CONFIG, Gateway, set_pusher, user, wait_for
from web.voip import rest_api_credentials

TURN = "/_matrix/client/v3/voip/turnServer"
URIS = ["turn:turn.test.local:3478?transport=udp", "turns:turn.test.local:5349?transport=tcp"]
SECRET = "coturn-static-auth-secret"


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("voip"))
    yield next(factory)
    next(factory, None)


@pytest.fixture(scope="module")
def app(make):
    """TURN REST API credentials, guests allowed (the default), a push sender."""
    return make(turn_uris=URIS, turn_shared_secret=SECRET, turn_user_lifetime="2h",
                allow_guest_access=True, push=dict(PUSH_CONFIG))


@pytest.fixture(scope="module")
def gateway():
    gw = Gateway()
    yield gw
    gw.stop()


def _guest_token(app):
    r = app.test_client().post("/_matrix/client/v3/register?kind=guest", json={})
    assert r.status_code == 200, r.json
    return r.json["access_token"]


def test_shared_secret_gives_time_limited_rest_api_credentials(app):
    alice = user(app, "alice")
    before = int(time.time())
    body = alice.req("GET", TURN)
    assert set(body) == {"username", "password", "uris", "ttl"}
    expiry, _, user_id = body["username"].partition(":")
    assert user_id == "@alice:test.local"
    assert before + 7200 <= int(expiry) <= int(time.time()) + 7200
    mac = hmac.new(SECRET.encode(), body["username"].encode(), hashlib.sha1).digest()
    assert body["password"] == base64.b64encode(mac).decode()
    assert body["uris"] == URIS and body["ttl"] == 7200
    # the r0 alias answers the same way
    assert alice.req("GET", TURN.replace("/v3/", "/r0/"))["uris"] == URIS


def test_rest_api_credentials_match_the_turn_rest_api_draft():
    # username "expiry:user", password base64(HMAC-SHA1(secret, username)), padded
    username, password = rest_api_credentials("north", "@u:example.org", 3600, now=1000)
    assert username == "4600:@u:example.org"
    assert password == base64.b64encode(hmac.new(b"north", b"4600:@u:example.org",
                                                 hashlib.sha1).digest()).decode()
    assert len(password) == 28 and password.endswith("=")


def test_needs_an_access_token(app):
    r = app.test_client().get(TURN)
    assert r.status_code == 401 and r.json["errcode"] == "M_MISSING_TOKEN"


def test_guests_get_credentials_unless_turn_allow_guests_is_false(app, make):
    token = _guest_token(app)
    r = app.test_client().get(TURN, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json["username"].endswith(":test.local")
    strict = make(turn_uris=URIS, turn_username="u", turn_password="p",
                  turn_allow_guests=False, allow_guest_access=True)
    token = _guest_token(strict)
    r = strict.test_client().get(TURN, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    # static credentials are handed out as configured, ttl from turn_user_lifetime
    assert user(strict, "sam").req("GET", TURN) == {
        "username": "u", "password": "p", "uris": URIS, "ttl": 3600}


def test_no_turn_server_is_an_empty_object(make):
    bare = make(turn_shared_secret=SECRET)   # a secret without turn_uris: nothing to offer
    assert user(bare, "nobody").req("GET", TURN) == {}


@pytest.mark.parametrize("raw, key", [
    ({"turn_uris": URIS}, "turn_shared_secret"),
    ({"turn_uris": "turn:x"}, "turn_uris"),
    ({"turn_uris": ["http://x"], "turn_shared_secret": "s"}, "turn_uris"),
    ({"turn_username": "u"}, "turn_password"),
    ({"turn_password": "p"}, "turn_username"),
    ({"turn_shared_secret": 5}, "turn_shared_secret"),
    ({"turn_user_lifetime": "soon"}, "turn_user_lifetime"),
    ({"turn_user_lifetime": 0}, "turn_user_lifetime"),
    ({"turn_allow_guests": "no"}, "turn_allow_guests"),
    ({"turn_shared_secret": "s", "turn_shared_secret_path": "/x"}, "turn_shared_secret_path"),
    ({"turn_shared_secret_path": "/nonexistent/secret"}, "turn_shared_secret_path"),
])
def test_bad_turn_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"server_name": "test.local", **raw})
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


def test_secret_from_a_file_and_synapse_durations(tmp_path):
    (tmp_path / "secret").write_text("from-file\n")
    v = parse_config({"server_name": "test.local", "turn_uris": URIS[:1],
                      "turn_shared_secret_path": str(tmp_path / "secret"),
                      "turn_user_lifetime": 86400000}).voip   # a bare number is ms
    assert (v.turn_shared_secret, v.turn_user_lifetime, v.turn_allow_guests) == \
        ("from-file", 86400.0, True)


# --------------------------------------------------------------------------- call signalling

def test_encrypted_one_to_one_call_reaches_the_callee_by_sync_and_push(app, gateway):
    caller, callee = user(app, "caller"), user(app, "callee")
    room_id = caller.create_room(preset="trusted_private_chat", is_direct=True,
                                 invite=[callee.user_id], initial_state=[{
                                     "type": "m.room.encryption", "state_key": "",
                                     "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    callee.join(room_id)
    since = callee.sync()["next_batch"]
    set_pusher(callee, gateway.url, pushkey="callee-phone")
    invite = {"call_id": "c1", "party_id": "p1", "version": "1", "lifetime": 60000,
              "offer": {"type": "offer", "sdp": "v=0\r\n"}, "invitee": callee.user_id}
    e_invite = caller.send(room_id, invite, etype="m.call.invite")
    # what an E2EE client sends for its call events in an encrypted room
    e_enc = caller.send(room_id, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA",
                                  "sender_key": "k", "device_id": "D", "session_id": "s"},
                        etype="m.room.encrypted")

    timeline = callee.sync(since)["rooms"]["join"][room_id]["timeline"]["events"]
    got = {e["event_id"]: e for e in timeline}
    assert got[e_invite]["type"] == "m.call.invite" and got[e_invite]["content"] == invite
    assert got[e_enc]["type"] == "m.room.encrypted"

    def pushed():
        notes = [b["notification"] for _, _, b in gateway.received
                 if b["notification"]["devices"][0]["pushkey"] == "callee-phone"]
        return notes if len(notes) >= 2 else None

    notes = wait_for(pushed)
    assert notes, gateway.received
    by_id = {n["event_id"]: n for n in notes}
    # .m.rule.call: rings
    assert by_id[e_invite]["type"] == "m.call.invite" and by_id[e_invite]["prio"] == "high"
    assert by_id[e_invite]["devices"][0]["tweaks"] == {"sound": "ring"}
    assert by_id[e_invite]["content"]["call_id"] == "c1"
    # .m.rule.encrypted_room_one_to_one: the default sound
    assert by_id[e_enc]["type"] == "m.room.encrypted" and by_id[e_enc]["prio"] == "high"
    assert by_id[e_enc]["devices"][0]["tweaks"] == {"sound": "default"}
