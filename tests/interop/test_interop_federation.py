"""Atrium and Synapse federating over TLS on loopback: keys, notaries, profiles, aliases,
the public room directory; and forged federation requests refused by Atrium.

Spec: server-server-api.md — "Retrieving server keys" (publishing and querying through
another server), "Request Authentication" (X-Matrix; 401 for a bad signature, an unknown
key or another destination), "Transactions" (at most 50 PDUs and 100 EDUs; a transaction
id is idempotent), "Send-to-device messaging" (``message_id`` idempotence), "Query Types"
(profile, directory), "Public Room Directory".
"""
from __future__ import annotations

import time
import uuid

import pytest

from tests.interop.conftest import Peers
from tests.interop.helpers import (
    V3, collect_to_device, errcode, federation_request, own_keys, q, verify_server_key_object,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def _notary_answer(server_keys: list[dict], about: str) -> dict:
    found = [k for k in server_keys if k.get("server_name") == about]
    assert found, f"the notary returned no keys of {about}: {server_keys}"
    return found[0]


# --- keys ----------------------------------------------------------------------------------


def test_atrium_notary_serves_synapse_keys_signed_by_both(peers: Peers) -> None:
    atrium, synapse, ca = peers.atrium, peers.synapse, peers.ca.cert_path
    syn_keys = own_keys(synapse.base_url, ca)
    atr_keys = own_keys(atrium.base_url, ca)
    acct = peers.account(atrium)
    for method in ("GET", "POST"):
        if method == "GET":
            j = acct.ok("GET", f"/_matrix/key/v2/query/{q(synapse.server_name)}")
        else:
            j = acct.ok("POST", "/_matrix/key/v2/query",
                        {"server_keys": {synapse.server_name: {}}})
        got = _notary_answer(j["server_keys"], synapse.server_name)
        assert got["verify_keys"] == syn_keys["verify_keys"]
        verify_server_key_object(got, synapse.server_name, syn_keys)   # Synapse's own
        verify_server_key_object(got, atrium.server_name, atr_keys)    # the notary's


def test_synapse_notary_serves_atrium_keys_signed_by_both(peers: Peers) -> None:
    atrium, synapse, ca = peers.atrium, peers.synapse, peers.ca.cert_path
    syn_keys = own_keys(synapse.base_url, ca)
    atr_keys = own_keys(atrium.base_url, ca)
    acct = peers.account(synapse)
    # Synapse's notary fetches from the server only on a cache miss for a named key id;
    # a GET without key ids answers from its cache, which the POST just filled
    # (and it insists on minimum_valid_until_ts, which the spec makes optional)
    kid = next(iter(atr_keys["verify_keys"]))
    j = acct.ok("POST", "/_matrix/key/v2/query", {"server_keys": {atrium.server_name: {
        kid: {"minimum_valid_until_ts": int(time.time() * 1000)}}}})
    for answer in (j, acct.ok("GET", f"/_matrix/key/v2/query/{q(atrium.server_name)}")):
        got = _notary_answer(answer["server_keys"], atrium.server_name)
        assert got["verify_keys"] == atr_keys["verify_keys"]
        verify_server_key_object(got, atrium.server_name, atr_keys)
        verify_server_key_object(got, synapse.server_name, syn_keys)


# --- profiles ------------------------------------------------------------------------------


def test_profiles_read_across(peers: Peers) -> None:
    a = peers.account(peers.atrium)
    b = peers.account(peers.synapse)
    a.set_displayname("Alice on Atrium")
    b.set_displayname("Bob on Synapse")
    assert a.ok("GET", f"{V3}/profile/{q(b.user_id)}")["displayname"] == "Bob on Synapse"
    assert a.ok("GET", f"{V3}/profile/{q(b.user_id)}/displayname") == \
        {"displayname": "Bob on Synapse"}
    assert b.ok("GET", f"{V3}/profile/{q(a.user_id)}")["displayname"] == "Alice on Atrium"
    # a user the other server does not have: 404 M_NOT_FOUND, on both sides
    status, j = a.call("GET", f"{V3}/profile/{q('@nobody:' + b.server_name)}")
    assert (status, j.get("errcode")) == (404, "M_NOT_FOUND"), j
    status, j = b.call("GET", f"{V3}/profile/{q('@nobody:' + a.server_name)}")
    assert status == 404, j


# --- aliases -------------------------------------------------------------------------------


def test_aliases_resolve_across(peers: Peers) -> None:
    a = peers.account(peers.atrium)
    b = peers.account(peers.synapse)
    tag = uuid.uuid4().hex[:8]
    room_a = a.create_room(room_alias_name=f"atr{tag}")
    room_b = b.create_room(room_alias_name=f"syn{tag}")
    alias_a, alias_b = f"#atr{tag}:{a.server_name}", f"#syn{tag}:{b.server_name}"

    got = b.ok("GET", f"{V3}/directory/room/{q(alias_a)}")
    assert got["room_id"] == room_a and a.server_name in got["servers"], got
    got = a.ok("GET", f"{V3}/directory/room/{q(alias_b)}")
    assert got["room_id"] == room_b and b.server_name in got["servers"], got

    status, j = a.call("GET", f"{V3}/directory/room/{q(f'#none{tag}:{b.server_name}')}")
    assert (status, j.get("errcode")) == (404, "M_NOT_FOUND"), j
    status, j = b.call("GET", f"{V3}/directory/room/{q(f'#none{tag}:{a.server_name}')}")
    assert (status, j.get("errcode")) == (404, "M_NOT_FOUND"), j


# --- public rooms --------------------------------------------------------------------------


def test_public_rooms_of_the_other_server(peers: Peers) -> None:
    a = peers.account(peers.atrium)
    b = peers.account(peers.synapse)
    tag = uuid.uuid4().hex[:8]
    room_a = a.create_room(preset="public_chat", visibility="public", name=f"Atrium {tag}")
    room_b = b.create_room(preset="public_chat", visibility="public", name=f"Synapse {tag}")

    def listed(acct, server, room_id):
        j = acct.ok("GET", f"{V3}/publicRooms", query={"server": server, "limit": "100"})
        return [r for r in j["chunk"] if r["room_id"] == room_id]

    [ra] = wait_until(lambda: listed(b, a.server_name, room_a), 10,
                      what="Atrium's room in Synapse's view of Atrium's directory")
    assert ra["name"] == f"Atrium {tag}" and ra["num_joined_members"] == 1
    [rb] = wait_until(lambda: listed(a, b.server_name, room_b), 10,
                      what="Synapse's room in Atrium's view of Synapse's directory")
    assert rb["name"] == f"Synapse {tag}" and rb["num_joined_members"] == 1
    # the filtered (POST) form goes over federation too
    j = a.ok("POST", f"{V3}/publicRooms", {"filter": {"generic_search_term": tag}, "limit": 10},
             query={"server": b.server_name})
    assert [r["room_id"] for r in j["chunk"]] == [room_b], j


# --- forged input --------------------------------------------------------------------------


def _profile_path(user_id: str) -> str:
    return f"/_matrix/federation/v1/query/profile?user_id={q(user_id)}&field=displayname"


def test_signed_request_as_synapse_is_accepted(peers: Peers) -> None:
    """The control for the forgeries below: the same request, correctly signed with
    Synapse's real key, is answered."""
    a = peers.account(peers.atrium)
    a.set_displayname("Control")
    syn = peers.synapse
    r = federation_request(peers.atrium.base_url, peers.ca.cert_path, "GET",
                           _profile_path(a.user_id), origin=syn.server_name,
                           destination=peers.atrium.server_name, signing_key=syn.signing_key)
    assert r.status_code == 200, r.text
    assert r.json() == {"displayname": "Control"}


@pytest.mark.parametrize("forgery", ["bad_signature", "wrong_destination", "unknown_key",
                                     "no_header", "unknown_origin"])
def test_forged_requests_are_refused_401(peers: Peers, forgery: str) -> None:
    from protocol.signing import generate_signing_key

    a = peers.account(peers.atrium)
    syn, atr = peers.synapse, peers.atrium
    kw: dict = {"origin": syn.server_name, "destination": atr.server_name,
                "signing_key": syn.signing_key}
    if forgery == "bad_signature":
        # Synapse's key id, but signed by another key
        kw["signing_key"] = generate_signing_key(syn.signing_key.version)
    elif forgery == "wrong_destination":
        kw["header_destination"] = "localhost:1"
    elif forgery == "unknown_key":
        kw["key_id"] = "ed25519:not_a_key_of_synapse"
    elif forgery == "no_header":
        kw["signing_key"] = None
    elif forgery == "unknown_origin":
        # nothing answers there: its keys cannot be had
        kw["origin"] = "localhost:1"
    r = federation_request(atr.base_url, peers.ca.cert_path, "GET", _profile_path(a.user_id),
                           **kw)
    assert r.status_code == 401, (forgery, r.status_code, r.text)
    assert errcode(r) == "M_UNAUTHORIZED", r.text


def test_signature_over_another_body_is_refused(peers: Peers) -> None:
    """A signature covers the body: the same header on a changed body is 401."""
    from protocol.xmatrix import sign_request
    import requests

    a = peers.account(peers.atrium)
    syn, atr = peers.synapse, peers.atrium
    path = f"/_matrix/federation/v1/send/{uuid.uuid4().hex}"
    signed_body = {"origin": syn.server_name, "origin_server_ts": 1, "pdus": [], "edus": []}
    sent_body = dict(signed_body, edus=[_to_device_edu(syn.server_name, a, "tampered")])
    auth = sign_request(syn.signing_key, "PUT", path, syn.server_name, atr.server_name,
                        signed_body)
    r = requests.put(atr.base_url + path, json=sent_body, headers={"Authorization": auth},
                     verify=peers.ca.cert_path, timeout=30)
    assert r.status_code == 401 and errcode(r) == "M_UNAUTHORIZED", r.text


def _to_device_edu(origin: str, to, text: str, message_id: str | None = None) -> dict:
    return {"edu_type": "m.direct_to_device",
            "content": {"sender": f"@mallory:{origin}", "type": "org.atrium.interop",
                        "message_id": message_id or uuid.uuid4().hex,
                        "messages": {to.user_id: {to.device_id: {"text": text}}}}}


def _send_txn(peers: Peers, txn_id: str, body: dict):
    syn, atr = peers.synapse, peers.atrium
    return federation_request(atr.base_url, peers.ca.cert_path, "PUT",
                              f"/_matrix/federation/v1/send/{txn_id}", body=body,
                              origin=syn.server_name, destination=atr.server_name,
                              signing_key=syn.signing_key)


def test_replayed_transaction_changes_nothing(peers: Peers) -> None:
    a = peers.account(peers.atrium)
    a.sync()
    syn = peers.synapse
    tag = uuid.uuid4().hex
    body = {"origin": syn.server_name, "origin_server_ts": 1_700_000_000_000, "pdus": [],
            "edus": [_to_device_edu(syn.server_name, a, tag)]}
    txn_id = uuid.uuid4().hex
    first = _send_txn(peers, txn_id, body)
    assert first.status_code == 200, first.text
    again = _send_txn(peers, txn_id, body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    # the same to-device message (same message_id) in a new transaction is dropped too
    again_new_txn = _send_txn(peers, uuid.uuid4().hex, body)
    assert again_new_txn.status_code == 200, again_new_txn.text
    got = collect_to_device(a, lambda e: e.get("content", {}).get("text") == tag, 1,
                            timeout=10)
    assert len(got) == 1, got
    assert got[0]["sender"] == f"@mallory:{syn.server_name}"
    assert got[0]["type"] == "org.atrium.interop"


@pytest.mark.parametrize("pdus,edus", [(51, 0), (0, 101)])
def test_oversized_transaction_is_400(peers: Peers, pdus: int, edus: int) -> None:
    a = peers.account(peers.atrium)
    a.sync()
    syn = peers.synapse
    tag = uuid.uuid4().hex
    body = {"origin": syn.server_name, "origin_server_ts": 1_700_000_000_000,
            "pdus": [{"type": "m.room.message", "room_id": "!x:" + syn.server_name}
                     for _ in range(pdus)],
            "edus": [_to_device_edu(syn.server_name, a, tag) for _ in range(edus)]}
    r = _send_txn(peers, uuid.uuid4().hex, body)
    assert r.status_code == 400, r.text
    assert (errcode(r) or "").startswith("M_"), r.text
    # nothing of a refused transaction is delivered
    assert collect_to_device(a, lambda e: e.get("content", {}).get("text") == tag, 1,
                             timeout=1, settle=0.5) == []
