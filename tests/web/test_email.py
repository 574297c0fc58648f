"""E-mail sent by Atrium itself (issue 18 part 2): the requestToken endpoints send a
validation mail to a real SMTP server on loopback (aiosmtpd in a child process,
tests/smtp_sink.py); the test reads the received mail, follows its link or posts its token
to ``submit_url``, and completes the flows through the HTTP API: adding an address
(/account/3pid/add, GET /account/3pid, /delete), login with ``m.id.thirdparty``,
registration with ``registrations_require_3pid: [email]``.  Also: the mailer's transport
security (STARTTLS, implicit TLS, AUTH), sending never holding up the request, and the bad
input the spec names (wrong, reused and expired tokens, an address in use, send_attempt,
client_secret)."""
from __future__ import annotations

import logging
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from atrium.config import ConfigError, parse_config
from atrium.email_config import EmailConfig
from atrium.mailer import Mailer, Message
from atrium.tls import issue_cert, make_ca
from store.testing import database_config, drop_schema
from tests.smtp_sink import SmtpSink, text_of
from tests.web.conftest import DEFAULTS, GENEROUS, auth_headers, password_auth, register_via_dummy
from web.app import create_app, runtime_of

V3 = "/_matrix/client/v3"
FROM = "%(app)s homeserver <matrix@test.local>"


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    s = SmtpSink(str(tmp_path_factory.mktemp("mail")))
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def empty_mailbox(sink, apps):
    """Each test starts with an empty mailbox, once every mail already asked for is in."""
    for app, _ in apps.made:
        mailer = runtime_of(app).parts.get("mailer")
        if mailer is not None:
            assert mailer.wait_idle(10)
    sink.clear()


class Apps:
    """Apps over fresh databases, shut down (and PG schemas dropped) at the end; ``again``
    starts a second app on the same database (a restart)."""

    def __init__(self, base) -> None:
        self.base, self.made, self.n = base, [], 0

    def make(self, **overrides: Any) -> Any:
        self.n += 1
        d = self.base / f"app{self.n}"
        d.mkdir()
        dbcfg, schema = database_config(str(d))
        raw = dict(DEFAULTS, database=dbcfg, signing_key_path=str(d / "signing.key"),
                   media_store_path=str(d / "media"), public_baseurl="https://hs.test.local/")
        raw.update(overrides)
        return self.again(raw, schema)

    def again(self, raw: dict[str, Any], schema: str | None = None) -> Any:
        app = create_app(parse_config(raw, str(self.base / "homeserver.yaml")))
        app.raw = raw
        self.made.append((app, schema))
        return app

    def close(self) -> None:
        for app, _ in self.made:
            runtime_of(app).shutdown()
        for _, schema in self.made:
            drop_schema(schema)


def email_section(sink: SmtpSink, **extra: Any) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": sink.port, "notif_from": FROM,
            "app_name": "Atrium", **extra}


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    a = Apps(tmp_path_factory.mktemp("apps"))
    yield a
    a.close()


@pytest.fixture(scope="module")
def app(apps, sink):
    return apps.make(email=email_section(sink), rc_3pid_validation=GENEROUS)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


_names = iter(range(1_000_000))


def new_user(client, name: str = "u") -> dict[str, Any]:
    r = register_via_dummy(client, f"{name}{next(_names)}", "pw")
    assert r.status_code == 200, r.json
    return {**r.json, "headers": auth_headers(r.json["access_token"])}


def request_token(client, path: str, email: str, secret: str = "s3cret", attempt: int = 1,
                  status: int = 200, **extra: Any) -> dict[str, Any]:
    body = {"client_secret": secret, "email": email, "send_attempt": attempt, **extra}
    r = client.post(f"{V3}{path}", json=body)
    assert r.status_code == status, r.get_data(as_text=True)
    return r.json


def link_in(msg) -> tuple[str, dict[str, str]]:
    """The link of a validation mail: (path, query parameters)."""
    url = re.search(r"https://hs\.test\.local/\S+", text_of(msg)).group(0)
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


def validate_by_link(client, sink: SmtpSink, count: int = 1) -> dict[str, str]:
    msg, _ = sink.wait_for(count)[-1]
    path, q = link_in(msg)
    r = client.get(path, query_string=q)
    assert r.status_code == 200 and "validated" in r.get_data(as_text=True)
    return q


