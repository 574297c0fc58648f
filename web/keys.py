"""Device keys (client-server-api modules/end_to_end_encryption.md, keys.yaml):
``POST /keys/upload``, ``POST /keys/query``, ``POST /keys/claim``, ``GET /keys/changes``.

Device keys are stored as the client sends them: only the shape the spec requires is
checked here (:func:`device_keys_as_sent`), not the device's self-signature — as Synapse,
so clients and bots whose keys the server cannot verify keep working; verifying is the
clients' job.  Cross-signing signature uploads stay verified (web/cross_signing.py).  The
one-time / fallback key checks live in ``protocol/e2e_keys.py``, the tables in
``store/e2e_keys.py``.  A change of a user's device keys is recorded in the device-list
stream (the sync area's ``DeviceListStore``), which /sync and /keys/changes turn into
``device_lists.changed`` for every user sharing a room.  Keys of users of other servers are
asked over federation (``fed.queries``, federation/remote_queries.py: every server at once,
within the request's ``timeout``); servers that do not answer in time are reported in
``failures``, as are all of them when federation is switched off.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import bad_json, invalid_param, missing_param
from protocol.e2e_keys import InvalidKey, check_one_time_keys
from store.e2e_keys import E2EKeyStore, KeyConflict
from web.auth import require_auth
from web.http import json_body
from web.sync_token import SyncToken

P = "/_matrix/client/v3"
#: Bounds on one request (ARCHITECTURE invariant 5).
MAX_QUERY_USERS = 1000
MAX_CLAIM_DEVICES = 3000
#: The answer for servers we cannot reach (federation switched off).
UNREACHABLE = {"status": 503, "message": "Federation is not available on this server"}


def register(app: Flask, runtime: Any) -> None:
    keys: E2EKeyStore = runtime.parts["e2e_keys"]
    device_lists = runtime.parts["sync"].device_lists
    sync_svc = runtime.parts["sync"]
    suffix = ":" + runtime.config.server_name
    bp = Blueprint("keys", __name__)

    @bp.post(f"{P}/keys/upload")
    def upload() -> Any:
        """POST /_matrix/client/v3/keys/upload"""
        req = require_auth(allow_guest=True)
        if req.device_id is None:
            raise invalid_param("This access token has no device")
        body = json_body()
        dk = body.get("device_keys")
        if dk is not None:
            dk = {k: v for k, v in device_keys_as_sent(dk, req.user_id, req.device_id).items()
                  if k != "unsigned"}
        try:
            otks = check_one_time_keys(body.get("one_time_keys"))
            fallback = check_one_time_keys(body.get("fallback_keys"), "fallback_keys")
        except InvalidKey as e:  # the body's shape: M_BAD_JSON, as Synapse answers
            raise bad_json(e.error) from None
        try:
            result = keys.upload(req.user_id, req.device_id, dk, otks, fallback)
        except KeyConflict as e:
            raise invalid_param(str(e)) from None
        if result.device_keys_changed:
            device_lists.mark_changed([req.user_id])
        return jsonify({"one_time_key_counts": result.counts})

    @bp.post(f"{P}/keys/query")
    def query() -> Any:
        """POST /_matrix/client/v3/keys/query"""
        req = require_auth(allow_guest=True)
        body = json_body()
        wanted = _user_map(body, "device_keys", list, MAX_QUERY_USERS)
        local = {u: [d for d in ds if isinstance(d, str)] for u, ds in wanted.items()
                 if u.endswith(suffix)}
        timeout = _timeout(body)
        res = keys.query(req.user_id, local)
        out: dict[str, Any] = {"device_keys": res.device_keys, "failures": {},
                               "master_keys": res.master_keys,
                               "self_signing_keys": res.self_signing_keys}
        remote_wanted = {u: ds for u, ds in wanted.items() if not u.endswith(suffix)}
        remote = _remote(runtime)
        if remote is None:
            out["failures"] = _failures(remote_wanted, suffix)
        elif remote_wanted:
            got = remote.keys_query(remote_wanted, timeout)
            for kind in ("device_keys", "master_keys", "self_signing_keys"):
                out[kind].update(got[kind])
            out["failures"] = got["failures"]
        if res.user_signing_keys:
            out["user_signing_keys"] = res.user_signing_keys
        return jsonify(out)

    @bp.post(f"{P}/keys/claim")
    def claim() -> Any:
        """POST /_matrix/client/v3/keys/claim"""
        require_auth(allow_guest=True)
        body = json_body()
        wanted = _user_map(body, "one_time_keys", dict, MAX_CLAIM_DEVICES)
        triples = []
        count = 0
        for user_id, devices in wanted.items():
            for device_id, alg in devices.items():
                if not isinstance(alg, str):
                    raise bad_json("'one_time_keys' must map devices to algorithms")
                count += 1
                if user_id.endswith(suffix):
                    triples.append((user_id, device_id, alg))
        if count > MAX_CLAIM_DEVICES:
            raise invalid_param(f"At most {MAX_CLAIM_DEVICES} devices per claim")
        timeout = _timeout(body)
        remote_wanted = {u: ds for u, ds in wanted.items() if not u.endswith(suffix)}
        remote = _remote(runtime)
        claimed = keys.claim(triples)
        if remote is None:
            return jsonify({"one_time_keys": claimed,
                            "failures": _failures(remote_wanted, suffix)})
        got = remote.keys_claim(remote_wanted, timeout) if remote_wanted else \
            {"one_time_keys": {}, "failures": {}}
        claimed.update(got["one_time_keys"])
        return jsonify({"one_time_keys": claimed, "failures": got["failures"]})

    @bp.get(f"{P}/keys/changes")
    def changes() -> Any:
        """GET /_matrix/client/v3/keys/changes"""
        req = require_auth(allow_guest=True)
        raw_from, raw_to = request.args.get("from"), request.args.get("to")
        if not raw_from or not raw_to:
            raise missing_param("'from' and 'to' are required")
        since, upto = SyncToken.decode(raw_from), SyncToken.decode(raw_to)
        changed, left = key_changes(sync_svc, req.user_id, since, upto)
        return jsonify({"changed": changed, "left": left})

    app.register_blueprint(bp)


def device_keys_as_sent(keys: Any, user_id: str, device_id: str) -> dict[str, Any]:
    """An uploaded ``device_keys`` object, checked for what the spec requires of its shape
    (definitions/device_keys.yaml: ``user_id`` and ``device_id`` of the access token,
    ``algorithms``, ``keys``, ``signatures``) and nothing more: the server does not verify the
    device's self-signature (the spec does not make it the server's job, Synapse stores keys
    as sent, and clients verify them).  400 ``M_BAD_JSON`` otherwise, as Synapse answers."""
    if not isinstance(keys, dict):
        raise bad_json("'device_keys' must be an object")
    if keys.get("user_id") != user_id:
        raise bad_json("'device_keys.user_id' does not match the user of the access token")
    if keys.get("device_id") != device_id:
        raise bad_json("'device_keys.device_id' does not match the device of the access"
                       " token")
    algorithms = keys.get("algorithms")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise bad_json("'device_keys.algorithms' must be a list of strings")
    kmap = keys.get("keys")
    if not isinstance(kmap, dict) or not all(isinstance(v, str) for v in kmap.values()):
        raise bad_json("'device_keys.keys' must map key ids to strings")
    sigs = keys.get("signatures")
    if not isinstance(sigs, dict) or not all(
            isinstance(per, dict) and all(isinstance(v, str) for v in per.values())
            for per in sigs.values()):
        raise bad_json("'device_keys.signatures' must map user ids to key ids to strings")
    return keys


def _remote(runtime: Any) -> Any:
    """``fed.queries`` at request time (None: federation switched off)."""
    return getattr(runtime.parts.get("federation"), "queries", None)


def _timeout(body: dict[str, Any]) -> float:
    """The request's ``timeout`` (ms, default 10 s) in seconds, for the remote servers."""
    ms = body.get("timeout", 10_000)
    if ms is None:
        ms = 10_000
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise bad_json("'timeout' must be an integer (milliseconds)")
    return max(0, min(ms, 60_000)) / 1000.0


