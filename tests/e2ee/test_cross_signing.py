"""Cross-signing: /keys/device_signing/upload (UIA except the first upload or an exact
repeat), /keys/signatures/upload with every signature verified, and who sees what in
/keys/query."""
import copy

from protocol.signing import generate_signing_key, sign_json
from tests.e2ee.conftest import V, CrossSigning, password_auth, user

UPLOAD = f"{V}/keys/device_signing/upload"
SIGS = f"{V}/keys/signatures/upload"


def test_first_upload_needs_no_uia_then_changes_do(app):
    alice = user(app, "alice")
    xs = CrossSigning(alice.user_id)
    alice.req("POST", UPLOAD, xs.upload_body())
    alice.req("POST", UPLOAD, xs.upload_body())  # an exact repeat: no UIA either
    new = CrossSigning(alice.user_id)
    r = alice.req("POST", UPLOAD, new.upload_body(), status=401)
    assert r["flows"] == [{"stages": ["m.login.password"]}]
    bad = dict(password_auth(r["session"], "alice"), password="wrong")
    alice.req("POST", UPLOAD, {**new.upload_body(), "auth": bad}, status=401)
    alice.req("POST", UPLOAD, {**new.upload_body(),
                               "auth": password_auth(r["session"], "alice")})
    got = alice.query([alice.user_id])
    assert got["master_keys"][alice.user_id]["keys"] == {
        f"ed25519:{new.pub(new.master)}": new.pub(new.master)}
    # the session ended with the upload
    again = alice.req("POST", UPLOAD, {**CrossSigning(alice.user_id).upload_body(),
                                       "auth": password_auth(r["session"], "alice")},
                      status=400)
    assert again["errcode"] == "M_UNKNOWN"


def test_sub_keys_must_be_signed_by_the_master_key(app):
    alice = user(app, "alice")
    xs = CrossSigning(alice.user_id)
    body = xs.upload_body()
    body["self_signing_key"] = xs.key("self_signing", xs.self_signing,
                                      generate_signing_key("x"))
    assert alice.req("POST", UPLOAD, body, status=400)["errcode"] == "M_INVALID_SIGNATURE"
    body = {"self_signing_key": xs.key("self_signing", xs.self_signing, xs.master)}
    assert alice.req("POST", UPLOAD, body, status=400)["errcode"] == "M_MISSING_PARAM"
    wrong_usage = xs.upload_body()
    wrong_usage["master_key"]["usage"] = ["self_signing"]
    assert alice.req("POST", UPLOAD, wrong_usage, status=400)["errcode"] == "M_INVALID_PARAM"
    other_user = xs.upload_body()
    other_user["master_key"]["user_id"] = "@bob:test.local"
    assert alice.req("POST", UPLOAD, other_user, status=400)["errcode"] == "M_INVALID_PARAM"
    assert alice.query([alice.user_id])["master_keys"] == {}