def add_email(client, sink: SmtpSink, user: dict[str, Any], email: str) -> None:
    sid = request_token(client, "/account/3pid/email/requestToken", email)["sid"]
    validate_by_link(client, sink)
    add = {"sid": sid, "client_secret": "s3cret"}
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=user["headers"])
    assert r.status_code == 401
    add["auth"] = password_auth(user["user_id"], "pw", r.json["session"])
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=user["headers"])
    assert r.status_code == 200, r.json


def login(client, identifier: dict[str, Any] | None = None, **top: Any):
    body: dict[str, Any] = {"type": "m.login.password", "password": "pw", **top}
    if identifier is not None:
        body["identifier"] = identifier
    return client.post(f"{V3}/login", json=body)


# ---------------------------------------------------------------------------- config

def test_config_errors_name_the_key():
    base = {"server_name": "test.local"}
    for extra, key in (({"email": {"notif_from": "a@b.c"}}, "email.smtp_host"),
                       ({"email": {"smtp_host": "h"}}, "email.notif_from"),
                       ({"email": {"smtp_host": "h", "notif_from": "nobody"}}, "email.notif_from"),
                       ({"email": {"smtp_host": "h", "notif_from": "a@b.c", "smtp_port": "x"}},
                        "email.smtp_port"),
                       ({"email": {"smtp_host": "h", "notif_from": "a@b.c", "force_tls": True,
                                   "enable_tls": False}}, "email.force_tls"),
                       ({"registrations_require_3pid": ["email"]}, "registrations_require_3pid"),
                       ({"rc_3pid_validation": {"per_second": "fast"}},
                        "rc_3pid_validation.per_second")):
        with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
            parse_config({**base, **extra})
    cfg = parse_config({**base, "email": {"smtp_host": "h", "notif_from": "a@b.c",
                                          "force_tls": True}})
    email = cfg.threepid.email
    assert email.smtp_port == 465 and email.validation_token_lifetime == 3600
    assert cfg.threepid.rc_3pid_validation.per_second == 0.003
    assert cfg.threepid.rc_3pid_validation.burst_count == 5
    assert parse_config(base).threepid.email is None


# ---------------------------------------------------------------------------- adding

def test_add_an_address_end_to_end_then_login_by_it_and_delete_it(client, sink):
    alice = new_user(client, "alice")
    t0 = time.monotonic()
    answer = request_token(client, "/account/3pid/email/requestToken", " Alice@Example.ORG ")
    assert time.monotonic() - t0 < 2
    assert answer["submit_url"] == "https://hs.test.local/_synapse/client/email/submit_token"
    [(msg, facts)] = sink.wait_for(1)
    assert facts["rcpt_tos"] == ["alice@example.org"]   # canonicalised
    assert facts["mail_from"] == "matrix@test.local"
    assert msg["From"] == "Atrium homeserver <matrix@test.local>"
    assert msg["Subject"] == "[test.local] Validate your email"
    assert msg["Auto-Submitted"] == "auto-generated"
    path, q = link_in(msg)
    assert path == "/_matrix/client/unstable/add_threepid/email/submit_token"
    assert q["sid"] == answer["sid"] and q["client_secret"] == "s3cret"
    assert q["token"] in text_of(msg).split("code where you were asked for it: ")[1]
    assert msg.get_body(preferencelist=("html",)) is not None

    add = {"sid": answer["sid"], "client_secret": "s3cret"}
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=alice["headers"])
    assert r.status_code == 401 and r.json["flows"] == [{"stages": ["m.login.password"]}]
    add["auth"] = password_auth(alice["user_id"], "pw", r.json["session"])
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=alice["headers"])
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")  # not yet

    r = client.get(path, query_string=q)
    assert r.status_code == 200 and r.mimetype == "text/html"
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=alice["headers"])
    assert r.status_code == 200, r.json
    [t] = client.get(f"{V3}/account/3pid", headers=alice["headers"]).json["threepids"]
    assert t["medium"] == "email" and t["address"] == "alice@example.org"
    assert t["validated_at"] <= t["added_at"]
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=alice["headers"])
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")  # spent

    for r in (login(client, {"type": "m.id.thirdparty", "medium": "email",
                             "address": "ALICE@example.org"}),
              login(client, medium="email", address="alice@example.org")):   # legacy form
        assert r.status_code == 200, r.json
        assert r.json["user_id"] == alice["user_id"]
    r = login(client, {"type": "m.id.thirdparty", "medium": "email", "address": "x@y.org"})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    r = login(client, {"type": "m.id.thirdparty", "medium": "email"})
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")

    r = client.post(f"{V3}/account/3pid/delete", headers=alice["headers"],
                    json={"medium": "email", "address": "alice@example.org"})
    assert r.status_code == 200 and r.json == {"id_server_unbind_result": "no-support"}
    assert client.get(f"{V3}/account/3pid", headers=alice["headers"]).json["threepids"] == []
    r = login(client, {"type": "m.id.thirdparty", "medium": "email",
                       "address": "alice@example.org"})
    assert r.status_code == 403
    caps = client.get(f"{V3}/capabilities", headers=alice["headers"]).json["capabilities"]
    assert caps["m.3pid_changes"] == {"enabled": True}


