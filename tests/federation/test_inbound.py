"""PUT /_matrix/federation/v1/send/{txnId}: authentication, the body's checks and limits,
idempotency per (origin, txn id) — also for two identical transactions at once — PDU answers
and EDU dispatch that a bad EDU cannot fail (federation/inbound.py)."""
import gevent
import pytest

from tests.federation.inbound_helpers import (  # noqa: F401 - fixture
    REMOTE, server, to_device_edu, txn)

BOB = "@bob:remote.test"


def _error(r, status, errcode):
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert body["errcode"] == errcode and isinstance(body["error"], str)


def test_pdus_of_unknown_rooms_answer_errors_and_transaction_succeeds(server):
    r = server.put_txn("t1", txn(REMOTE, pdus=[{"event_id": "$a:remote.test",
                                                "room_id": "!r:remote.test"},
                                               {"room_id": "!unknown:remote.test"},
                                               "not a pdu"]))
    assert r.status_code == 200
    pdus = r.get_json()["pdus"]
    assert list(pdus) == ["$a:remote.test"]  # no id computable for the others: skipped
    # the PDU pipeline (federation/pdus.py) takes PDUs only for rooms we are in
    assert "unknown room" in pdus["$a:remote.test"]["error"]
    assert server.verifier.limited_origins == [REMOTE]


