"""Third-party identifiers (issue 15 group 5), against a test identity server on loopback
over HTTPS (tests/threepid_is.py): account binds (/account/3pid, /bind, /unbind, /delete,
deactivation), invites by 3PID (bound → a plain invite; unbound → /store-invite and an
m.room.third_party_invite), createRoom's invite_3pid, and accepting through /3pid/onbind —
in a room we take part in (also after the inviter left), and across servers through
/exchange_third_party_invite.  Two real Atrium apps are bridged in-process
(tests/federation/membership_helpers.py)."""
from __future__ import annotations

import pytest

from atrium.identity_client import lookup_value
from protocol.signing import generate_signing_key, sign_json
from tests.federation.membership_helpers import F1, V, network, q
from tests.threepid_is import ONBIND, TOKEN, IdentityServer
from web.uia import hash_password

A, B = "a.test", "b.test"
CONFIG = {"use_insecure_ssl_client_just_for_testing_do_not_use": True,
          "federation_ip_range_blacklist": []}
TPI = "m.room.third_party_invite"
# the test identity server's certificate is not verified (the insecure-client flag)
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    srv = IdentityServer(str(tmp_path_factory.mktemp("is")))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def fresh_is(ids):
    ids.algorithms, ids.unbind_supported = ["sha256", "none"], True
    ids.revoked.clear()
    ids.calls.clear()
    ids.onbind_queue.clear()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    yield from network(tmp_path_factory.mktemp("net"))


@pytest.fixture(scope="module")
def a(net, ids):
    hs = net.app(A, **CONFIG)
    ids.trust(A, hs.runtime.signing_key)
    return hs


@pytest.fixture(scope="module")
def b(net, ids):
    hs = net.app(B, **CONFIG)
    ids.trust(B, hs.runtime.signing_key)
    return hs


def deliver(ids, hs, status=200):
    """The identity server's /3pid/onbind calls, to ``hs``."""
    answers = ids.deliver_onbind(lambda path, body: hs.http.put(path, json=body))
    assert [r.status_code for r in answers] == [status] * len(answers), \
        [r.get_json() for r in answers]
    return [r.get_json() for r in answers]


def bind(user, ids, address, status=200):
    sid, secret = ids.validated_session("email", address)
    return user.req("POST", f"{V}/account/3pid/bind", {
        "id_server": ids.name, "id_access_token": TOKEN, "sid": sid, "client_secret": secret},
        status=status)


def invite_3pid(user, room, ids, address, status=200, **extra):
    body = {"id_server": ids.name, "id_access_token": TOKEN, "medium": "email",
            "address": address, **extra}
    return user.req("POST", f"{V}/rooms/{q(room)}/invite", body, status=status)


def threepids(user):
    return [(t["medium"], t["address"]) for t in user.req("GET", f"{V}/account/3pid")[
        "threepids"]]


def calls(ids, path):
    return [body for _, p, body in ids.calls if p.endswith(path)]


# ------------------------------------------------------------------ account 3PIDs

def test_bind_list_unbind_and_delete(a, ids):
    u = a.user("acct")
    bind(u, ids, "acct@example.org")
    assert ids.bindings[("email", "acct@example.org")] == u.user_id
    [t] = u.req("GET", f"{V}/account/3pid")["threepids"]
    assert t["medium"] == "email" and t["address"] == "acct@example.org"
    assert t["validated_at"] > 0 and t["added_at"] >= t["validated_at"] - 60_000
    # unbind: signed by a.test (the identity server checks the X-Matrix signature)
    r = u.req("POST", f"{V}/account/3pid/unbind", {"medium": "email",
                                                   "address": "acct@example.org"})
    assert r == {"id_server_unbind_result": "success"}
    assert ("email", "acct@example.org") not in ids.bindings and threepids(u) == []
    # bind again, then delete
    bind(u, ids, "acct@example.org")
    r = u.req("POST", f"{V}/account/3pid/delete", {"medium": "email",
                                                   "address": "acct@example.org"})
    assert r == {"id_server_unbind_result": "success"}
    assert ("email", "acct@example.org") not in ids.bindings and threepids(u) == []
    # nothing recorded, no id_server: nothing to unbind from
    r = u.req("POST", f"{V}/account/3pid/delete", {"medium": "email", "address": "no@x.org"})
    assert r == {"id_server_unbind_result": "no-support"}
    # an identity server that does not support unbinding (non-Matrix 404)
    bind(u, ids, "acct@example.org")
    ids.unbind_supported = False
    r = u.req("POST", f"{V}/account/3pid/unbind", {"medium": "email",
                                                   "address": "acct@example.org",
                                                   "id_server": ids.name})
    assert r == {"id_server_unbind_result": "no-support"} and threepids(u) == []