def test_an_address_of_another_account_is_in_use(client, sink):
    bob, carol = new_user(client, "bob"), new_user(client, "carol")
    # carol validates the address first, bob adds it first: carol's add is refused
    sid = request_token(client, "/account/3pid/email/requestToken", "shared@example.org",
                        secret="carol")["sid"]
    validate_by_link(client, sink)
    sink.clear()
    add_email(client, sink, bob, "shared@example.org")
    add = {"sid": sid, "client_secret": "carol"}
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=carol["headers"])
    add["auth"] = password_auth(carol["user_id"], "pw", r.json["session"])
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=carol["headers"])
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_IN_USE")
    # asking again now is refused at once, and no mail goes out
    r = request_token(client, "/account/3pid/email/requestToken", "Shared@example.org",
                      status=400)
    assert r["errcode"] == "M_THREEPID_IN_USE"
    r = request_token(client, "/register/email/requestToken", "shared@example.org",
                      status=400)
    assert r["errcode"] == "M_THREEPID_IN_USE"
    assert len(sink.received()) == 1


def test_send_attempt_and_client_secret(client, sink):
    first = request_token(client, "/account/3pid/email/requestToken", "retry@example.org")
    again = request_token(client, "/account/3pid/email/requestToken", "retry@example.org")
    assert again["sid"] == first["sid"]
    sink.wait_for(1)
    time.sleep(0.2)
    assert len(sink.received()) == 1                 # not a new send_attempt: no mail
    more = request_token(client, "/account/3pid/email/requestToken", "retry@example.org",
                         attempt=2)
    assert more["sid"] == first["sid"]
    (m1, _), (m2, _) = sink.wait_for(2)
    tokens = [link_in(m)[1]["token"] for m in (m1, m2)]
    assert tokens[0] != tokens[1]
    other = request_token(client, "/account/3pid/email/requestToken", "retry@example.org",
                          secret="another")
    assert other["sid"] != first["sid"]
    # either mail's token validates the session (each once)
    sub = {"sid": first["sid"], "client_secret": "s3cret", "token": tokens[0]}
    r = client.post("/_synapse/client/email/submit_token", json=sub)
    assert r.status_code == 200 and r.json == {"success": True}


@pytest.mark.parametrize("body, errcode", [
    ({"email": "a@example.org", "send_attempt": 1}, "M_MISSING_PARAM"),
    ({"client_secret": "s", "send_attempt": 1}, "M_MISSING_PARAM"),
    ({"client_secret": "s", "email": "a@example.org"}, "M_MISSING_PARAM"),
    ({"client_secret": "no spaces", "email": "a@example.org", "send_attempt": 1},
     "M_INVALID_PARAM"),
    ({"client_secret": "x" * 256, "email": "a@example.org", "send_attempt": 1},
     "M_INVALID_PARAM"),
    ({"client_secret": "s", "email": "not-an-address", "send_attempt": 1}, "M_INVALID_PARAM"),
    ({"client_secret": "s", "email": "a@b@c", "send_attempt": 1}, "M_INVALID_PARAM"),
    ({"client_secret": "s", "email": "a@example.org\r\nBcc: x@y.org", "send_attempt": 1},
     "M_INVALID_PARAM"),
    ({"client_secret": "s", "email": "a@example.org", "send_attempt": "1"}, "M_BAD_JSON"),
    ({"client_secret": "s", "email": "a@example.org", "send_attempt": 2 ** 60},
     "M_INVALID_PARAM"),
    ({"client_secret": "s", "email": "a@example.org", "send_attempt": 1,
      "next_link": "file:///etc/passwd"}, "M_INVALID_PARAM"),
])
def test_request_token_bad_input(client, body, errcode):
    for path in ("/account/3pid/email/requestToken", "/register/email/requestToken",
                 "/account/password/email/requestToken"):
        r = client.post(f"{V3}{path}", json=body)
        assert (r.status_code, r.json["errcode"]) == (400, errcode), (path, r.json)