def test_user_signing_key_only_visible_to_its_owner(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    xs = CrossSigning(alice.user_id)
    alice.req("POST", UPLOAD, xs.upload_body())
    mine = alice.query([alice.user_id])
    assert set(mine["user_signing_keys"]) == {alice.user_id}
    theirs = bob.query([alice.user_id])
    assert set(theirs["master_keys"]) == {alice.user_id}
    assert set(theirs["self_signing_keys"]) == {alice.user_id}
    assert "user_signing_keys" not in theirs or theirs["user_signing_keys"] == {}


def test_signing_own_device_with_self_signing_key(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    xs = CrossSigning(alice.user_id)
    alice.upload(device_keys=alice.device_keys())
    alice.req("POST", UPLOAD, xs.upload_body())
    dev = alice.device_keys()
    sign_json(dev, alice.user_id, xs.self_signing)
    r = alice.req("POST", SIGS, {alice.user_id: {alice.device_id: dev}})
    assert r == {"failures": {}}
    got = bob.query([alice.user_id])["device_keys"][alice.user_id][alice.device_id]
    ssk_id = f"ed25519:{xs.pub(xs.self_signing)}"
    assert ssk_id in got["signatures"][alice.user_id]
    assert f"ed25519:{alice.device_id}" in got["signatures"][alice.user_id]


def test_forged_signatures_are_reported_as_failures(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    xs = CrossSigning(alice.user_id)
    alice.upload(device_keys=alice.device_keys())
    alice.req("POST", UPLOAD, xs.upload_body())
    dev = alice.device_keys()
    sign_json(dev, alice.user_id, xs.user_signing)  # wrong key, under its own key id
    forged = alice.device_keys()
    forged["signatures"][alice.user_id][f"ed25519:{xs.pub(xs.self_signing)}"] = \
        dev["signatures"][alice.user_id][f"ed25519:{xs.pub(xs.user_signing)}"]
    other = alice.device_keys(algorithms=["x"])  # content that is not the stored key
    sign_json(other, alice.user_id, xs.self_signing)
    r = alice.req("POST", SIGS, {alice.user_id: {alice.device_id: forged, "NOPE": dev},
                                 bob.user_id: {"whatever": dev}})
    f = r["failures"]
    assert f[alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    assert f[alice.user_id]["NOPE"]["errcode"] == "M_NOT_FOUND"
    assert f[bob.user_id]["whatever"]["errcode"] == "M_NOT_FOUND"
    r = alice.req("POST", SIGS, {alice.user_id: {alice.device_id: other}})
    assert r["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    got = bob.query([alice.user_id])["device_keys"][alice.user_id][alice.device_id]
    assert list(got["signatures"][alice.user_id]) == [f"ed25519:{alice.device_id}"]


def test_master_key_signed_by_own_device(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    xs = CrossSigning(alice.user_id)
    alice.upload(device_keys=alice.device_keys())
    alice.req("POST", UPLOAD, xs.upload_body())
    master = sign_json(xs.key("master", xs.master), alice.user_id, alice.sk)
    r = alice.req("POST", SIGS, {alice.user_id: {xs.pub(xs.master): master}})
    assert r == {"failures": {}}
    got = bob.query([alice.user_id])["master_keys"][alice.user_id]
    assert f"ed25519:{alice.device_id}" in got["signatures"][alice.user_id]


def test_user_signing_signature_visible_only_to_the_signer(app):
    alice, bob, carol = user(app, "alice"), user(app, "bob"), user(app, "carol")
    xa, xb = CrossSigning(alice.user_id), CrossSigning(bob.user_id)
    alice.req("POST", UPLOAD, xa.upload_body())
    bob.req("POST", UPLOAD, xb.upload_body())
    bobs_master = copy.deepcopy(bob.query([bob.user_id])["master_keys"][bob.user_id])
    bobs_master.pop("unsigned", None)
    sign_json(bobs_master, alice.user_id, xa.user_signing)
    r = alice.req("POST", SIGS, {bob.user_id: {xb.pub(xb.master): bobs_master}})
    assert r == {"failures": {}}
    seen_by_alice = alice.query([bob.user_id])["master_keys"][bob.user_id]["signatures"]
    assert f"ed25519:{xa.pub(xa.user_signing)}" in seen_by_alice[alice.user_id]
    seen_by_carol = carol.query([bob.user_id])["master_keys"][bob.user_id]["signatures"]
    assert alice.user_id not in seen_by_carol
    # signing with the self-signing key instead is refused
    wrong = copy.deepcopy(bobs_master)
    wrong["signatures"] = {}
    sign_json(wrong, alice.user_id, xa.self_signing)
    r = alice.req("POST", SIGS, {bob.user_id: {xb.pub(xb.master): wrong}})
    assert r["failures"][bob.user_id][xb.pub(xb.master)]["errcode"] == "M_INVALID_SIGNATURE"


def test_cross_signing_upload_is_a_device_list_change(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room = alice.create_room(preset="private_chat")
    alice.invite(room, bob.user_id)
    bob.join(room)
    since = bob.sync()["next_batch"]
    alice.req("POST", UPLOAD, CrossSigning(alice.user_id).upload_body())
    assert alice.user_id in bob.sync(since)["device_lists"]["changed"]