def test_bind_errors_of_the_identity_server_are_passed_on(a, ids):
    u = a.user("accterr")
    sid, secret = ids.unvalidated_session("email", "half@example.org")
    body = {"id_server": ids.name, "id_access_token": TOKEN, "sid": sid,
            "client_secret": secret}
    r = u.req("POST", f"{V}/account/3pid/bind", body, status=400)
    assert r["errcode"] == "M_SESSION_NOT_VALIDATED"
    r = u.req("POST", f"{V}/account/3pid/bind", dict(body, sid="nope"), status=404)
    assert r["errcode"] == "M_NO_VALID_SESSION"
    assert threepids(u) == []
    r = u.req("POST", f"{V}/account/3pid/bind", dict(body, id_server="https://x"), status=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    r = u.req("POST", f"{V}/account/3pid/bind", {"id_server": ids.name}, status=400)
    assert r["errcode"] == "M_MISSING_PARAM"
    r = u.req("POST", f"{V}/account/3pid/unbind", {"medium": "fax", "address": "1"},
              status=400)
    assert r["errcode"] == "M_INVALID_PARAM"


def test_adding_without_our_validation_and_request_token_are_refused(a):
    u = a.user("acctadd")
    creds = {"three_pid_creds": {"id_server": "x", "id_access_token": "t", "sid": "1",
                                 "client_secret": "s"}}
    assert u.req("POST", f"{V}/account/3pid", creds, status=403)["errcode"] == \
        "M_THREEPID_AUTH_FAILED"
    r = u.req("POST", f"{V}/account/3pid/add", {"sid": "1", "client_secret": "s"}, status=401)
    assert r["flows"] == [{"stages": ["m.login.password"]}]
    body = {"client_secret": "s", "email": "a@b.c", "send_attempt": 1}
    r = a.http.post(f"{V}/account/3pid/email/requestToken", json=body)
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    for path in ("register/email/requestToken", "account/password/email/requestToken"):
        r = a.http.post(f"{V}/{path}", json=body)
        assert (r.status_code, r.json["errcode"]) == (403, "M_THREEPID_DENIED"), path


def test_deactivation_unbinds(a, ids):
    u = a.user("acctgone")
    a.db.run("pw", lambda t: t.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                                       (hash_password("pw", 4), u.user_id)), write=True)
    bind(u, ids, "gone@example.org")
    s = u.req("POST", f"{V}/account/deactivate", {}, status=401)["session"]
    auth = {"type": "m.login.password", "session": s, "password": "pw",
            "identifier": {"type": "m.id.user", "user": u.user_id}}
    r = u.req("POST", f"{V}/account/deactivate", {"auth": auth})
    assert r == {"id_server_unbind_result": "success"}
    assert ("email", "gone@example.org") not in ids.bindings
    assert a.runtime.parts["threepids"].all_binds(u.user_id) == []


# ------------------------------------------------------------------ inviting by 3PID

def test_invite_of_a_bound_address_is_a_plain_invite(a, ids):
    alice, bob = a.user("alice1"), a.user("bob1")
    ids.bind_directly("email", "bob1@example.org", bob.user_id)
    room = alice.create_room()
    invite_3pid(alice, room, ids, "bob1@example.org")
    assert a.member(room, bob.user_id) == "invite"
    ev = a.state_event(room, "m.room.member", bob.user_id)
    assert ev["sender"] == alice.user_id and "third_party_invite" not in ev["content"]
    [lookup] = calls(ids, "/lookup")
    assert lookup["algorithm"] == "sha256" and lookup["pepper"] == ids.pepper
    assert lookup["addresses"] == [lookup_value("email", "bob1@example.org", ids.pepper,
                                                "sha256")]
    assert not calls(ids, "/store-invite")
    # an identity server offering only cleartext lookups
    ids.algorithms = ["none"]
    carol = a.user("carol1")
    ids.bind_directly("email", "carol1@example.org", carol.user_id)
    invite_3pid(alice, room, ids, "carol1@example.org")
    assert a.member(room, carol.user_id) == "invite"
    assert calls(ids, "/lookup")[-1]["addresses"] == ["carol1@example.org email"]


def test_lookup_hash_is_the_specs():
    # identity-service-api "sha256": the spec's example vector
    assert lookup_value("email", "alice@example.com", "matrixrocks", "sha256") == \
        "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"


