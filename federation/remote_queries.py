"""The client API's questions to other servers (``fed.queries``, built by
``federation/queries.py:install``).

Spec: server-server-api "Querying for information" (``query/profile``, ``query/directory``),
"Public Room Directory" (``publicRooms`` GET/POST), "End-to-End Encryption"
(``user/keys/query``, ``user/keys/claim``); the client-side behaviour follows the matching
client-server endpoints (profiles, room aliases, ``/publicRooms?server=``, ``/keys/query``,
``/keys/claim``).

Every method raises ``atrium.errors.MatrixError`` with the status the client API answers
(Synapse's choices: the remote's 403/404 passed on, anything else 502), except the key
queries, which never fail as a whole: each server that cannot answer in time is listed in
``failures`` and the others' answers are merged.  Requests are made with the client's
``fail_fast`` default, so a destination that is backing off fails at once.  Answers are
checked before use: keys only of users of the server that answered, and of the users and
devices asked for (signatures are the clients' business).

Remote profiles are cached for ``PROFILE_TTL`` seconds (bounded LRU); whoever learns that a
remote user's profile changed (a member event, a profile update) calls
:meth:`RemoteQueries.invalidate_profile`.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping

import gevent
from gevent.lock import BoundedSemaphore

from atrium.errors import MatrixError
from federation.errors import (BadResponse, FederationError, Forbidden, NotRetrying,
                               RemoteHTTPError)
from protocol.ids import is_valid_room_id, is_valid_server_name, is_valid_user_id, server_of

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
PROFILE_TTL = 600.0            # s
PROFILE_CACHE_SIZE = 10_000    # entries
#: Servers asked at once by one key query (the rest wait for a slot, within the timeout).
MAX_PARALLEL = 32
#: The client API's default ``timeout`` of /keys/query and /keys/claim.
DEFAULT_KEYS_TIMEOUT = 10.0    # s
MAX_KEYS_TIMEOUT = 60.0        # s

_Failure = dict[str, Any]


def failure_of(e: BaseException) -> _Failure:
    """The ``failures`` entry for a server whose request raised ``e`` (Synapse's shape)."""
    if isinstance(e, NotRetrying):
        return {"status": 503, "message": "Not ready for retry"}
    if isinstance(e, Forbidden):
        return {"status": 403, "message": "Federation denied"}
    if isinstance(e, RemoteHTTPError):
        return {"status": e.status, "message": e.error or f"HTTP {e.status}"}
    if isinstance(e, gevent.Timeout):
        return {"status": 503, "message": "Timed out"}
    if isinstance(e, FederationError):
        return {"status": 503, "message": e.message}
    return {"status": 503, "message": f"{type(e).__name__}"}


class RemoteQueries:
    def __init__(self, fed: Any, parts: Mapping[str, Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 profile_ttl: float = PROFILE_TTL,
                 profile_cache_size: int = PROFILE_CACHE_SIZE,
                 max_parallel: int = MAX_PARALLEL) -> None:
        self.fed = fed
        self.parts = parts or {}
        self.server_name: str = fed.server_name
        self.clock = clock
        self.profile_ttl = profile_ttl
        self.profile_cache_size = profile_cache_size
        # (user_id, field or None) -> (expires_at, answer)
        self._profiles: OrderedDict[tuple[str, str | None], tuple[float, dict[str, Any]]] = \
            OrderedDict()
        self._slots = BoundedSemaphore(max_parallel)

    # ------------------------------------------------------------------ plumbing
    def _get(self, destination: str, path: str, *, query: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        client = self.fed.client
        if client is None:
            raise FederationError(destination, "outbound federation is not available")
        return client.get_json(destination, path, query=query, timeout=timeout)

    def _post(self, destination: str, path: str, body: Any, *,
              timeout: float | None = None) -> Any:
        client = self.fed.client
        if client is None:
            raise FederationError(destination, "outbound federation is not available")
        return client.post_json(destination, path, body, timeout=timeout)

    def _query_timeout(self) -> float:
        return float(getattr(self.fed.config.federation, "query_timeout", 10.0))

    # ------------------------------------------------------------------ profiles
    def profile(self, user_id: str, field: str | None = None) -> dict[str, Any]:
        """The profile (or one field) of a user of another server: ``GET query/profile``.
        404/403 from the remote are passed on; no usable answer is 502."""
        now = self.clock()
        for key in ((user_id, field), (user_id, None)) if field else ((user_id, None),):
            hit = self._profiles.get(key)
            if hit is not None and hit[0] > now:
                self._profiles.move_to_end(key)
                return _only(hit[1], field)
        query = {"user_id": user_id}
        if field is not None:
            query["field"] = field
        try:
            got = self._get(server_of(user_id), f"{V1}/query/profile", query=query,
                            timeout=self._query_timeout())
        except RemoteHTTPError as e:
            if e.status in (403, 404):
                raise MatrixError(e.status, e.errcode or ("M_NOT_FOUND" if e.status == 404
                                                          else "M_FORBIDDEN"),
                                  e.error or "Profile was not found") from None
            log.info("profile of %s: %s", user_id, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch profile") from None
        except FederationError as e:
            log.info("profile of %s: %s", user_id, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch profile") from None
        if not isinstance(got, dict):
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch profile")
        answer = {k: v for k, v in got.items() if isinstance(k, str) and v is not None
                  and (k not in ("displayname", "avatar_url") or isinstance(v, str))}
        self._profiles[(user_id, field)] = (now + self.profile_ttl, answer)
        self._profiles.move_to_end((user_id, field))
        while len(self._profiles) > self.profile_cache_size:
            self._profiles.popitem(last=False)
        return _only(answer, field)

    def invalidate_profile(self, user_id: str) -> None:
        """Forget what is cached about ``user_id``'s profile (it changed)."""
        for key in [k for k in self._profiles if k[0] == user_id]:
            self._profiles.pop(key, None)

    # ------------------------------------------------------------------ aliases
    def directory(self, alias: str) -> dict[str, Any]:
        """``{"room_id", "servers"}`` of an alias of another server: ``GET query/directory``.
        404 when the remote does not know it; 502 when it cannot be asked."""
        server = server_of(alias)
        try:
            got = self._get(server, f"{V1}/query/directory", query={"room_alias": alias},
                            timeout=self._query_timeout())
        except RemoteHTTPError as e:
            if e.status == 404:
                raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found") from None
            log.info("alias %s: %s", alias, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch alias") from None
        except FederationError as e:
            log.info("alias %s: %s", alias, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch alias") from None
        if not isinstance(got, dict) or not isinstance(got.get("room_id"), str) \
                or not is_valid_room_id(got["room_id"]) or not isinstance(got.get("servers"), list):
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch alias")
        servers = [s for s in got["servers"] if isinstance(s, str) and is_valid_server_name(s)]
        servers = list(dict.fromkeys(servers)) or [server]
        return {"room_id": got["room_id"], "servers": servers}

    # ------------------------------------------------------------------ public rooms
    def public_rooms(self, server: str, *, limit: int | None = None, since: str | None = None,
                     search_filter: dict[str, Any] | None = None,
                     include_all_networks: bool = False,
                     third_party_instance_id: str | None = None) -> dict[str, Any]:
        """One page of another server's published rooms: ``GET publicRooms`` without a
        filter, ``POST publicRooms`` with one.  A server that does not take POST (404/405/
        M_UNRECOGNIZED) is asked with GET and filtered here, without pagination (Synapse's
        fallback).  Any failure is 502."""
        timeout = self._query_timeout()
        path = f"{V1}/publicRooms"
        try:
            if search_filter:
                body: dict[str, Any] = {"filter": search_filter,
                                        "include_all_networks": include_all_networks}
                if limit is not None:
                    body["limit"] = limit
                if since is not None:
                    body["since"] = since
                if third_party_instance_id is not None:
                    body["third_party_instance_id"] = third_party_instance_id
                try:
                    return _room_page(self._post(server, path, body, timeout=timeout))
                except RemoteHTTPError as e:
                    if e.status not in (404, 405) and e.errcode != "M_UNRECOGNIZED":
                        raise
                page = _room_page(self._get(server, path, query=_list_query(
                    None, None, include_all_networks, third_party_instance_id),
                    timeout=timeout))
                page["chunk"] = [r for r in page["chunk"] if _room_matches(r, search_filter)]
                page.pop("next_batch", None)
                page.pop("prev_batch", None)
                return page
            return _room_page(self._get(server, path, query=_list_query(
                limit, since, include_all_networks, third_party_instance_id), timeout=timeout))
        except FederationError as e:
            log.info("public rooms of %s: %s", server, e)
            raise MatrixError(502, "M_UNKNOWN", "Failed to fetch room list") from None

    # ------------------------------------------------------------------ keys
    def keys_query(self, device_keys_by_user: Mapping[str, list[str]],
                   timeout: float | None = None) -> dict[str, Any]:
        """Device and cross-signing keys of users of other servers, every server asked at
        once; ``{"device_keys", "master_keys", "self_signing_keys", "failures"}``.  Users
        whose device list the remote-device cache tracks are answered from it."""
        out: dict[str, Any] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {},
                               "failures": {}}
        wanted = {u: [d for d in ds if isinstance(d, str)]
                  for u, ds in device_keys_by_user.items()
                  if is_valid_user_id(u) and server_of(u) != self.server_name}
        by_server: dict[str, dict[str, list[str]]] = {}
        for user_id in self._answer_from_cache(wanted, out):
            by_server.setdefault(server_of(user_id), {})[user_id] = wanted[user_id]

        def ask(server: str, wanted: dict[str, list[str]], left: float) -> dict[str, Any]:
            got = self._post(server, f"{V1}/user/keys/query", {"device_keys": wanted},
                             timeout=left)
            return _clean_query(server, wanted, got)

        results, failures = self._fan_out(by_server, ask, timeout)
        for server, got in results.items():
            _merge_keys(out, got)
        out["failures"].update(failures)
        return out

    def keys_claim(self, one_time_keys: Mapping[str, Mapping[str, str]],
                   timeout: float | None = None) -> dict[str, Any]:
        """One-time keys of devices of other servers, every server asked at once;
        ``{"one_time_keys", "failures"}``."""
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in one_time_keys.items():
            if not is_valid_user_id(user_id) or server_of(user_id) == self.server_name:
                continue
            by_server.setdefault(server_of(user_id), {})[user_id] = {
                d: a for d, a in devices.items() if isinstance(d, str) and isinstance(a, str)}

        def ask(server: str, wanted: dict[str, dict[str, str]], left: float) -> dict[str, Any]:
            got = self._post(server, f"{V1}/user/keys/claim", {"one_time_keys": wanted},
                             timeout=left)
            return _clean_claim(server, wanted, got)

        results, failures = self._fan_out(by_server, ask, timeout)
        merged: dict[str, Any] = {}
        for got in results.values():
            merged.update(got)
        return {"one_time_keys": merged, "failures": failures}

    def _fan_out(self, jobs: Mapping[str, Any], ask: Callable[[str, Any, float], Any],
                 timeout: float | None) -> tuple[dict[str, Any], dict[str, _Failure]]:
        """Run ``ask(server, wanted, seconds_left)`` for every server in parallel greenlets;
        those that fail or are not done when ``timeout`` ends go into the failures."""
        if not jobs:
            return {}, {}
        budget = DEFAULT_KEYS_TIMEOUT if timeout is None else timeout
        budget = max(0.0, min(float(budget), MAX_KEYS_TIMEOUT))
        deadline = time.monotonic() + budget

        def attempt(server: str, wanted: Any) -> tuple[bool, Any]:
            try:
                with self._slots:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False, {"status": 503, "message": "Timed out"}
                    return True, ask(server, wanted, left)
            except Exception as e:  # noqa: BLE001 - every failure is the server's entry
                if not isinstance(e, FederationError):
                    log.warning("key request to %s failed", server, exc_info=True)
                return False, failure_of(e)

        greenlets = {s: gevent.spawn(attempt, s, w) for s, w in jobs.items()}
        gevent.joinall(list(greenlets.values()), timeout=budget)
        results: dict[str, Any] = {}
        failures: dict[str, _Failure] = {}
        for server, g in greenlets.items():
            if not g.ready():
                g.kill(block=False)
                failures[server] = {"status": 503, "message": "Timed out"}
            elif g.successful() and g.value[0]:
                results[server] = g.value[1]
            else:
                failures[server] = g.value[1] if g.successful() else \
                    {"status": 503, "message": "Request failed"}
        return results, failures

    def _answer_from_cache(self, wanted: dict[str, list[str]], out: dict[str, Any]
                           ) -> list[str]:
        """Merge into ``out`` the keys of the users whose device list ``fed.remote_devices``
        tracks (store/remote_devices.py ``query_keys``); returns the users left to ask."""
        rd = getattr(self.fed, "remote_devices", None)
        if rd is None or not wanted:
            return list(wanted)
        try:
            got = rd.query_keys(wanted)
        except Exception:  # noqa: BLE001 - a broken cache means asking the servers
            log.warning("remote device cache failed", exc_info=True)
            return list(wanted)
        missing = [u for u in got.get("missing", ()) if u in wanted]
        answered = set(wanted) - set(missing)
        for kind in ("device_keys", "master_keys", "self_signing_keys"):
            out[kind].update({u: v for u, v in (got.get(kind) or {}).items() if u in answered})
        for u in answered:
            out["device_keys"].setdefault(u, {})
        return missing


# ---------------------------------------------------------------------- helpers (pure)
def _only(profile: dict[str, Any], field: str | None) -> dict[str, Any]:
    if field is None:
        return dict(profile)
    return {field: profile[field]} if profile.get(field) is not None else {}


def _list_query(limit: int | None, since: str | None, include_all_networks: bool,
                instance: str | None) -> dict[str, str]:
    q: dict[str, str] = {}
    if limit is not None:
        q["limit"] = str(limit)
    if since is not None:
        q["since"] = since
    if include_all_networks:
        q["include_all_networks"] = "true"
    if instance is not None:
        q["third_party_instance_id"] = instance
    return q


def _room_page(got: Any) -> dict[str, Any]:
    if not isinstance(got, dict) or not isinstance(got.get("chunk"), list):
        raise BadResponse("?", "publicRooms answer without a chunk list")
    page: dict[str, Any] = {"chunk": [r for r in got["chunk"] if isinstance(r, dict)
                                      and isinstance(r.get("room_id"), str)]}
    for key in ("next_batch", "prev_batch"):
        if isinstance(got.get(key), str):
            page[key] = got[key]
    est = got.get("total_room_count_estimate")
    if isinstance(est, int) and not isinstance(est, bool):
        page["total_room_count_estimate"] = est
    return page


def _room_matches(room: dict[str, Any], flt: Mapping[str, Any]) -> bool:
    types = flt.get("room_types")
    if isinstance(types, list) and room.get("room_type") not in types:
        return False
    term = flt.get("generic_search_term")
    if isinstance(term, str) and term:
        t = term.casefold()
        return any(t in str(room.get(k) or "").casefold()
                   for k in ("name", "topic", "canonical_alias"))
    return True


def _merge_keys(out: dict[str, Any], got: Mapping[str, Any]) -> None:
    for kind in ("device_keys", "master_keys", "self_signing_keys"):
        out[kind].update(got.get(kind) or {})


def _clean_query(server: str, wanted: Mapping[str, list[str]], got: Any) -> dict[str, Any]:
    """Keep of a ``user/keys/query`` answer only keys of the users (and devices) asked,
    each claiming to be of that user and device."""
    if not isinstance(got, dict):
        raise BadResponse(server, "user/keys/query answer is not an object")
    out: dict[str, Any] = {"device_keys": {u: {} for u in wanted}, "master_keys": {},
                           "self_signing_keys": {}}
    dk = got.get("device_keys", {})
    if not isinstance(dk, dict):
        raise BadResponse(server, "user/keys/query answer: device_keys is not an object")
    for user_id, devices in dk.items():
        if user_id not in wanted or server_of(user_id) != server \
                or not isinstance(devices, dict):
            continue
        only = wanted[user_id]
        out["device_keys"][user_id] = {
            d: obj for d, obj in devices.items()
            if (not only or d in only) and isinstance(obj, dict)
            and obj.get("user_id") == user_id and obj.get("device_id") == d}
    for kind in ("master_keys", "self_signing_keys"):
        keys = got.get(kind)
        if isinstance(keys, dict):
            for user_id, obj in keys.items():
                if user_id in wanted and server_of(user_id) == server \
                        and isinstance(obj, dict) and obj.get("user_id") == user_id:
                    out[kind][user_id] = obj
    return out


def _clean_claim(server: str, wanted: Mapping[str, Mapping[str, str]],
                 got: Any) -> dict[str, Any]:
    """Keep of a ``user/keys/claim`` answer only keys of the devices asked, with the
    algorithm asked."""
    if not isinstance(got, dict) or not isinstance(got.get("one_time_keys"), dict):
        raise BadResponse(server, "user/keys/claim answer has no one_time_keys object")
    out: dict[str, Any] = {}
    for user_id, devices in got["one_time_keys"].items():
        if user_id not in wanted or server_of(user_id) != server or not isinstance(devices, dict):
            continue
        for device_id, keys in devices.items():
            alg = wanted[user_id].get(device_id)
            if alg is None or not isinstance(keys, dict):
                continue
            picked = {kid: k for kid, k in keys.items()
                      if isinstance(kid, str) and kid.startswith(alg + ":")
                      and isinstance(k, (dict, str))}
            if picked:
                out.setdefault(user_id, {})[device_id] = picked
    return out
