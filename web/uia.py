"""User-Interactive Authentication (spec: client-server-api, "User-Interactive
Authentication API"), plus the password and user-identifier helpers that login shares.

A session lives in ``uia_sessions`` so it survives a restart: the first request's body
(minus any password) is kept, each completed stage is recorded, and the operation that
finishes the flow deletes the session in its own transaction (``uia_session=`` on the
store's write methods).  Stages: ``m.login.dummy``, ``m.login.password`` (the requester's
own password) and ``m.login.registration_token`` (one use reserved while pending); other
areas plug their stages into ``InteractiveAuth.stages`` (web/captcha.py: ``m.login.recaptcha``).

Passwords are hashed with bcrypt in gevent's thread pool, so a hash never stalls other
greenlets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import bcrypt
from flask import request

from atrium.config import Config
from atrium.errors import MatrixError, bad_json, missing_param
from store.accounts import AccountStore, UIASession

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"

MAX_PASSWORD_LENGTH = 512


# --------------------------------------------------------------------------- passwords

def _bcrypt_input(password: str) -> bytes:
    # bcrypt only ever read the first 72 bytes; bcrypt>=5 refuses longer input instead, so
    # cut explicitly and stay compatible with hashes made by other servers (e.g. Synapse's).
    return password.encode("utf-8")[:72]


def _in_threadpool(fn: Any, *args: Any) -> Any:
    try:
        import gevent
        from gevent import monkey
    except ImportError:  # pragma: no cover
        return fn(*args)
    if not monkey.is_module_patched("threading"):
        return fn(*args)
    return gevent.get_hub().threadpool.apply(fn, args)


def hash_password(password: str, rounds: int) -> str:
    salt = bcrypt.gensalt(rounds)
    return _in_threadpool(bcrypt.hashpw, _bcrypt_input(password), salt).decode("ascii")


def check_password(password: str, password_hash: str | None) -> bool:
    if not password_hash:
        return False
    try:
        return bool(_in_threadpool(bcrypt.checkpw, _bcrypt_input(password),
                                   password_hash.encode("ascii")))
    except ValueError:  # a malformed stored hash never matches
        return False


def validate_password(value: Any, key: str = "password") -> str:
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be a string")
    if len(value) > MAX_PASSWORD_LENGTH or "\x00" in value:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{key}' is too long or not valid")
    return storable_text(key, value)


def storable_text(key: str, value: str) -> str:
    """JSON can carry lone surrogates and NULs, which bcrypt, SQLite's driver or
    PostgreSQL's text type refuse: 400 ``M_INVALID_PARAM`` instead of a 500."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{key}' is not valid Unicode") from None
    if "\x00" in value:
        raise MatrixError(400, "M_INVALID_PARAM", f"'{key}' may not contain NUL")
    return value