def test_unbound_address_then_bind_then_join_after_the_inviter_left(a, ids):
    alice, dave, carol = a.user("alice2"), a.user("dave2"), a.user("carol2")
    room = alice.create_room(preset="private_chat", name="Book club")
    alice.req("POST", f"{V}/rooms/{q(room)}/invite", {"user_id": dave.user_id})
    dave.req("POST", f"{V}/join/{q(room)}", {})
    invite_3pid(alice, room, ids, "carol2@example.org")
    [stored] = calls(ids, "/store-invite")
    assert stored["room_id"] == room and stored["sender"] == alice.user_id
    assert stored["room_name"] == "Book club" and stored["room_join_rules"] == "invite"
    assert stored["sender_display_name"] == alice.user_id      # no displayname: the mxid
    state = {(e["type"], e["state_key"]): e for e in
             alice.req("GET", f"{V}/rooms/{q(room)}/state")}
    [(_, token)] = [k for k in state if k[0] == TPI]
    tpi = state[(TPI, token)]
    assert tpi["sender"] == alice.user_id
    assert tpi["content"]["display_name"] == "c...@e..."
    assert tpi["content"]["public_key"] == ids.public_key
    assert tpi["content"]["key_validity_url"] == f"https://{ids.name}" \
        "/_matrix/identity/v2/pubkey/isvalid"
    assert len(tpi["content"]["public_keys"]) == 2
    # the inviter leaves; carol binds her address through us; the IS tells us
    alice.req("POST", f"{V}/rooms/{q(room)}/leave", {})
    bind(carol, ids, "carol2@example.org")
    deliver(ids, a)
    assert a.member(room, carol.user_id) == "invite"
    ev = a.state_event(room, "m.room.member", carol.user_id)
    assert ev["sender"] == alice.user_id
    assert ev["content"]["third_party_invite"]["display_name"] == "c...@e..."
    assert ev["content"]["third_party_invite"]["signed"]["mxid"] == carol.user_id
    assert ev["content"]["third_party_invite"]["signed"]["token"] == token
    assert room in carol.sync()["rooms"]["invite"]
    # a repeated notification changes nothing; then carol joins
    ids.onbind_queue.append({"invites": [{"room_id": room, "sender": alice.user_id,
                                          "mxid": carol.user_id, "medium": "email",
                                          "address": "carol2@example.org",
                                          "signed": ev["content"]["third_party_invite"][
                                              "signed"]}]})
    deliver(ids, a)
    carol.req("POST", f"{V}/join/{q(room)}", {})
    assert a.member(room, carol.user_id) == "join"


def test_revoked_key_forged_signature_and_unknown_token_are_refused(a, ids):
    alice, erin = a.user("alice3"), a.user("erin3")
    room = alice.create_room()
    invite_3pid(alice, room, ids, "erin3@example.org")
    ids.revoked.add(ids.public_key)
    bind(erin, ids, "erin3@example.org")
    [queued] = list(ids.onbind_queue)
    [err] = deliver(ids, a, status=403)
    assert err["errcode"] == "M_FORBIDDEN" and "revoked" in err["error"]
    assert a.member(room, erin.user_id) is None
    signed = queued["invites"][0]["signed"]
    forged = sign_json({"mxid": erin.user_id, "token": signed["token"]}, ids.name,
                       generate_signing_key("0"))
    unknown = sign_json({"mxid": erin.user_id, "token": "nosuchtoken"}, ids.name, ids.sk)
    ids.revoked.clear()
    for bad in (forged, unknown):
        ids.onbind_queue.append({"invites": [dict(queued["invites"][0], signed=bad)]})
        [err] = deliver(ids, a, status=403)
        assert err["errcode"] == "M_FORBIDDEN"
    assert a.member(room, erin.user_id) is None
    # the genuine notification, once the key is valid again
    ids.onbind_queue.append(queued)
    deliver(ids, a)
    assert a.member(room, erin.user_id) == "invite"


def test_onbind_bad_input(a):
    for body in ([], {"invites": "x"}, {"invites": [{"room_id": "!r:a.test"}]},
                 {"invites": [{"room_id": "!r:a.test", "sender": "@x:a.test",
                               "mxid": "@someone:elsewhere.test", "signed": {}}]}):
        r = a.http.put(ONBIND, json=body)
        assert r.status_code == 400 and r.json["errcode"].startswith("M_"), body
    assert a.http.put(ONBIND, data=b"{nope").json["errcode"] == "M_NOT_JSON"
    assert a.http.post(ONBIND, json={"medium": "email"}).status_code == 200   # no invites