def _user_map(body: dict[str, Any], key: str, kind: type, limit: int) -> dict[str, Any]:
    if key not in body:
        raise missing_param(f"Missing '{key}'")
    value = body[key]
    if not isinstance(value, dict) or not all(isinstance(v, kind) for v in value.values()):
        raise bad_json(f"'{key}' must map user ids to {'lists' if kind is list else 'objects'}")
    if len(value) > limit:
        raise invalid_param(f"At most {limit} users per request")
    return value


def _failures(wanted: dict[str, Any], suffix: str) -> dict[str, Any]:
    return {u.split(":", 1)[1]: dict(UNREACHABLE) for u in wanted
            if not u.endswith(suffix) and ":" in u}


def key_changes(svc: Any, me: str, since: SyncToken, upto: SyncToken
                ) -> tuple[list[str], list[str]]:
    """Users whose device lists changed between two sync tokens and who share a room with
    ``me`` now (or newly joined one), and users who no longer share any room — the same
    rules as /sync's ``device_lists``."""
    store = svc.store
    shared = store.joined_members(store.joined_rooms(me)) | {me}
    changed: set[str] = set()
    left: set[str] = set()
    if since.device_lists < upto.device_lists:
        changed |= svc.device_lists.changed_users(since.device_lists, upto.device_lists) & shared
    if since.events < upto.events:
        ever = set(store.memberships(me, upto.events))  # joined now or left in the window
        for room_id, user, membership in store.membership_changes(ever, since.events,
                                                                  upto.events):
            if user == me:
                if membership == "join":
                    changed |= store.members_of(room_id) - {me}
                elif membership in ("leave", "ban"):
                    left |= {u for u in store.members_of(room_id) if u not in shared}
            elif membership == "join" and user in shared:
                changed.add(user)
            elif membership in ("leave", "ban") and user not in shared:
                left.add(user)
    changed -= left
    return sorted(changed), sorted(left - {me})
