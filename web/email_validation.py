"""E-mail validation by Atrium itself (spec: client-server-api "Adding Account
Administrative Contact Information", the ``/requestToken`` endpoints, UIA
``m.login.email.identity``; the Identity Service API's ``submitToken``, whose request and
errors ``submit_url`` shares).  Only when the config has an ``email`` section.

- :meth:`EmailValidation.request_token` answers ``POST …/email/requestToken`` for the three
  purposes (registration, adding an address, password reset): checks, the
  ``rc_3pid_validation`` limits (per client IP and per address), the session
  (store/threepid_validation.py), and the e-mail with a link and the token, sent in the
  background (atrium/mailer.py): the answer is ``{"sid", "submit_url"}`` at once.
- The link is served here, on Synapse's paths: ``GET
  /_matrix/client/unstable/registration/email/submit_token`` and
  ``…/add_threepid/email/submit_token`` validate and show a page (or redirect to
  ``next_link``); ``/_synapse/client/password_reset/email/submit_token`` first shows a
  confirmation form and validates on its POST.  ``POST /_synapse/client/email/submit_token``
  (the ``submit_url``) takes ``{sid, client_secret, token}`` as JSON.
- :class:`EmailIdentityStage` is the UIA stage: it spends the validated session and remembers
  the address in the UIA session (``email_threepid``) for the operation that ends the flow.

A session proves an address for one purpose only: a link clicked to register cannot reset
a password.  Addresses are canonicalised as Synapse does (local part case-folded, domain
lower-cased).
"""
from __future__ import annotations

import html
import logging
import random
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Flask, Response, jsonify, redirect, request

from atrium.config import Config
from atrium.email_config import EmailConfig
from atrium.errors import MatrixError, bad_json, invalid_param, missing_param
from atrium.mailer import Mailer, Message
from store.threepid_validation import ThreepidValidationStore, Validated, ValidationFailed
from store.threepids import ThreepidInUse, ThreepidStore
from web.http import check_type, json_body, require
from web.uia import DUMMY, StageFailed, storable_text

log = logging.getLogger(__name__)

EMAIL_IDENTITY = "m.login.email.identity"
REGISTER, ADD_THREEPID, PASSWORD_RESET = "register", "add_threepid", "password_reset"
#: where the e-mail's link points, per purpose (Synapse's paths, so a proxy set up for
#: Synapse passes them)
LINK_PATHS = {
    REGISTER: "_matrix/client/unstable/registration/email/submit_token",
    ADD_THREEPID: "_matrix/client/unstable/add_threepid/email/submit_token",
    PASSWORD_RESET: "_synapse/client/password_reset/email/submit_token",
}
SUBMIT_PATH = "_synapse/client/email/submit_token"
PARAMS_KEY = "email_threepid"   # the UIA session's params entry of the proven address
MAX_EMAIL_LENGTH = 500          # Synapse's MAX_EMAIL_ADDRESS_LENGTH
MAX_SEND_ATTEMPT = 2 ** 53 - 1  # the largest integer canonical JSON carries
MAX_NEXT_LINK = 2000
_CLIENT_SECRET = re.compile(r"^[0-9a-zA-Z.=_-]{1,255}$")
_NOT_IN_ADDRESS = re.compile(r"[\s\x00-\x1f\x7f<>,;:\"()\[\]\\]")


# ------------------------------------------------------------------------- pure checks

def canonical_email(address: str) -> str:
    """Synapse's canonical form (MSC2265): local part case-folded, domain lower-cased; 400
    ``M_INVALID_PARAM`` for what is no single plain address (also what could break a mail
    header: spaces, control characters, angle brackets, commas)."""
    address = address.strip()
    local, at, domain = address.partition("@")
    if not at or not local or not domain or "@" in domain or _NOT_IN_ADDRESS.search(address):
        raise invalid_param("Unable to parse email address")
    canonical = f"{local.casefold()}@{domain.lower()}"
    if not 3 <= len(canonical) <= MAX_EMAIL_LENGTH:
        raise invalid_param("Unable to parse email address")
    return canonical


def check_client_secret(value: Any, key: str = "client_secret") -> str:
    if not isinstance(value, str) or not _CLIENT_SECRET.match(value):
        raise invalid_param(f"Invalid {key} parameter: 1 to 255 of [0-9a-zA-Z.=_-]")
    return value


