"""The users half of Synapse's admin API, on Synapse's paths with its parameters, answers
and errors (docs: Synapse "User Admin API"; the list is in docs/admin_api.md):

- ``GET /_synapse/admin/v2/users`` and ``/v3/users`` (paging, filters, ordering);
- ``GET/PUT /_synapse/admin/v2/users/{userId}`` (the full record; PUT creates: 201, or
  modifies: 200);
- ``POST /_synapse/admin/v1/deactivate/{userId}``, ``…/reset_password/{userId}``;
- ``GET /_synapse/admin/v1/whois/{userId}`` and the spec's ``/_matrix/client/v3/admin/whois``;
- ``GET /_synapse/admin/v1/users/{userId}/joined_rooms``;
- ``POST/DELETE …/users/{userId}/shadow_ban``, ``GET/POST/DELETE …/override_ratelimit``,
  ``POST …/users/{userId}/login``.

Devices are in web/synapse_admin_devices.py, registration tokens and shared-secret
registration in web/synapse_admin.py.  Every admin route needs an admin's token (401 without
one, 403 ``M_FORBIDDEN`` for others).  Every destructive call logs one INFO line naming the
admin, the action and the target (:func:`audit`), never a password or token.

Deactivation (admin or the user's own ``/account/deactivate``) goes through
``AccountStore.deactivate`` (tokens, devices, 3PIDs, keys, pushers, directory entry go in its
transaction); a hook queues the user's rooms to be left in that same transaction, and they are
left right after the commit (:class:`Parter`; a crash in between is resumed at start-up):
rooms held here with a leave event, invites and knocks of rooms on other servers rejected
through those servers (make_leave / send_leave, as the user's own leave of such an invite).

Shadow-banned requests wait 1–10 s at random before their made-up answer, as Synapse's
(``UserPolicy.shadow_ban_wait``, a gevent sleep).
"""
from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param
from atrium.errors import not_found
from protocol.ids import is_valid_user_id, server_of
from store.accounts import AccountStore
from store.admin_users import ORDER_COLUMNS, AdminUserStore, UserFilter
from web.admin_tasks import resume_soon
from web.auth import Requester, require_admin, require_auth
from web.http import MAX_INT64, json_body, parse_bool, query_int
from web.uia import hash_password, reject_nul_path_values, storable_text

from actors.room_messages import EventSpec, Send

log = logging.getLogger(__name__)

A1, A2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
USER_TYPES = ("support", "bot")
MAX_PASSWORD = 512


def audit(req: Requester, action: str, target: str, **details: Any) -> None:
    """The log line of a destructive admin call (never a secret in ``details``)."""
    extra = "".join(f" {k}={v}" for k, v in details.items())
    log.info("admin %s: %s %s%s", req.user_id, action, target, extra)


def fake_event_id() -> str:
    """The event id answered to a shadow-banned user's send: shaped like a room v4+ id."""
    return "$" + secrets.token_urlsafe(32)[:43]


def unknown(msg: str) -> MatrixError:
    return MatrixError(400, "M_UNKNOWN", msg)


def local_user(user_id: str, server_name: str, refusal: str = "Can only look up local users"
               ) -> str:
    """A user id of this server from the path: 400 for a malformed or remote one."""
    if not is_valid_user_id(user_id):
        raise invalid_param(f"Invalid user id: {user_id[:255]}")
    if server_of(user_id) != server_name:
        raise unknown(refusal)
    return user_id


def existing_user(accounts: Any, user_id: str, server_name: str,
                  refusal: str = "Can only look up local users",
                  missing: str = "User not found") -> str:
    """A local user id from the path that names an account: 400 for a malformed or remote
    one (:func:`local_user`), 404 ``missing`` for no such account."""
    user_id = local_user(user_id, server_name, refusal)
    if not accounts.user_exists(user_id):
        raise not_found(missing)
    return user_id


def query_flag(name: str) -> bool | None:
    """A boolean query parameter; None when absent (400 M_INVALID_PARAM when not one)."""
    v = request.args.get(name)
    return None if v is None else parse_bool(name, v)


