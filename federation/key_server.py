"""Our key server and notary: ``GET /_matrix/key/v2/server`` (and its deprecated
``/server/{keyId}`` form), ``GET /_matrix/key/v2/query/{serverName}`` and
``POST /_matrix/key/v2/query``.  Unauthenticated, as the spec has them.

Spec: server-server-api.md "Retrieving server keys" — "Publishing Keys" (keys_server.yaml),
"Querying Keys Through Another Server" (keys_query.yaml).

The notary answers, for each server asked about, that server's own self-signed key response
as we fetched it from the server itself (notary-relayed copies are not vouched for again),
with our signature added.  A stored response is served if its ``valid_until_ts`` is at least
the asked ``minimum_valid_until_ts`` (default: now) and it is less than half-way through its
life (the spec's advice to notaries); otherwise it is fetched again through the keyring
(coalesced, at most once a minute per server), and the stored one is still served if that
fails.  A server we know nothing of and cannot reach is simply absent.  For our own server
name we answer our own response.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import gevent.pool
from flask import Flask, current_app, request

from atrium.errors import MatrixError, bad_json, invalid_param, not_json, too_large
from protocol.ids import is_valid_server_name
from protocol.signing import encode_verify_key_base64, get_verify_key, key_id, sign_json
from federation.keyring import SEVEN_DAYS_MS
from store.server_keys import ServerKeyStore

log = logging.getLogger(__name__)

#: most servers one POST /_matrix/key/v2/query may ask about (amplification bound)
MAX_SERVERS_PER_QUERY = 100
#: most key ids over all servers of one POST
MAX_KEY_IDS_PER_QUERY = 1000
#: remote fetches a POST runs at once
FETCH_CONCURRENCY = 10
MAX_QUERY_BODY = 256 * 1024
_INT = re.compile(r"-?[0-9]{1,18}\Z")


def _now_ms() -> int:
    return int(time.time() * 1000)


def own_key_response(config: Any, signing_key: Any, now_ms: int) -> dict[str, Any]:
    """Our signed ``/_matrix/key/v2/server`` response."""
    vk = get_verify_key(signing_key)
    fed = config.federation
    resp: dict[str, Any] = {
        "server_name": config.server_name,
        "verify_keys": {key_id(vk): {"key": encode_verify_key_base64(vk)}},
        "old_verify_keys": {k.key_id: {"key": k.key, "expired_ts": k.expired_ts}
                            for k in fed.old_signing_keys},
        "valid_until_ts": now_ms + int(fed.key_refresh_interval * 1000),
    }
    return sign_json(resp, config.server_name, signing_key)


class Notary:
    """Answers key queries about other servers (and ourselves)."""

    def __init__(self, config: Any, signing_key: Any, store: ServerKeyStore,
                 keyring: Any) -> None:
        self.config = config
        self.server_name = config.server_name
        self.signing_key = signing_key
        self.store = store
        self.keyring = keyring
        self.now_ms = _now_ms

    def query(self, wanted: dict[str, int | None]) -> list[dict[str, Any]]:
        """``{server_name: minimum_valid_until_ts or None}`` -> the ``server_keys`` list."""
        now = self.now_ms()
        items = list(wanted.items())
        if len(items) <= 1:
            answers = [self._answer(s, m, now) for s, m in items]
        else:
            pool = gevent.pool.Pool(FETCH_CONCURRENCY)
            answers = list(pool.imap(lambda sm: self._answer(sm[0], sm[1], now), items))
        return [a for a in answers if a is not None]

    def _answer(self, server_name: str, minimum: int | None, now: int) -> dict[str, Any] | None:
        if server_name == self.server_name:
            return own_key_response(self.config, self.signing_key, now)
        minimum = now if minimum is None else minimum
        cached = self._stored(server_name)
        if cached is None or not self._fresh(cached, minimum, now):
            if self.keyring is not None:
                errors = self.keyring.refresh_direct(server_name)
                if errors:
                    log.debug("notary: %s", "; ".join(errors))
                cached = self._stored(server_name) or cached
        if cached is None:
            return None
        return sign_json(dict(cached.response), self.server_name, self.signing_key)

    def _stored(self, server_name: str) -> Any:
        got = self.store.get_responses(server_name, from_server=server_name)
        return got[0] if got else None

    @staticmethod
    def _fresh(cached: Any, minimum: int, now: int) -> bool:
        if cached.valid_until_ts < minimum:
            return False
        life = min(cached.valid_until_ts, cached.fetched_ts + SEVEN_DAYS_MS) - cached.fetched_ts
        return now < cached.fetched_ts + life // 2



# --- request parsing ---------------------------------------------------------------------

def _server_name(s: Any, where: str) -> str:
    if not isinstance(s, str) or not is_valid_server_name(s):
        raise invalid_param(f"{where}: not a valid server name")
    return s


def _timestamp(v: Any, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad_json(f"{where}: minimum_valid_until_ts must be an integer")
    return v


def _json_body() -> dict[str, Any]:
    limit = min(current_app.config.get("ATRIUM_MAX_BODY", MAX_QUERY_BODY), MAX_QUERY_BODY)
    if request.content_length is not None and request.content_length > limit:
        raise too_large(f"Request body is over the limit of {limit} bytes")
    try:
        raw = request.stream.read(limit + 1)
    except Exception:  # noqa: BLE001 - whatever the WSGI server's body reader raises
        raise MatrixError(400, "M_NOT_JSON", "Could not read the request body") from None
    if len(raw) > limit:
        raise too_large(f"Request body is over the limit of {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise not_json("Content not JSON.") from None
    if not isinstance(body, dict):
        raise bad_json("Content must be a JSON object.")
    return body


def parse_query_body(body: dict[str, Any]) -> dict[str, int | None]:
    """``{"server_keys": {server: {key_id: {minimum_valid_until_ts}}}}`` -> per server the
    greatest ``minimum_valid_until_ts`` asked (None: not given, i.e. now)."""
    sk = body.get("server_keys")
    if not isinstance(sk, dict):
        raise bad_json("server_keys must be an object")
    if len(sk) > MAX_SERVERS_PER_QUERY:
        raise bad_json(f"at most {MAX_SERVERS_PER_QUERY} servers per query")
    out: dict[str, int | None] = {}
    n_ids = 0
    for server, criteria in sk.items():
        _server_name(server, "server_keys")
        if not isinstance(criteria, dict):
            raise bad_json(f"server_keys.{server} must be an object")
        n_ids += len(criteria)
        if n_ids > MAX_KEY_IDS_PER_QUERY:
            raise bad_json(f"at most {MAX_KEY_IDS_PER_QUERY} key ids per query")
        minimum: int | None = None
        for kid, crit in criteria.items():
            if not isinstance(crit, dict):
                raise bad_json(f"server_keys.{server}.{kid} must be an object")
            if crit.get("minimum_valid_until_ts") is not None:
                ts = _timestamp(crit["minimum_valid_until_ts"], f"server_keys.{server}.{kid}")
                minimum = ts if minimum is None else max(minimum, ts)
        out[server] = minimum
    return out


# --- routes ------------------------------------------------------------------------------

def install(app: Flask, fed: Any, parts: Any) -> None:  # noqa: ARG001 - wiring signature
    config = fed.config
    notary = Notary(config, fed.signing_key, ServerKeyStore(fed.db), fed.keyring)
    fed.extras["notary"] = notary

    def server_keys(key_id: str | None = None) -> Any:  # noqa: ARG001 - deprecated form
        return own_key_response(config, fed.signing_key, notary.now_ms())

    app.add_url_rule("/_matrix/key/v2/server", "fed_key_server", server_keys,
                     methods=["GET"])
    app.add_url_rule("/_matrix/key/v2/server/<key_id>", "fed_key_server_key_id", server_keys,
                     methods=["GET"])

    def query_one(server_name: str) -> Any:
        _server_name(server_name, "serverName")
        raw = request.args.get("minimum_valid_until_ts")
        minimum = None
        if raw is not None:
            if not _INT.match(raw):
                raise invalid_param("minimum_valid_until_ts must be an integer")
            minimum = int(raw)
        return {"server_keys": notary.query({server_name: minimum})}

    app.add_url_rule("/_matrix/key/v2/query/<server_name>", "fed_key_query_one", query_one,
                     methods=["GET"])

    def query_many() -> Any:
        return {"server_keys": notary.query(parse_query_body(_json_body()))}

    app.add_url_rule("/_matrix/key/v2/query", "fed_key_query", query_many, methods=["POST"])