def _session_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise invalid_param("Invalid sid parameter")
    return storable_text("sid", value)


def with_email(config: Config, flows: list[list[str]]) -> list[list[str]]:
    """Registration flows with the e-mail stage, as Synapse builds them: with
    ``registrations_require_3pid: [email]`` every flow proves an address (the dummy stage
    gives way to it); otherwise each flow is offered as it is and also with an address."""
    settings = config.threepid
    if settings.email is None:
        return flows
    with_address = [[s for s in f if s != DUMMY] + [EMAIL_IDENTITY] for f in flows]
    return with_address if settings.require_email else flows + with_address


# ------------------------------------------------------------------------- the service

class EmailValidation:
    """Request tokens, validate them, spend validated sessions."""

    def __init__(self, config: Config, email: EmailConfig, sessions: ThreepidValidationStore,
                 threepids: ThreepidStore, mailer: Mailer, limiter: Any) -> None:
        self.config = config
        self.email = email
        self.sessions = sessions
        self.threepids = threepids
        self.mailer = mailer
        self.limiter = limiter

    def request_token(self, purpose: str) -> dict[str, Any]:
        """``POST …/email/requestToken`` for ``purpose`` (the Flask request's body)."""
        body = json_body()
        secret = check_client_secret(require(body, "client_secret", str))
        address = canonical_email(storable_text("email", require(body, "email", str)))
        attempt = require(body, "send_attempt", int)
        if not -MAX_SEND_ATTEMPT <= attempt <= MAX_SEND_ATTEMPT:
            raise invalid_param("'send_attempt' is out of range")
        next_link = check_type(body, "next_link", str)
        if next_link is not None:
            next_link = _check_next_link(next_link)
        if purpose == REGISTER:
            from web.register import registration_flows  # web.register imports this module

            if not any(EMAIL_IDENTITY in f for f in registration_flows(self.config) or []):
                raise MatrixError(403, "M_FORBIDDEN", "Registration is disabled on this"
                                  " homeserver")
        rc = self.config.threepid.rc_3pid_validation
        self.limiter.check("3pid_validation_ip", f"email {request.remote_addr or ''}", rc)
        self.limiter.check("3pid_validation_address", f"email {address}", rc)
        owner = self.threepids.owner("email", address)
        if purpose == PASSWORD_RESET and owner is None:
            if self.config.threepid.inhibit_3pid_errors:
                return self._pretend()
            raise MatrixError(400, "M_THREEPID_NOT_FOUND", "Email not found")
        if purpose != PASSWORD_RESET and owner is not None:
            if self.config.threepid.inhibit_3pid_errors:
                if purpose == REGISTER:  # tell the owner, as Synapse does
                    self.mailer.send(self._already_in_use_mail(address))
                return self._pretend()
            raise MatrixError(400, "M_THREEPID_IN_USE", "Email is already in use")
        lifetime_ms = int(self.email.validation_token_lifetime * 1000)
        req = self.sessions.request(purpose, "email", address, secret, attempt, next_link,
                                    lifetime_ms, _now_ms())
        if req.token is not None:
            self.mailer.send(self._validation_mail(purpose, address, req.session_id, secret,
                                                   req.token))
        return {"sid": req.session_id, "submit_url": self.config.public_baseurl + SUBMIT_PATH}

    def spend(self, purpose: str, sid: str, client_secret: str) -> Validated | None:
        return self.sessions.spend(purpose, sid, client_secret, _now_ms())

    def _pretend(self) -> dict[str, Any]:
        """``request_token_inhibit_3pid_errors``: answer as if a mail went out, after a
        random 0.1-1 s as Synapse waits, so the answer tells nothing about the address."""
        time.sleep(random.uniform(0.1, 1.0))   # a greenlet's sleep under gevent
        return {"sid": secrets.token_urlsafe(18),
                "submit_url": self.config.public_baseurl + SUBMIT_PATH}

    # -- the e-mails -------------------------------------------------------------------
    def _validation_mail(self, purpose: str, address: str, sid: str, secret: str,
                         token: str) -> Message:
        query = urlencode({"token": token, "client_secret": secret, "sid": sid})
        link = f"{self.config.public_baseurl}{LINK_PATHS[purpose]}?{query}"
        server = self.config.server_name
        if purpose == PASSWORD_RESET:
            subject = f"[{server}] Password reset"
            what = f"Someone asked to reset the password of your {self.email.app_name}" \
                   f" account on {server}."
            todo = "If it was you, open the link below to confirm the reset:"
            warn = "If it was not you, do not open the link; your password stays as it is."
        else:
            subject = f"[{server}] Validate your email"
            what = (f"Someone asked to register this address with a new account on {server}."
                    if purpose == REGISTER else
                    f"Someone asked to add this address to an account on {server}.")
            todo = "If it was you, open the link below to confirm your address:"
            warn = "If it was not you, you can ignore this e-mail."
        code = f"Or enter this code where you were asked for it: {token}"
        text = f"{what}\n\n{todo}\n\n{link}\n\n{code}\n\n{warn}\n"
        e = html.escape
        page = (f"<p>{e(what)}</p><p>{e(todo)}</p><p><a href=\"{e(link)}\">{e(link)}</a></p>"
                f"<p>{e(code)}</p><p>{e(warn)}</p>")
        return Message(address, subject, text, _html_document(subject, page))

    def _already_in_use_mail(self, address: str) -> Message:
        server = self.config.server_name
        subject = f"[{server}] Email already in use"
        text = (f"Someone tried to register a new account on {server} with this address, which"
                f" an account already uses. If it was you, log in or reset your password"
                f" instead. If it was not you, you can ignore this e-mail.\n")
        return Message(address, subject, text,
                       _html_document(subject, f"<p>{html.escape(text)}</p>"))


