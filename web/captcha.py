"""The ``m.login.recaptcha`` UIA stage (client-server-api "Google ReCaptcha") and its
fallback page ``/_matrix/client/v3/auth/m.login.recaptcha/fallback/web`` (client-server-api
"Fallback"), with Synapse's keys (atrium/captcha_config.py).

A client's ``response`` is checked with the siteverify API (``secret``, ``response`` and the
client's ``remoteip``, form-encoded, as reCAPTCHA, hCaptcha and Turnstile all take it).
A refusal is the flow's 401 with ``M_CAPTCHA_INVALID`` (``M_CAPTCHA_NEEDED`` without a
response); the spec's codes, where Synapse answers ``M_UNAUTHORIZED``.  When siteverify cannot
be asked — unreachable, a 5xx, an answer that is not JSON — the request fails with 502
``M_UNKNOWN``: an outage is never a pass, and the session stays open for another try.

The fallback page shows the widget of the service ``recaptcha_siteverify_api`` names (Google's
reCAPTCHA unless it is hCaptcha or Cloudflare Turnstile) and posts its answer back to the same
URL, which runs the same check and records the stage in the session; the client then repeats
its request with only the session.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Flask, Response, request

from atrium.captcha_config import CaptchaConfig
from atrium.config import Config
from atrium.errors import MatrixError, missing_param
from store.accounts import AccountStore
from web.uia import REGISTRATION_TOKEN, InteractiveAuth, StageFailed

log = logging.getLogger(__name__)

RECAPTCHA = "m.login.recaptcha"
FALLBACK_PATH = f"/_matrix/client/v3/auth/{RECAPTCHA}/fallback/web"
SITEVERIFY_TIMEOUT = 10.0
MAX_RESPONSE_TOKEN = 16 * 1024      # a widget's token is ~2 KB
MAX_SITEVERIFY_ANSWER = 64 * 1024
#: siteverify error codes that mean the server's own key is wrong, not the user's answer
_OPERATOR_ERRORS = {"missing-input-secret", "invalid-input-secret", "invalid-keys",
                    "sitekey-secret-mismatch"}


def with_captcha(config: Config, flows: list[list[str]]) -> list[list[str]]:
    """Registration flows with the CAPTCHA stage in front of each (after a registration
    token, which is cheaper to check), when ``enable_registration_captcha`` is on."""
    if not config.captcha.enabled:
        return flows
    out = []
    for flow in flows:
        head = [s for s in flow if s == REGISTRATION_TOKEN]
        out.append(head + [RECAPTCHA] + [s for s in flow if s != REGISTRATION_TOKEN])
    return out


def unavailable(what: str) -> MatrixError:
    return MatrixError(502, "M_UNKNOWN", f"The CAPTCHA could not be verified: {what}; "
                                         f"try again later")


class RecaptchaChecker:
    """Checks a CAPTCHA response with the siteverify API (a ``StageChecker``)."""

    def __init__(self, captcha: CaptchaConfig, *, verify_tls: bool = True) -> None:
        assert captcha.private_key is not None
        self.captcha = captcha
        self.verify_tls = verify_tls

    def params(self) -> dict[str, Any]:
        return {"public_key": self.captcha.public_key}

    def check(self, auth: dict[str, Any], client_ip: str | None) -> None:
        response = auth.get("response")
        if not isinstance(response, str) or not response:
            raise StageFailed("Captcha response is required", "M_CAPTCHA_NEEDED")
        if len(response) > MAX_RESPONSE_TOKEN or not response.isprintable():
            raise StageFailed("Captcha authentication failed", "M_CAPTCHA_INVALID")
        if not self.verify(response, client_ip):
            raise StageFailed("Captcha authentication failed", "M_CAPTCHA_INVALID")

    def verify(self, response: str, client_ip: str | None) -> bool:
        """Whether siteverify accepts ``response``; 502 when it cannot be asked."""
        form = {"secret": self.captcha.private_key, "response": response}
        if client_ip:
            form["remoteip"] = client_ip
        url = self.captcha.siteverify_api
        try:
            with requests.post(url, data=form, timeout=SITEVERIFY_TIMEOUT, stream=True,
                               allow_redirects=False, verify=self.verify_tls) as r:
                raw = r.raw.read(MAX_SITEVERIFY_ANSWER + 1, decode_content=True)
                status = r.status_code
        except (requests.RequestException, OSError) as e:
            log.warning("captcha: siteverify %s unreachable: %s", url, e)
            raise unavailable("the verification service is unreachable") from None
        if status != 200 or len(raw) > MAX_SITEVERIFY_ANSWER:
            log.warning("captcha: siteverify %s answered %s", url, status)
            raise unavailable(f"the verification service answered {status}")
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            log.warning("captcha: siteverify %s answered something that is not JSON", url)
            raise unavailable("the verification service's answer is unusable")
        # the hostname is not compared: the widget may be shown by any client (as Synapse)
        ok = answer.get("success") is True
        codes = answer.get("error-codes")
        if not ok and isinstance(codes, list) and _OPERATOR_ERRORS & set(map(str, codes)):
            log.error("captcha: siteverify refuses this server's key (%s): check "
                      "recaptcha_private_key", ", ".join(map(str, codes)))
        else:
            log.info("captcha: %s from %s (hostname %s)", "passed" if ok else "failed",
                     client_ip, answer.get("hostname"))
        return ok


# --------------------------------------------------------------------------- fallback page

@dataclass(frozen=True)
class Widget:
    script: str
    css_class: str
    field: str   # the form field the widget fills in


RECAPTCHA_WIDGET = Widget("https://www.recaptcha.net/recaptcha/api.js", "g-recaptcha",
                          "g-recaptcha-response")
WIDGETS = {
    "hcaptcha.com": Widget("https://js.hcaptcha.com/1/api.js", "h-captcha",
                           "h-captcha-response"),
    "challenges.cloudflare.com": Widget(
        "https://challenges.cloudflare.com/turnstile/v0/api.js", "cf-turnstile",
        "cf-turnstile-response"),
}
RESPONSE_FIELDS = ("g-recaptcha-response", "h-captcha-response", "cf-turnstile-response")


def widget_for(siteverify_api: str) -> Widget:
    """The widget of the service whose siteverify API is configured."""
    host = (urlsplit(siteverify_api).hostname or "").lower()
    for domain, widget in WIDGETS.items():
        if host == domain or host.endswith("." + domain):
            return widget
    return RECAPTCHA_WIDGET


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 32em; margin: 3em auto; padding: 0 1em; }}
.error {{ color: #b00020; }}
.widget div {{ margin: auto; }}
</style>
{head}
</head>
<body>
{body}
</body>
</html>
"""

