"""Our key server and notary (federation/key_server.py) on the real app: the shape and
signature of our key response, old_verify_keys from the config, the notary's GET and POST
answers (cache hit, fetch on miss, minimum_valid_until_ts, our signature added, the server's
own kept, stale answers when the server is down), bad input, and our own keyring accepting
our notary's answers.  Runs on the engine under test (ATRIUM_TEST_DB)."""
import pytest
import signedjson.key
import signedjson.sign

from federation.key_server import own_key_response
from federation.keyring import Keyring
from protocol.signing import decode_verify_key_base64, verify_signed_json
from tests.apps import app_factory
from tests.federation.keyring_helpers import (
    FakeClient, FakeServer, b64, keyring_config, now_ms,
)
from web.app import runtime_of

OLD = {"ed25519:old1": {"key": "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ",
                        "expired_ts": 1_500_000_000_000}}


@pytest.fixture
def hs(tmp_path):
    yield from app_factory(tmp_path)


@pytest.fixture
def app(hs):
    return hs(trusted_key_servers=[], key_refresh_interval="2h", old_signing_keys=OLD)


@pytest.fixture
def a():
    return FakeServer("a.example")


def fed_of(app):
    return runtime_of(app).parts["federation"]


def our_key(app):
    sk = runtime_of(app).signing_key
    return signedjson.key.get_verify_key(sk)


def with_client(app, *servers):
    client = FakeClient(*servers)
    fed_of(app).keyring.client = client
    return client


def get(app, path, status=200, **query):
    r = app.test_client().get(path, query_string=query)
    assert r.status_code == status, r.get_data(as_text=True)
    return r.get_json()


def post(app, body, status=200, raw=None):
    c = app.test_client()
    r = c.post("/_matrix/key/v2/query", data=raw, content_type="application/json") \
        if raw is not None else c.post("/_matrix/key/v2/query", json=body)
    assert r.status_code == status, r.get_data(as_text=True)
    return r.get_json()


# --- our own keys --------------------------------------------------------------------------

def test_own_key_response(app):
    before = now_ms()
    body = get(app, "/_matrix/key/v2/server")
    vk = our_key(app)
    kid = f"ed25519:{vk.version}"
    assert body["server_name"] == "test.local"
    assert body["verify_keys"] == {kid: {"key": signedjson.key.encode_verify_key_base64(vk)}}
    assert body["old_verify_keys"] == OLD
    assert before + 2 * 3600_000 <= body["valid_until_ts"] <= now_ms() + 2 * 3600_000
    signedjson.sign.verify_signed_json(body, "test.local", vk)        # the reference library
    verify_signed_json(body, "test.local", vk)
    # the deprecated /server/{keyId} form answers the same
    again = get(app, f"/_matrix/key/v2/server/{kid}")
    assert again["verify_keys"] == body["verify_keys"]


def test_own_key_response_function_without_old_keys():
    from types import SimpleNamespace

    from atrium.federation_config import FederationConfig
    from protocol.signing import generate_signing_key, get_verify_key

    sk = generate_signing_key("v1")
    cfg = SimpleNamespace(server_name="x.example",
                          federation=FederationConfig(key_refresh_interval=60.0))
    r = own_key_response(cfg, sk, 1000)
    assert r["valid_until_ts"] == 61_000 and r["old_verify_keys"] == {}
    verify_signed_json(r, "x.example", get_verify_key(sk))


def test_notary_answers_for_itself(app):
    client = with_client(app)
    for body in (get(app, "/_matrix/key/v2/query/test.local"),
                 post(app, {"server_keys": {"test.local": {}}})):
        (item,) = body["server_keys"]
        assert item["server_name"] == "test.local"
        verify_signed_json(item, "test.local", our_key(app))
    assert client.calls == []


# --- the notary ----------------------------------------------------------------------------

