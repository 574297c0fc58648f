"""Password reset by e-mail, end to end (issue 18 part 2): /account/password/email/requestToken
sends the mail to a real SMTP server on loopback (tests/smtp_sink.py), the link shows a
confirmation form whose POST validates the session, and ``POST /account/password`` without
an access token completes UIA ``m.login.email.identity``: the password changes, and the
other devices are logged out unless ``logout_devices`` is false.  Unknown addresses answer
400 ``M_THREEPID_NOT_FOUND`` as Synapse does by default (``request_token_inhibit_3pid_errors``
hides it)."""
from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.smtp_sink import SmtpSink, text_of
from tests.web.conftest import GENEROUS, auth_headers, register_via_dummy
from tests.web.test_email import FROM, Apps
from web.app import runtime_of

V3 = "/_matrix/client/v3"
RESET_PATH = "/_synapse/client/password_reset/email/submit_token"


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    s = SmtpSink(str(tmp_path_factory.mktemp("mail")))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    a = Apps(tmp_path_factory.mktemp("apps"))
    yield a
    a.close()


def make(apps: Apps, sink: SmtpSink, **extra: Any) -> Any:
    return apps.make(email={"smtp_host": "127.0.0.1", "smtp_port": sink.port,
                            "notif_from": FROM}, rc_3pid_validation=GENEROUS, **extra)


@pytest.fixture(scope="module")
def app(apps, sink):
    return make(apps, sink)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def empty_mailbox(sink, apps):
    for made, _ in apps.made:
        mailer = runtime_of(made).parts.get("mailer")
        if mailer is not None:
            assert mailer.wait_idle(10)
    sink.clear()


_n = iter(range(1_000_000))


def user_with_email(app, client, email: str) -> dict[str, Any]:
    """A user with two devices and ``email`` validated here (set up through the store: the
    adding flow itself is tests/web/test_email.py's)."""
    name = f"reset{next(_n)}"
    r = register_via_dummy(client, name, "old password")
    assert r.status_code == 200
    user = dict(r.json)
    r = client.post(f"{V3}/login", json={"type": "m.login.password", "password": "old password",
                                         "identifier": {"type": "m.id.user", "user": name}})
    user["second_token"] = r.json["access_token"]
    runtime_of(app).parts["threepids"].add_validated(user["user_id"], "email", email, 1, 2)
    return user


def reset_link(sink: SmtpSink, count: int = 1) -> tuple[str, dict[str, str]]:
    msg, facts = sink.wait_for(count)[-1]
    assert msg["Subject"] == "[test.local] Password reset"
    url = re.search(r"https://\S+", text_of(msg)).group(0)
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


def whoami(client, token: str) -> int:
    return client.get(f"{V3}/account/whoami", headers=auth_headers(token)).status_code


def login_status(client, user_id: str, password: str) -> int:
    return client.post(f"{V3}/login", json={
        "type": "m.login.password", "password": password,
        "identifier": {"type": "m.id.user", "user": user_id}}).status_code


def request_reset(client, email: str, secret: str = "resetme", status: int = 200) -> Any:
    r = client.post(f"{V3}/account/password/email/requestToken",
                    json={"client_secret": secret, "email": email, "send_attempt": 1})
    assert r.status_code == status, r.json
    return r.json