def _check_next_link(link: str) -> str:
    """``next_link`` must be an http(s) URL (Synapse refuses ``file:``; anything else a
    browser would not open as a page is refused here too)."""
    storable_text("next_link", link)
    parts = urlsplit(link)
    if len(link) > MAX_NEXT_LINK or parts.scheme not in ("http", "https") or not parts.netloc \
            or re.search(r"[\s\x00-\x1f\x7f]", link):
        raise MatrixError(400, "M_INVALID_PARAM", "'next_link' must be an http(s) URL")
    return link


def _now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------------- the UIA stage

class EmailIdentityStage:
    """UIA ``m.login.email.identity`` with a session this server validated
    (``threepid_creds: {sid, client_secret}``; ``id_server`` is ignored, as the spec allows
    when the homeserver validated the address)."""

    def __init__(self, emails: EmailValidation) -> None:
        self.emails = emails

    def check(self, auth: dict[str, Any], client_ip: str | None) -> dict[str, Any]:
        creds = auth.get("threepid_creds", auth.get("threePidCreds"))
        if creds is None:
            raise missing_param("Missing 'threepid_creds'")
        if not isinstance(creds, dict):
            raise bad_json("'threepid_creds' must be an object")
        if "sid" not in creds:
            raise missing_param("Missing 'threepid_creds.sid'")
        secret = creds.get("client_secret", creds.get("clientSecret"))
        if secret is None:
            raise missing_param("Missing 'threepid_creds.client_secret'")
        sid = _session_id(creds["sid"])
        secret = check_client_secret(secret, "threepid_creds.client_secret")
        purpose = REGISTER if request.path.endswith("/register") else PASSWORD_RESET
        proof = self.emails.spend(purpose, sid, secret)
        if proof is None:
            raise StageFailed("Unable to get a validated e-mail address: follow the link in"
                              " the e-mail first", "M_UNAUTHORIZED")
        return {PARAMS_KEY: {"medium": proof.medium, "address": proof.address,
                             "validated_at": proof.validated_at}}

    def params(self) -> dict[str, Any] | None:
        return None


def proven_email(params: dict[str, Any]) -> dict[str, Any] | None:
    """The address a completed ``m.login.email.identity`` stage proved, from UIA params."""
    t = params.get(PARAMS_KEY)
    return t if isinstance(t, dict) and isinstance(t.get("address"), str) else None