def test_refused_inviter_leaves_nothing_at_the_identity_server(a, ids):
    alice, mallory = a.user("alice4"), a.user("mallory4")
    room = alice.create_room(preset="public_chat")
    mallory.req("POST", f"{V}/join/{q(room)}", {})
    alice.state(room, "m.room.power_levels", {"users": {}, "invite": 50})
    r = invite_3pid(mallory, room, ids, "x4@example.org", status=403)
    assert r["errcode"] == "M_FORBIDDEN"
    stranger = a.user("stranger4")
    invite_3pid(stranger, room, ids, "x4@example.org", status=403)
    assert ids.calls == []
    r = alice.req("POST", f"{V}/rooms/{q(room)}/invite", {
        "medium": "email", "address": "x4@example.org", "id_server": ids.name}, status=400)
    assert r["errcode"] == "M_MISSING_PARAM"
    r = invite_3pid(alice, room, ids, "x4@example.org", status=401,
                    id_access_token="wrong")        # the identity server's own error
    assert r["errcode"] == "M_UNAUTHORIZED"


def test_create_room_with_invite_3pid(a, ids):
    alice, bob = a.user("alice5"), a.user("bob5")
    ids.bind_directly("email", "bob5@example.org", bob.user_id)
    inv = [{"id_server": ids.name, "id_access_token": TOKEN, "medium": "email",
            "address": addr} for addr in ("bob5@example.org", "new5@example.org")]
    room = alice.create_room(invite_3pid=inv, is_direct=True)
    assert a.member(room, bob.user_id) == "invite"
    assert a.state_event(room, "m.room.member", bob.user_id)["content"]["is_direct"] is True
    state = alice.req("GET", f"{V}/rooms/{q(room)}/state")
    assert [e["content"]["display_name"] for e in state if e["type"] == TPI] == ["n...@e..."]
    rooms = a.db.run("n", lambda t: t.query_value("SELECT COUNT(*) FROM rooms"))
    for bad in ("x", [{"medium": "email"}], [{**inv[0], "address": 5}]):
        r = alice.req("POST", f"{V}/createRoom", {"invite_3pid": bad}, status=400)
        assert r["errcode"] in ("M_BAD_JSON", "M_MISSING_PARAM")
    assert a.db.run("n", lambda t: t.query_value("SELECT COUNT(*) FROM rooms")) == rooms


# ------------------------------------------------------------------ across servers

def test_exchange_through_the_inviting_server(a, b, ids):
    """bob (b.test, not in the room) binds the address alice (a.test) invited: b.test asks
    a.test to exchange the invite, a.test invites bob over /invite, bob joins."""
    alice, bob = a.user("alice6"), b.user("bob6")
    room = alice.create_room(room_version="10", name="Across")
    invite_3pid(alice, room, ids, "bob6@example.org")
    bind(bob, ids, "bob6@example.org")
    deliver(ids, b)
    assert ("PUT", A, f"{F1}/exchange_third_party_invite/{q(room)}") in b.client.calls
    assert a.member(room, bob.user_id) == "invite"
    ev = a.state_event(room, "m.room.member", bob.user_id)
    assert ev["sender"] == alice.user_id and set(ev["signatures"]) == {A, B}
    assert ev["content"]["third_party_invite"]["signed"]["mxid"] == bob.user_id
    assert room in bob.sync()["rooms"]["invite"]
    bob.req("POST", f"{V}/join/{q(room)}", {})
    assert a.member(room, bob.user_id) == "join"


def test_exchange_refusals(a, ids):
    alice = a.user("alice7")
    room = alice.create_room()
    invite_3pid(alice, room, ids, "z7@example.org")
    [(_, token)] = [(e["type"], e["state_key"]) for e in
                    alice.req("GET", f"{V}/rooms/{q(room)}/state") if e["type"] == TPI]
    signed = sign_json({"mxid": "@z7:b.test", "token": token}, ids.name, ids.sk)
    body = {"type": "m.room.member", "room_id": room, "sender": alice.user_id,
            "state_key": "@z7:b.test", "content": {"membership": "invite",
                                                   "third_party_invite": {"signed": signed}}}
    path = f"{F1}/exchange_third_party_invite/{q(room)}"
    r = a.fed_req("PUT", path, body, origin="c.test")      # not c.test's user
    assert r.status_code == 403
    r = a.fed_req("PUT", path, dict(body, room_id="!other:a.test"), origin=B)
    assert r.status_code == 400
    r = a.http.put(path, json=body)                          # unsigned
    assert r.status_code == 401