def test_wrong_reused_and_expired_tokens(app, client, sink):
    sid = request_token(client, "/account/3pid/email/requestToken", "tok@example.org")["sid"]
    [(msg, _)] = sink.wait_for(1)
    path, q = link_in(msg)
    url = "/_synapse/client/email/submit_token"

    def submit(**change: str):
        return client.post(url, json={**q, **change})

    for change, errcode in (({"token": "nope"}, "M_TOKEN_INCORRECT"),
                            ({"client_secret": "other"}, "M_INVALID_PARAM"),
                            ({"sid": "unknown"}, "M_INVALID_PARAM"),
                            ({"client_secret": "bad secret!"}, "M_INVALID_PARAM")):
        r = submit(**change)
        assert (r.status_code, r.json["errcode"]) == (400, errcode)
    r = client.post(url, json={"sid": sid, "token": q["token"]})
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAM")
    r = client.get(path, query_string={**q, "token": "nope"})        # the link, tampered
    assert r.status_code == 400 and r.mimetype == "text/html"
    assert "Nothing was changed" in r.get_data(as_text=True)
    # a link of another purpose does not validate this session
    r = client.get("/_matrix/client/unstable/registration/email/submit_token", query_string=q)
    assert r.status_code == 400
    assert submit().json == {"success": True}
    r = submit()
    assert (r.status_code, r.json["errcode"]) == (400, "M_TOKEN_INCORRECT")   # used once
    assert client.get(path, query_string=q).status_code == 400

    # an expired token
    request_token(client, "/account/3pid/email/requestToken", "late@example.org")
    msg, _ = sink.wait_for(2)[-1]
    _, late = link_in(msg)
    runtime_of(app).db.run("expire", lambda t: t.execute(
        "UPDATE threepid_validation_tokens SET expires_ts = 1"), write=True)
    r = client.post(url, json=late)
    assert (r.status_code, r.json["errcode"]) == (400, "M_SESSION_EXPIRED")
    r = client.post(url, json=late)
    assert (r.status_code, r.json["errcode"]) == (400, "M_TOKEN_INCORRECT")


def test_a_validated_session_expires_and_deactivation_frees_the_address(app, client, sink):
    dave = new_user(client, "dave")
    sid = request_token(client, "/account/3pid/email/requestToken", "old@example.org")["sid"]
    validate_by_link(client, sink)
    runtime_of(app).db.run("expire", lambda t: t.execute(
        "UPDATE threepid_validation_sessions SET expires_ts = 1 WHERE session_id = ?",
        (sid,)), write=True)
    add = {"sid": sid, "client_secret": "s3cret"}
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=dave["headers"])
    add["auth"] = password_auth(dave["user_id"], "pw", r.json["session"])
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=dave["headers"])
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")

    sink.clear()
    add_email(client, sink, dave, "old@example.org")
    r = client.post(f"{V3}/account/deactivate", headers=dave["headers"],
                    json={"auth": password_auth(dave["user_id"], "pw")})
    if r.status_code == 401:
        r = client.post(f"{V3}/account/deactivate", headers=dave["headers"], json={
            "auth": password_auth(dave["user_id"], "pw", r.json["session"])})
    assert r.status_code == 200, r.json
    assert request_token(client, "/account/3pid/email/requestToken", "old@example.org",
                         secret="after")["sid"]


def test_next_link_redirects_after_validation(client, sink):
    request_token(client, "/account/3pid/email/requestToken", "next@example.org",
                  next_link="https://app.example.org/done?x=1")
    [(msg, _)] = sink.wait_for(1)
    path, q = link_in(msg)
    r = client.get(path, query_string=q)
    assert r.status_code == 302 and r.headers["Location"] == "https://app.example.org/done?x=1"