def test_pdu_of_known_room_is_keyed_by_its_reference_hash(server):
    from protocol.hashing import compute_event_id
    from protocol.room_versions import get_room_version

    alice = server.add_user("alice")
    room_id = alice.create_room()
    version = server.db.run("v", lambda t: t.query_value(
        "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)))
    pdu = {"room_id": room_id, "type": "m.room.message", "sender": BOB, "depth": 5,
           "content": {"body": "hi"}, "origin_server_ts": 1, "prev_events": [],
           "auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}}
    r = server.put_txn("t1", txn(REMOTE, pdus=[pdu]))
    assert r.status_code == 200
    assert list(r.get_json()["pdus"]) == [compute_event_id(pdu, get_room_version(version))]


def test_pdu_handler_gets_the_pdus_and_its_answer_is_returned(server):
    seen = []

    def handler(origin, pdus):
        seen.append((origin, pdus))
        return {"$x:remote.test": {}}

    server.fed.pdu_handler = handler
    r = server.put_txn("t1", txn(REMOTE, pdus=[{"event_id": "$x:remote.test"}]))
    assert r.get_json() == {"pdus": {"$x:remote.test": {}}}
    assert seen == [(REMOTE, [{"event_id": "$x:remote.test"}])]


def test_unauthenticated_request_is_refused(server):
    _error(server.put_txn("t1", txn(REMOTE), origin=None), 401, "M_UNAUTHORIZED")
    server.fed.verifier = None  # request verification not built / not available
    _error(server.put_txn("t1", txn(REMOTE)), 401, "M_UNAUTHORIZED")


def test_real_verifier_refuses_an_unsigned_transaction(server):
    if server.real_verifier is None:
        pytest.skip("federation/request_auth.py is not built")
    server.fed.verifier = server.real_verifier
    _error(server.put_txn("t1", txn(REMOTE), origin=None), 401, "M_UNAUTHORIZED")


def test_body_parsed_by_the_verifier_is_used(server):
    from federation.request_auth import BODY_ENVIRON_KEY

    class ParsingVerifier(type(server.verifier)):
        def authenticate(self, req):
            req.environ[BODY_ENVIRON_KEY] = txn("evil.test")  # what the signature covered
            return super().authenticate(req)

    server.fed.verifier = ParsingVerifier()
    _error(server.put_txn("t1", txn(REMOTE)), 403, "M_FORBIDDEN")


def test_origin_must_be_the_authenticated_server(server):
    _error(server.put_txn("t1", txn("evil.test")), 403, "M_FORBIDDEN")
    body = txn(REMOTE)
    del body["origin"]
    _error(server.put_txn("t2", body), 400, "M_BAD_JSON")
    # a refused transaction is not remembered: the same id with a good body is processed
    assert server.put_txn("t1", txn(REMOTE)).status_code == 200


@pytest.mark.parametrize("pdus,edus,ok", [(50, 100, True), (51, 0, False), (0, 101, False)])
def test_size_limits(server, pdus, edus, ok):
    body = txn(REMOTE, pdus=[{"event_id": f"$e{i}:remote.test"} for i in range(pdus)],
               edus=[{"edu_type": "m.typing", "content": {}} for _ in range(edus)])
    r = server.put_txn("t1", body)
    if ok:
        assert r.status_code == 200 and len(r.get_json()["pdus"]) == pdus
    else:
        _error(r, 400, "M_BAD_JSON")
        assert server.fed.transactions.store.get_response(REMOTE, "t1") is None


def test_malformed_bodies(server):
    r = server.http.put("/_matrix/federation/v1/send/t1", data=b"{not json",
                        headers={"X-Test-Origin": REMOTE, "Content-Type": "application/json"})
    _error(r, 400, "M_NOT_JSON")
    for raw, errcode in ((b'{"origin": "remote.test", "pdus": [NaN]}', "M_NOT_JSON"),
                         (b'{"origin": "remote.test", "edus": [{"x": "\\ud800"}]}',
                          "M_BAD_JSON"),
                         (b'{"origin": "remote.test", "edus": [{"x": 1e400}]}', "M_BAD_JSON"),
                         (b"[" * 100_000 + b"]" * 100_000, "M_BAD_JSON")):
        r = server.http.put("/_matrix/federation/v1/send/t1", data=raw, headers={
            "X-Test-Origin": REMOTE, "Content-Type": "application/json"})
        _error(r, 400, errcode)
    _error(server.put_txn("t1", ["a", "list"]), 400, "M_BAD_JSON")
    _error(server.put_txn("t1", dict(txn(REMOTE), pdus={"a": 1})), 400, "M_BAD_JSON")
    _error(server.put_txn("t1", dict(txn(REMOTE), edus="x")), 400, "M_BAD_JSON")
    _error(server.put_txn("t1", dict(txn(REMOTE), origin_server_ts="soon")), 400,
           "M_BAD_JSON")


def test_retry_gets_the_first_answer_and_applies_nothing_again(server):
    alice = server.add_user("alice")
    first = txn(REMOTE, pdus=[{"event_id": "$a:remote.test"}],
                edus=[to_device_edu(BOB, "m1", {alice.user_id: {"A": {"n": 1}}})])
    r1 = server.put_txn("t1", first)
    assert r1.status_code == 200
    # the retry carries a different message id: were it processed, it would be delivered
    retry = txn(REMOTE, pdus=[{"event_id": "$b:remote.test"}],
                edus=[to_device_edu(BOB, "m2", {alice.user_id: {"A": {"n": 2}}})])
    r2 = server.put_txn("t1", retry)
    assert r2.status_code == 200 and r2.get_json() == r1.get_json()
    assert len(server.inbox(alice.user_id)) == 1
    # another server may use the same txn id: it is its own transaction
    r3 = server.put_txn("t1", txn("other.test", edus=[
        to_device_edu("@carol:other.test", "m1", {alice.user_id: {"A": {"n": 3}}})]),
        origin="other.test")
    assert r3.get_json() == {"pdus": {}}
    assert len(server.inbox(alice.user_id)) == 2


def test_two_identical_transactions_at_once_apply_once(server):
    alice = server.add_user("alice")
    calls = []

    def slow_handler(origin, pdus):
        calls.append(origin)
        gevent.sleep(0.2)  # the duplicate arrives while this one is being processed
        return {p["event_id"]: {} for p in pdus}

    server.fed.pdu_handler = slow_handler
    body = txn(REMOTE, pdus=[{"event_id": "$a:remote.test"}],
               edus=[to_device_edu(BOB, "m1", {alice.user_id: {"A": {"n": 1}}})])
    results = [gevent.spawn(server.put_txn, "same", body) for _ in range(2)]
    gevent.joinall(results, timeout=5, raise_error=True)
    answers = [g.value for g in results]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].get_json() == answers[1].get_json() == {"pdus": {"$a:remote.test": {}}}
    assert calls == [REMOTE]
    assert len(server.inbox(alice.user_id)) == 1


def test_bad_edus_do_not_fail_the_transaction(server):
    alice = server.add_user("alice")
    edus = [
        "not an object",
        {"content": {}},
        {"edu_type": 5},
        {"edu_type": "m.direct_to_device", "content": "not an object"},
        {"edu_type": "m.direct_to_device", "content": {"sender": "nonsense"}},
        {"edu_type": "m.direct_to_device", "content": {"sender": BOB, "type": "t",
                                                       "message_id": "x", "messages": []}},
        {"edu_type": "m.device_list_update", "content": {"user_id": "@x:remote.test"}},
        {"edu_type": "m.device_list_update", "content": {
            "user_id": "@x:remote.test", "device_id": "D", "stream_id": True}},
        {"edu_type": "m.signing_key_update", "content": {
            "user_id": "@x:remote.test", "master_key": {"usage": ["master"]}}},
        {"edu_type": "m.typing", "content": {"room_id": "!r", "user_id": BOB}},
        {"edu_type": "org.example.unknown", "content": {"anything": 1}},
        to_device_edu(BOB, "good", {alice.user_id: {"A": {"ok": True}}}),
    ]
    r = server.put_txn("t1", txn(REMOTE, edus=edus))
    assert r.status_code == 200 and r.get_json() == {"pdus": {}}
    assert [row[3] for row in server.inbox(alice.user_id)] == ['{"ok":true}']


def test_stored_answers_are_pruned(server):
    server.put_txn("t1", txn(REMOTE))
    store = server.fed.transactions.store
    assert store.get_response(REMOTE, "t1") == {"pdus": {}}
    store.prune(now_ms=2 ** 50)
    assert store.get_response(REMOTE, "t1") is None