def reject_nul_path_values(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A blueprint ``url_value_preprocessor``: an id with a NUL in the path names nothing."""
    if values and any(isinstance(v, str) and "\x00" in v for v in values.values()):
        raise MatrixError(404, "M_NOT_FOUND", "Not found")


# --------------------------------------------------------------------------- identifiers

def user_from_identifier(body: dict[str, Any], server_name: str) -> str:
    """The full user id named by ``identifier`` (``m.id.user``) or the deprecated top-level
    ``user``: a localpart or a user id on this server (spec: "Identifier types")."""
    ident = body.get("identifier")
    if ident is not None:
        if not isinstance(ident, dict):
            raise bad_json("'identifier' must be an object")
        kind = ident.get("type")
        if kind == "m.id.user":
            user = ident.get("user")
        elif kind in ("m.id.thirdparty", "m.id.phone"):
            raise MatrixError(403, "M_FORBIDDEN", "Third-party identifiers are not supported "
                                                  "on this server")
        elif kind is None:
            raise missing_param("Missing 'identifier.type'")
        else:
            raise MatrixError(400, "M_UNKNOWN", f"Unknown identifier type {kind!r}")
    elif "user" in body:
        user = body["user"]
    else:
        raise missing_param("Missing 'identifier'")
    if not isinstance(user, str) or not user:
        raise bad_json("The user identifier must be a non-empty string")
    return qualify_user(storable_text("user", user), server_name)


def qualify_user(user: str, server_name: str) -> str:
    """``alice`` or ``@Alice:server`` → ``@alice:server`` (localparts are matched lowercase)."""
    if user.startswith("@"):
        local, sep, domain = user[1:].partition(":")
        if not sep:
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid user id")
        return f"@{local.lower()}:{domain}"
    return f"@{user.lower()}:{server_name}"


# --------------------------------------------------------------------------- UIA

class AuthRequired(MatrixError):
    """The 401 of a UIA flow: flows, params, session, completed (and an error, if the
    last stage failed)."""

    def __init__(self, body: dict[str, Any], errcode: str | None = None,
                 error: str | None = None) -> None:
        super().__init__(401, errcode or "M_UNAUTHORIZED", error or "Authentication required")
        self.body = body
        self.has_error = errcode is not None

    def to_json(self) -> dict[str, Any]:
        out = dict(self.body)
        if self.has_error:
            out["errcode"] = self.errcode
            out["error"] = self.error
        return out


class StageFailed(Exception):
    """A stage checker's refusal: the 401 of the flow carries ``errcode`` and ``error``."""

    def __init__(self, error: str, errcode: str = "M_FORBIDDEN") -> None:
        super().__init__(error)
        self.error = error
        self.errcode = errcode


class StageChecker(Protocol):
    """A UIA stage an area plugs in (``InteractiveAuth.stages[type] = checker``, e.g.
    web/captcha.py): ``check`` returns when the stage passed, raises :class:`StageFailed` to
    answer the flow's 401 with an error, or any other MatrixError to answer with that;
    ``params`` is the stage's entry in the 401's ``params`` (None: no entry)."""

    def check(self, auth: dict[str, Any], client_ip: str | None
              ) -> dict[str, Any] | None: ...  # a dict: merged into the session's params

    def params(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class UIAResult:
    session_id: str
    clientdict: dict[str, Any]  # the request body merged over the session's stored one
    params: dict[str, Any]      # stage results (e.g. "registration_token")


def _storable(clientdict: dict[str, Any]) -> dict[str, Any]:
    # never persist a password: a later request must send it again
    return {k: v for k, v in clientdict.items() if k != "auth" and "password" not in k}


class InteractiveAuth:
    """Runs UIA for one endpoint at a time over the store's ``uia_sessions``."""

    def __init__(self, accounts: AccountStore, config: Config) -> None:
        self.accounts = accounts
        self.config = config
        self.stages: dict[str, StageChecker] = {}  # stages other areas plug in

    def check(self, body: dict[str, Any], flows: list[list[str]], *,
              user_id: str | None = None,
              password_hash: str | None = None) -> UIAResult:
        """Advance the flow with this request's ``auth``; return when a flow is complete,
        else raise :class:`AuthRequired`.  ``user_id``/``password_hash`` are the requester's
        (for ``m.login.password``)."""
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise bad_json("'auth' must be an object")
        auth = auth or {}
        sid = auth.get("session")
        session: UIASession | None
        if sid is None:
            clientdict = _storable(body)
            sid = self.accounts.create_uia_session(request.path, request.method, clientdict,
                                                   user_id)
            session = UIASession(sid, request.path, request.method, clientdict, [], {},
                                 user_id)
        else:
            session = self._load(sid, user_id)
            extra = _storable(body)
            if extra and extra != session.clientdict:
                self.accounts.update_uia_clientdict(sid, {**session.clientdict, **extra})
            clientdict = {**session.clientdict, **extra}
        clientdict.update({k: v for k, v in body.items() if "password" in k})

        completed = list(session.completed)
        stage = auth.get("type")
        if stage is not None and not isinstance(stage, str):
            raise bad_json("'auth.type' must be a string")
        if stage is not None:
            allowed = {s for flow in flows for s in flow}
            if stage not in allowed:
                raise AuthRequired(self._challenge(sid, flows, completed), "M_UNRECOGNIZED",
                                   f"Authentication type {stage!r} is not offered here")
            try:
                failure = self._run_stage(sid, stage, auth, user_id, password_hash)
            except StageFailed as e:
                raise AuthRequired(self._challenge(sid, flows, completed), e.errcode,
                                   e.error) from None
            if failure is not None:
                raise AuthRequired(self._challenge(sid, flows, completed), "M_FORBIDDEN",
                                   failure)
            if stage not in completed:
                completed.append(stage)
        if any(all(s in completed for s in flow) for flow in flows):
            fresh = self.accounts.get_uia_session(sid)
            return UIAResult(sid, clientdict, fresh.params if fresh else {})
        raise AuthRequired(self._challenge(sid, flows, completed))

    def _load(self, sid: Any, user_id: str | None) -> UIASession:
        if not isinstance(sid, str):
            raise bad_json("'auth.session' must be a string")
        storable_text("auth.session", sid)
        session = self.accounts.get_uia_session(sid)
        if session is None or session.user_id != user_id:
            raise MatrixError(400, "M_UNKNOWN", "Unknown session ID")
        if session.uri != request.path or session.method != request.method:
            raise MatrixError(403, "M_FORBIDDEN", "Requested operation has changed during "
                                                  "the UI authentication session")
        return session

    def _run_stage(self, sid: str, stage: str, auth: dict[str, Any], user_id: str | None,
                   password_hash: str | None) -> str | None:
        """Check one stage; record it and return None, or return why it failed."""
        reserve: str | None = None
        if stage == PASSWORD:
            if user_id is None:
                return "Password authentication needs a logged-in user"
            try:
                claimed = user_from_identifier(auth, self.config.server_name)
            except MatrixError as e:
                return e.error
            password = auth.get("password")
            if claimed != user_id:
                other = self.accounts.get_user(claimed)
                if other is None or not isinstance(password, str) \
                        or not check_password(password, other.password_hash):
                    return "Invalid password"
                # a valid login of someone else cannot authorise this user's operation
                # (e.g. deleting their device): 403, as Synapse
                raise MatrixError(403, "M_FORBIDDEN", "The authenticated user is not the"
                                  " requesting user")
            if not isinstance(password, str) or not check_password(password, password_hash):
                return "Invalid password"
        elif stage == REGISTRATION_TOKEN:
            token = auth.get("token")
            if not isinstance(token, str) or not token:
                return "Missing registration token"
            storable_text("token", token)
            reserve = token
        elif stage in self.stages:
            remember = self.stages[stage].check(auth, request.remote_addr)  # raises if it fails
            if remember:  # what the stage proved, for the operation (e.g. the e-mail address)
                self.accounts.update_uia_params(sid, remember)
        if not self.accounts.complete_uia_stage(sid, stage, reserve_token=reserve):
            return "Invalid registration token" if reserve else "Unknown session ID"
        return None

    def _challenge(self, sid: str, flows: list[list[str]],
                   completed: list[str]) -> dict[str, Any]:
        params = {}
        for stage in dict.fromkeys(s for f in flows for s in f):
            checker = self.stages.get(stage)
            p = checker.params() if checker is not None else None
            if p is not None:
                params[stage] = p
        return {"flows": [{"stages": list(f)} for f in flows], "params": params,
                "session": sid, "completed": completed}