def test_notary_fetch_on_miss_then_cache_hit(app, a):
    client = with_client(app, a)
    body = get(app, "/_matrix/key/v2/query/a.example")
    (item,) = body["server_keys"]
    assert item["server_name"] == "a.example"
    assert item["verify_keys"] == {a.kid: {"key": b64(a.sk)}}
    # the server's self-signature kept, ours added
    verify_signed_json(item, "a.example", decode_verify_key_base64("ed25519", "k1", b64(a.sk)))
    signedjson.sign.verify_signed_json(item, "test.local", our_key(app))
    assert client.count("a.example") == 1
    # cached: served again without asking a.example
    again = get(app, "/_matrix/key/v2/query/a.example")
    assert again["server_keys"][0]["valid_until_ts"] == item["valid_until_ts"]
    assert client.count("a.example") == 1
    post(app, {"server_keys": {"a.example": {}}})
    assert client.count("a.example") == 1


def test_notary_minimum_valid_until_respected(app, a):
    client = with_client(app, a)
    fed_of(app).keyring.refetch_interval_ms = 0
    first = get(app, "/_matrix/key/v2/query/a.example")["server_keys"][0]
    # asking for a validity the cached response does not reach: fetched again
    a.valid_for_ms = 3 * 24 * 3600_000
    want = first["valid_until_ts"] + 1
    body = post(app, {"server_keys": {"a.example": {a.kid: {"minimum_valid_until_ts": want}}}})
    assert body["server_keys"][0]["valid_until_ts"] >= want
    assert client.count("a.example") == 2
    # a minimum the cached response meets: no fetch
    get(app, "/_matrix/key/v2/query/a.example", minimum_valid_until_ts=str(want))
    assert client.count("a.example") == 2


def test_notary_serves_stale_when_server_is_down_and_rate_bounds_fetches(app, a):
    client = with_client(app, a)
    first = get(app, "/_matrix/key/v2/query/a.example")["server_keys"][0]
    client.down.add("a.example")
    fed_of(app).keyring.refetch_interval_ms = 0
    far = first["valid_until_ts"] + 10**9
    body = get(app, "/_matrix/key/v2/query/a.example", minimum_valid_until_ts=str(far))
    assert body["server_keys"][0]["valid_until_ts"] == first["valid_until_ts"]
    assert client.count("a.example") == 2
    # with the default rate bound, repeated asks do not hammer the server
    fed_of(app).keyring.refetch_interval_ms = 60_000
    for _ in range(3):
        get(app, "/_matrix/key/v2/query/a.example", minimum_valid_until_ts=str(far))
    assert client.count("a.example") == 2


def test_notary_post_many_servers(app, a):
    b = FakeServer("b.example:8448")
    client = with_client(app, a, b)
    body = post(app, {"server_keys": {"a.example": {a.kid: {}},
                                      "b.example:8448": {},
                                      "gone.example": {"ed25519:x": {}},
                                      "test.local": {}}})
    names = sorted(i["server_name"] for i in body["server_keys"])
    assert names == ["a.example", "b.example:8448", "test.local"]
    for item in body["server_keys"]:
        verify_signed_json(item, "test.local", our_key(app))
    assert client.count("gone.example") == 1
    assert post(app, {"server_keys": {}}) == {"server_keys": []}
    assert get(app, "/_matrix/key/v2/query/gone.example") == {"server_keys": []}


def test_notary_does_not_vouch_for_responses_it_got_from_another_notary(app, a):
    # our keyring learned a.example's keys through some notary; the notary side serves only
    # what a.example itself gave us
    from store.server_keys import ServerKeyStore

    resp = a.key_response()
    ServerKeyStore(runtime_of(app).db).store_response(
        "a.example", "other-notary.example", resp, resp["valid_until_ts"], [], now_ms())
    client = with_client(app)
    assert get(app, "/_matrix/key/v2/query/a.example") == {"server_keys": []}
    assert client.count("a.example") == 1


