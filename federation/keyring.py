"""The keyring: other servers' signing keys, and checking signatures made with them.

Spec: server-server-api.md "Retrieving server keys" ("Publishing Keys", "Querying Keys
Through Another Server"), "Validating hashes and signatures on received events"; rooms
v5+ "Signing key validity period" (fragments/v5-signing-requirements.md); appendices.md
"Checking for a Signature".

Where a key comes from, in order: our own key and ``old_signing_keys`` for our server name;
an in-memory LRU of each server's keys; the store (``store/server_keys.py``); then a fetch —
each ``trusted_key_servers`` notary (``POST /_matrix/key/v2/query`` with
``minimum_valid_until_ts``), then the server itself (``GET /_matrix/key/v2/server``).

What a fetched response must pass (:func:`check_key_response`): it names the server asked
about, is signed by that server with a key listed in its own ``verify_keys``, and has the
documented shape.  A notary's answer must also carry the notary's signature: checked with the
``verify_keys`` pinned in the config, or else (trust on first use) with the key the notary
serves at its own ``/_matrix/key/v2/server``.  One bad response makes the whole notary answer
ignored.

Validity: a current key is usable for a signature made at ``ts`` if ``ts`` ≤ the lesser of its
``valid_until_ts`` and fetch time + 7 days; a key listed under ``old_verify_keys`` if ``ts`` <
its ``expired_ts``.  Room versions 1–4 ignore validity (``at_ts=0``).

Fetches are coalesced (concurrent look-ups of one server share one fetch; plain
``threading`` primitives, which gevent makes cooperative) and rate-bound: a key id that was
asked for stays un-asked for ``refetch_interval_ms`` (one minute), whatever the outcome.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping

from federation.errors import FederationError
from protocol.ids import IdError
from protocol.room_versions import RoomVersion, get_room_version
from protocol.signing import (
    SignatureError, VerifyKey, decode_verify_key_base64, get_verify_key, key_id,
    required_signers, verify_event_signature, verify_signed_json,
)
from store.server_keys import ServerKeyStore, StoredKey

log = logging.getLogger(__name__)

__all__ = ["Keyring", "KeyLookupError", "InvalidKeyResponse", "check_key_response",
           "SEVEN_DAYS_MS"]

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
#: most keys (current + old) accepted in one key response
MAX_KEYS_PER_RESPONSE = 100
#: most key ids looked up at once (the rest of a signature block is ignored)
MAX_KEY_IDS = 32
MAX_KEY_ID_LEN = 128
MAX_RESPONSE_BYTES = 1024 * 1024
KEY_QUERY_PATH = "/_matrix/key/v2/query"
KEY_SERVER_PATH = "/_matrix/key/v2/server"


class KeyLookupError(Exception):
    """No usable key of ``server_name`` among ``key_ids`` could be found."""

    def __init__(self, server_name: str, key_ids: Iterable[str], reason: str) -> None:
        self.server_name = server_name
        self.key_ids = sorted(key_ids)
        self.reason = reason
        super().__init__(f"no usable key {self.key_ids} of {server_name}: {reason}")


class InvalidKeyResponse(ValueError):
    """A key response (or a notary's answer) that must not be trusted."""


def _decode(kid: str, b64: Any) -> VerifyKey:
    alg, _, version = kid.partition(":")
    if not isinstance(b64, str):
        raise ValueError("key is not a string")
    return decode_verify_key_base64(alg, version, b64)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_key_response(resp: Any, server_name: str, fetched_ts: int
                       ) -> tuple[int, list[StoredKey], dict[str, Any]]:
    """Validate ``server_name``'s self-signed key response; return its ``valid_until_ts``,
    its keys (validity capped at ``fetched_ts`` + 7 days) and the response with only the
    server's own signatures.  Raises :class:`InvalidKeyResponse`."""
    if not isinstance(resp, dict):
        raise InvalidKeyResponse("key response is not a JSON object")
    if resp.get("server_name") != server_name:
        raise InvalidKeyResponse(f"key response names {resp.get('server_name')!r}, "
                                 f"not {server_name!r}")
    valid_until = resp.get("valid_until_ts")
    if not _is_int(valid_until):
        raise InvalidKeyResponse("valid_until_ts is not an integer")
    vks = resp.get("verify_keys")
    olds = resp.get("old_verify_keys")
    olds = {} if olds is None else olds
    if not isinstance(vks, dict) or not isinstance(olds, dict):
        raise InvalidKeyResponse("verify_keys / old_verify_keys are not objects")
    if len(vks) + len(olds) > MAX_KEYS_PER_RESPONSE:
        raise InvalidKeyResponse("too many keys")
    current: dict[str, VerifyKey] = {}
    b64s: dict[str, str] = {}
    try:
        for kid, v in vks.items():
            if not isinstance(v, dict):
                raise ValueError(f"verify_keys.{kid} is not an object")
            if kid.startswith("ed25519:"):
                current[kid] = _decode(kid, v.get("key"))
                b64s[kid] = v["key"]
        old: list[StoredKey] = []
        for kid, v in olds.items():
            if not isinstance(v, dict) or not _is_int(v.get("expired_ts")):
                raise ValueError(f"old_verify_keys.{kid} needs key and expired_ts")
            if kid.startswith("ed25519:") and kid not in current:
                _decode(kid, v.get("key"))
                old.append(StoredKey(kid, v["key"], 0, v["expired_ts"], fetched_ts))
    except ValueError as e:
        raise InvalidKeyResponse(str(e)) from None
    try:
        verify_signed_json(resp, server_name, current)
    except SignatureError as e:
        raise InvalidKeyResponse(f"self-signature: {e}") from None
    effective = min(valid_until, fetched_ts + SEVEN_DAYS_MS)
    keys = [StoredKey(kid, b64s[kid], effective, None, fetched_ts) for kid in current] + old
    clean = {k: v for k, v in resp.items() if k != "signatures"}
    clean["signatures"] = {server_name: dict(resp["signatures"][server_name])}
    return valid_until, keys, clean


class _Flight:
    """One fetch in progress; others wanting the same server wait on ``done``."""

    __slots__ = ("done", "errors")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.errors: list[str] = []


class Keyring:
    #: a key id asked for is not asked for again within this time (ms)
    refetch_interval_ms = 60_000
    #: servers whose keys are kept in memory
    cache_servers = 4096
    #: remembered (server, key id) fetch attempts
    max_attempts = 10_000

    def __init__(self, db: Any, config: Any, client: Any, server_name: str,
                 signing_key: Any) -> None:
        self.store = ServerKeyStore(db)
        self.fconfig = config.federation
        self.client = client
        self.server_name = server_name
        self.signing_key = signing_key
        self.own_verify_key = get_verify_key(signing_key)
        self.now_ms = lambda: int(time.time() * 1000)
        self.fetches = 0                 # requests sent to other servers (stats, tests)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, dict[str, tuple[StoredKey, VerifyKey]]] = OrderedDict()
        self._attempts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._flights: dict[tuple[str, bool], _Flight] = {}
        self._errors: OrderedDict[str, list[str]] = OrderedDict()

    # --- the contract ------------------------------------------------------------------

    def get_keys(self, server_name: str, key_ids: Iterable[str], *,
                 at_ts: int | None = None) -> dict[str, VerifyKey]:
        """The keys among ``key_ids`` of ``server_name`` usable for a signature made at
        ``at_ts`` (ms; default now; 0 = any time).  Raises :class:`KeyLookupError` if none."""
        return self._lookup(server_name, key_ids, at_ts, direct_only=False)

    def verify_json(self, server_name: str, obj: Mapping[str, Any], *,
                    at_ts: int | None = None) -> None:
        """Every signature of ``server_name`` on ``obj`` by a key we can find must verify, and
        there must be at least one (appendices "Checking for a Signature")."""
        sigs = obj.get("signatures")
        mine = sigs.get(server_name) if isinstance(sigs, Mapping) else None
        if not isinstance(mine, Mapping) or not mine:
            raise SignatureError(f"no signature from {server_name}")
        kids = [k for k in mine if isinstance(k, str) and k.startswith("ed25519:")]
        if not kids:
            raise SignatureError(f"no ed25519 signature from {server_name}")
        verify_signed_json(obj, server_name, self.get_keys(server_name, kids, at_ts=at_ts))

    def verify_event(self, event: Mapping[str, Any], room_version: RoomVersion | str) -> None:
        """Check the signatures a PDU must carry ("Validating hashes and signatures on
        received events"), with keys valid at its ``origin_server_ts`` in room versions that
        enforce key validity (v5+), at any time before.  Raises SignatureError /
        KeyLookupError.  Does not check the content hash."""
        rv = get_room_version(room_version) if isinstance(room_version, str) else room_version
        if rv is None:
            raise SignatureError(f"unknown room version {room_version!r}")
        try:
            signers = required_signers(event, rv)
        except IdError as e:
            raise SignatureError(f"cannot tell who must sign: {e}") from None
        at_ts = 0
        if rv.enforce_key_validity:
            ts = event.get("origin_server_ts")
            if not _is_int(ts):
                raise SignatureError("origin_server_ts is not an integer")
            at_ts = max(ts, 0)
        sigs = event.get("signatures")
        for server in sorted(signers):
            mine = sigs.get(server) if isinstance(sigs, Mapping) else None
            if not isinstance(mine, Mapping) or not mine:
                raise SignatureError(f"no signature from {server}")
            kids = [k for k in mine if isinstance(k, str) and k.startswith("ed25519:")]
            if not kids:
                raise SignatureError(f"no ed25519 signature from {server}")
            verify_event_signature(event, rv, server,
                                   self.get_keys(server, kids, at_ts=at_ts))

    # --- used by the notary ------------------------------------------------------------

    def refresh_direct(self, server_name: str) -> list[str]:
        """Fetch ``server_name``'s key response from the server itself (coalesced, at most
        once per ``refetch_interval_ms``); returns the errors met, if any."""
        if server_name == self.server_name:
            return []
        return self._fetch(server_name, ["*"], self.now_ms(), direct_only=True) or []

    # --- look-ups ----------------------------------------------------------------------

    def _lookup(self, server_name: str, key_ids: Iterable[str], at_ts: int | None,
                direct_only: bool) -> dict[str, VerifyKey]:
        if isinstance(key_ids, str):
            key_ids = [key_ids]
        wanted = list(dict.fromkeys(
            k for k in key_ids if isinstance(k, str) and 0 < len(k) <= MAX_KEY_ID_LEN))
        wanted = wanted[:MAX_KEY_IDS]
        if not wanted:
            raise KeyLookupError(server_name, [], "no key ids to look up")
        ts = self.now_ms() if at_ts is None else at_ts
        if server_name == self.server_name:
            return self._own_keys(wanted, ts)
        found = self._usable(server_name, wanted, ts)
        errors: list[str] = []
        for _ in range(3):
            missing = [k for k in wanted if k not in found]
            if not missing:
                break
            errs = self._fetch(server_name, missing, ts, direct_only)
            if errs is None:
                break
            errors = errs
            found = self._usable(server_name, wanted, ts)
        if not found:
            reason = "; ".join(errors) or self._last_errors(server_name) or \
                "no key valid at that time (not re-fetched within the rate bound)"
            raise KeyLookupError(server_name, wanted, reason)
        return found

    def _own_keys(self, wanted: list[str], ts: int) -> dict[str, VerifyKey]:
        out: dict[str, VerifyKey] = {}
        if key_id(self.own_verify_key) in wanted:
            out[key_id(self.own_verify_key)] = self.own_verify_key
        for old in self.fconfig.old_signing_keys:
            if old.key_id in wanted and ts < old.expired_ts:
                try:
                    out[old.key_id] = _decode(old.key_id, old.key)
                except ValueError:
                    log.warning("old_signing_keys.%s is not a valid key", old.key_id)
        if not out:
            raise KeyLookupError(self.server_name, wanted, "not one of our keys")
        return out

    def _usable(self, server_name: str, wanted: list[str], ts: int) -> dict[str, VerifyKey]:
        known = self._known(server_name)
        return {k: known[k][1] for k in wanted if k in known and known[k][0].usable_at(ts)}

    def _known(self, server_name: str) -> dict[str, tuple[StoredKey, VerifyKey]]:
        with self._lock:
            hit = self._cache.get(server_name)
            if hit is not None:
                self._cache.move_to_end(server_name)
                return hit
        return self._remember(server_name, self.store.get_keys(server_name))

    def _remember(self, server_name: str, stored: Mapping[str, StoredKey]
                  ) -> dict[str, tuple[StoredKey, VerifyKey]]:
        known = {}
        for kid, rec in stored.items():
            try:
                known[kid] = (rec, _decode(kid, rec.verify_key))
            except ValueError:
                continue
        with self._lock:
            self._cache[server_name] = known
            self._cache.move_to_end(server_name)
            while len(self._cache) > self.cache_servers:
                self._cache.popitem(last=False)
        return known

    # --- fetching ----------------------------------------------------------------------

    def _fetch(self, server_name: str, key_ids: list[str], ts: int,
               direct_only: bool) -> list[str] | None:
        """Fetch (or wait for the fetch in progress of) ``server_name``'s keys.  Returns the
        errors met, or None when nothing was done (every key id asked for too recently)."""
        now = self.now_ms()
        with self._lock:
            flight = self._flights.get((server_name, direct_only))
            lead = flight is None
            if lead:
                due = [k for k in key_ids if now - self._attempts.get((server_name, k), -10**15)
                       >= self.refetch_interval_ms]
                if not due:
                    return None
                for k in due:
                    self._attempts[(server_name, k)] = now
                    self._attempts.move_to_end((server_name, k))
                while len(self._attempts) > self.max_attempts:
                    self._attempts.popitem(last=False)
                flight = self._flights[(server_name, direct_only)] = _Flight()
        if not lead:
            if not flight.done.wait(self._flight_timeout()):
                return [f"timed out waiting for a fetch of {server_name}'s keys"]
            return flight.errors
        try:
            flight.errors = self._fetch_now(server_name, due, ts, direct_only)
        except Exception as e:  # noqa: BLE001 - a waiter must never hang on a crashed leader
            log.exception("fetching the keys of %s failed", server_name)
            flight.errors = [f"internal error: {type(e).__name__}"]
        finally:
            with self._lock:
                self._flights.pop((server_name, direct_only), None)
                if flight.errors:
                    self._errors[server_name] = flight.errors
                    self._errors.move_to_end(server_name)
                    while len(self._errors) > self.cache_servers:
                        self._errors.popitem(last=False)
                else:
                    self._errors.pop(server_name, None)
            flight.done.set()
        return flight.errors

    def _last_errors(self, server_name: str) -> str:
        with self._lock:
            return "; ".join(self._errors.get(server_name, ()))

    def _flight_timeout(self) -> float:
        return self.fconfig.query_timeout * (len(self.fconfig.trusted_key_servers) + 2) + 5

    def _fetch_now(self, server_name: str, key_ids: list[str], ts: int,
                   direct_only: bool) -> list[str]:
        if self.client is None:
            return ["federation client not available"]
        errors: list[str] = []
        wanted = [k for k in key_ids if k != "*"]
        if not direct_only:
            for notary in self.fconfig.trusted_key_servers:
                if notary.server_name in (server_name, self.server_name):
                    continue
                try:
                    got = self._from_notary(notary, server_name, wanted, ts)
                except (FederationError, InvalidKeyResponse, SignatureError,
                        KeyLookupError) as e:
                    log.info("notary %s for %s's keys: %s", notary.server_name, server_name, e)
                    errors.append(f"notary {notary.server_name}: {e}")
                    continue
                if wanted and all(k in got and got[k].usable_at(ts) for k in wanted):
                    return []
        try:
            self._direct(server_name)
            return []
        except (FederationError, InvalidKeyResponse) as e:
            log.info("fetching %s's keys: %s", server_name, e)
            errors.append(f"{server_name}: {e}")
        return errors

    def _direct(self, server_name: str) -> dict[str, StoredKey]:
        self.fetches += 1
        # fail_fast=False: a server backing off may be back (it may be the origin of the
        # request whose signature we are checking); the rate bound limits these fetches
        resp = self.client.get_json(server_name, KEY_SERVER_PATH, signed=False,
                                    timeout=self.fconfig.query_timeout, fail_fast=False,
                                    max_size=MAX_RESPONSE_BYTES)
        fetched = self.now_ms()
        valid_until, keys, clean = check_key_response(resp, server_name, fetched)
        stored = self.store.store_response(server_name, server_name, clean, valid_until, keys,
                                           fetched)
        self._remember(server_name, stored)
        return stored

    def _from_notary(self, notary: Any, server_name: str, key_ids: list[str],
                     ts: int) -> dict[str, StoredKey]:
        criteria = {k: {"minimum_valid_until_ts": ts} for k in key_ids}
        self.fetches += 1
        resp = self.client.post_json(notary.server_name, KEY_QUERY_PATH,
                                     {"server_keys": {server_name: criteria}}, signed=False,
                                     timeout=self.fconfig.query_timeout,
                                     max_size=MAX_RESPONSE_BYTES)
        fetched = self.now_ms()
        items = resp.get("server_keys") if isinstance(resp, dict) else None
        if not isinstance(items, list):
            raise InvalidKeyResponse("answer has no server_keys list")
        checked = []
        for item in items[:10]:
            if not isinstance(item, dict) or item.get("server_name") != server_name:
                continue
            self._check_notary_signature(notary, item)
            checked.append(check_key_response(item, server_name, fetched))
        if not checked:
            raise InvalidKeyResponse(f"no key response for {server_name}")
        stored: dict[str, StoredKey] = {}
        for valid_until, keys, clean in checked:
            stored = self.store.store_response(server_name, notary.server_name, clean,
                                               valid_until, keys, fetched)
        self._remember(server_name, stored)
        return stored

    def _check_notary_signature(self, notary: Any, item: dict[str, Any]) -> None:
        sigs = item.get("signatures")
        mine = sigs.get(notary.server_name) if isinstance(sigs, dict) else None
        if not isinstance(mine, dict) or not mine:
            raise InvalidKeyResponse("not signed by the notary")
        if notary.verify_keys is not None:
            keys = {}
            for kid, b64 in notary.verify_keys.items():
                try:
                    keys[kid] = _decode(kid, b64)
                except ValueError:
                    log.warning("trusted_key_servers: bad verify key %s of %s", kid,
                                notary.server_name)
        else:  # trust on first use: the key the notary itself publishes
            keys = self._lookup(notary.server_name, list(mine), None, direct_only=True)
        try:
            verify_signed_json(item, notary.server_name, keys)
        except SignatureError as e:
            raise InvalidKeyResponse(f"notary signature: {e}") from None