class Parter:
    """Takes deactivated users out of the rooms held here (joined, invited, knocking)."""

    def __init__(self, runtime: Any, store: AdminUserStore) -> None:
        self.runtime = runtime
        self.store = store

    def hook(self, txn: Any, user_id: str) -> None:
        """AccountStore.on_user_deactivated: queue the user, part them after commit."""
        AdminUserStore.queue_parting(txn, user_id)
        txn.call_after_commit(lambda: self.part(user_id))

    def part(self, user_id: str) -> bool:
        """Leave every room and reject every invite from another server; True (and the queue
        entry gone) unless something failed that a later try could do."""
        svc = self.runtime.parts.get("rooms")
        if svc is None:
            return False
        ok = True
        rooms = self.store.rooms_to_leave(user_id)
        for room_id in rooms:
            spec = EventSpec("m.room.member", user_id, {"membership": "leave"}, user_id)
            try:
                svc.supervisor.ask(room_id, Send(spec=spec), sender="deactivation")
            except MatrixError as e:   # not allowed to leave (any more): nothing to retry
                log.info("deactivation of %s: not parted from %s: %s", user_id, room_id,
                         e.error)
            except Exception:   # a parked room, shutdown: retried at the next start
                log.exception("deactivation of %s: not parted from %s", user_id, room_id)
                ok = False
        ok = self.reject_remote(svc, user_id, set(rooms)) and ok
        if ok:
            self.store.parting_done(user_id)
        return ok

    def reject_remote(self, svc: Any, user_id: str, done: set[str]) -> bool:
        """Reject the user's pending invites (and rescind knocks) of rooms on other servers
        (not among ``done``, the rooms just left here): make_leave / send_leave through the
        inviting server, else the room's; when none answers, the rejection is recorded here
        only (``RemoteMembership.leave``).  Each outcome is logged; False if one failed in a
        way worth retrying at the next start."""
        latest: dict[str, Any] = {}
        for row in svc.remote_invites.rows(user_id):   # oldest first: the last row wins
            latest[row.room_id] = row
        pending = [r for r in latest.values()
                   if r.membership in ("invite", "knock") and r.room_id not in done]
        if not pending:
            return True
        fed = self.runtime.parts.get("federation")
        if fed is None or fed.client is None:
            log.info("deactivation of %s: %d invite(s) from other servers kept: federation"
                     " is off", user_id, len(pending))
            return True
        from federation.join import remote_membership

        joins = remote_membership(fed, svc)
        ok = True
        for row in pending:
            servers = [row.origin, row.sender.partition(":")[2],
                       row.room_id.partition(":")[2]]   # rooms v12: no server in the id
            try:
                joins.leave(row.room_id, user_id, [s for s in servers if s])
                log.info("deactivation of %s: rejected the %s of %s (from %s)", user_id,
                         row.membership, row.room_id, row.origin)
            except MatrixError as e:
                log.info("deactivation of %s: the %s of %s not rejected: %s", user_id,
                         row.membership, row.room_id, e.error)
            except Exception:   # the store, shutdown: retried at the next start
                log.exception("deactivation of %s: the %s of %s not rejected", user_id,
                              row.membership, row.room_id)
                ok = False
        return ok

    def resume(self) -> None:
        for user_id in self.store.pending_parting():
            self.part(user_id)


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    accounts: AccountStore = runtime.parts["accounts"]
    store: AdminUserStore = runtime.parts["admin_users"]
    parter = runtime.parts["parter"] = Parter(runtime, store)
    accounts.on_user_deactivated.append(parter.hook)
    bp = Blueprint("synapse_admin_users", __name__)
    bp.url_value_preprocessor(reject_nul_path_values)
    server = config.server_name

    def existing(user_id: str, refusal: str = "Can only look up local users") -> str:
        return existing_user(accounts, user_id, server, refusal)

    def record(user_id: str) -> dict[str, Any] | None:
        r = store.user_record(user_id)
        if r is None:
            return None
        threepids = runtime.parts.get("threepids")
        r["threepids"] = [t.to_json() for t in threepids.list(user_id)] if threepids else []
        r.update(appservice_id=None, consent_server_notice_sent=None, consent_version=None,
                 consent_ts=None, suspended=False)
        return r

    # ------------------------------------------------------------------ listing
    def list_users(v3: bool) -> Any:
        require_admin()
        start = query_int("from", 0, minimum=0)
        limit = query_int("limit", 100, minimum=0)
        order_by = request.args.get("order_by", "name")
        if order_by not in ORDER_COLUMNS:
            raise invalid_param(f"Query parameter 'order_by' must be one of"
                                f" {sorted(ORDER_COLUMNS)}")
        direction = request.args.get("dir", "f")
        if direction not in ("f", "b"):
            raise invalid_param("Query parameter 'dir' must be one of ['b', 'f']")
        deactivated = query_flag("deactivated")
        if not v3:   # v2: deactivated=true adds them, otherwise they are left out
            deactivated = None if deactivated else False
        guests, locked = query_flag("guests"), query_flag("locked")
        f = UserFilter(user_id=request.args.get("user_id"), name=request.args.get("name"),
                       guests=guests is not False, deactivated=deactivated,
                       admins=query_flag("admins"), locked=bool(locked),
                       not_user_types=tuple(request.args.getlist("not_user_type")))
        for text in (f.user_id, f.name, *f.not_user_types):
            if text is not None:
                storable_text("query", text)
        assert start is not None and limit is not None
        users, total = store.list_users(start, limit, f, order_by, direction == "b")
        out: dict[str, Any] = {"users": users, "total": total}
        if start + limit < total:
            out["next_token"] = str(start + len(users))
        return jsonify(out)

    @bp.get(f"{A2}/users")
    def list_users_v2() -> Any:
        """GET /_synapse/admin/v2/users"""
        return list_users(v3=False)

    @bp.get("/_synapse/admin/v3/users")
    def list_users_v3() -> Any:
        """GET /_synapse/admin/v3/users (``deactivated`` filters both ways)"""
        return list_users(v3=True)

    # ------------------------------------------------------------------ one user
    @bp.get(f"{A2}/users/<user_id>")
    def get_user(user_id: str) -> Any:
        """GET /_synapse/admin/v2/users/{userId}"""
        require_admin()
        r = record(local_user(user_id, server))
        if r is None:
            raise not_found("User not found")
        return jsonify(r)

    @bp.put(f"{A2}/users/<user_id>")
    def put_user(user_id: str) -> Any:
        """PUT /_synapse/admin/v2/users/{userId}: create (201) or modify (200)"""
        from web.synapse_admin_edit import UserEdit

        req = require_admin()
        body = json_body()
        user_id = local_user(user_id, server, "This endpoint can only be used with local users")
        edit = UserEdit.parse(body)
        if not accounts.user_exists(user_id):
            edit.create(runtime, req, user_id)
            return jsonify(record(user_id)), 201
        edit.modify(runtime, req, user_id)
        return jsonify(record(user_id))

    @bp.post(f"{A1}/deactivate/<user_id>")
    def deactivate(user_id: str) -> Any:
        """POST /_synapse/admin/v1/deactivate/{userId}"""
        req = require_admin()
        user_id = existing(user_id, "Can only deactivate local users")
        body = json_body(optional=True)
        erase = body.get("erase", False)
        if not isinstance(erase, bool):
            raise bad_json("Param 'erase' must be a boolean, if given")
        result = deactivate_user(runtime, req, user_id, erase=erase)
        return jsonify({"id_server_unbind_result": result})

    @bp.post(f"{A1}/reset_password/<user_id>")
    def reset_password(user_id: str) -> Any:
        """POST /_synapse/admin/v1/reset_password/{userId}"""
        req = require_admin()
        body = json_body()
        user_id = existing(user_id, "Can only reset the password of local users")
        if "new_password" not in body:
            raise missing_param("Missing params: ['new_password']")
        password = check_password(body["new_password"])
        logout = body.get("logout_devices", True)
        if not isinstance(logout, bool):
            raise bad_json("'logout_devices' must be a boolean")
        accounts.set_password(user_id, hash_password(password, config.bcrypt_rounds),
                              keep_device=None, logout_devices=logout)
        audit(req, "reset the password of", user_id, logout_devices=logout)
        return jsonify({})

    @bp.get(f"{A1}/whois/<user_id>")
    @bp.get("/_matrix/client/v3/admin/whois/<user_id>")
    @bp.get("/_matrix/client/r0/admin/whois/<user_id>")
    def whois(user_id: str) -> Any:
        """GET /_synapse/admin/v1/whois/{userId} and the spec's
        GET /_matrix/client/v3/admin/whois/{userId}: admins, or the user about themselves"""
        req = require_auth()
        if req.user_id != user_id and not req.is_admin:
            raise forbidden("You are not a server admin")
        user_id = local_user(user_id, server, "Can only whois a local user")
        devices: dict[str, Any] = {}
        for d in accounts.device_connections(user_id):
            conns = [] if d["last_seen_ts"] is None else [{
                "ip": d["last_seen_ip"], "last_seen": d["last_seen_ts"],
                "user_agent": d["last_seen_user_agent"]}]
            devices[d["device_id"]] = {"sessions": [{"connections": conns}]}
        return jsonify({"user_id": user_id, "devices": devices})

    @bp.get(f"{A1}/users/<user_id>/joined_rooms")
    def joined_rooms(user_id: str) -> Any:
        """GET /_synapse/admin/v1/users/{userId}/joined_rooms"""
        require_admin()
        rooms = store.joined_rooms(user_id)
        return jsonify({"joined_rooms": rooms, "total": len(rooms)})

    # ------------------------------------------------------------------ moderation
    @bp.post(f"{A1}/users/<user_id>/shadow_ban")
    @bp.delete(f"{A1}/users/<user_id>/shadow_ban")
    def shadow_ban(user_id: str) -> Any:
        """POST / DELETE /_synapse/admin/v1/users/{userId}/shadow_ban"""
        req = require_admin()
        user_id = existing(user_id, "Only local users can be shadow-banned")
        on = request.method == "POST"
        store.set_flags(user_id, shadow_banned=on)
        audit(req, "shadow-banned" if on else "lifted the shadow-ban of", user_id)
        return jsonify({})

    @bp.get(f"{A1}/users/<user_id>/override_ratelimit")
    def get_override(user_id: str) -> Any:
        """GET /_synapse/admin/v1/users/{userId}/override_ratelimit"""
        require_admin()
        got = store.get_override(existing(user_id))
        return jsonify({} if got is None else
                       {"messages_per_second": got[0], "burst_count": got[1]})

    @bp.post(f"{A1}/users/<user_id>/override_ratelimit")
    def set_override(user_id: str) -> Any:
        """POST /_synapse/admin/v1/users/{userId}/override_ratelimit (0/0: no limit)"""
        req = require_admin()
        user_id = existing(user_id, "Only local users can be ratelimited")
        body = json_body(optional=True)
        values = []
        for key in ("messages_per_second", "burst_count"):
            v = body.get(key, 0)
            if type(v) is not int or not 0 <= v <= MAX_INT64:
                raise invalid_param(f"{key} must be a non-negative integer")
            values.append(v)
        store.set_override(user_id, values[0], values[1])
        audit(req, "set the rate-limit override of", user_id, messages_per_second=values[0],
              burst_count=values[1])
        return jsonify({"messages_per_second": values[0], "burst_count": values[1]})

    @bp.delete(f"{A1}/users/<user_id>/override_ratelimit")
    def delete_override(user_id: str) -> Any:
        """DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit"""
        req = require_admin()
        user_id = existing(user_id, "Only local users can be ratelimited")
        store.delete_override(user_id)
        audit(req, "removed the rate-limit override of", user_id)
        return jsonify({})

    @bp.post(f"{A1}/users/<user_id>/login")
    def login_as(user_id: str) -> Any:
        """POST /_synapse/admin/v1/users/{userId}/login: a token of the user for the admin,
        with no device (it shows in no device list); refused for the admin's own id"""
        req = require_admin()
        user_id = existing(user_id, "Only local users can be logged in as")
        body = json_body(optional=True)
        until = body.get("valid_until_ms")
        if until is not None and (type(until) is not int or not 0 <= until <= MAX_INT64):
            raise unknown("'valid_until_ms' parameter must be an int")
        if user_id == req.user_id:
            raise unknown("Cannot use admin API to login as self")
        token = store.puppet_token(user_id, req.user_id, until)
        audit(req, "logged in as", user_id, valid_until_ms=until)
        return jsonify({"access_token": token})

    _lock_guard(app, accounts, store)
    app.register_blueprint(bp)
    if store.pending_parting():   # a deactivation cut short by a crash: finish it
        resume_soon(runtime, parter.resume)


