"""The access log (atrium/access_log.py): one line per request, for every path, in the format
of every other line; the user and device once authenticated; the request id answered in
``X-Request-Id``; and no secret in any line, wherever the request carried it."""
from __future__ import annotations

import io
import logging
import re
from typing import Any, Iterator

import pytest

from atrium.access_log import loggable_uri, redact_query
from atrium.logs import FORMAT, RequestIdFilter, scrub
from tests.web.conftest import auth_headers
from tests.web.test_synapse_admin import _register as register_admin

V3 = "/_matrix/client/v3"
ACCESS = re.compile(
    r'^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO atrium\.access \[(?P<rid>[^\]]+)\] '
    r'(?P<ip>\S+) - (?P<who>\S+) "(?P<method>\S+) (?P<uri>\S+) (?P<proto>[^" ]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) (?P<ms>\d+\.\d)ms "(?P<agent>(?:[^"\\]|\\.)*)"$')


class Capture:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def access(self, fragment: str = "") -> list[re.Match[str]]:
        """The parsed access lines whose URI contains ``fragment``."""
        out = []
        for line in self.text.splitlines():
            if " atrium.access " in line:
                m = ACCESS.match(line)
                assert m is not None, f"access line not in the documented format: {line!r}"
                if fragment in m["uri"]:
                    out.append(m)
        return out

    def one(self, fragment: str) -> re.Match[str]:
        found = self.access(fragment)
        assert len(found) == 1, (fragment, self.text)
        return found[0]


