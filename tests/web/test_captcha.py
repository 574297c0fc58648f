"""The m.login.recaptcha registration stage and its fallback page, against a siteverify
server of our own on loopback: it accepts one token, refuses every other, and fails (or
is unreachable, or answers garbage) for the outage cases.  One app for the module."""
from __future__ import annotations

import json
import socket
from urllib.parse import parse_qs

import pytest
import yaml
from gevent.pywsgi import WSGIServer

from atrium.captcha_config import CaptchaConfig
from atrium.cli import main
from atrium.config import ConfigError, parse_config
from atrium.errors import MatrixError
from tests.apps import GENEROUS, app_factory
from web.captcha import RecaptchaChecker, widget_for
from web.register import registration_flows

REG = "/_matrix/client/v3/register"
FALLBACK = "/_matrix/client/v3/auth/m.login.recaptcha/fallback/web"
GOOD = "good-token"
SECRET, SITEKEY = "private-key", "site-key-<1>"
FLOWS = [{"stages": ["m.login.recaptcha", "m.login.dummy"]}]


class Siteverify:
    """A siteverify API: records each form it receives; ``mode`` is "ok", "down" (503) or
    "garbage" (200, not JSON)."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.mode = "ok"
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/recaptcha/api/siteverify"

    def _app(self, environ, start_response):
        n = int(environ.get("CONTENT_LENGTH") or 0)
        form = {k: v[0] for k, v in parse_qs(environ["wsgi.input"].read(n).decode()).items()}
        self.received.append(form)
        if self.mode == "down":
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        if self.mode == "garbage":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b"<html>captive portal</html>"]
        ok = form.get("secret") == SECRET and form.get("response") == GOOD
        body = {"success": True, "hostname": "client.example"} if ok else \
            {"success": False, "error-codes": ["invalid-input-response"]}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]


@pytest.fixture(scope="module")
def siteverify():
    s = Siteverify()
    yield s
    s.server.stop(timeout=1)


@pytest.fixture(scope="module")
def app(tmp_path_factory, siteverify):
    factory = app_factory(tmp_path_factory.mktemp("captcha"))
    make = next(factory)
    yield make(enable_registration=True, enable_registration_captcha=True,
               recaptcha_public_key=SITEKEY, recaptcha_private_key=SECRET,
               recaptcha_siteverify_api=siteverify.url, rc_registration=GENEROUS)
    next(factory, None)


@pytest.fixture
def client(app, siteverify):
    siteverify.mode = "ok"
    siteverify.received.clear()
    return app.test_client()


def _start(client, username):
    r = client.post(REG, json={"username": username, "password": "pw"})
    assert r.status_code == 401, r.json
    return r.json["session"]


def _stage(client, session, auth, **environ):
    return client.post(REG, json={"auth": {"session": session, **auth}},
                       environ_base=environ)


# --------------------------------------------------------------------------- the UIA stage

def test_flows_put_the_captcha_first_with_its_public_key(client):
    r = client.post(REG, json={"username": "flows", "password": "pw"})
    assert r.status_code == 401
    assert r.json["flows"] == FLOWS
    assert r.json["params"] == {"m.login.recaptcha": {"public_key": SITEKEY}}
    assert r.json["completed"] == [] and "errcode" not in r.json


def test_good_response_passes_with_the_remote_ip_then_dummy_registers(client, siteverify):
    sid = _start(client, "alice")
    r = _stage(client, sid, {"type": "m.login.recaptcha", "response": GOOD},
               REMOTE_ADDR="203.0.113.7")
    assert r.status_code == 401 and r.json["completed"] == ["m.login.recaptcha"]
    assert "errcode" not in r.json
    assert siteverify.received == [{"secret": SECRET, "response": GOOD,
                                    "remoteip": "203.0.113.7"}]
    r = _stage(client, sid, {"type": "m.login.dummy"})
    assert r.status_code == 200 and r.json["user_id"] == "@alice:test.local"


def test_dummy_alone_does_not_register(client):
    sid = _start(client, "bob")
    r = _stage(client, sid, {"type": "m.login.dummy"})
    assert r.status_code == 401 and r.json["completed"] == ["m.login.dummy"]
    assert r.json["flows"] == FLOWS


def test_refused_response_is_401_with_the_uia_body(client, siteverify):
    sid = _start(client, "carol")
    r = _stage(client, sid, {"type": "m.login.recaptcha", "response": "forged"})
    assert r.status_code == 401
    assert r.json["errcode"] == "M_CAPTCHA_INVALID" and r.json["error"]
    assert r.json["session"] == sid and r.json["flows"] == FLOWS
    assert r.json["completed"] == [] and r.json["params"]["m.login.recaptcha"]
    assert siteverify.received[-1]["response"] == "forged"
    # the failure completed nothing: dummy still does not register
    r = _stage(client, sid, {"type": "m.login.dummy"})
    assert r.status_code == 401 and r.json["completed"] == ["m.login.dummy"]


def test_missing_response_is_captcha_needed_without_asking_siteverify(client, siteverify):
    sid = _start(client, "dave")
    for auth in ({"type": "m.login.recaptcha"}, {"type": "m.login.recaptcha", "response": ""},
                 {"type": "m.login.recaptcha", "response": 5}):
        r = _stage(client, sid, auth)
        assert r.status_code == 401 and r.json["errcode"] == "M_CAPTCHA_NEEDED", auth
        assert r.json["session"] == sid
    assert siteverify.received == []


def test_siteverify_outage_is_a_clear_error_never_a_pass(client, siteverify):
    sid = _start(client, "erin")
    for mode in ("down", "garbage"):
        siteverify.mode = mode
        r = _stage(client, sid, {"type": "m.login.recaptcha", "response": GOOD})
        assert r.status_code == 502 and r.json["errcode"] == "M_UNKNOWN", mode
        assert "CAPTCHA" in r.json["error"]
    # the session is still open: once the service is back the same answer passes
    siteverify.mode = "ok"
    r = _stage(client, sid, {"type": "m.login.recaptcha", "response": GOOD})
    assert r.status_code == 401 and r.json["completed"] == ["m.login.recaptcha"]


def test_unreachable_siteverify_fails_closed():
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/siteverify"
    checker = RecaptchaChecker(CaptchaConfig(True, "pub", "priv", url))
    with pytest.raises(MatrixError) as e:
        checker.verify(GOOD, "127.0.0.1")
    assert e.value.status == 502 and e.value.errcode == "M_UNKNOWN"


# --------------------------------------------------------------------------- fallback page

def test_fallback_page_shows_the_widget_for_the_session(client):
    sid = _start(client, "frank")
    r = client.get(FALLBACK, query_string={"session": sid})
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert f'value="{sid}"' in page and 'action="' + FALLBACK + '"' in page
    assert 'data-sitekey="site-key-&lt;1&gt;"' in page   # escaped, never raw HTML
    assert "https://www.recaptcha.net/recaptcha/api.js" in page and "g-recaptcha" in page


def test_fallback_needs_a_known_session(client):
    r = client.get(FALLBACK)
    assert r.status_code == 400 and r.json["errcode"] == "M_MISSING_PARAM"
    r = client.get(FALLBACK, query_string={"session": "nope"})
    assert r.status_code == 400 and r.json["errcode"] == "M_UNKNOWN"
    r = client.post(FALLBACK, data={"session": "nope", "g-recaptcha-response": GOOD})
    assert r.status_code == 400 and r.json["errcode"] == "M_UNKNOWN"


def test_fallback_completes_the_stage_then_the_client_resubmits_the_session(client,
                                                                            siteverify):
    sid = _start(client, "grace")
    # a wrong answer: the form again, with an error, and nothing completed
    r = client.post(FALLBACK, data={"session": sid, "g-recaptcha-response": "forged"})
    assert r.status_code == 200 and 'class="error"' in r.get_data(as_text=True)
    assert "authDone" not in r.get_data(as_text=True)
    r = client.post(FALLBACK, data={"session": sid})
    assert r.status_code == 400 and 'class="error"' in r.get_data(as_text=True)
    siteverify.mode = "down"
    r = client.post(FALLBACK, data={"session": sid, "g-recaptcha-response": GOOD})
    assert r.status_code == 502 and 'class="error"' in r.get_data(as_text=True)
    siteverify.mode = "ok"
    r = client.post(FALLBACK, data={"session": sid, "g-recaptcha-response": GOOD},
                    environ_base={"REMOTE_ADDR": "198.51.100.9"})
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and 'window.opener.postMessage("authDone", "*")' in page
    assert "window.onAuthDone()" in page
    assert siteverify.received[-1]["remoteip"] == "198.51.100.9"
    # the page again, now that it is done, says so
    assert "authDone" in client.get(FALLBACK, query_string={"session": sid}).get_data(
        as_text=True)
    # the client repeats its request with only the session: the CAPTCHA is done
    r = client.post(REG, json={"auth": {"session": sid}})
    assert r.status_code == 401 and r.json["completed"] == ["m.login.recaptcha"]
    r = _stage(client, sid, {"type": "m.login.dummy"})
    assert r.status_code == 200 and r.json["user_id"] == "@grace:test.local"


def test_fallback_is_absent_without_captcha(make_app):
    c = make_app().test_client()
    r = c.get(FALLBACK, query_string={"session": "x"})
    assert r.status_code == 404 and r.json["errcode"] == "M_UNRECOGNIZED"


def test_widget_follows_the_siteverify_service():
    assert widget_for("https://api.hcaptcha.com/siteverify").css_class == "h-captcha"
    assert widget_for("https://challenges.cloudflare.com/turnstile/v0/siteverify"
                      ).css_class == "cf-turnstile"
    assert widget_for("https://www.google.com/recaptcha/api/siteverify"
                      ).css_class == "g-recaptcha"
    assert widget_for("https://evilhcaptcha.com/x").css_class == "g-recaptcha"


# --------------------------------------------------------------------------- config

BASE = {"server_name": "test.local", "enable_registration": True}
KEYS = {"recaptcha_public_key": "pub", "recaptcha_private_key": "priv"}


def test_captcha_alone_opens_registration_and_joins_a_token():
    flows = registration_flows(parse_config({**BASE, "enable_registration_captcha": True,
                                             **KEYS}))
    assert flows == [["m.login.recaptcha", "m.login.dummy"]]
    flows = registration_flows(parse_config({**BASE, "enable_registration_captcha": True,
                                             "registration_requires_token": True, **KEYS}))
    assert flows == [["m.login.registration_token", "m.login.recaptcha"]]
    # keys alone do not turn it on
    assert registration_flows(parse_config({**BASE, **KEYS})) is None


@pytest.mark.parametrize("raw, key", [
    ({"enable_registration_captcha": True}, "recaptcha_public_key"),
    ({"enable_registration_captcha": True, "recaptcha_public_key": "p"},
     "recaptcha_private_key"),
    ({"enable_registration_captcha": "yes"}, "enable_registration_captcha"),
    ({"recaptcha_private_key": 5}, "recaptcha_private_key"),
    ({"recaptcha_siteverify_api": "ftp://x/"}, "recaptcha_siteverify_api"),
    ({"recaptcha_private_key": "a", "recaptcha_private_key_path": "/x"},
     "recaptcha_private_key_path"),
    ({"recaptcha_public_key_path": "/nonexistent/key"}, "recaptcha_public_key_path"),
])
def test_bad_captcha_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config({"server_name": "test.local", **raw})
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


def test_keys_from_files(tmp_path):
    (tmp_path / "priv").write_text("file-secret\n")
    (tmp_path / "pub").write_text("file-site-key\n")
    c = parse_config({"server_name": "test.local", "enable_registration_captcha": True,
                      "recaptcha_private_key_path": str(tmp_path / "priv"),
                      "recaptcha_public_key_path": str(tmp_path / "pub")}).captcha
    assert (c.enabled, c.private_key, c.public_key) == (True, "file-secret", "file-site-key")
    assert c.siteverify_api == "https://www.recaptcha.net/recaptcha/api/siteverify"


def test_check_config_counts_the_captcha_as_verification(tmp_path, capsys):
    p = tmp_path / "homeserver.yaml"
    p.write_text(yaml.safe_dump({**BASE, "enable_registration_captcha": True, **KEYS}))
    assert main(["check-config", "-c", str(p)]) == 0
    assert "warning" not in capsys.readouterr().err