def test_reset_end_to_end_logs_out_every_device(app, client, sink):
    user = user_with_email(app, client, "reset@example.org")
    sid = request_reset(client, "Reset@Example.org")["sid"]
    path, q = reset_link(sink)
    assert path == RESET_PATH and q["sid"] == sid
    [(_, facts)] = sink.received()
    assert facts["rcpt_tos"] == ["reset@example.org"]

    creds = {"sid": sid, "client_secret": "resetme"}
    body = {"new_password": "new password", "auth": {"type": "m.login.email.identity",
                                                     "threepid_creds": creds}}
    r = client.post(f"{V3}/account/password", json={"new_password": "new password"})
    assert r.status_code == 401
    assert r.json["flows"] == [{"stages": ["m.login.email.identity"]}]
    body["auth"]["session"] = r.json["session"]

    # the link shows a confirmation form; opening it validates nothing
    page = client.get(path, query_string=q)
    assert page.status_code == 200 and '<form method="post">' in page.get_data(as_text=True)
    assert f'value="{q["token"]}"' in page.get_data(as_text=True)
    r = client.post(f"{V3}/account/password", json=body)
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
    assert login_status(client, user["user_id"], "old password") == 200

    r = client.post(f"{path}?{page.request.query_string.decode()}", data=q)  # confirm
    assert r.status_code == 200 and "validated" in r.get_data(as_text=True)
    r = client.post(f"{V3}/account/password", json=body)
    assert r.status_code == 200 and r.json == {}
    assert whoami(client, user["access_token"]) == 401
    assert whoami(client, user["second_token"]) == 401
    assert login_status(client, user["user_id"], "old password") == 403
    assert login_status(client, user["user_id"], "new password") == 200
    # the proof was spent: the same session cannot reset the password again
    body["auth"].pop("session")
    r = client.post(f"{V3}/account/password", json={**body, "new_password": "third"})
    assert r.status_code == 401
    assert login_status(client, user["user_id"], "new password") == 200


def test_reset_keeping_the_devices_and_the_password_sent_once(app, client, sink):
    user = user_with_email(app, client, "keep@example.org")
    sid = request_reset(client, "keep@example.org")["sid"]
    path, q = reset_link(sink)
    r = client.post(f"{V3}/account/password",
                    json={"new_password": "kept devices", "logout_devices": False})
    session = r.json["session"]
    assert client.post(path, query_string=q, data=q).status_code == 200
    # the last round sends only ``auth``: the password of the first round is remembered
    r = client.post(f"{V3}/account/password", json={"auth": {
        "type": "m.login.email.identity", "session": session,
        "threepid_creds": {"sid": sid, "client_secret": "resetme"}}})
    assert r.status_code == 200, r.json
    assert whoami(client, user["access_token"]) == 200
    assert whoami(client, user["second_token"]) == 200
    assert login_status(client, user["user_id"], "kept devices") == 200


def test_unknown_address_and_sessions_of_other_purposes(app, client, sink):
    r = request_reset(client, "nobody@example.org", status=400)
    assert r["errcode"] == "M_THREEPID_NOT_FOUND"
    # a session validated to add an address proves nothing for a reset
    user_with_email(app, client, "owner@example.org")
    r = client.post(f"{V3}/account/3pid/email/requestToken", json={
        "client_secret": "other", "email": "free@example.org", "send_attempt": 1})
    sid = r.json["sid"]
    msg, _ = sink.wait_for(1)[0]
    url = re.search(r"https://\S+", text_of(msg)).group(0)
    parts = urlsplit(url)
    assert client.get(parts.path, query_string=parts.query).status_code == 200
    r = client.post(f"{V3}/account/password", json={"new_password": "x", "auth": {
        "type": "m.login.email.identity",
        "threepid_creds": {"sid": sid, "client_secret": "other"}}})
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
    # a wrong token on the confirmation form changes nothing
    request_reset(client, "owner@example.org")
    path, q = reset_link(sink, 2)
    r = client.post(path, data={**q, "token": "wrong"})
    assert r.status_code == 400 and "Nothing was changed" in r.get_data(as_text=True)


def test_inhibited_errors_hide_unknown_addresses(apps, sink):
    client = make(apps, sink, request_token_inhibit_3pid_errors=True).test_client()
    t0 = time.monotonic()
    r = request_reset(client, "nobody@example.org")
    assert 0.1 <= time.monotonic() - t0 < 2 and r["sid"]
    time.sleep(0.2)
    assert sink.received() == []


def test_without_email_a_reset_needs_an_access_token(apps):
    client = apps.make().test_client()
    r = client.post(f"{V3}/account/password", json={"new_password": "x"})
    assert (r.status_code, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
    r = client.post(f"{V3}/account/password/email/requestToken",
                    json={"client_secret": "s", "email": "a@example.org", "send_attempt": 1})
    assert (r.status_code, r.json["errcode"]) == (403, "M_THREEPID_DENIED")
