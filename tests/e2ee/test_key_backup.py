"""Server-side key backups: versions (create, get, update, delete — numbers never reused),
keys by the spec's replacement rule, etag and count, and the wrong-version error."""
from tests.e2ee.conftest import V, user

ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
R = f"{V}/room_keys"
ROOM = "!room:test.local"


def key(fmi=0, fc=0, verified=False, data="c1"):
    return {"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
            "session_data": {"ephemeral": "e", "ciphertext": data, "mac": "m"}}


def test_versions_lifecycle(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    assert alice.req("GET", f"{R}/version", status=404)["errcode"] == "M_NOT_FOUND"
    v1 = alice.req("POST", f"{R}/version", {"algorithm": ALG,
                                            "auth_data": {"public_key": "pk1"}})["version"]
    assert v1 == "1"
    got = alice.req("GET", f"{R}/version")
    assert got == {"algorithm": ALG, "auth_data": {"public_key": "pk1"}, "count": 0,
                   "etag": got["etag"], "version": "1"}
    assert isinstance(got["etag"], str)
    bob.req("GET", f"{R}/version", status=404)  # backups are per user
    alice.req("PUT", f"{R}/version/1", {"algorithm": ALG, "auth_data": {"public_key": "pk2"},
                                        "version": "1"})
    assert alice.req("GET", f"{R}/version/1")["auth_data"] == {"public_key": "pk2"}
    alice.req("PUT", f"{R}/version/1", {"algorithm": ALG, "auth_data": {}, "version": "2"},
              status=400)
    alice.req("PUT", f"{R}/version/9", {"algorithm": ALG, "auth_data": {}}, status=404)
    alice.req("POST", f"{R}/version", {"algorithm": "m.unknown", "auth_data": {}}, status=400)
    v2 = alice.req("POST", f"{R}/version", {"algorithm": ALG, "auth_data": {}})["version"]
    assert v2 == "2" and alice.req("GET", f"{R}/version")["version"] == "2"
    alice.req("DELETE", f"{R}/version/2")
    alice.req("DELETE", f"{R}/version/2")  # deleted before: still fine
    alice.req("DELETE", f"{R}/version/7", status=404)
    alice.req("GET", f"{R}/version/2", status=404)
    assert alice.req("GET", f"{R}/version")["version"] == "1"
    v3 = alice.req("POST", f"{R}/version", {"algorithm": ALG, "auth_data": {}})["version"]
    assert v3 == "3"  # never reuses a deleted number
    alice.req("GET", f"{R}/version/abc", status=404)


def test_keys_put_get_delete_with_etag_and_count(app):
    alice = user(app, "alice")
    alice.req("POST", f"{R}/version", {"algorithm": ALG, "auth_data": {}})
    q = {"version": "1"}
    r1 = alice.req("PUT", f"{R}/keys/{ROOM}/s1", key(), query=q)
    assert r1["count"] == 1
    r2 = alice.req("PUT", f"{R}/keys/{ROOM}", {"sessions": {"s2": key(), "s3": key()}},
                   query=q)
    assert r2["count"] == 3 and r2["etag"] != r1["etag"]
    r3 = alice.req("PUT", f"{R}/keys", {"rooms": {"!other:test.local": {
        "sessions": {"s4": key()}}}}, query=q)
    assert r3["count"] == 4
    assert alice.req("GET", f"{R}/version")["count"] == 4
    assert alice.req("GET", f"{R}/keys/{ROOM}/s1", query=q) == key()
    assert set(alice.req("GET", f"{R}/keys/{ROOM}", query=q)["sessions"]) == {"s1", "s2", "s3"}
    everything = alice.req("GET", f"{R}/keys", query=q)["rooms"]
    assert set(everything) == {ROOM, "!other:test.local"}
    assert alice.req("GET", f"{R}/keys/!none:test.local", query=q) == {"sessions": {}}
    alice.req("GET", f"{R}/keys/{ROOM}/nope", query=q, status=404)
    d = alice.req("DELETE", f"{R}/keys/{ROOM}/s1", query=q)
    assert d["count"] == 3 and d["etag"] != r3["etag"]
    d2 = alice.req("DELETE", f"{R}/keys/{ROOM}", query=q)
    assert d2["count"] == 1
    same = alice.req("DELETE", f"{R}/keys/{ROOM}", query=q)
    assert same == d2  # nothing changed: same etag
    assert alice.req("DELETE", f"{R}/keys", query=q)["count"] == 0
    alice.req("GET", f"{R}/keys", query={"version": "5"}, status=404)
    alice.req("GET", f"{R}/keys", status=400)


def test_replacement_rules(app):
    alice = user(app, "alice")
    alice.req("POST", f"{R}/version", {"algorithm": ALG, "auth_data": {}})
    q = {"version": "1"}
    path = f"{R}/keys/{ROOM}/s"

    def put(k):
        alice.req("PUT", path, k, query=q)
        return alice.req("GET", path, query=q)["session_data"]["ciphertext"]

    assert put(key(fmi=5, fc=2, data="a")) == "a"
    assert put(key(fmi=6, fc=0, data="b")) == "a"          # higher index: kept
    assert put(key(fmi=4, fc=9, data="c")) == "c"          # lower index wins
    assert put(key(fmi=4, fc=10, data="d")) == "c"         # same index, more forwards: kept
    assert put(key(fmi=4, fc=3, data="e")) == "e"          # same index, fewer forwards
    assert put(key(fmi=0, fc=0, verified=True, data="f")) == "f"  # verified beats all
    assert put(key(fmi=0, fc=0, verified=False, data="g")) == "f"  # unverified never replaces
    assert put(key(fmi=9, fc=9, verified=True, data="h")) == "f"  # both verified: index


def test_writing_to_an_old_version_is_refused(app):
    alice = user(app, "alice")
    alice.req("POST", f"{R}/version", {"algorithm": ALG, "auth_data": {}})
    alice.req("POST", f"{R}/version", {"algorithm": ALG, "auth_data": {}})
    r = alice.req("PUT", f"{R}/keys/{ROOM}/s", key(), query={"version": "1"}, status=403)
    assert r["errcode"] == "M_WRONG_ROOM_KEYS_VERSION" and r["current_version"] == "2"
    alice.req("PUT", f"{R}/keys/{ROOM}/s", key(), query={"version": "8"}, status=404)
    bad = key()
    bad["is_verified"] = "yes"
    alice.req("PUT", f"{R}/keys/{ROOM}/s", bad, query={"version": "2"}, status=400)