def test_sending_never_holds_the_request_and_failures_are_logged(apps, caplog):
    # a server that accepts the connection and never says a word
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()                                   # nothing listens there
    try:
        for port in (silent.getsockname()[1], dead_port):
            app = apps.make(email={"smtp_host": "127.0.0.1", "smtp_port": port,
                                   "notif_from": FROM})
            mailer = runtime_of(app).parts["mailer"]
            mailer.timeout = 1.0
            client = app.test_client()
            with caplog.at_level(logging.ERROR, logger="atrium.mailer"):
                t0 = time.monotonic()
                answer = request_token(client, "/account/3pid/email/requestToken",
                                       "who@example.org")
                assert time.monotonic() - t0 < 0.5
                assert answer["sid"]
                assert mailer.wait_idle(5)
            assert mailer.failed == 1 and mailer.sent == 0
            assert any("mail to who@example.org failed" in r.getMessage()
                       for r in caplog.records)
            caplog.clear()
    finally:
        silent.close()


def test_rate_limited_per_address(apps, sink):
    app = apps.make(email=email_section(sink),
                    rc_3pid_validation={"per_second": 0.001, "burst_count": 2})
    client = app.test_client()
    for attempt in (1, 2):
        request_token(client, "/account/3pid/email/requestToken", "rl@example.org",
                      attempt=attempt)
    r = client.post(f"{V3}/account/3pid/email/requestToken",
                    json={"client_secret": "s", "email": "rl@example.org", "send_attempt": 3})
    assert (r.status_code, r.json["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert r.json["retry_after_ms"] > 0


def test_sessions_survive_a_restart(apps, sink):
    first = apps.make(email=email_section(sink))
    sid = request_token(first.test_client(), "/account/3pid/email/requestToken",
                        "restart@example.org")["sid"]
    [(msg, _)] = sink.wait_for(1)
    runtime_of(first).shutdown()
    second = apps.again(first.raw)
    client = second.test_client()
    path, q = link_in(msg)
    assert client.get(path, query_string=q).status_code == 200
    user = new_user(client, "restart")
    add = {"sid": sid, "client_secret": "s3cret"}
    r = client.post(f"{V3}/account/3pid/add", json=add, headers=user["headers"])
    add["auth"] = password_auth(user["user_id"], "pw", r.json["session"])
    assert client.post(f"{V3}/account/3pid/add", json=add,
                       headers=user["headers"]).status_code == 200


def test_phone_numbers_are_not_supported(client):
    body = {"client_secret": "s", "country": "GB", "phone_number": "07700900001",
            "send_attempt": 1}
    r = client.post(f"{V3}/account/3pid/msisdn/requestToken", json=body)
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    for path in ("/register/msisdn/requestToken", "/account/password/msisdn/requestToken"):
        r = client.post(f"{V3}{path}", json=body)
        assert (r.status_code, r.json["errcode"]) == (403, "M_THREEPID_DENIED")


# ---------------------------------------------------------------------------- registration

def test_registration_requiring_an_address(apps, sink):
    app = apps.make(email=email_section(sink), registrations_require_3pid=["email"],
                    enable_registration_without_verification=False,
                    rc_3pid_validation=GENEROUS)
    client = app.test_client()
    body = {"username": "mailed", "password": "pw"}
    r = client.post(f"{V3}/register", json=body)
    assert r.status_code == 401
    assert r.json["flows"] == [{"stages": ["m.login.email.identity"]}]
    session = r.json["session"]
    r = client.post(f"{V3}/register", json={**body, "auth": {"type": "m.login.dummy",
                                                              "session": session}})
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNRECOGNIZED")

    sid = request_token(client, "/register/email/requestToken", "Mailed@Example.org")["sid"]
    [(msg, _)] = sink.wait_for(1)
    assert msg["Subject"] == "[test.local] Validate your email"
    path, q = link_in(msg)
    assert path == "/_matrix/client/unstable/registration/email/submit_token"
    auth = {"type": "m.login.email.identity", "session": session,
            "threepid_creds": {"sid": sid, "client_secret": "s3cret"}}
    r = client.post(f"{V3}/register", json={"auth": auth})     # not validated yet
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
    r = client.post(f"{V3}/register", json={"auth": {**auth, "threepid_creds": {"sid": sid}}})
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAM")
    r = client.post(f"{V3}/register", json={"auth": {k: v for k, v in auth.items()
                                                     if k != "threepid_creds"}})
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAM")
    assert client.get(path, query_string=q).status_code == 200
    r = client.post(f"{V3}/register", json={"auth": auth})   # password remembered
    assert r.status_code == 200, r.json
    user_id = r.json["user_id"]
    assert user_id == "@mailed:test.local"
    [t] = client.get(f"{V3}/account/3pid",
                     headers=auth_headers(r.json["access_token"])).json["threepids"]
    assert t["address"] == "mailed@example.org"
    r = login(client, {"type": "m.id.thirdparty", "medium": "email",
                       "address": "mailed@example.org"})
    assert r.status_code == 200 and r.json["user_id"] == user_id
    r = request_token(client, "/register/email/requestToken", "mailed@example.org",
                      secret="again", status=400)
    assert r["errcode"] == "M_THREEPID_IN_USE"


def test_registration_flows_with_optional_email_and_without_email(apps, sink, client):
    app = apps.make(email=email_section(sink))
    r = app.test_client().post(f"{V3}/register", json={"username": "x", "password": "pw"})
    assert r.json["flows"] == [{"stages": ["m.login.dummy"]},
                               {"stages": ["m.login.email.identity"]}]
    plain = apps.make()   # no e-mail: nothing changes
    c = plain.test_client()
    r = c.post(f"{V3}/register", json={"username": "x", "password": "pw"})
    assert r.json["flows"] == [{"stages": ["m.login.dummy"]}]
    r = c.post(f"{V3}/register/email/requestToken",
               json={"client_secret": "s", "email": "a@example.org", "send_attempt": 1})
    assert (r.status_code, r.json["errcode"]) == (403, "M_THREEPID_DENIED")
    r = c.post(f"{V3}/account/3pid/email/requestToken",
               json={"client_secret": "s", "email": "a@example.org", "send_attempt": 1})
    assert (r.status_code, r.json["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    closed = apps.make(email=email_section(sink), enable_registration=False)
    r = closed.test_client().post(f"{V3}/register/email/requestToken", json={
        "client_secret": "s", "email": "a@example.org", "send_attempt": 1})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")


# ---------------------------------------------------------------------------- transport

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d)
    leaf = issue_cert(ca, d, ["127.0.0.1"])
    return ca.cert_path, (leaf.cert_path, leaf.key_path)


def _send(port: int, ca: str | None, **cfg: Any) -> Mailer:
    mailer = Mailer(EmailConfig("127.0.0.1", "hs@test.local", smtp_port=port, **cfg),
                    ca_files=[ca] if ca else [], timeout=5)
    mailer.send(Message("to@example.org", "s", "text", "<p>html</p>"))
    assert mailer.wait_idle(10)
    return mailer


def test_starttls_auth_and_implicit_tls(tmp_path, tls_files):
    ca, pair = tls_files
    sink = SmtpSink(str(tmp_path / "a"), starttls=pair, auth=("hs", "pw"))
    try:
        m = _send(sink.port, ca, smtp_user="hs", smtp_pass="pw",
                  require_transport_security=True)
        assert (m.sent, m.failed) == (1, 0)
        [(_, facts)] = sink.wait_for(1)
        assert facts["tls"] and facts["login"] == "hs"
        assert _send(sink.port, ca, smtp_user="hs", smtp_pass="wrong").failed == 1
        assert _send(sink.port, None).failed == 1       # certificate not trusted
        assert len(sink.received()) == 1
    finally:
        sink.stop()
    sink = SmtpSink(str(tmp_path / "b"), implicit_tls=pair)
    try:
        assert _send(sink.port, ca, force_tls=True).sent == 1
        [(_, facts)] = sink.wait_for(1)
        assert facts["tls"]
    finally:
        sink.stop()


def test_require_transport_security_refuses_a_server_without_starttls(sink):
    m = _send(sink.port, None, require_transport_security=True)
    assert (m.sent, m.failed) == (0, 1)
    assert _send(sink.port, None).sent == 1             # opportunistic: plain is fine
    assert len(sink.wait_for(1)) == 1
