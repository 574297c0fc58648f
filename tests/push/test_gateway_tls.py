"""HTTPS to a push gateway verifies its certificate: a gateway whose certificate no trusted
root signed fails the push (logged, backed off, the pusher kept); Synapse's
``use_insecure_ssl_client_just_for_testing_do_not_use`` skips the check; a private CA in
``federation_custom_ca_list`` is trusted as an extra root."""
import logging

import pytest

from atrium.tls import issue_cert, make_ca
from tests.apps import app_factory
from tests.push.conftest import PUSH_CONFIG, Gateway, push_of, set_pusher, user, wait_for
from web.app import runtime_of


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("push_tls")
    ca = make_ca(d, name="Push test CA")
    leaf = issue_cert(ca, d, stem="gateway")
    return ca, leaf


@pytest.fixture(scope="module")
def gateway(ca_dir):
    _, leaf = ca_dir
    gw = Gateway(tls=(leaf.cert_path, leaf.key_path))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    factory = app_factory(tmp_path_factory.mktemp("push_tls_apps"))
    build = next(factory)
    yield lambda **extra: build(push=dict(PUSH_CONFIG, backoff_base=0.1, backoff_max=0.2),
                                **extra)
    next(factory, None)


def pair(app, tag):
    alice, bob = user(app, f"alice{tag}"), user(app, f"bob{tag}")
    room_id = alice.create_room()
    alice.invite(room_id, bob.user_id)
    bob.join(room_id)
    return alice, bob, room_id


def from_key(gateway, pushkey):
    return [b["notification"] for _, _, b in gateway.received
            if b["notification"]["devices"][0]["pushkey"] == pushkey]


def test_an_untrusted_certificate_fails_the_push(make, gateway, caplog):
    app = make()
    alice, bob, room_id = pair(app, "v")
    assert gateway.url.startswith("https://")
    set_pusher(bob, gateway.url, pushkey="verify")
    with caplog.at_level(logging.WARNING, logger="actors.pusher"):
        alice.send(room_id, "hello")
        failures = wait_for(lambda: push_of(app).sender.supervisor.inspect(
            bob.user_id, lambda a: dict(a.failures)).get(("org.example.app", "verify")))
        assert failures and failures[0] >= 1                 # backing off
        assert wait_for(lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage()
                                    for r in caplog.records))
    assert from_key(gateway, "verify") == []                 # never reached the gateway
    row = runtime_of(app).db.run("p", lambda t: t.query_one(
        "SELECT failing_since_ts, last_success_ts FROM pushers WHERE user_id = ?",
        (bob.user_id,)))
    assert row[0] is not None and row[1] is None             # kept, marked failing


def test_insecure_testing_key_skips_verification(make, gateway):
    app = make(use_insecure_ssl_client_just_for_testing_do_not_use=True)
    alice, bob, room_id = pair(app, "i")
    set_pusher(bob, gateway.url, pushkey="insecure")
    eid = alice.send(room_id, "hello")
    assert wait_for(lambda: from_key(gateway, "insecure"))
    assert from_key(gateway, "insecure")[0]["event_id"] == eid


def test_a_private_ca_from_federation_custom_ca_list(make, gateway, ca_dir):
    ca, _ = ca_dir
    app = make(federation_custom_ca_list=[ca.cert_path])
    alice, bob, room_id = pair(app, "c")
    set_pusher(bob, gateway.url, pushkey="private-ca")
    eid = alice.send(room_id, "hello")
    assert wait_for(lambda: from_key(gateway, "private-ca"))
    assert from_key(gateway, "private-ca")[0]["event_id"] == eid