def registration_threepid(runtime: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """Before a registration that proved an address: 400 ``M_THREEPID_IN_USE`` if another
    account has it now (as Synapse checks at this point)."""
    t = proven_email(params)
    if t is not None and runtime.parts["threepids"].owner(t["medium"], t["address"]):
        raise MatrixError(400, "M_THREEPID_IN_USE", "Email is already in use")
    return t


def add_registered(runtime: Any, user_id: str, threepid: dict[str, Any] | None) -> None:
    """After the registration: the proven address becomes the new account's."""
    if threepid is None:
        return
    try:
        runtime.parts["threepids"].add_validated(user_id, threepid["medium"],
                                                 threepid["address"],
                                                 int(threepid["validated_at"]), _now_ms())
    except ThreepidInUse:  # taken between the check and now: the account stays without it
        log.warning("registration of %s: %s was added to another account meanwhile",
                    user_id, threepid["address"])


# ------------------------------------------------------------------------- routes

def register(app: Flask, runtime: Any) -> None:
    """Build the service and its stage, and serve the link, when e-mail is configured."""
    config: Config = runtime.config
    email = config.threepid.email
    if email is None:
        return
    insecure = config.use_insecure_ssl_client_just_for_testing_do_not_use
    mailer = Mailer(email, ca_files=config.federation.custom_ca_list, verify=not insecure)
    runtime.parts["mailer"] = mailer
    runtime.shutdown_hooks.append(lambda: mailer.wait_idle(5.0))
    emails = EmailValidation(config, email, ThreepidValidationStore(runtime.db),
                             runtime.parts["threepids"], mailer, runtime.ratelimiter)
    runtime.parts["email_validation"] = emails
    runtime.parts["uia"].stages[EMAIL_IDENTITY] = EmailIdentityStage(emails)
    bp = Blueprint("email_validation", __name__)

    def validate(values: Any, purpose: str | None) -> tuple[str, str | None]:
        sid = values.get("sid")
        secret = values.get("client_secret")
        token = values.get("token")
        for key, v in (("sid", sid), ("client_secret", secret), ("token", token)):
            if not isinstance(v, str):
                raise missing_param(f"Missing '{key}'")
        try:
            return emails.sessions.validate(_session_id(sid), check_client_secret(secret),
                                            storable_text("token", token), _now_ms(),
                                            purpose=purpose)
        except ValidationFailed as e:
            raise MatrixError(400, e.errcode, e.message) from None

    def link_page(purpose: str) -> Response:
        try:
            _, next_link = validate(request.values, purpose)
        except MatrixError as e:
            return _page(e.status, "Validation failed", f"{e.error}. Nothing was changed.")
        if next_link:
            return redirect(next_link, 302)
        return _page(200, "Address validated", "Your e-mail address is validated. Go back to"
                     " your Matrix client to continue; you may close this window.")

    @bp.get("/" + LINK_PATHS[REGISTER])
    def registration_link() -> Any:
        """GET /_matrix/client/unstable/registration/email/submit_token"""
        return link_page(REGISTER)

    @bp.get("/" + LINK_PATHS[ADD_THREEPID])
    def add_threepid_link() -> Any:
        """GET /_matrix/client/unstable/add_threepid/email/submit_token"""
        return link_page(ADD_THREEPID)

    @bp.get("/" + LINK_PATHS[PASSWORD_RESET])
    def password_reset_link() -> Any:
        """GET /_synapse/client/password_reset/email/submit_token: a confirmation form (a
        link opened by accident, or by a mail scanner, changes nothing)"""
        fields = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(str(request.args.get(k, "")))}">'
            for k in ("sid", "client_secret", "token"))
        return _page(200, "Reset your password",
                     "You asked to reset the password of your Matrix account. Confirm to go"
                     " on; if it was not you, close this page and nothing changes.",
                     form=f'<form method="post">{fields}<p><button type="submit">Confirm'
                          f' the password reset</button></p></form>')

    @bp.post("/" + LINK_PATHS[PASSWORD_RESET])
    def password_reset_confirmed() -> Any:
        """POST /_synapse/client/password_reset/email/submit_token (the form above)"""
        return link_page(PASSWORD_RESET)

    @bp.post("/" + SUBMIT_PATH)
    def submit_token() -> Any:
        """POST /_synapse/client/email/submit_token: the ``submit_url`` (JSON, or the
        deprecated form encoding)"""
        values = request.form if request.mimetype == "application/x-www-form-urlencoded" \
            else json_body()
        validate(values, None)
        return jsonify({"success": True})

    app.register_blueprint(bp)


def _page(status: int, title: str, text: str, form: str = "") -> Response:
    body = _html_document(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
                                 f"{form}")
    return Response(body, status=status, mimetype="text/html")


def _html_document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title></head>"
            f'<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">'
            f"{body}</body></html>")