def test_invitee_server_in_the_room_sends_the_invite_itself(a, b, ids):
    """carol's server (b.test) takes part in the room (bob is joined): it builds the invite
    with alice (a.test) as the sender and hands it to the outbound side to relay."""
    alice, bob, carol = a.user("alice8"), b.user("bob8"), b.user("carol8")
    room = alice.create_room(room_version="10", preset="public_chat")
    bob.req("POST", f"{V}/join/{q(room)}", {}, query={"via": A})
    invite_3pid(alice, room, ids, "carol8@example.org")
    token = _token(alice, room)
    _push(a, b, room, a.rooms.current_state_event(room, TPI, token).event_id)
    assert b.state_event(room, TPI, token) is not None
    relayed, before = [], len(b.client.calls)
    hook = b.fed.extras.get("membership_received")
    b.fed.extras["membership_received"] = lambda *args: relayed.append(args)
    try:
        bind(carol, ids, "carol8@example.org")
        deliver(ids, b)
    finally:
        b.fed.extras["membership_received"] = hook
    assert b.member(room, carol.user_id) == "invite"
    ev = b.state_event(room, "m.room.member", carol.user_id)
    assert ev["sender"] == alice.user_id and set(ev["signatures"]) == {B}
    assert relayed == [(room, ev["event_id"], B)]
    assert not any(c[2].startswith(f"{F1}/exchange_third_party_invite")
                   for c in b.client.calls[before:])
    # the inviting server accepts it, though a.test never signed it (the spec's exemption)
    _push(b, a, room, ev["event_id"])
    assert a.member(room, carol.user_id) == "invite"


def _token(user, room):
    return next(e["state_key"] for e in user.req("GET", f"{V}/rooms/{q(room)}/state")
                if e["type"] == TPI)


def _push(src, dst, room, event_id):
    """Deliver ``src``'s event to ``dst`` as a transaction (the outbound sender is a test
    double in these apps)."""
    from federation.room_queries import wire_pdu

    se = src.rooms.events.get_event(event_id)
    rv = src.rooms.room_version(room)
    r = dst.fed_req("PUT", f"{F1}/send/t-{event_id[1:9]}", {
        "origin": src.name, "origin_server_ts": 1, "pdus": [wire_pdu(se.event, rv)]},
        origin=src.name)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["pdus"][event_id] == {}, r.get_json()


def test_identity_client_verifies_certificates_and_filters_addresses(a, ids):
    from atrium.errors import MatrixError
    from atrium.identity_client import IdentityClient

    strict = IdentityClient(A, a.runtime.signing_key)          # the default: verified TLS
    with pytest.raises(MatrixError) as e:
        strict.lookup(ids.name, TOKEN, "email", "x@example.org")
    assert e.value.status == 502 and "certificate" in e.value.error.lower()
    fenced = IdentityClient(A, a.runtime.signing_key, verify_tls=False,
                            ip_allowed=lambda ip: False)
    with pytest.raises(MatrixError) as e:
        fenced.lookup(ids.name, TOKEN, "email", "x@example.org")
    assert e.value.status == 403
    assert ids.calls == []


def test_join_with_third_party_signed(a, ids):
    """client-server-api ``/join`` ``third_party_signed``: the client presents the identity
    server's signed association itself (no /3pid/onbind) and is invited, then joined."""
    alice, frank = a.user("alice9"), a.user("frank9")
    room = alice.create_room(preset="private_chat")
    invite_3pid(alice, room, ids, "frank9@example.org")
    token = [e["state_key"] for e in alice.req("GET", f"{V}/rooms/{q(room)}/state")
             if e["type"] == TPI][0]
    signed = sign_json({"mxid": frank.user_id, "sender": alice.user_id, "token": token},
                       ids.name, ids.sk)
    # someone else's association is refused, and so is a forged one
    other = sign_json({"mxid": alice.user_id, "sender": alice.user_id, "token": token},
                      ids.name, ids.sk)
    r = frank.req("POST", f"{V}/rooms/{q(room)}/join", {"third_party_signed": other},
                  status=400)
    assert r["errcode"].startswith("M_")
    forged = sign_json({"mxid": frank.user_id, "sender": alice.user_id, "token": token},
                       ids.name, generate_signing_key("0"))
    r = frank.req("POST", f"{V}/rooms/{q(room)}/join", {"third_party_signed": forged},
                  status=403)
    assert r["errcode"] == "M_FORBIDDEN" and a.member(room, frank.user_id) is None
    frank.req("POST", f"{V}/rooms/{q(room)}/join", {"third_party_signed": signed})
    assert a.member(room, frank.user_id) == "join"
    ev = a.state_event(room, "m.room.member", frank.user_id)
    assert ev["content"]["membership"] == "join"
