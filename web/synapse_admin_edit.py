"""``PUT /_synapse/admin/v2/users/{userId}``: the body's checks and what it changes, in
Synapse's order (docs: Synapse "User Admin API", "Create or modify account").  Keys left out
are left alone; on creation ``deactivated`` and ``locked`` are ignored, as in Synapse."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from atrium.errors import MatrixError, bad_json, invalid_param, missing_param
from store.accounts import UserInUse
from web.auth import Requester
from web.profile import FIELDS, validate_field
from web.synapse_admin_users import (USER_TYPES, audit, check_password, deactivate_user,
                                     unknown)
from web.uia import hash_password, storable_text

log = logging.getLogger(__name__)

_ABSENT = object()


def _pairs(body: dict[str, Any], key: str, a: str, b: str) -> list[tuple[str, str]] | None:
    """A list of ``{a: str, b: str}`` objects as pairs (None when the key is absent)."""
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise bad_json(f"'{key}' must be a list of objects")
    out = []
    for item in v:
        missing = [k for k in (a, b) if k not in item]
        if missing:
            raise missing_param(f"Missing params: {missing}")
        if not all(isinstance(item[k], str) and 0 < len(item[k]) <= 512 for k in (a, b)):
            raise invalid_param(f"'{key}' entries must hold non-empty strings")
        out.append((storable_text(a, item[a]), storable_text(b, item[b])))
    return out


def _flag(body: dict[str, Any], key: str, msg: str, code: str = "M_UNKNOWN") -> bool | None:
    if key not in body:
        return None
    v = body[key]
    if not isinstance(v, bool):
        raise MatrixError(400, code, msg)
    return v


@dataclass
class UserEdit:
    threepids: list[tuple[str, str]] | None
    external_ids: list[tuple[str, str]] | None
    user_type: Any          # _ABSENT, None or one of USER_TYPES
    admin: bool | None
    password: str | None
    logout_devices: bool
    deactivated: bool | None
    locked: bool | None
    profile: dict[str, str | None]   # the profile fields given

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "UserEdit":
        threepids = _pairs(body, "threepids", "medium", "address")
        if threepids is not None:   # e-mail addresses are compared lower-case, as Synapse
            threepids = [(m, a.lower() if m == "email" else a) for m, a in threepids]
        external_ids = _pairs(body, "external_ids", "auth_provider", "external_id")
        user_type = body.get("user_type", _ABSENT)
        if user_type is not _ABSENT and user_type is not None and user_type not in USER_TYPES:
            raise unknown("Invalid user type")
        admin = _flag(body, "admin", "Param 'admin' must be a boolean, if given", "M_BAD_JSON")
        password = check_password(body["password"]) if body.get("password") is not None \
            else None
        logout = _flag(body, "logout_devices", "'logout_devices' parameter is not of type"
                       " boolean")
        deactivated = _flag(body, "deactivated", "'deactivated' parameter is not of type"
                            " boolean")
        locked = _flag(body, "locked", "'locked' parameter is not of type boolean")
        if deactivated and locked:
            raise unknown("An user can't be deactivated and locked")
        profile = {f: validate_field(f, body[f]) for f in FIELDS if f in body}
        return cls(threepids, external_ids, user_type, admin, password, logout is not False,
                   deactivated, locked, profile)

    # ------------------------------------------------------------------ checks first
    def _check_free(self, runtime: Any, user_id: str) -> None:
        """Refuse, before anything is written, 3PIDs or external ids another user has."""
        threepids = runtime.parts.get("threepids")
        for medium, address in self.threepids or ():
            owner = threepids.owner(medium, address) if threepids is not None else None
            if owner is not None and owner != user_id:
                raise MatrixError(400, "M_THREEPID_IN_USE",
                                  f"{medium} {address} is already in use by another account")
        store = runtime.parts["admin_users"]
        for provider, ext in self.external_ids or ():
            owner = store.external_id_owner(provider, ext)
            if owner is not None and owner != user_id:
                raise MatrixError(409, "M_UNKNOWN", "External id is already in use.")

    def _hash(self, runtime: Any) -> str | None:
        if self.password is None:
            return None
        return hash_password(self.password, runtime.config.bcrypt_rounds)

    # ------------------------------------------------------------------ create
    def create(self, runtime: Any, req: Requester, user_id: str) -> None:
        from web.register import check_username, user_in_use

        local = user_id[1:].split(":", 1)[0]
        if check_username(local, runtime.config.server_name) != user_id:
            raise MatrixError(400, "M_INVALID_USERNAME", "User ID may not contain upper-case"
                              " letters")
        self._check_free(runtime, user_id)
        user_type = None if self.user_type is _ABSENT else self.user_type
        try:
            runtime.parts["accounts"].register_user(
                user_id, self._hash(runtime), admin=bool(self.admin), user_type=user_type,
                displayname=self.profile.get("displayname") or local)
        except UserInUse:
            raise user_in_use() from None
        self._set_threepids(runtime, user_id)
        if self.external_ids is not None:
            self._set_external_ids(runtime, user_id)
        if self.profile.get("avatar_url") is not None:
            self._set_profile(runtime, user_id, "avatar_url")
        audit(req, "created", user_id, admin=bool(self.admin))

    # ------------------------------------------------------------------ modify
    def modify(self, runtime: Any, req: Requester, user_id: str) -> None:
        accounts = runtime.parts["accounts"]
        store = runtime.parts["admin_users"]
        user = accounts.get_user(user_id)
        locked_now = user_id in store.policy.locked
        self._check_free(runtime, user_id)
        if self.admin is not None and self.admin != user.admin \
                and user_id == req.user_id and not self.admin:
            raise unknown("You may not demote yourself.")
        if "displayname" in self.profile:
            self._set_profile(runtime, user_id, "displayname")
        if self.threepids is not None:
            self._set_threepids(runtime, user_id)
        if self.external_ids is not None:
            self._set_external_ids(runtime, user_id)
        if "avatar_url" in self.profile:
            self._set_profile(runtime, user_id, "avatar_url")
        if self.admin is not None and self.admin != user.admin:
            store.set_flags(user_id, admin=self.admin)
            audit(req, "made admin" if self.admin else "removed admin from", user_id)
        if self.password is not None:
            keep = req.device_id if user_id == req.user_id else None
            accounts.set_password(user_id, self._hash(runtime), keep_device=keep,
                                  logout_devices=self.logout_devices)
            audit(req, "changed the password of", user_id,
                  logout_devices=self.logout_devices)
        if self.deactivated is True and not user.deactivated:
            deactivate_user(runtime, req, user_id, erase=False)
        elif self.deactivated is False and user.deactivated:
            store.set_flags(user_id, deactivated=False, erased=False)
            _refresh_directory(runtime, user_id)
            audit(req, "reactivated", user_id)
        if self.locked is not None and self.locked != locked_now:
            store.set_flags(user_id, locked=self.locked)
            audit(req, "locked" if self.locked else "unlocked", user_id)
        if self.user_type is not _ABSENT and self.user_type != user.user_type:
            store.set_flags(user_id, user_type=self.user_type)
            _refresh_directory(runtime, user_id)

    # ------------------------------------------------------------------ the parts
    def _set_profile(self, runtime: Any, user_id: str, field: str) -> None:
        value = self.profile[field]
        runtime.parts["accounts"].set_profile_field(user_id, field, value)
        for listener in runtime.parts.get("profile_listeners", []):
            try:
                listener(user_id, field, value)
            except Exception:   # a failing listener must not undo a saved profile
                log.exception("profile listener failed (%s)", user_id)

    def _set_threepids(self, runtime: Any, user_id: str) -> None:
        """Make the given 3PIDs the user's: new ones are added as validated here, the
        others are unbound from identity servers where bound and forgotten."""
        from store.threepids import ThreepidInUse
        from web.account import identity_client

        threepids = runtime.parts.get("threepids")
        if self.threepids is None or threepids is None:
            return
        now = int(time.time() * 1000)
        want = set(self.threepids)
        current = {(t.medium, t.address) for t in threepids.list(user_id)}
        for medium, address in sorted(current - want):
            for server in threepids.id_servers(user_id, medium, address):
                try:
                    identity_client(runtime).unbind(server, user_id, medium, address)
                except MatrixError as e:   # as /account/3pid/delete: forgotten anyway
                    log.info("unbind of %s from %s failed: %s", user_id, server, e.error)
            threepids.forget(user_id, medium, address)
        for medium, address in sorted(want - current):
            try:
                threepids.add_validated(user_id, medium, address, now, now)
            except ThreepidInUse:
                raise MatrixError(400, "M_THREEPID_IN_USE", f"{medium} {address} is already"
                                  " in use by another account") from None

    def _set_external_ids(self, runtime: Any, user_id: str) -> None:
        if not runtime.parts["admin_users"].replace_external_ids(user_id,
                                                                 self.external_ids or []):
            raise MatrixError(409, "M_UNKNOWN", "External id is already in use.")


def _refresh_directory(runtime: Any, user_id: str) -> None:
    directory = runtime.parts.get("user_directory")
    if directory is not None:
        directory.refresh_local(user_id)