@pytest.fixture
def logs() -> Iterator[Capture]:
    """Everything logged (every logger, DEBUG and up), formatted as Atrium formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield Capture(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _login(client: Any, user: str = "alice", password: str = "pw") -> dict[str, Any]:
    r = client.post(f"{V3}/register", json={"username": user, "password": password,
                                            "auth": {"type": "m.login.dummy"}})
    if r.status_code == 401:
        r = client.post(f"{V3}/register", json={
            "username": user, "password": password,
            "auth": {"type": "m.login.dummy", "session": r.json["session"]}})
    assert r.status_code == 200, r.json
    return r.json


def test_a_line_has_every_field_and_the_user_and_device_after_auth(client, logs):
    alice = _login(client)
    r = client.get(f"{V3}/account/whoami", headers={
        **auth_headers(alice["access_token"]), "X-Request-Id": "whoami-1.a",
        "User-Agent": 'Tester/1.0 (say "hi")'})
    assert r.status_code == 200
    m = logs.one("/account/whoami")
    assert m["rid"] == "whoami-1.a" == r.headers["X-Request-Id"]
    assert m["ip"] == "127.0.0.1"
    assert m["who"] == f"{alice['user_id']}/{alice['device_id']}"
    assert (m["method"], m["uri"], m["proto"]) == ("GET", f"{V3}/account/whoami", "HTTP/1.1")
    assert m["status"] == "200" and int(m["bytes"]) == len(r.data)
    assert float(m["ms"]) >= 0
    assert m["agent"] == r'Tester/1.0 (say \"hi\")'


def test_unauthenticated_requests_and_errors_are_logged_with_their_status(client, logs):
    client.get("/_matrix/client/versions")
    client.get(f"{V3}/account/whoami")                                  # no token
    client.get(f"{V3}/account/whoami", headers=auth_headers("nope"))    # unknown token
    client.get("/_matrix/client/v3/no/such/endpoint")
    client.get("/totally/unknown")
    client.delete("/_matrix/client/versions")                           # 405
    client.post(f"{V3}/createRoom", data=b"{not json", headers=auth_headers("nope"))
    client.options(f"{V3}/account/whoami")                              # CORS pre-flight
    assert logs.access("/versions")[0]["who"] == "-"
    whoami = logs.access("/account/whoami")
    assert [(m["method"], m["status"], m["who"]) for m in whoami] == [
        ("GET", "401", "-"), ("GET", "401", "-"), ("OPTIONS", "200", "-")]
    assert logs.one("/no/such/endpoint")["status"] == "404"
    assert logs.one("/totally/unknown")["status"] == "404"
    assert [m["status"] for m in logs.access("/versions")] == ["200", "405"]
    assert logs.one("/createRoom")["status"] == "401"


def test_well_known_health_and_synapse_admin_requests_are_logged(client, logs):
    client.get("/.well-known/matrix/client")
    client.get("/.well-known/matrix/server")
    client.get("/health")
    client.head("/health")
    admin = register_admin(client, "root").json
    r = client.get("/_synapse/admin/v2/users/@root:test.local",
                   headers=auth_headers(admin["access_token"]))
    assert r.status_code == 200
    assert logs.one("/.well-known/matrix/client")["status"] in ("200", "404")
    assert logs.one("/.well-known/matrix/server")["status"] in ("200", "404")
    assert [m["method"] for m in logs.access("/health")] == ["GET", "HEAD"]
    assert [m["method"] for m in logs.access("/_synapse/admin/v1/register")] == ["GET", "POST"]
    m = logs.one("/_synapse/admin/v2/users/")
    assert m["status"] == "200" and m["who"].startswith("@root:test.local/")


def test_sync_in_front_of_flask_is_logged_to_the_end_of_its_long_poll(client, logs):
    alice = _login(client)
    h = auth_headers(alice["access_token"])
    first = client.get(f"{V3}/sync?timeout=0", headers=h)
    since = first.json["next_batch"]
    r = client.get(f"{V3}/sync?timeout=300&since={since}",
                   headers={**h, "X-Request-Id": "poll-1"})
    assert r.status_code == 200
    client.get(f"{V3}/sync")                                 # no token: 401
    lines = logs.access("/sync")
    assert [m["status"] for m in lines] == ["200", "200", "401"]
    poll = lines[1]
    assert poll["rid"] == "poll-1" == r.headers["X-Request-Id"]
    assert poll["who"] == f"{alice['user_id']}/{alice['device_id']}"
    assert float(poll["ms"]) >= 250, poll.group(0)
    assert int(poll["bytes"]) == len(r.data)
    assert lines[2]["who"] == "-"


def test_a_generated_request_id_is_the_one_answered(client, logs):
    r = client.get("/_matrix/client/versions", headers={"X-Request-Id": "bad id with spaces"})
    rid = r.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{12}", rid)
    assert logs.one("/versions")["rid"] == rid


def test_every_request_is_logged_once(client, logs):
    for _ in range(3):
        client.get("/_matrix/client/versions")
    assert len(logs.access("/versions")) == 3


def test_no_token_or_secret_reaches_the_log_wherever_the_request_carries_it(
        make_app, logs):
    app = make_app(registration_requires_token=True, refreshable_access_token_lifetime="5m")
    client = app.test_client()
    admin = register_admin(client, "root", pw="AdminPassw0rdSecret").json
    ah = auth_headers(admin["access_token"])
    reg = client.post("/_synapse/admin/v1/registration_tokens/new", headers=ah,
                      json={"token": "RegTokenSecret1"})
    assert reg.status_code == 200
    secrets = {admin["access_token"], "AdminPassw0rdSecret", "RegTokenSecret1"}

    # a login with a password in the body, refresh tokens
    r = client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "root"},
        "password": "AdminPassw0rdSecret", "refresh_token": True})
    assert r.status_code == 200, r.json
    token, refresh = r.json["access_token"], r.json["refresh_token"]
    secrets |= {token, refresh}
    assert client.post(f"{V3}/refresh", json={"refresh_token": refresh}).status_code == 200
    # the access token in the header, in the query, with an encoded name, on /sync
    client.get(f"{V3}/account/whoami", headers=auth_headers(token))
    client.get(f"{V3}/account/whoami?access_token={token}")
    client.get(f"{V3}/account/whoami?access%5Ftoken={token}&x=1")
    client.get(f"{V3}/account/whoami?ACCESS_TOKEN={token}")
    client.get(f"{V3}/sync?timeout=0&access_token={token}")
    client.get(f"{V3}/sync", headers={"Authorization": f"Bearer {token}XX"})
    client.get(f"{V3}/account/whoami", headers={"Authorization": f"Basic {token}"})
    # the registration token: its validity check, the admin API's path
    client.get("/_matrix/client/v1/register/m.login.registration_token/validity"
               "?token=RegTokenSecret1")
    client.get("/_synapse/admin/v1/registration_tokens/RegTokenSecret1", headers=ah)
    # e-mail validation links and the UIA fallback's session
    secrets |= {"ClientSecretXyz", "MailTokenSecret", "SidSecret42", "UiaSessionSecret"}
    client.get("/_matrix/client/unstable/registration/email/submit_token"
               "?token=MailTokenSecret&client_secret=ClientSecretXyz&sid=SidSecret42")
    client.get("/_synapse/client/password_reset/email/submit_token"
               "?sid=SidSecret42;client_secret=ClientSecretXyz&token=MailTokenSecret")
    client.post("/_synapse/client/email/submit_token", json={
        "sid": "SidSecret42", "client_secret": "ClientSecretXyz", "token": "MailTokenSecret"})
    client.get(f"{V3}/auth/m.login.recaptcha/fallback/web?session=UiaSessionSecret")
    # a registration with a password and a token in the body
    client.post(f"{V3}/register", json={"username": "bob", "password": "BobPasswordSecret",
                                        "auth": {"type": "m.login.registration_token",
                                                 "token": "RegTokenSecret1"}})
    secrets.add("BobPasswordSecret")
    # a password change and a logout
    client.post(f"{V3}/logout", headers=auth_headers(token))

    text = logs.text
    assert logs.access("/whoami") and logs.access("/validity") and logs.access("submit_token")
    leaked = [s for s in secrets if s in text]
    assert not leaked, (leaked, text)
    assert f"{V3}/account/whoami?access_token=<redacted>" in text
    assert f"{V3}/account/whoami?access%5Ftoken=<redacted>&x=1" in text
    assert "validity?token=<redacted>" in text
    assert "/registration_tokens/<redacted>" in text
    assert "?token=<redacted>&client_secret=<redacted>&sid=<redacted>" in text
    assert "?sid=<redacted>;client_secret=<redacted>&token=<redacted>" in text
    assert "/fallback/web?session=<redacted>" in text


def test_query_redaction_keeps_everything_else():
    assert redact_query("since=s1_2&timeout=30000&filter=0") == "since=s1_2&timeout=30000&filter=0"
    assert redact_query("a=1&access_token=abc&b=2") == "a=1&access_token=<redacted>&b=2"
    assert redact_query("Access+Token=1&access_token") == "Access+Token=1&access_token"
    assert redact_query("client%5fsecret=x;sid=y") == "client%5fsecret=<redacted>;sid=<redacted>"
    assert redact_query("next_batch_token=keep&token=drop") == "next_batch_token=keep&token=<redacted>"


def test_the_uri_is_the_one_sent_with_quotes_and_control_characters_escaped():
    assert loggable_uri({"RAW_URI": "/_matrix/client/r0/rooms/%21a%3Ab/state?x=1"}) == \
        "/_matrix/client/r0/rooms/%21a%3Ab/state?x=1"
    assert loggable_uri({"RAW_URI": "http://h:8/_matrix/x?access_token=t"}) == \
        "/_matrix/x?access_token=<redacted>"
    assert loggable_uri({"PATH_INFO": '/a b"\n', "QUERY_STRING": "token=z"}) == \
        "/a%20b%22%0A?token=<redacted>"
    assert loggable_uri({"RAW_URI": '/x"\n'}) == '/x\\"\\x0a'
    assert loggable_uri({"RAW_URI": "/_synapse/admin/v1/registration_tokens/new"}) == \
        "/_synapse/admin/v1/registration_tokens/new"


def test_other_lines_are_scrubbed_too(logs):
    logging.getLogger("gunicorn.error").warning(
        "Invalid request from ip=1.2.3.4: Invalid HTTP Version 'GET /x?access_token=SeCrEt1 HTTP/9'")
    logging.getLogger("web.something").info("calling %s with %s", "https://x/?token=SeCrEt2",
                                            {"password": "SeCrEt3", "user": "u"})
    try:
        raise ValueError("Authorization: Bearer SeCrEt4")
    except ValueError:
        logging.getLogger("web.something").exception("failed")
    assert "SeCrEt" not in logs.text, logs.text
    assert "access_token=<redacted>" in logs.text and "'user': 'u'" in logs.text
    assert scrub('{"access_token": "abc", "n": 1}') == '{"access_token": "<redacted>", "n": 1}'