_FORM = """<form id="captcha-form" method="post" action="{action}">
<p>This server asks you to show that you are a person, not a program, before it creates
an account.</p>
{error}
<input type="hidden" name="session" value="{session}">
<div class="widget {css_class}" data-sitekey="{sitekey}" data-callback="captchaDone"></div>
<noscript><p>This check needs JavaScript.</p><input type="submit" value="Done"></noscript>
</form>"""

_FORM_HEAD = """<script src="{script}" async defer></script>
<script>
function captchaDone() {{ document.getElementById("captcha-form").submit(); }}
</script>"""

# the spec's completion script (client-server-api "Fallback")
_DONE_HEAD = """<script>
if (window.onAuthDone) {
    window.onAuthDone();
} else if (window.opener && window.opener.postMessage) {
    window.opener.postMessage("authDone", "*");
}
</script>"""


def form_page(captcha: CaptchaConfig, session: str, error: str | None = None) -> str:
    widget = widget_for(captcha.siteverify_api)
    esc = html.escape
    body = _FORM.format(action=esc(FALLBACK_PATH), session=esc(session),
                        css_class=esc(widget.css_class), sitekey=esc(captcha.public_key or ""),
                        error=f'<p class="error"><strong>{esc(error)}</strong></p>'
                        if error else "")
    return _PAGE.format(title="Are you a person?",
                        head=_FORM_HEAD.format(script=esc(widget.script)), body=body)


def done_page() -> str:
    return _PAGE.format(title="Thank you", head=_DONE_HEAD,
                        body="<p>Thank you. You may close this window and return to the "
                             "application.</p>")


def _html(text: str, status: int = 200) -> Response:
    return Response(text, status=status, content_type="text/html; charset=utf-8")


def register(app: Flask, runtime: Any) -> None:
    config: Config = runtime.config
    if not config.captcha.enabled:
        return   # no stage, no page: the fallback path answers 404 M_UNRECOGNIZED
    accounts: AccountStore = runtime.parts["accounts"]
    uia: InteractiveAuth = runtime.parts["uia"]
    checker = RecaptchaChecker(
        config.captcha,
        verify_tls=not config.use_insecure_ssl_client_just_for_testing_do_not_use)
    uia.stages[RECAPTCHA] = checker
    bp = Blueprint("captcha", __name__)

    def _session(value: Any) -> tuple[str, list[str]]:
        """The fallback's ``session``: its id and completed stages (400 when unknown)."""
        if not isinstance(value, str) or not value:
            raise missing_param("No session supplied")
        session = None
        if "\x00" not in value and len(value) <= 255 and value.isprintable():
            session = accounts.get_uia_session(value)
        if session is None:
            raise MatrixError(400, "M_UNKNOWN", "Unknown session ID")
        return value, session.completed

    @bp.get(FALLBACK_PATH)
    def get_fallback() -> Any:
        """GET /_matrix/client/v3/auth/m.login.recaptcha/fallback/web"""
        sid, completed = _session(request.args.get("session"))
        if RECAPTCHA in completed:
            return _html(done_page())
        return _html(form_page(config.captcha, sid))

    @bp.post(FALLBACK_PATH)
    def post_fallback() -> Any:
        """POST /_matrix/client/v3/auth/m.login.recaptcha/fallback/web"""
        sid, completed = _session(request.form.get("session") or request.args.get("session"))
        if RECAPTCHA in completed:
            return _html(done_page())
        answer = next((request.form[f] for f in RESPONSE_FIELDS if request.form.get(f)), None)
        if answer is None:
            return _html(form_page(config.captcha, sid, "Please complete the check first."),
                         400)
        try:
            checker.check({"response": answer}, request.remote_addr)
        except StageFailed:
            return _html(form_page(config.captcha, sid, "That did not work; please try "
                                                        "again."))
        except MatrixError as e:   # siteverify is down: say so, on the page
            return _html(form_page(config.captcha, sid, e.error), e.status)
        if not accounts.complete_uia_stage(sid, RECAPTCHA):
            raise MatrixError(400, "M_UNKNOWN", "Unknown session ID")
        return _html(done_page())

    app.register_blueprint(bp)