def check_password(v: Any) -> str:
    if not isinstance(v, str) or len(v) > MAX_PASSWORD:
        raise unknown("Invalid password")
    return storable_text("password", v)


def deactivate_user(runtime: Any, req: Requester, user_id: str, *, erase: bool) -> str:
    """Deactivate (as an admin): unbind 3PIDs from identity servers, then the accounts
    store's deactivation (the rooms are left after its commit); ``erase`` marks the user
    erased.  The ``id_server_unbind_result``."""
    from web.account import unbind_all

    threepids = runtime.parts.get("threepids")
    result = "success"
    if threepids is not None and threepids.all_binds(user_id):
        result = unbind_all(runtime, user_id, None)
    runtime.parts["accounts"].deactivate(user_id)
    if erase:
        runtime.parts["admin_users"].set_flags(user_id, erased=True)
    audit(req, "deactivated", user_id, erase=erase)
    return result


#: what a locked user may still do (Synapse: log out and ask who they are)
_LOCK_ALLOWED = ("/logout", "/logout/all", "/account/whoami")


def _lock_guard(app: Flask, accounts: AccountStore, store: AdminUserStore) -> None:
    """Locked users get 401 ``M_USER_LOCKED`` on every authenticated request (no cost while
    nobody is locked: the set is in memory)."""
    from web.auth import extract_token

    locked = store.policy.locked

    @app.before_request
    def refuse_locked() -> None:
        if not locked or not request.path.startswith("/_matrix/client/"):
            return
        if request.path.endswith(_LOCK_ALLOWED):
            return
        try:
            token = extract_token()
        except MatrixError:
            return   # the handler answers the bad header
        info = accounts.get_token(token) if token else None
        if info is not None and info.user_id in locked:
            raise MatrixError(401, "M_USER_LOCKED", "This account has been locked",
                              soft_logout=True)