@pytest.mark.parametrize("body,raw,errcode", [
    (None, "not json", "M_NOT_JSON"),
    (None, "[1]", "M_BAD_JSON"),
    ({}, None, "M_BAD_JSON"),
    ({"server_keys": []}, None, "M_BAD_JSON"),
    ({"server_keys": {"a.example": []}}, None, "M_BAD_JSON"),
    ({"server_keys": {"a.example": {"ed25519:x": 5}}}, None, "M_BAD_JSON"),
    ({"server_keys": {"a.example": {"ed25519:x": {"minimum_valid_until_ts": 1.5}}}}, None,
     "M_BAD_JSON"),
    ({"server_keys": {"a.example": {"ed25519:x": {"minimum_valid_until_ts": "1"}}}}, None,
     "M_BAD_JSON"),
    ({"server_keys": {"not a server!": {}}}, None, "M_INVALID_PARAM"),
    ({"server_keys": {f"s{i}.example": {} for i in range(101)}}, None, "M_BAD_JSON"),
])
def test_notary_post_bad_input(app, body, raw, errcode):
    client = with_client(app)
    err = post(app, body, status=400, raw=raw)
    assert err["errcode"] == errcode and isinstance(err["error"], str)
    assert client.calls == []


def test_notary_get_bad_input(app):
    with_client(app)
    assert get(app, "/_matrix/key/v2/query/bad%20name", 400)["errcode"] == "M_INVALID_PARAM"
    assert get(app, "/_matrix/key/v2/query/a.example", 400,
               minimum_valid_until_ts="soon")["errcode"] == "M_INVALID_PARAM"
    assert get(app, "/_matrix/key/v2/query/a.example", 400,
               minimum_valid_until_ts="1_000")["errcode"] == "M_INVALID_PARAM"


def test_notary_post_too_large(app):
    raw = '{"server_keys": {"a.example": {"' + "x" * 300_000 + '": {}}}}'
    assert post(app, None, 413, raw=raw)["errcode"] == "M_TOO_LARGE"


# --- our keyring against our notary --------------------------------------------------------

class AppRoute:
    """A fake server whose key endpoints are the real app's, via its test client."""

    def __init__(self, app):
        self.name = "test.local"
        self.c = app.test_client()

    def key_response(self):
        return self.c.get("/_matrix/key/v2/server").get_json()

    def query(self, body):
        return self.c.post("/_matrix/key/v2/query", json=body).get_json()


class NotaryClient(FakeClient):
    def post_json(self, destination, path, body, **kw):
        srv = self._target("POST", destination, path)
        return srv.query(body)


@pytest.fixture
def other_db(tmp_path):
    """A database of another server (not the app's, which may share ``tmp_path``)."""
    from store.testing import drop_schema, open_test_database

    (tmp_path / "other").mkdir()
    database, schema = open_test_database(str(tmp_path / "other"))
    yield database
    database.close()
    drop_schema(schema)


def test_a_keyring_accepts_our_notary_answers(app, a, other_db):
    with_client(app, a)
    vk = our_key(app)
    pinned = {f"ed25519:{vk.version}": signedjson.key.encode_verify_key_base64(vk)}
    client = NotaryClient(AppRoute(app), a)
    client.down.add("a.example")
    other = signedjson.key.generate_signing_key("o")
    for verify_keys in (pinned, None):                  # pinned, then trust on first use
        kr = Keyring(other_db, keyring_config("other.example",
                                              notaries=(("test.local", verify_keys),)),
                     client, "other.example", other)
        assert b64(a.sk) == signedjson.key.encode_verify_key_base64(
            kr.get_keys("a.example", [a.kid])[a.kid])
        other_db.run("wipe", lambda txn: (txn.execute("DELETE FROM server_keys"),
                                          txn.execute("DELETE FROM server_key_responses")),
                     write=True)
    assert client.count("test.local", "GET") == 1     # TOFU: the notary's own key
    assert client.count("a.example") == 0
